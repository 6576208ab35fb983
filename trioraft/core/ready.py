"""What the core hands to the runtime (:class:`Ready`) and reports about itself
(:class:`CoreStatus`)."""

from __future__ import annotations

import enum
from collections.abc import Mapping

import attrs

from trioraft.core.messages import Message
from trioraft.core.types import ConfState, Entry, HardState, NodeId, SnapshotMeta

__all__ = ["CoreStatus", "ProgressInfo", "ReadState", "Ready", "Role", "SoftState"]


class Role(enum.Enum):
    """The role a node plays in its current term."""

    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@attrs.frozen
class SoftState:
    """Volatile state worth reporting when it changes: known leader and own role."""

    leader: NodeId
    role: Role


@attrs.frozen
class ReadState:
    """A confirmed read: reads for ``context`` are linearizable once ``index`` is applied."""

    index: int
    context: bytes


@attrs.frozen
class Ready:
    """One numbered batch of work for the runtime.

    Contract (see ``docs/design.md``): persist ``snapshot`` (install), then ``entries`` (replacing
    any existing suffix from their first index) and ``hard_state``; send ``messages`` at once;
    send ``persisted_messages`` only after this Ready's writes (and all earlier Readies' writes)
    are durable; apply ``committed_entries`` in order; then call ``on_persisted(number)`` when
    :attr:`needs_ack` and ``on_applied(index)`` as application progresses.

    Attributes:
        number: strictly increasing from 1.
        soft_state: the leader or role changed (None otherwise).
        hard_state: term/vote/commit changed, or unchanged but handed out again to be synced
            (``sync_hard_state``); persist it (None otherwise).
        entries: log entries to persist.
        snapshot: a received snapshot to install (its files are already in the store).
        committed_entries: entries to apply, all already durable locally.
        messages: send now.
        persisted_messages: send only after this Ready is durable.
        read_states: results of local ``read_index`` calls.
        needs_ack: the core waits for ``on_persisted(number)`` (it must persist something,
            release ``persisted_messages``, or count its own acknowledgement).
        sync_hard_state: make ``hard_state`` durable (fsync) with this Ready even if only its
            commit index moved: the committed entries include a configuration change, whose
            commit this node reports to a leader that may be leaving (a commit index is
            otherwise re-learned from the leader after a crash, so it need not be synced on
            its own).
    """

    number: int
    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    entries: tuple[Entry, ...] = ()
    snapshot: SnapshotMeta | None = None
    committed_entries: tuple[Entry, ...] = ()
    messages: tuple[Message, ...] = ()
    persisted_messages: tuple[Message, ...] = ()
    read_states: tuple[ReadState, ...] = ()
    needs_ack: bool = False
    sync_hard_state: bool = False

    @property
    def must_persist(self) -> bool:
        """Is there anything to write durably?"""
        return self.hard_state is not None or bool(self.entries) or self.snapshot is not None


@attrs.frozen
class ProgressInfo:
    """A leader's view of one follower, for status reports."""

    state: str
    match: int
    next: int
    recent_active: bool
    is_learner: bool = False
    pending_snapshot: int = 0
    paused: bool = False
    inflight: int = 0


@attrs.frozen
class CoreStatus:
    """A snapshot of the core's state for monitoring and tests.

    ``conf`` is the configuration as of the applied index; ``progress`` is empty unless leader.
    """

    id: NodeId
    role: Role
    term: int
    leader: NodeId
    commit: int
    applied: int
    conf: ConfState
    progress: Mapping[NodeId, ProgressInfo] = attrs.Factory(dict)
    vote: NodeId = 0
    first_index: int = 1
    last_index: int = 0
    lead_transferee: NodeId = 0
