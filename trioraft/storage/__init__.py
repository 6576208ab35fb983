"""Durable storage: the file-system seam, the write-ahead log, the snapshot store and recovery.

Synchronous APIs; the runtime calls them from worker threads. See ``docs/storage.md`` for the
on-disk layout and the recovery rules.
"""

from trioraft.storage.fs import REAL_FS as REAL_FS
from trioraft.storage.fs import FileSystem as FileSystem
from trioraft.storage.fs import NoSyncFileSystem as NoSyncFileSystem
from trioraft.storage.fs import SimulatedCrash as SimulatedCrash
from trioraft.storage.fs import SimulatedFileSystem as SimulatedFileSystem
from trioraft.storage.wal import WAL as WAL
from trioraft.storage.wal import WalContents as WalContents

__all__ = [
    "REAL_FS",
    "WAL",
    "FileSystem",
    "NoSyncFileSystem",
    "SimulatedCrash",
    "SimulatedFileSystem",
    "WalContents",
]
