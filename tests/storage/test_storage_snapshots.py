"""The snapshot store: streamed builders with atomic commit, readers that verify, fallback from
damaged snapshots, stale temp cleanup, retention with pins, resumable receive."""

from __future__ import annotations

import errno
import os

import crc32c
import pytest

from trioraft.core.types import ConfState
from trioraft.errors import StorageCorrupted, StorageFailed
from trioraft.storage.fs import REAL_FS, FileSystem, SimulatedFileSystem, read_file
from trioraft.storage.snapshots import (
    META_NAME,
    SnapshotStore,
    StoredSnapshot,
    snapshot_dir_name,
)

CONF = ConfState(
    voters=frozenset({1, 2, 3}),
    learners=frozenset({7}),
    voters_outgoing=frozenset({1, 2, 4}),
    learners_next=frozenset({4}),
    auto_leave=True,
)


@pytest.fixture(params=["real", "sim"])
def store_fs(request: pytest.FixtureRequest, tmp_path: object) -> tuple[FileSystem, str]:
    if request.param == "real":
        return REAL_FS, os.path.join(str(tmp_path), "snap")
    return SimulatedFileSystem(), "/data/snap"


def make(
    store: SnapshotStore, index: int, term: int = 1, files: dict[str, bytes] | None = None
) -> StoredSnapshot:
    files = {"state": b"state-%d" % index} if files is None else files
    b = store.begin(index, term, CONF)
    for name, data in files.items():
        with b.open_file(name) as f:
            for i in range(0, len(data), 1000):
                f.write(data[i : i + 1000])
    return b.commit(b"meta-%d" % index)


def test_builder_commit_and_reader_round_trip(store_fs: tuple[FileSystem, str]) -> None:
    fs, d = store_fs
    store = SnapshotStore(d, fs=fs)
    big = os.urandom(3 * 1024 * 1024 + 17)
    small = b"x" * 10
    s = make(store, 10, 2, {"big": big, "small": small, "empty": b""})
    assert (s.index, s.term, s.conf, s.user_meta) == (10, 2, CONF, b"meta-10")
    assert s.path == os.path.join(store.directory, snapshot_dir_name(10, 2))
    assert {f.name: (f.size, f.crc32c) for f in s.files} == {
        "big": (len(big), crc32c.crc32c(big)),
        "small": (10, crc32c.crc32c(small)),
        "empty": (0, 0),
    }
    assert s.raft_meta.index == 10 and s.raft_meta.conf == CONF
    assert s.total_bytes == len(big) + 10
    assert store.list() == [s] and store.get(10) == s and store.get(11) is None
    assert store.newest() == s
    assert sorted(fs.listdir(s.path)) == sorted(["big", "small", "empty", META_NAME])
    assert fs.listdir(os.path.join(d, "tmp")) == []
    r = store.open_reader(10)
    assert r.meta == s and r.files == s.files
    with r.open("big") as f:
        got = b"".join(iter(lambda: f.read(65536), b""))
    assert got == big
    with r.open("small") as f:
        assert f.read() == small
    assert r.read_chunk("big", 1000, 10) == big[1000:1010]
    assert r.read_chunk("big", len(big) - 3, 100) == big[-3:]
    assert r.read_chunk("big", len(big) + 5, 100) == b""
    r.verify()
    with pytest.raises(KeyError):
        r.open("nope")
    with pytest.raises(KeyError):
        store.open_reader(99)


def test_meta_is_readable_by_a_new_store(store_fs: tuple[FileSystem, str]) -> None:
    fs, d = store_fs
    s = make(SnapshotStore(d, fs=fs), 5)
    again = SnapshotStore(d, fs=fs)
    assert again.list() == [s]


def test_list_is_newest_first(store_fs: tuple[FileSystem, str]) -> None:
    fs, d = store_fs
    store = SnapshotStore(d, fs=fs, retention=10)
    for i in (5, 30, 12):
        make(store, i)
    assert [s.index for s in store.list()] == [30, 12, 5]
    assert store.newest(max_index=20).index == 12  # type: ignore[union-attr]
    assert store.newest(max_index=4) is None


def test_abort_and_exceptions_leave_no_trace(store_fs: tuple[FileSystem, str]) -> None:
    fs, d = store_fs
    store = SnapshotStore(d, fs=fs)
    b = store.begin(3, 1, CONF)
    with b.open_file("f") as f:
        f.write(b"abc")
    assert fs.listdir(os.path.join(d, "tmp")) != []
    b.abort()
    b.abort()
    assert fs.listdir(os.path.join(d, "tmp")) == []
    with pytest.raises(ValueError):
        b.open_file("g")
    with pytest.raises(RuntimeError), store.begin(4, 1, CONF) as b2:
        b2.open_file("f").write(b"x")
        raise RuntimeError("user code failed")
    with store.begin(5, 1, CONF) as b3:  # leaving the block without commit also aborts
        b3.write_at("f", 0, b"x")
    assert fs.listdir(os.path.join(d, "tmp")) == []
    assert store.list() == []


def test_stale_temp_dirs_are_removed_on_open(store_fs: tuple[FileSystem, str]) -> None:
    fs, d = store_fs
    store = SnapshotStore(d, fs=fs)
    b = store.begin(3, 1, CONF)
    b.open_file("f").write(b"partial")
    # the process dies here; a new store cleans up
    SnapshotStore(d, fs=fs)
    assert fs.listdir(os.path.join(d, "tmp")) == []


def test_file_name_rules(store_fs: tuple[FileSystem, str]) -> None:
    fs, d = store_fs
    b = SnapshotStore(d, fs=fs).begin(1, 1, CONF)
    for bad in ("", ".hidden", "a/b", META_NAME, "x\0y", "..", "a\\b"):
        with pytest.raises(ValueError):
            b.open_file(bad)
        with pytest.raises(ValueError):
            b.write_at(bad, 0, b"")
    b.open_file("ok")
    with pytest.raises(ValueError, match="already exists"):
        b.open_file("ok")
    b.abort()


def test_write_at_supports_resumable_receive(store_fs: tuple[FileSystem, str]) -> None:
    fs, d = store_fs
    store = SnapshotStore(d, fs=fs)
    b = store.begin(7, 2, CONF)
    data = os.urandom(10_000)
    b.write_at("f", 0, data[:4000])
    b.write_at("f", 4000, data[4000:7000])
    assert b.size_of("f") == 7000 and b.size_of("other") == 0
    # the connection dropped; the sender resumes from the last acknowledged offset
    b.write_at("f", 5000, data[5000:10_000])
    assert b.size_of("f") == 10_000
    # rewriting an earlier region cuts the file there
    b.write_at("g", 0, b"0123456789")
    b.write_at("g", 2, b"ab")
    assert b.size_of("g") == 4
    with pytest.raises(ValueError, match="hole"):
        b.write_at("h", 5, b"x")
    assert b.files() == ["f", "g"]
    s = b.commit()
    assert {f.name: f.crc32c for f in s.files} == {
        "f": crc32c.crc32c(data),
        "g": crc32c.crc32c(b"01ab"),
    }
    store.open_reader(7).verify()
    with pytest.raises(ValueError):
        b.commit()


def test_streaming_writer_rejects_write_at_and_writes_after_close(
    store_fs: tuple[FileSystem, str],
) -> None:
    fs, d = store_fs
    b = SnapshotStore(d, fs=fs).begin(1, 1, CONF)
    w = b.open_file("f")
    assert w.writable() and w.name == "f"
    w.write(b"abc")
    assert w.size == 3
    with pytest.raises(ValueError, match="open for streaming"):
        b.write_at("f", 0, b"x")
    w.close()
    w.close()
    assert w.closed
    with pytest.raises(ValueError, match="closed"):
        w.write(b"x")
    s = b.commit()
    assert s.files[0].size == 3


def test_commit_closes_open_writers(store_fs: tuple[FileSystem, str]) -> None:
    fs, d = store_fs
    b = SnapshotStore(d, fs=fs).begin(1, 1, CONF)
    w = b.open_file("f")
    w.write(b"x" * 5000)
    s = b.commit()
    assert w.closed and s.files[0].size == 5000


def test_duplicate_commit_keeps_the_installed_snapshot(store_fs: tuple[FileSystem, str]) -> None:
    fs, d = store_fs
    store = SnapshotStore(d, fs=fs)
    first = make(store, 9, files={"a": b"1"})
    second = make(store, 9, files={"a": b"2"})
    assert second == first
    assert fs.listdir(os.path.join(d, "tmp")) == []


def _corrupt_file(fs: FileSystem, path: str) -> None:
    data = bytearray(read_file(fs, path))
    data[len(data) // 2] ^= 0xFF
    if isinstance(fs, SimulatedFileSystem):
        fs.write_bytes(path, bytes(data))
    else:
        with open(path, "wb") as f:
            f.write(data)


def test_corrupt_snapshot_is_set_aside_and_an_older_one_used(
    store_fs: tuple[FileSystem, str], caplog: pytest.LogCaptureFixture
) -> None:
    fs, d = store_fs
    store = SnapshotStore(d, fs=fs, retention=5)
    old = make(store, 10)
    new = make(store, 20, files={"state": b"y" * 5000})
    _corrupt_file(fs, os.path.join(new.path, "state"))
    with pytest.raises(StorageCorrupted) as info:
        store.open_reader(20).verify()
    assert info.value.path == os.path.join(new.path, "state")
    assert store.newest() == old
    assert fs.exists(new.path + ".broken")
    assert new.path + ".broken" in caplog.text
    assert store.list() == [old]


def test_missing_or_damaged_meta_is_set_aside(store_fs: tuple[FileSystem, str]) -> None:
    fs, d = store_fs
    store = SnapshotStore(d, fs=fs, retention=5)
    old = make(store, 10)
    a = make(store, 20)
    b = make(store, 30)
    fs.remove(os.path.join(b.path, META_NAME))
    _corrupt_file(fs, os.path.join(a.path, META_NAME))
    assert store.list() == [old]  # list() only reports readable ones, it renames nothing
    assert store.newest(verify=False) == old
    assert fs.exists(a.path + ".broken") and fs.exists(b.path + ".broken")
    # a second damaged snapshot with the same name gets a numbered .broken
    c = make(store, 30)
    fs.remove(os.path.join(c.path, "state"))
    assert store.newest() == old
    assert fs.exists(c.path + ".broken.1")


def test_reader_stream_detects_a_bad_crc_at_the_end(store_fs: tuple[FileSystem, str]) -> None:
    fs, d = store_fs
    store = SnapshotStore(d, fs=fs)
    s = make(store, 10, files={"state": b"z" * 3000})
    _corrupt_file(fs, os.path.join(s.path, "state"))
    with store.open_reader(10).open("state") as f, pytest.raises(StorageCorrupted, match="CRC"):
        while f.read(1000):
            pass


def test_reader_stream_detects_a_short_file(store_fs: tuple[FileSystem, str]) -> None:
    fs, d = store_fs
    store = SnapshotStore(d, fs=fs)
    s = make(store, 10, files={"state": b"z" * 3000})
    p = os.path.join(s.path, "state")
    fs.remove(p)
    fd = fs.open(p, "w")
    fs.write(fd, b"z" * 100)
    fs.close(fd)
    with (
        store.open_reader(10).open("state") as f,
        pytest.raises(StorageCorrupted, match="expected"),
    ):
        f.read()
    fs.remove(p)
    with pytest.raises(StorageCorrupted, match="missing"):
        store.open_reader(10).open("state")
    with pytest.raises(StorageCorrupted, match="missing"):
        store.open_reader(10).read_chunk("state", 0, 10)


def test_retention_keeps_the_newest_and_never_deletes_pinned(
    store_fs: tuple[FileSystem, str],
) -> None:
    fs, d = store_fs
    store = SnapshotStore(d, fs=fs, retention=2)
    for i in (1, 2, 3):
        make(store, i)
    with store.pin(1) as pinned, store.pin(1):
        assert pinned.index == 1
        assert store.pinned() == {1: 2}
        for i in (4, 5):
            make(store, i)
        assert sorted(store.apply_retention()) == [2, 3]
        assert [s.index for s in store.list()] == [5, 4, 1]
        # still readable while pinned
        assert store.open_reader(1).read_chunk("state", 0, 100) == b"state-1"
    assert store.pinned() == {}
    assert store.apply_retention() == [1]
    assert [s.index for s in store.list()] == [5, 4]
    assert fs.listdir(os.path.join(d, "tmp")) == []
    with pytest.raises(KeyError), store.pin(99):
        pass


def test_delete_is_atomic_under_a_crash() -> None:
    fs = SimulatedFileSystem()
    store = SnapshotStore("/s", fs=fs, retention=1)
    make(store, 1)
    make(store, 2)
    fs.crash_at(fs.op_count + 3)  # after the move into tmp/, during the file removal
    with pytest.raises(BaseException):  # noqa: B017 - SimulatedCrash
        store.apply_retention()
    fs.crash(None)
    store = SnapshotStore("/s", fs=fs, retention=1)
    assert [s.index for s in store.list()] == [2]
    assert fs.listdir("/s/tmp") == []


def test_failures_surface_as_storage_failed() -> None:
    fs = SimulatedFileSystem()
    store = SnapshotStore("/s", fs=fs)
    b = store.begin(1, 1, CONF)
    fs.inject_fault("write", errno.ENOSPC, match="/s/tmp")
    with pytest.raises(StorageFailed, match="No space"):
        b.open_file("f").write(b"x" * (2 << 20))
    b.abort()
    b = store.begin(2, 1, CONF)
    b.write_at("f", 0, b"abc")
    fs.inject_fault("fsync", errno.EIO, match="/s/tmp")
    with pytest.raises(StorageFailed, match="Input/output"):
        b.commit()
    assert fs.listdir("/s/tmp") == []
    assert store.list() == []
    fs.inject_fault("mkdir", errno.EACCES)
    with pytest.raises(StorageFailed):
        store.begin(3, 1, CONF)


def test_reading_zero_bytes_mid_file_is_not_taken_for_the_end() -> None:
    fs = SimulatedFileSystem()
    store = SnapshotStore("/snap", fs=fs)
    b = store.begin(5, 1, ConfState(voters=frozenset({1})))
    b.write_at("state", 0, b"x" * 100)
    b.commit()
    with store.open_reader(5).open("state") as f:
        assert f.read(10) == b"x" * 10
        assert f.read(0) == b""
        assert f.read() == b"x" * 90
