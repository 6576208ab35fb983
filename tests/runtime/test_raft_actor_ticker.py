"""The raft actor's ticks: the core measures time in ticks only, so after a stall (a paused
process, a blocked event loop) the ticks missed reach the core, bounded, and before anything
else the actor handles; the ticker task only wakes the actor."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing
from test_raft_actor_batching import _actor

from trioraft.runtime.raft_actor import _TICK


async def test_the_ticker_wakes_the_actor_and_the_actor_takes_the_ticks_due(
    autojump_clock: trio.testing.MockClock,
) -> None:
    actor, _ = _actor()
    core = actor.core
    before = core._clock
    async with trio.open_nursery() as nursery:
        nursery.start_soon(actor._ticker)
        await trio.sleep(0.35)  # ticks due at 0.1, 0.2 and 0.3
        assert actor._inbox.receive_nowait() is _TICK  # woken (not handed ticks)
        assert core._clock == before
        actor._take_due_ticks()
        assert core._clock == before + 3
        actor._take_due_ticks()
        assert core._clock == before + 3  # taken once
        autojump_clock.jump(1.0)  # a stall: due at 0.4 .. 1.3
        actor._take_due_ticks()
        assert core._clock == before + 13
        autojump_clock.jump(100.0)  # far longer: bounded by two election timeouts
        actor._take_due_ticks()
        assert core._clock == before + 13 + 2 * core.config.election_ticks + 3
        nursery.cancel_scope.cancel()


async def _stall_then_two_messages(clock: trio.testing.MockClock, seen: list[int]) -> None:
    marker = object()
    actor, _ = _actor()
    core = actor.core
    real = actor._handle
    start = 0

    def spy(item: Any) -> None:
        if item is marker:
            seen.append(core._clock - start)
        else:
            real(item)

    actor._handle = spy  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        await trio.testing.wait_all_tasks_blocked()
        start = core._clock
        clock.jump(1.0)  # ticks due at 0.1 .. 1.0
        actor._inbox_send.send_nowait(marker)  # wakes the actor (handed over)
        actor._inbox_send.send_nowait(marker)  # queued behind it
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()


def test_after_a_stall_a_queued_message_is_handled_on_the_clock_after_it() -> None:
    # The ticker and whatever brings a message wake in the same scheduling batch, in either
    # order: whichever runs first, the message must not see the clock from before the stall.
    # (Repeated: trio orders a batch at random.)
    for _ in range(20):
        seen: list[int] = []
        clock = trio.testing.MockClock()
        trio.run(_stall_then_two_messages, clock, seen, clock=clock)
        assert seen == [10, 10]
