"""Log replication: AppendEntries, conflicts and backtracking, flow control, commit rules,
proposals and the Ready/acknowledge contract."""

from __future__ import annotations

import pytest
from core_helpers import drain, elect, ents, make_core

from trioraft.core.config import CoreConfig
from trioraft.core.messages import (
    AppendRequest,
    AppendResponse,
    HeartbeatRequest,
    HeartbeatResponse,
    ProposalForward,
    ReadIndexRequest,
    ReadIndexResponse,
)
from trioraft.core.raft import RaftCore
from trioraft.core.ready import Role
from trioraft.core.storage import MemoryStorage
from trioraft.core.types import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeType,
    Entry,
    EntryKind,
    HardState,
)
from trioraft.errors import NotLeader, ProposalDropped
from trioraft.testing.harness import Cluster


def ack(core: RaftCore, src: int, index: int, **kw: int | bool) -> None:
    core.step(AppendResponse(src=src, dst=core.id, term=core.term, index=index, **kw))  # type: ignore[arg-type]


def leader(**kw: object) -> tuple[RaftCore, MemoryStorage]:
    core, st = make_core(**kw)  # type: ignore[arg-type]
    elect(core, st)
    assert core.role == Role.LEADER
    return core, st


def append_to(
    core: RaftCore,
    prev_index: int,
    prev_term: int,
    entries: list[Entry],
    commit: int = 0,
    term: int | None = None,
    src: int = 2,
) -> None:
    core.step(
        AppendRequest(
            src=src,
            dst=core.id,
            term=term if term is not None else max(core.term, 1),
            prev_index=prev_index,
            prev_term=prev_term,
            entries=tuple(entries),
            commit=commit,
        )
    )


# -- follower side ---------------------------------------------------------------------------


def test_follower_appends_and_acknowledges_only_after_persisting() -> None:
    core, st = make_core(hs=HardState(term=1))
    append_to(core, 0, 0, ents(1, 1), commit=1)
    rd = core.ready()
    assert [e.index for e in rd.entries] == [1, 2]
    assert not any(isinstance(m, AppendResponse) for m in rd.messages)
    (resp,) = rd.persisted_messages
    assert isinstance(resp, AppendResponse) and resp.index == 2 and not resp.reject
    assert rd.committed_entries == ()  # committed but not yet durable locally
    st.append(rd.entries)
    core.on_persisted(rd.number)
    rd2 = core.ready()
    assert [e.index for e in rd2.committed_entries] == [1]


def test_follower_truncates_only_the_conflicting_suffix() -> None:
    core, st = make_core(log=ents(1, 1, 2, 2, 2), hs=HardState(term=3))
    append_to(core, 2, 1, [Entry(term=2, index=3, data=b"e3"), *ents(3, 3, start=4)], term=3)
    d = drain(core, st)
    assert [(e.index, e.term) for e in d.entries] == [(4, 3), (5, 3)]
    assert [st.term(i) for i in range(1, 6)] == [1, 1, 2, 3, 3]
    assert d.of(AppendResponse)[0].index == 5


def test_follower_rejects_mismatch_with_a_term_hint() -> None:
    # leader 1 3 3 3 3 3 3 3 7 / follower 1 3 3 4 4 5 5 5 6 (etcd's example)
    core, st = make_core(log=ents(1, 3, 3, 4, 4, 5, 5, 5, 6), hs=HardState(term=7))
    append_to(core, 8, 3, [], term=7)
    (rej,) = drain(core, st).of(AppendResponse)
    assert rej.reject and rej.index == 8
    assert (rej.hint_index, rej.hint_term) == (3, 3)


def test_follower_rejects_append_beyond_its_log_with_its_last_index() -> None:
    core, st = make_core(log=ents(1, 1), hs=HardState(term=2))
    append_to(core, 9, 2, [], term=2)
    (rej,) = drain(core, st).of(AppendResponse)
    assert rej.reject and (rej.hint_index, rej.hint_term) == (2, 1)


def test_follower_answers_appends_below_commit_with_its_commit() -> None:
    core, st = make_core(log=ents(1, 1, 1), hs=HardState(term=1, commit=3))
    append_to(core, 1, 1, ents(1, start=2))
    (resp,) = drain(core, st).of(AppendResponse)
    assert not resp.reject and resp.index == 3


def test_follower_ignores_malformed_appends() -> None:
    core, st = make_core(hs=HardState(term=2))
    append_to(core, 0, 0, [Entry(term=1, index=2)], term=2)  # wrong index
    append_to(core, 0, 0, [Entry(term=3, index=1)], term=2)  # term above the leader's
    append_to(core, 0, 0, [Entry(term=2, index=1), Entry(term=1, index=2)], term=2)
    assert drain(core, st).messages == [] and core.last_index == 0


def test_heartbeat_commit_never_passes_the_follower_log() -> None:
    core, st = make_core(log=ents(1, 1), hs=HardState(term=1))
    core.step(HeartbeatRequest(src=2, dst=1, term=1, commit=5, context=b"c"))
    d = drain(core, st)
    assert core.commit == 2
    (resp,) = d.of(HeartbeatResponse)
    assert resp.context == b"c" and resp.dst == 2


# -- leader side -----------------------------------------------------------------------------


def test_new_leader_appends_a_noop_and_replicates_it() -> None:
    core, st = make_core(log=ents(1, 1), hs=HardState(term=1))
    d = elect(core, st)
    assert d.entries[-1] == Entry(term=2, index=3)
    apps = d.of(AppendRequest)
    assert sorted(m.dst for m in apps) == [2, 3]
    assert all((m.prev_index, m.prev_term, len(m.entries)) == (2, 1, 1) for m in apps)


def test_leader_backtracks_one_probe_per_term() -> None:
    # leader 1 3 3 3 5 5 5 5 5 / follower 1 1 1 1 2 2 (etcd's example)
    c, st = leader(log=ents(1, 3, 3, 3, 5, 5, 5, 5, 5), hs=HardState(term=5))
    assert c.term == 6
    # first probe: prev 9/5 -> follower says (6, 2)
    ack(c, 2, 9, reject=True, hint_index=6, hint_term=2)
    (probe,) = [m for m in drain(c, st).of(AppendRequest) if m.dst == 2]
    assert probe.prev_index == 1  # every index 2..6 has a term > 2 in our log
    ack(c, 2, 1, reject=False)
    assert c.status().progress[2].state == "replicate"


def test_probe_sends_one_append_until_a_heartbeat_response() -> None:
    c, st = leader(max_msg_bytes=20)
    drain(c, st)
    for i in range(3):
        c.propose(b"p%d" % i)
    to2 = [m for m in drain(c, st).of(AppendRequest) if m.dst == 2]
    assert to2 == []  # still probing node 2: the no-op append is the one in flight
    for _ in range(2):
        c.step(HeartbeatResponse(src=2, dst=1, term=c.term))
        to2 = [m for m in drain(c, st).of(AppendRequest) if m.dst == 2]
        assert len(to2) == 1 and len(to2[0].entries) == 1


def test_replicate_window_bounded_by_count() -> None:
    c, st = leader(max_inflight_msgs=2, max_msg_bytes=20)
    ack(c, 2, c.last_index)
    drain(c, st)
    assert c.status().progress[2].state == "replicate"
    for i in range(6):
        c.propose(b"p%d" % i)
    to2 = [m for m in drain(c, st).of(AppendRequest) if m.dst == 2]
    assert [len(m.entries) for m in to2] == [1, 1]  # one entry per message, two in flight
    assert c.status().progress[2].paused
    ack(c, 2, to2[0].entries[-1].index)
    to2 = [m for m in drain(c, st).of(AppendRequest) if m.dst == 2]
    assert [len(m.entries) for m in to2] == [1]


def test_replicate_window_bounded_by_bytes() -> None:
    c, st = leader(max_inflight_msgs=100, max_inflight_bytes=100, max_msg_bytes=50)
    ack(c, 2, c.last_index)
    drain(c, st)
    for _ in range(6):
        c.propose(b"x" * 24)  # 40 bytes per entry
    to2 = [m for m in drain(c, st).of(AppendRequest) if m.dst == 2]
    assert len(to2) == 3  # 40 + 40 < 100, the third reaches the byte limit
    assert c.status().progress[2].paused


def test_full_window_still_sends_empty_appends_on_heartbeat_response() -> None:
    c, st = leader(max_inflight_msgs=1, max_msg_bytes=20)
    ack(c, 2, c.last_index)
    drain(c, st)
    c.propose(b"a")
    c.propose(b"b")
    drain(c, st)
    c.step(HeartbeatResponse(src=2, dst=1, term=c.term))
    to2 = [m for m in drain(c, st).of(AppendRequest) if m.dst == 2]
    assert len(to2) == 1 and to2[0].entries == ()


def test_max_msg_bytes_limits_entries_per_append() -> None:
    c, st = leader(max_msg_bytes=100)
    ack(c, 2, c.last_index)
    drain(c, st)
    for _ in range(5):
        c.propose(b"x" * 34)  # 50 bytes per entry
    to2 = [m for m in drain(c, st).of(AppendRequest) if m.dst == 2]
    assert [len(m.entries) for m in to2] == [2, 2, 1]


def test_heartbeat_carries_min_of_match_and_commit() -> None:
    c, st = leader()
    ack(c, 2, c.last_index)
    drain(c, st)
    c.propose(b"x")
    drain(c, st)
    ack(c, 2, c.last_index)
    drain(c, st)
    assert c.commit == 2
    c.tick()
    hbs = {m.dst: m for m in drain(c, st).of(HeartbeatRequest)}
    assert hbs[2].commit == 2
    assert hbs[3].commit == 0  # node 3 matched nothing yet


def test_leader_commits_only_entries_of_its_term_by_counting() -> None:
    c, _st = leader(log=ents(1, 2), hs=HardState(term=2))  # term 3, no-op at 3
    ack(c, 2, 2)  # replicas of the term-2 entry on a majority: not enough
    assert c.commit == 0
    ack(c, 2, 3)
    assert c.commit == 3  # the term-3 no-op commits, and everything before it


def test_leader_sends_empty_append_to_bump_a_lagging_commit() -> None:
    c, st = leader()
    ack(c, 2, 1)
    drain(c, st)
    ack(c, 3, 1)  # commit advanced by 2's ack already; 3 learns it with an empty append
    to3 = [m for m in drain(c, st).of(AppendRequest) if m.dst == 3]
    assert to3 and to3[-1].commit == 1


def test_duplicate_and_reordered_acknowledgements_are_harmless() -> None:
    c, st = leader()
    ack(c, 2, 1)
    for i in range(3):
        c.propose(b"p%d" % i)
    drain(c, st)
    ack(c, 2, 4)
    ack(c, 2, 2)  # late, reordered
    ack(c, 2, 4)  # duplicate
    ack(c, 2, 3, reject=True, hint_index=3)  # stale rejection
    assert c.status().progress[2].match == 4
    assert c.status().progress[2].state == "replicate"
    assert c.commit == 4


def test_report_unreachable_moves_replicating_follower_to_probe() -> None:
    c, _st = leader()
    ack(c, 2, 1)
    assert c.status().progress[2].state == "replicate"
    c.report_unreachable(2)
    assert c.status().progress[2].state == "probe"
    c.report_unreachable(9)


# -- proposals -------------------------------------------------------------------------------


def test_proposals_are_batched_into_one_ready_and_one_append() -> None:
    c, st = leader()
    ack(c, 2, 1)
    ack(c, 3, 1)
    drain(c, st)
    idx = [c.propose(b"p%d" % i) for i in range(3)]
    assert idx == [2, 3, 4]
    rd = c.ready()
    assert [e.index for e in rd.entries] == [2, 3, 4]
    apps = [m for m in rd.messages if isinstance(m, AppendRequest)]
    assert sorted(m.dst for m in apps) == [2, 3]
    assert all(len(m.entries) == 3 for m in apps)


def test_propose_batch_appends_consecutive_entries_with_one_self_ack() -> None:
    c, st = leader()
    ack(c, 2, 1)
    ack(c, 3, 1)
    drain(c, st)
    assert c.propose(b"a") == 2
    assert c.propose_batch([b"b", b"c", b"d"]) == 3
    assert c.propose_batch((b"e",)) == 6
    rd = c.ready()
    datas = [b"a", b"b", b"c", b"d", b"e"]
    assert [(e.index, e.term, e.kind, e.data) for e in rd.entries] == [
        (i, c.term, EntryKind.NORMAL, d) for i, d in zip(range(2, 7), datas, strict=True)
    ]
    apps = [m for m in rd.messages if isinstance(m, AppendRequest)]
    assert sorted(m.dst for m in apps) == [2, 3]
    assert all([e.index for e in m.entries] == [2, 3, 4, 5, 6] for m in apps)
    # The leader's own copy counts only once durable, and then for the whole batch.
    ack(c, 2, 6)
    assert c.commit == 1
    st.append(rd.entries)
    c.on_persisted(rd.number)
    assert c.commit == 6


def test_propose_batch_is_all_or_nothing() -> None:
    c, st = leader(max_msg_bytes=10, max_uncommitted_bytes=12)
    drain(c, st)
    last = c.last_index
    with pytest.raises(ProposalDropped) as exc:
        c.propose_batch([b"ok", b"x" * 11])
    assert exc.value.reason == "too-large"
    assert c.last_index == last
    c.propose(b"x" * 6)  # the first one is always admitted
    with pytest.raises(ProposalDropped) as exc:
        c.propose_batch([b"y" * 4, b"z" * 4])  # 6 + 8 > 12: none of them
    assert exc.value.reason == "uncommitted-limit"
    assert c.last_index == last + 1
    assert c.propose_batch([b"y" * 4]) == last + 2  # 6 + 4 fits
    drain(c, st)
    ack(c, 2, c.last_index)
    drain(c, st)  # nothing uncommitted any more
    with pytest.raises(ProposalDropped, match="uncommitted"):
        c.propose_batch([b"a" * 7, b"b" * 7])  # 14 > 12, and a batch gets no exemption
    assert c.propose_batch([b"a" * 7]) == last + 3  # one entry does (it fits anyway here)


def test_one_entry_passes_the_uncommitted_limit_when_nothing_is_uncommitted() -> None:
    c, st = leader(max_uncommitted_bytes=10)
    drain(c, st)
    with pytest.raises(ProposalDropped, match="uncommitted"):
        c.propose_batch([b"a" * 20, b"b"])
    assert c.propose_batch([b"a" * 20]) == c.last_index  # else nothing this large could pass
    with pytest.raises(ProposalDropped, match="uncommitted"):
        c.propose(b"b")
    with pytest.raises(ValueError):
        c.propose_batch([])


def test_propose_batch_without_leader_or_forwarding() -> None:
    core, st = make_core()
    with pytest.raises(ProposalDropped, match="no-leader"):
        core.propose_batch([b"a", b"b"])
    core, st = make_core(hs=HardState(term=1))
    core.step(HeartbeatRequest(src=2, dst=1, term=1))
    assert core.propose_batch([b"a", b"b"]) == 0
    fwds = drain(core, st).of(ProposalForward)
    assert [(f.dst, [e.data for e in f.entries]) for f in fwds] == [(2, [b"a"]), (2, [b"b"])]
    core, _ = make_core(hs=HardState(term=1), forward_proposals=False)
    core.step(HeartbeatRequest(src=2, dst=1, term=1))
    with pytest.raises(NotLeader) as exc:
        core.propose_batch([b"a", b"b"])
    assert exc.value.leader_hint == 2


def test_proposal_dropped_without_leader() -> None:
    core, _ = make_core()
    with pytest.raises(ProposalDropped) as exc:
        core.propose(b"x")
    assert exc.value.reason == "no-leader"
    core.campaign()
    with pytest.raises(ProposalDropped, match="no-leader"):
        core.propose(b"x")


def test_proposal_too_large_is_dropped() -> None:
    c, _ = leader(max_msg_bytes=10)
    with pytest.raises(ProposalDropped) as exc:
        c.propose(b"x" * 11)
    assert exc.value.reason == "too-large"


def test_uncommitted_limit_drops_proposals_until_commit() -> None:
    c, st = leader(max_uncommitted_bytes=10)
    c.propose(b"x" * 6)  # the first one is always admitted
    c.propose(b"y" * 4)
    with pytest.raises(ProposalDropped) as exc:
        c.propose(b"z")
    assert exc.value.reason == "uncommitted-limit"
    drain(c, st)
    ack(c, 2, c.last_index)
    drain(c, st)  # committed entries handed out release the budget
    assert c.propose(b"z" * 8) == c.last_index


def test_follower_forwards_proposals_to_the_leader() -> None:
    core, st = make_core(hs=HardState(term=1))
    core.step(HeartbeatRequest(src=2, dst=1, term=1))
    assert core.propose(b"fwd") == 0
    (fwd,) = drain(core, st).of(ProposalForward)
    assert fwd.dst == 2 and fwd.entries[0].data == b"fwd"


def test_follower_without_forwarding_raises_not_leader() -> None:
    core, _ = make_core(hs=HardState(term=1), forward_proposals=False)
    core.step(HeartbeatRequest(src=2, dst=1, term=1))
    with pytest.raises(NotLeader) as exc:
        core.propose(b"x")
    assert exc.value.leader_hint == 2


def test_leader_appends_forwarded_proposals_and_drops_invalid_ones() -> None:
    c, st = leader()
    drain(c, st)
    c.step(ProposalForward(src=2, dst=1, term=c.term, entries=(Entry(0, 0, data=b"f"),)))
    c.step(ProposalForward(src=2, dst=1, term=c.term, entries=()))
    cc = Entry(0, 0, kind=EntryKind.CONF_CHANGE, data=b"")
    c.step(ProposalForward(src=2, dst=1, term=c.term, entries=(cc,)))
    d = drain(c, st)
    assert [(e.index, e.data) for e in d.entries] == [(2, b"f")]


def test_non_leader_drops_forwarded_proposals() -> None:
    core, st = make_core()
    core.step(ProposalForward(src=2, dst=1, term=3, entries=(Entry(0, 0, data=b"f"),)))
    assert drain(core, st).messages == [] and core.last_index == 0 and core.term == 0


# -- the Ready contract ----------------------------------------------------------------------


def test_ready_numbers_increase_and_entries_are_handed_out_once() -> None:
    c, st = leader()
    drain(c, st)
    c.propose(b"a")
    rd1 = c.ready()
    c.propose(b"b")
    rd2 = c.ready()
    assert rd2.number == rd1.number + 1
    assert [e.data for e in rd1.entries] == [b"a"]
    assert [e.data for e in rd2.entries] == [b"b"]  # "a" is in progress: not handed out again
    assert not c.has_ready()


def test_hard_state_only_when_changed() -> None:
    core, _st = make_core(hs=HardState(term=1))
    core.step(HeartbeatRequest(src=2, dst=1, term=1))
    rd = core.ready()
    assert rd.hard_state is None and not rd.must_persist
    assert rd.soft_state is not None and rd.soft_state.leader == 2


def test_leader_counts_its_own_entries_only_when_persisted() -> None:
    c, st = leader(voters=[1, 2, 3, 4, 5])
    drain(c, st)
    c.propose(b"x")
    rd = c.ready()  # not acknowledged yet
    for peer in (2, 3):
        ack(c, peer, 2)
    assert c.commit == 1  # two followers + unpersisted leader: not a majority of five
    st.append(rd.entries)
    c.on_persisted(rd.number)
    assert c.commit == 2


def test_committed_entries_wait_for_local_persistence() -> None:
    c, st = leader(voters=[1, 2, 3, 4, 5])
    drain(c, st)
    c.propose(b"x")
    rd = c.ready()
    for peer in (2, 3, 4):
        ack(c, peer, 2)
    assert c.commit == 2  # a majority of followers is enough to commit
    rd2 = c.ready()
    assert [e.index for e in rd2.committed_entries] == [1]  # the durable no-op only
    assert rd2.hard_state is not None
    st.append(rd.entries)
    c.on_persisted(rd.number)
    rd3 = c.ready()
    assert [e.data for e in rd3.committed_entries] == [b"x"]


def test_acknowledgement_of_overwritten_entries_does_not_mark_new_ones_durable() -> None:
    core, st = make_core(hs=HardState(term=1))
    append_to(core, 0, 0, ents(1, 1, 1), term=1)
    rd1 = core.ready()
    # a new leader overwrites 2..3 before the first write finished
    append_to(core, 1, 1, ents(2, 2, start=2), term=2, src=3)
    rd2 = core.ready()
    assert [(e.index, e.term) for e in rd2.entries] == [(2, 2), (3, 2)]
    st.append(rd1.entries)
    core.on_persisted(rd1.number)
    assert core._log.unstable.offset == 1  # the ack named the old (3, 1): ignored
    st.append(rd2.entries)
    core.on_persisted(rd2.number)
    assert core._log.unstable.offset == 4
    core.on_persisted(rd2.number)  # idempotent
    core.on_persisted(999)  # beyond anything handed out: ignored


def test_restart_hands_out_committed_entries_after_applied() -> None:
    st = MemoryStorage()
    st.set_conf_state(
        __import__("trioraft.core.types", fromlist=["ConfState"]).ConfState(
            voters=frozenset({1, 2, 3})
        )
    )
    st.append(ents(1, 1, 1, 1))
    st.set_hard_state(HardState(term=1, commit=4))
    core = RaftCore(CoreConfig(id=1, applied=2), st)
    rd = core.ready()
    assert [e.index for e in rd.committed_entries] == [3, 4]
    too_far = RaftCore(CoreConfig(id=1, applied=9), st)
    assert too_far.applied == 4


def test_restart_clamps_an_impossible_commit() -> None:
    st = MemoryStorage()
    st.append(ents(1))
    st.set_hard_state(HardState(term=1, commit=5))
    core = RaftCore(CoreConfig(id=1), st)
    assert core.commit == 1


def test_three_node_cluster_replicates_and_applies_in_order() -> None:
    c = Cluster(3, seed=11)
    c.elect(1)
    idx = [c.propose(1, b"v%d" % i) for i in range(20)]
    c.stabilize()
    for n in (1, 2, 3):
        assert c.applied(n) == [(i, b"v%d" % k) for k, i in enumerate(idx)]
    c.check_invariants()


def test_follower_proposal_is_forwarded_and_committed() -> None:
    c = Cluster(3, seed=2)
    c.elect(1)
    assert c.propose(2, b"via-follower") == 0
    c.stabilize()
    assert c.applied(3)[-1][1] == b"via-follower"


def test_conf_change_entry_kinds_are_not_forwarded() -> None:
    c, _ = leader()
    with pytest.raises(ProposalDropped):
        c.propose_conf_change(
            ConfChange(changes=(ConfChangeSingle(ConfChangeType.ADD_VOTER, 4),))
        )  # the leader has not committed an entry of its term yet


def test_forwarded_proposals_are_dropped_during_a_transfer() -> None:
    c, st = leader()
    drain(c, st)
    c.transfer_leadership(2)
    c.step(ProposalForward(src=3, dst=1, term=c.term, entries=(Entry(0, 0, data=b"f"),)))
    assert drain(c, st).entries == []


def test_same_term_leader_messages_at_a_leader_are_ignored() -> None:
    c, st = leader()
    drain(c, st)
    c.step(AppendRequest(src=2, dst=1, term=c.term, prev_index=0, prev_term=0))
    assert c.role == Role.LEADER and drain(c, st).messages == []


# -- piggybacked commit index (CoreConfig.piggyback_commit) ------------------------------------


def test_piggyback_commit_sends_no_dedicated_commit_round() -> None:
    c, st = leader(piggyback_commit=True)
    ack(c, 2, 1)
    ack(c, 3, 1)
    drain(c, st)
    c.propose(b"x")
    assert [m.commit for m in drain(c, st).of(AppendRequest)] == [1, 1]
    ack(c, 2, 2)  # commits 2: no empty append goes out for it
    assert c.commit == 2
    assert drain(c, st).of(AppendRequest) == []
    ack(c, 3, 2)  # the slower follower's ack: no bump either
    assert drain(c, st).of(AppendRequest) == []
    c.propose(b"y")  # the next append carries the commit
    assert [m.commit for m in drain(c, st).of(AppendRequest)] == [2, 2]


def test_piggyback_commit_reaches_idle_followers_with_the_heartbeat() -> None:
    c, st = leader(piggyback_commit=True)
    ack(c, 2, 1)
    ack(c, 3, 1)
    c.propose(b"x")
    drain(c, st)
    ack(c, 2, 2)
    ack(c, 3, 2)
    assert drain(c, st).of(AppendRequest) == []
    c.tick()
    assert {m.dst: m.commit for m in drain(c, st).of(HeartbeatRequest)} == {2: 2, 3: 2}


def test_piggyback_commit_of_a_new_leader_and_of_conf_changes_is_sent_at_once() -> None:
    c, st = leader(voters=(1, 2, 3, 4, 5), piggyback_commit=True)
    drain(c, st)
    ack(c, 2, 1)
    assert c.commit == 0
    ack(c, 3, 1)  # the new leader's no-op commits: the followers hear of it at once
    assert {m.dst: m.commit for m in drain(c, st).of(AppendRequest)} == {2: 1, 3: 1}
    ack(c, 4, 1)
    ack(c, 5, 1)
    drain(c, st)
    idx = c.propose_conf_change(
        ConfChange(changes=(ConfChangeSingle(ConfChangeType.ADD_LEARNER, 4),))
    )
    drain(c, st)
    ack(c, 2, idx)
    ack(c, 3, idx)
    assert c.commit == idx
    assert {m.dst: m.commit for m in drain(c, st).of(AppendRequest)} == {
        2: idx,
        3: idx,
        4: idx,
        5: idx,
    }


def test_piggyback_commit_is_sent_to_a_follower_waiting_for_a_read() -> None:
    c, st = leader(piggyback_commit=True)
    ack(c, 2, 1)
    ack(c, 3, 1)
    c.propose(b"x")
    drain(c, st)
    ack(c, 2, 2)
    drain(c, st)
    c.step(ReadIndexRequest(src=3, dst=1, term=c.term, context=b"r"))
    (hb,) = [m for m in drain(c, st).of(HeartbeatRequest) if m.dst == 2]
    c.step(HeartbeatResponse(src=2, dst=1, term=c.term, context=hb.context))
    d = drain(c, st)
    assert [(m.dst, m.index) for m in d.of(ReadIndexResponse)] == [(3, 2)]
    assert [(m.dst, m.commit) for m in d.of(AppendRequest)] == [(3, 2)]


def test_piggyback_commit_cluster_converges_with_heartbeats() -> None:
    c = Cluster(3, seed=11, config_overrides={"piggyback_commit": True})
    c.elect(1)
    idx = [c.propose(1, b"v%d" % i) for i in range(20)]
    c.stabilize()
    assert c.applied(1) == [(i, b"v%d" % k) for k, i in enumerate(idx)]
    c.advance(1)  # one heartbeat carries the commit to the followers
    for n in (2, 3):
        assert c.applied(n) == c.applied(1)
    c.check_invariants()


def test_followers_at_the_same_point_get_the_same_entries_tuple() -> None:
    c, st = leader(voters=[1, 2, 3, 4])
    for p in (2, 3):
        ack(c, p, 1)
    drain(c, st)
    c.propose_batch([b"a", b"b"])
    apps = {m.dst: m for m in c.ready().messages if isinstance(m, AppendRequest)}
    assert [e.data for e in apps[2].entries] == [b"a", b"b"]
    assert apps[2].entries is apps[3].entries  # so the transport encodes it once
    assert 4 not in apps  # never answered: paused in probe state, nothing shared with it
    c.propose(b"c")
    apps = {m.dst: m for m in c.ready().messages if isinstance(m, AppendRequest)}
    assert apps[2].entries is apps[3].entries
