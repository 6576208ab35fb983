"""The seam through which the runtime performs blocking disk I/O.

The storage layer is synchronous. In production every call goes to a worker thread with
``trio.to_thread.run_sync`` so the event loop never blocks on a write or an fsync. Tests that run
on a simulated file system under ``MockClock(autojump_threshold=0)`` use :data:`INLINE_DISK`
instead: threads would make the mock clock jump while a worker is busy, and an in-memory file
system is fast enough to run inline.

Besides awaiting a call, a caller may start one and collect it later (:func:`start_call`, an
executor's optional ``start``): the snapshot writer overlaps a chunk's write with producing the
next that way. The worker-thread executors start the thread at once; :class:`InlineDisk` runs
the call at once, so under the mock clock the file system still sees the program's order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar, TypeVarTuple, Unpack

import outcome
import trio

from trioraft.runtime.idle import tasks_runnable

__all__ = [
    "INLINE_DISK",
    "AdaptiveDisk",
    "DiskExecutor",
    "InlineDisk",
    "PendingCall",
    "SerialThreadDisk",
    "ThreadDisk",
    "start_call",
]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class DiskExecutor(Protocol):
    """Runs a blocking function and returns its result (or raises its exception)."""

    async def __call__(self, fn: Callable[[Unpack[Ts]], T], *args: *Ts) -> T: ...


class PendingCall(Generic[T]):
    """A blocking call started with :func:`start_call`: it runs (in a worker thread, or
    already ran inline) while its starter goes on; :meth:`wait` collects the outcome."""

    def __init__(self) -> None:
        self._done = trio.Event()
        self._result: outcome.Value[T] | None = None
        self._error: BaseException | None = None

    @property
    def done(self) -> bool:
        """The call has returned or raised (its outcome may not be collected yet)."""
        return self._done.is_set()

    def _finish(self, result: outcome.Outcome[T]) -> None:
        if isinstance(result, outcome.Value):
            self._result = result
        elif isinstance(result, outcome.Error):
            self._error = result.error
        self._done.set()

    async def wait(self) -> T:
        """Wait for the call to end (a checkpoint even if it already has) and return its result
        or raise its exception; may be called again, with the same outcome. Cancelling the wait
        does not stop the call: wait again (say, shielded) before touching what it uses.
        """
        await self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result.value


def _start_thread(
    fn: Callable[[], T], limiter: trio.CapacityLimiter | None = None
) -> PendingCall[T]:
    """Start ``fn`` in a worker thread now (no checkpoint, unlike ``trio.to_thread``)."""
    pending: PendingCall[T] = PendingCall()
    token = trio.lowlevel.current_trio_token()
    if limiter is not None:
        limiter.acquire_on_behalf_of_nowait(pending)  # raises WouldBlock when all are in use

    def finish(result: outcome.Outcome[T]) -> None:
        if limiter is not None:
            limiter.release_on_behalf_of(pending)
        pending._finish(result)

    def deliver(result: outcome.Outcome[T]) -> None:
        with contextlib.suppress(trio.RunFinishedError):  # nobody is left to collect it
            token.run_sync_soon(finish, result)

    trio.lowlevel.start_thread_soon(fn, deliver)
    return pending


def start_call(
    disk: DiskExecutor, fn: Callable[[Unpack[Ts]], T], *args: *Ts
) -> PendingCall[T] | None:
    """Start ``fn(*args)`` through ``disk`` without waiting for it, if ``disk`` can (it has a
    ``start`` method, like the executors here): the caller then overlaps its own work with the
    call. Returns ``None`` when it cannot; the caller then awaits ``disk(fn, *args)`` instead.
    """
    start = getattr(disk, "start", None)
    if start is None:
        return None
    pending: PendingCall[T] | None = start(fn, *args)
    return pending


class ThreadDisk:
    """Runs each call in a Trio worker thread. Cancellation waits for the call to finish, so a
    write is never left half-done behind the caller's back.

    Args:
        limiter: bounds the number of concurrent disk threads (default: trio's global limiter).
    """

    def __init__(self, limiter: trio.CapacityLimiter | None = None) -> None:
        self._limiter = limiter

    async def __call__(self, fn: Callable[[Unpack[Ts]], T], *args: *Ts) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    def start(self, fn: Callable[[Unpack[Ts]], T], *args: *Ts) -> PendingCall[T] | None:
        """Start the call in a worker thread now (see :func:`start_call`); ``None`` when the
        limiter has no token free."""
        limiter = self._limiter or trio.to_thread.current_default_thread_limiter()
        try:
            return _start_thread(lambda: fn(*args), limiter)
        except trio.WouldBlock:
            return None


class SerialThreadDisk:
    """Runs each call in a worker thread with the least overhead Trio allows: no capacity
    limiter, no thread renaming, no context copy (about half the event-loop CPU and latency of
    ``trio.to_thread.run_sync`` per call). Meant for a caller that makes one call at a time,
    such as the WAL actor's group commits, where the round trip is on every write's critical
    path. Cancellation waits for the call to finish, like :class:`ThreadDisk`.
    """

    async def __call__(self, fn: Callable[[Unpack[Ts]], T], *args: *Ts) -> T:
        task = trio.lowlevel.current_task()
        token = trio.lowlevel.current_trio_token()

        def deliver(result: outcome.Outcome[T]) -> None:
            token.run_sync_soon(trio.lowlevel.reschedule, task, result)

        trio.lowlevel.start_thread_soon(lambda: fn(*args), deliver)

        def abort(_: Any) -> trio.lowlevel.Abort:
            # The call cannot be interrupted: the task stays parked until it returns, and the
            # cancellation is raised at the caller's next checkpoint.
            return trio.lowlevel.Abort.FAILED

        result: T = await trio.lowlevel.wait_task_rescheduled(abort)
        return result

    def start(self, fn: Callable[[Unpack[Ts]], T], *args: *Ts) -> PendingCall[T]:
        """Start the call in a worker thread now (see :func:`start_call`)."""
        return _start_thread(lambda: fn(*args))


class InlineDisk:
    """Runs each call directly on the event loop, then yields once (a checkpoint) so callers
    still get a scheduling point. For simulated file systems only."""

    async def __call__(self, fn: Callable[[Unpack[Ts]], T], *args: *Ts) -> T:
        result = fn(*args)
        await trio.lowlevel.checkpoint()
        return result

    def start(self, fn: Callable[[Unpack[Ts]], T], *args: *Ts) -> PendingCall[T]:
        """Run the call right now, inline (see :func:`start_call`): the returned call is
        done, and its outcome is collected by ``await pending.wait()`` (a checkpoint), so the
        order of file-system operations is exactly the program's."""
        pending: PendingCall[T] = PendingCall()
        pending._finish(outcome.capture(fn, *args))
        return pending


#: Nodes of this Trio run whose WAL uses an :class:`AdaptiveDisk` (see there).
_ADAPTIVE_NODES: trio.lowlevel.RunVar[int] = trio.lowlevel.RunVar(
    "trioraft_adaptive_nodes", default=0
)


class AdaptiveDisk:
    """Runs a call inline when no other task of this event loop is ready to run, else in a
    worker thread like :class:`SerialThreadDisk`. Meant for the WAL actor's group commits of
    a node that has its event loop to itself: while several nodes share one loop (tests,
    in-process clusters; counted with :meth:`attach`/:meth:`detach`), every call goes to the
    thread, since one node's fsync would stall the others.

    Why: a worker-thread round trip costs a lock hand-off, a GIL hand-off and a wake-up of
    the event loop (tens of microseconds each on a busy VM, on every write's critical path),
    and the worker's Python code competes with the event loop for the GIL. When nothing else
    is runnable, blocking the loop for the write and fdatasync costs nothing: the tasks that
    would run meanwhile (say, acknowledgements arriving) cannot arrive before the peers' own
    fsyncs anyway, and etcd's raft loop likewise saves its WAL synchronously. When other
    tasks are runnable they keep running while the thread waits for the disk. Cancellation
    waits for the call to finish either way.

    One instance per node: the count of nodes sharing the loop is kept per instance, so an
    instance passed to several nodes would count them once (and run their fsyncs inline on a
    shared loop).
    """

    def __init__(self) -> None:
        self._thread = SerialThreadDisk()
        self._attached = False
        #: calls run inline / in a thread so far
        self.inline_calls = 0
        self.thread_calls = 0

    def attach(self) -> None:
        """Count this executor's node as running in the current Trio run."""
        if not self._attached:
            self._attached = True
            _ADAPTIVE_NODES.set(_ADAPTIVE_NODES.get() + 1)

    def detach(self) -> None:
        """Undo :meth:`attach` (idempotent)."""
        if self._attached:
            self._attached = False
            _ADAPTIVE_NODES.set(_ADAPTIVE_NODES.get() - 1)

    async def __call__(self, fn: Callable[[Unpack[Ts]], T], *args: *Ts) -> T:
        # Let the tasks already scheduled alongside this one run first (say, the FSM actor
        # applying entries this Ready committed), then look at what is runnable.
        await trio.lowlevel.cancel_shielded_checkpoint()
        if self.loop_is_idle():
            # No checkpoint after the call: the caller's next await is one, and the WAL
            # actor hands the acknowledgement over before it, one scheduling round sooner.
            self.inline_calls += 1
            return fn(*args)
        self.thread_calls += 1
        return await self._thread(fn, *args)

    def loop_is_idle(self) -> bool:
        """Would a call run inline now? False while other nodes share the event loop or
        other tasks are scheduled to run."""
        # Tasks scheduled for the next batch, not those later in the current batch (which
        # the checkpoint in __call__ lets run first in most cases): a heuristic.
        if _ADAPTIVE_NODES.get() > 1:
            return False
        return tasks_runnable() == 0


#: The shared inline executor.
INLINE_DISK = InlineDisk()
