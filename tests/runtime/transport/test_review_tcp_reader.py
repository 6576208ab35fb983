"""Review pins for the plain-TCP raft reader (``TcpTransport._read_raft_frames``, 5544b58 and
0bcc3db): the frame limit is enforced from the length prefix alone (before the body arrives),
a frame of exactly the limit is accepted, frames cut at arbitrary points arrive once each and in
order, and a peer flooding one connection does not starve the rest of the event loop (real
loopback sockets)."""

from __future__ import annotations

import os
import random
import socket
import struct

import pytest
import trio
from test_tcp import LIMIT, hb, make_cluster, raw_connect, read_until_closed
from test_tcp_raft_reader import _framed, _hello

from trioraft.core.messages import AppendRequest
from trioraft.core.types import Entry
from trioraft.runtime.transport import tcp as tcp_module
from trioraft.runtime.transport.frames import RaftFrame, encode_frame
from trioraft.runtime.transport.framing import ConnectionClosed, FramedStream
from trioraft.runtime.transport.tcp import TcpTransport


async def test_an_oversized_length_prefix_closes_before_the_body_is_sent(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(LIMIT):
        c = await make_cluster(nursery, ids=(1, 2))
        limit = c.t[2]._stream.max_frame_size
        s = await raw_connect(c.t[2].port)
        await s.send_all(_hello(1, 2) + _framed(RaftFrame(msg=hb(1, 2, 1))))
        await c.h[2].wait_messages(1)
        # Only the prefix: a reader that waited for (or allocated) the body would hang here.
        await s.send_all(struct.pack(">I", limit + 1))
        assert b"ok" in await read_until_closed(s)
        await s.aclose()
        assert c.t[2].stats.bad_frames == 1
        assert len(c.h[2].delivered) == 1


async def test_a_frame_of_exactly_the_limit_is_accepted(nursery: trio.Nursery) -> None:
    with trio.fail_after(LIMIT):
        c = await make_cluster(nursery, ids=(1, 2))
        limit = c.t[2]._stream.max_frame_size

        def request(size: int) -> AppendRequest:
            return AppendRequest(
                src=1,
                dst=2,
                term=1,
                prev_index=0,
                prev_term=0,
                entries=(Entry(term=1, index=1, data=b"q" * size),),
            )

        # Grow the payload until the encoded body is exactly the limit.
        size = limit - 200
        body = encode_frame(RaftFrame(msg=request(size)))
        size += limit - len(body)
        body = encode_frame(RaftFrame(msg=request(size)))
        assert len(body) == limit
        s = await raw_connect(c.t[2].port)
        await s.send_all(_hello(1, 2) + struct.pack(">I", len(body)) + body)
        await s.send_all(_framed(RaftFrame(msg=hb(1, 2, 9))))
        await c.h[2].wait_messages(2)
        assert c.h[2].delivered[0] == request(size)
        assert c.h[2].delivered[1] == hb(1, 2, 9)
        assert c.t[2].stats.bad_frames == 0
        await s.aclose()


async def test_frames_cut_at_random_points_arrive_once_each_in_order(
    nursery: trio.Nursery,
) -> None:
    seed = int(os.environ.get("TRIORAFT_SEED") or random.randrange(2**32))
    print(f"TRIORAFT_SEED={seed}")
    rng = random.Random(seed)
    with trio.fail_after(LIMIT):
        c = await make_cluster(nursery, ids=(1, 2))
        msgs = []
        for i in range(300):
            if i % 7 == 0:
                msgs.append(
                    AppendRequest(
                        src=1,
                        dst=2,
                        term=1,
                        prev_index=i,
                        prev_term=1,
                        entries=(Entry(1, i + 1, data=rng.randbytes(rng.choice([0, 5, 70000]))),),
                        commit=i,
                    )
                )
            else:
                msgs.append(hb(1, 2, i))
        stream = _hello(1, 2) + b"".join(_framed(RaftFrame(msg=m)) for m in msgs)
        s = await raw_connect(c.t[2].port)
        pos = 0
        while pos < len(stream):
            n = rng.choice([1, 2, 3, 4, 5, 17, 1000, 65536, 70001])
            await s.send_all(stream[pos : pos + n])
            pos += n
            if rng.random() < 0.05:
                await trio.sleep(0.001)  # let the reader see a partial frame
        await c.h[2].wait_messages(len(msgs))
        assert c.h[2].delivered == msgs
        assert c.t[2].stats.bad_frames == 0
        await s.aclose()


async def test_a_flooding_connection_does_not_starve_other_tasks() -> None:
    # The reader alone on one side of a socket pair whose buffer already holds many reads'
    # worth of frames: a ticker task must run between its reads (it parks for readability
    # before each read), not only once the flood is drained.
    a, b_std = socket.socketpair()
    a.setblocking(False)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    b_std.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    b = trio.socket.from_stdlib_socket(b_std)
    one = _framed(RaftFrame(msg=hb(1, 2, 1)))
    sent = 0
    with a:
        while True:  # fill the pair's buffers (non-blocking send until it refuses)
            try:
                n = a.send(one * 64)
            except BlockingIOError:
                break
            assert n == len(one) * 64  # a stream socket pair takes whole small writes here
            sent += 64
    assert sent * len(one) > 4 * (64 << 10)  # several reads' worth
    ticks = 0
    seen: list[int] = []

    class Handler:
        def deliver(self, msg: object) -> None:
            seen.append(ticks)

    t = TcpTransport(2, "test-cluster")
    stream = trio.SocketStream(b)
    conn = FramedStream(stream)
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await trio.lowlevel.checkpoint()

            nursery.start_soon(ticker)
            with pytest.raises(ConnectionClosed):
                await t._read_raft_frames(conn, stream, 1, Handler())  # type: ignore[arg-type]
            nursery.cancel_scope.cancel()
    assert len(seen) == sent
    assert len(set(seen)) > 2, f"the ticker ran {len(set(seen))} times during {sent} frames"
    await stream.aclose()


async def test_a_large_frame_arriving_slowly_costs_a_bounded_read_each_time(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[int] = []
    real_read = os.read

    def read(fd: int, n: int) -> bytes:
        asked.append(n)
        return real_read(fd, n)

    monkeypatch.setattr(tcp_module.os, "read", read)
    with trio.fail_after(LIMIT):
        c = await make_cluster(nursery, ids=(1, 2), max_frame_size=8 << 20)
        msg = AppendRequest(
            src=1,
            dst=2,
            term=1,
            prev_index=0,
            prev_term=0,
            entries=(Entry(term=1, index=1, data=b"z" * (3 << 20)),),
        )
        data = _hello(1, 2) + _framed(RaftFrame(msg=msg))
        s = await raw_connect(c.t[2].port)
        # However the pieces meet the reader's reads, its first read after the frame's head
        # has most of the frame still to come.
        for pos in range(0, len(data), 256 << 10):
            await s.send_all(data[pos : pos + (256 << 10)])
        await c.h[2].wait_messages(1)
        assert c.h[2].delivered == [msg]
        assert asked and max(asked) <= tcp_module._RAFT_READ_MAX < 3 << 20
        await s.aclose()
