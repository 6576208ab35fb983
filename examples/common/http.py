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


class _Connection:
    """One HTTP connection: an h11 state machine over a Trio stream."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        handler: Handler,
        config: HttpServerConfig,
        on_reject: RejectHook | None = None,
    ) -> None:
        self.stream = stream
        self.handler = handler
        self.config = config
        self.on_reject = on_reject
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=config.max_header_bytes)

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
                return b"".join(chunks)
            elif isinstance(event, h11.ConnectionClosed):
                raise h11.RemoteProtocolError("connection closed mid-body")
            else:  # pragma: no cover - h11 guarantees only Data/EndOfMessage here
                raise h11.RemoteProtocolError(f"unexpected event {event!r}")

    async def _respond(self, response: Response, *, head: bool = False) -> None:
        headers = [
            ("server", _SERVER_NAME.decode()),
            ("content-length", str(len(response.body))),
        ]
        if response.body:
            headers.append(("content-type", response.content_type))
        headers.extend(response.headers)
        await self._send(h11.Response(status_code=response.status, headers=headers))
        if response.body and not head:  # a response to HEAD has headers only
            await self._send(h11.Data(data=response.body))
        await self._send(h11.EndOfMessage())

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
        while True:
            # A keep-alive connection may idle; once a request starts it must finish promptly.
            with trio.move_on_after(self.config.idle_timeout) as idle:
                try:
                    event = await self._next_event()
                except h11.RemoteProtocolError as exc:
                    await self._fail(exc.error_status_hint, f"bad request: {exc}")
                    return
            if idle.cancelled_caught:
                return
            if isinstance(event, h11.ConnectionClosed):
                return
            if not isinstance(event, h11.Request):  # pragma: no cover - h11 state machine
                await self._fail(400, "bad request")
                return
            head_size = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
            if head_size > self.config.max_header_bytes:
                # h11 only bounds heads that arrive in pieces; bound complete ones too.
                await self._fail(431, "request header fields too large")
                return
            with trio.move_on_after(self.config.request_timeout) as slow:
                try:
                    body = await self._read_body(event)
                except _BodyTooLarge:
                    await self._fail(
                        413, f"request body exceeds {self.config.max_body_bytes} bytes"
                    )
                    return
                except h11.RemoteProtocolError as exc:
                    await self._fail(exc.error_status_hint, f"bad request: {exc}")
                    return
            if slow.cancelled_caught:
                await self._fail(408, "request timeout")
                return
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
        path = urllib.parse.unquote(raw_path, errors="strict")
        query = urllib.parse.parse_qs(raw_query, keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        return None
    headers = tuple((bytes(k), bytes(v)) for k, v in event.headers)
    return Request(method=method, path=path, query=query, headers=headers, body=body)


async def _handle_stream(
    stream: trio.abc.Stream,
    handler: Handler,
    config: HttpServerConfig,
    on_reject: RejectHook | None,
) -> None:
    connection = _Connection(stream, handler, config, on_reject)
    try:
        async with stream:
            await connection.run()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the peer went away; nothing to answer
    except Exception:
        logger.exception("HTTP connection failed")


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
    cfg = config or HttpServerConfig()
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    logger.info("HTTP listening on %s:%d", host, bound)
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(_accept_loop, listener, handler, cfg, on_reject, nursery)
        task_status.started(bound)


async def _accept_loop(
    listener: trio.SocketListener,
    handler: Handler,
    config: HttpServerConfig,
    on_reject: RejectHook | None,
    nursery: trio.Nursery,
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
            nursery.start_soon(_handle_stream, stream, handler, config, on_reject)
