"""The items that flow between the actors over memory channels.

Raft actor inbox: Raft messages from peers plus the ``*Req`` requests and acknowledgements below.
WAL actor: :class:`PersistJob`, :class:`MarkerJob`, :class:`ReleaseJob`.
FSM actor: :class:`ApplyBatch`, :class:`RestoreJob`, :class:`CaptureJob`, :class:`HookJob`.

Internal channels are unbounded (``math.inf``) on purpose: the actors form a cycle (raft -> WAL
-> raft, raft -> FSM -> raft) and bounded buffers in a cycle can deadlock. Memory stays bounded
by admission control at the edges instead: the proposal semaphore, the core's uncommitted-bytes
limit, and the drop-on-overflow rule for inbound network messages.
"""

from __future__ import annotations

from typing import Any

import attrs

from trioraft.core.messages import Message
from trioraft.core.types import ConfChange, ConfState, Entry, HardState, SnapshotMeta
from trioraft.runtime.proposals import Future

__all__ = [
    "Applied",
    "ApplyBatch",
    "CampaignReq",
    "CaptureJob",
    "Captured",
    "ConfChangeReq",
    "Forward",
    "HookJob",
    "LocalSnapshot",
    "MarkerJob",
    "PersistJob",
    "Persisted",
    "ProposeReq",
    "ReadReq",
    "ReleaseJob",
    "RestoreJob",
    "Restored",
    "SnapshotStatus",
    "TransferReq",
    "UnreachableReq",
]


# -- raft actor inbox ----------------------------------------------------------------------------


@attrs.frozen(eq=False)
class Forward:
    """Resolution of a request the local core refused because it is not the leader: the caller
    forwards the request to ``leader`` itself."""

    leader: int


class ProposeReq:
    """Propose ``data``; ``future`` resolves with the apply result or a :class:`Forward`.

    A plain slotted class, not frozen attrs like the rest: one is built per proposal, and it
    never reaches the wire or the disk (treat it as immutable all the same).
    """

    __slots__ = ("data", "future")

    def __init__(self, data: bytes, future: Future[Any]) -> None:
        self.data = data
        self.future = future

    def __repr__(self) -> str:
        return f"ProposeReq(data=<{len(self.data)} bytes>, future={self.future!r})"


@attrs.frozen(eq=False)
class ConfChangeReq:
    """Propose a membership change; resolves with the new :class:`ConfState` or a Forward."""

    change: ConfChange
    future: Future[Any]


@attrs.frozen(eq=False)
class ReadReq:
    """A read barrier; ``future`` resolves with the read index."""

    future: Future[int]


@attrs.frozen(eq=False)
class TransferReq:
    """Transfer leadership to ``target``; resolves with None (started) or a Forward."""

    target: int
    future: Future[Any]


@attrs.frozen(eq=False)
class UnreachableReq:
    """The transport could not deliver to ``peer``."""

    peer: int


@attrs.frozen(eq=False)
class CampaignReq:
    """Start an election now."""


@attrs.frozen(eq=False)
class Persisted:
    """The WAL actor made these jobs durable (in order)."""

    jobs: tuple[PersistJob, ...]


@attrs.frozen(eq=False)
class Applied:
    """The FSM actor applied up to ``index``."""

    index: int


@attrs.frozen(eq=False)
class Restored:
    """The FSM actor finished (or skipped) the restore of an installed snapshot."""

    index: int


@attrs.frozen(eq=False)
class SnapshotStatus:
    """A snapshot stream to ``peer`` ended (``ok``) or failed."""

    peer: int
    ok: bool


@attrs.frozen(eq=False)
class LocalSnapshot:
    """A snapshot this node took is durable and its WAL marker recorded: tell the log about it
    and compact up to ``compact_to`` (0 = do not compact)."""

    meta: SnapshotMeta
    compact_to: int
    done: Future[None]


# -- WAL actor ---------------------------------------------------------------------------------


class PersistJob:
    """What one Ready needs persisted, and the messages that must wait for it.

    ``acked``: the raft actor already acknowledged this job (it needed no write and nothing
    was in flight); the WAL actor only records its hard state and reports nothing back for it.
    ``sync``: the hard state must be written and synced even if only the commit moved.

    A plain slotted class, not frozen attrs like the rest: every node builds one per Ready on
    the hot path (about a microsecond less each), and it never reaches the wire or the disk
    (treat it as immutable all the same).
    """

    __slots__ = ("acked", "entries", "hard_state", "messages", "number", "snapshot", "sync")

    def __init__(
        self,
        number: int,
        hard_state: HardState | None,
        entries: tuple[Entry, ...],
        snapshot: SnapshotMeta | None,
        messages: tuple[Message, ...],
        acked: bool = False,
        sync: bool = False,
    ) -> None:
        self.number = number
        self.hard_state = hard_state
        self.entries = entries
        self.snapshot = snapshot
        self.messages = messages
        self.acked = acked
        #: write and sync the hard state even if only its commit index moved
        #: (``Ready.sync_hard_state``)
        self.sync = sync

    def __repr__(self) -> str:
        return (
            f"PersistJob(number={self.number}, hard_state={self.hard_state!r}, "
            f"entries=<{len(self.entries)}>, snapshot={self.snapshot!r}, "
            f"messages=<{len(self.messages)}>, acked={self.acked})"
        )


@attrs.frozen(eq=False)
class MarkerJob:
    """Record a local snapshot's marker durably; ``done`` resolves with 0 when it is, or with
    the index of the newer snapshot (installed from the leader meanwhile) that made it moot."""

    meta: SnapshotMeta
    done: Future[int]


@attrs.frozen(eq=False)
class ReleaseJob:
    """Release WAL segments wholly below ``index``."""

    index: int


# -- FSM actor ---------------------------------------------------------------------------------


@attrs.frozen(eq=False)
class ApplyBatch:
    """Committed entries to apply, in order."""

    entries: tuple[Entry, ...]


@attrs.frozen(eq=False)
class RestoreJob:
    """Replace the state machine's state with the stored snapshot ``meta`` (follower install)."""

    meta: SnapshotMeta


@attrs.frozen(eq=False)
class Captured:
    """A consistent capture at ``index``: the saver to run and what the snapshot must record."""

    index: int
    term: int
    conf: ConfState
    members: dict[int, str]
    saver: Any


@attrs.frozen(eq=False)
class CaptureJob:
    """Capture the state at the current applied index; resolves with :class:`Captured`, or
    with None when nothing was applied since ``since``."""

    since: int
    future: Future[Captured | None]


@attrs.frozen(eq=False)
class HookJob:
    """Call the state machine's optional hook ``name`` with ``args`` (in log order)."""

    name: str
    args: tuple[Any, ...]
