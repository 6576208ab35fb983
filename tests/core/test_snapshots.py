"""Snapshots in the core: the leader's snapshot Progress states and the follower's rules for
ignoring, fast-forwarding or restoring a snapshot."""

from __future__ import annotations

import pytest
from core_helpers import drain, elect, ents, make_core, make_storage

from trioraft.core.config import CoreConfig
from trioraft.core.messages import (
    AppendRequest,
    AppendResponse,
    HeartbeatResponse,
    SnapshotRequest,
)
from trioraft.core.raft import RaftCore
from trioraft.core.ready import Role
from trioraft.core.storage import MemoryStorage, SnapshotTemporarilyUnavailable
from trioraft.core.types import ConfState, HardState, SnapshotMeta
from trioraft.testing.harness import Cluster

CONF = ConfState(voters=frozenset({1, 2, 3}))


def compacted_leader(last: int = 10, snap: int = 5, **kw: object) -> tuple[RaftCore, MemoryStorage]:
    """A leader (term 2) whose log 1..last (term 1) is compacted up to ``snap``."""
    st = make_storage(log=ents(*[1] * last), hs=HardState(term=1, commit=last))
    st.set_snapshot(SnapshotMeta(index=snap, term=1, conf=CONF))
    st.compact(snap)
    fields: dict[str, object] = {"pre_vote": False, "check_quorum": False, **kw}
    core = RaftCore(CoreConfig(id=1, applied=last, **fields), st)  # type: ignore[arg-type]
    elect(core, st)
    assert core.role == Role.LEADER and core.term == 2
    return core, st


def ack(core: RaftCore, src: int, index: int, **kw: int | bool) -> None:
    core.step(AppendResponse(src=src, dst=1, term=core.term, index=index, **kw))  # type: ignore[arg-type]


def to_peer(msgs: list[object], peer: int) -> list[object]:
    return [m for m in msgs if getattr(m, "dst", None) == peer]


def probe_to_start(core: RaftCore, peer: int = 2) -> list[object]:
    """The follower says its log is empty; returns what the leader sends it next."""
    ack(core, peer, core.last_index - 1, reject=True, hint_index=0, hint_term=0)
    return to_peer(drain(core, MemoryStorage()).messages, peer)  # storage unused: no entries


# -- leader side ------------------------------------------------------------------------------


def test_leader_sends_snapshot_when_needed_entries_are_compacted() -> None:
    c, st = compacted_leader()
    ack(c, 2, c.last_index - 1, reject=True, hint_index=0, hint_term=0)
    sent = to_peer(drain(c, st).messages, 2)
    (snap,) = [m for m in sent if isinstance(m, SnapshotRequest)]
    assert snap.meta == SnapshotMeta(index=5, term=1, conf=CONF)
    pr = c.status().progress[2]
    assert (pr.state, pr.pending_snapshot, pr.next) == ("snapshot", 5, 6)


def test_inactive_follower_gets_no_snapshot() -> None:
    c, st = compacted_leader()
    pr = c._trk.progress[3]
    pr.recent_active = False
    pr.msg_app_flow_paused = False
    pr.next = 3
    c.transfer_leadership(3)  # any path that sends an append to 3
    assert not list(drain(c, st).of(SnapshotRequest))
    assert c.status().progress[3].state == "probe"


def test_snapshot_temporarily_unavailable_sends_nothing() -> None:
    c, st = compacted_leader()

    def unavailable() -> SnapshotMeta:
        raise SnapshotTemporarilyUnavailable

    st.snapshot = unavailable  # type: ignore[method-assign]
    ack(c, 2, c.last_index - 1, reject=True, hint_index=0, hint_term=0)
    assert not drain(c, st).of(SnapshotRequest)
    assert c.status().progress[2].state == "probe"


def test_no_snapshot_covering_the_log_start_sends_nothing() -> None:
    c, st = compacted_leader()
    st.snapshot = lambda: SnapshotMeta(index=0, term=0)  # type: ignore[method-assign]
    ack(c, 2, c.last_index - 1, reject=True, hint_index=0, hint_term=0)
    assert not drain(c, st).of(SnapshotRequest)


def test_pending_snapshot_pauses_appends() -> None:
    c, st = compacted_leader()
    ack(c, 2, c.last_index - 1, reject=True, hint_index=0, hint_term=0)
    drain(c, st)
    c.propose(b"x")
    c.step(HeartbeatResponse(src=2, dst=1, term=c.term))
    assert not to_peer(drain(c, st).messages, 2)[1:]  # only the heartbeat-driven nothing
    assert c.status().progress[2].state == "snapshot"


def test_snapshot_failure_returns_follower_to_probe_at_match() -> None:
    c, st = compacted_leader()
    ack(c, 2, c.last_index - 1, reject=True, hint_index=0, hint_term=0)
    drain(c, st)
    c.report_snapshot(2, ok=False)
    pr = c.status().progress[2]
    assert (pr.state, pr.next, pr.paused, pr.pending_snapshot) == ("probe", 1, True, 0)
    # the next heartbeat response retries (and needs a snapshot again)
    c.step(HeartbeatResponse(src=2, dst=1, term=c.term))
    assert drain(c, st).of(SnapshotRequest)


def test_snapshot_success_probes_past_the_snapshot_then_replicates_on_ack() -> None:
    c, st = compacted_leader()
    ack(c, 2, c.last_index - 1, reject=True, hint_index=0, hint_term=0)
    drain(c, st)
    c.report_snapshot(2, ok=True)
    pr = c.status().progress[2]
    assert (pr.state, pr.next, pr.paused) == ("probe", 6, True)
    ack(c, 2, 5)  # the follower's answer to the installed snapshot
    assert c.status().progress[2].state == "replicate"
    apps = [m for m in drain(c, st).of(AppendRequest) if m.dst == 2]
    assert apps and apps[0].prev_index == 5


def test_ack_at_or_beyond_pending_snapshot_leaves_snapshot_state() -> None:
    c, st = compacted_leader()
    ack(c, 2, c.last_index - 1, reject=True, hint_index=0, hint_term=0)
    drain(c, st)
    ack(c, 2, 7)
    pr = c.status().progress[2]
    assert (pr.state, pr.match) == ("replicate", 7)
    apps = [m for m in drain(c, st).of(AppendRequest) if m.dst == 2]
    assert apps[0].prev_index == 7
    c.report_snapshot(2, ok=True)  # late report: nothing to do
    assert c.status().progress[2].state == "replicate"


def test_report_snapshot_ignored_unless_leader_and_snapshotting() -> None:
    c, _st = compacted_leader()
    c.report_snapshot(2, ok=True)
    c.report_snapshot(99, ok=False)
    assert c.status().progress[2].state == "probe"
    follower, _ = make_core()
    follower.report_snapshot(2, ok=True)
    follower.report_unreachable(2)


# -- follower side ----------------------------------------------------------------------------


def snap_req(
    index: int, term: int, conf: ConfState = CONF, src: int = 2, mterm: int = 3
) -> SnapshotRequest:
    return SnapshotRequest(src=src, dst=1, term=mterm, meta=SnapshotMeta(index, term, conf))


def test_follower_ignores_snapshot_at_or_below_commit() -> None:
    core, _st = make_core(log=ents(1, 1, 1, 1), hs=HardState(term=1, commit=3))
    core.step(snap_req(3, 1))
    rd = core.ready()
    assert rd.snapshot is None
    (resp,) = rd.persisted_messages
    assert isinstance(resp, AppendResponse) and resp.index == 3 and not resp.reject


def test_follower_fast_forwards_commit_when_log_has_the_snapshot_entry() -> None:
    core, st = make_core(log=ents(1, 1, 2, 2, 2), hs=HardState(term=2, commit=1))
    core.step(snap_req(4, 2))
    d = drain(core, st)
    assert core.commit == 4 and core.last_index == 5  # log (and its suffix) kept
    assert d.of(AppendResponse)[0].index == 4
    assert [e.index for e in d.committed] == [1, 2, 3, 4]


def test_follower_restores_log_and_configuration_from_a_newer_snapshot() -> None:
    core, st = make_core(log=ents(1, 1, 2, 2), hs=HardState(term=2, commit=2))
    conf = ConfState(voters=frozenset({1, 2, 4}), learners=frozenset({5}))
    core.step(snap_req(10, 3, conf))
    rd = core.ready()
    assert rd.snapshot == SnapshotMeta(10, 3, conf)
    assert rd.committed_entries == ()
    (resp,) = rd.persisted_messages
    assert isinstance(resp, AppendResponse) and resp.index == 10
    assert core.commit == 10 and core.first_index == 11 and core.last_index == 10
    assert core.conf_state == conf
    st.apply_snapshot(rd.snapshot)
    if rd.hard_state is not None:
        st.set_hard_state(rd.hard_state)
    core.on_persisted(rd.number)
    assert core.applied == 10


def test_follower_with_conflicting_entry_at_snapshot_index_restores() -> None:
    core, _st = make_core(log=ents(1, 1, 1, 1, 1), hs=HardState(term=1, commit=1))
    core.step(snap_req(4, 2))
    rd = core.ready()
    assert rd.snapshot is not None and core.last_index == 4


def test_follower_restores_a_snapshot_that_predates_its_membership() -> None:
    core, _st = make_core(log=ents(1), hs=HardState(term=1))
    core.step(snap_req(9, 2, ConfState(voters=frozenset({2, 3}))))
    rd = core.ready()
    assert rd.snapshot is not None and core.last_index == 9
    assert core.conf_state.voters == {2, 3}  # the log after the snapshot adds us


def test_new_member_added_after_the_last_snapshot_catches_up() -> None:
    c = Cluster(3, seed=4)
    c.elect(1)
    for i in range(5):
        c.propose(1, b"v%d" % i)
    c.stabilize()
    c.compact(1)  # this snapshot's configuration does not know node 4
    c.add_node(4)
    from trioraft.core.types import ConfChange, ConfChangeSingle, ConfChangeType

    c.propose_conf_change(1, ConfChange(changes=(ConfChangeSingle(ConfChangeType.ADD_LEARNER, 4),)))
    c.stabilize()
    assert c.applied(4) == c.applied(1)
    assert c.core(4).conf_state.learners == {4}


def test_follower_ignores_snapshot_with_inconsistent_configuration() -> None:
    core, _st = make_core(log=ents(1), hs=HardState(term=1))
    bad = ConfState(voters=frozenset({1, 2}), learners=frozenset({2}))
    core.step(snap_req(9, 2, bad))
    assert core.ready().snapshot is None


def test_candidate_receiving_snapshot_becomes_follower_and_restores() -> None:
    core, st = make_core(hs=HardState(term=2))
    core.campaign()
    drain(core, st)
    core.step(snap_req(7, 2, mterm=3))
    assert core.role == Role.FOLLOWER and core.leader == 2
    assert core.ready().snapshot is not None


def test_node_with_pending_snapshot_does_not_campaign() -> None:
    core, _st = make_core(hs=HardState(term=2))
    core.step(snap_req(7, 2))
    core.campaign()
    assert core.role == Role.FOLLOWER


def test_restored_follower_applies_only_entries_after_the_snapshot() -> None:
    c = Cluster(3, seed=4)
    c.elect(1)
    c.isolate(3)
    for i in range(30):
        c.propose(1, b"v%d" % i)
        c.stabilize()
    c.compact(1)
    c.heal()
    c.advance(3)
    assert c.core(3).first_index > 1  # caught up through a snapshot
    assert c.applied(3) == c.applied(1)
    c.check_invariants()


@pytest.mark.parametrize("keep", [0, 5])
def test_isolated_node_catches_up_through_snapshot_with_equal_commit(keep: int) -> None:
    c = Cluster(3, seed=9)
    c.elect(1)
    c.isolate(3)
    for i in range(100):
        c.propose(1, b"w%d" % i)
    c.stabilize()
    applied = c.applied_index(1)
    c.compact(1, applied - keep)
    c.heal()
    c.advance(3)
    assert c.core(3).commit == c.core(1).commit
    assert c.applied(3) == c.applied(1)
    assert c.nodes[3].storage.snapshot().index == applied
