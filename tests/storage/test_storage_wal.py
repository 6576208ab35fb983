"""The WAL: group commit, suffix replacement, segments, markers and log resets, release, the
directory lock, damage handling and failure semantics."""

from __future__ import annotations

import errno
import os
import re

import pytest
from storage_helpers import ents, ids

import trioraft.storage.wal as wal_module
from trioraft.core.types import Entry, EntryKind, HardState, SnapshotMeta
from trioraft.errors import StorageCorrupted, StorageFailed
from trioraft.storage.fs import REAL_FS, SimulatedFileSystem, read_file
from trioraft.storage.records import FRAME_HEADER
from trioraft.storage.wal import WAL, segment_name

D = "/data/wal"


def open_sim(
    fs: SimulatedFileSystem, at: SnapshotMeta | None = None, segment_bytes: int = 1 << 20
) -> tuple[WAL, list[Entry], HardState, SnapshotMeta | None]:
    wal, c = WAL.open(D, fs=fs, at=at, segment_bytes=segment_bytes)
    return wal, c.entries, c.hard_state, c.snapshot


def test_new_wal_is_empty_and_reopens(tmp_path: object) -> None:
    d = os.path.join(str(tmp_path), "wal")
    wal, c = WAL.open(d)
    assert (c.entries, c.hard_state, c.snapshot) == ([], HardState(), None)
    assert wal.snapshot_markers() == []
    assert wal.last_index == 0
    wal.close()
    wal.close()  # idempotent
    assert sorted(os.listdir(d)) == sorted(["LOCK", segment_name(0, 1)])
    wal, c = WAL.open(d)
    assert c.entries == []
    wal.close()


def test_save_and_reopen_real_fs(tmp_path: object) -> None:
    d = os.path.join(str(tmp_path), "wal")
    with WAL.open(d)[0] as wal:
        wal.save(ents(1, 5), HardState(1, 1, 0))
        wal.save(ents(6, 6), HardState(1, 1, 5))
        wal.save([], HardState(2, 0, 5))
        assert wal.last_index == 6 and wal.hard_state == HardState(2, 0, 5)
    wal, c = WAL.open(d)
    assert c.entries == ents(1, 6)
    assert c.hard_state == HardState(2, 0, 5)
    wal.close()


def test_suffix_replacement_later_record_wins() -> None:
    fs = SimulatedFileSystem()
    wal, *_ = open_sim(fs)
    wal.save(ents(1, 10, term=1), HardState(1, 1, 3))
    wal.save(ents(6, 8, term=2), HardState(2, 2, 5))  # replaces 6..10
    wal.save(ents(9, 9, term=2), None)
    wal.save(ents(4, 4, term=3), None)  # replaces 4..9
    wal.close()
    wal, e, hs, snap = open_sim(fs)
    assert e == ents(1, 3, term=1) + ents(4, 4, term=3)
    assert hs == HardState(2, 2, 5) and snap is None
    assert wal.last_index == 4


def test_entry_kinds_terms_and_large_data_round_trip() -> None:
    fs = SimulatedFileSystem()
    wal, *_ = open_sim(fs)
    batch = [
        Entry(1, 1, EntryKind.NORMAL, b""),
        Entry(1, 2, EntryKind.CONF_CHANGE, b"cc"),
        Entry(2, 3, EntryKind.NORMAL, os.urandom(3 << 20)),
        Entry(4, 4, EntryKind.NORMAL, b"\0" * 1000),
    ]
    wal.save(batch, HardState(4, 0, 0))
    wal.close()
    _, e, _, _ = open_sim(fs)
    assert e == batch


def test_unchanged_hard_state_and_empty_save_write_nothing() -> None:
    fs = SimulatedFileSystem()
    wal, *_ = open_sim(fs)
    wal.save([], HardState(1, 1, 0))
    before = fs.op_count
    wal.save([], HardState(1, 1, 0))
    wal.save([], None)
    assert fs.op_count == before


def test_save_rejects_gaps_and_non_consecutive_batches() -> None:
    fs = SimulatedFileSystem()
    wal, *_ = open_sim(fs)
    wal.save(ents(1, 3), None)
    with pytest.raises(ValueError, match="gap"):
        wal.save(ents(5, 6), None)
    with pytest.raises(ValueError, match="consecutive"):
        wal.save([Entry(1, 4), Entry(1, 6)], None)
    wal.save(ents(4, 4), None)  # still usable
    assert wal.last_index == 4


def test_segments_roll_and_chain() -> None:
    fs = SimulatedFileSystem()
    wal, *_ = open_sim(fs, segment_bytes=300)
    for i in range(1, 41):
        wal.save(ents(i, i), HardState(1, 1, i - 1))
    paths = wal.segment_paths()
    assert len(paths) > 5
    names = [os.path.basename(p) for p in paths]
    for seq, name in enumerate(names):
        m = re.match(r"^([0-9a-f]{16})-([0-9a-f]{16})\.wal$", name)
        assert m and int(m.group(1), 16) == seq
    assert int(names[3][17:33], 16) > 1  # first index hint of a later segment
    wal.close()
    wal, e, hs, _ = open_sim(fs, segment_bytes=300)
    assert e == ents(1, 40) and hs == HardState(1, 1, 39)


def test_a_missing_segment_is_refused() -> None:
    fs = SimulatedFileSystem()
    wal, *_ = open_sim(fs, segment_bytes=200)
    for i in range(1, 30):
        wal.save(ents(i, i), None)
    middle = wal.segment_paths()[2]
    wal.close()
    fs.remove(middle)
    with pytest.raises(StorageCorrupted, match="missing"):
        open_sim(fs)


def test_a_segment_from_another_wal_breaks_the_chain() -> None:
    fs = SimulatedFileSystem()
    for d, tag in (("/a", b"a"), ("/b", b"b")):
        wal, _ = WAL.open(d, fs=fs, segment_bytes=150)
        for i in range(1, 12):
            wal.save(ents(i, i, tag=tag), None)
        wal.close()
    names = fs.listdir("/a")
    second = next(n for n in names if n.startswith("0000000000000002-"))
    assert second in fs.listdir("/b")
    fs.write_bytes(f"/a/{second}", fs.read_bytes(f"/b/{second}"))
    with pytest.raises(StorageCorrupted, match="CRC link") as info:
        WAL.open("/a", fs=fs)
    # the swapped segment's own link may even match (same history up to it): then the next
    # segment's link does not
    assert info.value.path.startswith("/a/") and info.value.path >= f"/a/{second}"


def test_second_opener_is_refused_real_fs(tmp_path: object) -> None:
    d = os.path.join(str(tmp_path), "wal")
    wal, _ = WAL.open(d)
    with pytest.raises(StorageFailed, match="already in use"):
        WAL.open(d)
    wal.close()
    WAL.open(d)[0].close()


def test_second_opener_is_refused_sim() -> None:
    fs = SimulatedFileSystem()
    wal, *_ = open_sim(fs)
    with pytest.raises(StorageFailed, match="already in use"):
        open_sim(fs)
    wal.close()
    open_sim(fs)[0].close()


# -- markers and the log reset --------------------------------------------------------------------


def test_open_at_a_marker_returns_the_tail() -> None:
    fs = SimulatedFileSystem()
    wal, *_ = open_sim(fs)
    wal.save(ents(1, 20), HardState(1, 1, 15))
    wal.save_snapshot_marker(SnapshotMeta(10, 1))
    wal.save(ents(21, 22), HardState(1, 1, 20))
    assert wal.snapshot_markers() == [SnapshotMeta(10, 1)]
    wal.close()
    wal, e, hs, snap = open_sim(fs, at=SnapshotMeta(10, 1))
    assert snap == SnapshotMeta(10, 1)
    assert e == ents(11, 22) and hs == HardState(1, 1, 20)
    wal.close()
    # no exact marker: the newest one at or below is used
    wal, e, _, snap = open_sim(fs, at=SnapshotMeta(15, 1))
    assert snap == SnapshotMeta(10, 1) and e == ents(11, 22)
    wal.close()
    wal, e, _, snap = open_sim(fs, at=None)
    assert snap is None and e == ents(1, 22)


def test_local_snapshot_marker_keeps_the_log() -> None:
    fs = SimulatedFileSystem()
    wal, *_ = open_sim(fs)
    wal.save(ents(1, 10, term=2), HardState(2, 1, 8))
    wal.save_snapshot_marker(SnapshotMeta(8, 2))
    assert wal.last_index == 10
    wal.close()
    _, e, _, _ = open_sim(fs, at=SnapshotMeta(8, 2))
    assert ids(e) == [(9, 2), (10, 2)]


def test_install_marker_resets_a_conflicting_log() -> None:
    fs = SimulatedFileSystem()
    wal, *_ = open_sim(fs)
    wal.save(ents(1, 10, term=1), HardState(1, 0, 4))
    # leader (term 3) installs snapshot 7/2: our entry 7 has term 1, so the log is replaced
    wal.save_snapshot_marker(SnapshotMeta(7, 2))
    assert wal.last_index == 7
    wal.save(ents(8, 9, term=3), HardState(3, 0, 7))
    wal.close()
    _, e, hs, snap = open_sim(fs, at=SnapshotMeta(7, 2))
    assert snap == SnapshotMeta(7, 2)
    assert ids(e) == [(8, 3), (9, 3)]  # stale 8..10 of term 1 are gone
    assert hs == HardState(3, 0, 7)


def test_install_marker_beyond_the_log_resets() -> None:
    fs = SimulatedFileSystem()
    wal, *_ = open_sim(fs)
    wal.save(ents(1, 3), HardState(1, 0, 3))
    wal.save_snapshot_marker(SnapshotMeta(50, 4))
    wal.save(ents(51, 52, term=4), HardState(4, 0, 50))
    wal.close()
    _, e, _, _ = open_sim(fs, at=SnapshotMeta(50, 4))
    assert ids(e) == [(51, 4), (52, 4)]


def test_install_marker_without_durable_commit_is_undone() -> None:
    """Marker written, crash before the hard state that commits it: the node restarts exactly as
    it was before the install (the marker drops nothing)."""
    fs = SimulatedFileSystem()
    wal, *_ = open_sim(fs)
    wal.save(ents(1, 10, term=1), HardState(1, 0, 4))
    wal.save_snapshot_marker(SnapshotMeta(7, 2))
    wal.close()
    wal, e, hs, snap = open_sim(fs, at=None)
    assert e == ents(1, 10, term=1) and hs == HardState(1, 0, 4) and snap is None
    # the node then catches up normally: the leader overwrites from the conflict
    wal.save(ents(5, 9, term=2), HardState(2, 0, 9))
    wal.close()
    _, e, _, _ = open_sim(fs, at=None)
    assert ids(e) == [(i, 1) for i in range(1, 5)] + [(i, 2) for i in range(5, 10)]


def test_no_marker_at_or_below_is_refused() -> None:
    fs = SimulatedFileSystem()
    wal, *_ = open_sim(fs, segment_bytes=200)
    for i in range(1, 30):
        wal.save(ents(i, i), HardState(1, 0, i))
    wal.save_snapshot_marker(SnapshotMeta(20, 1))
    wal.save(ents(30, 30), None)
    wal.release_to(20)
    wal.close()
    with pytest.raises(StorageCorrupted, match="no snapshot marker"):
        open_sim(fs, at=SnapshotMeta(5, 1))
    with pytest.raises(StorageCorrupted, match="no snapshot marker"):
        open_sim(fs, at=None)
    _, e, _, _ = open_sim(fs, at=SnapshotMeta(20, 1))
    assert e == ents(21, 30)


# -- release -------------------------------------------------------------------------------------


def test_release_deletes_whole_segments_below_the_newest_usable_marker() -> None:
    fs = SimulatedFileSystem()
    wal, *_ = open_sim(fs, segment_bytes=200)
    for i in range(1, 31):
        wal.save(ents(i, i), HardState(1, 0, i - 1))
    n_before = len(wal.segment_paths())
    wal.save_snapshot_marker(SnapshotMeta(25, 1))
    marker_segment = wal.segment_paths()[-1]
    wal.release_to(25)
    after = wal.segment_paths()
    assert len(after) < n_before
    assert marker_segment in after
    for p in after[:-1]:  # nothing kept that is wholly below... except the marker's own
        assert os.path.basename(p) >= os.path.basename(after[0])
    assert wal.snapshot_markers() == [SnapshotMeta(25, 1)]
    wal.close()
    _, e, hs, snap = open_sim(fs, at=SnapshotMeta(25, 1))
    assert e == ents(26, 30) and hs == HardState(1, 0, 29) and snap == SnapshotMeta(25, 1)


def test_release_never_passes_a_marker_above_the_durable_commit() -> None:
    fs = SimulatedFileSystem()
    wal, *_ = open_sim(fs, segment_bytes=200)
    for i in range(1, 31):
        wal.save(ents(i, i), HardState(1, 0, 10))
    wal.save_snapshot_marker(SnapshotMeta(25, 1))  # commit is only 10: not usable yet
    before = wal.segment_paths()
    wal.release_to(25)
    assert wal.segment_paths() == before  # the only usable marker is the empty one in seg 0
    wal.save([], HardState(1, 0, 25))
    wal.release_to(25)
    assert len(wal.segment_paths()) < len(before)


def test_release_keeps_older_markers_segments_when_asked_for_less() -> None:
    fs = SimulatedFileSystem()
    wal, *_ = open_sim(fs, segment_bytes=200)
    for i in range(1, 21):
        wal.save(ents(i, i), HardState(1, 0, i))
    wal.save_snapshot_marker(SnapshotMeta(10, 1))
    for i in range(21, 41):
        wal.save(ents(i, i), HardState(1, 0, i))
    wal.save_snapshot_marker(SnapshotMeta(30, 1))
    wal.release_to(10)  # keep back to the older snapshot (retention 2)
    assert wal.snapshot_markers() == [SnapshotMeta(10, 1), SnapshotMeta(30, 1)]
    wal.close()
    _, e, _, _ = open_sim(fs, at=SnapshotMeta(10, 1))
    assert e == ents(11, 40)


# -- failures ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "err"), [("write", errno.ENOSPC), ("fsync", errno.EIO)], ids=["ENOSPC", "EIO"]
)
def test_failed_write_or_fsync_fails_the_wal_for_good(op: str, err: int) -> None:
    fs = SimulatedFileSystem()
    wal, *_ = open_sim(fs)
    wal.save(ents(1, 2), HardState(1, 0, 0))
    fs.inject_fault(op, err, match=D)
    with pytest.raises(StorageFailed) as info:
        wal.save(ents(3, 3), None)
    assert os.strerror(err) in str(info.value)
    assert wal.failed
    with pytest.raises(StorageFailed, match="refuses"):
        wal.save(ents(3, 3), None)
    with pytest.raises(StorageFailed, match="refuses"):
        wal.save_snapshot_marker(SnapshotMeta(2, 1))
    with pytest.raises(StorageFailed, match="refuses"):
        wal.release_to(1)
    assert wal.last_index == 2
    wal.close()
    _, e, _, _ = open_sim(fs)
    assert e[:2] == ents(1, 2)


def test_failure_while_starting_a_segment() -> None:
    fs = SimulatedFileSystem()
    wal, *_ = open_sim(fs, segment_bytes=100)
    wal.save(ents(1, 3), None)
    fs.inject_fault("fsync", errno.EIO, match=D)
    with pytest.raises(StorageFailed):
        wal.save(ents(4, 4), None)
    with pytest.raises(StorageFailed):
        wal.save(ents(4, 4), None)


def test_closed_wal_refuses_writes() -> None:
    fs = SimulatedFileSystem()
    wal, *_ = open_sim(fs)
    wal.close()
    with pytest.raises(StorageFailed, match="closed"):
        wal.save(ents(1, 1), None)


# -- damage --------------------------------------------------------------------------------------


def _frames_of(data: bytes) -> list[tuple[int, int]]:
    out = []
    off = 0
    while off + 8 <= len(data):
        n, _ = FRAME_HEADER.unpack_from(data, off)
        if n == 0:
            break
        out.append((off, off + 8 + n))
        off += 8 + n
    return out


def _one_segment(fs: SimulatedFileSystem, saves: int = 6) -> str:
    wal, *_ = open_sim(fs)
    for i in range(1, saves + 1):
        wal.save(ents(i, i, tag=b"payload" * 5), HardState(1, 0, i - 1))
    wal.close()
    return os.path.join(D, segment_name(0, 1))


@pytest.mark.parametrize("which", [2, 3, 4])
def test_mid_log_crc_mismatch_is_refused_with_file_and_offset(which: int) -> None:
    fs = SimulatedFileSystem()
    path = _one_segment(fs)
    data = bytearray(fs.read_bytes(path))
    start, end = _frames_of(bytes(data))[which]
    data[(start + end) // 2] ^= 0x55
    fs.write_bytes(path, bytes(data))
    with pytest.raises(StorageCorrupted) as info:
        open_sim(fs)
    err = info.value
    assert err.path == path and err.offset == start
    assert path in str(err) and f"offset {start}" in str(err)
    assert not fs.exists(path + ".broken")


def test_corrupt_last_frame_without_zeros_is_refused() -> None:
    fs = SimulatedFileSystem()
    path = _one_segment(fs)
    data = bytearray(fs.read_bytes(path))
    _, end = _frames_of(bytes(data))[-1]
    data[end - 3] ^= 0x01
    fs.write_bytes(path, bytes(data))
    with pytest.raises(StorageCorrupted, match="CRC mismatch"):
        open_sim(fs)


def test_damage_in_an_earlier_segment_is_refused_even_at_its_end() -> None:
    fs = SimulatedFileSystem()
    wal, *_ = open_sim(fs, segment_bytes=200)
    for i in range(1, 20):
        wal.save(ents(i, i), None)
    first = wal.segment_paths()[0]
    wal.close()
    data = fs.read_bytes(first)
    fs.write_bytes(first, data[:-5])  # "torn", but not in the last segment
    with pytest.raises(StorageCorrupted) as info:
        open_sim(fs)
    assert info.value.path == first


def test_torn_tail_is_repaired_and_the_original_kept() -> None:
    fs = SimulatedFileSystem()
    path = _one_segment(fs)
    data = fs.read_bytes(path)
    frames = _frames_of(data)
    cut = frames[-1][0] + 11
    fs.write_bytes(path, data[:cut])
    wal, e, hs, _ = open_sim(fs)
    assert e == [x for i in range(1, 6) for x in ents(i, i, tag=b"payload" * 5)]
    assert hs == HardState(1, 0, 4)
    assert fs.read_bytes(path + ".broken") == data[:cut]
    assert fs.read_bytes(path) == data[: frames[-1][0]]
    # the repaired WAL continues the CRC chain
    wal.save(ents(6, 6), HardState(1, 0, 5))
    wal.close()
    _, e, _, _ = open_sim(fs)
    assert e[-1] == ents(6, 6)[0]


def test_zero_filled_tail_after_the_last_frame_is_a_clean_end() -> None:
    fs = SimulatedFileSystem()
    path = _one_segment(fs)
    data = fs.read_bytes(path)
    fs.write_bytes(path, data + bytes(4096))
    wal, e, *_ = open_sim(fs)
    assert len(e) == 6
    assert not fs.exists(path + ".broken")
    wal.save(ents(7, 7), None)
    wal.close()
    _, e, *_ = open_sim(fs)
    assert ids(e)[-1] == (7, 1)


def test_interrupted_segment_start_is_set_aside() -> None:
    fs = SimulatedFileSystem()
    wal, *_ = open_sim(fs, segment_bytes=200)
    for i in range(1, 10):
        wal.save(ents(i, i), None)
    last = wal.segment_paths()[-1]
    n = len(wal.segment_paths())
    wal.close()
    fs.write_bytes(last, fs.read_bytes(last)[:5])  # header torn
    wal, e, *_ = open_sim(fs, segment_bytes=200)
    assert fs.exists(last + ".broken")
    assert len(wal.segment_paths()) == n - 1
    assert e == ents(1, len(e)) and len(e) >= 1


def test_interrupted_creation_starts_over(tmp_path: object) -> None:
    d = os.path.join(str(tmp_path), "wal")
    os.makedirs(d)
    with open(os.path.join(d, segment_name(0, 1)), "wb") as f:
        f.write(b"\x10\x00")
    wal, c = WAL.open(d)
    assert c.entries == [] and c.snapshot is None
    assert os.path.exists(os.path.join(d, segment_name(0, 1) + ".broken"))
    wal.close()
    assert read_file(REAL_FS, os.path.join(d, segment_name(0, 1)))


def test_segments_are_reserved_ahead_of_appends_and_reopen_cleanly(tmp_path: object) -> None:
    d = os.path.join(str(tmp_path), "wal")
    with WAL.open(d, prezero=False)[0] as wal:
        wal.save(ents(1, 50), HardState(1, 1, 0))
        path = wal.segment_paths()[-1]
        written = sum(len(f) for _, f in _frames_with_bytes(read_file(REAL_FS, path)))
        # the file runs ahead of its frames: later appends overwrite allocated zeros
        assert os.path.getsize(path) >= written + (1 << 20)
    wal, c = WAL.open(d)
    assert c.entries == ents(1, 50) and c.hard_state == HardState(1, 1, 0)
    wal.save(ents(51, 60), HardState(1, 1, 50))
    wal.close()
    wal, c = WAL.open(d)
    assert c.entries == ents(1, 60) and c.hard_state == HardState(1, 1, 50)
    assert not os.path.exists(path + ".broken")
    wal.close()


def test_reservation_never_passes_the_segment_roll_point() -> None:
    fs = SimulatedFileSystem()
    wal, *_ = open_sim(fs, segment_bytes=4096)
    for i in range(1, 40):
        wal.save(ents(i, i, tag=b"x" * 200), None)
    paths = wal.segment_paths()
    wal.close()
    assert len(paths) > 2
    for p in paths[:-1]:
        frames = _frames_with_bytes(fs.read_bytes(p))
        # a full segment ends at its last frame (which may cross the roll point), no zeros after
        assert len(fs.read_bytes(p)) == sum(len(f) for _, f in frames)
    _, e, *_ = open_sim(fs, segment_bytes=4096)
    assert e == [x for i in range(1, 40) for x in ents(i, i, tag=b"x" * 200)]


def test_a_torn_write_into_reserved_space_is_repaired() -> None:
    fs = SimulatedFileSystem()
    path = _one_segment(fs)
    data = fs.read_bytes(path)
    frames = _frames_with_bytes(data)
    last_off, last = frames[-1]
    assert len(data) > last_off + len(last)  # reserved zeros follow the frames
    # the last write's second half never reached the disk: its sectors still read as zeros
    torn = bytearray(data)
    half = last_off + len(last) // 2
    torn[half : last_off + len(last)] = bytes(last_off + len(last) - half)
    fs.write_bytes(path, bytes(torn))
    wal, e, hs, _ = open_sim(fs)
    assert e == [x for i in range(1, 6) for x in ents(i, i, tag=b"payload" * 5)]
    assert hs == HardState(1, 0, 4)
    assert fs.exists(path + ".broken")
    wal.save(ents(6, 6), HardState(1, 0, 5))
    wal.close()
    _, e, *_ = open_sim(fs)
    assert ids(e)[-1] == (6, 1) and len(e) == 6


def test_failing_to_reserve_space_only_costs_speed(caplog: pytest.LogCaptureFixture) -> None:
    fs = SimulatedFileSystem()
    wal, *_ = open_sim(fs)
    fs.inject_fault("allocate", errno.EOPNOTSUPP, match=D, count=100)
    for i in range(1, 4):
        wal.save(ents(i, i), HardState(1, 0, i - 1))
    assert not wal.failed
    assert caplog.text.count("cannot reserve segment space") == 1
    path = wal.segment_paths()[-1]
    wal.close()
    data = fs.read_bytes(path)
    assert len(data) == sum(len(f) for _, f in _frames_with_bytes(data))
    _, e, hs, _ = open_sim(fs)
    assert e == ents(1, 3) and hs == HardState(1, 0, 2)


def _frames_with_bytes(data: bytes) -> list[tuple[int, bytes]]:
    """(offset, whole frame) for every frame before the first zero header."""
    out = []
    off = 0
    while off + FRAME_HEADER.size <= len(data):
        n, crc = FRAME_HEADER.unpack_from(data, off)
        if n == 0 and crc == 0:
            break
        end = off + FRAME_HEADER.size + n
        out.append((off, data[off:end]))
        off = end
    return out


def test_large_writes_append_without_reserving(tmp_path: object) -> None:
    d = os.path.join(str(tmp_path), "wal")
    with WAL.open(d, prezero=False)[0] as wal:
        wal.save(ents(1, 1, tag=b"x" * 10000), HardState(1, 1, 0))
        path = wal.segment_paths()[-1]
        data = read_file(REAL_FS, path)
        assert len(data) == sum(len(f) for _, f in _frames_with_bytes(data))
        wal.save(ents(2, 2), HardState(1, 1, 1))  # a small one reserves from its own end
        data = read_file(REAL_FS, path)
        assert len(data) >= sum(len(f) for _, f in _frames_with_bytes(data)) + (1 << 20) - 4096
    wal, c = WAL.open(d)
    wal.close()
    assert [e.index for e in c.entries] == [1, 2]


def test_a_save_beyond_the_record_limit_is_refused_before_writing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # replay reads a frame longer than the limit as damage, so none may be written
    fs = SimulatedFileSystem()
    wal, *_ = open_sim(fs)
    wal.save(ents(1, 2), HardState(1, 0, 0))
    path = wal.segment_paths()[-1]
    before = fs.read_bytes(path)
    monkeypatch.setattr(wal_module, "MAX_RECORD_BYTES", 1000)
    with pytest.raises(ValueError, match="record limit"):
        wal.save(ents(3, 40, tag=b"x" * 50), None)
    with pytest.raises(ValueError, match="record limit"):
        wal.save(ents(3, 3, tag=b"x" * 2000), None)
    assert fs.read_bytes(path) == before
    assert not wal.failed and wal.last_index == 2
    wal.save(ents(3, 3), None)
    wal.close()
    _, e, _, _ = open_sim(fs)
    assert e == ents(1, 3)


@pytest.mark.parametrize("first", [1, 3, 6], ids=["from-base", "suffix", "append"])
def test_a_failed_fdatasync_leaves_the_durable_state(first: int) -> None:
    # the writer's state is updated before the fdatasync and must be put back when it fails
    fs = SimulatedFileSystem()
    wal, *_ = open_sim(fs)
    wal.save(ents(1, 2), HardState(1, 0, 0))
    wal.save(ents(3, 5, term=2), HardState(2, 0, 2))
    fs.inject_fault("fsync", errno.EIO, match=D)
    with pytest.raises(StorageFailed):
        wal.save(ents(first, 8, term=3), HardState(3, 1, 4))
    assert wal.last_index == 5
    assert wal.hard_state == HardState(2, 0, 2)
    assert [wal._term_at(i) for i in range(7)] == [0, 1, 1, 2, 2, 2, None]
    wal.close()
    fs.crash(None)
    _, e, hs, _ = open_sim(fs)
    assert (e, hs) == (ents(1, 2) + ents(3, 5, term=2), HardState(2, 0, 2))
