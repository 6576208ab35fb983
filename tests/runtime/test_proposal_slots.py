"""A proposal that never gets one of the node's proposal slots had no effect: it raises a
plain ``Timeout``, not ``AmbiguousOutcome``."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trioraft.errors import AmbiguousOutcome, NodeStopped, Timeout
from trioraft.testing.cluster import open_cluster


async def test_waiting_for_a_slot_past_the_timeout_is_a_plain_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster(3, max_pending_proposals=1) as cluster:
        leader = await cluster.wait_for_leader()
        lid = leader.id
        cluster.network.isolate(lid)  # its proposals cannot commit: the one slot stays taken
        outcomes: list[BaseException] = []

        async def first() -> None:
            try:
                await leader.propose(b"stuck", timeout=5.0)
            except AmbiguousOutcome as exc:
                outcomes.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(first)
            await trio.testing.wait_all_tasks_blocked()  # the first proposal holds the slot
            with pytest.raises(Timeout) as info:
                await leader.propose(b"second", timeout=1.0)
            assert not isinstance(info.value, AmbiguousOutcome)
            assert "nothing was proposed" in str(info.value)
        # the first one was handed to Raft: its outcome is unknown
        assert len(outcomes) == 1
        cluster.network.heal()


async def test_slot_waiter_gets_node_stopped_when_the_node_stops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A proposer parked on the slot when the node stops used to take the slot the failed holder
    # gave back, queue into the inbox nobody reads any more and wait forever (its deadline
    # timer died with the node).
    async with open_cluster(3, max_pending_proposals=1) as cluster:
        leader = await cluster.wait_for_leader()
        lid = leader.id
        cluster.network.isolate(lid)  # the slot holder can never commit
        outcomes: dict[str, BaseException] = {}
        both = trio.Event()

        async def propose(name: str, timeout: float | None) -> None:
            try:
                await leader.propose(name.encode(), timeout=timeout)
            except Exception as exc:
                outcomes[name] = exc
            if len(outcomes) == 2:
                both.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(propose, "holder", None)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(propose, "waiter", 50.0)
            await trio.testing.wait_all_tasks_blocked()
            assert leader._rt.proposal_slots.used == 1  # the waiter is parked on the slot
            await cluster.stop(lid)
            with trio.move_on_after(100):
                await both.wait()
            nursery.cancel_scope.cancel()
        assert {k: type(v) for k, v in outcomes.items()} == {
            "holder": NodeStopped,
            "waiter": NodeStopped,
        }
        cluster.network.heal()


async def test_slot_freed_as_the_deadline_passes_is_given_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # When the slot is freed in the scheduler batch in which the waiter's deadline passes, the
    # waiter gets the slot although it is too late: it raised Timeout without giving it back,
    # so each occurrence lost a slot for good.
    async with open_cluster(3, max_pending_proposals=2) as cluster:
        leader = await cluster.wait_for_leader()
        slots = leader._rt.proposal_slots
        assert slots.try_acquire() and slots.try_acquire()  # stand-ins for two proposals
        outcome: list[BaseException] = []

        async def waiter() -> None:
            try:
                await leader.propose(b"x", timeout=1.0)
            except Timeout as exc:
                outcome.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()  # the waiter is parked on the slot
            # a holder finishes in the batch in which the deadline passes (no checkpoint between)
            autojump_clock.jump(1.5)
            slots.release()
        slots.release()  # the other stand-in
        assert len(outcome) == 1
        assert not isinstance(outcome[0], AmbiguousOutcome)
        assert slots.used == 0
        # and every slot can be used again
        assert await leader.propose(b"after") is not None
