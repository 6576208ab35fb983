"""Restart recovery: pick the snapshot to restore and read the log tail after it (contract 3).

Layout of a data directory::

    <data>/wal/                                   the WAL (see :mod:`trioraft.storage.wal`)
    <data>/snap/<index:020d>-<term:020d>/         snapshots (see :mod:`trioraft.storage.snapshots`)
    <data>/snap/tmp/                              snapshots being written

Theory of operation. The WAL is opened first (its lock guards the whole data directory) and
scanned once: that yields every snapshot marker still in it and the durable hard state. A snapshot
is usable only if the WAL holds its marker (the store's commit happens before the marker is
written, so a snapshot without one is the leftover of a crash in between) and its index is at or
below the durable commit index (a marker written just before a crash, whose hard state never made
it, must not move the node past what it knows is committed). The newest usable snapshot whose
files verify is chosen; a damaged one is renamed ``.broken`` and the next older one is tried. The
WAL is then replayed from that snapshot's marker (or from the empty marker when there is none).
Snapshots newer than the chosen one that the WAL does not reference are deleted.
"""

from __future__ import annotations

import logging
import os

import attrs

from trioraft.core.types import Entry, HardState
from trioraft.errors import StorageCorrupted
from trioraft.storage.fs import REAL_FS, FileSystem, ensure_dir
from trioraft.storage.records import SnapshotRecord
from trioraft.storage.snapshots import SnapshotStore, StoredSnapshot
from trioraft.storage.wal import DEFAULT_SEGMENT_BYTES, WAL, _final_hard_state

__all__ = ["SNAP_DIR", "WAL_DIR", "Recovered", "recover"]

log = logging.getLogger(__name__)

WAL_DIR = "wal"
SNAP_DIR = "snap"


@attrs.frozen
class Recovered:
    """What a restarting node restores.

    Attributes:
        snapshot: the snapshot to load into the state machine (``None``: start empty).
        hard_state: the durable hard state.
        entries: the log entries after the snapshot (consecutive from its index + 1).
    """

    snapshot: StoredSnapshot | None
    hard_state: HardState
    entries: list[Entry]


def recover(
    data_dir: str,
    *,
    fs: FileSystem = REAL_FS,
    retention: int = 2,
    segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    prezero: bool | None = None,
) -> tuple[Recovered, WAL, SnapshotStore]:
    """Open a data directory (creating it if new) and recover its state.

    Args:
        data_dir: the node's data directory.
        fs: the file system.
        retention: passed to the :class:`SnapshotStore`.
        segment_bytes: passed to the :class:`WAL`.
        prezero: passed to the :class:`WAL` (pre-zeroed segments; ``None``: on for the real
            file system).

    Returns:
        The recovered state, the open WAL (holding the directory lock) and the snapshot store.

    Raises:
        StorageFailed: the directory is in use by another opener, or an I/O error.
        StorageCorrupted: the WAL is damaged before its tail, or no usable snapshot remains for
            the log the WAL still holds.
    """
    data_dir = os.path.abspath(data_dir)
    ensure_dir(fs, data_dir)
    wal, scan = WAL._open_scan(
        os.path.join(data_dir, WAL_DIR), fs=fs, segment_bytes=segment_bytes, prezero=prezero
    )
    try:
        store = SnapshotStore(os.path.join(data_dir, SNAP_DIR), fs=fs, retention=retention)
        # Retention counts only snapshots a restart could use (see usable() below).
        store.referenced = lambda: {(m.index, m.term) for m in wal.usable_snapshot_markers()}
        hs = _final_hard_state(scan)
        referenced = {
            (rec.meta.index, rec.meta.term)
            for _pos, _off, rec in scan.records
            if isinstance(rec, SnapshotRecord)
        }

        def usable(index: int, term: int) -> bool:
            if (index, term) not in referenced:
                return False  # no WAL marker: handled as an orphan below
            if index > hs.commit:
                log.info(
                    "recovery %s: snapshot %d/%d is past the durable commit index %d; not used",
                    data_dir,
                    index,
                    term,
                    hs.commit,
                )
                return False
            return True

        chosen = store.newest(accept=usable)
        orphans = [s for s in store.list() if (s.index, s.term) not in referenced]
        if chosen is None and (0, 0) not in referenced:
            wanted = ", ".join(f"{i}/{t}" for i, t in sorted(referenced) if i <= hs.commit)
            raise StorageCorrupted(
                store.directory,
                "no usable snapshot: the WAL no longer starts at index 1 and needs one of the "
                f"snapshots [{wanted}] (missing or damaged)",
            )
        contents = wal._replay(scan, chosen.raft_meta if chosen is not None else None)
        floor = chosen.index if chosen is not None else 0
        for orphan in orphans:
            if orphan.index > floor:
                log.warning(
                    "recovery %s: snapshot %s has no WAL marker (a crash before the marker was "
                    "written); deleting it",
                    data_dir,
                    orphan.path,
                )
                store.delete(orphan)
    except BaseException:
        wal.close()
        raise
    log.info(
        "recovery %s: snapshot %s, %d entries after it, hard state term %d vote %d commit %d",
        data_dir,
        "none" if chosen is None else f"{chosen.index}/{chosen.term}",
        len(contents.entries),
        contents.hard_state.term,
        contents.hard_state.vote,
        contents.hard_state.commit,
    )
    return Recovered(chosen, contents.hard_state, contents.entries), wal, store
