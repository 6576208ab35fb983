"""Correlation of client requests with their outcomes: proposal futures keyed by log index,
read-index requests keyed by a context, and waiters for the applied index.

All of these live on the event loop thread and are touched only by the raft and FSM actors, so
they need no locking; each operation is synchronous.
"""

from __future__ import annotations

import heapq
import itertools
import os
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import trio

from trioraft.errors import AmbiguousOutcome, ProposalDropped

__all__ = ["AppliedWaiters", "Deadlines", "Future", "ProposalTracker", "ReadBatcher", "Slots"]

T = TypeVar("T")


class Future(Generic[T]):
    """A one-shot result slot awaited by one task. Setting it twice keeps the first outcome, so
    racing resolvers (a timeout and a late apply, a shutdown and a result) are harmless.

    Waiters park directly on the scheduler (no ``trio.Event`` and parking lot per future): one is
    created for every proposal, so this is on the hot path.
    """

    __slots__ = ("_done", "_error", "_has_value", "_value", "_waiters", "abandoned")

    def __init__(self) -> None:
        self._done = False
        self._value: T | None = None
        self._error: BaseException | None = None
        self._has_value = False
        self._waiters: list[trio.lowlevel.Task] | None = None
        #: set by the waiter when it stops waiting (timeout, cancellation)
        self.abandoned = False

    def done(self) -> bool:
        """True once a result or an exception is set."""
        return self._done

    def _wake(self) -> None:
        self._done = True
        waiters = self._waiters
        if waiters:
            self._waiters = None
            for task in waiters:
                trio.lowlevel.reschedule(task)

    def set_result(self, value: T) -> None:
        """Resolve with ``value`` (ignored if already resolved)."""
        if not self._done:
            self._value = value
            self._has_value = True
            self._wake()

    def set_exception(self, error: BaseException) -> None:
        """Resolve with ``error`` (ignored if already resolved)."""
        if not self._done:
            self._error = error
            self._wake()

    def result(self) -> T:
        """The result (raises the stored exception). Only valid when :meth:`done`."""
        if self._error is not None:
            raise self._error
        assert self._has_value
        return self._value  # type: ignore[return-value]

    async def wait(self) -> T:
        """Wait for the outcome; marks the future abandoned if the wait is cancelled."""
        try:
            if self._done:
                await trio.lowlevel.checkpoint()
            else:
                task = trio.lowlevel.current_task()
                if self._waiters is None:
                    # The usual case, one waiter: a bound method as the abort function instead
                    # of a closure (one object alive during the wait instead of four).
                    self._waiters = [task]
                    await trio.lowlevel.wait_task_rescheduled(self._abort_first)
                else:
                    await self._wait_behind(task)
        except BaseException:
            self.abandoned = True
            raise
        return self.result()

    async def _wait_behind(self, task: trio.lowlevel.Task) -> None:
        # Another task already waits. (A separate function so that wait() itself has no
        # variables captured by a closure: those would be cell objects made on every call.)
        waiters = self._waiters
        assert waiters is not None
        waiters.append(task)

        def abort(_: Any) -> trio.lowlevel.Abort:
            if self._waiters is not None and task in self._waiters:
                self._waiters.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def _abort_first(self, _: Any) -> trio.lowlevel.Abort:
        # The waiter that found no other waiters: it is the first in the list (later ones
        # append; an aborted one removes only itself), unless a wake-up emptied the list.
        waiters = self._waiters
        if waiters:
            del waiters[0]
        return trio.lowlevel.Abort.SUCCEEDED


class ProposalTracker:
    """Proposals appended to the log by this node's core, waiting for their entry to apply.

    A proposal is identified by (term, index) at the moment the leader appended it. When the
    entry at ``index`` is applied, the same term means it is our entry and the state machine's
    result is ours; any other term means our entry was overwritten by a later leader.
    """

    def __init__(self) -> None:
        self._pending: dict[int, tuple[int, Future[Any]]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, index: int, term: int, future: Future[Any]) -> None:
        """Track ``future`` for the entry the core appended at (term, index)."""
        old = self._pending.get(index)
        if old is not None:
            # The same index was proposed again in a newer term: the older entry is gone from
            # this node's log, but another node may still hold it and commit it as leader of a
            # later term (Raft's figure 8), so its outcome is unknown, not "not done".
            old[1].set_exception(
                AmbiguousOutcome(
                    f"entry {index} of term {old[0]} was overwritten here by a newer leader's "
                    "log; another node may still commit it"
                )
            )
        self._pending[index] = (term, future)

    def applied(self, index: int, term: int, result: Any) -> None:
        """The entry (term, index) was applied with ``result``."""
        item = self._pending.pop(index, None)
        if item is None:
            return
        want_term, future = item
        if want_term == term:
            future.set_result(result)
        else:
            future.set_exception(
                ProposalDropped(
                    "superseded", f"index {index} holds an entry of term {term}, not {want_term}"
                )
            )

    def failed(self, index: int, term: int, error: BaseException) -> None:
        """The entry (term, index) was applied but produced ``error`` for its proposer."""
        item = self._pending.pop(index, None)
        if item is None:
            return
        want_term, future = item
        if want_term == term:
            future.set_exception(error)
        else:
            future.set_exception(ProposalDropped("superseded", f"index {index} overwritten"))

    def covered_by_snapshot(self, index: int) -> None:
        """A snapshot up to ``index`` replaced the state: earlier proposals' outcomes are unknown
        (their entries may or may not be inside the snapshot)."""
        for idx in [i for i in self._pending if i <= index]:
            _, future = self._pending.pop(idx)
            future.set_exception(
                AmbiguousOutcome(f"entry {idx} was covered by snapshot {index}; outcome unknown")
            )

    def fail_all(self, error: BaseException) -> None:
        """Fail every pending proposal (shutdown)."""
        pending, self._pending = self._pending, {}
        for _, future in pending.values():
            future.set_exception(error)


class ReadBatcher:
    """Coalesces read-barrier requests: every request queued before the raft actor next calls
    ``core.read_index`` shares that call's context and its resulting read index, which is
    correct because all of them started before the leadership check the call triggers.

    A context is ``node_id | run_id | counter``. ``run_id`` (8 bytes, fresh random bytes by
    default) tells this run's contexts from those of the node's earlier runs: the counter
    restarts at 1 in every run, and a leader may still hold (and later answer) a read the node
    issued before it restarted, admitted at an older commit index. That answer must not
    resolve a new read that happens to reuse the context, or the read could miss a write that
    completed before it started.
    """

    def __init__(self, node_id: int, run_id: bytes | None = None) -> None:
        if run_id is None:
            run_id = os.urandom(8)
        self._prefix = node_id.to_bytes(8, "big") + run_id
        self._seq = itertools.count(1)
        self._queued: list[Future[int]] = []
        self._issued: dict[bytes, list[Future[int]]] = {}

    def queue(self, future: Future[int]) -> None:
        """Queue a read request until the next :meth:`take_batch`."""
        self._queued.append(future)

    def take_batch(self) -> tuple[bytes, list[Future[int]]] | None:
        """Take the queued requests as one batch with a fresh context (or None if empty)."""
        futures = [f for f in self._queued if not f.abandoned]
        self._queued = []
        if not futures:
            return None
        ctx = self._prefix + next(self._seq).to_bytes(8, "big")
        self._issued[ctx] = futures
        return ctx, futures

    def resolved(self, context: bytes, index: int) -> None:
        """The core answered ``context`` with read index ``index``."""
        for f in self._issued.pop(context, ()):
            f.set_result(index)

    def requeue(self, context: bytes) -> None:
        """Put the batch issued as ``context`` back in the queue (it could not be issued)."""
        self._queued[:0] = self._issued.pop(context, [])

    def requeue_all(self) -> None:
        """Put every issued batch back in the queue (the leader changed; answers to the old
        contexts are ignored from now on)."""
        issued, self._issued = self._issued, {}
        for futures in issued.values():
            self._queued.extend(f for f in futures if not f.done())

    @property
    def issued(self) -> bool:
        """True if batches wait for their read index."""
        return bool(self._issued)

    @property
    def queued(self) -> bool:
        """True if requests wait to be issued."""
        return bool(self._queued)

    def fail_all(self, error: BaseException) -> None:
        """Fail every queued or issued read (leader loss, shutdown)."""
        for f in self._queued:
            f.set_exception(error)
        self._queued = []
        issued, self._issued = self._issued, {}
        for futures in issued.values():
            for f in futures:
                f.set_exception(error)


class AppliedWaiters:
    """Tasks waiting for the applied index to reach some value (read barriers, tests)."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, trio.Event]] = []
        self._seq = itertools.count()
        #: ids of the events in the heap whose waiter stopped waiting (see :meth:`discard`)
        self._gone: set[int] = set()

    def __len__(self) -> int:
        """Waiters still waiting."""
        return len(self._heap) - len(self._gone)

    def add(self, index: int) -> trio.Event:
        """An event set once the applied index reaches ``index``."""
        event = trio.Event()
        heapq.heappush(self._heap, (index, next(self._seq), event))
        return event

    def discard(self, event: trio.Event) -> None:
        """Forget ``event`` (from :meth:`add`): its waiter stopped waiting (timeout,
        cancellation). Dropped lazily, all at once when they are half the entries, so a waiter
        for an index that is never applied does not stay forever."""
        if event.is_set():
            return
        gone = self._gone
        gone.add(id(event))
        heap = self._heap
        if 2 * len(gone) >= len(heap):
            live = []
            for entry in heap:
                if id(entry[2]) in gone:
                    entry[2].set()  # nobody waits; set, a second discard is a no-op
                else:
                    live.append(entry)
            heap[:] = live
            heapq.heapify(heap)
            gone.clear()

    def advance(self, applied: int) -> None:
        """Wake everyone waiting for an index <= ``applied``."""
        heap = self._heap
        gone = self._gone
        while heap and heap[0][0] <= applied:
            event = heapq.heappop(heap)[2]
            if gone:
                gone.discard(id(event))
            event.set()

    def wake_all(self) -> None:
        """Wake everyone (shutdown; waiters re-check why they woke)."""
        for _, _, event in self._heap:
            event.set()
        self._heap = []
        self._gone.clear()


class Deadlines:
    """Fails futures whose deadline passed, from one timer task (cheaper than a cancel scope
    per request on the hot path). A future failed this way is marked abandoned, so a request
    not yet handed to the core is never proposed."""

    #: heap size below which resolved entries are left for the timer task to pop
    COMPACT_MIN = 1024

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Future[Any], Callable[[], BaseException]]] = []
        self._seq = itertools.count()
        self._wake = trio.Event()
        self._compact_at = self.COMPACT_MIN

    def __len__(self) -> int:
        """Entries held, resolved ones not yet dropped included."""
        return len(self._heap)

    def add(self, deadline: float, future: Future[Any], error: Callable[[], BaseException]) -> None:
        """Fail ``future`` with ``error()`` at ``deadline`` unless it is resolved by then.

        Futures without a deadline (``inf``) are held too, for :meth:`fail_all`."""
        heap = self._heap
        if len(heap) >= self._compact_at:
            # With one fixed timeout, deadlines only grow: a resolved request would otherwise
            # stay (with its result) until its deadline reaches the top, i.e. rate x timeout
            # entries. Dropping them when the heap doubles keeps it at ~2x the live requests.
            # (Also those whose caller stopped waiting: a request dropped unanswered because
            # it was abandoned would otherwise stay forever with an infinite deadline.)
            heap[:] = [e for e in heap if not (e[2].done() or e[2].abandoned)]
            heapq.heapify(heap)
            self._compact_at = max(self.COMPACT_MIN, 2 * len(heap))
        if not heap or deadline < heap[0][0]:
            self._wake.set()
        heapq.heappush(heap, (deadline, next(self._seq), future, error))

    def fail_all(self, error: BaseException) -> None:
        """Fail every future still unresolved with ``error`` (the node stopped: the timer task
        is gone, and a request may have been lost with the actor that was handling it)."""
        heap, self._heap = self._heap, []
        for _, _, future, _ in heap:
            if not future.done():
                future.abandoned = True
                future.set_exception(error)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The timer task; runs until cancelled."""
        task_status.started()
        heap = self._heap
        while True:
            while heap and heap[0][2].done():
                heapq.heappop(heap)
            if not heap:
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            deadline = heap[0][0]
            if trio.current_time() < deadline:
                with trio.move_on_at(deadline):
                    await self._wake.wait()
                if self._wake.is_set():
                    self._wake = trio.Event()
                continue
            _, _, future, error = heapq.heappop(heap)
            if not future.done():
                future.abandoned = True
                future.set_exception(error())


class Slots:
    """A counting limit that costs nothing while below the limit (unlike ``trio.Semaphore``,
    whose ``acquire`` always yields to the scheduler)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self.used = 0
        self._freed = trio.Event()
        self._waiting = 0

    def try_acquire(self) -> bool:
        """Take a slot if one is free, without waiting."""
        if self.used < self._limit:
            self.used += 1
            return True
        return False

    async def acquire(self) -> None:
        """Take a slot, waiting while all are taken."""
        while self.used >= self._limit:
            self._waiting += 1
            try:
                await self._freed.wait()
            finally:
                self._waiting -= 1
        self.used += 1

    def release(self) -> None:
        """Give a slot back."""
        self.used -= 1
        if self._waiting:
            self._freed.set()
            self._freed = trio.Event()
