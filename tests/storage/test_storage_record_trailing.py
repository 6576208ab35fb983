"""A WAL record payload is exactly one CBOR value: bytes after it are a DecodeError on the
SaveRecord fast path and on the converter path alike."""

from __future__ import annotations

import pytest

from trioraft.core.encoding import DecodeError
from trioraft.core.types import ConfState, Entry, EntryKind, HardState, SnapshotMeta
from trioraft.storage.records import (
    SnapshotRecord,
    WalRecord,
    decode_record,
    encode_record_parts,
    make_save_record,
)

_ENTRIES = [Entry(2, 7, EntryKind.NORMAL, b"abc"), Entry(2, 8, EntryKind.NORMAL, b"")]
_RECORDS: list[WalRecord] = [
    make_save_record(_ENTRIES, HardState(2, 1, 6)),
    make_save_record(_ENTRIES, None),
    make_save_record([], HardState(3, 0, 6)),
    SnapshotRecord(SnapshotMeta(9, 2, ConfState(voters=frozenset({1, 2, 3}))), reset=True),
]


@pytest.mark.parametrize("tail", [b"\x00", b"\xf6", b"junk"])
@pytest.mark.parametrize("rec", _RECORDS, ids=lambda r: type(r).__name__)
def test_a_record_followed_by_anything_is_refused(rec: WalRecord, tail: bytes) -> None:
    payload = b"".join(encode_record_parts(rec))
    assert decode_record(payload) == rec
    with pytest.raises(DecodeError, match="trailing"):
        decode_record(payload + tail)
    with pytest.raises(DecodeError, match="trailing"):
        decode_record(payload + payload)
