"""Cheap idle checks for the shortcuts on every message's path (``RaftActor.handle_now``,
``WalActor.persist_now``, ``FsmActor.apply_now``, ``AdaptiveDisk``, the lone-proposer check).

Why: Trio's public ``statistics()`` calls build a fresh attrs object each time (the run loop's
also walks the I/O manager's registrations), and a single proposal asks them half a dozen times
per node: a measurable share of the Python CPU per proposal. The answers come straight from the
two containers Trio keeps (a memory channel's buffer and waiting receivers, the run queue) when
they are where this Trio version keeps them; otherwise (another Trio version) from the public
statistics, with the same results. A test pins the two ways to agree.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import trio

__all__ = ["receiver_parked", "tasks_runnable"]


def _slow_parked(channel: trio.MemoryReceiveChannel[Any]) -> Callable[[], bool]:
    def parked() -> bool:
        st = channel.statistics()
        return st.tasks_waiting_receive > 0 and st.current_buffer_used == 0

    return parked


def receiver_parked(channel: trio.MemoryReceiveChannel[Any]) -> Callable[[], bool]:
    """A function telling whether a task waits in ``receive`` on ``channel`` with nothing
    buffered (the receiving actor is parked and idle).

    Args:
        channel: a memory channel's receive side.
    """
    state = getattr(channel, "_state", None)
    data = getattr(state, "data", None)
    tasks = getattr(state, "receive_tasks", None)
    if type(data) is not deque or not isinstance(tasks, dict):
        return _slow_parked(channel)
    # Trio keeps both containers for the channel's life (it clears them, never replaces them).

    def parked() -> bool:
        return bool(tasks) and not data

    return parked


def _slow_runnable() -> int:
    return trio.lowlevel.current_statistics().tasks_runnable


def _find_run_context() -> Any:
    try:
        from trio._core._run_context import GLOBAL_RUN_CONTEXT
    except ImportError:  # pragma: no cover - another Trio layout
        return None
    return GLOBAL_RUN_CONTEXT


_RUN_CONTEXT = _find_run_context()


def tasks_runnable() -> int:
    """The number of tasks scheduled to run in the current Trio run (``tasks_runnable`` of
    ``trio.lowlevel.current_statistics()``)."""
    runner = getattr(_RUN_CONTEXT, "runner", None)
    runq = getattr(runner, "runq", None)
    if type(runq) is not deque:
        return _slow_runnable()
    return len(runq)
