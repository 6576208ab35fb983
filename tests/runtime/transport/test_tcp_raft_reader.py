"""The raft connection's direct socket reader (``TcpTransport._read_raft_frames``): frames that
arrive together with the handshake, several per read or split across reads are all delivered in
order; malformed input still closes only that connection (real loopback sockets)."""

from __future__ import annotations

import logging
import struct

import pytest
import trio
from test_tcp import LIMIT, hb, make_cluster, raw_connect, read_until_closed

from trioraft.core.messages import AppendRequest
from trioraft.core.types import Entry
from trioraft.runtime.transport.frames import PROTOCOL_VERSION, Hello, RaftFrame, encode_frame


def _framed(frame: object) -> bytes:
    body = encode_frame(frame)  # type: ignore[arg-type]
    return struct.pack(">I", len(body)) + body


def _hello(src: int, dst: int) -> bytes:
    return _framed(
        Hello(
            version=PROTOCOL_VERSION,
            cluster_id="test-cluster",
            node_id=src,
            target=dst,
            purpose="raft",
        )
    )


async def test_frames_with_the_handshake_in_one_read_and_split_across_reads(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(LIMIT):
        c = await make_cluster(nursery, ids=(1, 2))
        s = await raw_connect(c.t[2].port)
        frames = [_framed(RaftFrame(msg=hb(1, 2, i))) for i in range(6)]
        app = AppendRequest(
            src=1,
            dst=2,
            term=1,
            prev_index=0,
            prev_term=0,
            entries=(Entry(term=1, index=1, data=b"x" * 70000),),  # more than one read
        )
        big = _framed(RaftFrame(msg=app))
        # The Hello and two frames in one write: the handshake's read takes them all.
        await s.send_all(_hello(1, 2) + frames[0] + frames[1])
        await c.h[2].wait_messages(2)
        # Three frames in one write, then one split mid-prefix and mid-body.
        await s.send_all(frames[2] + frames[3] + frames[4])
        await c.h[2].wait_messages(5)
        await s.send_all(frames[5][:2])
        await trio.sleep(0.05)
        await s.send_all(frames[5][2:9])
        await trio.sleep(0.05)
        await s.send_all(frames[5][9:] + big[:1000])
        await c.h[2].wait_messages(6)
        await s.send_all(big[1000:])
        await c.h[2].wait_messages(7)
        got = c.h[2].delivered
        assert [m.commit for m in got[:6]] == list(range(6))  # type: ignore[union-attr]
        assert got[6] == app
        assert c.t[2].stats.bad_frames == 0
        await s.aclose()


@pytest.mark.parametrize(
    "tail",
    [
        struct.pack(">I", 5) + b"\xff\xfe\xfd\xfc\xfb",  # not CBOR
        struct.pack(">I", 0),  # empty frame
        _framed(Hello(version=1, cluster_id="x", node_id=1, target=2, purpose="raft")),
        struct.pack(">I", 12) + b"\xa2dtypeiRaftFrame"[:12],  # a RaftFrame without its msg
    ],
    ids=["not-cbor", "empty", "not-a-raft-frame", "no-msg"],
)
async def test_malformed_raft_frames_close_only_that_connection(
    nursery: trio.Nursery, tail: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    with trio.fail_after(LIMIT):
        c = await make_cluster(nursery, ids=(1, 2, 3))
        s = await raw_connect(c.t[2].port)
        # Impersonates node 3 (a known peer); node 1 keeps its own connection.
        await s.send_all(_hello(3, 2) + _framed(RaftFrame(msg=hb(3, 2, 7))))
        await c.h[2].wait_messages(1)
        await s.send_all(tail)
        assert b"ok" in await read_until_closed(s)  # the HelloAck, then the node hung up
        await s.aclose()
        assert c.t[2].stats.bad_frames == 1
        assert "malformed frame" in caplog.text
        c.t[1].send(hb(1, 2, 8))
        await c.h[2].wait_messages(2)
        assert [m.commit for m in c.h[2].delivered] == [7, 8]  # type: ignore[union-attr]


async def test_a_frame_cut_by_the_peer_closing_is_malformed(nursery: trio.Nursery) -> None:
    with trio.fail_after(LIMIT):
        c = await make_cluster(nursery, ids=(1, 2))
        s = await raw_connect(c.t[2].port)
        frame = _framed(RaftFrame(msg=hb(1, 2, 3)))
        await s.send_all(_hello(1, 2) + frame + frame[:7])
        await c.h[2].wait_messages(1)
        await s.send_eof()  # a clean end of stream, inside a frame
        assert b"ok" in await read_until_closed(s)
        await s.aclose()
        assert c.t[2].stats.bad_frames == 1
