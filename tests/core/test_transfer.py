"""Leadership transfer: catch the target up, TimeoutNow, refuse proposals meanwhile, abort after
an election timeout."""

from __future__ import annotations

import pytest
from core_helpers import drain, elect, make_core

from trioraft.core.messages import AppendRequest, AppendResponse, TimeoutNow, VoteRequest
from trioraft.core.raft import RaftCore
from trioraft.core.ready import Role
from trioraft.core.storage import MemoryStorage
from trioraft.core.types import ConfChange, ConfChangeSingle, ConfChangeType, HardState
from trioraft.errors import NotLeader, ProposalDropped
from trioraft.testing.harness import Cluster


def leader(**kw: object) -> tuple[RaftCore, MemoryStorage]:
    core, st = make_core(**kw)  # type: ignore[arg-type]
    elect(core, st)
    return core, st


def ack(core: RaftCore, src: int, index: int) -> None:
    core.step(AppendResponse(src=src, dst=1, term=core.term, index=index))


def test_transfer_to_caught_up_follower_sends_timeout_now_at_once() -> None:
    c, st = leader()
    ack(c, 2, c.last_index)
    drain(c, st)
    c.transfer_leadership(2)
    (tn,) = drain(c, st).of(TimeoutNow)
    assert tn.dst == 2 and tn.term == c.term
    assert c.lead_transferee == 2


def test_transfer_catches_the_target_up_first() -> None:
    c, st = leader()
    ack(c, 2, c.last_index)
    ack(c, 3, c.last_index)
    c.propose(b"x")
    drain(c, st)  # the append carrying "x" to 3 is in flight, not acknowledged
    c.transfer_leadership(3)
    d = drain(c, st)
    assert d.of(TimeoutNow) == [] and [m for m in d.of(AppendRequest) if m.dst == 3]
    ack(c, 3, c.last_index)
    (tn,) = drain(c, st).of(TimeoutNow)
    assert tn.dst == 3


def test_proposals_are_dropped_during_a_transfer() -> None:
    c, _st = leader()
    c.transfer_leadership(2)
    with pytest.raises(ProposalDropped) as exc:
        c.propose(b"x")
    assert exc.value.reason == "transfer"


def test_transfer_is_abandoned_after_an_election_timeout() -> None:
    c, _st = leader(election_ticks=10)
    c.transfer_leadership(2)
    for _ in range(10):
        c.tick()
    assert c.lead_transferee == 0 and c.role == Role.LEADER
    assert c.propose(b"again") > 0


def test_transfer_argument_checks() -> None:
    c, _st = leader(voters=[1, 2, 3], learners=[4])
    with pytest.raises(ProposalDropped) as exc:
        c.transfer_leadership(4)
    assert exc.value.reason == "invalid-target"
    with pytest.raises(ProposalDropped):
        c.transfer_leadership(9)
    c.transfer_leadership(1)  # already leader: nothing happens
    assert c.lead_transferee == 0
    follower, _ = make_core()
    with pytest.raises(NotLeader):
        follower.transfer_leadership(2)


def test_new_transfer_target_replaces_the_old_one() -> None:
    c, _st = leader()
    c.transfer_leadership(2)
    c.transfer_leadership(2)  # same target again: ignored
    c.transfer_leadership(3)
    assert c.lead_transferee == 3


def test_timeout_now_starts_a_real_election_at_once() -> None:
    core, st = make_core(pre_vote=True, check_quorum=True, hs=HardState(term=4))
    core.step(TimeoutNow(src=2, dst=1, term=4))
    assert core.role == Role.CANDIDATE and core.term == 5  # no pre-vote round
    reqs = drain(core, st).of(VoteRequest)
    assert reqs and all(r.transfer and not r.pre_vote for r in reqs)


def test_timeout_now_ignored_by_learners_and_candidates() -> None:
    core, _ = make_core(4, voters=[1, 2, 3], learners=[4], hs=HardState(term=2))
    core.step(TimeoutNow(src=1, dst=4, term=2))
    assert core.role == Role.FOLLOWER
    cand, _st = make_core(hs=HardState(term=2))
    cand.campaign()
    cand.step(TimeoutNow(src=2, dst=1, term=3))
    assert cand.role == Role.CANDIDATE and cand.term == 3


def test_transfer_aborted_when_the_target_is_removed() -> None:
    c = Cluster(3, seed=31)
    c.elect(1)
    c.propose_conf_change(1, ConfChange(changes=(ConfChangeSingle(ConfChangeType.REMOVE, 3),)))
    c.crash(3)
    c.core(1).transfer_leadership(3)
    c.stabilize()
    assert c.core(1).lead_transferee == 0


@pytest.mark.parametrize("check_quorum", [True, False])
def test_leadership_moves_to_the_target(check_quorum: bool) -> None:
    c = Cluster(3, seed=31, config_overrides={"check_quorum": check_quorum})
    c.elect(1)
    c.propose(1, b"a")
    c.stabilize()
    c.core(1).transfer_leadership(2)
    c.stabilize()
    assert c.leader() == 2 and c.core(2).term == 3
    assert c.core(1).role == Role.FOLLOWER and c.core(1).leader == 2
    c.propose(2, b"b")
    c.stabilize()
    assert [d for _, d in c.applied(3)] == [b"a", b"b"]


def test_transfer_to_a_lagging_target_completes_after_catch_up() -> None:
    c = Cluster(3, seed=31)
    c.elect(1)
    c.isolate(3)
    for i in range(10):
        c.propose(1, b"%d" % i)
    c.stabilize()
    c.core(1).transfer_leadership(3)
    c.heal()
    c.advance(2)
    assert c.leader() == 3
    assert c.applied(3) == c.applied(1)
