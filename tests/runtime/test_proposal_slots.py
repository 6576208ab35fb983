"""A proposal that never gets one of the node's proposal slots had no effect: it raises a
plain ``Timeout``, not ``AmbiguousOutcome``."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trioraft.errors import AmbiguousOutcome, Timeout
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
