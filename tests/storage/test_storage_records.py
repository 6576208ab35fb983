"""WAL record encoding: the hand-built hot-path encodings match the converter exactly, records
round-trip, malformed entry columns are caught, and the CRC chain links frames."""

from __future__ import annotations

import cbor2
import crc32c
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioraft.core.encoding import DecodeError, converter, loads
from trioraft.core.types import ConfState, Entry, EntryKind, HardState, SnapshotMeta
from trioraft.storage.records import (
    FRAME_HEADER,
    SaveRecord,
    SegmentHeader,
    SnapshotRecord,
    WalRecord,
    check_entries,
    decode_record,
    encode_record,
    encode_record_parts,
    frame,
    frame_crc,
    frame_parts,
    make_save_record,
    record_terms,
    save_head_parts,
    save_one_parts,
    unpack_entries,
)


@st.composite
def batches(draw: st.DrawFn) -> list[Entry]:
    first = draw(st.integers(1, 10**12))
    n = draw(st.integers(0, 40))
    term = draw(st.integers(0, 2**40))
    out = []
    for i in range(n):
        term += draw(st.integers(0, 1))  # Raft log terms never decrease
        kind = draw(st.sampled_from(list(EntryKind)))
        out.append(Entry(term, first + i, kind, draw(st.binary(max_size=300))))
    return out


@given(
    batches(),
    st.none()
    | st.builds(HardState, st.integers(0, 2**63), st.integers(0, 9), st.integers(0, 2**63)),
)
def test_save_record_matches_the_converter_and_round_trips(
    entries: list[Entry], hs: HardState | None
) -> None:
    rec = make_save_record(entries, hs)
    payload = b"".join(encode_record_parts(rec))
    assert cbor2.loads(payload) == converter.unstructure(rec, unstructure_as=WalRecord)
    assert decode_record(payload) == rec
    assert decode_record(encode_record(rec)) == rec
    assert check_entries(rec) is None
    assert unpack_entries(rec) == entries
    if len(entries) > 3:
        assert unpack_entries(rec, 3) == entries[3:]
    assert list(record_terms(rec)) == [e.term for e in entries]


def _reference_payload(rec: SaveRecord) -> bytes:
    """The SaveRecord payload as first written (``cbor2.dumps`` of the dict, data moved last):
    the hand encoder must produce exactly these bytes, so files written before and after it
    are the same."""
    hs = rec.hard_state
    return cbor2.dumps(
        {
            "first_index": rec.first_index,
            "count": rec.count,
            "terms": rec.terms,
            "kinds": rec.kinds,
            "sizes": rec.sizes,
            "hard_state": None
            if hs is None
            else {"term": hs.term, "vote": hs.vote, "commit": hs.commit},
            "type": "SaveRecord",
            "data": rec.data,
        }
    )


_EDGE_INTS = [0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1, 2**64, 2**70]


@given(
    batches(),
    st.none()
    | st.builds(
        HardState,
        st.sampled_from(_EDGE_INTS) | st.integers(0, 2**80),
        st.sampled_from(_EDGE_INTS) | st.integers(-5, 2**80),
        st.sampled_from(_EDGE_INTS) | st.integers(0, 2**80),
    ),
    st.sampled_from([0, 1, 23, 24, 255, 256, 65535, 65536]),
)
def test_save_head_is_byte_identical_to_cbor2(
    entries: list[Entry], hs: HardState | None, size: int
) -> None:
    rec = make_save_record(entries, hs)
    assert b"".join(encode_record_parts(rec)) == _reference_payload(rec)
    # the head around the two big columns is built from their lengths alone
    sizes, data = b"\1" * size, b"\2" * (size + 1)
    pre, post = save_head_parts(1, 1, rec.terms, rec.kinds, len(sizes), hs, len(data))
    sized = SaveRecord(1, 1, rec.terms, rec.kinds, sizes, data, hs)
    assert pre + sizes + post + data == _reference_payload(sized)


def test_uniform_batches_store_one_term_and_no_kinds() -> None:
    rec = make_save_record([Entry(7, i, data=b"x") for i in range(1, 101)], None)
    assert len(rec.terms) == 8 and rec.kinds == b""
    rec = make_save_record([Entry(7, 1), Entry(7, 2, EntryKind.CONF_CHANGE)], None)
    assert rec.kinds == b"\x00\x01"
    rec = make_save_record([Entry(7, 1, data=b"x")], None)
    assert (rec.terms, rec.kinds, rec.sizes) == ((7).to_bytes(8, "little"), b"", b"\x01\0\0\0")
    rec = make_save_record([Entry(7, 1, EntryKind.CONF_CHANGE)], None)
    assert rec.kinds == b"\x01"


@pytest.mark.parametrize(
    "rec",
    [
        SegmentHeader(seq=3, first_index=10, prev_crc=123, hard_state=HardState(2, 1, 9)),
        SnapshotRecord(
            SnapshotMeta(
                10,
                2,
                ConfState(
                    voters=frozenset({1, 2}),
                    learners=frozenset({5}),
                    voters_outgoing=frozenset({1, 2, 3}),
                    learners_next=frozenset({3}),
                    auto_leave=True,
                ),
            ),
            reset=True,
        ),
    ],
)
def test_other_records_round_trip(rec: WalRecord) -> None:
    assert decode_record(b"".join(encode_record_parts(rec))) == rec


@pytest.mark.parametrize(
    "rec",
    [
        SaveRecord(1, 2, b"\0" * 8, b"", b"\1\0\0\0", b"x", None),  # sizes column too short
        SaveRecord(1, 1, b"\0" * 8, b"", b"\5\0\0\0", b"x", None),  # sizes do not add up
        SaveRecord(1, 1, b"\0" * 8, b"\x09", b"\1\0\0\0", b"x", None),  # unknown kind
        SaveRecord(0, 1, b"\0" * 8, b"", b"\1\0\0\0", b"x", None),  # index 0
        SaveRecord(1, 2, b"\0" * 16 + b"\0", b"", b"\0" * 8, b"", None),  # terms column
        SaveRecord(0, 0, b"", b"", b"", b"junk", None),  # data without entries
    ],
)
def test_check_entries_catches_malformed_columns(rec: SaveRecord) -> None:
    assert check_entries(rec) is not None


_SAVE_DICT = {
    "first_index": 5,
    "count": 1,
    "terms": b"\1" + b"\0" * 7,
    "kinds": b"",
    "sizes": b"\2\0\0\0",
    "data": b"ab",
    "hard_state": {"term": 1, "vote": 0, "commit": 3},
    "type": "SaveRecord",
}


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"hard_state": None},
        {"first_index": True},  # bool is not an int
        {"count": 1.0},
        {"terms": bytearray(8)},
        {"data": "ab"},
        {"hard_state": {"term": 1, "vote": 0}},  # the converter fills the default
        {"hard_state": {"term": 1, "vote": 0, "commit": "3"}},
        {"hard_state": {"term": 1, "vote": 0, "commit": 3, "x": 1}},
        {"hard_state": [1, 0, 3]},
        {"extra": 1},
        {"type": "SnapshotRecord"},
    ],
)
def test_fast_save_decoding_agrees_with_the_converter(change: dict[str, object]) -> None:
    raw = {**_SAVE_DICT, **change}
    payload = cbor2.dumps(raw)
    try:
        expected: object = converter.structure(loads(payload), WalRecord)
    except Exception:
        expected = DecodeError
    try:
        got: object = decode_record(payload)
    except DecodeError:
        got = DecodeError
    assert got == expected


def test_decode_is_strict() -> None:
    with pytest.raises(DecodeError):
        decode_record(b"\xff\x00garbage")
    bad = cbor2.dumps({"type": "SaveRecord", "first_index": "1"})
    with pytest.raises(DecodeError):
        decode_record(bad)


def test_frames_chain_their_crcs() -> None:
    p1, p2 = b"first payload", b"second"
    h1, c1 = frame(p1, 0)
    h2, c2 = frame(p2, c1)
    assert FRAME_HEADER.unpack(h1) == (len(p1), c1)
    assert c1 == crc32c.crc32c(len(p1).to_bytes(4, "little") + p1)
    assert c2 == crc32c.crc32c(len(p2).to_bytes(4, "little") + p2, c1)
    assert frame_crc(h2[:4], p2, c1) == c2
    assert frame_parts([p2[:3], p2[3:]], c1) == (h2, c2)
    # the same payload after a different predecessor has a different CRC
    assert frame(p2, 0)[1] != c2


@pytest.mark.parametrize("kind", [EntryKind.NORMAL, EntryKind.CONF_CHANGE])
@pytest.mark.parametrize("data", [b"", b"x", b"y" * 300])
@pytest.mark.parametrize("hs", [None, HardState(term=3, vote=2, commit=70000)])
def test_one_entry_saves_build_the_record_bytes_directly(
    kind: EntryKind, data: bytes, hs: HardState | None
) -> None:
    e = Entry(term=2**40, index=65536, kind=kind, data=data)
    rec = make_save_record([e], hs)
    parts, terms = save_one_parts(e, hs)
    assert parts == encode_record_parts(rec)
    assert terms == rec.terms
    assert decode_record(b"".join(parts)) == rec
