"""Outcomes of the node API at its edges: a leadership transfer its caller gave up on is never
started, a membership change refused when applied reports the documented reason, a forwarded
request whose old leader names this node fails as retryable (not ``NotLeader``, which only
comes with forwarding off), and waiters for the applied index that stop waiting are forgotten.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from trioraft import ProposalDropped, RaftNode
from trioraft.core.ready import Role
from trioraft.core.types import ConfChange, ConfState
from trioraft.runtime.items import TransferReq
from trioraft.runtime.proposals import Future
from trioraft.runtime.transport.base import ClientRequest, ClientResponse
from trioraft.testing.cluster import open_cluster


async def test_transfer_abandoned_by_its_caller_is_not_started(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster(3) as cluster:
        leader = await cluster.wait_for_leader()
        target = next(i for i in (1, 2, 3) if i != leader.id)
        # A transfer request whose caller stopped waiting (its Timeout or a cancellation marks
        # the future abandoned) before the raft actor got to it.
        future: Future[Any] = Future()
        leader._rt.inbox_send.send_nowait(TransferReq(target, future))
        future.abandoned = True
        await trio.testing.wait_all_tasks_blocked()
        assert not future.done()
        await trio.sleep(5 * leader.config.election_timeout)
        assert leader.is_leader
        assert cluster[target].leader == leader.id


async def test_conf_change_refused_when_applied_reports_invalid_conf_change(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster(1) as cluster:
        leader = await cluster.wait_for_leader()
        fsm = leader._rt.fsm

        def refuse(conf: ConfState, cc: ConfChange) -> ConfState:
            raise ValueError("refused at apply")

        fsm._conf_applier = refuse  # the core accepted it; applying it fails
        with pytest.raises(ProposalDropped) as info:
            await leader.add_learner(9)
        assert info.value.reason == "invalid-conf-change"


async def test_forwarded_request_whose_old_leader_names_this_node_is_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster(3) as cluster:
        leader = await cluster.wait_for_leader()
        follower = cluster[next(i for i in (1, 2, 3) if i != leader.id)]
        await cluster.wait_until(lambda: follower.leader == leader.id)
        calls: list[int] = []

        async def call(peer: int, request: ClientRequest) -> ClientResponse:
            # the old leader stepped down and believes the asking node leads now
            calls.append(peer)
            return ClientResponse(
                ok=False,
                error="not-leader",
                leader_hint=follower.id,
                request_id=request.request_id,
            )

        transport: Any = follower._rt.transport
        transport.call = call
        with pytest.raises(ProposalDropped) as info:
            await follower.propose(b"x")
        assert info.value.reason == "no-leader"
        assert calls == [leader.id]
        with pytest.raises(ProposalDropped):
            await follower.add_learner(9)


async def test_waiters_that_stop_waiting_for_the_applied_index_are_forgotten(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster(1) as cluster:
        node = await cluster.wait_for_leader()
        waiters = node._rt.waiters
        far = node.applied_index + 1_000_000
        for _ in range(10):
            with trio.move_on_after(1):
                await node.wait_applied(far)
        assert len(waiters) == 0
        assert len(waiters._heap) <= 1

        async def wait_long() -> None:
            await node.wait_applied(far)

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(wait_long)
            await trio.testing.wait_all_tasks_blocked()
            assert len(waiters) == 5
            nursery.cancel_scope.cancel()
        assert len(waiters._heap) == 0
        # live waiters are still woken
        index = node.applied_index + 1
        async with trio.open_nursery() as nursery:
            nursery.start_soon(node.wait_applied, index)
            await trio.testing.wait_all_tasks_blocked()
            await node.propose(b"x")
        assert node.applied_index >= index


async def _request_swallowed_by_a_dying_raft_actor(
    make_request: Callable[[RaftNode, int], Awaitable[object]],
) -> BaseException:
    """Start a request on the leader whose raft actor swallows it (as one that dies after
    taking it from its inbox would), stop the node, and return what the caller got."""
    async with open_cluster(3) as cluster:
        leader = await cluster.wait_for_leader()
        other = next(i for i in (1, 2, 3) if i != leader.id)
        rt = leader._rt
        swallowed: list[Any] = []
        rt.inbox_send.send_nowait = swallowed.append  # type: ignore[method-assign]
        assert rt.raft is not None
        rt.raft.handle_now = lambda req: False  # type: ignore[method-assign]
        outcome: list[BaseException] = []

        async def call() -> None:
            try:
                await make_request(leader, other)
            except Exception as exc:
                outcome.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            await trio.testing.wait_all_tasks_blocked()
            assert len(swallowed) == 1 and not outcome
            with trio.fail_after(60):
                await cluster.stop(leader.id)
                while not outcome:
                    await trio.sleep(1)
        return outcome[0]


@pytest.mark.parametrize("timeout", [3.0, None], ids=["with-timeout", "without-timeout"])
async def test_proposal_the_dying_raft_actor_had_taken_gets_node_stopped(
    autojump_clock: trio.testing.MockClock, timeout: float | None
) -> None:
    # A node that crashes (an actor raises) cancels its actors: the deadline timer among them,
    # and the raft actor, possibly with requests it had taken from its inbox and not yet handed
    # to the core. Their callers waited forever (found by the eighth session's crash-point
    # sweep of a leader under load).
    got = await _request_swallowed_by_a_dying_raft_actor(
        lambda node, _: node.propose(b"lost", timeout=timeout)
    )
    assert type(got).__name__ == "NodeStopped", got


@pytest.mark.parametrize("op", ["remove", "transfer"])
async def test_membership_and_transfer_requests_the_dying_raft_actor_had_taken_get_node_stopped(
    autojump_clock: trio.testing.MockClock, op: str
) -> None:
    def request(node: RaftNode, other: int) -> Awaitable[object]:
        if op == "remove":
            return node.remove(other, timeout=None)
        return node.transfer_leadership(other, timeout=None)

    got = await _request_swallowed_by_a_dying_raft_actor(request)
    assert type(got).__name__ == "NodeStopped", got


async def test_remove_of_itself_returns_when_the_node_stops_during_the_hand_over(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster(3) as cluster:
        leader = await cluster.wait_for_leader()
        core = leader._rt.core
        core._maybe_hand_over = lambda: False  # type: ignore[method-assign]  # never done
        outcome: list[object] = []

        async def remove() -> None:
            outcome.append(await leader.remove(leader.id, timeout=None))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(remove)
            await cluster.wait_until(lambda: leader.id not in leader.status().conf.voters)
            assert not outcome and leader.role == Role.LEADER  # waiting for the hand-over
            with trio.fail_after(60):
                await cluster.stop(leader.id)
                while not outcome:
                    await trio.sleep(1)
        assert leader.id not in outcome[0].voters  # type: ignore[attr-defined]
