"""A small, strict HTTP/1.1 server on Trio for the examples.

Theory of operation: one task per connection reads bytes into a buffer and serves the requests in
it one after the other (so pipelined requests are answered in order). A request head is complete
at the first empty line; it is bounded by ``max_header_bytes`` (431 beyond) and parsed strictly
(RFC 9112): request line ``METHOD SP target SP HTTP/1.x``, ``name: value`` header lines with token
names, CRLF line ends, no obsolete line folding, no control characters; anything else is a 400 and
the connection is closed, as is every error the server answers itself (a client that sent a bad
request may be out of step, and keeping the connection could desynchronise it). A body is framed
by ``Content-Length`` (one value, digits only) or ``Transfer-Encoding: chunked``; a request with
both, or with another transfer coding, is refused (400 / 501); a body over ``max_body_bytes``
becomes a 413 without reading the rest. ``Expect: 100-continue`` is answered before the body is
read. A handler exception becomes a 500 and is logged; malformed input closes one connection and
never the server. Cancelling the task that runs :func:`serve_http` closes every connection and the
listeners.

Why not h11 (which this server used before): a busy KV node spent over half its CPU in the HTTP
layer, most of it in h11's general event machinery; a request here costs a buffer search, two
small regular expressions per line and one write. Timeouts are deadlines that one sweeper task
enforces instead of cancel scopes per request, and response heads are built once per distinct
head and reused.
"""

from __future__ import annotations

import json
import logging
import os
import re
import urllib.parse
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, NamedTuple

import attrs
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


class _PeerGone(Exception):
    """The client closed its side before a complete request arrived."""


#: connection phases, for the timeout sweeper
_IDLE = 0  # waiting for (the rest of) a request head: idle_timeout, then close silently
_BODY = 1  # reading a request body: request_timeout, then 408
_BUSY = 2  # in the handler or answering: no HTTP-level limit (the handler has its own)

_NO_DEADLINE = float("inf")
#: distinct response heads kept ready-made (a KV node answers a handful of distinct ones)
_HEAD_CACHE_SIZE = 256
_MAX_HEADERS = 100
#: a chunk-size line (with extensions) longer than this is refused
_MAX_CHUNK_LINE = 1024

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])")
_HEADER_LINE = re.compile(rb"(" + _TOKEN + rb"):[ \t]*(.*?)[ \t]*")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})[ \t]*(;.*)?")
_DIGITS = re.compile(rb"[0-9]{1,18}")


class _Head(NamedTuple):
    """A parsed request head (the part before the body); a tuple, cheap to build."""

    method: str
    target: str
    headers: tuple[tuple[bytes, bytes], ...]
    content_length: int | None  # None: chunked, or no body at all when ``chunked`` is False
    chunked: bool
    keep_alive: bool
    expect_continue: bool


def parse_head(head: bytes) -> _Head:
    """Parse a request head: the bytes before the empty line that ends it, without the final
    CRLF CRLF.

    Raises:
        _Reject: 400 for anything malformed, 501 for an unsupported transfer coding, 505 for an
            HTTP version other than 1.0 and 1.1.
    """
    lines = head.split(b"\r\n")
    # RFC 9112 2.2: ignore empty lines before the request line (some clients send a CRLF after
    # a POST body).
    while lines and not lines[0]:
        del lines[0]
    if not lines:
        raise _Reject(400, "bad request: empty request")
    if head.count(b"\n") != head.count(b"\r\n"):
        raise _Reject(400, "bad request: bare LF in the request head")
    m = _REQUEST_LINE.fullmatch(lines[0])
    if m is None:
        raise _Reject(400, "bad request: malformed request line")
    method_b, target_b, major, minor = m.groups()
    if major != b"1" or minor not in (b"0", b"1"):
        raise _Reject(505, "HTTP version not supported (use HTTP/1.1)")
    http11 = minor == b"1"
    if len(lines) - 1 > _MAX_HEADERS:
        raise _Reject(431, f"more than {_MAX_HEADERS} header fields")
    headers: list[tuple[bytes, bytes]] = []
    content_length: bytes | None = None
    transfer_encoding: list[bytes] = []
    connection: list[bytes] = []
    hosts = 0
    expect_continue = False
    for line in lines[1:]:
        hm = _HEADER_LINE.fullmatch(line)
        if hm is None:
            if line[:1] in (b" ", b"\t"):
                raise _Reject(400, "bad request: obsolete line folding in a header")
            raise _Reject(400, "bad request: malformed header line")
        name = hm.group(1).lower()
        value = hm.group(2)
        if _BAD_VALUE.search(value):
            raise _Reject(400, "bad request: control character in a header value")
        headers.append((name, value))
        if name == b"content-length":
            for part in value.split(b","):
                part = part.strip(b" \t")
                if _DIGITS.fullmatch(part) is None:
                    raise _Reject(400, "bad request: invalid Content-Length")
                if content_length is not None and int(part) != int(content_length):
                    raise _Reject(400, "bad request: conflicting Content-Length values")
                content_length = part
        elif name == b"transfer-encoding":
            transfer_encoding.extend(
                c.strip(b" \t").lower() for c in value.split(b",") if c.strip(b" \t")
            )
        elif name == b"connection":
            connection.extend(c.strip(b" \t").lower() for c in value.split(b","))
        elif name == b"host":
            hosts += 1
        elif name == b"expect":
            if value.lower() != b"100-continue":
                raise _Reject(417, "only Expect: 100-continue is supported")
            expect_continue = http11
    if http11 and hosts != 1:
        raise _Reject(400, "bad request: HTTP/1.1 needs exactly one Host header")
    chunked = False
    if transfer_encoding:
        if content_length is not None:
            # Both framings at once is how requests are smuggled past proxies: refuse.
            raise _Reject(400, "bad request: both Transfer-Encoding and Content-Length")
        if not http11:
            raise _Reject(400, "bad request: Transfer-Encoding in an HTTP/1.0 request")
        if transfer_encoding != [b"chunked"]:
            raise _Reject(501, "only the chunked transfer coding is supported")
        chunked = True
    try:
        method = method_b.decode("ascii")
        target = target_b.decode("ascii")
    except UnicodeDecodeError:  # pragma: no cover - the regular expression admits ASCII only
        raise _Reject(400, "bad request: non-ASCII request line") from None
    if http11:
        keep_alive = b"close" not in connection
    else:
        keep_alive = False  # HTTP/1.0 clients get one request per connection
    return _Head(
        method=method.upper(),
        target=target,
        headers=tuple(headers),
        content_length=None if content_length is None else int(content_length),
        chunked=chunked,
        keep_alive=keep_alive,
        expect_continue=expect_continue,
    )


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
        self.buf = bytearray()
        self.eof = False
        self.scope = trio.CancelScope()
        self.phase = _IDLE
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
    async def _fill(self) -> None:
        """Read more bytes into the buffer.

        Raises:
            _PeerGone: the client closed its side.
        """
        if self.eof:
            raise _PeerGone
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
            raise _PeerGone
        self.buf += data

    async def _read_head(self) -> bytes | None:
        """The next request head (without its final CRLF CRLF), or None when the client closed
        the connection between requests."""
        buf = self.buf
        limit = self.config.max_header_bytes
        searched = 0
        while True:
            # RFC 9112 2.2: empty lines before a request line are ignored.
            while buf.startswith(b"\r\n"):
                del buf[:2]
            end = buf.find(b"\r\n\r\n", searched)
            if end >= 0:
                if end > limit:
                    raise _Reject(431, "request header fields too large")
                head = bytes(buf[:end])
                del buf[: end + 4]
                return head
            if len(buf) > limit + 4:
                raise _Reject(431, "request header fields too large")
            if b"\n\n" in buf:
                raise _Reject(400, "bad request: bare LF in the request head")
            searched = max(0, len(buf) - 3)
            try:
                await self._fill()
            except _PeerGone:
                if buf.strip(b"\r\n"):
                    raise _Reject(400, "bad request: connection closed inside a request") from None
                return None

    async def _read_exactly(self, n: int) -> bytes:
        buf = self.buf
        while len(buf) < n:
            try:
                await self._fill()
            except _PeerGone:
                raise _Reject(400, "bad request: connection closed inside the body") from None
        data = bytes(buf[:n])
        del buf[:n]
        return data

    async def _read_line(self, limit: int) -> bytes:
        buf = self.buf
        searched = 0
        while True:
            end = buf.find(b"\r\n", searched)
            if end >= 0:
                if end > limit:
                    break
                line = bytes(buf[:end])
                del buf[: end + 2]
                return line
            if len(buf) > limit:
                break
            searched = max(0, len(buf) - 1)
            try:
                await self._fill()
            except _PeerGone:
                raise _Reject(400, "bad request: connection closed inside the body") from None
        raise _Reject(400, "bad request: chunk framing line too long")

    async def _read_chunked(self) -> bytes:
        limit = self.config.max_body_bytes
        parts: list[bytes] = []
        size = 0
        while True:
            m = _CHUNK_SIZE.fullmatch(await self._read_line(_MAX_CHUNK_LINE))
            if m is None:
                raise _Reject(400, "bad request: malformed chunk size")
            n = int(m.group(1), 16)
            if n == 0:
                break
            size += n
            if size > limit:
                raise _Reject(413, f"request body exceeds {limit} bytes")
            parts.append(await self._read_exactly(n))
            if await self._read_exactly(2) != b"\r\n":
                raise _Reject(400, "bad request: chunk data not followed by CRLF")
        # Trailer fields are read and ignored; their total size counts against the head limit.
        budget = self.config.max_header_bytes
        while True:
            line = await self._read_line(budget)
            if not line:
                return b"".join(parts)
            budget -= len(line) + 2
            if budget < 0 or _HEADER_LINE.fullmatch(line) is None:
                raise _Reject(400, "bad request: malformed or oversized trailer")

    async def _read_body(self, head: _Head) -> bytes:
        if head.expect_continue and not self.buf:
            await self._send(b"HTTP/1.1 100 Continue\r\n\r\n")
        if head.chunked:
            return await self._read_chunked()
        n = head.content_length
        if not n:
            return b""
        if n > self.config.max_body_bytes:
            raise _Reject(413, f"request body exceeds {self.config.max_body_bytes} bytes")
        buf = self.buf
        if len(buf) >= n:  # the common case: the body came with the head
            body = bytes(buf[:n])
            del buf[:n]
            return body
        return await self._read_exactly(n)

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
                f"content-length: {len(response.body)}",
            ]
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
        # A full socket buffer (a large response, a slow reader): let Trio wait for room.
        await self.stream.send_all(data)

    async def _fail(self, status: int, text: str) -> None:
        """Answer an error (unless a response is already under way) and close gracefully."""
        if self.on_reject is not None:
            self.on_reject(status)
        response = text_response(status, text)
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
        while True:
            # A keep-alive connection may idle; once a request starts it must finish promptly.
            self.phase = _IDLE
            self.deadline = trio.current_time() + config.idle_timeout
            raw = await self._read_head()
            if raw is None:
                return
            self.phase = _BODY
            self.deadline = trio.current_time() + config.request_timeout
            head = parse_head(raw)
            body = await self._read_body(head)
            self.phase = _BUSY
            self.deadline = _NO_DEADLINE
            request = _to_request(head, body)
            if request is None:
                raise _Reject(400, "bad request: malformed request target")
            try:
                response = await self.handler(request)
            except Exception:
                logger.exception("handler failed for %s %s", request.method, request.path)
                response = text_response(500, "internal server error")
            try:
                self._head_bytes(response, not head.keep_alive)
            except ValueError:
                logger.exception("handler answered an invalid response to %s", request.path)
                response = text_response(500, "internal server error")
            await self._respond(
                response, head_only=request.method == "HEAD", close=not head.keep_alive
            )
            if not head.keep_alive:
                return


def _to_request(head: _Head, body: bytes) -> Request | None:
    target = head.target
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
    return Request(method=head.method, path=path, query=query, headers=head.headers, body=body)


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
