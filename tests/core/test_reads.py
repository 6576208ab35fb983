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
)
from trioraft.core.raft import RaftCore
from trioraft.core.ready import ReadState
from trioraft.core.storage import MemoryStorage
from trioraft.core.types import HardState
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


def test_lease_based_read_answers_without_a_heartbeat_round() -> None:
    c, st = committed_leader(check_quorum=True, read_only=ReadOnlyOption.LEASE_BASED)
    c.read_index(b"lease")
    d = drain(c, st)
    assert d.read_states == [ReadState(1, b"lease")] and d.of(HeartbeatRequest) == []


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
    c.elect(1)
    idx = c.propose(1, b"w")
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
