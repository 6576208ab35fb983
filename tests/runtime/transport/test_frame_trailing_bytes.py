"""A frame body is exactly one CBOR value: bytes after it are a DecodeError on the direct path
(AppendRequest/AppendResponse) and on the generic one, whatever buffer type carries the body."""

from __future__ import annotations

import cbor2
import pytest

from trioraft.codec import DecodeError
from trioraft.core.messages import AppendRequest, AppendResponse, HeartbeatResponse
from trioraft.core.types import Entry, EntryKind
from trioraft.runtime.transport.frames import (
    Frame,
    Hello,
    RaftFrame,
    SnapshotAck,
    decode_frame,
    encode_frame,
)

_FRAMES: list[Frame] = [
    RaftFrame(msg=AppendResponse(src=1, dst=2, term=3, index=4)),
    RaftFrame(msg=AppendResponse(src=1, dst=2, term=3, index=4, reject=True, hint_index=2)),
    RaftFrame(
        msg=AppendRequest(
            src=1,
            dst=2,
            term=3,
            prev_index=4,
            prev_term=3,
            entries=(Entry(3, 5, EntryKind.NORMAL, b"x" * 16), Entry(3, 6, EntryKind.NORMAL, b"")),
            commit=4,
        )
    ),
    RaftFrame(msg=AppendRequest(src=1, dst=2, term=3, prev_index=4, prev_term=3, commit=4)),
    RaftFrame(msg=HeartbeatResponse(src=2, dst=1, term=3, context=b"")),
    Hello(version=1, cluster_id="c", node_id=1, target=2, purpose="raft"),
    SnapshotAck(file_index=0, offset=1 << 20),
]
_TAILS = [b"\x00", b"\xf6", b"junk", cbor2.dumps({"type": "RaftFrame"})]


@pytest.mark.parametrize("tail", _TAILS)
@pytest.mark.parametrize("frame", _FRAMES, ids=lambda f: type(getattr(f, "msg", f)).__name__)
@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_trailing_bytes_after_a_frame_are_refused(frame: Frame, tail: bytes, kind: type) -> None:
    body = encode_frame(frame)
    assert decode_frame(kind(body)) == frame
    with pytest.raises(DecodeError, match="trailing"):
        decode_frame(kind(body + tail))


def test_a_frame_followed_by_itself_is_refused() -> None:
    # Two whole frames in one body: the direct path must not take the first and drop the second.
    for frame in _FRAMES:
        body = encode_frame(frame)
        with pytest.raises(DecodeError):
            decode_frame(body + body)
