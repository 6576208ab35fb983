"""The public async SnapshotWriter / SnapshotReader wrappers, over small in-memory fakes of the
store's builder and reader (the real store is exercised by the integration tests)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import attrs
import pytest

from trioraft.core.types import ConfState
from trioraft.runtime.disk import INLINE_DISK
from trioraft.statemachine import SnapshotReader, SnapshotWriter, validate_file_name


class FakeFile:
    def __init__(self, sink: bytearray) -> None:
        self.sink = sink
        self.writes: list[int] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(len(data))
        self.sink += data

    def close(self) -> None:
        self.closed = True


class FakeBuilder:
    def __init__(self) -> None:
        self.files: dict[str, bytearray] = {}
        self.handles: dict[str, FakeFile] = {}

    def open_file(self, name: str) -> FakeFile:
        self.files[name] = bytearray()
        self.handles[name] = FakeFile(self.files[name])
        return self.handles[name]


@attrs.frozen
class Info:
    name: str
    size: int


@attrs.frozen
class Stored:
    index: int
    term: int
    conf: ConfState
    user_meta: bytes
    files: tuple[Info, ...]


class FakeReader:
    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.calls: list[tuple[str, int, int]] = []

    def read_chunk(self, name: str, offset: int, size: int) -> bytes:
        self.calls.append((name, offset, size))
        return self.files[name][offset : offset + size]


def make_writer(builder: FakeBuilder, chunk: int = 8) -> SnapshotWriter:
    return SnapshotWriter(
        builder,
        INLINE_DISK,
        index=7,
        term=2,
        conf=ConfState(voters=frozenset({1})),
        chunk_bytes=chunk,
    )


async def test_writer_buffers_into_chunks_and_closes() -> None:
    b = FakeBuilder()
    w = make_writer(b, chunk=8)
    assert (w.index, w.term) == (7, 2)
    async with w.open("data") as f:
        for _ in range(5):
            await f.write(b"abc")
        assert f.size == 15
    assert bytes(b.files["data"]) == b"abc" * 5
    # 3-byte writes were coalesced into chunk-sized writes, not 5 thread hops
    assert b.handles["data"].writes == [9, 6]
    assert b.handles["data"].closed
    assert w.files == ("data",)


async def test_write_file_accepts_bytes_iterables_and_async_iterables() -> None:
    b = FakeBuilder()
    w = make_writer(b, chunk=4)

    async def agen() -> AsyncIterator[bytes]:
        yield b"12"
        yield b"345678"

    assert await w.write_file("a", b"hello") == 5
    assert await w.write_file("b", [b"x", b"yz"]) == 3
    assert await w.write_file("c", agen()) == 8
    assert bytes(b.files["c"]) == b"12345678"
    w.user_meta = b"v1"
    assert w.user_meta == b"v1"


@pytest.mark.parametrize("name", ["", "a/b", "..", ".hidden", "meta.cbor", "_trioraft_x", "a\0b"])
async def test_bad_names_refused(name: str) -> None:
    with pytest.raises(ValueError):
        validate_file_name(name)
    w = make_writer(FakeBuilder())
    with pytest.raises(ValueError):
        await w.write_file(name, b"x")


async def test_duplicate_name_refused() -> None:
    w = make_writer(FakeBuilder())
    await w.write_file("a", b"x")
    with pytest.raises(ValueError, match="already"):
        await w.write_file("a", b"y")


async def test_reader_reads_whole_files_chunks_and_streams() -> None:
    content = bytes(range(256)) * 4
    backend = FakeReader({"data": content, "_trioraft_members.cbor": b"\xa0"})
    stored = Stored(
        index=9,
        term=3,
        conf=ConfState(voters=frozenset({1, 2})),
        user_meta=b"m",
        files=(Info("data", len(content)), Info("_trioraft_members.cbor", 1)),
    )
    r = SnapshotReader(stored, backend, INLINE_DISK, chunk_bytes=100)
    assert (r.index, r.term, r.user_meta) == (9, 3, b"m")
    assert r.files == ("data",)  # the runtime's own file is hidden
    assert r.size("data") == len(content)
    assert await r.read_file("data") == content
    # bounded chunks only
    assert max(size for _, _, size in backend.calls) <= 100
    parts = [c async for c in r.iter_file("data", 300)]
    assert b"".join(parts) == content and max(map(len, parts)) <= 300
    async with r.open("data") as f:
        assert await f.read(10) == content[:10]
        assert await f.read() == content[10:]
        assert await f.read() == b""
    with pytest.raises(KeyError):
        await r.read_file("nope")
    with pytest.raises(KeyError):
        await r.read_file("_trioraft_members.cbor")
    assert await r.read_reserved("_trioraft_members.cbor") == b"\xa0"


async def test_gathered_chunks_are_handed_over_and_never_changed_afterwards() -> None:
    """Small writes are gathered into a buffer handed to the store as it is (no copy); the
    writer starts a new buffer, so a chunk the store holds on to is never modified later."""
    kept: list[bytes | bytearray] = []

    class KeepingFile(FakeFile):
        def write(self, data: bytes) -> None:
            kept.append(data)
            super().write(data)

    b = FakeBuilder()
    w = make_writer(b, chunk=4)
    f = await w.create("data")
    f._raw = KeepingFile(b.files["data"])  # type: ignore[assignment]
    for piece in (b"ab", b"cd", b"ef", b"gh", b"i"):
        await f.write(piece)
    await f.aclose()
    assert [bytes(c) for c in kept] == [b"abcd", b"efgh", b"i"]
    assert bytes(b.files["data"]) == b"abcdefghi"
