"""A send cancelled (or failing) after part of its frame went out leaves the connection unable
to carry another frame: the FramedStream closes it, later sends raise ClosedResourceError, and
a call client moves on to a new connection instead of writing the next call's frame behind the
cut one (where the peer would read it as the rest of that frame, and the call would hang)."""

from __future__ import annotations

import contextlib

import pytest
import trio
import trio.testing
from transport_fakes import Handler

from trioraft.core.messages import HeartbeatRequest
from trioraft.runtime.transport.base import ClientRequest
from trioraft.runtime.transport.calls import CallClient, serve_calls
from trioraft.runtime.transport.frames import CallRequest, RaftFrame
from trioraft.runtime.transport.framing import FramedStream, FrameError
from trioraft.runtime.transport.util import TransportStats

MiB = 1 << 20
LIMIT = 10.0
SMALL = RaftFrame(msg=HeartbeatRequest(src=1, dst=2, term=1))


def big_frame() -> CallRequest:
    # far more than a socket pair's buffers hold: its send blocks until the peer reads
    return CallRequest(call_id=1, request=ClientRequest(kind="echo", payload=b"x" * (8 * MiB)))


class HalfWriter(trio.abc.Stream):
    """Writes half of what it is given, then blocks (a peer that stopped reading)."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.closed:
            raise trio.ClosedResourceError
        self.written += bytes(data)[: len(data) // 2]
        await trio.sleep_forever()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.sleep_forever()
        raise AssertionError  # pragma: no cover

    async def aclose(self) -> None:
        self.closed = True
        await trio.lowlevel.checkpoint()


class AtomicWriter(HalfWriter):
    """Writes everything or, when cancelled at its checkpoint, nothing."""

    send_all_is_atomic = True

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        self.written += data


async def test_a_send_cut_midway_closes_the_stream_for_good() -> None:
    stream = HalfWriter()
    conn = FramedStream(stream)
    with trio.move_on_after(0):
        await conn.send(SMALL)
    assert stream.written and stream.closed and conn.send_broken
    for send in (
        lambda: conn.send(SMALL),
        lambda: conn.send_packed([conn.pack(SMALL)]),
        lambda: conn.send_chunk(0, 0, 0, b"abc"),
    ):
        with pytest.raises(trio.ClosedResourceError):
            await send()
    assert len(stream.written) == len(conn.pack(SMALL)) // 2


async def test_a_send_cancelled_before_its_first_byte_leaves_the_stream_usable() -> None:
    stream = AtomicWriter()
    conn = FramedStream(stream)
    with trio.move_on_after(0):
        await conn.send(SMALL)
    assert not stream.written and not stream.closed and not conn.send_broken
    await conn.send(SMALL)
    assert stream.written == conn.pack(SMALL)


async def _socket_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    a, b = trio.socket.socketpair()
    return trio.SocketStream(a), trio.SocketStream(b)


async def test_tcp_send_cancelled_before_its_first_byte_leaves_the_stream_usable() -> None:
    a, b = await _socket_pair()
    sender, receiver = FramedStream(a), FramedStream(b)
    with trio.CancelScope() as cs:
        cs.cancel()
        await sender.send(big_frame())
    assert not sender.send_broken
    await sender.send(SMALL)
    with trio.fail_after(LIMIT):
        assert await receiver.receive() == SMALL


async def test_tcp_send_cut_midway_ends_the_connection_for_both_ends() -> None:
    a, b = await _socket_pair()
    sender, receiver = FramedStream(a), FramedStream(b)
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as n:
            n.start_soon(sender.send, big_frame())
            await trio.testing.wait_all_tasks_blocked()  # the socket buffers are full
            n.cancel_scope.cancel()
        assert sender.send_broken
        with pytest.raises(trio.ClosedResourceError):
            await sender.send(SMALL)
        # The peer gets the cut frame's beginning and then the end of the connection (not a
        # frame made of the cut one and whatever would have followed it).
        try:
            await receiver.receive()
        except FrameError as exc:
            assert "closed inside a frame" in str(exc)
        else:  # pragma: no cover
            raise AssertionError("the cut frame was received")


class Gated(trio.abc.Stream):
    """The serving side of a call connection that reads nothing until ``gate`` is set."""

    def __init__(self, inner: trio.abc.Stream, gate: trio.Event) -> None:
        self.inner = inner
        self.gate = gate

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        await self.gate.wait()
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_call_cancelled_mid_write_does_not_swallow_the_next_call() -> None:
    gate = trio.Event()
    connections = 0
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as n:

            async def connect() -> FramedStream:
                nonlocal connections
                connections += 1
                a, b = await _socket_pair()
                server = FramedStream(Gated(b, gate) if connections == 1 else b)
                n.start_soon(_serve, server)
                return FramedStream(a)

            client = CallClient(2, connect, n, TransportStats())
            big = ClientRequest(kind="echo", payload=b"x" * (8 * MiB))
            async with trio.open_nursery() as caller:
                caller.start_soon(client.call, big)
                await trio.testing.wait_all_tasks_blocked()  # stuck in the middle of its frame
                caller.cancel_scope.cancel()  # the caller's timeout
            gate.set()
            response = await client.call(ClientRequest(kind="echo", payload=b"after"))
            assert response.payload == b"after"
            assert connections == 2
            n.cancel_scope.cancel()


async def _serve(server: FramedStream) -> None:
    # The first connection ends with the cut frame; what the server makes of it is not the
    # subject here.
    with contextlib.suppress(Exception):
        await serve_calls(server, Handler(2), src=1, node_id=2, stats=TransportStats())
