"""A small, strict HTTP/1.1 server on Trio for the examples, parsing with httptools (llhttp).

Theory of operation: one task per connection reads bytes and feeds them to a
:class:`RequestParser`, which hands them to llhttp (the parser of Node.js and uvicorn, through
MagicStack's ``httptools`` binding) in its strict mode: llhttp parses request lines, header
fields, Content-Length and chunked bodies, and rejects malformed ones (bare LF, obsolete line
folding, control characters, duplicate or non-numeric Content-Length, Content-Length beside
Transfer-Encoding, bad chunk framing). Our callbacks only collect the pieces and enforce this
server's own limits and policies: head bytes and field count (431), body bytes (413, as soon as
the body passes the limit), one Host for HTTP/1.1, versions 1.0 and 1.1 only (505), no transfer
coding other than chunked (501), ``Expect: 100-continue`` only (417; the 100 is sent before the
body is read). Complete requests are answered in order, so pipelined requests work; a malformed
request after good ones is answered with 400 once those are answered. Every error the server
answers itself closes the connection (a client that sent a bad request may be out of step), and
malformed input never affects other connections. A handler exception becomes a 500 and is
logged. Cancelling the task that runs :func:`serve_http` closes every connection and the
listeners.

Cost: a KV node under load spent over half its CPU in h11's general event machinery, which
this server used first; llhttp is C, and per request we pay a handful of callbacks, one read and
one write (plain non-blocking system calls). Timeouts are deadlines that one sweeper task
enforces instead of cancel scopes per request, and response heads are built once per distinct
head and reused.
"""

from __future__ import annotations

import json
import logging
import os
import re
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, NamedTuple

import attrs
import httptools
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
        max_header_bytes: larger request heads (request line and headers) are answered with 431.
        idle_timeout: seconds a keep-alive connection may sit idle before it is closed.
        request_timeout: seconds to receive a complete request once it has started.
    """

    max_body_bytes: int = 1 << 20
    max_header_bytes: int = 16 * 1024
    idle_timeout: float = 60.0
    request_timeout: float = 30.0


class _Reject(Exception):
    """The server answers ``status`` itself and closes the connection."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


#: connection phases, for the timeout sweeper
_IDLE = 0  # waiting for (the rest of) a request head: idle_timeout, then close silently
_BODY = 1  # reading a request body: request_timeout, then 408
_BUSY = 2  # in the handler or answering: no HTTP-level limit (the handler has its own)
_SENDING = 3  # waiting for room in a full socket buffer: request_timeout, then close
#: answered requests in a row without waiting for the client before yielding to other tasks
_ANSWERS_PER_TURN = 16

_NO_DEADLINE = float("inf")
#: distinct response heads kept ready-made (a KV node answers a handful of distinct ones)
_HEAD_CACHE_SIZE = 256
_MAX_HEADERS = 100
_HTTP_VERSIONS = ("1.0", "1.1")


class _Parsed(NamedTuple):
    """A complete request as the parser hands it over; a tuple, cheap to build."""

    request: Request | None  # None: the request target is unusable (answered with 400)
    keep_alive: bool


class RequestParser:
    """Turns the bytes of one connection into complete requests, with llhttp doing the parsing.

    Theory of operation: ``httptools.HttpRequestParser`` (llhttp, strict mode) parses the request
    line, the header fields and the body framing (Content-Length or chunked) and calls back on
    this object; the callbacks only collect the pieces, enforce this server's limits and refuse
    what the server does not support. A callback refuses by raising :class:`_Reject`, which stops
    llhttp; :meth:`feed` re-raises it (llhttp wraps it in ``HttpParserCallbackError``). Completed
    requests wait in :attr:`ready`, in order: one read may complete several pipelined requests,
    and an error found later in the same bytes is raised only after the earlier requests are in
    :attr:`ready` (the connection answers those first).

    The head limit counts what the callbacks see (target, names, values, a few bytes per line)
    and, since llhttp does not buffer but httptools joins a field value split across reads, every
    read that completes neither a head nor any body bytes: a client dripping an endless header
    line is refused after ``max_header_bytes`` plus one read.
    """

    __slots__ = (
        "_body",
        "_body_size",
        "_drip",
        "_expect",
        "_head_size",
        "_headers",
        "_hosts",
        "_keep_alive",
        "_max_body",
        "_max_head",
        "_parser",
        "_te",
        "_url",
        "expect_continue",
        "in_body",
        "in_message",
        "ready",
        "upgraded",
    )

    def __init__(self, config: HttpServerConfig) -> None:
        self._max_head = config.max_header_bytes
        self._max_body = config.max_body_bytes
        self._parser = httptools.HttpRequestParser(self)
        #: complete requests not yet taken by the connection
        self.ready: deque[_Parsed] = deque()
        #: the current request has started (an end of input now cuts it)
        self.in_message = False
        #: the current request's head is complete, its body is not
        self.in_body = False
        #: the current request asks for ``100 Continue`` and none has been sent
        self.expect_continue = False
        #: an Upgrade or CONNECT request ended the HTTP part of the connection
        self.upgraded = False
        self._drip = 0
        self._reset()

    def _reset(self) -> None:
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._body_size = 0
        self._head_size = 0
        self._hosts = 0
        self._te: bytes | None = None
        self._expect = False
        self._keep_alive = False

    def feed(self, data: bytes | bytearray) -> None:
        """Parse the next bytes of the connection; complete requests go to :attr:`ready`.

        Raises:
            _Reject: the bytes are malformed (400) or beyond a limit (413, 431), or the request
                uses something this server does not support (417, 501, 505). The parser is
                unusable afterwards: the connection answers and closes.
        """
        began_inside = self.in_message
        body_before = self._body_size
        ready_before = len(self.ready)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Reject):
                raise cause from None
            raise  # a bug in a callback: the connection logs it and closes
        except httptools.HttpParserUpgrade:
            # The bytes after the upgrade request belong to another protocol; that request is in
            # ``ready`` and is answered (without switching), then the connection closes.
            self.upgraded = True
            return
        except httptools.HttpParserError as exc:
            raise _Reject(400, f"bad request: {exc}") from None
        if (
            began_inside
            and self.in_message
            and len(self.ready) == ready_before
            and self._body_size == body_before
        ):
            self._drip += len(data)
            if self._drip > self._max_head:
                raise _Reject(431, "request header fields too large")

    # -- llhttp callbacks (called by feed_data) ----------------------------------------------------
    def on_message_begin(self) -> None:
        self.in_message = True
        self._drip = 0

    def on_url(self, url: bytes) -> None:
        self._url += url  # llhttp may deliver the target in pieces (split reads)
        self._head_size += len(url)
        if self._head_size > self._max_head:
            raise _Reject(431, "request header fields too large")

    def on_header(self, name: bytes, value: bytes) -> None:
        # Also called for the trailer fields of a chunked body: they count against the head limit
        # and are otherwise ignored.
        self._head_size += len(name) + len(value) + 4
        if self._head_size > self._max_head:
            raise _Reject(431, "request header fields too large")
        if self.in_body:
            return
        headers = self._headers
        if len(headers) >= _MAX_HEADERS:
            raise _Reject(431, f"more than {_MAX_HEADERS} header fields")
        name = name.lower()
        # llhttp strips the whitespace before a value but not after it (RFC 9112 5: not part of
        # the value).
        value = value.rstrip(b" \t")
        headers.append((name, value))
        if name == b"host":
            self._hosts += 1
        elif name == b"transfer-encoding":
            self._te = value if self._te is None else self._te + b"," + value
        elif name == b"expect":
            if value.lower() != b"100-continue":
                raise _Reject(417, "only Expect: 100-continue is supported")
            self._expect = True

    def on_headers_complete(self) -> None:
        parser = self._parser
        version = parser.get_http_version()
        if version not in _HTTP_VERSIONS:
            raise _Reject(505, "HTTP version not supported (use HTTP/1.1)")
        http11 = version == "1.1"
        if http11 and self._hosts != 1:
            raise _Reject(400, "bad request: HTTP/1.1 needs exactly one Host header")
        if self._te is not None:
            # llhttp has checked the framing (chunked last, no Content-Length beside it); a coding
            # before ``chunked`` would hand us a body we cannot decode.
            if not http11:
                raise _Reject(400, "bad request: Transfer-Encoding in an HTTP/1.0 request")
            if self._te.lower() != b"chunked":
                raise _Reject(501, "only the chunked transfer coding is supported")
        # HTTP/1.0 clients get one request per connection; an upgrade ends HTTP on it.
        self._keep_alive = http11 and parser.should_keep_alive() and not parser.should_upgrade()
        if self._expect:
            # Refuse a body announced as too large before inviting the client to send it.
            for hname, hvalue in self._headers:
                if hname == b"content-length" and hvalue.isdigit() and int(hvalue) > self._max_body:
                    raise _Reject(413, f"request body exceeds {self._max_body} bytes")
        self.expect_continue = self._expect and http11
        self.in_body = True

    def on_body(self, body: bytes) -> None:
        self.expect_continue = False  # the client sends the body without waiting
        self._body_size += len(body)
        if self._body_size > self._max_body:
            raise _Reject(413, f"request body exceeds {self._max_body} bytes")
        self._body.append(body)

    def on_message_complete(self) -> None:
        parts = self._body
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        method = self._parser.get_method().decode("ascii")
        request = _to_request(method, self._url, tuple(self._headers), body)
        self.ready.append(_Parsed(request, self._keep_alive))
        self.in_message = self.in_body = self.expect_continue = False
        self._reset()


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _check_header(name: str, value: str) -> None:
    if re.search(r"[\x00-\x1f\x7f]", name + value) or not name or ":" in name or " " in name:
        raise ValueError(f"invalid response header {name!r}: {value!r}")


class _Connection:
    """One HTTP connection over a Trio stream.

    Timeouts are not cancel scopes per request (two scopes per request were a measurable share of
    a busy node's CPU): each connection records the deadline of its current phase, and one
    sweeper task per server cancels connections past theirs (:meth:`_Server.sweep`).
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        handler: Handler,
        config: HttpServerConfig,
        on_reject: RejectHook | None = None,
        heads: dict[tuple[Any, ...], bytes] | None = None,
    ) -> None:
        self.stream = stream
        self.handler = handler
        self.config = config
        self.on_reject = on_reject
        self.parser = RequestParser(config)
        self.eof = False
        self.scope = trio.CancelScope()
        self.phase = _BUSY  # the request loop starts the first idle phase
        self.deadline = _NO_DEADLINE
        self.expired = -1  # the phase whose deadline passed, once the sweeper cancelled us
        self._heads = heads if heads is not None else {}
        # Socket streams are read and written with plain non-blocking system calls: Trio's
        # stream methods yield to the scheduler even when the call completes at once, and those
        # two extra task switches per request showed in a busy node's profile. Only this task
        # touches the socket, so nothing else needs Trio's conflict detection.
        self._fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else -1

    def expire(self) -> None:
        """Called by the sweeper when the current phase's deadline has passed."""
        if self.expired < 0:
            self.expired = self.phase
            self.scope.cancel()

    # -- reading ---------------------------------------------------------------------------------
    async def _receive(self) -> bytes | bytearray:
        """The next bytes from the client; empty once it has closed its side."""
        if self.eof:
            return b""
        fd = self._fd
        if fd < 0:
            data = await self.stream.receive_some(_READ_SIZE)
        else:
            waited = False
            while True:
                try:
                    data = os.read(fd, _READ_SIZE)
                    break
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(fd)
                    waited = True
                except OSError as exc:
                    raise trio.BrokenResourceError(f"socket read failed: {exc}") from exc
            if not waited:
                # Data was already there (a pipelining client): still let other tasks run, so
                # one connection cannot monopolise the loop, and let cancellation in.
                await trio.lowlevel.checkpoint()
        if not data:
            self.eof = True
        return data

    # -- writing ---------------------------------------------------------------------------------
    def _head_bytes(self, response: Response, close: bool) -> bytes:
        """The status line and headers, built (and checked) once per distinct head."""
        key = (response.status, len(response.body), response.content_type, response.headers, close)
        head = self._heads.get(key)
        if head is None:
            if not 100 <= response.status <= 599:
                raise ValueError(f"invalid status code {response.status}")
            _check_header("content-type", response.content_type)
            lines = [
                f"HTTP/1.1 {response.status} {_reason(response.status)}",
                f"server: {_SERVER_NAME.decode()}",
            ]
            if response.status >= 200 and response.status != 204:
                # RFC 9110 8.6: no Content-Length in 1xx and 204 responses
                lines.append(f"content-length: {len(response.body)}")
            elif response.body:
                raise ValueError(f"a {response.status} response cannot have a body")
            if response.body:
                lines.append(f"content-type: {response.content_type}")
            for name, value in response.headers:
                _check_header(name, value)
                if name.lower() == "connection" and value.lower() == "close":
                    close = False  # already there
                lines.append(f"{name}: {value}")
            if close:
                lines.append("connection: close")
            head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
            if len(self._heads) >= _HEAD_CACHE_SIZE:
                self._heads.clear()
            self._heads[key] = head
        return head

    async def _respond(self, response: Response, *, head_only: bool, close: bool) -> None:
        data = self._head_bytes(response, close)
        if response.body and not head_only:  # a response to HEAD has headers only
            # One write per response: a second write would cost a syscall and, with Nagle's
            # algorithm, a delayed-ACK wait on the client.
            data += response.body
        await self._send(data)

    async def _send(self, data: bytes) -> None:
        fd = self._fd
        if fd >= 0:
            try:
                sent = os.write(fd, data)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                raise trio.BrokenResourceError(f"socket write failed: {exc}") from exc
            if sent == len(data):
                return
            data = data[sent:]
        # A full socket buffer (a large response, a slow reader): let Trio wait for room, but
        # not forever: a client that stops reading must not hold its connection.
        phase, deadline = self.phase, self.deadline
        self.phase = _SENDING
        self.deadline = trio.current_time() + self.config.request_timeout
        await self.stream.send_all(data)
        self.phase, self.deadline = phase, deadline

    async def _fail(self, status: int, text: str) -> None:
        """Answer an error (unless a response is already under way) and close gracefully."""
        if self.on_reject is not None:
            self.on_reject(status)
        response = text_response(status, text)
        # Outside the sweeper's scope now: bound the answer and the drain ourselves.
        with trio.move_on_after(self.config.request_timeout):
            try:
                await self._respond(response, head_only=False, close=True)
                await self._linger()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def _linger(self) -> None:
        """Close gracefully although the client may still be sending.

        Closing a socket with unread input makes the kernel send a reset, and the client can then
        lose the error response it has not read yet. So: half-close, then drain (bounded in time
        and bytes) until the client closes its side.
        """
        if isinstance(self.stream, trio.SocketStream):
            await self.stream.send_eof()
        if self.eof:
            return
        budget = 16 * self.config.max_body_bytes
        with trio.move_on_after(2.0):
            while budget > 0:
                data = await self.stream.receive_some(_READ_SIZE)
                if not data:
                    return
                budget -= len(data)

    # -- the request loop --------------------------------------------------------------------------
    async def run(self) -> None:
        failure: _Reject | None = None
        with self.scope:
            try:
                await self._serve()
            except _Reject as exc:
                failure = exc
        if failure is None and self.expired == _BODY:
            failure = _Reject(408, "request timeout")
        if failure is not None:
            await self._fail(failure.status, failure.text)

    async def _serve(self) -> None:
        config = self.config
        parser = self.parser
        ready = parser.ready
        failure: _Reject | None = None
        answered = 0
        while True:
            if ready:
                if self.scope.cancel_called:
                    # The sweeper expired this connection just as the request arrived: do not
                    # start it (its handler would be cancelled half-way, a write perhaps applied
                    # without an answer); the client sees the connection close, nothing done.
                    return
                parsed = ready.popleft()
                await self._answer(parsed)
                if not parsed.keep_alive:
                    return
                answered += 1
                if answered % _ANSWERS_PER_TURN == 0:
                    # Pipelined requests that complete at once (local reads, errors) must not
                    # keep the event loop, which also runs Raft's timers, to themselves.
                    await trio.lowlevel.checkpoint()
                continue
            # Every request that arrived before a malformed one has been answered.
            if failure is not None:
                raise failure
            if parser.upgraded:
                return
            # A keep-alive connection may idle; once a request's head is in, its body must
            # follow promptly.
            if parser.in_body:
                if self.phase != _BODY:
                    self.phase = _BODY
                    self.deadline = trio.current_time() + config.request_timeout
                if parser.expect_continue:
                    parser.expect_continue = False
                    await self._send(b"HTTP/1.1 100 Continue\r\n\r\n")
            elif self.phase != _IDLE:
                self.phase = _IDLE
                self.deadline = trio.current_time() + config.idle_timeout
            data = await self._receive()
            if not data:
                if parser.in_message:
                    raise _Reject(400, "bad request: connection closed inside a request")
                return
            try:
                parser.feed(data)
            except _Reject as exc:
                failure = exc

    async def _answer(self, parsed: _Parsed) -> None:
        request = parsed.request
        close = not parsed.keep_alive
        if request is None:
            raise _Reject(400, "bad request: malformed request target")
        self.phase = _BUSY
        self.deadline = _NO_DEADLINE
        try:
            response = await self.handler(request)
        except Exception:
            logger.exception("handler failed for %s %s", request.method, request.path)
            response = text_response(500, "internal server error")
        try:
            self._head_bytes(response, close)
        except ValueError:
            logger.exception("handler answered an invalid response to %s", request.path)
            response = text_response(500, "internal server error")
        await self._respond(response, head_only=request.method == "HEAD", close=close)


def _to_request(
    method: str, url: bytes, headers: tuple[tuple[bytes, bytes], ...], body: bytes
) -> Request | None:
    """The request, or None when its target is unusable (not origin- or absolute-form, or not
    valid percent-encoded UTF-8)."""
    try:
        target = url.decode("ascii")
    except UnicodeDecodeError:  # pragma: no cover - llhttp admits ASCII targets only
        return None
    if target.startswith(("http://", "https://")):
        # absolute-form (RFC 9112 3.2.2): servers must accept it; only the path matters here.
        try:
            parts = urllib.parse.urlsplit(target)
        except ValueError:  # e.g. an unbalanced "[" in the host
            return None
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
        self.heads: dict[tuple[Any, ...], bytes] = {}

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
