"""The public synchronous harness (trioraft.testing.harness) itself."""

from __future__ import annotations

import pytest

from trioraft.core.messages import AppendRequest, HeartbeatRequest
from trioraft.core.ready import Role
from trioraft.testing.harness import AppliedRecord, Cluster, StabilizeError


def test_bootstrap_applies_the_initial_configuration() -> None:
    c = Cluster(3, seed=1)
    assert all(c.core(i).conf_state.voters == {1, 2, 3} for i in (1, 2, 3))
    assert c.leader() is None


def test_advance_elects_a_leader_and_it_stays() -> None:
    c = Cluster(5, seed=2)
    c.advance(30)
    lead = c.leader()
    assert lead is not None
    term = c.core(lead).term
    c.advance(50)
    assert c.leader() == lead and c.core(lead).term == term
    c.check_invariants()


def test_crash_and_restart_keeps_only_persisted_state() -> None:
    c = Cluster(3, seed=3, auto_persist=False)
    c.elect(1)
    c.propose(1, b"durable")
    c.stabilize()
    c.propose(1, b"lost")
    assert c.process(1) is not None  # handed out, never persisted
    c.crash(1)
    with pytest.raises(RuntimeError):
        c.core(1)
    c.restart(1)
    assert [e.data for e in c.log_entries(1)][-1] == b"durable"
    c.stabilize()  # re-applied from the log after the restart
    with pytest.raises(RuntimeError):
        c.restart(1)


def test_restart_from_snapshot_plus_log_tail() -> None:
    c = Cluster(3, seed=4)
    c.elect(1)
    for i in range(10):
        c.propose(1, b"a%d" % i)
    c.stabilize()
    c.compact(2, 8)
    for i in range(5):
        c.propose(1, b"b%d" % i)
    c.stabilize()
    want = c.applied(2)
    for n in (1, 2, 3):
        c.crash(n)
    for n in (1, 2, 3):
        c.restart(n)
    assert c.nodes[2].storage.snapshot().index > 0
    c.advance(40)
    assert c.applied(2) == want
    assert c.leader() is not None
    c.check_invariants()


def test_persist_in_steps() -> None:
    c = Cluster(3, seed=5, auto_persist=False)
    c.elect(1)
    c.propose(1, b"x")
    c.process(1)
    c.propose(1, b"y")
    c.process(1)
    assert c.persist(1, count=1) == 1
    assert c.persist(1) == 1
    assert c.persist(1) == 0


def test_partition_and_block_and_drop_filters() -> None:
    c = Cluster(3, seed=6)
    c.elect(1)
    c.block(1, 2)
    c.propose(1, b"x")
    c.stabilize()
    assert c.applied(2) == [] and c.applied(3)[-1][1] == b"x"
    assert any(m.dst == 2 for m in c.dropped)
    c.heal()
    c.drop(lambda m: isinstance(m, HeartbeatRequest))
    c.advance(3)
    assert c.applied(2) == []  # only heartbeats would have told it
    c.heal()
    c.advance(2)
    assert c.applied(2)[-1][1] == b"x"


def test_deliver_with_predicate_and_limit() -> None:
    c = Cluster(3, seed=7)
    c.elect(1)
    c.propose(1, b"x")
    c.process(1)
    assert len(c.network) == 2
    assert c.deliver(lambda m: m.dst == 3) == 1
    assert c.deliver(limit=0) == 0
    assert [m.dst for m in c.take_messages(lambda m: isinstance(m, AppendRequest))] == [2]


def test_stabilize_gives_up_on_endless_traffic() -> None:
    c = Cluster(3, seed=8)
    c.elect(1)
    with pytest.raises(StabilizeError):
        for _ in range(3):
            c.tick_all()
            c.network.extend(c.network)  # a duplicate storm that never drains in one round
            c.stabilize(max_steps=1)


def test_add_node_and_bad_ids() -> None:
    c = Cluster(ids=[2, 5], seed=9)
    assert sorted(c.nodes) == [2, 5]
    c.add_node(7)
    assert c.core(7).conf_state.voters == frozenset()
    with pytest.raises(ValueError):
        c.add_node(7)


def test_check_invariants_detects_violations() -> None:
    c = Cluster(3, seed=10)
    c.elect(1)
    c.stabilize()
    c._leaders_by_term[2].add(3)
    with pytest.raises(AssertionError, match="two leaders"):
        c.check_invariants()
    c._leaders_by_term[2] = {1}
    c.nodes[3].history[1] = AppliedRecord(1, 9, c.nodes[3].history[1].kind, b"bad")
    with pytest.raises(AssertionError, match="state machine safety"):
        c.check_invariants()


def test_leader_prefers_highest_term() -> None:
    c = Cluster(3, seed=11, config_overrides={"check_quorum": False})
    c.elect(1)
    c.isolate(1)
    c.advance(30)
    assert c.core(1).role == Role.LEADER  # stale leader, no check-quorum
    assert c.leader() != 1
