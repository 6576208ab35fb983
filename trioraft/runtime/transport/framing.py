"""Length-prefixed frames over a Trio byte stream.

Wire format: a 4-byte big-endian unsigned length, then that many bytes of CBOR (one
:data:`~trioraft.runtime.transport.frames.Frame`). A length of zero or above the configured
maximum, bytes that are not a valid frame, or a stream that ends inside a frame raise
:class:`FrameError`; the owner of the connection closes it (and only it).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
from collections.abc import Callable, Sequence
from typing import Final

import attrs
import trio

from trioraft.codec import DecodeError
from trioraft.runtime.transport.base import TransportError
from trioraft.runtime.transport.frames import (
    CHUNK_HEAD_MAX,
    Frame,
    decode_frame,
    encode_chunk_head,
    encode_frame,
    parse_chunk_head,
)

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "ConnectionClosed",
    "FrameError",
    "FramedStream",
    "ReceivedChunk",
]

#: Large enough for a 1 MiB snapshot chunk or a 1 MiB AppendRequest with room to spare.
DEFAULT_MAX_FRAME_SIZE: Final = 16 << 20

_HEADER = struct.Struct(">I")
_READ_SIZE: Final = 64 << 10
#: Read size while waiting for a chunk's head: enough for the head and a little payload, so
#: that most of the payload is read straight into its own buffer instead of through ``_buf``.
_CHUNK_PEEK: Final = 4 << 10
#: ``os.readv`` (POSIX) reads a chunk's payload from a TCP socket straight into its buffer.
_HAVE_READV: Final = hasattr(os, "readv")
#: ``os.sendfile`` (Linux, BSD, macOS) sends a chunk's payload from its file to a TCP socket.
_HAVE_SENDFILE: Final = hasattr(os, "sendfile")
#: ``socket.sendmsg`` (POSIX) writes a frame's header and payload with one gathering write.
_HAVE_SENDMSG: Final = hasattr(socket.socket, "sendmsg")


class FrameError(TransportError):
    """The peer sent something that is not a valid frame (or a frame too large to send)."""


class ConnectionClosed(TransportError):
    """The peer closed the connection cleanly, between two frames."""


@attrs.frozen(eq=False)
class ReceivedChunk:
    """A ``SnapshotChunk`` frame received by :meth:`FramedStream.receive_chunk`.

    Attributes:
        file_index, offset, crc32c: as in the frame (the CRC is *not* checked yet).
        data: the payload; a view of ``buffer`` (or of a ``bytes`` object).
        buffer: the caller's buffer ``data`` was read into, None when the frame came through
            the generic decoder (then ``data`` views the frame's own ``bytes``).
    """

    file_index: int
    offset: int
    crc32c: int
    data: memoryview
    buffer: bytearray | None = None


async def _acquire(lock: trio.Lock) -> None:
    """Take ``lock``: uncontended (the usual case, one sender per connection) without the
    extra scheduling round trip of ``async with``; the send that follows is the checkpoint."""
    try:
        lock.acquire_nowait()
    except trio.WouldBlock:
        await lock.acquire()


class FramedStream:
    """Sends and receives frames on one stream.

    Any number of tasks may send concurrently (each frame is written whole); one task at a time
    may receive.

    Args:
        stream: a connected Trio stream (TCP, TLS or in-memory).
        max_frame_size: the largest frame body accepted or sent, in bytes.
    """

    def __init__(self, stream: trio.abc.Stream, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE):
        if max_frame_size <= 0:
            raise ValueError("max_frame_size must be positive")
        self.stream = stream
        self.max_frame_size = max_frame_size
        self._buf = bytearray()
        self._send_lock = trio.Lock()
        #: why the byte stream can no longer be cut into frames (a read into a caller's buffer
        #: was interrupted midway), or ""
        self._desync = ""
        #: why nothing more may be sent (a write was interrupted midway, leaving part of a
        #: frame on the connection: whatever followed would be read as the rest of it), or ""
        self._send_broken = ""
        #: whether bytes of the frame being sent may have gone out (see :meth:`_sent_some`)
        self._wrote = False

    @property
    def send_broken(self) -> bool:
        """Whether an interrupted write closed this stream (every later send raises
        ``trio.ClosedResourceError``)."""
        return bool(self._send_broken)

    async def _interrupted(self, exc: BaseException) -> None:
        """A write ended early with ``exc``. When nothing of the frame went out (cancelled
        before the first byte, the usual case) the stream is as good as before; otherwise
        part of a frame may be on the connection, so it can never carry a frame again."""
        if self._wrote:
            await self._break_send(exc)

    async def _break_send(self, exc: BaseException) -> None:
        """Marks the stream as unable to send, after ``exc`` cut a frame short.

        When the write itself failed (the connection broke or was closed) the peer sees the
        end anyway, and the stream stays open for reading: what the peer said last (e.g. why
        it hung up) may still be waiting there. Otherwise (cancelled, say) the connection is
        still up and the peer would wait for the rest of the frame, so it is closed
        forcefully (no TLS goodbye, no waiting, so that this works while cancelled); the
        reader and the peer see it end."""
        if not self._send_broken:
            self._send_broken = f"an earlier write was interrupted ({type(exc).__name__})"
        if isinstance(exc, (trio.BrokenResourceError, trio.ClosedResourceError)):
            return
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await trio.aclose_forcefully(self.stream)

    def _check_send(self) -> None:
        if self._send_broken:
            raise trio.ClosedResourceError(self._send_broken)

    async def _write(self, parts: list[bytes | memoryview]) -> None:
        """Writes ``parts`` in order; the caller holds the send lock and set ``_wrote`` to
        False. Plain TCP is written here (see :meth:`_write_socket`); on other streams
        ``send_all`` is all there is, and unless the stream says it writes everything or
        nothing (``send_all_is_atomic``, the in-memory transport's pipes) an interrupted one
        may have written part of its data (trio's TLS stream even breaks itself then)."""
        stream = self.stream
        if type(stream) is trio.SocketStream:
            await self._write_socket(stream, parts)
            return
        self._wrote = getattr(stream, "send_all_is_atomic", False) is not True
        await stream.send_all(parts[0] if len(parts) == 1 else b"".join(parts))

    async def _write_socket(
        self, stream: trio.SocketStream, parts: list[bytes | memoryview]
    ) -> None:
        """Writes ``parts`` in order on ``stream``'s socket, with gathering writes
        (``sendmsg``) where there is one, so a large payload goes out without first being
        joined to its header; sets ``_wrote`` once a byte went out. (Trio's ``send_all`` does
        the same loop but cannot say, when it is interrupted, whether it wrote anything.)"""
        sock = stream.socket
        views = [memoryview(p) for p in parts]
        try:
            while views:
                if len(views) == 1 or not _HAVE_SENDMSG:
                    sent = await sock.send(views[0])
                else:
                    sent = await sock.sendmsg(views)
                if sent:
                    self._wrote = True
                while views and sent >= len(views[0]):
                    sent -= len(views[0])
                    views.pop(0)
                if views and sent:
                    views[0] = views[0][sent:]
        except OSError as exc:
            if exc.errno == errno.EBADF:
                raise trio.ClosedResourceError("the connection was closed") from exc
            raise trio.BrokenResourceError(f"sending failed: {exc!r}") from exc

    def pack(self, frame: Frame) -> bytes:
        """Encodes ``frame`` with its length prefix. Raises :class:`FrameError` when too large."""
        body = encode_frame(frame)
        if len(body) > self.max_frame_size:
            raise FrameError(f"frame of {len(body)} bytes exceeds the limit {self.max_frame_size}")
        return _HEADER.pack(len(body)) + body

    async def send(self, frame: Frame) -> None:
        """Writes one frame. Raises :class:`FrameError` (too large, nothing written),
        ``trio.BrokenResourceError`` or ``trio.ClosedResourceError``."""
        await self.send_packed([self.pack(frame)])

    async def send_packed(self, packed: Sequence[bytes]) -> None:
        """Writes already :meth:`pack` ed frames with as few stream writes as possible."""
        data = packed[0] if len(packed) == 1 else b"".join(packed)
        lock = self._send_lock
        await _acquire(lock)
        try:
            if self._send_broken:  # inline: this is every Raft batch's path
                raise trio.ClosedResourceError(self._send_broken)
            self._wrote = False
            try:
                await self._write([data])
            except BaseException as exc:
                await self._interrupted(exc)
                raise
        finally:
            lock.release()

    async def receive(self) -> Frame:
        """Reads one frame.

        Raises:
            ConnectionClosed: clean end of stream before a new frame.
            FrameError: bad length, truncated frame or undecodable body.
            trio.BrokenResourceError: the connection broke.
        """
        # Header and body are sliced out of one buffer: when the previous read brought several
        # frames (the usual case under load) this returns without touching the socket.
        length = await self._receive_length(_READ_SIZE)
        return await self._receive_body(length)

    async def _receive_length(self, read_size: int) -> int:
        """Reads up to a frame's length prefix and checks it."""
        if self._desync:
            raise FrameError(self._desync)
        buf = self._buf
        if len(buf) < _HEADER.size:
            await self._fill(_HEADER.size, start=True, read_size=read_size)
        (length,) = _HEADER.unpack_from(buf)
        if length == 0 or length > self.max_frame_size:
            raise FrameError(f"frame length {length} outside 1..{self.max_frame_size}")
        return int(length)

    async def _receive_body(self, length: int) -> Frame:
        """Reads and decodes the body of the frame whose length prefix starts ``_buf``."""
        buf = self._buf
        end = _HEADER.size + length
        if len(buf) < end:
            await self._fill(end, start=False)
        # Decoded straight from a view of the buffer: copying the body out first cost two
        # copies, and cbor2 decodes a big frame (a 1 MiB snapshot chunk) several times faster
        # from a memoryview than from bytes. The decoded frame holds no reference to the view.
        try:
            with memoryview(buf) as view, view[_HEADER.size : end] as body:
                frame = decode_frame(body)
        except DecodeError as exc:
            raise FrameError(str(exc)) from exc
        finally:
            # a bad frame is consumed too: a caller that goes on reading gets the next one
            del buf[:end]
        return frame

    async def receive_chunk(
        self, acquire: Callable[[int], bytearray], max_data: int
    ) -> Frame | ReceivedChunk:
        """Reads one frame like :meth:`receive`, except that a ``SnapshotChunk`` in the layout
        :func:`~trioraft.runtime.transport.frames.encode_chunk_head` describes comes back as a
        :class:`ReceivedChunk` whose payload was read into ``acquire(length)`` (a buffer of at
        least that many bytes, owned by the caller) without further copies. Other frames, and
        chunks in any other layout, come back decoded as by :meth:`receive`.

        Args:
            acquire: returns a buffer for a payload of the given length.
            max_data: the largest payload accepted (checked before ``acquire`` is called).

        Raises:
            The errors of :meth:`receive`; :class:`FrameError` also for a payload larger than
            ``max_data``. A failure or cancellation while the payload is being read leaves the
            stream unusable: later receives raise :class:`FrameError`.
        """
        length = await self._receive_length(_CHUNK_PEEK)
        buf = self._buf
        end = _HEADER.size + length
        peek = min(end, _HEADER.size + CHUNK_HEAD_MAX)
        if len(buf) < peek:
            await self._fill(peek, start=False, read_size=_CHUNK_PEEK)
        head = parse_chunk_head(buf, _HEADER.size, min(end, len(buf)))
        if head is None:
            return await self._receive_body(length)
        file_index, offset, crc, n, head_len = head
        # The stream is cut into frames by their length prefixes, whatever the body says: a
        # payload that does not end exactly with its frame is malformed.
        if n != length - head_len:
            self._desync = (
                f"chunk payload of {n} bytes does not fill its frame ({length - head_len} bytes)"
            )
            raise FrameError(self._desync)
        if n > max_data:
            self._desync = f"chunk of {n} bytes exceeds the chunk size {max_data}"
            raise FrameError(self._desync)
        target = acquire(n)
        start = _HEADER.size + head_len
        have = min(len(buf) - start, n)
        data = memoryview(target)[:n]
        with memoryview(buf) as view:
            data[:have] = view[start : start + have]
        del buf[: start + have]
        if have < n:
            self._desync = "an earlier read of a chunk into its buffer did not finish"
            await self._read_into(data[have:])
            self._desync = ""
        return ReceivedChunk(file_index, offset, crc, data, target)

    async def _read_into(self, view: memoryview) -> None:
        """Fills ``view`` from the stream (nothing may be buffered in ``_buf`` meanwhile)."""
        stream = self.stream
        if type(stream) is not trio.SocketStream or not _HAVE_READV:
            while view:
                data = await stream.receive_some(len(view))
                if not data:
                    raise FrameError(f"connection closed inside a frame ({len(view)} bytes short)")
                view[: len(data)] = data
                view = view[len(data) :]
            return
        # Plain TCP: read() straight into the target on the non-blocking socket, waiting for
        # readability only when it runs dry (trio's receive_some would allocate and return a
        # new ``bytes`` for every read, which then has to be copied).
        sock = stream.socket
        fd = sock.fileno()
        while view:
            try:
                n = os.readv(fd, (view,))
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                continue
            except OSError as exc:
                if exc.errno == errno.EBADF:
                    raise trio.ClosedResourceError("the connection was closed") from exc
                raise trio.BrokenResourceError(f"receiving failed: {exc!r}") from exc
            if n == 0:
                raise FrameError(f"connection closed inside a frame ({len(view)} bytes short)")
            view = view[n:]

    async def send_chunk(self, file_index: int, offset: int, crc32c: int, data: bytes) -> None:
        """Sends ``SnapshotChunk(file_index, offset, data, crc32c)`` in the layout
        :meth:`receive_chunk` reads without copying, and without copying ``data`` here either.

        Raises:
            FrameError: the frame would exceed ``max_frame_size`` (nothing written).
            trio.BrokenResourceError, trio.ClosedResourceError: as :meth:`send`.
        """
        head = encode_chunk_head(file_index, offset, crc32c, len(data))
        size = len(head) + len(data)
        if size > self.max_frame_size:
            raise FrameError(f"frame of {size} bytes exceeds the limit {self.max_frame_size}")
        prefix = _HEADER.pack(size) + head
        lock = self._send_lock
        await _acquire(lock)
        try:
            self._check_send()
            self._wrote = False
            try:
                await self._write([prefix, memoryview(data)])
            except BaseException as exc:
                await self._interrupted(exc)
                raise
        finally:
            lock.release()

    @property
    def can_send_file(self) -> bool:
        """Whether :meth:`send_chunk_from_file` works on this stream (plain TCP where the
        platform has ``os.sendfile``; not TLS, not in-memory streams)."""
        return _HAVE_SENDFILE and type(self.stream) is trio.SocketStream

    async def send_chunk_from_file(
        self, file_index: int, offset: int, crc32c: int, fd: int, file_offset: int, size: int
    ) -> None:
        """Sends ``SnapshotChunk(file_index, offset, data, crc32c)`` like :meth:`send_chunk`,
        with ``data`` the ``size`` bytes of the file open as ``fd`` at ``file_offset``: the
        kernel copies them from the page cache to the socket (``os.sendfile``), so they never
        enter this process. The caller computed ``crc32c`` over the same bytes, of a file that
        does not change; the receiver checks it. Only where :attr:`can_send_file`.

        The bytes are read by the kernel in this (the event loop's) thread: the caller makes
        sure they are in the page cache, e.g. by having just read them for the CRC.

        Raises:
            FrameError: the frame would exceed ``max_frame_size`` (nothing written).
            TypeError: not :attr:`can_send_file`.
            trio.BrokenResourceError: the connection broke, or the file ended before ``size``
                bytes (the frame is then incomplete: the connection must be closed).
            trio.ClosedResourceError: as :meth:`send`.
        """
        if not self.can_send_file:
            raise TypeError("send_chunk_from_file needs a plain TCP stream and os.sendfile")
        head = encode_chunk_head(file_index, offset, crc32c, size)
        total = len(head) + size
        if total > self.max_frame_size:
            raise FrameError(f"frame of {total} bytes exceeds the limit {self.max_frame_size}")
        stream = self.stream
        assert isinstance(stream, trio.SocketStream)
        lock = self._send_lock
        await _acquire(lock)
        try:
            self._check_send()
            self._wrote = False
            try:
                await self._write_socket(stream, [_HEADER.pack(total) + head])
                left = await _send_file(stream, fd, file_offset, size)
            except BaseException as exc:
                await self._interrupted(exc)
                raise
            if left:
                # The frame cannot be completed and the peer would wait for the rest of it:
                # the connection is closed, so that both ends see it end.
                short = trio.BrokenResourceError(
                    f"the file ended {left} bytes short of the chunk being sent"
                )
                self._send_broken = str(short)
                await self.aclose()
                raise short
        finally:
            lock.release()

    async def _fill(self, n: int, *, start: bool, read_size: int = _READ_SIZE) -> None:
        buf = self._buf
        while len(buf) < n:
            chunk = await self.stream.receive_some(max(read_size, n - len(buf)))
            if not chunk:
                if start and not buf:
                    raise ConnectionClosed("connection closed by peer")
                raise FrameError(f"connection closed inside a frame ({len(buf)} of {n} bytes)")
            buf += chunk

    async def aclose(self) -> None:
        """Closes the stream (idempotent; never raises for an already broken stream)."""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.stream.aclose()


async def _send_file(stream: trio.SocketStream, fd: int, offset: int, size: int) -> int:
    """Writes ``size`` bytes of file ``fd`` from ``offset`` to ``stream``'s socket with
    ``os.sendfile`` on the non-blocking socket, waiting for writability when it is full.
    Returns how many bytes are left unsent because the file ended (0: all sent)."""
    sock = stream.socket
    out = sock.fileno()
    end = offset + size
    while offset < end:
        try:
            sent = os.sendfile(out, fd, offset, end - offset)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            continue
        except OSError as exc:
            if exc.errno == errno.EBADF and sock.fileno() == -1:
                raise trio.ClosedResourceError("the connection was closed") from exc
            raise trio.BrokenResourceError(f"sending from a file failed: {exc!r}") from exc
        if sent == 0:
            return end - offset
        offset += sent
    return 0
