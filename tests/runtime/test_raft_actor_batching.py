"""The raft actor gathers the proposals it drains from its inbox and hands them to the core in
one ``propose_batch`` call; each proposer must still get the outcome of its own entry, a
proposer that gave up is never proposed, and when the batch as a whole is refused every
proposal gets its own verdict."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from trioraft.core.config import CoreConfig
from trioraft.core.messages import HeartbeatRequest, Message
from trioraft.core.raft import RaftCore
from trioraft.core.ready import Role
from trioraft.core.storage import MemoryStorage
from trioraft.core.types import ConfState
from trioraft.errors import ProposalDropped
from trioraft.runtime.items import Applied, Forward, ProposeReq
from trioraft.runtime.proposals import Future, ProposalTracker, ReadBatcher
from trioraft.runtime.raft_actor import LeaderWatch, RaftActor


class _Sent:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    def send(self, msg: Message) -> None:
        self.messages.append(msg)


def _actor(voters: tuple[int, ...] = (1,), **cfg: Any) -> tuple[RaftActor, ProposalTracker]:
    st = MemoryStorage()
    st.set_conf_state(ConfState(voters=frozenset(voters)))
    fields: dict[str, Any] = {"pre_vote": False, "check_quorum": False, "forward_proposals": False}
    core = RaftCore(CoreConfig(id=1, **{**fields, **cfg}), st)
    inbox_send, inbox = trio.open_memory_channel[Any](100)
    wal, _ = trio.open_memory_channel[Any](100)
    fsm, _ = trio.open_memory_channel[Any](100)
    tracker = ProposalTracker()
    actor = RaftActor(
        core,
        st,
        _Sent(),
        inbox,
        inbox_send,
        wal,
        fsm,
        tracker,
        ReadBatcher(1),
        LeaderWatch(),
        lambda _: None,
        tick_interval=0.1,
    )
    return actor, tracker


def _leader(**cfg: Any) -> tuple[RaftActor, ProposalTracker]:
    actor, tracker = _actor(**cfg)
    core = actor.core
    core.campaign()  # the only voter: leader once its own vote is durable
    while core.has_ready():
        rd = core.ready()
        actor.storage.append(rd.entries)
        core.on_persisted(rd.number)
    assert core.role == Role.LEADER
    return actor, tracker


def _spy_batches(core: RaftCore) -> list[int]:
    sizes: list[int] = []
    real = core.propose_batch

    def spy(datas: Any) -> int:
        sizes.append(len(datas))
        return real(datas)

    core.propose_batch = spy  # type: ignore[method-assign]
    return sizes


def test_gathered_proposals_go_to_the_core_at_once_and_each_gets_its_own_entry() -> None:
    actor, tracker = _leader()
    core = actor.core
    sizes = _spy_batches(core)
    base = core.last_index
    futures = [Future[Any]() for _ in range(5)]
    futures[2].abandoned = True  # its proposer gave up while it was queued
    for i, f in enumerate(futures):
        actor._handle(ProposeReq(b"p%d" % i, f))
    assert core.last_index == base  # gathered, not proposed yet
    actor._propose_gathered()
    assert sizes == [4]
    rd = core.ready()
    assert [(e.index, e.data) for e in rd.entries] == [
        (base + 1, b"p0"),
        (base + 2, b"p1"),
        (base + 3, b"p3"),
        (base + 4, b"p4"),
    ]
    for e in rd.entries:
        tracker.applied(e.index, e.term, e.data)
    assert [f.result() for i, f in enumerate(futures) if i != 2] == [b"p0", b"p1", b"p3", b"p4"]
    assert not futures[2].done()


def test_any_other_item_is_handled_after_the_gathered_proposals() -> None:
    actor, _ = _leader()
    core = actor.core
    base = core.last_index
    actor._handle(ProposeReq(b"first", Future()))
    actor._handle(Applied(0))  # any other item
    assert core.last_index == base + 1
    actor._handle(ProposeReq(b"second", Future()))
    assert core.last_index == base + 1
    actor._propose_gathered()
    assert core.last_index == base + 2


def test_a_refused_batch_gives_each_proposal_its_own_verdict() -> None:
    actor, tracker = _leader(max_uncommitted_bytes=100)
    core = actor.core
    core.propose(b"x" * 60)  # nothing uncommitted yet: always admitted
    futures = [Future[Any]() for _ in range(3)]
    for f, size in zip(futures, (30, 30, 50), strict=True):
        actor._handle(ProposeReq(b"y" * size, f))
    sizes = _spy_batches(core)
    actor._propose_gathered()
    # 60 + 110 is over the limit as a batch; then one by one the first still fits (90).
    assert sizes == [3, 1, 1, 1]
    assert not futures[0].done() and len(tracker) == 1
    for f in futures[1:]:
        with pytest.raises(ProposalDropped) as exc:
            f.result()
        assert exc.value.reason == "uncommitted-limit"


def test_gathered_proposals_on_a_follower_are_each_forwarded() -> None:
    actor, tracker = _actor(voters=(1, 2, 3))
    actor.core.step(HeartbeatRequest(src=2, dst=1, term=1))
    futures = [Future[Any]() for _ in range(3)]
    for i, f in enumerate(futures):
        actor._handle(ProposeReq(b"p%d" % i, f))
    actor._propose_gathered()
    assert all(isinstance(f.result(), Forward) and f.result().leader == 2 for f in futures)
    assert len(tracker) == 0


def test_gathering_keeps_the_uncommitted_limit_per_proposal() -> None:
    # Nothing is uncommitted: one proposal of any size is admitted, a batch is not (else one
    # drain of the inbox could admit thousands of proposals past the limit).
    actor, tracker = _leader(max_uncommitted_bytes=100)
    futures = [Future[Any]() for _ in range(4)]
    for f in futures:
        actor._handle(ProposeReq(b"y" * 60, f))
    actor._propose_gathered()
    assert len(tracker) == 1 and not futures[0].done()
    for f in futures[1:]:
        with pytest.raises(ProposalDropped, match="uncommitted"):
            f.result()


def test_the_actor_refuses_a_core_that_forwards_proposals_itself() -> None:
    with pytest.raises(ValueError, match="forward_proposals"):
        _actor(voters=(1, 2, 3), forward_proposals=True)
