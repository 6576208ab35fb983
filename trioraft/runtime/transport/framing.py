"""Length-prefixed frames over a Trio byte stream.

Wire format: a 4-byte big-endian unsigned length, then that many bytes of CBOR (one
:data:`~trioraft.runtime.transport.frames.Frame`). A length of zero or above the configured
maximum, bytes that are not a valid frame, or a stream that ends inside a frame raise
:class:`FrameError`; the owner of the connection closes it (and only it).
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Sequence
from typing import Final

import trio

from trioraft.codec import DecodeError
from trioraft.runtime.transport.base import TransportError
from trioraft.runtime.transport.frames import Frame, decode_frame, encode_frame

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "ConnectionClosed",
    "FrameError",
    "FramedStream",
]

#: Large enough for a 1 MiB snapshot chunk or a 1 MiB AppendRequest with room to spare.
DEFAULT_MAX_FRAME_SIZE: Final = 16 << 20

_HEADER = struct.Struct(">I")
_READ_SIZE: Final = 64 << 10


class FrameError(TransportError):
    """The peer sent something that is not a valid frame (or a frame too large to send)."""


class ConnectionClosed(TransportError):
    """The peer closed the connection cleanly, between two frames."""


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
        # Uncontended (the usual case: one sender per connection), take the lock without the
        # extra scheduling round trip of ``async with``; send_all is the checkpoint.
        try:
            lock.acquire_nowait()
        except trio.WouldBlock:
            await lock.acquire()
        try:
            await self.stream.send_all(data)
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
        buf = self._buf
        if len(buf) < _HEADER.size:
            await self._fill(_HEADER.size, start=True)
        (length,) = _HEADER.unpack_from(buf)
        if length == 0 or length > self.max_frame_size:
            raise FrameError(f"frame length {length} outside 1..{self.max_frame_size}")
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

    async def _fill(self, n: int, *, start: bool) -> None:
        buf = self._buf
        while len(buf) < n:
            chunk = await self.stream.receive_some(max(_READ_SIZE, n - len(buf)))
            if not chunk:
                if start and not buf:
                    raise ConnectionClosed("connection closed by peer")
                raise FrameError(f"connection closed inside a frame ({len(buf)} of {n} bytes)")
            buf += chunk

    async def aclose(self) -> None:
        """Closes the stream (idempotent; never raises for an already broken stream)."""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.stream.aclose()
