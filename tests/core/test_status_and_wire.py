"""Status reports and the wire encoding of everything the core emits."""

from __future__ import annotations

from core_helpers import drain, elect, make_core

from trioraft.core.encoding import decode_message, encode_message
from trioraft.core.messages import (
    AppendResponse,
    HeartbeatRequest,
    ReadIndexRequest,
    SnapshotRequest,
    VoteRequest,
)
from trioraft.core.ready import Role, SoftState
from trioraft.core.types import ConfState, HardState, SnapshotMeta
from trioraft.testing.harness import Cluster


def test_status_of_leader_and_follower() -> None:
    core, st = make_core()
    s = core.status()
    assert (s.role, s.term, s.leader, s.progress) == (Role.FOLLOWER, 0, 0, {})
    elect(core, st)
    s = core.status()
    assert s.role == Role.LEADER and s.leader == 1 and s.vote == 1
    assert set(s.progress) == {1, 2, 3}
    assert s.progress[1].state == "replicate" and s.progress[2].state == "probe"
    assert s.conf == ConfState(voters=frozenset({1, 2, 3}))
    assert (s.first_index, s.last_index) == (1, 1)


def test_soft_state_reported_on_change() -> None:
    core, _st = make_core()
    core.campaign()
    rd = core.ready()
    assert rd.soft_state == SoftState(leader=0, role=Role.CANDIDATE)
    assert rd.hard_state == HardState(term=1, vote=1)
    assert rd.needs_ack and rd.must_persist


def test_every_message_the_core_emits_round_trips_on_the_wire() -> None:
    c = Cluster(3, seed=5)
    c.elect(1)
    seen = []
    c.drop(lambda m: seen.append(m) is not None)
    for i in range(3):
        c.propose(1, b"w%d" % i)
    c.propose(2, b"fwd")
    c.read_index(2, b"r")
    c.advance(2)
    c.compact(1)
    c.core(1).transfer_leadership(3)
    c.stabilize()
    kinds = {type(m) for m in seen}
    assert len(kinds) >= 9
    for m in seen:
        assert decode_message(encode_message(m)) == m
    extra = [
        SnapshotRequest(
            src=1, dst=2, term=3, meta=SnapshotMeta(5, 2, ConfState(voters=frozenset({1})))
        ),
        VoteRequest(src=1, dst=2, term=3, last_index=4, last_term=2, pre_vote=True, transfer=True),
        AppendResponse(src=2, dst=1, term=3, index=4, reject=True, hint_index=2, hint_term=1),
        HeartbeatRequest(src=1, dst=2, term=3, commit=1, context=b"k"),
        ReadIndexRequest(src=2, dst=1, term=3, context=b""),
    ]
    for m in extra:
        assert decode_message(encode_message(m)) == m


def test_drain_helper_handles_snapshot_readies() -> None:
    core, st = make_core(hs=HardState(term=1))
    core.step(
        SnapshotRequest(
            src=2, dst=1, term=1, meta=SnapshotMeta(4, 1, ConfState(voters=frozenset({1, 2, 3})))
        )
    )
    drain(core, st)
    assert st.snapshot().index == 4 and core.applied == 4
