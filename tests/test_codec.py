"""Strict CBOR decoding of Raft messages and membership changes."""

from __future__ import annotations

import cbor2
import pytest

from trioraft.codec import (
    DecodeError,
    decode_conf_change,
    decode_message,
    encode_conf_change,
    encode_message,
)
from trioraft.core.messages import AppendRequest, SnapshotRequest, TimeoutNow, VoteResponse
from trioraft.core.types import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeTransition,
    ConfChangeType,
    ConfState,
    Entry,
    EntryKind,
    SnapshotMeta,
)


def test_messages_round_trip_with_their_types() -> None:
    msgs = [
        AppendRequest(
            src=1,
            dst=2,
            term=3,
            prev_index=4,
            prev_term=2,
            entries=(Entry(3, 5, EntryKind.CONF_CHANGE, b"x"),),
            commit=4,
        ),
        SnapshotRequest(
            src=1,
            dst=2,
            term=3,
            meta=SnapshotMeta(5, 3, ConfState(voters=frozenset({1, 2}), learners=frozenset({3}))),
        ),
        TimeoutNow(src=1, dst=2, term=9),
    ]
    for msg in msgs:
        back = decode_message(encode_message(msg))
        assert back == msg
        assert type(back) is type(msg)
    kind = decode_message(encode_message(msgs[0])).entries[0].kind  # type: ignore[union-attr]
    assert type(kind) is EntryKind


def test_conf_change_round_trip() -> None:
    cc = ConfChange(
        (ConfChangeSingle(ConfChangeType.ADD_LEARNER, 4),), ConfChangeTransition.JOINT_EXPLICIT
    )
    assert decode_conf_change(encode_conf_change(cc)) == cc


@pytest.mark.parametrize(
    "raw",
    [
        b"garbage",
        b"",
        cbor2.dumps([1, 2]),
        cbor2.dumps(5),
        cbor2.dumps("TimeoutNow"),
        cbor2.dumps(None),
        cbor2.dumps(b"\x00"),
        cbor2.dumps({"type": "Nope"}),
        cbor2.dumps({"type": "SnapshotRequest", "src": 1, "dst": 2, "term": 3, "meta": [1]}),
        cbor2.dumps({"type": "TimeoutNow", "src": 1, "dst": 2}),
        cbor2.dumps({"type": "TimeoutNow", "src": 1, "dst": 2, "term": 3, "extra": 1}),
        cbor2.dumps({"type": "TimeoutNow", "src": 1, "dst": 2, "term": True}),
        cbor2.dumps({"type": "TimeoutNow", "src": 1, "dst": 2, "term": 1.0}),
        cbor2.dumps({"type": "TimeoutNow", "src": "1", "dst": 2, "term": 1}),
        cbor2.dumps({"type": "VoteResponse", "src": 1, "dst": 2, "term": 3, "granted": 1}),
        # Extra keys that are not strings: describing them used to raise TypeError instead.
        cbor2.dumps({"type": "TimeoutNow", "src": 1, "dst": 2, "term": 3, 7: 1}),
        cbor2.dumps({"type": "TimeoutNow", "src": 1, "dst": 2, "term": 3, 7: 1, "x": 2}),
        cbor2.dumps({"type": "TimeoutNow", "src": 1, "dst": 2, "term": 3, cbor2.CBORTag(6, 1): 1}),
        cbor2.dumps(
            {
                "type": "AppendRequest",
                "src": 1,
                "dst": 2,
                "term": 3,
                "prev_index": 1,
                "prev_term": 1,
                "entries": [{"term": 1, "index": 2, "kind": 7, "data": b""}],
            }
        ),
    ],
)
def test_malformed_input_raises_decode_error(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_message(raw)


def test_vote_response_default_fields() -> None:
    msg = VoteResponse(src=1, dst=2, term=1, granted=True)
    assert decode_message(encode_message(msg)) == msg
