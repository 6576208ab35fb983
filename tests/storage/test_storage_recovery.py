"""recover(): contract 3 — the newest snapshot the WAL references and the durable commit covers,
then the WAL tail after it; damaged snapshots fall back to older ones."""

from __future__ import annotations

import os

import pytest
from storage_helpers import ents, ids

from trioraft.core.types import ConfState, HardState
from trioraft.errors import StorageCorrupted, StorageFailed
from trioraft.storage.fs import SimulatedFileSystem
from trioraft.storage.recovery import recover
from trioraft.storage.snapshots import SnapshotStore, StoredSnapshot
from trioraft.storage.wal import WAL

CONF = ConfState(voters=frozenset({1, 2, 3}))
D = "/node"


def snap(store: SnapshotStore, index: int, term: int, body: bytes = b"") -> StoredSnapshot:
    b = store.begin(index, term, CONF)
    b.write_at("state", 0, body or b"state@%d" % index)
    return b.commit()


def test_fresh_directory() -> None:
    fs = SimulatedFileSystem()
    rec, wal, store = recover(D, fs=fs)
    assert rec.snapshot is None and rec.entries == [] and rec.hard_state == HardState()
    assert sorted(fs.listdir(D)) == ["snap", "wal"]
    assert store.directory == "/node/snap" and wal.directory == "/node/wal"
    wal.close()


def test_real_directory_and_lock(tmp_path: object) -> None:
    d = os.path.join(str(tmp_path), "node")
    rec, wal, store = recover(d)
    wal.save(ents(1, 10), HardState(1, 1, 8))
    s = snap(store, 8, 1)
    wal.save_snapshot_marker(s.raft_meta)
    with pytest.raises(StorageFailed, match="already in use"):
        recover(d)
    wal.close()
    rec, wal, _ = recover(d)
    assert rec.snapshot == s and ids(rec.entries) == [(9, 1), (10, 1)]
    wal.close()


def test_snapshot_plus_tail_after_release() -> None:
    fs = SimulatedFileSystem()
    _, wal, store = recover(D, fs=fs, segment_bytes=200)
    for i in range(1, 31):
        wal.save(ents(i, i), HardState(1, 1, i - 1))
    s = snap(store, 20, 1)
    wal.save_snapshot_marker(s.raft_meta)
    wal.release_to(20)
    wal.close()
    rec, wal, _ = recover(D, fs=fs, segment_bytes=200)
    assert rec.snapshot == s
    assert rec.entries == ents(21, 30) and rec.hard_state == HardState(1, 1, 29)
    wal.close()


def test_snapshot_without_marker_is_ignored_and_deleted() -> None:
    fs = SimulatedFileSystem()
    _, wal, store = recover(D, fs=fs)
    wal.save(ents(1, 10), HardState(1, 1, 9))
    s5 = snap(store, 5, 1)
    wal.save_snapshot_marker(s5.raft_meta)
    s9 = snap(store, 9, 1)  # crash before its marker
    wal.close()
    rec, wal, store = recover(D, fs=fs)
    assert rec.snapshot == s5 and rec.entries == ents(6, 10)
    assert [s.index for s in store.list()] == [5]
    assert not fs.exists(s9.path)
    wal.close()


def test_snapshot_past_the_durable_commit_is_not_used() -> None:
    fs = SimulatedFileSystem()
    _, wal, store = recover(D, fs=fs)
    wal.save(ents(1, 10), HardState(1, 1, 6))
    s9 = snap(store, 9, 1)
    wal.save_snapshot_marker(s9.raft_meta)  # applied ahead of the durable commit, then crash
    wal.close()
    rec, wal, store = recover(D, fs=fs)
    assert rec.snapshot is None and rec.entries == ents(1, 10)
    assert store.get(9) is not None  # referenced: kept; usable once commit reaches it
    wal.save([], HardState(1, 1, 10))
    wal.close()
    rec, wal, _ = recover(D, fs=fs)
    assert rec.snapshot == s9 and rec.entries == ents(10, 10)
    wal.close()


def test_corrupt_newest_snapshot_falls_back_to_an_older_one() -> None:
    fs = SimulatedFileSystem()
    _, wal, store = recover(D, fs=fs, segment_bytes=200)
    for i in range(1, 41):
        wal.save(ents(i, i), HardState(1, 1, i))
    s10 = snap(store, 10, 1)
    wal.save_snapshot_marker(s10.raft_meta)
    s30 = snap(store, 30, 1, b"x" * 3000)
    wal.save_snapshot_marker(s30.raft_meta)
    wal.release_to(10)  # the runtime keeps the WAL back to the oldest retained snapshot
    wal.close()
    p = os.path.join(s30.path, "state")
    data = bytearray(fs.read_bytes(p))
    data[100] ^= 1
    fs.write_bytes(p, bytes(data))
    rec, wal, store = recover(D, fs=fs)
    assert rec.snapshot == s10 and rec.entries == ents(11, 40)
    assert fs.exists(s30.path + ".broken")
    wal.close()


def test_no_usable_snapshot_for_a_released_wal_is_refused() -> None:
    fs = SimulatedFileSystem()
    _, wal, store = recover(D, fs=fs, segment_bytes=200)
    for i in range(1, 41):
        wal.save(ents(i, i), HardState(1, 1, i))
    s30 = snap(store, 30, 1)
    wal.save_snapshot_marker(s30.raft_meta)
    wal.release_to(30)
    wal.close()
    fs.remove(os.path.join(s30.path, "meta.cbor"))
    with pytest.raises(StorageCorrupted, match=r"no usable snapshot.*30/1"):
        recover(D, fs=fs)
    assert fs.exists(s30.path + ".broken")
    # the failed attempt released the lock
    with pytest.raises(StorageCorrupted):
        recover(D, fs=fs)


def test_follower_install_flow_and_its_crash_window() -> None:
    fs = SimulatedFileSystem()
    _, wal, store = recover(D, fs=fs)
    wal.save(ents(1, 10, term=1), HardState(1, 0, 4))
    # the leader (term 3) streams snapshot 50/3 into the store
    b = store.begin(50, 3, CONF)
    for off in range(0, 4000, 1000):
        b.write_at("state", off, b"L" * 1000)
    s50 = b.commit()
    wal.save_snapshot_marker(s50.raft_meta)
    # crash here: the marker is durable, the hard state that commits 50 is not
    wal.close()
    rec, wal, store = recover(D, fs=fs)
    assert rec.snapshot is None and rec.entries == ents(1, 10, term=1)
    assert rec.hard_state == HardState(1, 0, 4)
    # the install completes this time
    wal.save_snapshot_marker(s50.raft_meta)
    wal.save(ents(51, 52, term=3), HardState(3, 0, 50))
    wal.close()
    rec, wal, _ = recover(D, fs=fs)
    assert rec.snapshot == s50
    assert ids(rec.entries) == [(51, 3), (52, 3)]
    assert rec.hard_state == HardState(3, 0, 50)
    wal.close()


def _follower_with_stale_tail_installs(fs: SimulatedFileSystem, local_snapshot: bool) -> str:
    """A follower of an old leader holds entries 1..40 of term 1, 1..12 committed (and maybe a
    local snapshot at 10); the term-2 leader replaced 13..40 and streams snapshot 30/2, which
    resets the log; new entries 31..35 follow. Returns the installed snapshot's path."""
    _, wal, store = recover(D, fs=fs)
    wal.save(ents(1, 40, term=1, tag=b"old"), HardState(1, 1, 12))
    if local_snapshot:
        wal.save_snapshot_marker(snap(store, 10, 1).raft_meta)
    installed = snap(store, 30, 2)
    wal.save_snapshot_marker(installed.raft_meta)  # the log lacks 30/2: a reset marker
    wal.save([], HardState(2, 2, 30))
    wal.save(ents(31, 35, term=2), HardState(2, 2, 35))
    wal.release_to(10 if local_snapshot else 0)
    wal.close()
    return installed.path


@pytest.mark.parametrize("local_snapshot", [True, False], ids=["older-snapshot", "no-snapshot"])
def test_fallback_across_a_log_reset_is_refused_not_read_as_committed(local_snapshot: bool) -> None:
    # The installed snapshot is damaged. Starting from the older snapshot (or from the empty
    # log) would hand back the stale, never committed entries 13..30 of term 1 as the log under
    # commit index 35: refuse loudly instead.
    fs = SimulatedFileSystem()
    path = _follower_with_stale_tail_installs(fs, local_snapshot)
    p = os.path.join(path, "state")
    data = bytearray(fs.read_bytes(p))
    data[0] ^= 1
    fs.write_bytes(p, bytes(data))
    with pytest.raises(StorageCorrupted, match=r"entries 13\.\.30 predate the snapshot installed"):
        recover(D, fs=fs)


def test_recovery_after_a_log_reset_uses_the_installed_snapshot() -> None:
    fs = SimulatedFileSystem()
    path = _follower_with_stale_tail_installs(fs, local_snapshot=True)
    rec, wal, _ = recover(D, fs=fs)
    assert rec.snapshot is not None and rec.snapshot.path == path
    assert ids(rec.entries) == [(i, 2) for i in range(31, 36)]
    wal.close()


def _retention_one_with_a_local_snapshot(
    fs: SimulatedFileSystem,
) -> tuple[WAL, SnapshotStore, StoredSnapshot]:
    """retention 1, entries 1..30 committed, local snapshot L at 20 marked, WAL released to it."""
    _, wal, store = recover(D, fs=fs, retention=1, segment_bytes=300)
    for i in range(1, 31):
        wal.save(ents(i, i), HardState(1, 1, i))
    local = snap(store, 20, 1)
    wal.save_snapshot_marker(local.raft_meta)
    wal.release_to(20)
    return wal, store, local


def test_retention_counts_only_snapshots_a_restart_could_use() -> None:
    # retention 1: local snapshot L has its WAL marker; a received install R is in the store but
    # its marker is not written yet. Retention must not trade L for R: a crash before R's
    # marker would leave no snapshot to start from.
    fs = SimulatedFileSystem()
    wal, store, local = _retention_one_with_a_local_snapshot(fs)
    received = snap(store, 60, 2)
    assert store.apply_retention() == []
    wal.close()  # crash before R's marker
    rec, wal, store = recover(D, fs=fs, retention=1, segment_bytes=300)
    assert rec.snapshot == local and not fs.exists(received.path)
    # once a newer snapshot is marked, L goes; so does an unmarked one older than it
    stale = snap(store, 25, 1)
    newer = snap(store, 30, 1)
    wal.save_snapshot_marker(newer.raft_meta)
    assert sorted(store.apply_retention()) == [20, 25]
    assert [s.index for s in store.list()] == [30]
    wal.close()
    assert not fs.exists(stale.path)


def test_retention_does_not_count_an_install_whose_commit_is_not_durable_yet() -> None:
    # An install writes its marker, then (a later fsync) the hard state that commits it. A
    # retention pass in between must not trade the older snapshot for it: a crash there leaves
    # the install's snapshot unusable (past the durable commit index).
    fs = SimulatedFileSystem()
    wal, store, local = _retention_one_with_a_local_snapshot(fs)
    installed = snap(store, 60, 2)
    wal.save_snapshot_marker(installed.raft_meta)  # its commit (60) is not durable yet
    assert store.apply_retention() == []
    wal.close()  # crash before the hard state
    rec, wal, _ = recover(D, fs=fs, retention=1, segment_bytes=300)
    assert rec.snapshot == local
    wal.close()
