"""The leader's bookkeeping over the current configuration: a :class:`Progress` per node, the
votes of an election, and the quorum questions asked of them."""

from __future__ import annotations

from collections.abc import Iterator

import attrs

from trioraft.core.progress import Progress
from trioraft.core.quorum import JointConfig, MajorityConfig, VoteResult
from trioraft.core.types import ConfState, NodeId

__all__ = ["ProgressTracker", "TrackerConfig"]


@attrs.frozen
class TrackerConfig:
    """A (possibly joint) configuration in the form the quorum code uses.

    ``learners`` and the voters are disjoint; ``learners_next`` are outgoing voters that become
    learners when the joint configuration is left.
    """

    voters: JointConfig = attrs.Factory(JointConfig)
    learners: frozenset[NodeId] = frozenset()
    learners_next: frozenset[NodeId] = frozenset()
    auto_leave: bool = False

    @classmethod
    def from_conf_state(cls, cs: ConfState) -> TrackerConfig:
        """Convert a wire/disk :class:`ConfState`."""
        return cls(
            voters=JointConfig(MajorityConfig(cs.voters), MajorityConfig(cs.voters_outgoing)),
            learners=cs.learners,
            learners_next=cs.learners_next,
            auto_leave=cs.auto_leave,
        )

    def to_conf_state(self) -> ConfState:
        """Convert to a :class:`ConfState`."""
        return ConfState(
            voters=self.voters.incoming.voters,
            learners=self.learners,
            voters_outgoing=self.voters.outgoing.voters,
            learners_next=self.learners_next,
            auto_leave=self.auto_leave,
        )

    def all_ids(self) -> frozenset[NodeId]:
        """Every node that needs a Progress."""
        return self.voters.ids() | self.learners | self.learners_next

    def __str__(self) -> str:
        inc = sorted(self.voters.incoming.voters)
        s = f"voters={inc}"
        if self.voters.joint:
            s += f"&&{sorted(self.voters.outgoing.voters)}"
        if self.learners:
            s += f" learners={sorted(self.learners)}"
        if self.learners_next:
            s += f" learners_next={sorted(self.learners_next)}"
        if self.auto_leave:
            s += " autoleave"
        return s


class ProgressTracker:
    """Progress of every node in the configuration, plus election votes.

    Args:
        max_inflight: inflight window in messages for new Progress entries.
        max_inflight_bytes: inflight window in bytes (0 = unlimited).
    """

    def __init__(self, max_inflight: int, max_inflight_bytes: int = 0) -> None:
        self.config = TrackerConfig()
        self.progress: dict[NodeId, Progress] = {}
        self.votes: dict[NodeId, bool] = {}
        self.max_inflight = max_inflight
        self.max_inflight_bytes = max_inflight_bytes

    def new_progress(
        self, next_index: int, *, match: int = 0, is_learner: bool = False
    ) -> Progress:
        """A fresh Progress with this tracker's window sizes."""
        return Progress(
            next_index,
            self.max_inflight,
            self.max_inflight_bytes,
            match=match,
            is_learner=is_learner,
        )

    def set_config(self, config: TrackerConfig, last_index: int) -> None:
        """Switch to ``config``: drop Progress of nodes that left, add Progress for new nodes
        (probing from ``last_index``, recently active so check-quorum spares them), and refresh
        learner flags."""
        ids = config.all_ids()
        for gone in [i for i in self.progress if i not in ids]:
            del self.progress[gone]
        for i in sorted(ids):
            pr = self.progress.get(i)
            if pr is None:
                pr = self.new_progress(max(last_index, 1))
                pr.recent_active = True
                self.progress[i] = pr
            pr.is_learner = i in config.learners
        self.config = config

    def conf_state(self) -> ConfState:
        """The configuration as a :class:`ConfState`."""
        return self.config.to_conf_state()

    def is_singleton(self) -> bool:
        """Exactly one voter and no joint configuration."""
        return len(self.config.voters.incoming) == 1 and not self.config.voters.joint

    def visit(self) -> Iterator[tuple[NodeId, Progress]]:
        """Every (id, progress) in increasing id order (deterministic message order)."""
        for i in sorted(self.progress):
            yield i, self.progress[i]

    def committed(self) -> int:
        """Largest index durable on a quorum of voters."""
        voters = self.config.voters
        if not voters.outgoing.voters and voters.incoming.voters:
            # Outside joint consensus (runs on every acknowledgement): only the voters'
            # matches, and only the incoming half.
            progress = self.progress
            incoming = voters.incoming
            return incoming.committed_index(
                {i: progress[i].match for i in incoming.voters if i in progress}
            )
        acked = {i: pr.match for i, pr in self.progress.items()}
        return self.config.voters.committed_index(acked)

    def quorum_active(self) -> bool:
        """Did a quorum of voters show signs of life since the last check?"""
        votes = {i: pr.recent_active for i, pr in self.progress.items() if not pr.is_learner}
        return self.config.voters.vote_result(votes) == VoteResult.WON

    def voter_ids(self) -> frozenset[NodeId]:
        """Voters of either half of the configuration."""
        return self.config.voters.ids()

    def reset_votes(self) -> None:
        """Forget the votes of the previous election."""
        self.votes = {}

    def record_vote(self, node: NodeId, granted: bool) -> None:
        """Record ``node``'s first answer in this election (later ones are ignored)."""
        self.votes.setdefault(node, granted)

    def tally_votes(self) -> tuple[int, int, VoteResult]:
        """(granted, rejected, result) counting only voters."""
        granted = rejected = 0
        for i, pr in self.progress.items():
            if pr.is_learner or i not in self.votes:
                continue
            if self.votes[i]:
                granted += 1
            else:
                rejected += 1
        return granted, rejected, self.config.voters.vote_result(self.votes)
