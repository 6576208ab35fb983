"""Membership changes on an in-memory cluster: add a learner, promote it, remove nodes (the
leader too), joint changes, and a node that joins after the fact learns the whole history."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trioraft import ProposalDropped
from trioraft.core.ready import Role
from trioraft.core.types import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeTransition,
    ConfChangeType,
)
from trioraft.testing.cluster import ListStateMachine, open_cluster


async def test_add_learner_promote_remove(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3) as cluster:
        leader = await cluster.wait_for_leader()
        for i in range(5):
            await leader.propose(b"%d" % i)
        await cluster.start(4, join=True)
        conf = await leader.add_learner(4, cluster.peers[4])
        assert 4 in conf.learners and 4 not in conf.voters
        await cluster.wait_applied(leader.commit_index, nodes=[4])
        sm4: ListStateMachine = cluster.state_machine(4)
        assert sm4.data == [b"%d" % i for i in range(5)]
        assert cluster[4].status().conf.learners == frozenset({4})
        conf = await leader.promote(4)
        assert conf.voters == frozenset({1, 2, 3, 4})
        conf = await leader.remove(3)
        assert conf.voters == frozenset({1, 2, 4})
        await cluster.stop(3)
        assert await leader.propose(b"after") == 6
        await cluster.wait_applied(leader.commit_index)
        assert sm4.data[-1] == b"after"
        assert cluster[4].status().members.get(4) == "mem://4"


class ConfWatcher(ListStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.confs: list[tuple[int, frozenset[int], frozenset[int]]] = []

    async def on_conf_committed(self, index: int, conf: object) -> None:
        self.confs.append((index, conf.voters, conf.learners))  # type: ignore[attr-defined]


async def test_conf_committed_hook(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3, lambda _: ConfWatcher()) as cluster:
        leader = await cluster.wait_for_leader()
        await leader.propose(b"x")
        await cluster.start(4, join=True)
        await leader.add_learner(4)
        await cluster.wait_applied(leader.commit_index)
        for nid in (1, 2, 3, 4):
            sm: ConfWatcher = cluster.state_machine(nid)
            # the three bootstrap entries, then the learner
            assert [c[1] for c in sm.confs[:3]] == [
                frozenset({1}),
                frozenset({1, 2}),
                frozenset({1, 2, 3}),
            ]
            assert sm.confs[-1][2] == frozenset({4})


async def test_add_node_through_a_follower(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3) as cluster:
        leader = await cluster.wait_for_leader()
        follower = next(n for n in cluster.running if n.id != leader.id)
        await cluster.add_node(4, via=follower)  # forwarded to the leader
        assert cluster[4].status().conf.voters == frozenset({1, 2, 3, 4})


async def test_remove_the_leader(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3) as cluster:
        leader = await cluster.wait_for_leader()
        await leader.propose(b"x")
        config = leader.config
        asked_at = trio.current_time()
        await leader.remove(leader.id)
        # It returned after the hand-over: the node no longer leads, and it told the most
        # up-to-date remaining voter to campaign at once, so a successor is elected well
        # within one election timeout, even with the removed node stopped right away. (The
        # followers keep hearing the departing leader until another leads: dropping it from
        # their transports as they applied the change lost its heartbeats and TimeoutNow, and
        # it left only through check-quorum, two seconds later; second review, eighth session.)
        assert leader.role != Role.LEADER
        removed_at = trio.current_time()
        assert removed_at - asked_at < config.election_ticks * config.tick_interval
        await cluster.stop(leader.id)
        new = await cluster.wait_for_leader()
        assert trio.current_time() - removed_at < config.election_ticks * config.tick_interval
        assert new.id != leader.id
        assert new.status().conf.voters == frozenset({1, 2, 3}) - {leader.id}
        await new.propose(b"y")


async def test_one_change_at_a_time_and_invalid_changes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster(3) as cluster:
        leader = await cluster.wait_for_leader()
        await leader.propose(b"x")
        await cluster.start(4, join=True)
        await cluster.start(5, join=True)
        outcomes: list[object] = []

        async def change(nid: int) -> None:
            try:
                outcomes.append(await leader.add_learner(nid))
            except ProposalDropped as exc:
                outcomes.append(exc.reason)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(change, 4)
            nursery.start_soon(change, 5)
        assert "conf-change-pending" in outcomes
        with pytest.raises(ProposalDropped):
            # removing every voter is refused
            await leader.change_membership(
                ConfChange(
                    changes=tuple(ConfChangeSingle(ConfChangeType.REMOVE, i) for i in (1, 2, 3))
                )
            )


async def test_joint_consensus_change(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3) as cluster:
        leader = await cluster.wait_for_leader()
        await leader.propose(b"x")
        await cluster.start(4, join=True)
        await cluster.start(5, join=True)
        for nid in (4, 5):
            await leader.add_learner(nid)
        await cluster.wait_applied(leader.commit_index, nodes=[4, 5])
        conf = await leader.change_membership(
            ConfChange(
                changes=(
                    ConfChangeSingle(ConfChangeType.ADD_VOTER, 4),
                    ConfChangeSingle(ConfChangeType.ADD_VOTER, 5),
                ),
                transition=ConfChangeTransition.JOINT_IMPLICIT,
            )
        )
        assert conf.joint
        await cluster.wait_until(lambda: not leader.status().conf.joint)
        assert leader.status().conf.voters == frozenset({1, 2, 3, 4, 5})
        assert await leader.propose(b"y") == 2


async def test_a_node_removed_by_a_joint_change_is_dropped_when_the_joint_state_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # While joint, the removed node is still an outgoing voter: every member keeps its address
    # and its connection. The entry that leaves the joint state names no one; it is the one that
    # must drop it (before, nothing ever did).
    async with open_cluster(3) as cluster:
        leader = await cluster.wait_for_leader()
        await cluster.start(4, join=True)
        await leader.add_learner(4, cluster.peers[4])
        await cluster.wait_applied(leader.commit_index, nodes=[4])
        victim = next(n.id for n in cluster.running if n.id not in (leader.id, 4))
        conf = await leader.change_membership(
            ConfChange(
                changes=(
                    ConfChangeSingle(ConfChangeType.REMOVE, victim),
                    ConfChangeSingle(ConfChangeType.ADD_VOTER, 4),
                ),
                transition=ConfChangeTransition.JOINT_EXPLICIT,
            )
        )
        assert conf.joint and victim in conf.voters_outgoing
        await cluster.wait_applied(leader.commit_index)
        others = [n for n in cluster.running if n.id != victim]
        for n in others:
            assert n.status().members.get(victim) == cluster.peers[victim]
            assert victim not in cluster.handles[n.id].transport._removed
        conf = await leader.change_membership(ConfChange())  # leave the joint state
        assert not conf.joint and victim not in conf.all_nodes()
        await cluster.wait_applied(leader.commit_index)
        for n in others:
            assert victim not in n.status().members
            assert victim in cluster.handles[n.id].transport._removed


async def test_promote_refuses_a_node_that_is_not_a_learner(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # promote(99) used to add node 99 as a voter with no address: a typo raised the quorum
    # with a member that can never answer (docs-vs-code check, eighth session).
    async with open_cluster(3) as cluster:
        leader = await cluster.wait_for_leader()
        for target in (99, leader.id):
            with pytest.raises(ProposalDropped) as exc:
                await leader.promote(target)
            assert exc.value.reason == "invalid-conf-change"
        assert leader.status().conf.voters == frozenset({1, 2, 3})


async def test_promote_through_a_follower_that_has_not_applied_the_learner_yet(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster(3) as cluster:
        leader = await cluster.wait_for_leader()
        follower = next(n for n in cluster.running if n.id != leader.id)
        await cluster.start(4, join=True)
        cluster.network.set_delay(0.3, 0.3, src=leader.id, dst=follower.id)
        await follower.add_learner(4, cluster.peers[4])
        assert 4 not in follower.status().conf.learners  # the leader's answer came first
        conf = await follower.promote(4)
        assert 4 in conf.voters


async def test_promote_on_a_leader_with_a_change_to_apply_is_left_to_the_core(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A new leader has not applied its predecessor's last change yet (a learner just added):
    # promote() must not call that learner "not a learner" from the stale configuration; the
    # core refuses with the retryable "conf-change-pending" (final review, eighth session).
    async with open_cluster(3) as cluster:
        leader = await cluster.wait_for_leader()
        core = leader._rt.core
        core._pending_conf_index = core.last_index + 1  # as if a change were still to apply
        with pytest.raises(ProposalDropped) as exc:
            await leader.promote(4)
        assert exc.value.reason == "conf-change-pending"
