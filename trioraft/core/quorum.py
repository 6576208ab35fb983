"""Quorum arithmetic: commit indexes and election results for majority and joint configurations.

A joint configuration (Raft dissertation 4.3) is two majority configurations that must *both*
agree: an index is committed when committed in each, an election is won when won in each and lost
when lost in either. An empty majority configuration agrees with everything, which makes a joint
configuration with an empty outgoing half behave exactly like its incoming half.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping

import attrs

from trioraft.core.types import NodeId

__all__ = ["INFINITE_INDEX", "JointConfig", "MajorityConfig", "VoteResult"]

#: What an empty majority configuration reports as its committed index.
INFINITE_INDEX = (1 << 63) - 1


class VoteResult(enum.Enum):
    """Outcome of an election so far."""

    PENDING = "pending"
    LOST = "lost"
    WON = "won"


@attrs.frozen
class MajorityConfig:
    """A set of voters deciding by simple majority."""

    voters: frozenset[NodeId] = frozenset()

    @classmethod
    def of(cls, ids: Iterable[NodeId]) -> MajorityConfig:
        """Build from any iterable of ids."""
        return cls(frozenset(ids))

    def __len__(self) -> int:
        return len(self.voters)

    def committed_index(self, acked: Mapping[NodeId, int]) -> int:
        """The largest index acknowledged by a majority (``acked`` maps voters to their highest
        durable index; missing voters count as 0). Empty config: :data:`INFINITE_INDEX`."""
        n = len(self.voters)
        if n == 0:
            return INFINITE_INDEX
        values = sorted((acked.get(v, 0) for v in self.voters), reverse=True)
        return values[n // 2]

    def vote_result(self, votes: Mapping[NodeId, bool]) -> VoteResult:
        """Tally ``votes`` (voter -> granted) over this configuration. Empty config: WON."""
        n = len(self.voters)
        if n == 0:
            return VoteResult.WON
        granted = rejected = 0
        for v in self.voters:
            if v in votes:
                if votes[v]:
                    granted += 1
                else:
                    rejected += 1
        quorum = n // 2 + 1
        if granted >= quorum:
            return VoteResult.WON
        if n - rejected >= quorum:
            return VoteResult.PENDING
        return VoteResult.LOST


@attrs.frozen
class JointConfig:
    """Incoming and outgoing majority configurations; outgoing is empty outside joint consensus."""

    incoming: MajorityConfig = attrs.Factory(MajorityConfig)
    outgoing: MajorityConfig = attrs.Factory(MajorityConfig)

    @property
    def joint(self) -> bool:
        """True while both halves are in force."""
        return len(self.outgoing) > 0

    def ids(self) -> frozenset[NodeId]:
        """Every voter of either half."""
        return self.incoming.voters | self.outgoing.voters

    def committed_index(self, acked: Mapping[NodeId, int]) -> int:
        """The largest index committed in both halves."""
        return min(self.incoming.committed_index(acked), self.outgoing.committed_index(acked))

    def vote_result(self, votes: Mapping[NodeId, bool]) -> VoteResult:
        """WON when won in both halves, LOST when lost in either, else PENDING."""
        r1 = self.incoming.vote_result(votes)
        r2 = self.outgoing.vote_result(votes)
        if r1 == r2:
            return r1
        if VoteResult.LOST in (r1, r2):
            return VoteResult.LOST
        return VoteResult.PENDING
