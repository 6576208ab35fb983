"""In-memory cluster: election, replication, proposals (incl. from a follower), reads."""

from __future__ import annotations

import trio
import trio.testing

from trioraft.testing.cluster import ListStateMachine, open_cluster


async def test_election_and_replication(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3) as cluster:
        leader = await cluster.wait_for_leader()
        n = await leader.propose(b"hello")
        assert n == 1
        await cluster.wait_applied(leader.commit_index)
        for node in cluster.running:
            sm: ListStateMachine = cluster.state_machine(node.id)
            assert sm.data == [b"hello"]
