"""What a leader knows about each follower's log (etcd's ``tracker.Progress``).

Theory of operation: a follower is in one of three states.

* PROBE: the leader does not know where the follower's log ends. It sends at most one
  AppendRequest per heartbeat interval (``msg_app_flow_paused`` after each) and walks ``next``
  back on rejections using the follower's hint.
* REPLICATE: the follower accepted an append; the leader streams entries optimistically, advancing
  ``next`` as it sends, bounded by the :class:`Inflights` window (count and bytes).
* SNAPSHOT: the entries the follower needs are compacted; a snapshot at ``pending_snapshot`` is on
  its way and appends are paused until the follower acknowledges an index that lets the leader
  continue from its log, or the runtime reports the transfer's outcome.

Invariant: ``match < next``.
"""

from __future__ import annotations

import enum
from collections import deque

__all__ = ["Inflights", "Progress", "ProgressState"]


class ProgressState(enum.Enum):
    """Replication state of one follower."""

    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Inflights:
    """Sliding window of AppendRequests sent but not yet acknowledged, as (last index, bytes).

    Args:
        max_count: at most this many messages in flight.
        max_bytes: at most this many bytes in flight (0 = unlimited).
    """

    def __init__(self, max_count: int, max_bytes: int = 0) -> None:
        self.max_count = max_count
        self.max_bytes = max_bytes
        self._window: deque[tuple[int, int]] = deque()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._window)

    def add(self, index: int, size: int) -> None:
        """Record a message whose last entry is ``index`` (indexes must increase).

        Raises:
            ValueError: the window is already full or ``index`` does not increase.
        """
        if self.full():
            raise ValueError("cannot add to a full inflights window")
        if self._window and index <= self._window[-1][0]:
            raise ValueError(f"inflight index {index} does not increase")
        self._window.append((index, size))
        self.bytes += size

    def free_le(self, index: int) -> None:
        """Forget every message whose last index is ``<= index`` (acknowledged)."""
        while self._window and self._window[0][0] <= index:
            self.bytes -= self._window.popleft()[1]

    def full(self) -> bool:
        """No more messages may be sent."""
        return len(self._window) >= self.max_count or (
            self.max_bytes > 0 and self.bytes >= self.max_bytes
        )

    def reset(self) -> None:
        """Forget everything."""
        self._window.clear()
        self.bytes = 0


class Progress:
    """A leader's view of one follower (or of itself).

    Args:
        next_index: the next index to send.
        max_inflight: inflight window size in messages.
        max_inflight_bytes: inflight window size in bytes (0 = unlimited).
        is_learner: the node is a learner (never votes, never counts for quorum).
    """

    def __init__(
        self,
        next_index: int,
        max_inflight: int,
        max_inflight_bytes: int = 0,
        *,
        match: int = 0,
        is_learner: bool = False,
    ) -> None:
        self.match = match
        self.next = max(next_index, match + 1)
        self.state = ProgressState.PROBE
        self.pending_snapshot = 0
        self.recent_active = False
        self.msg_app_flow_paused = False
        self.inflights = Inflights(max_inflight, max_inflight_bytes)
        self.is_learner = is_learner
        #: highest commit index sent to the follower (appends and heartbeats)
        self.sent_commit = 0
        #: highest commit index the follower reported having (heartbeat responses)
        self.known_commit = 0

    def __repr__(self) -> str:
        return (
            f"Progress(state={self.state.value}, match={self.match}, next={self.next}, "
            f"pending_snapshot={self.pending_snapshot}, paused={self.msg_app_flow_paused}, "
            f"inflight={len(self.inflights)}, learner={self.is_learner})"
        )

    def _reset_state(self, state: ProgressState) -> None:
        self.msg_app_flow_paused = False
        self.pending_snapshot = 0
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        """Enter PROBE. Coming from SNAPSHOT, probe just past the snapshot (the follower most
        likely installed it); otherwise just past the known match."""
        if self.state == ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset_state(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset_state(ProgressState.PROBE)
            self.next = self.match + 1
        self.sent_commit = min(self.sent_commit, self.next - 1)

    def become_replicate(self) -> None:
        """Enter REPLICATE, streaming from just past the match."""
        self._reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        """Enter SNAPSHOT waiting for the snapshot at ``snapshot_index``."""
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index
        self.next = snapshot_index + 1
        self.sent_commit = snapshot_index

    def sent_entries(self, count: int, size: int) -> None:
        """Account for an AppendRequest just sent with ``count`` entries of ``size`` bytes."""
        if self.state == ProgressState.REPLICATE:
            if count > 0:
                self.next += count
                self.inflights.add(self.next - 1, size)
            self.msg_app_flow_paused = self.inflights.full()
        elif self.state == ProgressState.PROBE and count > 0:
            self.msg_app_flow_paused = True

    def maybe_update(self, index: int) -> bool:
        """The follower acknowledged ``index``; returns False if that is old news."""
        if index <= self.match:
            return False
        self.match = index
        self.next = max(self.next, index + 1)
        self.msg_app_flow_paused = False
        return True

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """The follower rejected an append at ``rejected``; move ``next`` back using
        ``match_hint`` (the highest index where the logs may agree). Returns False for stale
        rejections."""
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.msg_app_flow_paused = False
        return True

    def can_bump_commit(self, commit: int) -> bool:
        """Could sending ``commit`` now advance the follower's commit index? Only if it is news
        and we have not already sent a commit covering everything up to ``next - 1``."""
        return commit > self.sent_commit and self.sent_commit < self.next - 1

    def is_paused(self) -> bool:
        """Must the leader hold back appends to this follower?"""
        if self.state == ProgressState.SNAPSHOT:
            return True
        return self.msg_app_flow_paused
