"""Test doubles for the transport tests: an in-memory snapshot store (builder, reader, stored
snapshot) implementing the same methods as ``trioraft.storage.snapshots``, and a recording
inbound handler."""

from __future__ import annotations

from collections.abc import Callable

import attrs
import crc32c
import trio

from trioraft.core.messages import Message, SnapshotRequest
from trioraft.core.types import ConfState, SnapshotMeta
from trioraft.runtime.transport.base import ClientRequest, ClientResponse


@attrs.frozen
class FileInfo:
    name: str
    size: int
    crc32c: int


@attrs.frozen
class Stored:
    index: int
    term: int
    conf: ConfState
    files: tuple[FileInfo, ...]
    user_meta: bytes = b""
    path: str = ""

    @property
    def raft_meta(self) -> SnapshotMeta:
        return SnapshotMeta(self.index, self.term, self.conf)


CONF = ConfState(voters=frozenset({1, 2, 3}))


def make_snapshot(
    files: dict[str, bytes], index: int = 10, term: int = 2, user_meta: bytes = b"um"
) -> tuple[Stored, Reader]:
    infos = tuple(FileInfo(n, len(d), crc32c.crc32c(d)) for n, d in files.items())
    return Stored(index, term, CONF, infos, user_meta), Reader(files)


def request_for(
    stored: Stored, src: int = 1, dst: int = 2, term: int | None = None
) -> SnapshotRequest:
    return SnapshotRequest(
        src=src, dst=dst, term=stored.term if term is None else term, meta=stored.raft_meta
    )


def pattern(n: int, seed: int = 0) -> bytes:
    """Deterministic non-repeating-ish bytes."""
    block = bytes((i * 31 + seed * 7 + (i >> 8)) & 0xFF for i in range(4096))
    reps = n // len(block) + 1
    return (block * reps)[:n]


class Reader:
    def __init__(self, data: dict[str, bytes]) -> None:
        self.data = data
        self.reads: list[tuple[str, int, int]] = []
        self.corrupt_once: set[tuple[str, int]] = set()  #: (name, offset) reads to flip a byte in

    def read_chunk(self, name: str, offset: int, size: int) -> bytes:
        self.reads.append((name, offset, size))
        out = self.data[name][offset : offset + size]
        if (name, offset) in self.corrupt_once:
            self.corrupt_once.discard((name, offset))
            out = bytes([out[0] ^ 0xFF]) + out[1:]
        return out


class Builder:
    def __init__(self, index: int, term: int, conf: ConfState) -> None:
        self.index = index
        self.term = term
        self.conf = conf
        self.files: dict[str, bytearray] = {}
        self.writes: list[tuple[str, int, int]] = []
        self.committed: Stored | None = None
        self.aborted = False
        #: called after each write (e.g. to break the connection mid-transfer)
        self.on_write: Callable[[Builder], None] | None = None
        self.fail_writes = False

    def write_at(
        self, name: str, offset: int, data: bytes | memoryview, prefix_crc: int | None = None
    ) -> None:
        assert not self.committed and not self.aborted
        if self.fail_writes:
            raise OSError(28, "No space left on device")
        buf = self.files.setdefault(name, bytearray())
        assert offset <= len(buf), f"hole in {name}: write at {offset}, size {len(buf)}"
        del buf[offset:]
        buf += data
        if prefix_crc is not None:  # the transport's running CRC must match the file
            assert prefix_crc == crc32c.crc32c(bytes(buf)), f"prefix_crc of {name} @{offset}"
        self.writes.append((name, offset, len(data)))
        if self.on_write is not None:
            self.on_write(self)

    def size_of(self, name: str) -> int:
        return len(self.files.get(name, b""))

    def commit(self, user_meta: bytes = b"") -> Stored:
        assert not self.aborted
        infos = tuple(FileInfo(n, len(d), crc32c.crc32c(bytes(d))) for n, d in self.files.items())
        self.committed = Stored(self.index, self.term, self.conf, infos, user_meta)
        return self.committed

    def abort(self) -> None:
        self.aborted = True

    def bytes_of(self, name: str) -> bytes:
        return bytes(self.files[name])


class Handler:
    """Records everything the transport hands to the node."""

    def __init__(self, node_id: int = 0) -> None:
        self.node_id = node_id
        self.delivered: list[Message] = []
        self.builders: list[Builder] = []
        self.received: list[tuple[Stored, SnapshotRequest]] = []
        self.calls: list[ClientRequest] = []
        self.refuse_snapshots = False
        self.on_builder: Callable[[Builder], None] | None = None
        self.got_message = trio.Event()
        self.snapshot_event = trio.Event()

    def deliver(self, msg: Message) -> None:
        self.delivered.append(msg)
        self.got_message.set()
        self.got_message = trio.Event()

    async def handle_call(self, request: ClientRequest) -> ClientResponse:
        self.calls.append(request)
        if request.kind == "echo":
            return ClientResponse(ok=True, payload=request.payload, request_id=request.request_id)
        if request.kind == "sleep":
            await trio.sleep(float(request.payload.decode()))
            return ClientResponse(ok=True, payload=b"slept", request_id=request.request_id)
        if request.kind == "boom":
            raise RuntimeError("handler exploded")
        return ClientResponse(ok=False, error="not-leader", leader_hint=3)

    async def begin_snapshot_receive(
        self, src: int, index: int, term: int, conf: ConfState, user_meta: bytes
    ) -> Builder:
        await trio.lowlevel.checkpoint()
        if self.refuse_snapshots:
            raise RuntimeError("not accepting snapshots")
        b = Builder(index, term, conf)
        self.builders.append(b)
        if self.on_builder is not None:
            self.on_builder(b)
        return b

    def snapshot_received(self, stored: Stored, request: SnapshotRequest) -> None:
        self.received.append((stored, request))
        self.snapshot_event.set()
        self.snapshot_event = trio.Event()

    async def wait_messages(self, n: int) -> None:
        while len(self.delivered) < n:
            await self.got_message.wait()
