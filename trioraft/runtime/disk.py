"""The seam through which the runtime performs blocking disk I/O.

The storage layer is synchronous. In production every call goes to a worker thread with
``trio.to_thread.run_sync`` so the event loop never blocks on a write or an fsync. Tests that run
on a simulated file system under ``MockClock(autojump_threshold=0)`` use :data:`INLINE_DISK`
instead: threads would make the mock clock jump while a worker is busy, and an in-memory file
system is fast enough to run inline.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar, TypeVarTuple, Unpack

import outcome
import trio

__all__ = ["INLINE_DISK", "DiskExecutor", "InlineDisk", "SerialThreadDisk", "ThreadDisk"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class DiskExecutor(Protocol):
    """Runs a blocking function and returns its result (or raises its exception)."""

    async def __call__(self, fn: Callable[[Unpack[Ts]], T], *args: *Ts) -> T: ...


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


class InlineDisk:
    """Runs each call directly on the event loop, then yields once (a checkpoint) so callers
    still get a scheduling point. For simulated file systems only."""

    async def __call__(self, fn: Callable[[Unpack[Ts]], T], *args: *Ts) -> T:
        result = fn(*args)
        await trio.lowlevel.checkpoint()
        return result


#: The shared inline executor.
INLINE_DISK = InlineDisk()
