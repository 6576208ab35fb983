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

Every write is exactly one frame: a :meth:`WAL.save` call becomes one :class:`SaveRecord`
(entries and hard state together), so a crash can tear at most the last frame. Entries are stored
column-wise (terms, kinds and sizes as packed little-endian arrays, the data concatenated) so that
encoding a batch costs a few C-level passes instead of a converter round trip per entry.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Sequence
from typing import Final

import attrs
import cbor2
import crc32c
from cattrs.strategies import configure_tagged_union

from trioraft.core.encoding import converter, encode, loads, structure
from trioraft.core.types import Entry, EntryKind, HardState, SnapshotMeta

__all__ = [
    "FRAME_HEADER",
    "MAX_RECORD_BYTES",
    "WAL_FORMAT_VERSION",
    "SaveRecord",
    "SegmentHeader",
    "SnapshotRecord",
    "WalRecord",
    "check_entries",
    "decode_record",
    "encode_record",
    "encode_record_parts",
    "entry_columns",
    "first_term",
    "frame",
    "frame_crc",
    "frame_parts",
    "make_save_record",
    "pack_sizes",
    "record_first_term",
    "record_terms",
    "save_head_parts",
    "terms_array",
    "unpack_entries",
]

WAL_FORMAT_VERSION: Final = 1
#: ``<length: u32><crc32c: u32>``, little endian
FRAME_HEADER: Final = struct.Struct("<II")
#: a frame longer than this is treated as damage (no valid writer produces one)
MAX_RECORD_BYTES: Final = 1 << 30

_LITTLE = sys.byteorder == "little"
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


@attrs.frozen
class SegmentHeader:
    """First record of every segment; carries the hard state current when it was started, so a
    segment can be read without the ones released before it."""

    seq: int
    first_index: int  #: index of the first entry expected in this segment (a name hint)
    prev_crc: int  #: chained CRC at the end of the previous segment (0 for the first)
    hard_state: HardState
    version: int = WAL_FORMAT_VERSION


@attrs.frozen
class SaveRecord:
    """One :meth:`WAL.save` call: ``count`` consecutive entries from ``first_index`` (column-wise)
    and/or a new hard state.

    ``terms``: ``count`` u64 LE, or a single u64 when every entry has that term; ``kinds``:
    ``count`` bytes, or empty when every entry is :attr:`~EntryKind.NORMAL`; ``sizes``: ``count``
    u32 LE; ``data``: the entries' data concatenated. Entries at or after ``first_index`` written by
    earlier records are replaced (suffix replacement). ``count`` 0 (``first_index`` 0) means no
    entries.
    """

    first_index: int
    count: int
    terms: bytes
    kinds: bytes
    sizes: bytes
    data: bytes
    hard_state: HardState | None = None


@attrs.frozen
class SnapshotRecord:
    """A snapshot marker: the snapshot ``meta`` is durably in the snapshot store.

    ``reset`` is set when the snapshot replaced the log (a follower install whose index/term the
    log did not hold): on replay, once the durable commit index has reached the marker, entries
    written before this record with a larger index are dropped.
    """

    meta: SnapshotMeta
    reset: bool = False


WalRecord = SegmentHeader | SaveRecord | SnapshotRecord
configure_tagged_union(WalRecord, converter, tag_name="type")


def encode_record(rec: WalRecord) -> bytes:
    """CBOR payload of one record."""
    return encode(rec, unstructure_as=WalRecord)


def encode_record_parts(rec: WalRecord) -> list[bytes]:
    """CBOR payload of one record as pieces to be written back to back.

    :class:`SaveRecord`, the one on the hot path, is encoded by hand (see
    :func:`save_head_parts`) into exactly the bytes ``cbor2`` produces for the converter's shape
    of the record with ``data`` moved last (a test pins both; decoding always goes through the
    strict converter or its checked fast path), and comes out as ``[head, data]`` so the big data
    column is written from where it already is instead of being copied into the CBOR output.
    The concatenation is exactly the CBOR encoding of the record.
    """
    if not isinstance(rec, SaveRecord):
        return [encode_record(rec)]
    pre, post = save_head_parts(
        rec.first_index,
        rec.count,
        rec.terms,
        rec.kinds,
        len(rec.sizes),
        rec.hard_state,
        len(rec.data),
    )
    head = pre + rec.sizes + post
    if not rec.data:
        return [head]
    return [head, rec.data]


def _text(s: str) -> bytes:
    return cbor2.dumps(s)


# The SaveRecord map: 8 pairs, keys in this order (data last, so it can be written separately).
_SAVE_OPEN: Final = b"\xa8" + _text("first_index")
_K_COUNT: Final = _text("count")
_K_TERMS: Final = _text("terms")
_K_KINDS: Final = _text("kinds")
_K_SIZES: Final = _text("sizes")
_HS_NONE: Final = _text("hard_state") + b"\xf6"
_HS_OPEN: Final = _text("hard_state") + b"\xa3" + _text("term")
_K_VOTE: Final = _text("vote")
_K_COMMIT: Final = _text("commit")
_TYPE_DATA: Final = _text("type") + _text("SaveRecord") + _text("data")
_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32BE = struct.Struct(">I")
_U64BE = struct.Struct(">Q")


def _head(major: int, n: int) -> bytes:
    """CBOR head of major type ``major`` (pre-shifted) with argument ``0 <= n < 2**64``, in
    the shortest form, as ``cbor2`` writes it."""
    if n < 24:
        return _U8.pack(major | n)
    if n < 0x100:
        return _U8.pack(major | 24) + _U8.pack(n)
    if n < 0x10000:
        return _U8.pack(major | 25) + _U16.pack(n)
    if n < 0x100000000:
        return _U8.pack(major | 26) + _U32BE.pack(n)
    return _U8.pack(major | 27) + _U64BE.pack(n)


def _uint(n: int) -> bytes:
    """CBOR encoding of the integer ``n`` (hand-encoded in the common range, else ``cbor2``:
    negative numbers and bignums)."""
    if type(n) is int and 0 <= n < 1 << 64:
        return _head(0x00, n)
    return cbor2.dumps(n)


def _bytes_header(n: int) -> bytes:
    """Header of a CBOR byte string of length ``n`` (major type 2, shortest form)."""
    return _head(0x40, n)


def save_head_parts(
    first_index: int,
    count: int,
    terms: bytes,
    kinds: bytes,
    sizes_len: int,
    hard_state: HardState | None,
    data_len: int,
) -> tuple[bytes, bytes]:
    """The CBOR encoding of a :class:`SaveRecord` around its two big columns: ``(pre, post)``
    such that ``pre + sizes + post + data`` is the record's payload, ``sizes`` being
    ``sizes_len`` bytes and ``data`` ``data_len`` bytes: only their lengths are needed, so the
    big columns are written from where they are, never copied into the CBOR output. Integers
    outside ``0 <= n < 2**64`` (never in a valid record) are left to ``cbor2``."""
    pre = b"".join(
        (
            _SAVE_OPEN,
            _uint(first_index),
            _K_COUNT,
            _uint(count),
            _K_TERMS,
            _bytes_header(len(terms)),
            terms,
            _K_KINDS,
            _bytes_header(len(kinds)),
            kinds,
            _K_SIZES,
            _bytes_header(sizes_len),
        )
    )
    if hard_state is None:
        post = _HS_NONE + _TYPE_DATA + _bytes_header(data_len)
    else:
        post = b"".join(
            (
                _HS_OPEN,
                _uint(hard_state.term),
                _K_VOTE,
                _uint(hard_state.vote),
                _K_COMMIT,
                _uint(hard_state.commit),
                _TYPE_DATA,
                _bytes_header(data_len),
            )
        )
    return pre, post


def frame_parts(parts: Sequence[bytes], prev_crc: int) -> tuple[bytes, int]:
    """Like :func:`frame` for a payload given in pieces."""
    n = sum(len(p) for p in parts)
    crc = crc32c.crc32c(_U32.pack(n), prev_crc)
    for p in parts:
        crc = crc32c.crc32c(p, crc)
    return FRAME_HEADER.pack(n, crc), crc


_SAVE_KEYS = frozenset(
    ("first_index", "count", "terms", "kinds", "sizes", "data", "hard_state", "type")
)
_HS_KEYS = frozenset(("term", "vote", "commit"))


def decode_record(payload: bytes) -> WalRecord:
    """Decode one record payload. Raises :class:`~trioraft.core.encoding.DecodeError`.

    Replay decodes one :class:`SaveRecord` per save, so that shape has a fast path: when the
    CBOR map has exactly the expected keys with exactly the expected types it is built
    directly; anything else goes through the strict converter, which accepts and rejects
    exactly what it always does (a test pins that the two agree).
    """
    raw = loads(payload)  # one value spanning the payload, else DecodeError
    if type(raw) is dict and raw.keys() == _SAVE_KEYS and raw["type"] == "SaveRecord":
        fi, n = raw["first_index"], raw["count"]
        terms, kinds, sizes, data = raw["terms"], raw["kinds"], raw["sizes"], raw["data"]
        hs_raw = raw["hard_state"]
        if (
            type(fi) is int
            and type(n) is int
            and type(terms) is bytes
            and type(kinds) is bytes
            and type(sizes) is bytes
            and type(data) is bytes
        ):
            if hs_raw is None:
                return SaveRecord(fi, n, terms, kinds, sizes, data, None)
            if type(hs_raw) is dict and hs_raw.keys() == _HS_KEYS:
                t, v, c = hs_raw["term"], hs_raw["vote"], hs_raw["commit"]
                if type(t) is int and type(v) is int and type(c) is int:
                    return SaveRecord(fi, n, terms, kinds, sizes, data, HardState(t, v, c))
    rec: WalRecord = structure(raw, WalRecord)
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


_NORMAL: Final = EntryKind.NORMAL


def make_save_record(entries: Sequence[Entry], hard_state: HardState | None) -> SaveRecord:
    """Encode consecutive entries column-wise, with an optional hard state.

    ``entries`` must be a slice of a Raft log, whose terms never decrease: a batch whose first
    and last terms are equal is stored with a single term. A batch of only normal entries stores
    no kinds column.
    """
    n = len(entries)
    if not n:
        return SaveRecord(0, 0, b"", b"", b"", b"", hard_state)
    if n == 1:
        e = entries[0]
        return SaveRecord(
            e.index,
            1,
            _U64.pack(e.term),
            b"" if e.kind is _NORMAL else bytes((e.kind,)),
            _U32.pack(len(e.data)),
            e.data,
            hard_state,
        )
    datas, terms, kinds = entry_columns(entries)
    return SaveRecord(
        entries[0].index, n, terms, kinds, pack_sizes(datas), b"".join(datas), hard_state
    )


def save_one_parts(e: Entry, hard_state: HardState | None) -> tuple[list[bytes], bytes]:
    """``(payload, terms)`` for saving the single entry ``e``: exactly
    ``encode_record_parts(make_save_record([e], hard_state))`` and the record's terms column,
    without building the record (one entry per save is what an idle node writes, so this is
    every write's path at low load)."""
    terms = _U64.pack(e.term)
    data = e.data
    pre, post = save_head_parts(
        e.index, 1, terms, b"" if e.kind is _NORMAL else bytes((e.kind,)), 4, hard_state, len(data)
    )
    head = pre + _U32.pack(len(data)) + post
    return ([head, data] if data else [head]), terms


def entry_columns(entries: Sequence[Entry]) -> tuple[list[bytes], bytes, bytes]:
    """``(datas, terms, kinds)`` of a non-empty batch: the entries' data (to be joined into the
    data column and measured by :func:`pack_sizes`) and the terms and kinds columns.

    Large batches are where the time goes, so this is one list comprehension in the common case
    (all entries normal, which the same pass checks by identity: EntryKind members are
    singletons) and one comparison of the first and last terms.
    """
    n = len(entries)
    datas = [e.data for e in entries if e.kind is _NORMAL]
    if len(datas) == n:
        kinds = b""
    else:
        datas = [e.data for e in entries]
        kinds = bytes([e.kind for e in entries])
    t0 = entries[0].term
    if entries[-1].term == t0:
        terms = _U64.pack(t0)
    else:
        terms = struct.pack(f"<{n}Q", *[e.term for e in entries])
    return datas, terms, kinds


def pack_sizes(datas: Sequence[bytes]) -> bytes:
    """The sizes column (u32 LE per entry) of the entries whose data are ``datas``."""
    return struct.pack(f"<{len(datas)}I", *map(len, datas))


def record_terms(rec: SaveRecord) -> array[int]:
    """The record's terms, one per entry."""
    return terms_array(rec.terms, rec.count)


def terms_array(terms: bytes, count: int) -> array[int]:
    """A terms column (one u64 per entry, or a single one for all ``count``) as one term per
    entry."""
    out = array("Q")
    out.frombytes(terms)
    if not _LITTLE:  # pragma: no cover - big-endian hosts
        out.byteswap()
    if len(out) == 1 and count > 1:
        out = out * count
    return out


def record_first_term(rec: SaveRecord) -> int:
    """Term of the record's first entry."""
    return first_term(rec.terms)


def first_term(terms: bytes) -> int:
    """The first term in a terms column."""
    return int(_U64.unpack_from(terms, 0)[0])


_KINDS = {int(k): k for k in EntryKind}
_KIND_LIST = [EntryKind(i) for i in range(max(_KINDS) + 1)]
_MAX_KIND = max(_KINDS)


def check_entries(rec: SaveRecord) -> str | None:
    """Structural check of a record; returns a description of the problem or ``None``."""
    n = rec.count
    if n == 0 and rec.first_index == 0 and not (rec.terms or rec.kinds or rec.sizes or rec.data):
        return None
    if n <= 0 or rec.first_index <= 0:
        return f"bad save record header (first {rec.first_index}, count {n})"
    if len(rec.terms) not in (8, 8 * n) or len(rec.kinds) not in (0, n) or len(rec.sizes) != 4 * n:
        return "save record columns do not match its count"
    if n == 1:
        total = _U32.unpack(rec.sizes)[0]
    else:
        sizes = array("I")
        sizes.frombytes(rec.sizes)
        if not _LITTLE:  # pragma: no cover - big-endian hosts
            sizes.byteswap()
        total = sum(sizes)
    if total != len(rec.data):
        return "save record sizes do not add up to its data"
    if rec.kinds and max(rec.kinds) > _MAX_KIND:
        return "save record holds an unknown entry kind"
    return None


def unpack_entries(rec: SaveRecord, skip: int = 0) -> list[Entry]:
    """Materialize the record's entries, leaving out the first ``skip``.

    The record must have passed :func:`check_entries`.
    """
    if rec.count == 1:
        if skip:
            return []
        kind = _KIND_LIST[rec.kinds[0]] if rec.kinds else EntryKind.NORMAL
        return [Entry(_U64.unpack(rec.terms)[0], rec.first_index, kind, rec.data)]
    sizes = array("I")
    sizes.frombytes(rec.sizes)
    if not _LITTLE:  # pragma: no cover - big-endian hosts
        sizes.byteswap()
    terms = record_terms(rec)
    kinds = rec.kinds or bytes(rec.count)
    data = rec.data
    out: list[Entry] = []
    append = out.append
    kind_of = _KIND_LIST
    pos = sum(sizes[:skip])
    first = rec.first_index
    for i in range(skip, rec.count):
        end = pos + sizes[i]
        append(Entry(terms[i], first + i, kind_of[kinds[i]], data[pos:end]))
        pos = end
    return out
