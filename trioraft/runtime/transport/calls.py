"""Request/response calls between runtimes (forwarded proposals, read barriers, membership
changes, leadership transfers), shared by the TCP and in-memory transports.

Each caller keeps one lazily opened ``"call"`` connection per peer and multiplexes concurrent
calls over it by ``call_id``; a reader task matches responses to waiting callers. The serving
side runs each request in its own task (bounded by a semaphore, which also back-pressures the
connection) and writes responses as they complete, in any order.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from trioraft.runtime.transport.base import (
    CallFailed,
    ClientRequest,
    ClientResponse,
    InboundHandler,
    PeerUnreachable,
)
from trioraft.runtime.transport.frames import CallRequest, CallResponse
from trioraft.runtime.transport.framing import ConnectionClosed, FramedStream, FrameError
from trioraft.runtime.transport.util import TransportStats

__all__ = ["CALL_DRAIN_GRACE", "CallClient", "serve_calls"]

log = logging.getLogger(__name__)

#: Seconds a removed peer's call connection stays open for calls already waiting on it.
CALL_DRAIN_GRACE = 30.0


@attrs.define(eq=False)
class _Slot:
    event: trio.Event = attrs.field(factory=trio.Event)
    response: ClientResponse | None = None
    error: str = ""


@attrs.define(eq=False)
class _CallConn:
    stream: FramedStream
    pending: dict[int, _Slot] = attrs.field(factory=dict)
    ids: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1))
    closed: bool = False


class CallClient:
    """Calls to one peer.

    Args:
        peer: the peer's node id.
        connect: opens a handshaken ``"call"`` connection; raises :class:`PeerUnreachable`.
        nursery: where the connection's reader task runs (the transport's).
        stats: counters to update.
    """

    def __init__(
        self,
        peer: int,
        connect: Callable[[], Awaitable[FramedStream]],
        nursery: trio.Nursery,
        stats: TransportStats,
    ) -> None:
        self.peer = peer
        self._connect = connect
        self._nursery = nursery
        self._stats = stats
        self._conn: _CallConn | None = None
        self._lock = trio.Lock()

    async def _ensure(self) -> _CallConn:
        async with self._lock:
            if self._conn is None or self._conn.closed or self._conn.stream.send_broken:
                try:
                    stream = await self._connect()
                except PeerUnreachable as exc:
                    raise CallFailed(self.peer, False, str(exc)) from exc
                conn = _CallConn(stream)
                self._conn = conn
                self._nursery.start_soon(self._read_loop, conn)
            return self._conn

    async def call(self, request: ClientRequest) -> ClientResponse:
        """Sends ``request`` and waits for the response (cancel the caller for a timeout).

        Raises:
            CallFailed: no connection (``sent=False``) or it broke before the response arrived
                (``sent=True``: the peer may have acted on the request).
        """
        conn = await self._ensure()
        call_id = next(conn.ids)
        slot = _Slot()
        conn.pending[call_id] = slot
        try:
            try:
                await conn.stream.send(CallRequest(call_id=call_id, request=request))
            except FrameError as exc:  # too large: nothing was written
                raise CallFailed(self.peer, False, str(exc)) from exc
            except trio.ClosedResourceError as exc:
                # Another call's write was cut off (the stream closed itself); the calls
                # waiting on this connection fail now rather than when the reader notices.
                await self._close(conn, "connection closed")
                raise CallFailed(self.peer, False, "connection closed") from exc
            except trio.BrokenResourceError as exc:
                await self._close(conn)
                raise CallFailed(self.peer, True, f"connection broke: {exc}") from exc
            self._stats.calls_sent += 1
            await slot.event.wait()
        finally:
            conn.pending.pop(call_id, None)
        if slot.response is None:
            raise CallFailed(self.peer, True, slot.error or "connection lost")
        return slot.response

    async def _read_loop(self, conn: _CallConn) -> None:
        reason = "connection closed"
        try:
            while True:
                frame = await conn.stream.receive()
                if not isinstance(frame, CallResponse):
                    raise FrameError(f"unexpected {type(frame).__name__} on a call connection")
                slot = conn.pending.get(frame.call_id)
                if slot is not None:  # else the caller gave up (cancelled) meanwhile
                    slot.response = frame.response
                    slot.event.set()
        except ConnectionClosed:
            pass
        except (FrameError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            log.info("call connection to node %d ended: %s", self.peer, reason)
        except Exception as exc:
            # This task runs in the transport's nursery: whatever the peer sent, only this
            # connection (and the calls on it) may fail.
            reason = f"{type(exc).__name__}: {exc}"
            log.warning("call connection to node %d failed", self.peer, exc_info=True)
        finally:
            await self._close(conn, reason)

    async def _close(self, conn: _CallConn, reason: str = "connection closed") -> None:
        conn.closed = True
        for slot in conn.pending.values():
            slot.error = reason
            slot.event.set()
        conn.pending.clear()
        with trio.CancelScope(shield=True):
            await conn.stream.aclose()

    async def aclose(self) -> None:
        """Closes the connection; pending calls fail with :class:`CallFailed`."""
        if self._conn is not None:
            await self._close(self._conn, "transport closed the connection")

    async def aclose_when_idle(self, grace: float) -> None:
        """Closes the connection once no call is waiting, or after ``grace`` seconds.

        Used when the peer leaves the cluster: a call already sent to it (typically the very
        membership change that removes it) must still get its answer, or a change that
        succeeded would be reported to the client as an unknown outcome.
        """
        conn = self._conn
        if conn is None:
            return
        with trio.move_on_after(grace):
            while conn.pending and not conn.closed:
                await next(iter(conn.pending.values())).event.wait()
        await self._close(conn, "peer removed from the cluster")


async def serve_calls(
    conn: FramedStream,
    handler: InboundHandler[Any],
    *,
    src: int,
    node_id: int,
    stats: TransportStats,
    max_concurrent: int = 256,
) -> None:
    """Serves one ``"call"`` connection from ``src`` until it closes.

    Raises:
        FrameError: the peer sent something other than a :class:`CallRequest`.
    """
    limiter = trio.Semaphore(max_concurrent)

    async def one(frame: CallRequest) -> None:
        try:
            try:
                response = await handler.handle_call(frame.request)
            except Exception as exc:
                log.exception(
                    "node %d: handle_call(%r) from node %d raised", node_id, frame.request.kind, src
                )
                response = ClientResponse(
                    ok=False,
                    error="internal",
                    detail=repr(exc),
                    request_id=frame.request.request_id,
                )
            stats.calls_served += 1
            try:
                packed = conn.pack(CallResponse(call_id=frame.call_id, response=response))
            except FrameError as exc:
                log.error("node %d: response to node %d too large: %s", node_id, src, exc)
                packed = conn.pack(
                    CallResponse(
                        call_id=frame.call_id,
                        response=ClientResponse(
                            ok=False,
                            error="too-large",
                            detail=str(exc),
                            request_id=frame.request.request_id,
                        ),
                    )
                )
            # If the caller is gone it sees a CallFailed; nothing to do here.
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await conn.send_packed([packed])
        finally:
            limiter.release()

    failure: Exception | None = None
    async with trio.open_nursery() as nursery:
        try:
            while True:
                await limiter.acquire()
                try:
                    frame = await conn.receive()
                except ConnectionClosed:
                    break
                if not isinstance(frame, CallRequest):
                    raise FrameError(f"unexpected {type(frame).__name__} on a call connection")
                nursery.start_soon(one, frame)
        except Exception as exc:
            failure = exc
        # The caller cannot receive anything more: abandon requests still running.
        nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
