"""In-memory cluster (MockClock): election, replication, proposals (incl. from a follower),
linearizable reads, leadership transfer, leader crash and failover, lifecycle and failures."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from trioraft import AmbiguousOutcome, NodeStopped, NotLeader, Timeout
from trioraft.core.ready import Role
from trioraft.node import LeaderInfo, RaftNode
from trioraft.testing.cluster import Cluster, ListStateMachine, open_cluster


def records(cluster: Cluster, node_id: int) -> list[bytes]:
    sm: ListStateMachine = cluster.state_machine(node_id)
    return sm.data


def followers(cluster: Cluster, leader: RaftNode) -> list[RaftNode]:
    return [n for n in cluster.running if n.id != leader.id]


async def test_election_and_replication(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3) as cluster:
        leader = await cluster.wait_for_leader()
        assert sum(n.is_leader for n in cluster.running) == 1
        assert leader.term >= 2  # the bootstrap entries are term 1
        assert await leader.propose(b"hello") == 1
        assert await leader.propose(b"world") == 2
        await cluster.wait_applied(leader.commit_index)
        for node in cluster.running:
            assert records(cluster, node.id) == [b"hello", b"world"]
            assert node.leader == leader.id


async def test_single_node_cluster(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(1) as cluster:
        leader = await cluster.wait_for_leader()
        assert leader.id == 1
        assert await leader.propose(b"x") == 1
        await leader.read_barrier()


async def test_proposal_on_follower_is_forwarded_and_returns_the_result(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster(3) as cluster:
        leader = await cluster.wait_for_leader()
        f = followers(cluster, leader)[0]
        assert await f.propose(b"a") == 1
        assert await f.propose(b"b") == 2
        results = []
        async with trio.open_nursery() as nursery:
            for i in range(20):

                async def one(i: int = i) -> None:
                    results.append(await f.propose(b"c%d" % i))

                nursery.start_soon(one)
        assert sorted(results) == list(range(3, 23))
        await cluster.wait_applied(leader.commit_index)
        assert records(cluster, f.id)[:2] == [b"a", b"b"]


async def test_not_leader_without_forwarding(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3, forward_proposals=False) as cluster:
        leader = await cluster.wait_for_leader()
        f = followers(cluster, leader)[0]
        with pytest.raises(NotLeader) as info:
            await f.propose(b"x")
        assert info.value.leader_hint == leader.id
        with pytest.raises(NotLeader):
            await f.add_learner(9)


async def test_read_barrier_is_linearizable_on_followers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster(3) as cluster:
        leader = await cluster.wait_for_leader()
        f = followers(cluster, leader)[0]
        # Slow the follower's link so it lags behind the leader's commits.
        cluster.network.set_delay(0.5, 0.5, src=leader.id, dst=f.id)
        for i in range(5):
            await leader.propose(b"%d" % i)
        assert len(records(cluster, f.id)) < 5
        index = await f.read_barrier()
        assert index >= 5 + 3  # covers every completed write (after the 3 bootstrap entries)
        assert records(cluster, f.id) == [b"%d" % i for i in range(5)]
        assert await leader.read_barrier() >= index


async def test_read_barrier_times_out_without_quorum(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster(3) as cluster:
        leader = await cluster.wait_for_leader()
        cluster.network.isolate(leader.id)
        with pytest.raises(Timeout):
            await leader.read_barrier(timeout=0.5)
        with pytest.raises(AmbiguousOutcome):
            await leader.propose(b"lost?", timeout=0.5)


async def test_lease_reads(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3, read_mode="lease") as cluster:
        leader = await cluster.wait_for_leader()
        await leader.propose(b"x")
        assert await leader.read_barrier() >= 1


async def test_leader_crash_and_failover(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3) as cluster:
        leader = await cluster.wait_for_leader()
        for i in range(10):
            await leader.propose(b"%d" % i)
        old = leader.id
        await cluster.crash(old)
        new = await cluster.wait_for_leader()
        assert new.id != old
        await new.propose(b"after")
        await cluster.restart(old)
        await cluster.wait_for_leader()
        await cluster.wait_applied(new.commit_index)
        expected = [b"%d" % i for i in range(10)] + [b"after"]
        for node in cluster.running:
            assert records(cluster, node.id) == expected


async def test_leadership_transfer(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3) as cluster:
        leader = await cluster.wait_for_leader()
        await leader.propose(b"x")
        target = followers(cluster, leader)[0]
        await leader.transfer_leadership(target.id)
        assert target.is_leader
        new = await cluster.wait_for_leader()
        assert new.id == target.id
        # asked on a follower, forwarded to the leader
        back = leader
        await back.transfer_leadership(back.id)
        assert back.is_leader
        assert await back.propose(b"y") == 2


async def test_leader_changes_and_hooks(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3) as cluster:
        leader = await cluster.wait_for_leader()
        await leader.propose(b"x")
        seen: list[LeaderInfo] = []
        target = followers(cluster, leader)[0]

        subscribed = trio.Event()

        async def watch() -> None:
            async for info in leader.leader_changes():
                seen.append(info)
                subscribed.set()
                if info.leader == target.id:
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            await subscribed.wait()  # the watcher has seen the current leader
            await leader.transfer_leadership(target.id)
        assert seen[0].leader == leader.id and seen[0].is_self
        assert seen[-1].leader == target.id and not seen[-1].is_self
        await cluster.wait_applied(target.commit_index)
        old_sm: ListStateMachine = cluster.state_machine(leader.id)
        new_sm: ListStateMachine = cluster.state_machine(target.id)
        assert [k for k, _ in old_sm.leader_terms] == ["start", "stop"]
        assert [k for k, _ in new_sm.leader_terms] == ["start"]


async def test_status(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3) as cluster:
        leader = await cluster.wait_for_leader()
        await leader.propose(b"x")
        await cluster.wait_applied(leader.commit_index)
        st = leader.status()
        assert st.id == leader.id and st.role == Role.LEADER and st.leader == leader.id
        assert st.commit == st.applied == st.last_index
        assert st.first_index == 1
        assert st.snapshot_index == 0
        assert st.conf.voters == frozenset({1, 2, 3})
        assert set(st.progress) == {1, 2, 3}
        assert st.progress[followers(cluster, leader)[0].id].match == st.last_index
        fst = followers(cluster, leader)[0].status()
        assert fst.role == Role.FOLLOWER and fst.progress == {}


async def test_stopped_node_refuses_and_fails_waiters(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster(3) as cluster:
        leader = await cluster.wait_for_leader()
        cluster.network.isolate(leader.id)
        outcome: list[BaseException] = []

        async def pending() -> None:
            try:
                await leader.propose(b"never", timeout=None)
            except BaseException as exc:
                outcome.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pending)
            await cluster.wait_until(lambda: leader.status().pending_proposals == 1)
            await cluster.stop(leader.id)
        assert len(outcome) == 1 and isinstance(outcome[0], NodeStopped)
        with pytest.raises(NodeStopped):
            await leader.propose(b"x")


class Exploding(ListStateMachine):
    def apply(self, index: int, data: bytes) -> int:
        if data == b"boom":
            raise ZeroDivisionError("state machine bug")
        return super().apply(index, data)


async def test_actor_failure_fails_the_node_with_the_original_exception(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from trioraft.config import Config
    from trioraft.node import open_raft_node
    from trioraft.runtime.disk import INLINE_DISK
    from trioraft.runtime.transport.memory import MemoryNetwork
    from trioraft.storage.fs import SimulatedFileSystem

    net = MemoryNetwork(0)
    with pytest.raises(ZeroDivisionError, match="state machine bug"):
        async with open_raft_node(
            Config(id=1),
            Exploding(),
            data_dir="/d",
            transport=net.transport(1, disk=INLINE_DISK),
            fs=SimulatedFileSystem(),
            disk=INLINE_DISK,
        ) as node:
            await node.wait_for_leader()
            await node.propose(b"ok")
            await node.propose(b"boom")
            await trio.sleep_forever()


async def test_user_exception_in_block_propagates_unwrapped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with pytest.raises(KeyError):
        async with open_cluster(1) as cluster:
            await cluster.wait_for_leader()
            raise KeyError("mine")


async def test_read_barrier_survives_a_lost_read_request(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster(3) as cluster:
        leader = await cluster.wait_for_leader()
        await leader.propose(b"x")
        f = followers(cluster, leader)[0]
        cluster.network.block(f.id, leader.id)  # the forwarded ReadIndexRequest is lost

        async def heal() -> None:
            await trio.sleep(0.3)
            cluster.network.unblock(f.id, leader.id)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(heal)
            assert await f.read_barrier(timeout=5) >= 4


async def test_cluster_helper_on_real_disks(tmp_path: Path) -> None:
    """The in-memory cluster also runs on real data directories (real time, disk threads)."""
    with trio.fail_after(30):
        async with open_cluster(
            3, simulated_fs=False, base_dir=str(tmp_path), tick_interval=0.02
        ) as cluster:
            leader = await cluster.wait_for_leader()
            assert await leader.propose(b"x") == 1
            await cluster.crash(leader.id)  # a real disk keeps what was written
            await cluster.restart(leader.id)
            await cluster.wait_for_leader()
            await cluster.wait_applied(leader.commit_index)
    assert (tmp_path / "node-1" / "wal").is_dir()
