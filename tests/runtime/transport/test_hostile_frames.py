"""Frames a hostile or broken peer can send: whatever they hold, they end as a DecodeError /
FrameError that closes only the connection they came on, never as another exception in the
transport's nursery (which would stop the whole node).

Covers: an unhashable inner ``"type"`` tag (it made the fast decoder's table lookup raise
TypeError), integers outside [0, 2**64) (CBOR bignums: formatting one of more than 4300 digits
raises ValueError), and a SnapshotRequest sent on a raft connection (the core must only see
one after the snapshot's files are stored).
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable

import cbor2
import pytest
import trio
import trio.testing
from transport_fakes import CONF, Handler, make_snapshot, request_for

from trioraft.codec import DecodeError
from trioraft.core.messages import AppendRequest, HeartbeatRequest, SnapshotRequest
from trioraft.core.types import Entry, EntryKind, SnapshotMeta
from trioraft.runtime.disk import INLINE_DISK
from trioraft.runtime.transport.base import CallFailed, ClientRequest, SnapshotTransferError
from trioraft.runtime.transport.frames import (
    PROTOCOL_VERSION,
    Frame,
    Hello,
    HelloAck,
    RaftFrame,
    SnapshotAccept,
    decode_frame,
    encode_frame,
)
from trioraft.runtime.transport.framing import FramedStream, FrameError
from trioraft.runtime.transport.streaming import StreamOptions, send_snapshot
from trioraft.runtime.transport.tcp import TcpTransport

LIMIT = 15.0
HUGE = 10**5000  # str() of it raises ValueError (CPython's int_max_str_digits)
U64_MAX = (1 << 64) - 1

UNHASHABLE_TAGS = [
    cbor2.dumps({"type": "RaftFrame", "msg": {"type": [1]}}),
    cbor2.dumps({"type": "RaftFrame", "msg": {"type": {}}}),
]


def framed(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


# -- the decoder ---------------------------------------------------------------------------------


@pytest.mark.parametrize("body", UNHASHABLE_TAGS)
def test_an_unhashable_message_tag_is_a_decode_error(body: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_frame(body)


async def test_an_unhashable_message_tag_is_a_frame_error_on_the_stream() -> None:
    a, b = trio.testing.memory_stream_pair()
    await a.send_all(framed(UNHASHABLE_TAGS[0]))
    with pytest.raises(FrameError):
        await FramedStream(b).receive()


def _append(term: int = 1, index: int = 1, commit: int = 0) -> RaftFrame:
    entries = (Entry(term, index, EntryKind.NORMAL, b"x"),)
    msg = AppendRequest(
        src=1, dst=2, term=1, prev_index=0, prev_term=0, entries=entries, commit=commit
    )
    return RaftFrame(msg=msg)


def _accept(file_index: int = 0, offset: int = 0) -> SnapshotAccept:
    return SnapshotAccept(file_index=file_index, offset=offset, window=1)


def _hello(node_id: int) -> Hello:
    return Hello(version=PROTOCOL_VERSION, cluster_id="c", node_id=node_id, target=2, purpose="")


# (frame with an integer outside [0, 2**64), the same frame at the limit)
U64_CASES = [
    (HelloAck(ok=True, node_id=HUGE), HelloAck(ok=True, node_id=U64_MAX)),
    (HelloAck(ok=True, node_id=1 << 64), HelloAck(ok=True, node_id=0)),
    (_hello(-1), _hello(U64_MAX)),
    (_accept(file_index=HUGE), _accept(file_index=U64_MAX)),
    (_accept(offset=-HUGE), _accept(offset=U64_MAX)),
    # the fast dict path (heartbeats are encoded as dicts) and its entries; the direct path
    # (what the direct encoder cannot write goes as a dict)
    (
        RaftFrame(msg=HeartbeatRequest(src=1, dst=2, term=HUGE)),
        RaftFrame(msg=HeartbeatRequest(src=1, dst=2, term=U64_MAX)),
    ),
    (_append(commit=-1), _append(commit=U64_MAX)),
    (_append(term=HUGE), _append(term=U64_MAX)),
    (_append(index=1 << 64), _append(index=U64_MAX)),
]


@pytest.mark.parametrize(("bad", "good"), U64_CASES, ids=[type(b).__name__ for b, _ in U64_CASES])
def test_integers_outside_the_u64_range_are_a_decode_error(bad: Frame, good: Frame) -> None:
    body = encode_frame(bad)  # the encoders still write them (a bignum or a negative int)
    with pytest.raises(DecodeError):
        decode_frame(body)
    assert decode_frame(encode_frame(good)) == good


# -- the transport against a hostile peer --------------------------------------------------------


Reply = Callable[[FramedStream, trio.SocketStream, Hello], Awaitable[None]]


async def _run_against(reply: Reply, *, call: bool = False) -> tuple[bool, list[object]]:
    """Node 1 with peer 2 at a fake node answering every handshake through ``reply``. Waits
    until node 1 reports peer 2 unreachable (it handled the failed raft connection) or its
    ``serve()`` ended; returns whether it is still serving and the result of a call to node 2
    when ``call``."""
    outcome: list[object] = []
    decided = trio.Event()

    async def fake_peer(stream: trio.SocketStream) -> None:
        conn = FramedStream(stream)
        try:
            hello = await conn.receive()
            assert isinstance(hello, Hello)
            await reply(conn, stream, hello)
            await trio.sleep_forever()
        except (trio.BrokenResourceError, trio.ClosedResourceError, FrameError):
            pass

    serving = True
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as n:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            port = listeners[0].socket.getsockname()[1]
            await n.start(trio.serve_listeners, fake_peer, listeners)
            t = TcpTransport(
                1,
                "c",
                peers={2: f"127.0.0.1:{port}"},
                backoff_initial=0.001,
                backoff_max=0.01,
                on_unreachable=lambda peer: decided.set(),
            )

            async def run_transport(*, task_status: trio.TaskStatus[int]) -> None:
                nonlocal serving
                try:
                    await t.serve(Handler(1), task_status=task_status)
                except BaseException as exc:  # recorded for the assertion
                    outcome.append(exc)
                finally:
                    serving = False
                    decided.set()

            await n.start(run_transport)
            if call:
                try:
                    outcome.append(await t.call(2, ClientRequest(kind="echo", payload=b"x")))
                except CallFailed as exc:
                    outcome.append(exc)
            await decided.wait()
            still_serving = serving
            n.cancel_scope.cancel()
    return still_serving, outcome


async def test_a_garbage_handshake_reply_does_not_stop_the_transport() -> None:
    async def reply(conn: FramedStream, stream: trio.SocketStream, hello: Hello) -> None:
        await stream.send_all(framed(UNHASHABLE_TAGS[0]))

    serving, outcome = await _run_against(reply)
    assert serving, f"serve() ended: {outcome!r}"


async def test_a_garbage_frame_on_the_outbound_raft_connection_does_not_stop_the_transport() -> (
    None
):
    async def reply(conn: FramedStream, stream: trio.SocketStream, hello: Hello) -> None:
        await conn.send(HelloAck(ok=True, node_id=2))
        await stream.send_all(framed(UNHASHABLE_TAGS[1]))

    serving, outcome = await _run_against(reply)
    assert serving, f"serve() ended: {outcome!r}"


async def test_a_garbage_frame_on_the_call_connection_fails_the_call_only() -> None:
    async def reply(conn: FramedStream, stream: trio.SocketStream, hello: Hello) -> None:
        await conn.send(HelloAck(ok=True, node_id=2))
        if hello.purpose == "call":
            await conn.receive()  # the CallRequest
            await stream.send_all(framed(UNHASHABLE_TAGS[0]))
        else:  # let the raft connection drop, so that the sender reconnects
            await stream.send_all(framed(UNHASHABLE_TAGS[1]))

    serving, outcome = await _run_against(reply, call=True)
    assert serving, f"serve() ended: {outcome!r}"
    assert isinstance(outcome[0], CallFailed)


async def test_a_huge_node_id_in_the_handshake_reply_does_not_stop_the_transport() -> None:
    async def reply(conn: FramedStream, stream: trio.SocketStream, hello: Hello) -> None:
        await conn.send(HelloAck(ok=True, node_id=HUGE))

    serving, outcome = await _run_against(reply)
    assert serving, f"serve() ended: {outcome!r}"


async def test_a_huge_resume_position_is_a_transfer_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stored, reader = make_snapshot({"f": b"x" * 1000})

    async def main(nursery: trio.Nursery) -> None:
        async def bad_receiver(stream: trio.abc.Stream) -> None:
            conn = FramedStream(stream)
            await conn.receive()  # the offer
            await conn.send(SnapshotAccept(file_index=HUGE, offset=0, window=1))

        async def connect() -> FramedStream:
            a, b = trio.testing.memory_stream_pair()
            nursery.start_soon(bad_receiver, b)
            return FramedStream(a)

        # Every attempt is answered with the same bad frame: the stream stalls out.
        with pytest.raises(SnapshotTransferError):
            await send_snapshot(
                connect,
                stored,
                reader,
                request_for(stored),
                disk=INLINE_DISK,
                options=StreamOptions(chunk_size=1000, stall_timeout=5),
                peer=2,
            )

    async with trio.open_nursery() as n:
        await main(n)
        n.cancel_scope.cancel()


async def test_a_snapshot_request_on_a_raft_connection_closes_it_undelivered() -> None:
    handler = Handler(2)
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as n:
            t2 = TcpTransport(2, "c", peers={1: "127.0.0.1:1"}, backoff_initial=5, backoff_max=5)
            await n.start(t2.serve, handler)
            s = await trio.open_tcp_stream("127.0.0.1", t2.port)
            conn = FramedStream(s)
            await conn.send(
                Hello(version=PROTOCOL_VERSION, cluster_id="c", node_id=1, target=2, purpose="raft")
            )
            assert await conn.receive() == HelloAck(ok=True, node_id=2)
            request = SnapshotRequest(src=1, dst=2, term=5, meta=SnapshotMeta(1000, 5, CONF))
            await conn.send(RaftFrame(msg=request))
            await conn.send(RaftFrame(msg=HeartbeatRequest(src=1, dst=2, term=5)))
            # Either the transport closes the connection (nothing is ever sent back on it),
            # or, as before the fix, it delivers both messages: whichever comes first.
            done = trio.Event()
            closed = False

            async def wait_closed() -> None:
                nonlocal closed
                try:
                    closed = await s.receive_some(100) == b""
                except trio.BrokenResourceError:  # closed with the heartbeat unread: a reset
                    closed = True
                done.set()

            async def wait_delivered() -> None:
                await handler.wait_messages(2)
                done.set()

            async with trio.open_nursery() as race:
                race.start_soon(wait_closed)
                race.start_soon(wait_delivered)
                await done.wait()
                race.cancel_scope.cancel()
            await s.aclose()
            n.cancel_scope.cancel()
    assert not handler.delivered, f"delivered without a stored snapshot: {handler.delivered}"
    assert closed
    assert t2.stats.bad_frames == 1
