"""Streams of CBOR records: how the examples write snapshots without building them in memory.

A snapshot file is a concatenation of self-delimiting CBOR items. The writer side batches encoded
records into chunks of about ``chunk_bytes`` before handing them to the sink, so a snapshot of any
size needs only one chunk of memory. The reader side feeds arbitrary byte chunks to a
:class:`RecordDecoder`, which yields every complete item and keeps the incomplete tail.
"""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

import cbor2

__all__ = ["RecordDecoder", "RecordFormatError", "encode_record", "write_records"]

DEFAULT_CHUNK_BYTES = 256 * 1024


class RecordFormatError(ValueError):
    """The byte stream is not a valid sequence of CBOR records."""


def encode_record(obj: Any) -> bytes:
    """Encode one record (canonical CBOR, so equal states give equal bytes)."""
    return bytes(cbor2.dumps(obj, canonical=True))


async def write_records(
    records: Iterable[Any],
    write: Callable[[bytes], Awaitable[Any]],
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> int:
    """Encode ``records`` and pass them to ``write`` in chunks of about ``chunk_bytes``.

    Returns:
        the total number of bytes written.
    """
    buf = bytearray()
    total = 0
    for record in records:
        buf += encode_record(record)
        if len(buf) >= chunk_bytes:
            await write(bytes(buf))
            total += len(buf)
            buf.clear()
    if buf:
        await write(bytes(buf))
        total += len(buf)
    return total


class RecordDecoder:
    """Incremental decoder: feed byte chunks, get complete records back.

    Raises :class:`RecordFormatError` from :meth:`feed` on invalid CBOR and from :meth:`close` when
    the stream ends inside a record.
    """

    def __init__(self, max_pending_bytes: int = 256 << 20) -> None:
        self._buf = bytearray()
        self._max_pending = max_pending_bytes

    def feed(self, data: bytes) -> Iterator[Any]:
        """Add ``data`` and yield every record now complete."""
        self._buf += data
        while self._buf:
            stream = io.BytesIO(self._buf)
            try:
                obj = cbor2.CBORDecoder(stream).decode()
            except cbor2.CBORDecodeEOF:
                if len(self._buf) > self._max_pending:
                    raise RecordFormatError("record larger than the decoder limit") from None
                return
            except (cbor2.CBORDecodeError, ValueError, TypeError) as exc:
                raise RecordFormatError(f"invalid CBOR record: {exc}") from None
            del self._buf[: stream.tell()]
            yield obj

    def close(self) -> None:
        """Declare the end of the stream.

        Raises:
            RecordFormatError: when bytes of an incomplete record remain.
        """
        if self._buf:
            raise RecordFormatError(f"stream ends inside a record ({len(self._buf)} bytes left)")
