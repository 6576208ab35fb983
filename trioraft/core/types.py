"""Plain data shared by the core, the storage layer and the wire: entries, hard state, configuration
and snapshot metadata. All frozen attrs classes; node ids are positive ints (0 means "none")."""

from __future__ import annotations

import enum
from collections.abc import Sequence

import attrs

__all__ = [
    "ENTRY_OVERHEAD",
    "NONE",
    "ConfChange",
    "ConfChangeSingle",
    "ConfChangeTransition",
    "ConfChangeType",
    "ConfState",
    "Entry",
    "EntryKind",
    "HardState",
    "NodeId",
    "SnapshotMeta",
    "entries_size",
]

NodeId = int
#: The "no node" id (no vote, no known leader).
NONE: NodeId = 0


class EntryKind(enum.IntEnum):
    """What an entry carries."""

    NORMAL = 0  #: application data (empty data = a leader's no-op)
    CONF_CHANGE = 1  #: data is an encoded :class:`ConfChange`


@attrs.frozen
class Entry:
    """One log entry."""

    term: int
    index: int
    kind: EntryKind = EntryKind.NORMAL
    data: bytes = b""


#: The fixed part of :meth:`Entry.size` (hot loops add it inline instead of calling ``size``).
ENTRY_OVERHEAD = 16


def entries_size(entries: Sequence[Entry]) -> int:
    """The sum of :meth:`Entry.size` over ``entries``, computed without a call per entry."""
    return sum(len(e.data) for e in entries) + ENTRY_OVERHEAD * len(entries)


@attrs.frozen
class HardState:
    """The state Raft must persist before replying: current term, vote and commit index."""

    term: int = 0
    vote: NodeId = NONE
    commit: int = 0


@attrs.frozen
class ConfState:
    """A cluster configuration, possibly joint.

    ``voters_outgoing`` is non-empty exactly while the cluster is in a joint configuration;
    ``learners_next`` holds voters being demoted to learners when the joint configuration is left.
    """

    voters: frozenset[NodeId] = frozenset()
    learners: frozenset[NodeId] = frozenset()
    voters_outgoing: frozenset[NodeId] = frozenset()
    learners_next: frozenset[NodeId] = frozenset()
    auto_leave: bool = False

    @property
    def joint(self) -> bool:
        """True while the configuration is joint (old and new voter sets both count)."""
        return bool(self.voters_outgoing)

    def all_nodes(self) -> frozenset[NodeId]:
        """Every node mentioned in any role."""
        return self.voters | self.learners | self.voters_outgoing | self.learners_next


@attrs.frozen
class SnapshotMeta:
    """What the core knows of a snapshot: last index and term covered, and the configuration."""

    index: int
    term: int
    conf: ConfState = ConfState()


class ConfChangeType(enum.IntEnum):
    """One step of a membership change."""

    ADD_VOTER = 0  #: add a voter, or promote a learner
    ADD_LEARNER = 1  #: add a learner, or demote a voter (through a joint configuration)
    REMOVE = 2  #: remove a node in any role


class ConfChangeTransition(enum.IntEnum):
    """How a change of more than one voter goes through joint consensus."""

    AUTO = 0  #: simple change when possible, else joint with automatic leave
    JOINT_IMPLICIT = 1  #: always joint, leave automatically
    JOINT_EXPLICIT = 2  #: always joint, leave with an empty ConfChange


@attrs.frozen
class ConfChangeSingle:
    """Add, promote, demote or remove one node."""

    type: ConfChangeType
    node_id: NodeId


@attrs.frozen
class ConfChange:
    """A membership change proposal. No changes at all means "leave the joint configuration"."""

    changes: tuple[ConfChangeSingle, ...] = ()
    transition: ConfChangeTransition = ConfChangeTransition.AUTO
    context: bytes = b""

    @property
    def leave_joint(self) -> bool:
        """True for the empty change that leaves a joint configuration."""
        return not self.changes
