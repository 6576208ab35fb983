"""Length-prefixed framing, frame codec, backoff, throttle and address parsing."""

from __future__ import annotations

import random
import struct

import cbor2
import pytest
import trio
import trio.testing

from trioraft.core.messages import HeartbeatRequest, SnapshotRequest
from trioraft.core.types import ConfState, SnapshotMeta
from trioraft.runtime.transport.base import ClientRequest, ClientResponse
from trioraft.runtime.transport.frames import (
    CallRequest,
    CallResponse,
    FileDesc,
    Hello,
    HelloAck,
    RaftFrame,
    SnapshotAccept,
    SnapshotAck,
    SnapshotChunk,
    SnapshotDone,
    SnapshotError,
    SnapshotKeepalive,
    SnapshotOffer,
    decode_frame,
    encode_frame,
)
from trioraft.runtime.transport.framing import ConnectionClosed, FramedStream, FrameError
from trioraft.runtime.transport.util import Backoff, Throttle, format_address, parse_address

ALL_FRAMES = [
    Hello(version=1, cluster_id="c", node_id=1, target=2, purpose="raft"),
    HelloAck(ok=False, node_id=2, reason="nope"),
    RaftFrame(msg=HeartbeatRequest(src=1, dst=2, term=3, commit=4, context=b"x")),
    CallRequest(call_id=7, request=ClientRequest(kind="propose", payload=b"p", request_id=9)),
    CallResponse(call_id=7, response=ClientResponse(ok=False, error="not-leader", leader_hint=3)),
    SnapshotOffer(
        index=5,
        term=2,
        conf=ConfState(voters=frozenset({1, 2}), learners=frozenset({4})),
        user_meta=b"u",
        files=(FileDesc(name="a", size=3, crc32c=123), FileDesc(name="b", size=0, crc32c=0)),
        request=SnapshotRequest(src=1, dst=2, term=2, meta=SnapshotMeta(5, 2)),
        chunk_size=1024,
        window=4,
    ),
    SnapshotAccept(file_index=1, offset=0, window=2),
    SnapshotChunk(file_index=0, offset=0, data=b"abc", crc32c=5),
    SnapshotAck(file_index=0, offset=3),
    SnapshotKeepalive(),
    SnapshotDone(),
    SnapshotError(reason="crc", detail="a@0", retry=True),
]


@pytest.mark.parametrize("frame", ALL_FRAMES, ids=lambda f: type(f).__name__)
def test_every_frame_round_trips(frame: object) -> None:
    data = encode_frame(frame)  # type: ignore[arg-type]
    back = decode_frame(data)
    assert back == frame
    assert type(back) is type(frame)


@pytest.mark.parametrize(
    "raw",
    [
        {"type": "SnapshotAck", "file_index": 0},  # missing field
        {"type": "SnapshotAck", "file_index": 0, "offset": 1, "extra": 2},  # extra field
        {"type": "SnapshotAck", "file_index": "0", "offset": 1},  # wrong type
        {"type": "NoSuchFrame"},
        {"file_index": 0, "offset": 1},  # no tag
        [1, 2, 3],
        {"type": "RaftFrame", "msg": {"type": "Bogus"}},
    ],
)
def test_strict_decoding_rejects_bad_frames(raw: object) -> None:
    from trioraft.codec import DecodeError

    with pytest.raises(DecodeError):
        decode_frame(cbor2.dumps(raw))


async def test_framed_stream_round_trip_and_clean_eof() -> None:
    a, b = trio.testing.memory_stream_pair()
    fa, fb = FramedStream(a), FramedStream(b)
    for frame in ALL_FRAMES:
        await fa.send(frame)  # type: ignore[arg-type]
    big = SnapshotChunk(file_index=0, offset=0, data=bytes(range(256)) * 4096, crc32c=1)
    await fa.send(big)
    for frame in [*ALL_FRAMES, big]:
        assert await fb.receive() == frame
    await fa.aclose()
    with pytest.raises(ConnectionClosed):
        await fb.receive()


async def test_batched_send_packed() -> None:
    a, b = trio.testing.memory_stream_pair()
    fa, fb = FramedStream(a), FramedStream(b)
    frames = [SnapshotAck(file_index=0, offset=i) for i in range(50)]
    await fa.send_packed([fa.pack(f) for f in frames])
    assert [await fb.receive() for _ in frames] == frames


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (struct.pack(">I", 0), "length 0"),
        (struct.pack(">I", 1 << 30), "outside"),
        (struct.pack(">I", 3) + b"\xff\xff\xff", "invalid CBOR"),
        (struct.pack(">I", 10) + b"abc", "inside a frame"),  # then EOF
        (b"\x00\x00", "inside a frame"),  # torn header, then EOF
        (struct.pack(">I", 5) + cbor2.dumps({"type": "X"})[:5], "invalid"),
    ],
)
async def test_bad_bytes_raise_frame_error(payload: bytes, match: str) -> None:
    a, b = trio.testing.memory_stream_pair()
    fb = FramedStream(b, max_frame_size=1 << 20)
    await a.send_all(payload)
    await a.aclose()
    with pytest.raises(FrameError, match=match):
        await fb.receive()


async def test_sending_an_oversize_frame_fails_without_writing() -> None:
    a, b = trio.testing.memory_stream_pair()
    fa = FramedStream(a, max_frame_size=100)
    with pytest.raises(FrameError, match="exceeds"):
        await fa.send(SnapshotChunk(file_index=0, offset=0, data=b"x" * 200, crc32c=0))
    await fa.send(SnapshotDone())
    fb = FramedStream(b, max_frame_size=100)
    assert await fb.receive() == SnapshotDone()


def test_backoff_grows_with_jitter_and_resets() -> None:
    b = Backoff(0.1, 2.0, random.Random(1))
    delays = [b.next() for _ in range(10)]
    assert all(0.1 <= d <= 2.0 for d in delays)
    assert max(delays[5:]) > max(delays[:2])  # the ceiling grew
    b.reset()
    assert b.next() <= 0.2
    # Same seed, same delays (reproducible).
    b2 = Backoff(0.1, 2.0, random.Random(1))
    assert [b2.next() for _ in range(10)] == delays


async def test_throttle_rate_under_mock_clock(autojump_clock: trio.testing.MockClock) -> None:
    t = Throttle(1000.0, burst=100)
    start = trio.current_time()
    for _ in range(20):
        await t.take(100)  # 2000 bytes: the first 100 from the burst
    elapsed = trio.current_time() - start
    assert elapsed == pytest.approx(1.9, abs=1e-6)


async def test_throttle_refills_while_idle(autojump_clock: trio.testing.MockClock) -> None:
    t = Throttle(1000.0, burst=500)
    await t.take(500)
    await trio.sleep(10)  # refills to the burst, not beyond
    start = trio.current_time()
    assert await t.take(500) == 0.0
    await t.take(500)
    assert trio.current_time() - start == pytest.approx(0.5)


def test_addresses() -> None:
    assert parse_address("127.0.0.1:7001") == ("127.0.0.1", 7001)
    assert parse_address("[::1]:80") == ("::1", 80)
    assert parse_address("node-a.local:9") == ("node-a.local", 9)
    assert format_address("::1", 80) == "[::1]:80"
    for bad in ["nohost", ":80", "h:", "h:0", "h:70000", "h:x"]:
        with pytest.raises(ValueError):
            parse_address(bad)


async def test_an_undecodable_frame_is_consumed_and_the_next_one_reads() -> None:
    a, b = trio.testing.memory_stream_pair()
    fa, fb = FramedStream(a), FramedStream(b)
    await a.send_all(struct.pack(">I", 3) + b"\xff\xff\xff")
    await fa.send(SnapshotDone())
    with pytest.raises(FrameError, match="invalid CBOR"):
        await fb.receive()
    assert await fb.receive() == SnapshotDone()
