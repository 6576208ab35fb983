"""Configuration of one :class:`~trioraft.core.raft.RaftCore`."""

from __future__ import annotations

import enum

import attrs

from trioraft.errors import ConfigError

__all__ = ["CoreConfig", "ReadOnlyOption"]


class ReadOnlyOption(enum.IntEnum):
    """How the leader confirms it is still the leader before answering a read index."""

    SAFE = 0  #: a heartbeat round acknowledged by a quorum (no clock assumption)
    LEASE_BASED = 1  #: trust the check-quorum lease (assumes bounded clock drift)


@attrs.frozen
class CoreConfig:
    """Parameters of one Raft core.

    Attributes:
        id: this node's id (> 0).
        election_ticks: base election timeout in ticks; the effective timeout is drawn
            uniformly from ``[election_ticks, 2 * election_ticks)`` after every role change.
        heartbeat_ticks: ticks between leader heartbeats (< election_ticks).
        pre_vote: run a pre-vote round before raising the term (thesis 9.6).
        check_quorum: a leader steps down when it has not heard from a quorum within an
            election timeout, and nodes that heard from a leader recently refuse votes.
        read_only: how read-index requests confirm leadership; LEASE_BASED needs check_quorum.
        max_inflight_msgs: AppendRequests in flight per follower in the replicate state.
        max_inflight_bytes: bytes of entries in flight per follower (0 = unlimited).
        max_msg_bytes: byte budget of entries in one AppendRequest (one entry is always sent).
            Proposals with more data than this are refused as "too-large".
        max_uncommitted_bytes: payload bytes a leader accepts beyond its commit index before
            refusing proposals with "uncommitted-limit" (0 = unlimited).
        max_committed_bytes_per_ready: bytes of committed entries handed out for application
            and not yet acknowledged with ``on_applied`` (0 = ``max_msg_bytes * 64``).
        forward_proposals: a follower forwards proposals to the leader instead of raising
            :class:`~trioraft.errors.NotLeader`.
        seed: seeds the election-timeout randomness (mixed with ``id``).
        applied: last index the state machine had already applied when the core starts.
        piggyback_commit: a leader tells followers a new commit index only with its next
            AppendRequest or heartbeat, instead of a dedicated round of empty appends at once
            (etcd's way, and the default here; the runtime turns the option on). Halves the
            messages per proposal at low load; followers apply up to one heartbeat interval
            later. A commit covering a membership change or a new leader's first entry, and
            one a follower waits for to serve a read, are still sent at once.
    """

    id: int
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    read_only: ReadOnlyOption = ReadOnlyOption.SAFE
    max_inflight_msgs: int = 256
    max_inflight_bytes: int = 0
    max_msg_bytes: int = 1 << 20
    max_uncommitted_bytes: int = 1 << 30
    max_committed_bytes_per_ready: int = 0
    forward_proposals: bool = True
    seed: int = 0
    applied: int = 0
    piggyback_commit: bool = False

    def validate(self) -> None:
        """Check every field and their combinations.

        Raises:
            ConfigError: naming the first offending field.
        """
        if self.id <= 0:
            raise ConfigError("id", "must be a positive integer (0 means 'no node')")
        if self.heartbeat_ticks <= 0:
            raise ConfigError("heartbeat_ticks", "must be > 0")
        if self.election_ticks <= self.heartbeat_ticks:
            raise ConfigError("election_ticks", "must be greater than heartbeat_ticks")
        if self.max_inflight_msgs <= 0:
            raise ConfigError("max_inflight_msgs", "must be > 0")
        if self.max_msg_bytes <= 0:
            raise ConfigError("max_msg_bytes", "must be > 0")
        if self.max_inflight_bytes < 0:
            raise ConfigError("max_inflight_bytes", "must be >= 0 (0 = unlimited)")
        if 0 < self.max_inflight_bytes < self.max_msg_bytes:
            raise ConfigError("max_inflight_bytes", "must be 0 or >= max_msg_bytes")
        if self.max_uncommitted_bytes < 0:
            raise ConfigError("max_uncommitted_bytes", "must be >= 0 (0 = unlimited)")
        if self.max_committed_bytes_per_ready < 0:
            raise ConfigError("max_committed_bytes_per_ready", "must be >= 0")
        if self.applied < 0:
            raise ConfigError("applied", "must be >= 0")
        if not isinstance(self.read_only, ReadOnlyOption):
            raise ConfigError("read_only", "must be a ReadOnlyOption")
        if self.read_only == ReadOnlyOption.LEASE_BASED and not self.check_quorum:
            raise ConfigError("read_only", "LEASE_BASED requires check_quorum=True")

    @property
    def committed_bytes_budget(self) -> int:
        """Effective ``max_committed_bytes_per_ready``."""
        return self.max_committed_bytes_per_ready or self.max_msg_bytes * 64
