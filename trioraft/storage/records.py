"""WAL record types and their framing.

On disk a WAL segment is a sequence of frames::

    +----------------+----------------+---------------------------+
    | length: u32 LE | crc32c: u32 LE | payload (length bytes)     |
    +----------------+----------------+---------------------------+

``payload`` is one :data:`WalRecord` encoded with the project's cattrs/cbor2 converter (a tagged
union, tag field ``"type"``). ``crc32c`` covers the length field and the payload and is *chained*:
it starts from the CRC of the previous frame in the segment (the segment header frame starts from
0 and carries the previous segment's last CRC in ``prev_crc``), so a frame cannot be dropped,
repeated or reordered without detection.

Entries are stored column-wise in one :class:`EntriesRecord` per batch (terms, kinds and sizes as
packed little-endian arrays, the data concatenated) so that encoding a batch costs a few C-level
passes instead of a converter round trip per entry.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Sequence
from operator import attrgetter
from typing import Final

import attrs
import crc32c
from cattrs.strategies import configure_tagged_union

from trioraft.core.encoding import converter, decode, encode
from trioraft.core.types import Entry, EntryKind, HardState, SnapshotMeta

__all__ = [
    "FRAME_HEADER",
    "MAX_RECORD_BYTES",
    "WAL_FORMAT_VERSION",
    "EntriesRecord",
    "HardStateRecord",
    "SegmentHeader",
    "SnapshotRecord",
    "WalRecord",
    "decode_record",
    "encode_record",
    "frame",
    "pack_entries",
    "unpack_entries",
]

WAL_FORMAT_VERSION: Final = 1
#: ``<length: u32><crc32c: u32>``, little endian
FRAME_HEADER: Final = struct.Struct("<II")
#: a frame longer than this is treated as damage (no valid writer produces one)
MAX_RECORD_BYTES: Final = 1 << 30
#: batches whose data exceeds this are split into several records
SPLIT_RECORD_BYTES: Final = 32 << 20

_LITTLE = sys.byteorder == "little"
_U32 = struct.Struct("<I")


@attrs.frozen
class SegmentHeader:
    """First record of every segment."""

    seq: int
    first_index: int  #: index of the first entry expected in this segment (a name hint)
    prev_crc: int  #: chained CRC at the end of the previous segment (0 for the first)
    version: int = WAL_FORMAT_VERSION


@attrs.frozen
class HardStateRecord:
    """The Raft hard state (term, vote, commit). The newest one wins on replay."""

    hard_state: HardState


@attrs.frozen
class EntriesRecord:
    """``count`` consecutive entries starting at ``first_index``, column-wise.

    ``terms``: ``count`` u64 LE; ``kinds``: ``count`` bytes; ``sizes``: ``count`` u32 LE;
    ``data``: the entries' data concatenated. Entries at or after ``first_index`` written by
    earlier records are replaced (suffix replacement).
    """

    first_index: int
    count: int
    terms: bytes
    kinds: bytes
    sizes: bytes
    data: bytes


@attrs.frozen
class SnapshotRecord:
    """A snapshot marker: the snapshot ``meta`` is durably in the snapshot store.

    ``reset`` is set when the snapshot replaced the log (a follower install whose index/term the
    log did not hold): entries written before this record with a larger index are dropped on
    replay. ``hard_state``, when present, is persisted atomically with the marker.
    """

    meta: SnapshotMeta
    reset: bool = False
    hard_state: HardState | None = None


WalRecord = SegmentHeader | HardStateRecord | EntriesRecord | SnapshotRecord
configure_tagged_union(WalRecord, converter, tag_name="type")


def encode_record(rec: WalRecord) -> bytes:
    """CBOR payload of one record."""
    return encode(rec, unstructure_as=WalRecord)


def decode_record(payload: bytes) -> WalRecord:
    """Decode one record payload. Raises :class:`~trioraft.core.encoding.DecodeError`."""
    rec: WalRecord = decode(payload, WalRecord)
    return rec


def frame(payload: bytes, prev_crc: int) -> tuple[bytes, int]:
    """Frame ``payload`` after a record whose chained CRC was ``prev_crc``.

    Returns:
        ``(header, crc)``: the 8 header bytes to write before the payload, and the new CRC.
    """
    n = len(payload)
    crc = crc32c.crc32c(payload, crc32c.crc32c(_U32.pack(n), prev_crc))
    return FRAME_HEADER.pack(n, crc), crc


def frame_crc(length_bytes: bytes | memoryview, payload: bytes | memoryview, prev_crc: int) -> int:
    """The chained CRC of a frame given its raw length field and payload."""
    return int(crc32c.crc32c(payload, crc32c.crc32c(length_bytes, prev_crc)))


_get_term = attrgetter("term")
_get_kind = attrgetter("kind")


def pack_entries(entries: Sequence[Entry]) -> list[EntriesRecord]:
    """Encode consecutive entries column-wise (split into several records past
    :data:`SPLIT_RECORD_BYTES` of data)."""
    datas = [e.data for e in entries]
    sizes = array("I", map(len, datas))
    total = sum(sizes)
    if total > SPLIT_RECORD_BYTES and len(entries) > 1:
        out: list[EntriesRecord] = []
        start = 0
        acc = 0
        for i, size in enumerate(sizes):
            if acc and acc + size > SPLIT_RECORD_BYTES:
                out.extend(pack_entries(entries[start:i]))
                start, acc = i, 0
            acc += size
        out.extend(pack_entries(entries[start:]))
        return out
    terms = array("Q", map(_get_term, entries))
    if not _LITTLE:  # pragma: no cover - big-endian hosts
        sizes.byteswap()
        terms.byteswap()
    return [
        EntriesRecord(
            first_index=entries[0].index,
            count=len(entries),
            terms=terms.tobytes(),
            kinds=bytes(map(_get_kind, entries)),
            sizes=sizes.tobytes(),
            data=b"".join(datas),
        )
    ]


def record_terms(rec: EntriesRecord) -> array[int]:
    """The record's terms as an array."""
    terms = array("Q")
    terms.frombytes(rec.terms)
    if not _LITTLE:  # pragma: no cover - big-endian hosts
        terms.byteswap()
    return terms


_KINDS = {int(k): k for k in EntryKind}


def check_entries(rec: EntriesRecord) -> str | None:
    """Structural check of a record; returns a description of the problem or ``None``."""
    n = rec.count
    if n <= 0 or rec.first_index <= 0:
        return f"bad entries record header (first {rec.first_index}, count {n})"
    if len(rec.terms) != 8 * n or len(rec.kinds) != n or len(rec.sizes) != 4 * n:
        return "entries record columns do not match its count"
    sizes = array("I")
    sizes.frombytes(rec.sizes)
    if not _LITTLE:  # pragma: no cover - big-endian hosts
        sizes.byteswap()
    if sum(sizes) != len(rec.data):
        return "entries record sizes do not add up to its data"
    if any(k not in _KINDS for k in set(rec.kinds)):
        return "entries record holds an unknown entry kind"
    return None


def unpack_entries(rec: EntriesRecord, skip: int = 0) -> list[Entry]:
    """Materialize the record's entries, leaving out the first ``skip``.

    The record must have passed :func:`check_entries`.
    """
    sizes = array("I")
    sizes.frombytes(rec.sizes)
    terms = record_terms(rec)
    if not _LITTLE:  # pragma: no cover - big-endian hosts
        sizes.byteswap()
    data = rec.data
    kinds = rec.kinds
    out: list[Entry] = []
    append = out.append
    kind_of = _KINDS
    pos = 0
    first = rec.first_index
    for i in range(skip):
        pos += sizes[i]
    for i in range(skip, rec.count):
        end = pos + sizes[i]
        append(Entry(terms[i], first + i, kind_of[kinds[i]], data[pos:end]))
        pos = end
    return out
