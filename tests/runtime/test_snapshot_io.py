"""The public async SnapshotWriter / SnapshotReader wrappers, over small in-memory fakes of the
store's builder and reader (the real store is exercised by the integration tests)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import attrs
import pytest
import trio
import trio.testing

from trioraft.core.types import ConfState
from trioraft.runtime.disk import INLINE_DISK
from trioraft.statemachine import SnapshotReader, SnapshotWriter, validate_file_name

T = TypeVar("T")


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


class GatedDisk:
    """Runs each call only when the test opens the gate for it (``await release()``), so a
    test sees what the caller does while a write is still in progress."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self._gates: list[trio.Event] = []
        self._arrived = trio.Condition()

    async def __call__(self, fn: Callable[..., T], *args: Any) -> T:
        name = getattr(fn, "__name__", "")
        if name == "write":
            gate = trio.Event()
            self._gates.append(gate)
            self.started.append(bytes(args[0]).decode())
            async with self._arrived:
                self._arrived.notify_all()
            await gate.wait()
        return fn(*args)

    async def release(self) -> None:
        """Lets the oldest waiting write run (waiting for one to arrive if needed)."""
        async with self._arrived:
            while not self._gates:
                await self._arrived.wait()
        self._gates.pop(0).set()
        await trio.testing.wait_all_tasks_blocked()


async def test_background_writer_overlaps_producing_with_writing() -> None:
    """With a background nursery, ``write`` hands a full chunk over and returns while it is
    being written; the next full chunk waits for it (two chunks in memory at most), chunks
    land in order, and ``aclose`` returns only when everything is written and closed."""
    b = FakeBuilder()
    disk = GatedDisk()
    produced: list[str] = []
    async with trio.open_nursery() as nursery:
        w = SnapshotWriter(
            b, disk, index=1, term=1, conf=ConfState(), chunk_bytes=4, background=nursery
        )
        f = await w.create("data")

        async def saver() -> None:
            for piece in ("aaaa", "bbbb", "cccc"):
                await f.write(piece.encode())
                produced.append(piece)
            await f.aclose()
            produced.append("closed")

        nursery.start_soon(saver)
        await trio.testing.wait_all_tasks_blocked()
        # "aaaa" is being written and the saver already handed over "bbbb" ...
        assert disk.started == ["aaaa"] and produced == ["aaaa"]
        await disk.release()
        # ... which is written once "aaaa" is done, while "cccc" waits its turn.
        assert disk.started == ["aaaa", "bbbb"] and produced == ["aaaa", "bbbb"]
        await disk.release()
        await disk.release()
        assert produced == ["aaaa", "bbbb", "cccc", "closed"]
    assert bytes(b.files["data"]) == b"aaaabbbbcccc"
    assert b.handles["data"].closed


class FailingFile(FakeFile):
    def write(self, data: bytes) -> None:
        if data.startswith(b"x"):
            raise OSError("disk full")
        super().write(data)


@pytest.mark.parametrize("where", ["next-write", "close"])
async def test_a_failed_background_write_is_raised_to_the_saver(where: str) -> None:
    b = FakeBuilder()
    async with trio.open_nursery() as nursery:
        w = SnapshotWriter(
            b, INLINE_DISK, index=1, term=1, conf=ConfState(), chunk_bytes=4, background=nursery
        )
        f = await w.create("data")
        f._raw = FailingFile(b.files["data"])  # type: ignore[assignment]
        await f.write(b"xxxx")  # fails in the background
        with pytest.raises(OSError, match="disk full"):
            if where == "next-write":
                await f.write(b"yyyy")
            await f.aclose()
        await f.aclose()  # idempotent once closed
    assert f._raw.closed  # type: ignore[attr-defined]
