"""ReadIndex (heartbeat-confirmed and lease-based) and read forwarding."""

from __future__ import annotations

import pytest
from core_helpers import drain, elect, make_core

from trioraft.core.config import ReadOnlyOption
from trioraft.core.messages import (
    AppendResponse,
    HeartbeatRequest,
    HeartbeatResponse,
    ReadIndexRequest,
    ReadIndexResponse,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from trioraft.core.raft import RaftCore
from trioraft.core.ready import ReadState, Role
from trioraft.core.storage import MemoryStorage
from trioraft.core.types import ConfChange, ConfChangeSingle, ConfChangeType, HardState
from trioraft.errors import ProposalDropped
from trioraft.testing.harness import Cluster


def committed_leader(**kw: object) -> tuple[RaftCore, MemoryStorage]:
    core, st = make_core(**kw)  # type: ignore[arg-type]
    elect(core, st)
    core.step(AppendResponse(src=2, dst=1, term=core.term, index=core.last_index))
    drain(core, st)
    assert core.commit == core.last_index == 1
    return core, st


def hb_ack(core: RaftCore, src: int, context: bytes) -> None:
    core.step(HeartbeatResponse(src=src, dst=1, term=core.term, context=context))


def test_read_index_is_confirmed_by_a_heartbeat_quorum() -> None:
    c, st = committed_leader()
    c.read_index(b"q1")
    d = drain(c, st)
    hbs = d.of(HeartbeatRequest)
    assert sorted(m.dst for m in hbs) == [2, 3]
    key = hbs[0].context
    assert key and d.read_states == []
    hb_ack(c, 2, key)
    assert drain(c, st).read_states == [ReadState(index=1, context=b"q1")]
    hb_ack(c, 3, key)  # late ack of a served request: nothing more
    assert drain(c, st).read_states == []


def test_read_index_waits_for_an_entry_of_the_leaders_term() -> None:
    c, st = make_core()
    elect(c, st)
    c.read_index(b"early")
    assert drain(c, st).of(HeartbeatRequest) == []
    c.step(AppendResponse(src=2, dst=1, term=c.term, index=1))  # the no-op commits
    hbs = drain(c, st).of(HeartbeatRequest)
    assert hbs and hbs[0].context
    hb_ack(c, 3, hbs[0].context)
    assert drain(c, st).read_states == [ReadState(index=1, context=b"early")]


def test_an_ack_confirms_every_earlier_read_and_contexts_may_repeat() -> None:
    c, st = committed_leader()
    c.read_index(b"same")
    first = drain(c, st).of(HeartbeatRequest)[0].context
    c.read_index(b"same")
    second = drain(c, st).of(HeartbeatRequest)[0].context
    assert first != second
    hb_ack(c, 2, second)
    assert drain(c, st).read_states == [ReadState(1, b"same"), ReadState(1, b"same")]
    hb_ack(c, 2, first)  # stale: already advanced past it
    hb_ack(c, 2, b"unknown")
    assert drain(c, st).read_states == []


def test_periodic_heartbeats_carry_the_newest_pending_read() -> None:
    c, st = committed_leader()
    c.read_index(b"r")
    key = drain(c, st).of(HeartbeatRequest)[0].context
    c.tick()
    assert {m.context for m in drain(c, st).of(HeartbeatRequest)} == {key}


def test_single_voter_answers_reads_at_once() -> None:
    c, st = make_core(voters=[1])
    c.campaign()
    drain(c, st)
    c.read_index(b"solo")
    assert drain(c, st).read_states == [ReadState(1, b"solo")]


def lease_leader(**kw: object) -> tuple[RaftCore, MemoryStorage]:
    """A committed LEASE_BASED leader (election timeout 10 ticks)."""
    return committed_leader(check_quorum=True, read_only=ReadOnlyOption.LEASE_BASED, **kw)


def heartbeat_round(c: RaftCore, st: MemoryStorage, ackers: tuple[int, ...] = (2,)) -> None:
    """One tick of the leader; ``ackers`` echo its heartbeats."""
    c.tick()
    hbs = drain(c, st).of(HeartbeatRequest)
    for m in hbs:
        if m.dst in ackers:
            hb_ack(c, m.dst, m.context)


def test_lease_based_read_answers_without_a_heartbeat_round() -> None:
    c, st = lease_leader()
    heartbeat_round(c, st)  # the periodic heartbeats keep the lease fresh
    c.read_index(b"lease")
    d = drain(c, st)
    assert d.read_states == [ReadState(1, b"lease")] and d.of(HeartbeatRequest) == []


def test_lease_is_measured_from_the_quorums_acknowledgements_not_from_being_leader() -> None:
    """Regression (tests/integration/test_linearizable_kv.py -m slow -k lease, seeds 0-4): a
    leader answered lease reads as long as check-quorum had not stepped it down, which happens
    only at an election-timeout boundary, up to two election timeouts after it last heard from
    a quorum; the partitioned followers elect a new leader after one. Stale reads followed."""
    c, st = lease_leader()
    heartbeat_round(c, st)
    # Cut off from its followers, the leader stays leader for a while (check-quorum) ...
    for _ in range(9):
        heartbeat_round(c, st, ackers=())
    assert c.role == Role.LEADER
    # ... but 9 ticks after the last acknowledged heartbeat its lease is over: a follower that
    # heard it last may already grant votes at its 10th tick.
    c.read_index(b"stale?")
    d = drain(c, st)
    assert d.read_states == []
    hbs = d.of(HeartbeatRequest)  # the read renews the lease at once
    assert sorted(m.dst for m in hbs) == [2, 3]
    hb_ack(c, 3, hbs[0].context)
    assert drain(c, st).read_states == [ReadState(1, b"stale?")]


def test_lease_lasts_election_ticks_minus_two_after_the_acknowledged_send() -> None:
    c, st = lease_leader()
    heartbeat_round(c, st)
    for _ in range(8):
        c.tick()
        drain(c, st)
    c.read_index(b"edge")
    assert drain(c, st).read_states == [ReadState(1, b"edge")]  # sent 8 ticks ago: valid
    c.tick()
    drain(c, st)
    c.read_index(b"late")
    assert drain(c, st).read_states == []  # 9 ticks ago: expired


def test_lease_read_falls_back_to_read_index_when_the_round_trip_outlasts_the_lease() -> None:
    # Every heartbeat is answered 9 ticks after it was sent: more than the lease's window
    # (election_ticks - 2 = 8), so the lease can never become valid, although the leader keeps
    # its quorum. A read used to wait for the lease forever (audit, eighth session); after an
    # election timeout it is confirmed through ReadIndex, which works at any round trip.
    c, st = lease_leader()
    rtt = 9
    sent: list[tuple[int, HeartbeatRequest]] = []
    got: list[tuple[int, ReadState]] = []
    asked = 15
    for now in range(1, 80):
        c.tick()
        if now == asked:
            c.read_index(b"slow")
        d = drain(c, st)
        got += [(now, r) for r in d.read_states]
        sent += [(now, m) for m in d.of(HeartbeatRequest)]
        for at, m in [x for x in sent if now - x[0] >= rtt]:
            sent.remove((at, m))
            hb_ack(c, m.dst, m.context)
        got += [(now, r) for r in drain(c, st).read_states]
    assert c.role == Role.LEADER
    assert [r for _, r in got] == [ReadState(1, b"slow")]
    # one election timeout of waiting for the lease, then one ReadIndex round trip
    assert got[0][0] <= asked + 10 + rtt


def test_restarted_voter_refuses_votes_for_an_election_timeout_in_lease_mode() -> None:
    """A voter that acknowledged the leader, crashed and restarted at once must not help elect
    another leader while that leader's lease (based on its acknowledgement) may still run."""
    core, st = make_core(check_quorum=True, read_only=ReadOnlyOption.LEASE_BASED)
    core.step(VoteRequest(src=2, dst=1, term=1, last_index=0, last_term=0))
    assert drain(core, st).of(VoteResponse) == []  # ignored: in its start-up lease
    for _ in range(10):
        core.tick()  # (it may campaign itself meanwhile: ask at a later term)
    drain(core, st)
    core.step(VoteRequest(src=2, dst=1, term=5, last_index=0, last_term=0))
    assert drain(core, st).of(VoteResponse)[0].granted
    # A leadership transfer is not held up.
    other, st2 = make_core(check_quorum=True, read_only=ReadOnlyOption.LEASE_BASED)
    other.step(VoteRequest(src=2, dst=1, term=1, last_index=0, last_term=0, transfer=True))
    assert drain(other, st2).of(VoteResponse)[0].granted


def test_voter_in_lease_stays_in_lease_across_a_term_change_without_a_leader() -> None:
    """Hearing of a higher term (e.g. a stray rejection) forgets the leader, not the lease."""
    core, st = make_core(check_quorum=True, hs=HardState(term=2))  # no start-up lease
    core.step(VoteRequest(src=3, dst=1, term=3, last_index=0, last_term=0))
    assert drain(core, st).of(VoteResponse)[0].granted
    core.step(HeartbeatRequest(src=3, dst=1, term=3))
    drain(core, st)
    core.step(AppendResponse(src=2, dst=1, term=4, index=0))
    assert core.term == 4 and core.leader == 0
    core.step(VoteRequest(src=2, dst=1, term=5, last_index=0, last_term=0))
    assert drain(core, st).of(VoteResponse) == []


def test_lease_is_revoked_by_a_timeout_now_and_reads_fall_back_to_read_index() -> None:
    c, st = lease_leader()
    c.step(AppendResponse(src=3, dst=1, term=c.term, index=c.last_index))
    drain(c, st)
    heartbeat_round(c, st, ackers=(2, 3))
    c.transfer_leadership(2)  # 2 is up to date: TimeoutNow at once
    d = drain(c, st)
    assert d.of(TimeoutNow)
    c.read_index(b"after-transfer")
    hbs = drain(c, st).of(HeartbeatRequest)
    assert hbs and hbs[0].context.startswith(b"ri")  # a ReadIndex round, not the lease
    hb_ack(c, 3, hbs[0].context)
    assert drain(c, st).read_states == [ReadState(1, b"after-transfer")]


def test_leader_answers_forwarded_reads_with_a_response() -> None:
    c, st = committed_leader()
    c.step(ReadIndexRequest(src=3, dst=1, term=c.term, context=b"fwd"))
    key = drain(c, st).of(HeartbeatRequest)[0].context
    hb_ack(c, 2, key)
    (resp,) = drain(c, st).of(ReadIndexResponse)
    assert (resp.dst, resp.index, resp.context) == (3, 1, b"fwd")


def test_follower_forwards_reads_and_reports_the_answer() -> None:
    core, st = make_core(hs=HardState(term=2))
    core.step(HeartbeatRequest(src=2, dst=1, term=2))
    drain(core, st)
    core.read_index(b"mine")
    (req,) = drain(core, st).of(ReadIndexRequest)
    assert req.dst == 2 and req.context == b"mine"
    core.step(ReadIndexResponse(src=2, dst=1, term=2, index=7, context=b"mine"))
    assert drain(core, st).read_states == [ReadState(7, b"mine")]


def test_read_index_without_a_leader_is_dropped() -> None:
    core, _ = make_core()
    with pytest.raises(ProposalDropped) as exc:
        core.read_index(b"x")
    assert exc.value.reason == "no-leader"


def test_losing_leadership_drops_pending_reads() -> None:
    c, st = committed_leader()
    c.read_index(b"lost")
    key = drain(c, st).of(HeartbeatRequest)[0].context
    c.step(HeartbeatRequest(src=2, dst=1, term=c.term + 1))
    hb_ack(c, 3, key)
    assert drain(c, st).read_states == []


@pytest.mark.parametrize("mode", [ReadOnlyOption.SAFE, ReadOnlyOption.LEASE_BASED])
def test_reads_from_every_node_in_a_cluster(mode: ReadOnlyOption) -> None:
    c = Cluster(3, seed=8, config_overrides={"read_only": mode, "check_quorum": True})
    if mode == ReadOnlyOption.LEASE_BASED:
        # Freshly started voters refuse votes for an election timeout (their start-up lease).
        for _ in range(100):
            c.advance()
            if c.leader() is not None:
                break
        leader = c.leader()
        assert leader is not None
    else:
        leader = 1
        c.elect(1)
    idx = c.propose(leader, b"w")
    c.stabilize()
    for n in (1, 2, 3):
        c.read_index(n, b"r%d" % n)
    c.stabilize()
    for n in (1, 2, 3):
        assert c.read_states(n) == [ReadState(idx, b"r%d" % n)]


def test_read_in_minority_partition_is_never_confirmed() -> None:
    c = Cluster(3, seed=8)
    c.elect(1)
    c.stabilize()
    c.isolate(1)
    c.read_index(1, b"stale?")
    c.advance(3)
    assert c.read_states(1) == []


def test_single_voter_waits_for_an_entry_of_its_term_before_answering_reads() -> None:
    # A lone voter applied an entry whose commit index never became durable (the hard state
    # rides along with the next write, and it crashed before that): after the restart its
    # commit index is behind what a client saw. Its read index must wait for its own term's
    # first entry to commit, which brings the commit index back past that write.
    c = Cluster(1, seed=1, auto_persist=False)
    c.elect(1)
    c.stabilize()
    idx = c.propose(1, b"x")
    c.process(1)
    c.persist(1)
    c.process(1)  # applied (the client has its answer); the new commit index is not durable
    assert c.applied(1) == [(idx, b"x")]
    c.crash(1)
    c.restart(1)
    c.stabilize()
    core = c.core(1)
    assert core.commit < idx
    core.campaign()
    c.process(1)
    c.persist(1)
    assert core.role == Role.LEADER
    core.read_index(b"r")
    c.process(1)
    assert [r for r in c.nodes[1].read_states if r.context == b"r"] == []
    c.stabilize()
    (rs,) = [r for r in c.nodes[1].read_states if r.context == b"r"]
    assert rs.index > idx


def test_lease_voter_inside_a_lease_refuses_a_manual_campaign() -> None:
    # Voter 2 acknowledges leader 1's lease; voter 3 is cut off from 1 (out of every lease).
    # A manual campaign of 2 would vote for itself inside the lease it granted and, with 3's
    # vote, elect a leader while 1 still serves lease reads at its old commit index.
    c = Cluster(
        3,
        seed=3,
        config_overrides={
            "read_only": ReadOnlyOption.LEASE_BASED,
            "check_quorum": True,
            "pre_vote": True,
        },
    )
    et = c.core(1).config.election_ticks
    c.tick_all(et)  # a started LEASE_BASED node refuses votes for one election timeout
    c.elect(1)
    c.partition([1], [3])
    c.advance(2 * et + 2)
    assert c.core(1).role == Role.LEADER
    term = c.core(1).term
    c.partition([1], [2, 3])
    assert c.core(2).campaign() is False
    c.stabilize()
    assert c.core(2).role == Role.FOLLOWER and c.core(2).term == term
    # once the lease it granted has run out, a manual campaign goes ahead
    c.advance(et)
    assert c.core(2).campaign() is True


def test_reads_pending_when_the_leader_becomes_the_only_voter_are_answered() -> None:
    c = Cluster(2, seed=1)
    c.elect(1)
    c.stabilize()
    c.drop(lambda m: isinstance(m, HeartbeatResponse))  # 2's echoes are lost
    c.read_index(1, b"r")
    c.stabilize()
    assert not [r for r in c.read_states(1) if r.context == b"r"]
    c.propose_conf_change(1, ConfChange(changes=(ConfChangeSingle(ConfChangeType.REMOVE, 2),)))
    c.stabilize()
    assert c.core(1).conf_state.voters == frozenset({1})
    assert [r.context for r in c.read_states(1)].count(b"r") == 1
