"""Elections: randomized timeouts, one durable vote per term, the up-to-date check, pre-vote,
check-quorum and the leader lease."""

from __future__ import annotations

import pytest
from core_helpers import drain, elect, ents, make_core

from trioraft.core.config import CoreConfig
from trioraft.core.messages import (
    AppendRequest,
    AppendResponse,
    HeartbeatRequest,
    VoteRequest,
    VoteResponse,
)
from trioraft.core.raft import RaftCore
from trioraft.core.ready import Role
from trioraft.core.types import HardState
from trioraft.testing.harness import Cluster


def ticks_until_campaign(core: RaftCore, limit: int = 1000) -> int:
    for n in range(1, limit):
        core.tick()
        if core.role != Role.FOLLOWER:
            return n
    raise AssertionError("never campaigned")


def vote_req(
    src: int, term: int, last_index: int = 0, last_term: int = 0, **kw: bool
) -> VoteRequest:
    return VoteRequest(src=src, dst=1, term=term, last_index=last_index, last_term=last_term, **kw)


@pytest.mark.parametrize("et", [3, 10])
def test_election_timeout_is_randomized_in_et_to_2et(et: int) -> None:
    seen = set()
    for seed in range(60):
        core, _ = make_core(election_ticks=et, seed=seed)
        n = ticks_until_campaign(core)
        assert et <= n < 2 * et
        seen.add(n)
    assert len(seen) > et // 2  # spread over the range, not a constant


def test_election_timeout_is_deterministic_per_seed_and_differs_per_node() -> None:
    a1, _ = make_core(1, seed=42)
    a2, _ = make_core(1, seed=42)
    assert ticks_until_campaign(a1) == ticks_until_campaign(a2)
    timeouts = {
        ticks_until_campaign(make_core(i, voters=range(1, 11), seed=42)[0]) for i in range(1, 11)
    }
    assert len(timeouts) > 1


def test_follower_grants_one_vote_per_term_first_come() -> None:
    core, st = make_core()
    core.step(vote_req(2, term=2))
    rd = core.ready()
    assert rd.hard_state == HardState(term=2, vote=2, commit=0)
    assert not any(isinstance(m, VoteResponse) for m in rd.messages)
    (resp,) = rd.persisted_messages
    assert isinstance(resp, VoteResponse) and resp.granted and resp.dst == 2
    core.on_persisted(rd.number)
    core.step(vote_req(3, term=2))
    d = drain(core, st)
    (rej,) = d.of(VoteResponse)
    assert not rej.granted and rej.dst == 3
    core.step(vote_req(2, term=2))  # a repeat of the vote already cast is granted again
    assert drain(core, st).of(VoteResponse)[0].granted


def test_vote_is_persisted_before_the_reply_and_survives_restart() -> None:
    core, st = make_core()
    core.step(vote_req(2, term=5))
    drain(core, st)
    assert st.hard_state == HardState(term=5, vote=2)
    again = RaftCore(CoreConfig(id=1, pre_vote=False, check_quorum=False), st)
    assert (again.term, again.vote) == (5, 2)
    again.step(vote_req(3, term=5))
    d = drain(again, st)
    assert not d.of(VoteResponse)[0].granted


@pytest.mark.parametrize(
    ("cand_last_index", "cand_last_term", "granted"),
    [
        (3, 2, True),  # same last entry
        (4, 2, True),  # longer, same last term
        (2, 2, False),  # shorter, same last term
        (1, 3, True),  # higher last term wins even if shorter
        (9, 1, False),  # lower last term loses even if longer
    ],
)
def test_vote_refused_to_a_less_up_to_date_candidate(
    cand_last_index: int, cand_last_term: int, granted: bool
) -> None:
    core, st = make_core(log=ents(1, 2, 2), hs=HardState(term=2))
    core.step(vote_req(2, term=3, last_index=cand_last_index, last_term=cand_last_term))
    (resp,) = drain(core, st).of(VoteResponse)
    assert resp.granted == granted


def test_campaign_raises_term_votes_for_self_and_asks_every_voter() -> None:
    core, _st = make_core(log=ents(1, 1), hs=HardState(term=1))
    core.campaign()
    rd = core.ready()
    assert core.role == Role.CANDIDATE and core.term == 2
    assert rd.hard_state == HardState(term=2, vote=1, commit=0)
    reqs = [m for m in rd.messages if isinstance(m, VoteRequest)]
    assert sorted(m.dst for m in reqs) == [2, 3]
    assert all((m.term, m.last_index, m.last_term) == (2, 2, 1) for m in reqs)


def test_candidate_counts_its_own_vote_only_once_persisted() -> None:
    core, _st = make_core()
    core.campaign()
    rd = core.ready()
    core.step(VoteResponse(src=2, dst=1, term=1, granted=True))
    assert core.role == Role.CANDIDATE  # only one durable vote so far
    core.on_persisted(rd.number)
    assert core.role == Role.LEADER


def test_candidate_leads_only_once_its_own_term_and_vote_are_durable() -> None:
    """Regression (simulation seed 535, profile 'three'): with pipelined writes, the other two
    voters' grants are a quorum of three before the candidate's own hard state is durable. Had
    it led then, a crash before the write would restart it at the old term; the same voters
    would elect it again in the same term and it would reuse an index it had already sent
    with a different entry (Log Matching broken)."""
    core, st = make_core(log=ents(1), hs=HardState(term=1))
    core.campaign()
    rd = core.ready()  # carries term 2 / vote 1; the write is still in progress
    assert rd.hard_state == HardState(term=2, vote=1, commit=0)
    core.step(VoteResponse(src=2, dst=1, term=2, granted=True))
    core.step(VoteResponse(src=3, dst=1, term=2, granted=True))
    assert core.role == Role.CANDIDATE  # a quorum of grants, but our vote is not durable
    assert not core.has_ready() or not any(
        isinstance(m, AppendRequest) for m in core.ready().messages
    )
    assert st.hard_state.term < 2
    core.on_persisted(rd.number)
    assert core.role == Role.LEADER and core.term == 2


def test_restarted_candidate_cannot_lead_a_term_twice() -> None:
    """The whole failure: the would-be leader crashes before its term is durable, restarts at
    the old term and campaigns again for the same term; it must not have sent any entry of
    that term in its first try."""
    core, st = make_core(log=ents(1), hs=HardState(term=1))
    core.campaign()
    core.ready()  # never persisted
    core.step(VoteResponse(src=2, dst=1, term=2, granted=True))
    core.step(VoteResponse(src=3, dst=1, term=2, granted=True))
    sent = drain_messages_without_persisting(core)
    assert not any(isinstance(m, AppendRequest) and m.term == 2 for m in sent)
    again = RaftCore(CoreConfig(id=1, pre_vote=False, check_quorum=False), st)  # crash
    assert again.term == 1
    again.campaign()
    d = drain(again, st)
    again.step(VoteResponse(src=2, dst=1, term=2, granted=True))
    assert again.role == Role.LEADER and again.term == 2
    assert d.hard_states[-1] == HardState(term=2, vote=1, commit=0)


def drain_messages_without_persisting(core: RaftCore) -> list[object]:
    """Every message the core hands out while nothing is ever acknowledged as durable."""
    out: list[object] = []
    while core.has_ready():
        rd = core.ready()
        out.extend(rd.messages)
    return out


def test_single_voter_elects_itself_after_persisting() -> None:
    core, st = make_core(voters=[1])
    core.campaign()
    assert core.role == Role.CANDIDATE
    drain(core, st)
    assert core.role == Role.LEADER and core.term == 1


def test_candidate_loses_on_majority_rejection() -> None:
    core, st = make_core()
    core.campaign()
    drain(core, st)
    core.step(VoteResponse(src=2, dst=1, term=1, granted=False))
    assert core.role == Role.CANDIDATE
    core.step(VoteResponse(src=3, dst=1, term=1, granted=False))
    assert core.role == Role.FOLLOWER and core.term == 1


def test_split_vote_stays_candidate_then_retries_with_a_new_term() -> None:
    core, st = make_core(voters=[1, 2, 3, 4])
    core.campaign()
    drain(core, st)
    core.step(VoteResponse(src=2, dst=1, term=1, granted=True))
    core.step(VoteResponse(src=3, dst=1, term=1, granted=False))
    assert core.role == Role.CANDIDATE
    ticks_until_new_term = 0
    while core.term == 1:
        core.tick()
        ticks_until_new_term += 1
    assert core.role == Role.CANDIDATE and core.term == 2
    assert ticks_until_new_term < 20


def test_candidate_steps_down_on_append_from_leader_of_its_term() -> None:
    core, st = make_core()
    core.campaign()
    drain(core, st)
    core.step(AppendRequest(src=2, dst=1, term=1, prev_index=0, prev_term=0))
    assert core.role == Role.FOLLOWER and core.leader == 2


def test_prevote_does_not_raise_the_term() -> None:
    core, _st = make_core(pre_vote=True, log=ents(1), hs=HardState(term=1))
    core.campaign()
    rd = core.ready()
    assert core.role == Role.PRE_CANDIDATE and core.term == 1
    assert rd.hard_state is None
    reqs = [m for m in rd.messages if isinstance(m, VoteRequest)]
    assert {(m.pre_vote, m.term) for m in reqs} == {(True, 2)}
    core.on_persisted(rd.number)
    core.step(VoteResponse(src=2, dst=1, term=2, granted=True, pre_vote=True))
    assert core.role == Role.CANDIDATE and core.term == 2


def test_prevote_grant_records_no_vote_and_keeps_term() -> None:
    core, _st = make_core(pre_vote=True, hs=HardState(term=3))
    core.step(vote_req(2, term=4, pre_vote=True))
    rd = core.ready()
    assert rd.hard_state is None and core.term == 3 and core.vote == 0
    (resp,) = rd.persisted_messages
    assert isinstance(resp, VoteResponse) and resp.granted and resp.pre_vote and resp.term == 4


def test_prevote_rejection_from_higher_term_makes_follower() -> None:
    core, st = make_core(pre_vote=True, hs=HardState(term=1))
    core.campaign()
    drain(core, st)
    core.step(VoteResponse(src=2, dst=1, term=5, granted=False, pre_vote=True))
    assert core.role == Role.FOLLOWER and core.term == 5


def test_prevote_lost_returns_to_follower_without_term_change() -> None:
    core, st = make_core(pre_vote=True, hs=HardState(term=1))
    core.campaign()
    drain(core, st)
    core.step(VoteResponse(src=2, dst=1, term=1, granted=False, pre_vote=True))
    core.step(VoteResponse(src=3, dst=1, term=1, granted=False, pre_vote=True))
    assert core.role == Role.FOLLOWER and core.term == 1
    # stale real-vote responses are ignored by a pre-candidate
    core.campaign()
    core.step(VoteResponse(src=2, dst=1, term=1, granted=True))
    assert core.role == Role.PRE_CANDIDATE


def test_lagging_node_prevote_cannot_disrupt_the_leader() -> None:
    c = Cluster(3, seed=3)
    c.elect(1)
    c.isolate(3)
    for i in range(5):
        c.propose(1, b"x%d" % i)
    c.stabilize()
    c.tick(3, 50)  # it campaigns repeatedly (pre-vote) while cut off
    c.stabilize()
    assert c.core(3).term == c.core(1).term  # pre-votes never raised its term
    c.heal()
    c.advance(30)
    assert c.leader() == 1 and c.core(1).term == 2


def test_leader_steps_down_without_a_quorum() -> None:
    c = Cluster(3, seed=5, config_overrides={"check_quorum": True})
    c.elect(1)
    c.partition([1], [2, 3])
    for _ in range(10):  # the first check still sees the activity from before the partition
        c.tick(1)
        c.stabilize()
    assert c.core(1).role == Role.LEADER
    for _ in range(10):
        c.tick(1)
        c.stabilize()
    assert c.core(1).role == Role.FOLLOWER and c.core(1).leader == 0


def test_leader_with_quorum_keeps_leading() -> None:
    c = Cluster(3, seed=5, config_overrides={"check_quorum": True})
    c.elect(1)
    c.isolate(3)
    c.advance(100)
    assert c.leader() == 1 and c.core(1).term == 2


def test_vote_requests_ignored_while_leader_is_recent() -> None:
    core, st = make_core(check_quorum=True, hs=HardState(term=2))
    core.step(HeartbeatRequest(src=2, dst=1, term=2))
    drain(core, st)
    core.step(vote_req(3, term=3))
    assert core.term == 2 and not drain(core, st).of(VoteResponse)
    core.step(vote_req(3, term=3, pre_vote=True))
    assert not drain(core, st).of(VoteResponse)
    # a campaign started by a leadership transfer bypasses the lease
    core.step(vote_req(3, term=3, transfer=True))
    d = drain(core, st)
    assert core.term == 3 and d.of(VoteResponse)[0].granted


def test_vote_granted_after_the_lease_expires() -> None:
    # node 1 is outside the voter set, so ticking ages the lease without a campaign of its own
    core, st = make_core(
        1, voters=[2, 3], check_quorum=True, hs=HardState(term=2), election_ticks=5
    )
    core.step(HeartbeatRequest(src=2, dst=1, term=2))
    for _ in range(4):
        core.tick()
    core.step(vote_req(3, term=3))
    assert not drain(core, st).of(VoteResponse)
    core.tick()
    core.step(vote_req(3, term=3))
    assert drain(core, st).of(VoteResponse)[0].granted


def test_stale_term_messages_are_ignored() -> None:
    core, st = make_core(hs=HardState(term=5))
    core.step(VoteResponse(src=2, dst=1, term=4, granted=True))
    core.step(vote_req(2, term=4))
    core.step(AppendRequest(src=2, dst=1, term=3, prev_index=0, prev_term=0, commit=0))
    d = drain(core, st)
    assert d.messages == [] and core.term == 5 and core.vote == 0


def test_stale_leader_gets_the_new_term_when_check_quorum_or_prevote() -> None:
    core, st = make_core(pre_vote=True, hs=HardState(term=5))
    core.step(AppendRequest(src=2, dst=1, term=3, prev_index=0, prev_term=0))
    (resp,) = drain(core, st).of(AppendResponse)
    assert resp.term == 5 and resp.dst == 2
    core.step(vote_req(3, term=4, pre_vote=True))
    (rej,) = drain(core, st).of(VoteResponse)
    assert not rej.granted and rej.term == 5


def test_any_role_adopts_a_higher_term() -> None:
    for make_role in ("follower", "candidate", "leader"):
        core, st = make_core()
        if make_role == "candidate":
            core.campaign()
        elif make_role == "leader":
            elect(core, st)
        drain(core, st)
        core.step(AppendRequest(src=3, dst=1, term=9, prev_index=0, prev_term=0))
        assert core.role == Role.FOLLOWER and core.term == 9 and core.leader == 3
        core.step(VoteResponse(src=2, dst=1, term=10, granted=False))
        assert core.term == 10 and core.leader == 0


def test_learner_never_campaigns() -> None:
    core, _ = make_core(4, voters=[1, 2, 3], learners=[4])
    for _ in range(100):
        core.tick()
    core.campaign()
    assert core.role == Role.FOLLOWER and core.term == 0


def test_node_outside_the_configuration_never_campaigns() -> None:
    core, _ = make_core(9, voters=[1, 2, 3])
    for _ in range(100):
        core.tick()
    assert core.role == Role.FOLLOWER


def test_no_campaign_while_committed_conf_changes_are_unapplied() -> None:
    from trioraft.core.encoding import encode_conf_change
    from trioraft.core.types import ConfChange, ConfChangeSingle, ConfChangeType, Entry, EntryKind

    change = ConfChange(changes=(ConfChangeSingle(ConfChangeType.ADD_LEARNER, 4),))
    log = [*ents(1, 1), Entry(1, 3, EntryKind.CONF_CHANGE, encode_conf_change(change))]
    core, st = make_core(log=log, hs=HardState(term=1, commit=3))
    core.campaign()
    assert core.role == Role.FOLLOWER  # index 3 is committed but not applied
    drain(core, st)  # hands out and applies 1..3
    assert core.conf_state.learners == {4}
    core.campaign()
    assert core.role == Role.CANDIDATE


def test_campaign_as_leader_is_a_noop() -> None:
    core, st = make_core(voters=[1])
    core.campaign()
    drain(core, st)
    term = core.term
    core.campaign()
    assert core.role == Role.LEADER and core.term == term


def test_messages_for_other_nodes_or_from_self_are_ignored() -> None:
    core, _st = make_core()
    core.step(VoteRequest(src=2, dst=7, term=9, last_index=0, last_term=0))
    core.step(VoteRequest(src=1, dst=1, term=9, last_index=0, last_term=0))
    core.step(VoteRequest(src=0, dst=1, term=9, last_index=0, last_term=0))
    core.step(HeartbeatRequest(src=2, dst=1, term=0))
    assert core.term == 0 and not core.has_ready()


def test_vote_responses_carry_the_voters_commit() -> None:
    core, st = make_core(log=ents(1, 1, 2), hs=HardState(term=2, commit=2))
    core.step(vote_req(2, term=3, last_index=1, last_term=1))
    (resp,) = drain(core, st).of(VoteResponse)
    assert not resp.granted and (resp.commit, resp.commit_term) == (2, 1)


def test_candidate_learns_commit_from_a_refusing_voter_when_logs_match() -> None:
    core, st = make_core(log=ents(1, 1, 2), hs=HardState(term=2, commit=1))
    core.campaign()
    drain(core, st)
    core.step(VoteResponse(src=2, dst=1, term=3, granted=False, commit=3, commit_term=9))
    assert core.commit == 1  # the voter's entry 3 differs from ours: learn nothing
    core.step(VoteResponse(src=3, dst=1, term=1, granted=False, commit=3, commit_term=2))
    assert core.commit == 3  # a stale term does not matter: committed entries stay committed
    assert [e.index for e in drain(core, st).committed] == [2, 3]
