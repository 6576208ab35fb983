"""Durable storage: the file-system seam, the write-ahead log, the snapshot store and recovery.

Synchronous APIs; the runtime calls them from worker threads. See ``docs/storage.md`` for the
on-disk layout and the recovery rules.
"""

from trioraft.storage.fs import REAL_FS as REAL_FS
from trioraft.storage.fs import FileSystem as FileSystem
from trioraft.storage.fs import NoSyncFileSystem as NoSyncFileSystem
from trioraft.storage.fs import SimulatedCrash as SimulatedCrash
from trioraft.storage.fs import SimulatedFileSystem as SimulatedFileSystem
from trioraft.storage.recovery import Recovered as Recovered
from trioraft.storage.recovery import recover as recover
from trioraft.storage.snapshots import SnapshotBuilder as SnapshotBuilder
from trioraft.storage.snapshots import SnapshotFileInfo as SnapshotFileInfo
from trioraft.storage.snapshots import SnapshotReader as SnapshotReader
from trioraft.storage.snapshots import SnapshotStore as SnapshotStore
from trioraft.storage.snapshots import StoredSnapshot as StoredSnapshot
from trioraft.storage.wal import WAL as WAL
from trioraft.storage.wal import WalContents as WalContents

__all__ = [
    "REAL_FS",
    "WAL",
    "FileSystem",
    "NoSyncFileSystem",
    "Recovered",
    "SimulatedCrash",
    "SimulatedFileSystem",
    "SnapshotBuilder",
    "SnapshotFileInfo",
    "SnapshotReader",
    "SnapshotStore",
    "StoredSnapshot",
    "WalContents",
    "recover",
]
