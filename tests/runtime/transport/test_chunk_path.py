"""The snapshot chunk fast path: the hand-written chunk head (``encode_chunk_head`` /
``parse_chunk_head``), ``FramedStream.send_chunk`` / ``receive_chunk`` (payload read straight into
a caller's buffer, on TCP and on generic streams), and how a snapshot connection treats a
malformed chunk (closes that connection only; the stream then resumes)."""

from __future__ import annotations

import logging
import os
import random
import struct
from collections.abc import AsyncIterator

import cbor2
import crc32c
import pytest
import trio
import trio.testing
from transport_fakes import Builder, Handler, make_snapshot, pattern, request_for

from trioraft.codec import DecodeError
from trioraft.runtime.transport.frames import (
    CHUNK_HEAD_MAX,
    PROTOCOL_VERSION,
    FileDesc,
    Hello,
    SnapshotAccept,
    SnapshotAck,
    SnapshotChunk,
    SnapshotOffer,
    decode_frame,
    encode_chunk_head,
    encode_frame,
    parse_chunk_head,
)
from trioraft.runtime.transport.framing import (
    ConnectionClosed,
    FramedStream,
    FrameError,
    ReceivedChunk,
)
from trioraft.runtime.transport.streaming import StreamOptions
from trioraft.runtime.transport.tcp import TcpTransport

LIMIT = 15.0
KiB = 1024
MiB = 1024 * 1024

# every CBOR argument width, at both ends
WIDTHS = [0, 23, 24, 255, 256, 65535, 65536, (1 << 32) - 1, 1 << 32, (1 << 64) - 1]


@pytest.mark.parametrize("value", WIDTHS)
def test_chunk_head_is_the_plain_cbor_of_the_frame(value: int) -> None:
    data = b"payload-" + bytes([value & 0xFF])
    head = encode_chunk_head(value, value, value & 0xFFFFFFFF, len(data))
    assert len(head) <= CHUNK_HEAD_MAX
    body = head + data
    # ordinary CBOR of the frame, data last ...
    expect = {
        "type": "SnapshotChunk",
        "file_index": value,
        "offset": value,
        "crc32c": value & 0xFFFFFFFF,
        "data": data,
    }
    assert body == cbor2.dumps(expect)
    # ... which the strict generic decoder reads as the same frame
    assert decode_frame(body) == SnapshotChunk(
        file_index=value, offset=value, data=data, crc32c=value & 0xFFFFFFFF
    )
    got = parse_chunk_head(b"xyz" + body, 3, 3 + len(body))
    assert got == (value, value, value & 0xFFFFFFFF, len(data), len(head))


def test_chunk_head_parser_leaves_every_other_layout_to_the_generic_decoder() -> None:
    frame = SnapshotChunk(file_index=1, offset=2, data=b"abc", crc32c=3)
    generic = encode_frame(frame)  # the converter's key order: data in the middle
    assert parse_chunk_head(generic, 0, len(generic)) is None
    head = encode_chunk_head(1, 2, 3, 3)
    for cut in range(len(head)):  # a head not yet (fully) received
        assert parse_chunk_head(head, 0, cut) is None
    # a negative file index (major type 1) or an indefinite-length payload
    negative = head.replace(b"file_index\x01", b"file_index\x20")
    assert parse_chunk_head(negative, 0, len(negative)) is None
    with pytest.raises(DecodeError):  # no frame holds a negative integer
        decode_frame(negative + b"abc")
    indefinite = head[:-1] + b"\x5f"
    assert parse_chunk_head(indefinite, 0, len(indefinite)) is None
    # a longer-than-needed integer form is still that integer, for both decoders
    wide = head.replace(b"offset\x02", b"offset\x18\x02")
    assert parse_chunk_head(wide, 0, len(wide)) == (1, 2, 3, 3, len(wide))
    assert decode_frame(wide + b"abc") == frame
    with pytest.raises(ValueError):
        encode_chunk_head(-1, 0, 0, 0)


class Pool:
    """Buffers for receive_chunk, counting allocations and checking they are big enough."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.free: list[bytearray] = []
        self.allocated = 0

    def acquire(self, n: int) -> bytearray:
        assert n <= self.size
        if self.free:
            return self.free.pop()
        self.allocated += 1
        return bytearray(self.size)

    def release(self, c: ReceivedChunk) -> None:
        if c.buffer is not None:
            self.free.append(c.buffer)


async def tcp_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as n:
        accepted: list[trio.SocketStream] = []

        async def accept() -> None:
            accepted.append(await listeners[0].accept())

        n.start_soon(accept)
        client = await trio.open_tcp_stream("127.0.0.1", port)
    await listeners[0].aclose()
    return client, accepted[0]


@pytest.fixture(params=["tcp", "memory"])
async def pair(request: pytest.FixtureRequest) -> AsyncIterator[tuple[trio.abc.Stream, ...]]:
    if request.param == "tcp":
        a, b = await tcp_pair()
    else:
        a, b = trio.testing.memory_stream_pair()
    yield a, b
    await a.aclose()
    await b.aclose()


async def test_chunks_arrive_byte_exact_whatever_the_read_sizes(
    pair: tuple[trio.abc.Stream, trio.abc.Stream],
) -> None:
    """Frames are written in pieces of random odd sizes (so heads, length prefixes and payloads
    are split everywhere); a converter-encoded chunk and other frames are mixed in."""
    a, b = pair
    seed = int(os.environ.get("TRIORAFT_SEED") or random.randrange(1 << 30))
    print(f"TRIORAFT_SEED={seed}")
    rng = random.Random(seed)
    sender = FramedStream(a)
    receiver = FramedStream(b)
    max_data = 300 * KiB
    sizes = [1, 7, 4095, 4096, 4097, 70_001, max_data, 3, max_data - 1, 12_345]
    payloads = [rng.randbytes(n) for n in sizes]
    # the wire bytes: chunk frames in the fast layout, one generic chunk, one ack
    wire = bytearray()
    for i, p in enumerate(payloads):
        head = encode_chunk_head(i, 1000 * i, crc32c.crc32c(p), len(p))
        wire += struct.pack(">I", len(head) + len(p)) + head + p
        if i == 4:
            wire += sender.pack(SnapshotChunk(file_index=99, offset=5, data=b"gen", crc32c=7))
            wire += sender.pack(SnapshotAck(file_index=1, offset=2))
    pool = Pool(max_data)
    got: list[object] = []
    async with trio.open_nursery() as n:

        async def write() -> None:
            view = memoryview(wire)
            while view:
                k = min(len(view), rng.choice([1, 2, 3, 5, 61, 4099, 65_537, 200_003]))
                await a.send_all(view[:k])
                view = view[k:]
                await trio.lowlevel.checkpoint()

        n.start_soon(write)
        for _ in range(len(payloads) + 2):
            frame = await receiver.receive_chunk(pool.acquire, max_data)
            if isinstance(frame, ReceivedChunk):
                got.append((frame.file_index, frame.offset, frame.crc32c, bytes(frame.data)))
                pool.release(frame)
            else:
                got.append(frame)
    expect: list[object] = [(i, 1000 * i, crc32c.crc32c(p), p) for i, p in enumerate(payloads)]
    expect[5:5] = [
        SnapshotChunk(file_index=99, offset=5, data=b"gen", crc32c=7),
        SnapshotAck(file_index=1, offset=2),
    ]
    assert got == expect
    assert pool.allocated == 1  # one buffer, reused for every chunk


async def test_send_chunk_is_read_back_by_receive_and_receive_chunk(
    pair: tuple[trio.abc.Stream, trio.abc.Stream],
) -> None:
    a, b = pair
    sender, receiver = FramedStream(a), FramedStream(b)
    data = pattern(200 * KiB + 1)
    async with trio.open_nursery() as n:
        n.start_soon(sender.send_chunk, 2, 77, 5, data)
        n.start_soon(sender.send_chunk, 3, 0, 6, b"x")
        first = await receiver.receive()  # the generic path reads the same frame
        pool = Pool(len(data))
        second = await receiver.receive_chunk(pool.acquire, len(data))
    frames = {first.file_index: first}  # type: ignore[union-attr]
    assert isinstance(second, ReceivedChunk)
    frames[second.file_index] = SnapshotChunk(
        file_index=second.file_index,
        offset=second.offset,
        data=bytes(second.data),
        crc32c=second.crc32c,
    )
    assert frames == {
        2: SnapshotChunk(file_index=2, offset=77, data=data, crc32c=5),
        3: SnapshotChunk(file_index=3, offset=0, data=b"x", crc32c=6),
    }


def _chunk_wire(payload: bytes, declared: int | None = None) -> bytes:
    head = encode_chunk_head(0, 0, 0, len(payload) if declared is None else declared)
    return struct.pack(">I", len(head) + len(payload)) + head + payload


@pytest.mark.parametrize(
    ("wire", "match"),
    [
        (_chunk_wire(b"x" * 100), "exceeds the chunk size 64"),
        (_chunk_wire(b"x" * 10, declared=9), "does not fill its frame"),
        (_chunk_wire(b"x" * 10, declared=11), "does not fill its frame"),
        (_chunk_wire(b"x" * 50)[:-5], "connection closed inside a frame"),
    ],
    ids=["too-large", "short-payload", "long-payload", "truncated"],
)
async def test_malformed_chunk_frames_raise_frame_error_and_stay_failed(
    pair: tuple[trio.abc.Stream, trio.abc.Stream], wire: bytes, match: str
) -> None:
    a, b = pair
    receiver = FramedStream(b)
    if match.startswith("connection closed"):
        await a.send_all(wire)
        if isinstance(a, trio.SocketStream):
            await a.send_eof()
        else:
            await a.aclose()
    else:
        await a.send_all(wire + _chunk_wire(b"next"))
    pool = Pool(64)
    with pytest.raises(FrameError, match=match):
        await receiver.receive_chunk(pool.acquire, 64)
    # the byte stream can no longer be cut into frames: nothing more is read from it
    with pytest.raises(FrameError):
        await receiver.receive_chunk(pool.acquire, 64)


# --------------------------------------------------------------------------------------------
# A snapshot connection that gets a malformed chunk


async def raw_snapshot_connection(port: int, offer: SnapshotOffer) -> FramedStream:
    conn = FramedStream(await trio.open_tcp_stream("127.0.0.1", port))
    await conn.send(
        Hello(
            version=PROTOCOL_VERSION,
            cluster_id="test-cluster",
            node_id=1,
            target=2,
            purpose="snapshot",
        )
    )
    await conn.receive()  # HelloAck
    await conn.send(offer)
    return conn


async def test_a_malformed_chunk_closes_only_that_connection_and_the_stream_resumes(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    """A sender writes three good chunks (acknowledged, so durably written), then a chunk
    whose payload does not fill its frame: node 2 closes that connection, keeps serving, and
    the real stream of the same snapshot resumes after the three chunks; the file arrives
    byte-exact (odd chunk size, an empty file and a small one too)."""
    caplog.set_level(logging.WARNING)
    chunk = 64 * KiB + 3
    files = {"state": pattern(1 * MiB + 17), "empty": b"", "small": pattern(999, seed=5)}
    stored, reader = make_snapshot(files)
    with trio.fail_after(LIMIT):
        t1 = TcpTransport(
            1,
            "test-cluster",
            backoff_initial=0.01,
            backoff_max=0.2,
            stream_options=StreamOptions(chunk_size=chunk, retry_initial=0.01, retry_max=0.05),
        )
        t2 = TcpTransport(2, "test-cluster", backoff_initial=0.01, backoff_max=0.2)
        h2 = Handler(2)
        await nursery.start(t1.serve, Handler(1))
        await nursery.start(t2.serve, h2)
        t1.add_peer(2, t2.address)
        t2.add_peer(1, t1.address)
        offer = SnapshotOffer(
            index=stored.index,
            term=stored.term,
            conf=stored.conf,
            user_meta=stored.user_meta,
            files=tuple(FileDesc(name=f.name, size=f.size, crc32c=f.crc32c) for f in stored.files),
            request=request_for(stored),
            chunk_size=chunk,
            window=4,
        )
        conn = await raw_snapshot_connection(t2.port, offer)
        accept = await conn.receive()
        assert accept == SnapshotAccept(file_index=0, offset=0, window=4)
        data = files["state"]
        for k in range(3):
            piece = data[k * chunk : (k + 1) * chunk]
            await conn.send_chunk(0, k * chunk, crc32c.crc32c(piece), piece)
            assert await conn.receive() == SnapshotAck(file_index=0, offset=(k + 1) * chunk)
        await conn.stream.send_all(_chunk_wire(b"x" * 10, declared=9))
        with pytest.raises((ConnectionClosed, trio.BrokenResourceError)):
            while True:  # node 2 hangs up on us
                await conn.receive()
        await conn.aclose()
        assert t2.stats.bad_frames == 1
        assert "malformed frame" in caplog.text and "does not fill its frame" in caplog.text
        # The node still serves: the real stream resumes where the good chunks ended.
        await t1.stream_snapshot(2, stored, reader, request_for(stored))
    st = t1.last_stream[2]
    assert st.resumed_from == [3 * chunk]
    assert len(h2.builders) == 1
    b: Builder = h2.builders[0]
    assert {n: b.bytes_of(n) for n in b.files} == files
    assert h2.received[0][1] == request_for(stored)
