"""Review pins for the hand-written AppendRequest/AppendResponse codec (frames.py, 3b9fddf and
5aa7ae9): the direct encoder writes the converter's bytes at every integer and length width,
the direct decoder never hands out data aliasing the caller's (reused) receive buffer, and it
decides exactly as the converter on re-encoded but valid layouts and on cut frames."""

from __future__ import annotations

import os
import random

import cbor2
import pytest

from trioraft.codec import DecodeError
from trioraft.core.encoding import converter, encode, loads
from trioraft.core.messages import AppendRequest, AppendResponse, Message
from trioraft.core.types import Entry, EntryKind
from trioraft.runtime.transport.frames import Frame, RaftFrame, decode_frame, encode_frame

# Every CBOR head width boundary for an unsigned integer.
_EDGES = [0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1]
# Every byte-string length head width boundary that fits a test.
_LENGTHS = [0, 1, 23, 24, 255, 256, 65535, 65536]


def _converter_bytes(msg: Message) -> bytes:
    return encode(RaftFrame(msg=msg), unstructure_as=Frame)


def _converter_decode(data: bytes) -> object:
    # The strict reference: one CBOR value spanning all of ``data`` (trailing bytes refused).
    return converter.structure(loads(data), Frame)


@pytest.mark.parametrize("v", _EDGES)
def test_every_field_at_every_integer_width(v: int) -> None:
    # One field at a time at the edge value (others small), so a field written with the wrong
    # width or in the wrong place cannot hide behind a neighbour of the same value.
    base_req = {"src": 1, "dst": 2, "term": 3, "prev_index": 4, "prev_term": 5, "commit": 6}
    base_resp = {"src": 1, "dst": 2, "term": 3, "index": 4, "hint_index": 5, "hint_term": 6}
    msgs: list[Message] = []
    for field in base_req:
        kw = dict(base_req, **{field: v})
        msgs.append(AppendRequest(entries=(Entry(7, 8, EntryKind.NORMAL, b"x"),), **kw))
    for field in base_resp:
        for reject in (False, True):
            msgs.append(AppendResponse(reject=reject, **dict(base_resp, **{field: v})))
    for kind in EntryKind:
        msgs.append(
            AppendRequest(
                src=1,
                dst=2,
                term=3,
                prev_index=4,
                prev_term=5,
                entries=(Entry(v, 9, kind, b""), Entry(9, v, kind, b"y")),
                commit=6,
            )
        )
    for msg in msgs:
        data = encode_frame(RaftFrame(msg=msg))
        assert data == _converter_bytes(msg), msg
        back = decode_frame(data)
        assert back == RaftFrame(msg=msg)
        assert back == _converter_decode(data)


@pytest.mark.parametrize("n", _LENGTHS)
def test_byte_string_lengths_and_entry_counts(n: int) -> None:
    data_entry = Entry(
        term=2,
        index=10,
        kind=EntryKind.NORMAL,
        data=bytes(range(256)) * (n // 256) + b"z" * (n % 256),
    )
    msg = AppendRequest(
        src=1, dst=2, term=2, prev_index=9, prev_term=2, entries=(data_entry,), commit=9
    )
    raw = encode_frame(RaftFrame(msg=msg))
    assert raw == _converter_bytes(msg)
    assert decode_frame(raw) == RaftFrame(msg=msg)
    # n entries (list length heads), each empty (the leader's no-op shape)
    count = min(n, 4096)
    many = tuple(Entry(term=2, index=10 + i) for i in range(count))
    msg2 = AppendRequest(src=1, dst=2, term=2, prev_index=9, prev_term=2, entries=many, commit=0)
    raw2 = encode_frame(RaftFrame(msg=msg2))
    assert raw2 == _converter_bytes(msg2)
    got = decode_frame(raw2)
    assert got == RaftFrame(msg=msg2)
    assert type(got.msg) is AppendRequest  # type: ignore[union-attr]
    assert type(got.msg.entries) is tuple  # type: ignore[union-attr]


def test_decoded_entry_data_never_aliases_the_receive_buffer() -> None:
    # The TCP reader decodes from a memoryview of its reusable bytearray and then deletes /
    # appends to it: an Entry whose data were a view of that buffer would change under the
    # core's feet (or make the buffer un-resizable). Both the direct layout and a layout only
    # the generic path reads (keys reordered) must give immutable, independent bytes.
    msg = AppendRequest(
        src=1,
        dst=2,
        term=3,
        prev_index=4,
        prev_term=3,
        entries=(Entry(3, 5, EntryKind.NORMAL, b"A" * 100), Entry(3, 6, EntryKind.NORMAL, b"B")),
        commit=4,
    )
    direct = encode_frame(RaftFrame(msg=msg))
    raw = cbor2.loads(direct)
    raw["msg"] = dict(reversed(list(raw["msg"].items())))
    generic = cbor2.dumps(raw)
    assert generic != direct
    for layout in (direct, generic):
        buf = bytearray(layout)
        with memoryview(buf) as view:
            frame = decode_frame(view)
        assert frame == RaftFrame(msg=msg)
        entries = frame.msg.entries  # type: ignore[union-attr]
        for e in entries:
            assert type(e.data) is bytes
            assert type(e.kind) is EntryKind
        buf[:] = b"\x00" * len(buf)  # the buffer is reused
        del buf[:10]  # and resized: no export of it may still be alive
        assert entries[0].data == b"A" * 100 and entries[1].data == b"B"


def test_non_minimal_heads_decode_as_the_converter_decodes() -> None:
    # A peer writing a value in a longer head than needed (legal CBOR, not canonical): the
    # direct decoder must reach the converter's result, whatever it is.
    msg = AppendResponse(src=1, dst=2, term=3, index=4, hint_index=5, hint_term=6)
    data = encode_frame(RaftFrame(msg=msg))
    # "term" is followed by the one-byte head 0x03; rewrite it as 0x18 0x03 and 0x19 0x00 0x03
    key = cbor2.dumps("term")
    at = data.index(key) + len(key)
    assert data[at] == 3
    for longer in (b"\x18\x03", b"\x19\x00\x03", b"\x1a\x00\x00\x00\x03"):
        v = data[:at] + longer + data[at + 1 :]
        assert decode_frame(v) == _converter_decode(v)


def test_every_cut_of_a_frame_with_wide_heads_is_a_decode_error() -> None:
    seed = int(os.environ.get("TRIORAFT_SEED") or random.randrange(2**32))
    print(f"TRIORAFT_SEED={seed}")
    rng = random.Random(seed)
    msg = AppendRequest(
        src=2**64 - 1,
        dst=65536,
        term=2**32,
        prev_index=256,
        prev_term=24,
        entries=(
            Entry(2**40, 2**63, EntryKind.CONF_CHANGE, rng.randbytes(300)),
            Entry(0, 0, EntryKind.NORMAL, b""),
        ),
        commit=2**64 - 1,
    )
    data = encode_frame(RaftFrame(msg=msg))
    assert data == _converter_bytes(msg)
    for i in range(len(data)):
        with pytest.raises(DecodeError):
            decode_frame(data[:i])
        with pytest.raises(DecodeError):
            decode_frame(memoryview(bytearray(data[:i])))
