"""SnapshotReader.file_path / map_file: restoring from the snapshot store's files without
copying them through read()."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import pytest

from trioraft.core.types import ConfState
from trioraft.errors import StorageCorrupted
from trioraft.runtime.disk import INLINE_DISK
from trioraft.statemachine import SnapshotReader
from trioraft.storage.fs import SimulatedFileSystem
from trioraft.storage.snapshots import SnapshotStore, StoredSnapshot

FILES = {"big.bin": bytes(range(256)) * 4096 + b"tail", "empty.bin": b"", "small": b"abc"}


def _store(directory: str, fs: SimulatedFileSystem | None = None) -> SnapshotStore:
    return SnapshotStore(directory) if fs is None else SnapshotStore(directory, fs=fs)


def _saved(store: SnapshotStore, index: int = 7) -> StoredSnapshot:
    builder = store.begin(index, 2, ConfState(voters=(1, 2, 3)))
    for name, data in FILES.items():
        f = builder.open_file(name)
        f.write(data)
        f.close()
    return builder.commit(b"meta")


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


def _write(path: str, data: bytes) -> None:
    Path(path).write_bytes(data)


def _reader(store: SnapshotStore, stored: StoredSnapshot) -> SnapshotReader:
    return SnapshotReader(stored, store.open_reader(stored.index), INLINE_DISK)


async def test_a_real_store_gives_each_file_path_and_a_read_only_mapping(
    tmp_path: Path,
) -> None:
    store = _store(str(tmp_path / "snap"))
    stored = _saved(store)
    reader = _reader(store, stored)
    path = reader.file_path("big.bin")
    assert path == os.path.join(stored.path, "big.bin")
    assert _read(path) == FILES["big.bin"]
    mapped = await reader.map_file("big.bin")
    assert isinstance(mapped, mmap.mmap)
    assert len(mapped) == len(FILES["big.bin"])
    assert mapped[:] == FILES["big.bin"] and mapped[5:9] == FILES["big.bin"][5:9]
    with pytest.raises(TypeError):
        mapped[0] = 1  # type: ignore[index]  # read-only: the committed snapshot never changes
    # an empty file cannot be mapped: it comes back as bytes, like any other read
    assert await reader.map_file("empty.bin") == b""
    assert (await reader.map_file("small"))[:] == b"abc"
    # the existing read API keeps working beside it
    assert await reader.read_file("big.bin") == FILES["big.bin"]
    # retention removing the snapshot leaves the mapping valid
    os.remove(path)
    assert mapped[-4:] == b"tail"
    mapped.close()


async def test_without_a_real_file_system_map_file_reads_the_file(tmp_path: Path) -> None:
    fs = SimulatedFileSystem()
    store = _store("/data/snap", fs)
    stored = _saved(store)
    reader = _reader(store, stored)
    assert reader.file_path("big.bin") is None
    data = await reader.map_file("big.bin")
    assert isinstance(data, bytes) and data == FILES["big.bin"]


async def test_unknown_names_and_reserved_files_are_refused(tmp_path: Path) -> None:
    store = _store(str(tmp_path / "snap"))
    reader = _reader(store, _saved(store))
    for call in (reader.file_path, reader.map_file):
        with pytest.raises(KeyError):
            result = call("nope")
            if not isinstance(result, str | None):
                await result


@pytest.mark.parametrize("damage", ["missing", "resized"])
async def test_a_missing_or_resized_file_is_storage_corrupted(tmp_path: Path, damage: str) -> None:
    store = _store(str(tmp_path / "snap"))
    stored = _saved(store)
    reader = _reader(store, stored)
    path = reader.file_path("big.bin")
    assert path is not None
    if damage == "missing":
        os.remove(path)
    else:
        _write(path, FILES["big.bin"] + b"x")
    with pytest.raises(StorageCorrupted, match=r"missing|records"):
        await reader.map_file("big.bin")


async def test_a_backend_without_paths_reads_instead() -> None:
    """A reader over a backend that has no ``os_path`` (any other store) has no paths."""

    class Backend:
        def read_chunk(self, name: str, offset: int, size: int) -> bytes:
            return b"xyz"[offset : offset + size]

    class Info:
        name = "f"
        size = 3

    class Stored:
        index = 1
        term = 1
        conf = ConfState()
        user_meta = b""
        files = (Info(),)

    reader = SnapshotReader(Stored(), Backend(), INLINE_DISK)  # type: ignore[arg-type]
    assert reader.file_path("f") is None
    assert await reader.map_file("f") == b"xyz"
