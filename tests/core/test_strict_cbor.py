"""Strict decoding covers the end of the input: bytes after a valid CBOR value are a
DecodeError (``cbor2.loads`` alone stops after the first value and ignores the rest)."""

from __future__ import annotations

import cbor2
import pytest

from trioraft.codec import DecodeError, decode_message, encode_message
from trioraft.core.encoding import decode, decode_conf_change, encode, encode_conf_change, loads
from trioraft.core.messages import (
    AppendRequest,
    AppendResponse,
    HeartbeatRequest,
    Message,
    SnapshotRequest,
    VoteRequest,
)
from trioraft.core.types import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeType,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    SnapshotMeta,
)

_MESSAGES: list[Message] = [
    AppendResponse(src=1, dst=2, term=3, index=4),
    AppendRequest(
        src=1,
        dst=2,
        term=3,
        prev_index=4,
        prev_term=5,
        entries=(Entry(3, 5, EntryKind.NORMAL, b"payload"),),
        commit=4,
    ),
    HeartbeatRequest(src=1, dst=2, term=3, commit=4, context=b"c"),
    VoteRequest(src=1, dst=2, term=3, last_index=4, last_term=2),
    SnapshotRequest(
        src=1,
        dst=2,
        term=3,
        meta=SnapshotMeta(index=9, term=2, conf=ConfState(voters=frozenset({1, 2, 3}))),
    ),
]
# A zero byte (CBOR 0), CBOR null, garbage, and a whole second valid value.
_TAILS = [b"\x00", b"\xf6", b"junk", cbor2.dumps({"type": "AppendResponse"})]


@pytest.mark.parametrize("tail", _TAILS)
@pytest.mark.parametrize("msg", _MESSAGES, ids=lambda m: type(m).__name__)
def test_a_message_followed_by_anything_is_refused(msg: Message, tail: bytes) -> None:
    data = encode_message(msg)
    assert decode_message(data) == msg
    with pytest.raises(DecodeError, match="trailing"):
        decode_message(data + tail)


def test_decode_of_every_kind_refuses_trailing_bytes() -> None:
    hs = HardState(term=3, vote=1, commit=2)
    assert decode(encode(hs), HardState) == hs
    with pytest.raises(DecodeError):
        decode(encode(hs) + b"\x00", HardState)
    cc = ConfChange(changes=(ConfChangeSingle(ConfChangeType.ADD_VOTER, 4),))
    assert decode_conf_change(encode_conf_change(cc)) == cc
    with pytest.raises(DecodeError):
        decode_conf_change(encode_conf_change(cc) + b"\x00")
    with pytest.raises(DecodeError):
        decode(cbor2.dumps(7) + cbor2.dumps(8), int)


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_loads_takes_exactly_one_value_from_any_buffer(kind: type) -> None:
    value = {"a": [1, 2, b"xyz"], "b": "text"}
    data = cbor2.dumps(value)
    assert loads(kind(data)) == value
    with pytest.raises(DecodeError, match="1 trailing byte"):
        loads(kind(data + b"\x00"))
    # Beyond the decoder's read-ahead (4 KiB): the position check must not depend on it.
    big = cbor2.dumps(b"x" * 10_000)
    assert loads(kind(big)) == b"x" * 10_000
    with pytest.raises(DecodeError, match="2 trailing byte"):
        loads(kind(big + b"\x01\x02"))
    with pytest.raises(DecodeError, match="invalid CBOR"):
        loads(kind(data[:-1]))
    with pytest.raises(DecodeError, match="invalid CBOR"):
        loads(kind(b""))
