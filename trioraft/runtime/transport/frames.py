"""Everything the transport puts on a connection, as frozen attrs classes.

All frames form one tagged union, :data:`Frame` (tag field ``"type"`` = class name), registered on
the single converter in :mod:`trioraft.core.encoding`. Decoding is strict (:class:`DecodeError`).

A connection starts with :class:`Hello` from the connecting side and :class:`HelloAck` from the
accepting side; ``purpose`` fixes what follows:

- ``"raft"``: one-way :class:`RaftFrame` s from the connecting node.
- ``"call"``: :class:`CallRequest` / :class:`CallResponse` pairs, matched by ``call_id``.
- ``"snapshot"``: one snapshot stream (see :mod:`trioraft.runtime.transport.streaming`):
  :class:`SnapshotOffer`, then :class:`SnapshotAccept` (or :class:`SnapshotDone` /
  :class:`SnapshotError`), then :class:`SnapshotChunk` s answered one by one by
  :class:`SnapshotAck`, and finally :class:`SnapshotDone` once the receiver committed.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, Final

import attrs
import cbor2
from cattrs.strategies import configure_tagged_union

from trioraft.core.encoding import DecodeError, converter, encode, loads, structure
from trioraft.core.messages import (
    AppendRequest,
    AppendResponse,
    HeartbeatRequest,
    HeartbeatResponse,
    Message,
    SnapshotRequest,
)
from trioraft.core.types import ConfState, Entry, EntryKind
from trioraft.runtime.transport.base import ClientRequest, ClientResponse

__all__ = [
    "CHUNK_HEAD_MAX",
    "PROTOCOL_VERSION",
    "PURPOSES",
    "CallRequest",
    "CallResponse",
    "FileDesc",
    "Frame",
    "Hello",
    "HelloAck",
    "RaftFrame",
    "SnapshotAccept",
    "SnapshotAck",
    "SnapshotChunk",
    "SnapshotDone",
    "SnapshotError",
    "SnapshotKeepalive",
    "SnapshotOffer",
    "decode_frame",
    "encode_chunk_head",
    "encode_frame",
    "parse_chunk_head",
]

#: Bumped on any incompatible change of the frames below; peers must agree exactly.
#: 2: HeartbeatResponse carries the follower's commit index (a removed leader hands over on it)
PROTOCOL_VERSION: Final = 2

PURPOSES: Final = frozenset({"raft", "call", "snapshot"})


@attrs.frozen(kw_only=True)
class Hello:
    """First frame of every connection, from the connecting node.

    Attributes:
        version: :data:`PROTOCOL_VERSION` of the sender.
        cluster_id: both nodes must belong to the same cluster.
        node_id: who is connecting.
        target: the node id the connector expects to reach (catches misconfigured addresses).
        purpose: ``"raft"``, ``"call"`` or ``"snapshot"``.
    """

    version: int
    cluster_id: str
    node_id: int
    target: int
    purpose: str


@attrs.frozen(kw_only=True)
class HelloAck:
    """The accepting node's answer to :class:`Hello`; the connection closes when not ``ok``."""

    ok: bool
    node_id: int
    reason: str = ""


@attrs.frozen(kw_only=True)
class RaftFrame:
    """One Raft message."""

    msg: Message


@attrs.frozen(kw_only=True)
class CallRequest:
    """A forwarded client request; ``call_id`` is unique per connection."""

    call_id: int
    request: ClientRequest


@attrs.frozen(kw_only=True)
class CallResponse:
    """The response to the :class:`CallRequest` with the same ``call_id``."""

    call_id: int
    response: ClientResponse


@attrs.frozen(kw_only=True)
class FileDesc:
    """One snapshot file as announced by the sender."""

    name: str
    size: int
    crc32c: int


@attrs.frozen(kw_only=True)
class SnapshotOffer:
    """Opens (or resumes) a snapshot stream.

    Attributes:
        index, term, conf, user_meta, files: the snapshot.
        request: the core's message, delivered to the receiver's core after the commit.
        chunk_size: the largest chunk the sender will send.
        window: how many unacknowledged chunks the sender would like in flight.
    """

    index: int
    term: int
    conf: ConfState
    user_meta: bytes
    files: tuple[FileDesc, ...]
    request: SnapshotRequest
    chunk_size: int
    window: int


@attrs.frozen(kw_only=True)
class SnapshotAccept:
    """The receiver's answer to an offer: send from (``file_index``, ``offset``) on, with at
    most ``window`` chunks unacknowledged."""

    file_index: int
    offset: int
    window: int


@attrs.frozen(kw_only=True)
class SnapshotChunk:
    """``data`` of file number ``file_index`` at ``offset``; ``crc32c`` covers ``data``."""

    file_index: int
    offset: int
    data: bytes
    crc32c: int


@attrs.frozen(kw_only=True)
class SnapshotAck:
    """The chunk ending at (``file_index``, ``offset``) is written into the receiver's builder."""

    file_index: int
    offset: int


@attrs.frozen(kw_only=True)
class SnapshotKeepalive:
    """Sent by the receiver while it commits (fsyncs) a fully received snapshot, so the sender's
    stall timer sees that the receiver is alive."""


@attrs.frozen(kw_only=True)
class SnapshotDone:
    """The snapshot is committed on the receiver and its request delivered to the core."""


@attrs.frozen(kw_only=True)
class SnapshotError:
    """The receiver stops this stream.

    Attributes:
        reason: machine-readable (``"crc"``, ``"protocol"``, ``"rejected"``, ``"corrupt"``,
            ``"superseded"``).
        retry: whether reconnecting and resuming may succeed.
    """

    reason: str
    detail: str = ""
    retry: bool = False


Frame = (
    Hello
    | HelloAck
    | RaftFrame
    | CallRequest
    | CallResponse
    | SnapshotOffer
    | SnapshotAccept
    | SnapshotChunk
    | SnapshotAck
    | SnapshotKeepalive
    | SnapshotDone
    | SnapshotError
)

configure_tagged_union(Frame, converter, tag_name="type")


# -- fast path for the hot Raft messages ---------------------------------------------------------
#
# Theory of operation: replication traffic is almost only AppendRequest / AppendResponse /
# Heartbeat{Request,Response} inside a RaftFrame, and the generic cattrs path costs several
# microseconds per entry each way. These hand-written functions produce exactly the dict the
# converter would (same keys, same order, so ``cbor2`` emits the same bytes; a test pins this) and
# decode by checking the same rules the converter enforces (no unknown keys, required keys
# present, exact ``int``/``bytes`` types, valid ``EntryKind``). Any input the fast decoder is not
# certain about falls through to the converter, which then accepts or rejects it as before: the
# fast path changes the cost, never the outcome.

_INT = int
_BYTES = bytes
#: Every integer in a frame is an unsigned 64-bit value (ids, terms, indexes, sizes, CRCs).
#: CBOR bignums decode to ints of any size, and Python cannot even format one of more than
#: 4300 digits (ValueError): a peer's frame must not hand such a value to code that logs it.
_U64_END: Final = 1 << 64


def _enc_entries(entries: tuple[Entry, ...]) -> list[dict[str, object]]:
    # The kind as a plain int (same bytes): cbor2 finds no encoder for the IntEnum type itself
    # and falls back to a slow search through isinstance checks for every entry.
    return [
        {"term": e.term, "index": e.index, "kind": int(e.kind), "data": e.data} for e in entries
    ]


def _enc_append_request(m: Any) -> dict[str, object]:
    return {
        "src": m.src,
        "dst": m.dst,
        "term": m.term,
        "prev_index": m.prev_index,
        "prev_term": m.prev_term,
        "entries": _enc_entries(m.entries),
        "commit": m.commit,
        "type": "AppendRequest",
    }


def _enc_append_response(m: Any) -> dict[str, object]:
    return {
        "src": m.src,
        "dst": m.dst,
        "term": m.term,
        "index": m.index,
        "reject": m.reject,
        "hint_index": m.hint_index,
        "hint_term": m.hint_term,
        "type": "AppendResponse",
    }


def _enc_heartbeat_request(m: Any) -> dict[str, object]:
    return {
        "src": m.src,
        "dst": m.dst,
        "term": m.term,
        "commit": m.commit,
        "context": m.context,
        "type": "HeartbeatRequest",
    }


def _enc_heartbeat_response(m: Any) -> dict[str, object]:
    return {
        "src": m.src,
        "dst": m.dst,
        "term": m.term,
        "context": m.context,
        "commit": m.commit,
        "type": "HeartbeatResponse",
    }


_FAST_ENCODERS: dict[type, Callable[[Any], dict[str, object]]] = {
    AppendRequest: _enc_append_request,
    AppendResponse: _enc_append_response,
    HeartbeatRequest: _enc_heartbeat_request,
    HeartbeatResponse: _enc_heartbeat_response,
}

_ENTRY_KINDS = {k.value: k for k in EntryKind}
_ENTRY_KEYS = frozenset({"term", "index", "kind", "data"})
_ENTRY_REQUIRED = frozenset({"term", "index"})


def _dec_entries(raw: object) -> tuple[Entry, ...] | None:
    if type(raw) is not list:
        return None
    out = []
    for d in raw:
        if type(d) is not dict:
            return None
        keys = d.keys()
        if not (keys <= _ENTRY_KEYS and keys >= _ENTRY_REQUIRED):
            return None
        term = d["term"]
        index = d["index"]
        kind = d.get("kind", 0)
        data = d.get("data", b"")
        if type(term) is not _INT or type(index) is not _INT or type(data) is not _BYTES:
            return None
        if not (0 <= term < _U64_END and 0 <= index < _U64_END):
            return None
        if type(kind) is not _INT or kind not in _ENTRY_KINDS:
            return None
        out.append(Entry(term, index, _ENTRY_KINDS[kind], data))
    return tuple(out)


def _fields_ok(
    m: dict[str, object], allowed: frozenset[str], required: frozenset[str], ints: tuple[str, ...]
) -> bool:
    keys = m.keys()
    if not (keys <= allowed and keys >= required):
        return False
    for name in ints:
        if name in m:
            v = m[name]
            if type(v) is not _INT or not 0 <= v < _U64_END:
                return False
    return True


_AREQ_KEYS = frozenset(
    {"src", "dst", "term", "prev_index", "prev_term", "entries", "commit", "type"}
)
_AREQ_REQUIRED = frozenset({"src", "dst", "term", "prev_index", "prev_term", "type"})
_AREQ_INTS = ("src", "dst", "term", "prev_index", "prev_term", "commit")


def _dec_append_request(m: dict[str, object]) -> Message | None:
    if not _fields_ok(m, _AREQ_KEYS, _AREQ_REQUIRED, _AREQ_INTS):
        return None
    if "entries" in m:
        entries = _dec_entries(m["entries"])
        if entries is None:
            return None
    else:
        entries = ()
    return AppendRequest(
        src=m["src"],  # type: ignore[arg-type]
        dst=m["dst"],  # type: ignore[arg-type]
        term=m["term"],  # type: ignore[arg-type]
        prev_index=m["prev_index"],  # type: ignore[arg-type]
        prev_term=m["prev_term"],  # type: ignore[arg-type]
        entries=entries,
        commit=m.get("commit", 0),  # type: ignore[arg-type]
    )


_ARESP_KEYS = frozenset(
    {"src", "dst", "term", "index", "reject", "hint_index", "hint_term", "type"}
)
_ARESP_REQUIRED = frozenset({"src", "dst", "term", "index", "type"})
_ARESP_INTS = ("src", "dst", "term", "index", "hint_index", "hint_term")


def _dec_append_response(m: dict[str, object]) -> Message | None:
    if not _fields_ok(m, _ARESP_KEYS, _ARESP_REQUIRED, _ARESP_INTS):
        return None
    reject = m.get("reject", False)
    if type(reject) is not bool:
        return None
    return AppendResponse(
        src=m["src"],  # type: ignore[arg-type]
        dst=m["dst"],  # type: ignore[arg-type]
        term=m["term"],  # type: ignore[arg-type]
        index=m["index"],  # type: ignore[arg-type]
        reject=reject,
        hint_index=m.get("hint_index", 0),  # type: ignore[arg-type]
        hint_term=m.get("hint_term", 0),  # type: ignore[arg-type]
    )


_HBREQ_KEYS = frozenset({"src", "dst", "term", "commit", "context", "type"})
_HB_REQUIRED = frozenset({"src", "dst", "term", "type"})
_HBREQ_INTS = ("src", "dst", "term", "commit")
_HBRESP_KEYS = frozenset({"src", "dst", "term", "context", "commit", "type"})
_HBRESP_INTS = ("src", "dst", "term", "commit")


def _dec_heartbeat_request(m: dict[str, object]) -> Message | None:
    if not _fields_ok(m, _HBREQ_KEYS, _HB_REQUIRED, _HBREQ_INTS):
        return None
    context = m.get("context", b"")
    if type(context) is not _BYTES:
        return None
    return HeartbeatRequest(
        src=m["src"],  # type: ignore[arg-type]
        dst=m["dst"],  # type: ignore[arg-type]
        term=m["term"],  # type: ignore[arg-type]
        commit=m.get("commit", 0),  # type: ignore[arg-type]
        context=context,
    )


def _dec_heartbeat_response(m: dict[str, object]) -> Message | None:
    if not _fields_ok(m, _HBRESP_KEYS, _HB_REQUIRED, _HBRESP_INTS):
        return None
    context = m.get("context", b"")
    if type(context) is not _BYTES:
        return None
    return HeartbeatResponse(
        src=m["src"],  # type: ignore[arg-type]
        dst=m["dst"],  # type: ignore[arg-type]
        term=m["term"],  # type: ignore[arg-type]
        context=context,
        commit=m.get("commit", 0),  # type: ignore[arg-type]
    )


_FAST_DECODERS: dict[object, Callable[[dict[str, object]], Message | None]] = {
    "AppendRequest": _dec_append_request,
    "AppendResponse": _dec_append_response,
    "HeartbeatRequest": _dec_heartbeat_request,
    "HeartbeatResponse": _dec_heartbeat_response,
}


def _fast_decode(raw: object) -> Frame | None:
    """The frame ``raw`` decodes to, or None when the converter must decide."""
    if type(raw) is not dict or len(raw) != 2 or raw.get("type") != "RaftFrame":
        return None
    m = raw.get("msg")
    if type(m) is not dict:
        return None
    tag = m.get("type")
    if type(tag) is not str:  # e.g. a list, which is not even hashable: the converter decides
        return None
    dec = _FAST_DECODERS.get(tag)
    if dec is None:
        return None
    msg = dec(m)
    return None if msg is None else RaftFrame(msg=msg)


# -- the replication round trip's two messages, written straight to CBOR -------------------------
#
# An AppendRequest goes to every follower per proposal and an AppendResponse comes back from each,
# so their encoding is on every proposal's critical path. These functions write the bytes that
# ``cbor2.dumps`` makes of the dicts above (same keys, same order, shortest integer forms; a test
# compares them over the integer size boundaries) without building the dicts. Anything outside
# what they handle (a negative or huge integer) raises ValueError and takes the dict path.

_TINY: Final = tuple(bytes((i,)) for i in range(24))
_BYTES_HEAD: Final = tuple(bytes((0x40 | i,)) for i in range(24))
_PACK_U8: Final = struct.Struct(">BB").pack
_PACK_U16: Final = struct.Struct(">BH").pack
_PACK_U32: Final = struct.Struct(">BI").pack
_PACK_U64: Final = struct.Struct(">BQ").pack


def _uint(v: int, major: int = 0) -> bytes:
    """The CBOR head of an unsigned integer (major 0) or a byte string's length (major 2)."""
    m = major << 5
    if 0 <= v < 24:
        return _TINY[m | v] if m == 0 else bytes((m | v,))
    if v < 0:
        raise ValueError("negative")
    if v < 0x100:
        return _PACK_U8(m | 24, v)
    if v < 0x10000:
        return _PACK_U16(m | 25, v)
    if v < 0x100000000:
        return _PACK_U32(m | 26, v)
    if v < 0x10000000000000000:
        return _PACK_U64(m | 27, v)
    raise ValueError("too large")


def _key(name: str) -> bytes:
    return cbor2.dumps(name)


_FRAME_HEAD: Final = b"\xa2" + _key("msg")  # {"msg": ..., "type": "RaftFrame"}
_FRAME_TAIL: Final = _key("type") + _key("RaftFrame")
_AREQ_SRC: Final = _FRAME_HEAD + b"\xa8" + _key("src")
_AREQ_TAIL: Final = _key("type") + _key("AppendRequest") + _FRAME_TAIL
_ARESP_SRC: Final = _FRAME_HEAD + b"\xa8" + _key("src")
_ARESP_TAIL: Final = _key("type") + _key("AppendResponse") + _FRAME_TAIL
_K_DST: Final = _key("dst")
_K_TERM: Final = _key("term")
_K_INDEX: Final = _key("index")
_K_PREV_INDEX: Final = _key("prev_index")
_K_PREV_TERM: Final = _key("prev_term")
_K_ENTRIES: Final = _key("entries")
_K_COMMIT: Final = _key("commit")
_K_REJECT: Final = _key("reject")
_K_HINT_INDEX: Final = _key("hint_index")
_K_HINT_TERM: Final = _key("hint_term")
_ENTRY_TERM: Final = b"\xa4" + _K_TERM
_K_KIND: Final = _key("kind")
_K_DATA: Final = _key("data")
_BOOL: Final = (b"\xf4", b"\xf5")


def _bytes_append_request(m: Any) -> bytes:
    return b"".join(
        (
            _AREQ_SRC,
            _uint(m.src),
            _K_DST,
            _uint(m.dst),
            _K_TERM,
            _uint(m.term),
            _K_PREV_INDEX,
            _uint(m.prev_index),
            _K_PREV_TERM,
            _uint(m.prev_term),
            _K_ENTRIES,
            _entries_bytes(m.entries),
            _K_COMMIT,
            _uint(m.commit),
            _AREQ_TAIL,
        )
    )


#: the last entries tuple encoded and its bytes, as one object (read and replaced atomically):
#: a leader sends the very same tuple to every follower that is at the same point. (It starts
#: with a private object: the empty tuple is a shared singleton whose encoding is not b"".)
_last_entries: tuple[Any, bytes] = (object(), b"")


def _entries_bytes(entries: Any) -> bytes:
    """The CBOR array of ``entries`` (reused when ``entries`` is the tuple encoded last: an
    immutable tuple of immutable entries encodes the same every time)."""
    global _last_entries
    last = _last_entries
    if last[0] is entries:
        return last[1]
    parts = [_uint(len(entries), 4)]
    term: int | None = None  # no entry has this term: the first one always writes its own
    term_bytes = b""
    for e in entries:
        data = e.data
        if e.term != term:
            term = e.term
            term_bytes = _uint(term)
        n = len(data)
        parts += (
            _ENTRY_TERM,
            term_bytes,
            _K_INDEX,
            _uint(e.index),
            _K_KIND,
            _TINY[e.kind] if 0 <= e.kind < 24 else _uint(int(e.kind)),
            _K_DATA,
            _BYTES_HEAD[n] if n < 24 else _uint(n, 2),
            data,
        )
    out = b"".join(parts)
    if type(entries) is tuple:
        _last_entries = (entries, out)
    return out


def _bytes_append_response(m: Any) -> bytes:
    return b"".join(
        (
            _ARESP_SRC,
            _uint(m.src),
            _K_DST,
            _uint(m.dst),
            _K_TERM,
            _uint(m.term),
            _K_INDEX,
            _uint(m.index),
            _K_REJECT,
            _BOOL[bool(m.reject)],
            _K_HINT_INDEX,
            _uint(m.hint_index),
            _K_HINT_TERM,
            _uint(m.hint_term),
            _ARESP_TAIL,
        )
    )


_DIRECT_ENCODERS: dict[type, Callable[[Any], bytes]] = {
    AppendRequest: _bytes_append_request,
    AppendResponse: _bytes_append_response,
}


class _Miss(Exception):
    """Not the exact layout the direct decoder reads: the generic path decides."""


def _head(data: bytes, pos: int, major: int) -> tuple[int, int]:
    """(argument, next position) of the definite-length CBOR item head of ``major`` type at
    ``pos``; raises _Miss for anything else (IndexError when cut short)."""
    b = data[pos]
    if b >> 5 != major:
        raise _Miss
    info = b & 31
    if info < 24:
        return info, pos + 1
    if info > 27:
        raise _Miss
    end = pos + 1 + (1 << (info - 24))
    if end > len(data):
        raise _Miss
    return int.from_bytes(data[pos + 1 : end], "big"), end


def _expect(data: bytes, pos: int, key: bytes) -> int:
    if not data.startswith(key, pos):
        raise _Miss
    return pos + len(key)


def _direct_decode(data: bytes) -> Message | None:
    """The AppendRequest or AppendResponse in ``data`` if it is laid out exactly as the direct
    encoders write them (keys in that order, none missing or extra, unsigned integers,
    definite lengths, nothing after the frame), else None. Every value such a layout can hold
    is one the converter accepts too (the fields' types are checked by the layout itself), so
    this decides nothing the generic path would decide differently."""
    pos = _expect(data, 0, _AREQ_SRC)  # the same prefix for both
    src, pos = _head(data, pos, 0)
    pos = _expect(data, pos, _K_DST)
    dst, pos = _head(data, pos, 0)
    pos = _expect(data, pos, _K_TERM)
    term, pos = _head(data, pos, 0)
    if data.startswith(_K_INDEX, pos):
        index, pos = _head(data, pos + len(_K_INDEX), 0)
        pos = _expect(data, pos, _K_REJECT)
        flag = data[pos]
        if flag != 0xF4 and flag != 0xF5:
            raise _Miss
        pos = _expect(data, pos + 1, _K_HINT_INDEX)
        hint_index, pos = _head(data, pos, 0)
        pos = _expect(data, pos, _K_HINT_TERM)
        hint_term, pos = _head(data, pos, 0)
        if _expect(data, pos, _ARESP_TAIL) != len(data):
            raise _Miss
        return AppendResponse(
            src=src,
            dst=dst,
            term=term,
            index=index,
            reject=flag == 0xF5,
            hint_index=hint_index,
            hint_term=hint_term,
        )
    pos = _expect(data, pos, _K_PREV_INDEX)
    prev_index, pos = _head(data, pos, 0)
    pos = _expect(data, pos, _K_PREV_TERM)
    prev_term, pos = _head(data, pos, 0)
    pos = _expect(data, pos, _K_ENTRIES)
    count, pos = _head(data, pos, 4)
    entries: list[Entry] = []
    append = entries.append
    kinds = _ENTRY_KINDS
    n = len(data)
    # The per-entry loop is on every follower's critical path: the usual head forms (a term
    # and a kind below 24, an index of 1, 2 or 4 bytes, a short data length) are read inline,
    # anything else through _head; a form this loop does not take is a miss (the generic
    # decoder decides).
    k_term, k_index, k_kind, k_data = _ENTRY_TERM, _K_INDEX, _K_KIND, _K_DATA
    l_term, l_index, l_kind, l_data = len(k_term), len(k_index), len(k_kind), len(k_data)
    from_bytes = int.from_bytes
    for _ in range(count):
        if not data.startswith(k_term, pos):
            raise _Miss
        pos += l_term
        b = data[pos]
        if b < 24:
            e_term = b
            pos += 1
        else:
            e_term, pos = _head(data, pos, 0)
        if not data.startswith(k_index, pos):
            raise _Miss
        pos += l_index
        b = data[pos]
        if b == 0x1A or b == 0x19:
            end = pos + (5 if b == 0x1A else 3)
            if end > n:
                raise _Miss
            e_index = from_bytes(data[pos + 1 : end], "big")
            pos = end
        elif b < 24:
            e_index = b
            pos += 1
        else:
            e_index, pos = _head(data, pos, 0)
        if not data.startswith(k_kind, pos):
            raise _Miss
        pos += l_kind
        kind = kinds.get(data[pos])  # a one-byte head: the value itself (0 or 1)
        if kind is None:
            raise _Miss
        pos += 1
        if not data.startswith(k_data, pos):
            raise _Miss
        pos += l_data
        b = data[pos]
        if 0x40 <= b < 0x58:
            size = b - 0x40
            pos += 1
        else:
            size, pos = _head(data, pos, 2)
        end = pos + size
        if end > n:
            raise _Miss
        append(Entry(e_term, e_index, kind, data[pos:end]))
        pos = end
    pos = _expect(data, pos, _K_COMMIT)
    commit, pos = _head(data, pos, 0)
    if _expect(data, pos, _AREQ_TAIL) != len(data):
        raise _Miss
    return AppendRequest(
        src=src,
        dst=dst,
        term=term,
        prev_index=prev_index,
        prev_term=prev_term,
        entries=tuple(entries),
        commit=commit,
    )


def encode_frame(frame: Frame) -> bytes:
    """Encodes one frame (without the length prefix)."""
    if type(frame) is RaftFrame:
        msg = frame.msg
        direct = _DIRECT_ENCODERS.get(type(msg))
        if direct is not None:
            try:
                return direct(msg)
            except ValueError:
                pass  # not representable by the direct path: the dict path decides
        enc = _FAST_ENCODERS.get(type(msg))
        if enc is not None:
            return cbor2.dumps({"msg": enc(msg), "type": "RaftFrame"})
    return encode(frame, unstructure_as=Frame)


def _ints_in_range(value: object) -> bool:
    """Whether every integer in parsed CBOR ``value`` (map keys included) is in [0, 2**64)."""
    stack = [value]
    pop, push = stack.pop, stack.extend
    while stack:
        v = pop()
        t = type(v)
        if t is int:
            if not 0 <= v < _U64_END:  # type: ignore[operator]
                return False
        elif t is dict:
            push(v.keys())  # type: ignore[attr-defined]
            push(v.values())  # type: ignore[attr-defined]
        elif t is list or t is tuple or t is set or t is frozenset:
            push(v)  # type: ignore[arg-type]
        elif isinstance(v, cbor2.CBORTag):  # an unknown tag: its content is still a value
            stack.append(v.value)
    return True


def decode_frame(data: bytes | memoryview) -> Frame:
    """Decodes one frame strictly. Raises :class:`trioraft.codec.DecodeError`, and nothing
    else, for any input: the callers turn exactly that into closing the peer's connection.

    Integers must lie in [0, 2**64): no field of any frame holds anything else, and a peer must
    not be able to hand the rest of the transport an integer too large to format or pack.
    (The direct decoder reads at most 8-byte unsigned heads, so it never produces another.)
    """
    if data[:1] == b"\xa2":  # a two-key map, as every RaftFrame
        raw_bytes = bytes(data)
        try:
            msg = _direct_decode(raw_bytes)
        except (_Miss, IndexError):
            msg = None
        except Exception as exc:  # a bug, not the input's fault; still the input's frame
            raise DecodeError(f"invalid frame: {type(exc).__name__}") from exc
        if msg is not None:
            return RaftFrame(msg=msg)
    raw = loads(data)  # the whole body must be one value: trailing bytes are a DecodeError
    try:
        fast = _fast_decode(raw)
    except Exception as exc:
        raise DecodeError(f"invalid frame: {type(exc).__name__}") from exc
    if fast is not None:
        return fast
    if not _ints_in_range(raw):
        raise DecodeError("invalid frame: an integer outside [0, 2**64)")
    try:
        result: Frame = structure(raw, Frame)
    except DecodeError:
        raise
    except Exception as exc:  # structure() converts the errors cattrs is known to raise
        raise DecodeError(f"invalid frame: {type(exc).__name__}") from exc
    return result


# -- snapshot chunks without copying their payload ------------------------------------------------
#
# Theory of operation: a SnapshotChunk is almost all payload (1 MiB by default), and the generic
# path copies it several times (into the CBOR encoding, behind the length prefix, out of the
# receive buffer, out of the CBOR decoding). The sender therefore encodes a chunk as a short
# *head* followed by the payload bytes, with the payload as the last value of the CBOR map
#
#     {"type": "SnapshotChunk", "file_index": u, "offset": u, "crc32c": u, "data": <bytes>}
#
# which is an ordinary CBOR encoding of the frame (the generic decoder accepts it: map order does
# not matter to the converter; a test pins this). The receiver parses such a head by hand and
# reads the payload straight into a buffer of its own. Anything that is not exactly this layout
# returns None from :func:`parse_chunk_head`, and the caller decodes the frame with the strict
# generic decoder instead: as with the fast Raft path above, the hand parser changes the cost,
# never the outcome.

_CHUNK_HEAD_START: Final = b"\xa5\x64type\x6dSnapshotChunk\x6afile_index"
_KEY_OFFSET: Final = b"\x66offset"
_KEY_CRC: Final = b"\x66crc32c"
_KEY_DATA: Final = b"\x64data"

#: The longest head :func:`encode_chunk_head` produces (every integer in its 9-byte form).
CHUNK_HEAD_MAX: Final = (
    len(_CHUNK_HEAD_START) + len(_KEY_OFFSET) + len(_KEY_CRC) + len(_KEY_DATA) + 4 * 9
)


#: (key bytes, CBOR major type of the value) in the order of the head: 0 = unsigned, 2 = bytes
_CHUNK_HEAD_FIELDS: Final = (
    (_CHUNK_HEAD_START, 0),
    (_KEY_OFFSET, 0),
    (_KEY_CRC, 0),
    (_KEY_DATA, 2),
)


def _cbor_head(major: int, value: int) -> bytes:
    """The CBOR initial byte(s) of ``major`` type with argument ``value`` (shortest form)."""
    if value < 0 or value >= 1 << 64:
        raise ValueError(f"value {value} does not fit a CBOR unsigned argument")
    m = major << 5
    if value < 24:
        return bytes((m | value,))
    if value < 1 << 8:
        return bytes((m | 24, value))
    if value < 1 << 16:
        return bytes((m | 25,)) + value.to_bytes(2, "big")
    if value < 1 << 32:
        return bytes((m | 26,)) + value.to_bytes(4, "big")
    return bytes((m | 27,)) + value.to_bytes(8, "big")


def encode_chunk_head(file_index: int, offset: int, crc32c: int, data_len: int) -> bytes:
    """The encoding of ``SnapshotChunk(file_index, offset, data, crc32c)`` up to (not including)
    the ``data_len`` payload bytes, which follow it to end the frame body.

    Raises:
        ValueError: a negative value or one of 2**64 or more.
    """
    return b"".join(
        (
            _CHUNK_HEAD_START,
            _cbor_head(0, file_index),
            _KEY_OFFSET,
            _cbor_head(0, offset),
            _KEY_CRC,
            _cbor_head(0, crc32c),
            _KEY_DATA,
            _cbor_head(2, data_len),
        )
    )


def _parse_arg(
    buf: bytes | bytearray | memoryview, pos: int, end: int, major: int
) -> tuple[int, int]:
    """(argument, next position) of the CBOR item head at ``pos``; (-1, pos) when it is not of
    ``major`` type with a definite argument or does not fit before ``end``."""
    if pos >= end:
        return -1, pos
    b = buf[pos]
    if b >> 5 != major:
        return -1, pos
    info = b & 31
    if info < 24:
        return info, pos + 1
    if info > 27:
        return -1, pos
    size = 1 << (info - 24)
    if pos + 1 + size > end:
        return -1, pos
    return int.from_bytes(buf[pos + 1 : pos + 1 + size], "big"), pos + 1 + size


def parse_chunk_head(
    buf: bytes | bytearray | memoryview, start: int, end: int
) -> tuple[int, int, int, int, int] | None:
    """Parses a chunk head written by :func:`encode_chunk_head` from ``buf[start:end]`` (the
    start of a frame body, possibly only part of it).

    Returns:
        ``(file_index, offset, crc32c, data_len, head_len)``, or None when those bytes are not
        such a head (the frame must then be decoded with :func:`decode_frame`).
    """
    values: list[int] = []
    pos = start
    for key, major in _CHUNK_HEAD_FIELDS:
        if buf[pos : pos + len(key)] != key:
            return None
        value, pos = _parse_arg(buf, pos + len(key), end, major)
        if value < 0:
            return None
        values.append(value)
    file_index, offset, crc, data_len = values
    return file_index, offset, crc, data_len, pos - start
