"""The WAL actor: owns the write-ahead log; every write goes through it (through
:meth:`WalActor.persist_now` on the raft actor's task, while this actor is idle).

Theory of operation (group commit): the raft actor hands over one :class:`PersistJob` per Ready
and never waits. This actor takes the first queued job, then drains *everything else queued*
without waiting, merges the jobs' entries and hard states, and writes them with one
``WAL.save`` (one fdatasync) in a worker thread. While that fsync runs, new jobs pile up in the
channel and form the next batch, so the number of fsyncs adapts to the load: one per Ready when
idle, one per many Readys under load. After the batch is durable it tells the raft actor
(:class:`Persisted`), which updates the in-memory log, releases the messages that were held back
for this persist, and acknowledges the core.

Snapshot markers keep their order relative to the persists around them: the pending merge is
flushed first, then the marker is written (durable on return), then merging continues. For a
follower installing a snapshot the marker precedes the hard state that commits it, so a crash
between the two never leaves a commit index pointing past the log.

Shortcut (:meth:`WalActor.persist_now`): with an :class:`~trioraft.runtime.disk.AdaptiveDisk`,
when this actor is idle (nothing queued, no batch in progress) and the event loop has nothing
else to run, the raft actor persists a job itself, synchronously, through the same
bookkeeping: the write would have run inline anyway, and the two task hand-offs around it
(job in, acknowledgement out) are saved on every write's critical path.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

import trio

from trioraft.core.types import Entry, HardState, SnapshotMeta
from trioraft.runtime.disk import AdaptiveDisk, DiskExecutor
from trioraft.runtime.idle import receiver_parked
from trioraft.runtime.items import MarkerJob, Persisted, PersistJob, ReleaseJob

__all__ = ["WalActor", "WalLike", "merge_entries"]

log = logging.getLogger(__name__)

WalItem = PersistJob | MarkerJob | ReleaseJob


class WalLike(Protocol):
    """The part of :class:`trioraft.storage.wal.WAL` this actor uses."""

    def save(self, entries: Sequence[Entry], hard_state: HardState | None) -> None: ...
    def save_snapshot_marker(self, meta: SnapshotMeta) -> None: ...
    def release_to(self, index: int) -> None: ...


def merge_entries(acc: list[Entry], new: Sequence[Entry]) -> None:
    """Append ``new`` to ``acc`` in place; entries of ``new`` replace any suffix of ``acc`` from
    their first index on (a later Ready may overwrite a conflicting tail)."""
    if not new:
        return
    if acc:
        first = new[0].index
        base = acc[0].index
        if first <= base:
            acc.clear()
        elif first <= acc[-1].index:
            del acc[first - base :]
    acc.extend(new)


class WalActor:
    """Drains persist jobs with group commit; see the module docstring.

    Args:
        node_id: for log context.
        wal: the open WAL (owned by this actor while it runs).
        disk: executor for the blocking WAL calls.
        jobs: receive side of the WAL channel.
        raft_inbox: where :class:`Persisted` acknowledgements go (unbounded channel).
        max_batch_jobs: upper bound on jobs merged into one save (keeps latency bounded).
        snapshot_index: index of the newest snapshot marker already in the WAL.
        hard_state: the hard state already durable in the WAL.
    """

    def __init__(
        self,
        node_id: int,
        wal: WalLike,
        disk: DiskExecutor,
        jobs: trio.MemoryReceiveChannel[WalItem],
        raft_inbox: trio.MemorySendChannel[Any],
        *,
        max_batch_jobs: int = 4096,
        snapshot_index: int = 0,
        hard_state: HardState | None = None,
    ) -> None:
        self._id = node_id
        self._wal = wal
        self._disk = disk
        self._jobs = jobs
        self._parked = receiver_parked(jobs)
        self._raft_inbox = raft_inbox
        self._max_batch = max_batch_jobs
        # Index of the newest snapshot marker written: a local snapshot older than a snapshot
        # installed meanwhile must not be recorded (its marker would rewind the log's base).
        self._marker_index = snapshot_index
        self._written_hs = hard_state or HardState()
        self._pending_hs: HardState | None = None
        #: number of WAL.save calls (fsyncs) so far
        self.saves = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled or the channel closes. A storage error propagates and fails
        the node: after a failed fsync nothing may be acknowledged."""
        try:
            await self._run(task_status)
        finally:
            # Best effort: a commit index that was only deferred is written on a clean stop.
            if self._pending_hs is not None and not getattr(self._wal, "failed", False):
                with trio.CancelScope(shield=True):
                    try:
                        await self._disk(self._wal.save, [], self._pending_hs)
                    except Exception:
                        log.debug("node %d: final hard state not written", self._id)

    async def _run(self, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        # The receive side is deliberately not closed on exit: during shutdown the raft actor
        # may still hand over a job before it sees its own cancellation.
        while True:
            try:
                first = await self._jobs.receive()
            except trio.EndOfChannel:
                return
            batch: list[WalItem] = [first]
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._jobs.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            await self._process(batch)

    def note_written(self, hard_state: HardState) -> None:
        """Record that ``hard_state`` was saved outside this actor (the bootstrap write), so the
        next commit-only change is not mistaken for a term or vote change that needs a save."""
        self._written_hs = hard_state

    def persist_now(self, job: PersistJob) -> bool:
        """Persist ``job`` (entries and hard state, no snapshot) synchronously on the
        caller's task, if the shortcut applies (see the module docstring); a job that needs no
        write (at most the commit index moved) only needs this actor idle.

        Returns:
            True if ``job`` is durable now (the caller acknowledges it itself; nothing is
            reported back), False if nothing was done (the caller queues the job as usual).

        Raises:
            StorageFailed: the write or fsync failed (the node must stop, as when this actor
                fails).
        """
        disk = self._disk if isinstance(self._disk, AdaptiveDisk) else None
        # Idle means parked in receive() with nothing buffered: an item sent to a parked
        # receiver is handed over directly (the buffer stays empty) and the receiver stops
        # waiting, so this also refuses while an item is handed over but not yet processed.
        if not self._parked():
            return False
        if job.snapshot is not None:
            return False
        hs = job.hard_state
        written = self._written_hs
        must_write = bool(job.entries) or (
            hs is not None and (job.sync or hs.term != written.term or hs.vote != written.vote)
        )
        if must_write and (disk is None or not disk.loop_is_idle()):
            return False
        # Without a write (the commit index moved) this only records the hard state for the
        # next save, whatever the executor.
        if hs is not None:
            self._pending_hs = hs
        if must_write and disk is not None:
            pending = self._pending_hs
            disk.inline_calls += 1
            self._wal.save(list(job.entries), pending)
            self.saves += 1
            self._pending_hs = None
            if pending is not None:
                self._written_hs = pending
        return True

    async def _process(self, batch: list[WalItem]) -> None:
        entries: list[Entry] = []
        must_write = False  # the batch changes term/vote or appends: it needs a save
        done: list[PersistJob] = []
        markers: list[tuple[MarkerJob, int]] = []

        async def flush(*, force: bool = False) -> None:
            # A hard state that only moved the commit index is not worth an fsync of its own
            # (the commit index is recovered from the leader, as in etcd's MustSync); it rides
            # along with the next save. Snapshot markers and releases force it out first, so
            # a marker never lies above the durable commit index.
            nonlocal must_write
            hs = self._pending_hs
            if entries or must_write or (force and hs is not None):
                await self._disk(self._wal.save, list(entries), hs)
                self.saves += 1
                entries.clear()
                must_write = False
                self._pending_hs = None
                if hs is not None:
                    self._written_hs = hs

        for item in batch:
            if isinstance(item, PersistJob):
                if item.snapshot is not None:
                    await flush(force=True)
                    await self._disk(self._wal.save_snapshot_marker, item.snapshot)
                    self._marker_index = max(self._marker_index, item.snapshot.index)
                    log.debug(
                        "node %d: recorded snapshot marker %d/%d (install)",
                        self._id,
                        item.snapshot.index,
                        item.snapshot.term,
                    )
                    must_write = True  # the commit that covers the snapshot goes out now
                if item.entries:
                    merge_entries(entries, item.entries)
                    must_write = True
                hs = item.hard_state
                if hs is not None:
                    self._pending_hs = hs
                    w = self._written_hs
                    if item.sync or hs.term != w.term or hs.vote != w.vote:
                        must_write = True
                if not item.acked:
                    done.append(item)
            elif isinstance(item, MarkerJob):
                if item.meta.index <= self._marker_index:
                    log.info(
                        "node %d: snapshot %d not recorded: snapshot %d is newer",
                        self._id,
                        item.meta.index,
                        self._marker_index,
                    )
                    markers.append((item, self._marker_index))
                    continue
                await flush(force=True)
                await self._disk(self._wal.save_snapshot_marker, item.meta)
                self._marker_index = item.meta.index
                markers.append((item, 0))
            else:
                await flush(force=True)
                await self._disk(self._wal.release_to, item.index)
        await flush()
        if done:
            self._raft_inbox.send_nowait(Persisted(tuple(done)))
        for m, newer in markers:
            m.done.set_result(newer)
