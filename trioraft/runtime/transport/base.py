"""The transport contract: what the runtime calls (:class:`Transport`), what the transport calls
back (:class:`InboundHandler`), the generic request/response types used for forwarded client
operations, and the transport's errors.

The snapshot-related protocols (:class:`StoredSnapshotLike`, :class:`SnapshotReaderLike`,
:class:`SnapshotBuilderLike`) describe just the parts of :mod:`trioraft.storage.snapshots` the
transport uses; the real ``StoredSnapshot``, ``SnapshotReader`` and ``SnapshotBuilder`` satisfy
them structurally, and so do small fakes in tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

import attrs
import trio

from trioraft.core.messages import Message, SnapshotRequest
from trioraft.core.types import ConfState
from trioraft.errors import RaftError

__all__ = [
    "CallFailed",
    "ClientRequest",
    "ClientResponse",
    "HandshakeRefused",
    "InboundHandler",
    "PeerUnreachable",
    "SnapshotAborted",
    "SnapshotBuilderLike",
    "SnapshotFileLike",
    "SnapshotReaderLike",
    "SnapshotRejected",
    "SnapshotStalled",
    "SnapshotTransferError",
    "StoredSnapshotLike",
    "Transport",
    "TransportError",
]

S = TypeVar("S", bound="StoredSnapshotLike")
S_co = TypeVar("S_co", bound="StoredSnapshotLike", covariant=True)


# --------------------------------------------------------------------------------------------
# Errors


class TransportError(RaftError):
    """Base class of the transport's errors."""


class PeerUnreachable(TransportError):
    """No connection to the peer could be established (unknown peer, refused, timed out,
    partitioned). Nothing was sent."""


class HandshakeRefused(PeerUnreachable):
    """The peer answered but refused the handshake (wrong cluster id or protocol version, or it
    does not know this node), or the node at the address is not the expected one."""


class CallFailed(TransportError):
    """A :meth:`Transport.call` did not get a response.

    Attributes:
        peer: the node that was called.
        sent: ``False`` when the request certainly never reached the peer (safe to retry
            elsewhere); ``True`` when it may have been delivered and acted upon (ambiguous).
    """

    def __init__(self, peer: int, sent: bool, detail: str) -> None:
        self.peer = peer
        self.sent = sent
        self.detail = detail
        super().__init__(
            f"call to node {peer} failed ({'maybe delivered' if sent else 'not sent'}): {detail}"
        )


class SnapshotTransferError(TransportError):
    """A snapshot stream failed; the caller should report the failure to the core
    (``report_snapshot(peer, False)``)."""


class SnapshotStalled(SnapshotTransferError):
    """No acknowledged progress for the configured stall timeout (peer down, partitioned, or
    too slow)."""


class SnapshotAborted(SnapshotTransferError):
    """The stream was cancelled on purpose: superseded by a newer stream to the same peer, the
    peer was removed, or :meth:`cancel_snapshot` was called.

    Attributes:
        reason: ``"superseded"``, ``"peer-removed"`` or ``"cancelled"``.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"snapshot stream aborted: {reason}")


class SnapshotRejected(SnapshotTransferError):
    """The receiver refused the snapshot or found it corrupt (a retry with the same data would
    fail the same way)."""


# --------------------------------------------------------------------------------------------
# Client request / response (forwarded proposals, read barriers, conf changes, transfers)


@attrs.frozen(kw_only=True)
class ClientRequest:
    """A request forwarded to another node's runtime; the transport does not interpret it.

    Attributes:
        kind: what to do, e.g. ``"propose"``, ``"read"``, ``"conf-change"``, ``"transfer"``.
        payload: the operation's encoded arguments.
        request_id: the caller's correlation/deduplication id (opaque to the transport).
    """

    kind: str
    payload: bytes = b""
    request_id: int = 0


@attrs.frozen(kw_only=True)
class ClientResponse:
    """The answer to a :class:`ClientRequest`.

    Attributes:
        ok: whether the operation succeeded; ``payload`` holds its encoded result.
        error: a machine-readable error kind when not ok (e.g. ``"not-leader"``,
            ``"dropped"``, ``"timeout"``, ``"internal"``); ``detail`` explains it.
        leader_hint: the node the responder believes is the leader (0 = unknown).
        request_id: echoes the request's id.
    """

    ok: bool
    payload: bytes = b""
    error: str = ""
    detail: str = ""
    leader_hint: int = 0
    request_id: int = 0


# --------------------------------------------------------------------------------------------
# What the transport needs from the snapshot store


class SnapshotFileLike(Protocol):
    """One file of a stored snapshot (``trioraft.storage.snapshots.SnapshotFileInfo``)."""

    @property
    def name(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def crc32c(self) -> int: ...


class StoredSnapshotLike(Protocol):
    """A snapshot durably in a store (``trioraft.storage.snapshots.StoredSnapshot``)."""

    @property
    def index(self) -> int: ...
    @property
    def term(self) -> int: ...
    @property
    def conf(self) -> ConfState: ...
    @property
    def files(self) -> Sequence[SnapshotFileLike]: ...
    @property
    def user_meta(self) -> bytes: ...


class SnapshotReaderLike(Protocol):
    """Reads a stored snapshot's files (``trioraft.storage.snapshots.SnapshotReader``).
    Blocking; the transport calls it through its disk executor."""

    def read_chunk(self, name: str, offset: int, size: int) -> bytes: ...


class SnapshotBuilderLike(Protocol[S_co]):
    """Receives a snapshot's files (``trioraft.storage.snapshots.SnapshotBuilder``).
    Blocking; the transport calls it through its disk executor."""

    def write_at(
        self,
        name: str,
        offset: int,
        data: bytes | bytearray | memoryview,
        prefix_crc: int | None = None,
    ) -> None:
        """Writes ``data`` at ``offset`` of ``name``, cutting the file after it. ``data`` may
        view a buffer the transport reuses once the call returns (copy what must be kept);
        ``prefix_crc``, when given, is the CRC32C of the file's bytes up to the end of
        ``data`` (the transport keeps a running CRC of each file it receives)."""

    def commit(self, user_meta: bytes = ...) -> S_co: ...
    def abort(self) -> None: ...


# --------------------------------------------------------------------------------------------
# The contract


class InboundHandler(Protocol[S]):
    """What a transport calls on its node. ``S`` is the store's snapshot type."""

    def deliver(self, msg: Message) -> None:
        """Hands a Raft message to the raft actor. Must not block."""

    async def handle_call(self, request: ClientRequest) -> ClientResponse:
        """Serves a request another node sent with :meth:`Transport.call`."""

    async def begin_snapshot_receive(
        self, src: int, index: int, term: int, conf: ConfState, user_meta: bytes
    ) -> SnapshotBuilderLike[S]:
        """Starts receiving a snapshot from ``src``: returns a builder the transport writes the
        chunks into. Raising refuses the snapshot (the sender gets :class:`SnapshotRejected`)."""

    def snapshot_received(self, stored: S, request: SnapshotRequest) -> None:
        """The snapshot is durably committed in the store: deliver ``request`` to the core."""


class Transport(Protocol):
    """Moves Raft messages, snapshot files and forwarded client requests between nodes.
    One per node."""

    async def serve(
        self, handler: InboundHandler[Any], *, task_status: trio.TaskStatus[Any] = ...
    ) -> None:
        """Runs the listener and the per-peer senders until cancelled."""

    def send(self, msg: Message) -> None:
        """Queues ``msg`` for ``msg.dst``. Never blocks: drops (and counts) on overflow."""

    async def stream_snapshot(
        self,
        peer: int,
        snapshot: StoredSnapshotLike,
        reader: SnapshotReaderLike,
        request: SnapshotRequest,
    ) -> None:
        """Streams the snapshot's files to ``peer``; returns once the peer committed them and
        delivered ``request`` to its core. Raises :class:`SnapshotTransferError`."""

    async def call(self, peer: int, request: ClientRequest) -> ClientResponse:
        """Sends ``request`` to ``peer``'s :meth:`InboundHandler.handle_call`. Raises
        :class:`CallFailed`."""

    def add_peer(self, peer: int, address: str) -> None:
        """Adds a peer or changes its address."""

    def remove_peer(self, peer: int) -> None:
        """Forgets a peer: closes its connections, aborts streams to it."""
