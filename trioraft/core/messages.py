"""Raft messages exchanged between cores. The runtime only routes them (and, for
:class:`SnapshotRequest`, streams the snapshot's files alongside); it never looks inside.

Every message carries ``src``, ``dst`` and the sender's ``term``. A term of 0 marks a local message
that is never sent on the wire.
"""

from __future__ import annotations

import attrs

from trioraft.core.types import Entry, NodeId, SnapshotMeta

__all__ = [
    "AppendRequest",
    "AppendResponse",
    "HeartbeatRequest",
    "HeartbeatResponse",
    "Message",
    "ProposalForward",
    "ReadIndexRequest",
    "ReadIndexResponse",
    "SnapshotRequest",
    "TimeoutNow",
    "VoteRequest",
    "VoteResponse",
]


@attrs.frozen(kw_only=True)
class VoteRequest:
    """RequestVote (or a pre-vote when ``pre_vote``; a pre-vote carries the term it would use)."""

    src: NodeId
    dst: NodeId
    term: int
    last_index: int
    last_term: int
    pre_vote: bool = False
    transfer: bool = False  #: campaign started by TimeoutNow: bypasses the leader lease


@attrs.frozen(kw_only=True)
class VoteResponse:
    """Reply to :class:`VoteRequest`.

    ``commit``/``commit_term`` are the voter's commit index and the term of its entry there: a
    candidate whose log holds that entry may commit up to it (Log Matching makes the prefixes
    equal). This lets a voter that refuses its vote still hand over the commit index, e.g. the
    commit of a membership change the candidate must apply before it can win.
    """

    src: NodeId
    dst: NodeId
    term: int
    granted: bool
    pre_vote: bool = False
    commit: int = 0
    commit_term: int = 0


@attrs.frozen(kw_only=True)
class AppendRequest:
    """AppendEntries: entries following (prev_index, prev_term), plus the leader's commit."""

    src: NodeId
    dst: NodeId
    term: int
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...] = ()
    commit: int = 0


@attrs.frozen(kw_only=True)
class AppendResponse:
    """Reply to :class:`AppendRequest` (and to :class:`SnapshotRequest`).

    On success ``index`` is the last index the follower now matches. On rejection ``index`` is the
    rejected ``prev_index`` and (``hint_index``, ``hint_term``) point the leader to where the logs
    may agree (fast backtracking).
    """

    src: NodeId
    dst: NodeId
    term: int
    index: int
    reject: bool = False
    hint_index: int = 0
    hint_term: int = 0


@attrs.frozen(kw_only=True)
class HeartbeatRequest:
    """Leader heartbeat; ``commit`` is min(follower's match, leader commit)."""

    src: NodeId
    dst: NodeId
    term: int
    commit: int = 0
    context: bytes = b""  #: non-empty while confirming leadership for a ReadIndex


@attrs.frozen(kw_only=True)
class HeartbeatResponse:
    """Reply to :class:`HeartbeatRequest`, echoing its context. ``commit`` is the follower's
    commit index after taking the heartbeat's (a leader leaving the configuration waits for a
    quorum of the remaining voters to report the change committed)."""

    src: NodeId
    dst: NodeId
    term: int
    context: bytes = b""
    commit: int = 0


@attrs.frozen(kw_only=True)
class SnapshotRequest:
    """InstallSnapshot, metadata only. The runtime delivers it to the follower's core only after the
    snapshot's files are durably in the follower's snapshot store."""

    src: NodeId
    dst: NodeId
    term: int
    meta: SnapshotMeta


@attrs.frozen(kw_only=True)
class TimeoutNow:
    """Tells a caught-up transfer target to campaign at once."""

    src: NodeId
    dst: NodeId
    term: int


@attrs.frozen(kw_only=True)
class ReadIndexRequest:
    """A follower forwards a read-index request to the leader."""

    src: NodeId
    dst: NodeId
    term: int
    context: bytes


@attrs.frozen(kw_only=True)
class ReadIndexResponse:
    """The leader's answer: reads for ``context`` are linearizable once ``index`` is applied."""

    src: NodeId
    dst: NodeId
    term: int
    index: int
    context: bytes


@attrs.frozen(kw_only=True)
class ProposalForward:
    """A follower forwards proposals to the leader (entries carry term 0 and index 0)."""

    src: NodeId
    dst: NodeId
    term: int
    entries: tuple[Entry, ...]


Message = (
    VoteRequest
    | VoteResponse
    | AppendRequest
    | AppendResponse
    | HeartbeatRequest
    | HeartbeatResponse
    | SnapshotRequest
    | TimeoutNow
    | ReadIndexRequest
    | ReadIndexResponse
    | ProposalForward
)

#: Every message class, in a fixed order (the order is not part of the wire format).
MESSAGE_TYPES: tuple[type, ...] = (
    VoteRequest,
    VoteResponse,
    AppendRequest,
    AppendResponse,
    HeartbeatRequest,
    HeartbeatResponse,
    SnapshotRequest,
    TimeoutNow,
    ReadIndexRequest,
    ReadIndexResponse,
    ProposalForward,
)
