"""Pre-zeroed WAL segments: a segment is zero-filled and synced before it gets its name, so
appends overwrite written zeros; preparation inline (simulated file system) or on a background
thread (real one), crash safety of every step, stale files, failures, and the thread's end."""

from __future__ import annotations

import errno
import io
import logging
import os
import random
import threading

import pytest
from storage_helpers import ents

from trioraft import cli
from trioraft.core.types import Entry, HardState, SnapshotMeta
from trioraft.errors import StorageCorrupted, StorageFailed
from trioraft.storage.fs import FileSystem, SimulatedCrash, SimulatedFileSystem
from trioraft.storage.records import FRAME_HEADER
from trioraft.storage.wal import WAL, prepare_name, segment_name

D = "/data/wal"
SEG = 4096


def frames_end(data: bytes) -> int:
    """Offset just past the last frame (the first zero frame header)."""
    off = 0
    while off + FRAME_HEADER.size <= len(data):
        n, crc = FRAME_HEADER.unpack_from(data, off)
        if n == 0 and crc == 0:
            break
        off += FRAME_HEADER.size + n
    return off


def open_sync(fs: FileSystem, segment_bytes: int = SEG) -> tuple[WAL, list[Entry], HardState]:
    wal, c = WAL.open(D, fs=fs, segment_bytes=segment_bytes, prezero=True, background=False)
    return wal, c.entries, c.hard_state


def put(fs: SimulatedFileSystem, path: str, data: bytes) -> None:
    fd = fs.open(path, "w")
    fs.write(fd, data)
    fs.close(fd)


def renamed_from_prepare(fs: SimulatedFileSystem, path: str) -> bool:
    seq = int(os.path.basename(path)[:16], 16)
    return any(f"{prepare_name(seq)} -> {path}" in line for line in fs.trace)


def prepare_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("trioraft-wal-prepare-")]


def test_a_new_segment_is_zero_filled_and_appends_reopen_into_its_zeros() -> None:
    fs = SimulatedFileSystem()
    wal, e, _ = open_sync(fs)
    path = wal.segment_paths()[0]
    assert e == [] and len(fs.durable_bytes(path)) == SEG
    wal.save(ents(1, 3), HardState(1, 1, 0))
    wal.close()
    data = fs.durable_bytes(path)
    assert len(data) == SEG  # the appends overwrote zeros, the file did not grow
    end = frames_end(data)
    assert not data[end:].strip(b"\0")
    wal, e, hs = open_sync(fs)
    assert e == ents(1, 3) and hs == HardState(1, 1, 0)
    wal.save(ents(4, 5), HardState(1, 1, 3))  # appended at the clean end found on reopen
    wal.close()
    assert len(fs.read_bytes(path)) == SEG and frames_end(fs.read_bytes(path)) > end
    assert not fs.exists(path + ".broken")
    wal, e, hs = open_sync(fs)
    assert e == ents(1, 5) and hs == HardState(1, 1, 3)
    wal.close()


def test_segments_roll_into_prepared_files_and_the_chain_holds() -> None:
    fs = SimulatedFileSystem()
    fs.tracing = True
    wal, *_ = open_sync(fs)
    for i in range(1, 60):
        wal.save(ents(i, i, tag=b"x" * 200), HardState(1, 1, i - 1))
    paths = wal.segment_paths()
    wal.close()
    assert len(paths) > 3
    for p in paths:
        assert len(fs.read_bytes(p)) >= SEG
        # the name appears only by renaming the zero-filled, header-carrying file
        assert renamed_from_prepare(fs, p), p
    assert not [n for n in fs.listdir(D) if n.endswith(".prepare")]
    _, e, hs = open_sync(fs)
    assert e == [x for i in range(1, 60) for x in ents(i, i, tag=b"x" * 200)]
    assert hs == HardState(1, 1, 58)


def test_old_plain_segments_keep_working_with_prezero_on() -> None:
    fs = SimulatedFileSystem()
    wal, _ = WAL.open(D, fs=fs, segment_bytes=SEG, prezero=False)
    for i in range(1, 30):
        wal.save(ents(i, i, tag=b"x" * 200), None)
    plain = wal.segment_paths()
    wal.close()
    wal, e, _ = open_sync(fs)
    assert len(e) == 29
    for i in range(30, 60):
        wal.save(ents(i, i, tag=b"x" * 200), None)
    paths = wal.segment_paths()
    wal.close()
    assert len(fs.read_bytes(paths[-1])) >= SEG and paths[-1] not in plain
    _, e, _ = open_sync(fs)
    assert [x.index for x in e] == list(range(1, 60))


def test_a_torn_write_into_the_zeros_is_repaired() -> None:
    fs = SimulatedFileSystem()
    wal, *_ = open_sync(fs)
    for i in range(1, 6):
        wal.save(ents(i, i, tag=b"payload" * 20), HardState(1, 0, i - 1))
    path = wal.segment_paths()[-1]
    wal.close()
    data = bytearray(fs.read_bytes(path))
    end = frames_end(bytes(data))
    data[end - 40 : end] = bytes(40)  # the last write's end never reached the disk
    fs.write_bytes(path, bytes(data))
    wal, e, hs = open_sync(fs)
    assert [x.index for x in e] == [1, 2, 3, 4] and hs == HardState(1, 0, 3)
    assert fs.exists(path + ".broken")
    wal.save(ents(5, 5), HardState(1, 0, 4))
    wal.close()
    _, e, _ = open_sync(fs)
    assert [x.index for x in e] == [1, 2, 3, 4, 5]


def test_stale_prepare_files_are_removed_on_open() -> None:
    fs = SimulatedFileSystem()
    wal, *_ = open_sync(fs)
    wal.save(ents(1, 2), None)
    wal.close()
    put(fs, f"{D}/{prepare_name(1)}", bytes(100))
    put(fs, f"{D}/{prepare_name(7)}", b"junk")
    wal, e, _ = open_sync(fs)
    assert e == ents(1, 2)
    assert not [n for n in fs.listdir(D) if n.endswith(".prepare")]
    wal.close()
    # an empty directory holding only an interrupted first preparation
    fs2 = SimulatedFileSystem()
    fs2.mkdir("/data")
    fs2.mkdir(D)
    put(fs2, f"{D}/{prepare_name(0)}", bytes(SEG))
    wal, e, _ = open_sync(fs2)
    assert e == [] and sorted(fs2.listdir(D)) == sorted(["LOCK", segment_name(0, 1)])
    wal.close()


@pytest.mark.parametrize("background", [False, True])
def test_a_full_disk_while_preparing_falls_back_to_a_plain_segment(
    background: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    fs = SimulatedFileSystem()
    fs.tracing = True
    fs.inject_fault("write", errno.ENOSPC, match=".wal.prepare", count=2)
    wal, _ = WAL.open(D, fs=fs, segment_bytes=SEG, prezero=True, background=background)
    first = wal.segment_paths()[0]
    assert not renamed_from_prepare(fs, first)  # the first segment fell back to a plain file
    for i in range(1, 40):
        wal.save(ents(i, i, tag=b"x" * 200), HardState(1, 1, i - 1))
    assert not wal.failed
    paths = wal.segment_paths()
    wal.close()
    assert len(paths) > 2
    assert "zero-fill segment 0" in caplog.text
    assert "segment 1" in caplog.text  # the second preparation failed too
    assert not renamed_from_prepare(fs, paths[1])  # so segment 1 is plain
    assert renamed_from_prepare(fs, paths[2])  # and the disk had room again for segment 2
    assert not [n for n in fs.listdir(D) if n.endswith(".prepare")]
    _, e, hs = open_sync(fs)
    assert [x.index for x in e] == list(range(1, 40)) and hs == HardState(1, 1, 38)


def test_a_write_failure_after_preparing_still_fails_loudly() -> None:
    fs = SimulatedFileSystem()
    wal, *_ = open_sync(fs)
    fs.inject_fault("fsync", errno.EIO, match=D, count=1)
    with pytest.raises(StorageFailed, match="failed"):
        wal.save(ents(1, 1), HardState(1, 1, 0))
    assert wal.failed
    wal.close()


def test_background_preparation_is_used_kept_by_release_and_stopped_on_close() -> None:
    fs = SimulatedFileSystem()
    wal, _ = WAL.open(D, fs=fs, segment_bytes=SEG, prezero=True, background=True)
    i = 0
    while not any(n.endswith(".prepare") for n in fs.listdir(D)) or prepare_threads():
        i += 1
        wal.save(ents(i, i, tag=b"x" * 200), HardState(1, 1, i - 1))
        assert i < 20, "no preparation started past half the segment"
        for t in prepare_threads():
            t.join()
    prepared = f"{D}/{prepare_name(1)}"
    assert len(fs.durable_bytes(prepared)) == SEG
    wal.save_snapshot_marker(SnapshotMeta(i, 1))
    wal.save([], HardState(1, 1, i))
    wal.release_to(i + 1)  # never touches the prepared file
    assert fs.exists(prepared)
    while len(wal.segment_paths()) < 3:
        i += 1
        wal.save(ents(i, i, tag=b"x" * 200), HardState(1, 1, i - 1))
    paths = wal.segment_paths()
    assert all(len(fs.read_bytes(p)) >= SEG for p in paths)
    wal.close()
    assert prepare_threads() == []
    assert not [n for n in fs.listdir(D) if n.endswith(".prepare")]
    _, e, _ = open_sync(fs)
    assert e[-1].index == i


def test_close_stops_a_running_preparation_real_fs(tmp_path: object) -> None:
    d = os.path.join(str(tmp_path), "wal")
    seg = 8 << 20
    wal, _ = WAL.open(d, segment_bytes=seg, prezero=True)  # real file system: background
    assert os.path.getsize(wal.segment_paths()[0]) == seg
    wal.save(ents(1, 1, tag=b"y" * (seg // 2)), HardState(1, 1, 0))
    # Past half: the next segment is being prepared (on a fast disk it may be done already,
    # so whether the thread is still running is not asserted; close must leave neither it nor
    # its file behind either way).
    wal.save(ents(2, 2), HardState(1, 1, 1))
    wal.close()
    assert prepare_threads() == []
    assert sorted(os.listdir(d)) == sorted(["LOCK", segment_name(0, 1)])
    wal, c = WAL.open(d, segment_bytes=seg, prezero=True)
    assert [x.index for x in c.entries] == [1, 2]
    wal.close()
    assert prepare_threads() == []


def test_real_fs_rolls_into_background_prepared_segments(tmp_path: object) -> None:
    d = os.path.join(str(tmp_path), "wal")
    seg = 256 << 10
    wal, _ = WAL.open(d, segment_bytes=seg, prezero=True, prepare_rate=None)
    for i in range(1, 200):
        wal.save(ents(i, i, tag=b"z" * 4000), HardState(1, 1, i - 1))
    paths = wal.segment_paths()
    wal.close()
    assert len(paths) > 2 and prepare_threads() == []
    # unthrottled, each preparation writes its segment in one piece before the cut takes it
    assert all(os.path.getsize(p) >= seg for p in paths)
    wal, c = WAL.open(d, segment_bytes=seg, prezero=True)
    wal.close()
    assert [x.index for x in c.entries] == list(range(1, 200))


def test_wal_dump_reports_the_zeros_as_a_clean_end(tmp_path: object) -> None:
    d = os.path.join(str(tmp_path), "wal")
    wal, _ = WAL.open(d, segment_bytes=1 << 20, prezero=True)
    wal.save(ents(1, 3), HardState(1, 1, 0))
    wal.close()
    out = io.StringIO()
    assert cli.wal_dump(d, out) == 0
    text = out.getvalue()
    assert "reserved bytes)" in text and "torn" not in text and "DAMAGE" not in text
    with open(os.path.join(d, prepare_name(1)), "wb") as f:
        f.write(bytes(1000))
    out = io.StringIO()
    assert cli.wal_dump(d, out) == 0
    assert prepare_name(1) in out.getvalue() and "DAMAGE" not in out.getvalue()


# -- crash at every step of creation, preparation and roll ----------------------------------


def _script(fs: SimulatedFileSystem, acked: list[int]) -> None:
    wal, *_ = open_sync(fs, segment_bytes=600)
    acked.append(0)
    for i in range(1, 16):
        wal.save(ents(i, i, tag=b"w" * 100), HardState(1, 1, i - 1))
        acked.append(i)
    wal.close()


def _count() -> int:
    fs = SimulatedFileSystem()
    _script(fs, [])
    return fs.op_count


@pytest.mark.parametrize("seed", [None, 1, 2])
def test_crash_at_every_step_of_preparation_and_roll(seed: int | None) -> None:
    n = _count()
    for point in range(n):
        fs = SimulatedFileSystem()
        fs.crash_at(point)
        acked: list[int] = []
        with pytest.raises(SimulatedCrash):
            _script(fs, acked)
        fs.crash(None if seed is None else random.Random(seed * 7919 + point))
        where = f"crash point {point} seed {seed}"
        wal, e, hs = open_sync(fs, segment_bytes=600)
        got = [x.index for x in e]
        assert got == list(range(1, len(got) + 1)), where
        if acked:
            assert len(got) >= acked[-1], where
            assert hs.commit >= max(acked[-1] - 1, 0), where
        assert not [x for x in fs.listdir(D) if x.endswith(".prepare")], where
        nxt = len(got) + 1
        wal.save(ents(nxt, nxt, term=2), HardState(2, 0, 0))
        wal.close()
        wal, e, hs = open_sync(fs, segment_bytes=600)
        assert [x.index for x in e] == list(range(1, nxt + 1)) and e[-1].term == 2, where
        assert hs == HardState(2, 0, 0), where
        wal.close()


def test_a_new_wal_zero_fills_only_a_bounded_part_of_its_first_segment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import trioraft.storage.wal as wal_module

    monkeypatch.setattr(wal_module, "FIRST_SEGMENT_ZEROED_BYTES", 2048)
    fs = SimulatedFileSystem()
    wal, *_ = open_sync(fs, segment_bytes=8192)
    first = wal.segment_paths()[0]
    assert len(fs.durable_bytes(first)) == 2048
    for i in range(1, 60):
        wal.save(ents(i, i, tag=b"x" * 200), None)  # grows past the zeros, then rolls
    paths = wal.segment_paths()
    wal.close()
    assert len(paths) > 2 and all(len(fs.read_bytes(p)) >= 8192 for p in paths[1:])
    _, e, _ = open_sync(fs, segment_bytes=8192)
    assert [x.index for x in e] == list(range(1, 60))


BIG = 8 << 20  # several zero pieces after the frames


class CountingFS(SimulatedFileSystem):
    """Remembers the largest single read (the most a reader held of a file at once)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest_read = 0

    def read(self, fd: int, n: int) -> bytes:
        out = super().read(fd, n)
        self.largest_read = max(self.largest_read, len(out))
        return out

    def pread(self, fd: int, n: int, offset: int) -> bytes:
        out = super().pread(fd, n, offset)
        self.largest_read = max(self.largest_read, len(out))
        return out


def test_reopening_reads_the_frames_not_the_zeros() -> None:
    fs = CountingFS()
    wal, *_ = open_sync(fs, BIG)
    wal.save(ents(1, 50, tag=b"x" * 100), HardState(1, 1, 0))
    wal.close()
    fs.largest_read = 0
    wal, e, hs = open_sync(fs, BIG)
    wal.close()
    assert e == ents(1, 50, tag=b"x" * 100) and hs == HardState(1, 1, 0)
    # an 8 MiB segment holding a few KiB was never read into memory whole
    assert 0 < fs.largest_read <= 1 << 20


@pytest.mark.parametrize("prezero", [True, False])
def test_an_entry_ending_in_megabytes_of_zeros_survives_reopen(prezero: bool) -> None:
    fs = SimulatedFileSystem()
    wal, _ = WAL.open(D, fs=fs, segment_bytes=BIG, prezero=prezero, background=False)
    zeros = Entry(1, 2, data=b"z" + bytes(3 << 20))  # its frame ends in three zero pieces
    wal.save([*ents(1, 1), zeros], HardState(1, 1, 0))
    wal.close()
    wal, e, _ = open_sync(fs, BIG)
    wal.close()
    assert e == [*ents(1, 1), zeros]
    assert not [n for n in fs.listdir(D) if n.endswith(".broken")]


def test_damage_before_the_zero_pieces_gets_the_whole_file_verdict() -> None:
    fs = SimulatedFileSystem()
    wal, *_ = open_sync(fs, BIG)
    for i in range(1, 6):
        wal.save(ents(i, i, tag=b"payload" * 20), HardState(1, 0, i - 1))
    path = wal.segment_paths()[-1]
    wal.close()
    clean = fs.read_bytes(path)
    end = frames_end(clean)
    # a torn last write: repaired, the original kept whole (zeros included) beside it
    torn = bytearray(clean)
    torn[end - 40 : end] = bytes(40)
    fs.write_bytes(path, bytes(torn))
    wal, e, _ = open_sync(fs, BIG)
    wal.close()
    assert [x.index for x in e] == [1, 2, 3, 4]
    assert fs.read_bytes(path + ".broken") == bytes(torn)
    # a flipped byte in an earlier frame: corruption, named with its offset
    fs.remove(path + ".broken")
    bad = bytearray(clean)
    bad[40] ^= 0xFF
    fs.write_bytes(path, bytes(bad))
    with pytest.raises(StorageCorrupted, match=os.path.basename(path)):
        open_sync(fs, BIG)


class FirstZerosFS(SimulatedFileSystem):
    """Signals once a preparation has written its first piece of zeros."""

    def __init__(self) -> None:
        super().__init__()
        self.first_piece = threading.Event()

    def write(self, fd: int, data: bytes) -> None:  # type: ignore[override]
        super().write(fd, data)
        if self._fd(fd).path.endswith(".prepare"):
            self.first_piece.set()


def test_a_cut_takes_the_next_segment_as_far_as_its_zero_fill_got() -> None:
    fs = FirstZerosFS()
    fs.tracing = True
    seg = 4 << 20
    # 64 KiB/s: after its first 1 MiB piece the thread waits about 16 s before the next
    wal, _ = WAL.open(
        D, fs=fs, segment_bytes=seg, prezero=True, background=True, prepare_rate=64 << 10
    )
    wal.save(ents(1, 1), HardState(1, 1, 0))  # the first append starts the preparation
    assert fs.first_piece.wait(30)
    i = 1
    while len(wal.segment_paths()) < 2:
        i += 1
        wal.save(ents(i, i, tag=b"x" * (256 << 10)), HardState(1, 1, i - 1))
    new = wal.segment_paths()[-1]
    # the cut did not wait for the rest: it took the zeroed first piece, synced
    assert renamed_from_prepare(fs, new)
    assert len(fs.durable_bytes(new)) == 1 << 20
    assert "trioraft-wal-prepare-1" not in [t.name for t in prepare_threads()]
    last = i
    while len(fs.read_bytes(new)) <= 1 << 20:  # appends run past the zeros, as into a plain file
        last += 1
        wal.save(ents(last, last, tag=b"y" * (128 << 10)), HardState(1, 1, last - 1))
    wal.close()
    assert prepare_threads() == []
    _, e, hs = open_sync(fs, seg)
    assert [x.index for x in e] == list(range(1, last + 1)) and hs == HardState(1, 1, last - 1)


def test_prezero_is_on_by_default_only_for_the_real_file_system(tmp_path: object) -> None:
    d = os.path.join(str(tmp_path), "wal")
    wal, _ = WAL.open(d, segment_bytes=2 << 20)
    assert os.path.getsize(wal.segment_paths()[0]) == 2 << 20
    wal.close()
    wal, _ = WAL.open(os.path.join(str(tmp_path), "wal2"), segment_bytes=2 << 20, prezero=False)
    assert os.path.getsize(wal.segment_paths()[0]) < 4096
    wal.close()
    fs = SimulatedFileSystem()
    wal, _ = WAL.open(D, fs=fs, segment_bytes=2 << 20)
    assert len(fs.read_bytes(wal.segment_paths()[0])) < 4096
    wal.close()


def test_a_segment_whose_zero_fill_failed_claims_no_zeros() -> None:
    fs = SimulatedFileSystem()
    wal, _ = WAL.open(D, fs=fs, segment_bytes=SEG, prezero=True, background=False)
    fs.inject_fault("write", errno.ENOSPC, match=prepare_name(1), count=1)
    i = 0
    while len(wal.segment_paths()) < 2:
        i += 1
        wal.save(ents(i, i, tag=b"x" * 200), HardState(1, 1, i - 1))
    # the plain segment reserves space ahead of its small appends like any plain segment
    # (claiming its whole length as zeroed would skip that and promise zeros it lacks)
    assert wal._allocated <= fs.fsize(wal._fd)  # type: ignore[arg-type]
    wal.save(ents(i + 1, i + 1), HardState(1, 1, i))
    assert fs.fsize(wal._fd) == SEG  # type: ignore[arg-type]
    wal.close()
