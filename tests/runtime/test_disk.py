"""The disk executors (real worker threads: no mock clock)."""

from __future__ import annotations

import threading

import pytest
import trio

from trioraft.runtime.disk import AdaptiveDisk, SerialThreadDisk


async def _spin(rounds: int) -> None:
    for _ in range(rounds):
        await trio.lowlevel.checkpoint()


async def test_adaptive_disk_runs_inline_when_nothing_else_is_runnable() -> None:
    disk = AdaptiveDisk()
    assert await disk(threading.get_ident) == threading.get_ident()
    assert (disk.inline_calls, disk.thread_calls) == (1, 0)


class _BusyDisk(AdaptiveDisk):
    def loop_is_idle(self) -> bool:
        return False


async def test_adaptive_disk_uses_a_thread_while_other_tasks_are_runnable() -> None:
    disk = _BusyDisk()
    assert await disk(threading.get_ident) != threading.get_ident()
    assert (disk.inline_calls, disk.thread_calls) == (0, 1)


async def test_adaptive_disk_sees_runnable_tasks() -> None:
    disk = AdaptiveDisk()
    assert disk.loop_is_idle()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_spin, 3)
        assert not disk.loop_is_idle()  # the new task waits for the next batch


@pytest.mark.parametrize("busy", [False, True])
async def test_adaptive_disk_propagates_exceptions(busy: bool) -> None:
    def fail() -> None:
        raise OSError("disk on fire")

    disk = _BusyDisk() if busy else AdaptiveDisk()
    with pytest.raises(OSError, match="on fire"):
        await disk(fail)


async def test_serial_thread_disk_runs_in_a_worker_thread() -> None:
    assert await SerialThreadDisk()(threading.get_ident) != threading.get_ident()


async def test_adaptive_disk_never_blocks_a_loop_shared_by_several_nodes() -> None:
    a, b = AdaptiveDisk(), AdaptiveDisk()
    a.attach()
    assert a.loop_is_idle()
    b.attach()
    b.attach()  # idempotent
    assert not a.loop_is_idle() and not b.loop_is_idle()
    assert await a(threading.get_ident) != threading.get_ident()
    b.detach()
    b.detach()
    assert a.loop_is_idle()
    a.detach()
