"""A small, strict HTTP/1.1 server on Trio, with all parsing done by h11.

Theory of operation: one task per connection runs an h11 state machine. Each cycle reads one
request (headers bounded by h11's ``max_incomplete_event_size``, body bounded by
``max_body_bytes``), hands a :class:`Request` to the application handler, writes the
:class:`Response`, and then either starts the next keep-alive cycle or closes the connection.
Anything h11 rejects becomes a 400 (when a response can still be sent) and the connection is
closed; a body over the limit becomes a 413 and the connection is closed without reading the rest
(the client may still be sending, so keeping the connection would desynchronise it). A handler
exception becomes a 500 and is logged; it never takes the server down. Cancelling the task that
runs :func:`serve_http` closes every connection and the listeners.

Cost per request matters here (a busy KV node spends most of its CPU in this module): timeouts
are deadlines that one sweeper task enforces instead of cancel scopes per request, response heads
are validated by h11 once per distinct head and reused, and a response leaves in one write.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import h11
import trio

__all__ = [
    "HttpServerConfig",
    "Request",
    "Response",
    "json_response",
    "serve_http",
    "text_response",
]

logger = logging.getLogger(__name__)

_SERVER_NAME = b"trioraft-example"
_READ_SIZE = 64 * 1024


@attrs.frozen
class Request:
    """One parsed HTTP request.

    Attributes:
        method: upper-case method, e.g. ``"GET"``.
        path: the percent-decoded path, always starting with ``/``.
        query: the decoded query parameters (a name may repeat).
        headers: lower-case header names with their raw values.
        body: the complete request body.
    """

    method: str
    path: str
    query: dict[str, list[str]]
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or ``None``."""
        key = name.lower().encode("ascii")
        for k, v in self.headers:
            if k == key:
                return v.decode("latin-1")
        return None

    def flag(self, name: str) -> bool:
        """True when query parameter ``name`` is present and truthy (``1``, ``true``, ``yes``, or
        empty as in ``?serializable``)."""
        values = self.query.get(name)
        if not values:
            return False
        return values[-1].lower() in ("", "1", "true", "yes", "on")


@attrs.frozen
class Response:
    """An HTTP response to send.

    Attributes:
        status: the status code.
        body: the body bytes.
        content_type: the Content-Type header value (omitted when the body is empty).
        headers: extra headers.
    """

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


def text_response(status: int, text: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    """A plain-text response; a trailing newline is added for terminal friendliness."""
    body = text if text.endswith("\n") or not text else text + "\n"
    return Response(status, body.encode("utf-8"), headers=headers)


def json_response(status: int, obj: Any) -> Response:
    """A JSON response with the object pretty-printed."""
    body = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    return Response(status, body.encode("utf-8"), content_type="application/json")


Handler = Callable[[Request], Awaitable[Response]]
#: Called with the status code whenever the server itself rejects a request (400, 408, 413, 431).
RejectHook = Callable[[int], None]


@attrs.frozen
class HttpServerConfig:
    """Limits of the HTTP server.

    Attributes:
        max_body_bytes: larger request bodies are answered with 413.
        max_header_bytes: larger request heads are answered with 431/400 by h11's limit.
        idle_timeout: seconds a keep-alive connection may sit idle before it is closed.
        request_timeout: seconds to receive a complete request once it has started.
    """

    max_body_bytes: int = 1 << 20
    max_header_bytes: int = 16 * 1024
    idle_timeout: float = 60.0
    request_timeout: float = 30.0


class _BodyTooLarge(Exception):
    pass


#: connection phases, for the timeout sweeper
_IDLE = 0  # waiting for (the rest of) a request head: idle_timeout, then close silently
_BODY = 1  # reading a request body: request_timeout, then 408
_BUSY = 2  # in the handler or answering: no HTTP-level limit (the handler has its own)

_NO_DEADLINE = float("inf")
#: distinct response heads kept ready-made (a KV node answers a handful of distinct ones)
_HEAD_CACHE_SIZE = 256


class _Connection:
    """One HTTP connection: an h11 state machine over a Trio stream.

    Timeouts are not cancel scopes per request (two scopes per request were a measurable share of
    a busy node's CPU): each connection records the deadline of its current phase, and one
    sweeper task per server cancels connections past theirs (see :func:`_sweep`).
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        handler: Handler,
        config: HttpServerConfig,
        on_reject: RejectHook | None = None,
        heads: dict[tuple[Any, ...], h11.Response] | None = None,
    ) -> None:
        self.stream = stream
        self.handler = handler
        self.config = config
        self.on_reject = on_reject
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=config.max_header_bytes)
        self.scope = trio.CancelScope()
        self.phase = _IDLE
        self.deadline = _NO_DEADLINE
        self.expired = -1  # the phase whose deadline passed, once the sweeper cancelled us
        self._heads = heads if heads is not None else {}

    def expire(self) -> None:
        """Called by the sweeper when the current phase's deadline has passed."""
        if self.expired < 0:
            self.expired = self.phase
            self.scope.cancel()

    async def _send(self, event: h11.Event) -> None:
        data = self.conn.send(event)
        if data:
            await self.stream.send_all(data)

    async def _next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                if self.conn.they_are_waiting_for_100_continue:
                    await self._send(h11.InformationalResponse(status_code=100, headers=[]))
                data = await self.stream.receive_some(_READ_SIZE)
                # h11 treats b"" as EOF, which is what an empty read means for a Trio stream.
                self.conn.receive_data(bytes(data))
                continue
            return event

    async def _read_body(self, request: h11.Request) -> bytes:
        declared = None
        for name, value in request.headers:
            if name == b"content-length":
                declared = int(value)  # h11 has validated it
        if declared is not None and declared > self.config.max_body_bytes:
            raise _BodyTooLarge
        chunks: list[bytes] = []
        size = 0
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > self.config.max_body_bytes:
                    raise _BodyTooLarge
                chunks.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
            elif isinstance(event, h11.ConnectionClosed):
                raise h11.RemoteProtocolError("connection closed mid-body")
            else:  # pragma: no cover - h11 guarantees only Data/EndOfMessage here
                raise h11.RemoteProtocolError(f"unexpected event {event!r}")

    def _head(self, response: Response) -> h11.Response:
        """The h11 event for the response's status line and headers, built once per distinct
        head (h11 validates every header of every event it is given)."""
        key = (response.status, len(response.body), response.content_type, response.headers)
        head = self._heads.get(key)
        if head is None:
            headers = [
                ("server", _SERVER_NAME.decode()),
                ("content-length", str(len(response.body))),
            ]
            if response.body:
                headers.append(("content-type", response.content_type))
            headers.extend(response.headers)
            head = h11.Response(status_code=response.status, headers=headers)
            if len(self._heads) >= _HEAD_CACHE_SIZE:
                self._heads.clear()
            self._heads[key] = head
        return head

    async def _respond(self, response: Response, *, head: bool = False) -> None:
        conn = self.conn
        data = conn.send(self._head(response)) or b""
        if response.body and not head:  # a response to HEAD has headers only
            data += conn.send(h11.Data(data=response.body)) or b""
        data += conn.send(h11.EndOfMessage()) or b""
        # One write per response: a separate write for the body would cost a syscall and,
        # with Nagle's algorithm, a delayed-ACK wait on the client.
        await self.stream.send_all(data)

    async def _fail(self, status: int, text: str) -> None:
        """Answer an error and make sure the connection closes afterwards."""
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        if self.on_reject is not None:
            self.on_reject(status)
        response = text_response(status, text, headers=(("connection", "close"),))
        try:
            await self._respond(response)
            await self._linger()
        except (h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _linger(self) -> None:
        """Close gracefully although the client may still be sending.

        Closing a socket with unread input makes the kernel send a reset, and the client can then
        lose the error response it has not read yet. So: half-close, then drain (bounded in time
        and bytes) until the client closes its side.
        """
        if isinstance(self.stream, trio.SocketStream):
            await self.stream.send_eof()
        budget = 16 * self.config.max_body_bytes
        with trio.move_on_after(2.0):
            while budget > 0:
                data = await self.stream.receive_some(_READ_SIZE)
                if not data:
                    return
                budget -= len(data)

    async def run(self) -> None:
        with self.scope:
            await self._serve()
        if self.expired == _BODY:
            await self._fail(408, "request timeout")

    async def _serve(self) -> None:
        config = self.config
        while True:
            # A keep-alive connection may idle; once a request starts it must finish promptly.
            self.phase = _IDLE
            self.deadline = trio.current_time() + config.idle_timeout
            try:
                event = await self._next_event()
            except h11.RemoteProtocolError as exc:
                await self._fail(exc.error_status_hint, f"bad request: {exc}")
                return
            if isinstance(event, h11.ConnectionClosed):
                return
            if not isinstance(event, h11.Request):  # pragma: no cover - h11 state machine
                await self._fail(400, "bad request")
                return
            self.phase = _BODY
            self.deadline = trio.current_time() + config.request_timeout
            head_size = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
            if head_size > config.max_header_bytes:
                # h11 only bounds heads that arrive in pieces; bound complete ones too.
                await self._fail(431, "request header fields too large")
                return
            try:
                body = await self._read_body(event)
            except _BodyTooLarge:
                await self._fail(413, f"request body exceeds {config.max_body_bytes} bytes")
                return
            except h11.RemoteProtocolError as exc:
                await self._fail(exc.error_status_hint, f"bad request: {exc}")
                return
            self.phase = _BUSY
            self.deadline = _NO_DEADLINE
            request = _to_request(event, body)
            if request is None:
                await self._fail(400, "bad request: malformed request target")
                return
            try:
                response = await self.handler(request)
            except Exception:
                logger.exception("handler failed for %s %s", request.method, request.path)
                response = text_response(500, "internal server error")
            await self._respond(response, head=request.method == "HEAD")
            if self.conn.our_state is h11.MUST_CLOSE:
                return
            try:
                self.conn.start_next_cycle()
            except h11.LocalProtocolError:
                return


def _to_request(event: h11.Request, body: bytes) -> Request | None:
    try:
        target = event.target.decode("ascii")
        method = event.method.decode("ascii").upper()
    except UnicodeDecodeError:
        return None
    if target.startswith(("http://", "https://")):
        # absolute-form (RFC 9112 3.2.2): servers must accept it; only the path matters here.
        parts = urllib.parse.urlsplit(target)
        target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
    if not target.startswith("/"):
        return None
    raw_path, _, raw_query = target.partition("?")
    try:
        # Most targets need no decoding at all (no escapes, no query): skip the general path.
        path = urllib.parse.unquote(raw_path, errors="strict") if "%" in raw_path else raw_path
        query = (
            urllib.parse.parse_qs(raw_query, keep_blank_values=True, errors="strict")
            if raw_query
            else {}
        )
    except (UnicodeDecodeError, ValueError):
        return None
    headers = tuple(event.headers)
    return Request(method=method, path=path, query=query, headers=headers, body=body)


class _Server:
    """The shared state of one :func:`serve_http`: its open connections and cached heads."""

    def __init__(
        self, handler: Handler, config: HttpServerConfig, on_reject: RejectHook | None
    ) -> None:
        self.handler = handler
        self.config = config
        self.on_reject = on_reject
        self.connections: set[_Connection] = set()
        self.heads: dict[tuple[Any, ...], h11.Response] = {}

    async def handle_stream(self, stream: trio.abc.Stream) -> None:
        connection = _Connection(stream, self.handler, self.config, self.on_reject, self.heads)
        self.connections.add(connection)
        try:
            async with stream:
                await connection.run()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the peer went away; nothing to answer
        except Exception:
            logger.exception("HTTP connection failed")
        finally:
            self.connections.discard(connection)

    async def sweep(self) -> None:
        """Expire connections past their phase's deadline, a few times per shortest timeout
        (so a timeout fires up to a quarter of it late, at most a second)."""
        period = min(1.0, max(0.01, min(self.config.idle_timeout, self.config.request_timeout) / 4))
        while True:
            await trio.sleep(period)
            now = trio.current_time()
            for connection in [c for c in self.connections if c.deadline <= now]:
                connection.expire()


async def serve_http(
    handler: Handler,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    config: HttpServerConfig | None = None,
    on_reject: RejectHook | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve HTTP until cancelled.

    Args:
        handler: the application; called once per complete request.
        host: the address to listen on.
        port: the TCP port; 0 picks a free one.
        config: size and time limits.
        on_reject: called with the status code of every request the server rejects itself.
        task_status: receives the bound port when the server is listening (``nursery.start``).

    Raises:
        OSError: when the address cannot be bound.
    """
    server = _Server(handler, config or HttpServerConfig(), on_reject)
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    logger.info("HTTP listening on %s:%d", host, bound)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.sweep)
        for listener in listeners:
            nursery.start_soon(_accept_loop, listener, server, nursery)
        task_status.started(bound)


async def _accept_loop(
    listener: trio.SocketListener, server: _Server, nursery: trio.Nursery
) -> None:
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                # EMFILE and friends: back off instead of spinning, keep the server alive.
                logger.warning("accept failed: %s", exc)
                await trio.sleep(0.1)
                continue
            nursery.start_soon(server.handle_stream, stream)
