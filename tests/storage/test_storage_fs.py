"""The file-system seam: the real implementation and the simulated one behave alike, and the
simulated one loses exactly what was not made durable when it crashes."""

from __future__ import annotations

import errno
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from trioraft.storage.fs import (
    REAL_FS,
    FileSystem,
    LockHeldError,
    NoSyncFileSystem,
    SimulatedCrash,
    SimulatedFileSystem,
    ensure_dir,
    read_file,
    write_file_durably,
)


@pytest.fixture(params=["real", "sim"])
def fs_root(request: pytest.FixtureRequest, tmp_path: object) -> Iterator[tuple[FileSystem, str]]:
    if request.param == "real":
        yield REAL_FS, str(tmp_path)
    else:
        sim = SimulatedFileSystem()
        sim.mkdir("/root")
        yield sim, "/root"


def test_basic_file_operations(fs_root: tuple[FileSystem, str]) -> None:
    fs, root = fs_root
    p = os.path.join(root, "f")
    fd = fs.open(p, "w")
    fs.write(fd, b"hello ")
    fs.writev(fd, [b"wor", memoryview(b"ld"), bytearray(b"!")])
    assert fs.fsize(fd) == 12
    fs.pwrite(fd, b"J", 0)
    fs.seek(fd, 0)
    assert fs.read(fd, 5) == b"Jello"
    assert fs.pread(fd, 100, 6) == b"world!"
    fs.truncate(fd, 5)
    fs.fdatasync(fd)
    fs.fsync(fd)
    fs.close(fd)
    assert fs.size(p) == 5
    assert read_file(fs, p) == b"Jello"

    fd = fs.open(p, "a")
    fs.write(fd, b"!")
    fs.close(fd)
    assert read_file(fs, p) == b"Jello!"

    with pytest.raises(FileExistsError):
        fs.open(p, "x")
    with pytest.raises(FileNotFoundError):
        fs.open(os.path.join(root, "missing"), "r")
    with pytest.raises(FileNotFoundError):
        fs.open(os.path.join(root, "missing"), "r+")


def test_directory_operations(fs_root: tuple[FileSystem, str]) -> None:
    fs, root = fs_root
    d = os.path.join(root, "a", "b", "c")
    ensure_dir(fs, d)
    assert fs.isdir(d)
    ensure_dir(fs, d)  # idempotent
    write_file_durably(fs, os.path.join(d, "x"), b"1")
    fs.fsync_dir(d)
    assert fs.listdir(d) == ["x"]
    fs.rename(os.path.join(d, "x"), os.path.join(d, "y"))
    assert fs.listdir(d) == ["y"]
    assert fs.exists(os.path.join(d, "y")) and not fs.exists(os.path.join(d, "x"))
    fs.rename(d, os.path.join(root, "a", "moved"))
    assert fs.listdir(os.path.join(root, "a")) == ["b", "moved"]
    assert read_file(fs, os.path.join(root, "a", "moved", "y")) == b"1"
    with pytest.raises(FileExistsError):
        fs.mkdir(os.path.join(root, "a"))
    fs.remove(os.path.join(root, "a", "moved", "y"))
    assert fs.listdir(os.path.join(root, "a", "moved")) == []
    fs.rmtree(os.path.join(root, "a"))
    assert not fs.exists(os.path.join(root, "a"))
    assert not fs.isdir(os.path.join(root, "nothing"))


def test_lock_is_exclusive_until_released(fs_root: tuple[FileSystem, str]) -> None:
    fs, root = fs_root
    p = os.path.join(root, "LOCK")
    lock = fs.lock(p)
    with pytest.raises(LockHeldError) as info:
        fs.lock(p)
    assert p in str(info.value)
    lock.release()
    lock.release()  # idempotent
    again = fs.lock(p)
    again.release()


def test_nosync_wrapper_skips_fsyncs_only() -> None:
    sim = SimulatedFileSystem()
    fs = NoSyncFileSystem(sim)
    fd = fs.open("/f", "w")
    fs.write(fd, b"abc")
    fs.fsync(fd)
    fs.fdatasync(fd)
    fs.fsync_dir("/")
    fs.close(fd)
    assert sim.read_bytes("/f") == b"abc"
    assert sim.durable_bytes("/f") == b""


# -- the simulated crash model --------------------------------------------------------------------


def _make(sim: SimulatedFileSystem, path: str, data: bytes, *, sync: bool, dir_sync: bool) -> None:
    fd = sim.open(path, "w")
    sim.write(fd, data)
    if sync:
        sim.fsync(fd)
    sim.close(fd)
    if dir_sync:
        sim.fsync_dir(os.path.dirname(path))


def test_crash_keeps_only_durable_state_when_pessimistic() -> None:
    sim = SimulatedFileSystem()
    sim.mkdir("/d")
    sim.fsync_dir("/")
    _make(sim, "/d/synced", b"durable", sync=True, dir_sync=True)
    fd = sim.open("/d/synced", "a")
    sim.write(fd, b" + lost")
    sim.close(fd)
    _make(sim, "/d/no-dir-sync", b"x", sync=True, dir_sync=False)
    sim.crash(None)
    assert sim.listdir("/d") == ["synced"]
    assert sim.read_bytes("/d/synced") == b"durable"


def test_crash_reverts_rename_without_dir_fsync() -> None:
    sim = SimulatedFileSystem()
    _make(sim, "/a", b"1", sync=True, dir_sync=True)
    sim.rename("/a", "/b")
    sim.crash(None)
    assert sim.listdir("/") == ["a"]
    sim.rename("/a", "/b")
    sim.fsync_dir("/")
    sim.crash(None)
    assert sim.listdir("/") == ["b"]


def test_rename_durable_through_either_directory() -> None:
    sim = SimulatedFileSystem()
    for d in ("/src", "/dst"):
        sim.mkdir(d)
    sim.fsync_dir("/")
    _make(sim, "/src/f", b"1", sync=True, dir_sync=True)
    sim.rename("/src/f", "/dst/f")
    sim.fsync_dir("/dst")
    sim.crash(None)
    assert sim.listdir("/src") == [] and sim.listdir("/dst") == ["f"]


def test_renamed_directory_keeps_its_synced_content() -> None:
    sim = SimulatedFileSystem()
    sim.mkdir("/tmp")
    sim.mkdir("/snap")
    sim.fsync_dir("/")
    sim.mkdir("/tmp/build")  # never fsynced in /tmp: only the rename into /snap is
    _make(sim, "/tmp/build/file", b"data", sync=True, dir_sync=True)
    sim.rename("/tmp/build", "/snap/done")
    sim.fsync_dir("/snap")
    sim.crash(None)
    assert sim.listdir("/snap") == ["done"]
    assert sim.read_bytes("/snap/done/file") == b"data"


@pytest.mark.parametrize("seed", range(40))
def test_crash_tears_unsynced_appends_into_prefix_plus_zeros(seed: int) -> None:
    print("seed", seed)
    sim = SimulatedFileSystem()
    _make(sim, "/f", b"A" * 100, sync=True, dir_sync=True)
    fd = sim.open("/f", "a")
    sim.write(fd, b"B" * 1000)
    sim.close(fd)
    sim.crash(random.Random(seed))
    got = sim.read_bytes("/f")
    assert got.startswith(b"A" * 100)
    tail = got[100:]
    assert len(tail) <= 1000
    real = len(tail) - len(tail.lstrip(b"B"))
    assert tail[real:] == bytes(len(tail) - real), "after the written prefix only zeros"


def test_crash_may_keep_started_writeback_ahead_of_earlier_bytes() -> None:
    """Sectors of a range whose writeback was started may reach the disk before the bytes in
    front of them (never anything but the written bytes or zeros, sector by sector)."""
    outcomes = set()
    for seed in range(60):
        sim = SimulatedFileSystem()
        _make(sim, "/f", b"A" * 100, sync=True, dir_sync=True)
        fd = sim.open("/f", "r+")
        sim.pwrite(fd, b"C" * 1500, 1100)  # beyond the end: a hole, then data
        sim.writeback(fd, 1100, 1500)
        sim.pwrite(fd, b"B" * 1000, 100)  # the hole filled, no writeback started
        sim.close(fd)
        sim.crash(random.Random(seed))
        got = sim.read_bytes("/f")
        assert got.startswith(b"A" * 100), seed
        live = b"A" * 100 + b"B" * 1000 + b"C" * 1500
        for s in range(0, len(got), 512):
            for i in range(s, min(s + 512, len(got))):
                assert got[i] in (0, live[i]), (seed, i)
        if b"C" in got and b"B" * 1000 not in got:
            outcomes.add("later data without the bytes before it")
        if b"C" not in got:
            outcomes.add("nothing of the started range")
    assert outcomes == {"later data without the bytes before it", "nothing of the started range"}


def test_fsync_forgets_started_writeback() -> None:
    sim = SimulatedFileSystem()
    _make(sim, "/f", b"A" * 100, sync=True, dir_sync=True)
    fd = sim.open("/f", "r+")
    sim.pwrite(fd, b"C" * 600, 1000)
    sim.writeback(fd, 1000, 600)
    sim.fsync(fd)
    sim.pwrite(fd, b"D" * 100, 1600)  # appended after the sync, no writeback
    sim.close(fd)
    for seed in range(20):
        sim.crash(random.Random(seed))
        got = sim.read_bytes("/f")
        assert got[:1600] == b"A" * 100 + bytes(900) + b"C" * 600, seed
        fd = sim.open("/f", "r+")
        sim.pwrite(fd, b"D" * 100, 1600)
        sim.close(fd)


@pytest.mark.parametrize("seed", range(20))
def test_crash_of_overwritten_region_mixes_whole_sectors(seed: int) -> None:
    print("seed", seed)
    sim = SimulatedFileSystem()
    _make(sim, "/f", b"\0" * 4096, sync=True, dir_sync=True)
    fd = sim.open("/f", "r+")
    sim.pwrite(fd, b"X" * 2000, 100)
    sim.close(fd)
    sim.crash(random.Random(seed))
    got = sim.read_bytes("/f")
    assert len(got) == 4096
    for s in range(0, 4096, 512):
        sector = got[s : s + 512]
        new = bytearray(512)
        for i in range(512):
            if 100 <= s + i < 2100:
                new[i] = ord("X")
        assert sector in (bytes(512), bytes(new))


def test_fault_injection_enospc_and_eio() -> None:
    sim = SimulatedFileSystem()
    fd = sim.open("/f", "w")
    sim.inject_fault("write", errno.ENOSPC, match="/f", after=1)
    sim.write(fd, b"ok")
    with pytest.raises(OSError) as info:
        sim.write(fd, b"full")
    assert info.value.errno == errno.ENOSPC
    sim.write(fd, b"again")  # count=1: only one failure
    sim.inject_fault("fsync", errno.EIO)
    with pytest.raises(OSError) as info:
        sim.fsync(fd)
    assert info.value.errno == errno.EIO
    assert sim.durable_bytes("/f") == b""
    sim.fsync(fd)
    assert sim.durable_bytes("/f") == b"okagain"
    sim.inject_fault("open", errno.EACCES, count=2)
    with pytest.raises(PermissionError):
        sim.open("/g", "w")
    sim.clear_faults()
    sim.close(sim.open("/g", "w"))


def test_crash_at_stops_the_machine_until_reboot() -> None:
    sim = SimulatedFileSystem()
    sim.tracing = True
    fd = sim.open("/f", "w")  # op 0: create
    sim.write(fd, b"a")  # op 1
    sim.crash_at(sim.op_count + 1)
    sim.fsync(fd)  # op 2
    with pytest.raises(SimulatedCrash):
        sim.write(fd, b"b")
    assert sim.crashed
    with pytest.raises(SimulatedCrash):
        sim.listdir("/")
    assert "CRASH" in sim.trace[-1]
    sim.crash(None)
    assert not sim.crashed
    assert sim.listdir("/") == []  # the create was never made durable by a dir fsync


def test_crash_drops_locks_and_descriptors() -> None:
    sim = SimulatedFileSystem()
    sim.lock("/LOCK")
    fd = sim.open("/f", "w")
    sim.crash(None)
    sim.lock("/LOCK").release()
    with pytest.raises(OSError):
        sim.write(fd, b"x")


def test_paths_and_write_bytes_helpers() -> None:
    sim = SimulatedFileSystem()
    sim.mkdir("/d")
    _make(sim, "/d/f", b"abc", sync=False, dir_sync=False)
    sim.write_bytes("/d/f", b"xyz")
    assert sim.durable_bytes("/d/f") == b"xyz"
    assert sim.paths() == ["/d", "/d/f"]
    assert sim.paths("/d") == ["/d/f"]


def test_simulated_rename_rules() -> None:
    sim = SimulatedFileSystem()
    sim.mkdir("/a")
    sim.mkdir("/a/b")
    _make(sim, "/a/b/f", b"1", sync=False, dir_sync=False)
    with pytest.raises(OSError) as info:
        sim.rename("/a", "/a/b/inside")
    assert info.value.errno == errno.EINVAL
    sim.mkdir("/full")
    _make(sim, "/full/x", b"1", sync=False, dir_sync=False)
    with pytest.raises(OSError) as info:
        sim.rename("/a", "/full")
    assert info.value.errno == errno.ENOTEMPTY
    with pytest.raises(FileNotFoundError):
        sim.rename("/nope", "/x")
    with pytest.raises(IsADirectoryError):
        sim.remove("/a")


def test_allocate_without_posix_fallocate_is_eopnotsupp_and_the_wal_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from trioraft.core.types import Entry, HardState
    from trioraft.storage import fs as fsmod
    from trioraft.storage.wal import WAL

    monkeypatch.setattr(fsmod, "_POSIX_FALLOCATE", None)  # as on macOS
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        with pytest.raises(OSError) as info:
            REAL_FS.allocate(fd, 0, 4096)
        assert info.value.errno == errno.EOPNOTSUPP
    finally:
        os.close(fd)
    # a WAL that does not pre-zero its segments (which makes reserving needless)
    with WAL.open(str(tmp_path / "wal"), prezero=False)[0] as wal:
        wal.save([Entry(1, 1, data=b"x")], HardState(1, 1, 0))
        wal.save([Entry(1, 2, data=b"y")], HardState(1, 1, 1))
    assert caplog.text.count("cannot reserve segment space") == 1
    wal, contents = WAL.open(str(tmp_path / "wal"))
    wal.close()
    assert [e.data for e in contents.entries] == [b"x", b"y"]


def test_writeback_without_ctypes_is_only_a_lost_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from trioraft.storage import fs as fsmod

    monkeypatch.setitem(sys.modules, "ctypes", None)  # "import ctypes" raises ImportError
    monkeypatch.setattr(fsmod, "_sync_file_range_loaded", False)
    monkeypatch.setattr(fsmod, "_sync_file_range", None)
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        os.write(fd, b"x" * 8192)
        REAL_FS.writeback(fd, 0, 8192)
        REAL_FS.writeback(fd, 0, 8192)
    finally:
        os.close(fd)
    assert fsmod._sync_file_range_loaded and fsmod._sync_file_range is None
