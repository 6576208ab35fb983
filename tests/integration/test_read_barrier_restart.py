"""Read-index contexts must be unique across a node's runs: a leader may still hold (and later
answer) a read the node issued before it restarted, admitted at an older commit index, and that
answer must not resolve a new read of the restarted node."""

from __future__ import annotations

import trio
import trio.testing

from trioraft.runtime.proposals import Future, ReadBatcher
from trioraft.testing.cluster import open_cluster


async def test_read_barrier_after_restart_is_not_stale(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster(3, read_mode="safe") as cluster:
        leader = await cluster.wait_for_leader()
        lid = leader.id
        fid, oid = (i for i in (1, 2, 3) if i != lid)
        for i in range(3):
            await leader.propose(b"v%d" % i)
        await cluster.wait_applied(leader.commit_index)
        net = cluster.network
        # 1. The follower's read reaches the leader, which cannot confirm it (no quorum).
        net.block(lid, fid)
        net.isolate(oid)
        follower = cluster[fid]
        outcomes: list[BaseException] = []

        async def old_read() -> None:
            try:
                await follower.read_barrier(timeout=100)
            except Exception as exc:
                outcomes.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(old_read)
            # the old read waits at the leader
            await cluster.wait_until(lambda: len(leader._rt.core._read_only) == 1)
            # 2. The follower stops (its read fails), the old read stays at the leader.
            await cluster.stop(fid)
        assert len(outcomes) == 1
        # 3. A write commits through the other follower, before the next heartbeat.
        net.heal()
        net.isolate(fid)
        await leader.propose(b"W")
        write_index = leader.commit_index
        net.heal()
        net.isolate(oid)
        # 4. The follower restarts and reads: the read started after the write completed. The
        # leader's answer to the old read (at the older index) must not resolve it.
        follower = await cluster.restart(fid)
        await follower.wait_for_leader(timeout=10)
        index = await follower.read_barrier(timeout=10)
        assert index >= write_index
        assert b"W" in cluster.state_machine(fid).data
        net.heal()


def test_read_contexts_differ_between_runs_of_a_node() -> None:
    def context(batcher: ReadBatcher) -> bytes:
        batcher.queue(Future())
        batch = batcher.take_batch()
        assert batch is not None
        return batch[0]

    first, second = ReadBatcher(3), ReadBatcher(3)
    assert context(first) != context(second)  # both runs' first contexts
    fixed = ReadBatcher(3, b"r" * 8)
    assert context(fixed) == (3).to_bytes(8, "big") + b"r" * 8 + (1).to_bytes(8, "big")
