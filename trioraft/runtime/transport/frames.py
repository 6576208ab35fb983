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

from typing import Final

import attrs
from cattrs.strategies import configure_tagged_union

from trioraft.core.encoding import converter, decode, encode
from trioraft.core.messages import Message, SnapshotRequest
from trioraft.core.types import ConfState
from trioraft.runtime.transport.base import ClientRequest, ClientResponse

__all__ = [
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
    "encode_frame",
]

#: Bumped on any incompatible change of the frames below; peers must agree exactly.
PROTOCOL_VERSION: Final = 1

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


def encode_frame(frame: Frame) -> bytes:
    """Encodes one frame (without the length prefix)."""
    return encode(frame, unstructure_as=Frame)


def decode_frame(data: bytes) -> Frame:
    """Decodes one frame strictly. Raises :class:`trioraft.codec.DecodeError`."""
    result: Frame = decode(data, Frame)
    return result
