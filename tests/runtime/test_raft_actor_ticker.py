"""The raft actor's ticker: the core measures time in ticks, so ticks missed while the event loop
stalled are delivered (bounded) rather than dropped."""

from __future__ import annotations

import trio
import trio.testing
from test_raft_actor_batching import _actor

from trioraft.runtime.raft_actor import _TICK


async def test_ticks_missed_in_a_stall_are_delivered_so_a_lease_lapses(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A stalled leader's core must see the time pass (bounded), or it would keep its lease.
    clock = autojump_clock
    actor, _ = _actor()
    ticks = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(actor._ticker)
        await trio.sleep(0.35)  # three ticks on time
        while actor._inbox.statistics().current_buffer_used:
            assert actor._inbox.receive_nowait() is _TICK
            ticks += 1
        assert ticks == 3
        clock.jump(1.0)  # the loop "stalled" for ten ticks
        await trio.sleep(0.01)
        stalled = 0
        while actor._inbox.statistics().current_buffer_used:
            assert actor._inbox.receive_nowait() is _TICK
            stalled += 1
        assert stalled == 10
        clock.jump(100.0)  # far longer: bounded by two election timeouts
        await trio.sleep(0.01)
        burst = 0
        while actor._inbox.statistics().current_buffer_used:
            actor._inbox.receive_nowait()
            burst += 1
        assert burst == 2 * actor.core.config.election_ticks + 3
        nursery.cancel_scope.cancel()


async def test_after_a_stall_the_actor_hands_the_missed_ticks_to_the_core_before_anything_else(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The ticker may run after the task that brings a read (woken in the same batch), or the
    # actor may drain its queue before any checkpoint: the actor catches up itself, once.
    actor, _ = _actor()
    core = actor.core
    actor._tick_due = trio.current_time() + 0.1
    before = core._clock
    autojump_clock.jump(0.15)  # late, but by less than a tick: the ticker's job
    actor._catch_up_ticks()
    assert core._clock == before
    autojump_clock.jump(0.5)  # a stall: 0.1 .. 0.6 makes six ticks due
    actor._catch_up_ticks()
    assert core._clock == before + 6
    assert actor._ticks_due(trio.current_time()) == 0  # the ticker finds nothing left to send
    autojump_clock.jump(1000.0)
    actor._catch_up_ticks()
    assert core._clock == before + 6 + 2 * core.config.election_ticks + 2 + 1
