"""The raft actor's and FSM actor's shortcuts for an idle node: a peer's message stepped by the
transport's reader (``RaftActor.handle_now``) and committed entries applied by the raft actor
(``FsmActor.apply_now``). Both must give the same results as the queued path, refuse whenever
something is queued ahead, and turn a failure into the node stopping."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from trioraft.core.messages import HeartbeatRequest
from trioraft.core.types import Entry, EntryKind
from trioraft.runtime.items import HookJob
from trioraft.testing.cluster import Cluster, ListStateMachine, open_cluster, open_tcp_cluster


def _rt(cluster: Cluster, nid: int):  # type: ignore[no-untyped-def]
    return cluster.node(nid)._rt


async def test_idle_nodes_step_messages_and_apply_inline_with_the_same_results(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster(3) as cluster:
        leader = await cluster.wait_for_leader()
        for i in range(20):
            assert await leader.propose(b"v%d" % i) == i + 1
        await cluster.wait_applied(leader.commit_index)
        for node in cluster.running:
            sm: ListStateMachine = cluster.state_machine(node.id)
            assert sm.data == [b"v%d" % i for i in range(20)]
        rts = [_rt(cluster, n.id) for n in cluster.running]
        # One proposal at a time: the nodes were idle when messages arrived.
        assert all(rt.raft.handled_now > 0 for rt in rts)
        assert _rt(cluster, leader.id).fsm.applied_now > 0


async def test_handle_now_refuses_while_an_item_is_queued_or_handed_over(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster(3) as cluster:
        leader = await cluster.wait_for_leader()
        follower = next(n for n in cluster.running if n.id != leader.id)
        rt = _rt(cluster, follower.id)
        await trio.testing.wait_all_tasks_blocked()
        hb = HeartbeatRequest(src=leader.id, dst=follower.id, term=leader.term)
        before = rt.raft.handled_now
        # The actor is parked: an item sent now is handed over to it, not yet processed.
        rt.inbox_send.send_nowait(hb)
        assert not rt.raft.handle_now(hb)
        assert rt.raft.handled_now == before
        await trio.testing.wait_all_tasks_blocked()
        assert rt.raft.handle_now(hb)  # idle again
        assert rt.raft.handled_now == before + 1
        # Never nested (routing a Ready sends messages, which could come back).
        rt.raft._stepping_now = True
        try:
            assert not rt.raft.handle_now(hb)
        finally:
            rt.raft._stepping_now = False


class _Boom(Exception):
    pass


class _Halt(BaseException):
    pass


@pytest.mark.parametrize("error", [_Boom, _Halt])
async def test_a_failure_while_handling_inline_stops_the_node(
    autojump_clock: trio.testing.MockClock, error: type[BaseException]
) -> None:
    with pytest.RaisesGroup(error, allow_unwrapped=True, flatten_subgroups=True):
        async with open_cluster(3) as cluster:
            leader = await cluster.wait_for_leader()
            follower = next(n for n in cluster.running if n.id != leader.id)
            rt = _rt(cluster, follower.id)
            await trio.testing.wait_all_tasks_blocked()

            def step(msg: object) -> None:
                raise error("injected")

            rt.raft.core.step = step
            hb = HeartbeatRequest(src=leader.id, dst=follower.id, term=leader.term)
            if issubclass(error, Exception):
                # Taken by the shortcut, and not raised into the caller (the transport's
                # reader): the actor raises it on its own task.
                assert rt.raft.handle_now(hb)
            else:
                # Such exceptions also propagate into the caller as they do anywhere; the
                # actor is told too, so the node stops even if the caller swallowed it.
                with pytest.raises(error):
                    rt.raft.handle_now(hb)
            await trio.sleep_forever()


async def test_apply_now_takes_only_ordinary_entries_with_nothing_queued(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster(1) as cluster:
        leader = await cluster.wait_for_leader()
        await leader.propose(b"a")
        await cluster.wait_applied(leader.commit_index)
        await trio.testing.wait_all_tasks_blocked()
        fsm = _rt(cluster, leader.id).fsm
        sm: ListStateMachine = cluster.state_machine(leader.id)
        nxt = fsm.applied + 1
        conf = Entry(term=leader.term, index=nxt, kind=EntryKind.CONF_CHANGE)
        assert not fsm.apply_now((conf,))  # its hook is async: the actor applies it
        # Something queued ahead: order would break.
        fsm_send = _rt(cluster, leader.id).fsm_send
        fsm_send.send_nowait(HookJob("on_leader_start", (leader.term,)))
        assert not fsm.apply_now((Entry(term=leader.term, index=nxt, data=b"x"),))
        assert fsm.applied == nxt - 1
        await trio.testing.wait_all_tasks_blocked()
        assert fsm.apply_now((Entry(term=leader.term, index=nxt, data=b"x"),))
        assert fsm.applied == nxt
        assert sm.data[-1] == b"x"


async def test_an_idle_proposal_is_handled_inline_but_concurrent_ones_still_batch(
    tmp_path: Path,
) -> None:
    with trio.fail_after(30):
        async with open_tcp_cluster(3, str(tmp_path), snapshot_entries=0) as nodes:
            while not any(n.is_leader for n in nodes.values()):
                await trio.sleep(0.01)
            node = next(n for n in nodes.values() if n.is_leader)
            rt = node._rt
            await node.propose(b"warm-up")
            await trio.testing.wait_all_tasks_blocked()
            before = rt.raft.proposed_now
            await node.propose(b"alone")
            assert rt.raft.proposed_now == before + 1
            await trio.testing.wait_all_tasks_blocked()
            sent = rt.transport.stats.messages_sent
            results: list[int] = []

            async def propose(i: int) -> None:
                results.append(await node.propose(b"p%d" % i))

            async with trio.open_nursery() as nursery:
                for i in range(50):
                    nursery.start_soon(propose, i)
            assert len(results) == 50
            # Proposals made while others are in progress queue up and leave in shared
            # appends; each one handled on its own would send an append per proposal per
            # follower (100).
            assert rt.transport.stats.messages_sent - sent <= 30, (
                rt.transport.stats.messages_sent - sent
            )


async def test_requests_still_queued_when_the_node_stops_are_failed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from trioraft.errors import NodeStopped
    from trioraft.runtime.items import ProposeReq
    from trioraft.runtime.proposals import Future

    async with open_cluster(1) as cluster:
        leader = await cluster.wait_for_leader()
        rt = _rt(cluster, leader.id)
        await trio.testing.wait_all_tasks_blocked()
        # The first is handed to the parked actor; the second stays queued behind it.
        rt.inbox_send.send_nowait(ProposeReq(b"first", Future()))
        future: Future[object] = Future()
        rt.inbox_send.send_nowait(ProposeReq(b"queued", future))
        rt.shutdown()  # before the actor took it
        assert future.done()
        with pytest.raises(NodeStopped):
            future.result()


async def test_a_proposal_is_queued_while_another_is_in_progress(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Proposers woken together run in one scheduling batch that trio does not report as
    # runnable: each would find the actor idle and propose alone, one Ready (and one append,
    # one fsync) per proposal. A proposal in progress elsewhere on the node sends it to the queue.
    async with open_cluster(3) as cluster:
        leader = await cluster.wait_for_leader()
        rt = _rt(cluster, leader.id)
        await leader.propose(b"warm-up")
        await trio.testing.wait_all_tasks_blocked()
        assert rt.proposal_slots.try_acquire()  # another proposer, mid-proposal
        before = rt.raft.proposed_now
        await leader.propose(b"queued")
        assert rt.raft.proposed_now == before
        rt.proposal_slots.release()
        await trio.testing.wait_all_tasks_blocked()
        await leader.propose(b"alone")
        assert rt.raft.proposed_now == before + 1


async def test_entries_applied_inline_reach_the_core_without_an_applied_report(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # An Applied report through the inbox would wake the raft actor once more per batch and,
    # until it ran, make handle_now refuse the next message or proposal.
    from trioraft.runtime.items import Applied

    async with open_cluster(3) as cluster:
        leader = await cluster.wait_for_leader()
        await leader.propose(b"warm-up")
        await cluster.wait_applied(leader.commit_index)
        await trio.testing.wait_all_tasks_blocked()
        rts = [_rt(cluster, n.id) for n in cluster.running]
        reports: list[object] = []
        for rt in rts:
            handle = rt.raft._handle

            def spy(item: object, handle=handle) -> None:  # type: ignore[no-untyped-def]
                if isinstance(item, Applied):
                    reports.append(item)
                handle(item)

            rt.raft._handle = spy
        applied_now = [rt.fsm.applied_now for rt in rts]
        for i in range(5):
            await leader.propose(b"v%d" % i)
            await trio.testing.wait_all_tasks_blocked()
        # Followers learn the last commit with the next append or heartbeat.
        await cluster.wait_applied(leader.commit_index)
        await trio.testing.wait_all_tasks_blocked()
        assert all(rt.fsm.applied_now > n for rt, n in zip(rts, applied_now, strict=True))
        assert reports == []
        for rt in rts:
            assert rt.raft.core.status().applied == rt.fsm.applied
