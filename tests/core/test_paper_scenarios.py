"""One test per scenario 1-22 of ``shared/reference/verification-anchors.md`` section A (the Raft
paper's rules plus etcd's snapshot scenarios), named after it."""

from __future__ import annotations

from collections.abc import Callable

from core_helpers import drain, elect, ents, make_core, make_storage

from trioraft.core.config import CoreConfig
from trioraft.core.messages import (
    AppendRequest,
    AppendResponse,
    HeartbeatRequest,
    Message,
    SnapshotRequest,
    VoteRequest,
    VoteResponse,
)
from trioraft.core.raft import RaftCore
from trioraft.core.ready import Role
from trioraft.core.storage import MemoryStorage
from trioraft.core.types import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeType,
    ConfState,
    HardState,
    SnapshotMeta,
)
from trioraft.errors import ProposalDropped
from trioraft.testing.harness import Cluster

CONF3 = ConfState(voters=frozenset({1, 2, 3}))


def ack(core: RaftCore, src: int, index: int, **kw: int | bool) -> None:
    core.step(AppendResponse(src=src, dst=core.id, term=core.term, index=index, **kw))  # type: ignore[arg-type]


def pump(
    nodes: dict[int, tuple[RaftCore, MemoryStorage]],
    initial: list[Message] | None = None,
    keep: Callable[[Message], bool] | None = None,
) -> None:
    """Exchange messages between hand-built cores until quiet, starting with ``initial``
    (messages to absent nodes or rejected by ``keep`` are dropped)."""
    pending = list(initial or [])
    for _ in range(1000):
        msgs: list[Message] = pending
        pending = []
        for core, st in nodes.values():
            msgs.extend(drain(core, st).messages)
        msgs = [m for m in msgs if m.dst in nodes and (keep is None or keep(m))]
        if not msgs:
            return
        for m in msgs:
            nodes[m.dst][0].step(m)
    raise AssertionError("no quiescence")


# -- elections and terms --------------------------------------------------------------------------


def test_s01_term_adoption() -> None:
    for role in (Role.FOLLOWER, Role.CANDIDATE, Role.LEADER):
        core, st = make_core(hs=HardState(term=2))
        if role == Role.CANDIDATE:
            core.campaign()
        elif role == Role.LEADER:
            elect(core, st)
        assert core.role == role
        core.step(VoteResponse(src=3, dst=1, term=7, granted=False))
        assert core.role == Role.FOLLOWER and core.term == 7 and core.vote == 0
        assert drain(core, st).hard_states[-1].term == 7


def test_s02_stale_term_ignored() -> None:
    core, st = make_core()
    elect(core, st)
    core.step(AppendRequest(src=2, dst=1, term=core.term + 1, prev_index=0, prev_term=0))
    drain(core, st)
    before = core.status()
    core.step(AppendResponse(src=3, dst=1, term=before.term - 1, index=99))
    core.step(VoteResponse(src=3, dst=1, term=before.term - 1, granted=True))
    core.step(HeartbeatRequest(src=3, dst=1, term=before.term - 1, commit=9))
    core.step(VoteRequest(src=3, dst=1, term=before.term - 1, last_index=99, last_term=99))
    assert core.status() == before
    assert drain(core, st).messages == []


def test_s03_boot_as_follower_leader_heartbeats_candidate_falls_back() -> None:
    core, st = make_core(heartbeat_ticks=2)
    assert core.role == Role.FOLLOWER and core.term == 0 and core.leader == 0
    elect(core, st)
    core.tick()
    assert drain(core, st).of(HeartbeatRequest) == []
    core.tick()
    assert sorted(m.dst for m in drain(core, st).of(HeartbeatRequest)) == [2, 3]
    cand, _cst = make_core(hs=HardState(term=4))
    cand.campaign()
    assert cand.role == Role.CANDIDATE and cand.term == 5
    cand.step(AppendRequest(src=2, dst=1, term=5, prev_index=0, prev_term=0))
    assert cand.role == Role.FOLLOWER and cand.leader == 2 and cand.term == 5


def test_s04_timeout_starts_election_win_lose_or_split() -> None:
    # win
    core, st = make_core(hs=HardState(term=1))
    while core.role == Role.FOLLOWER:
        core.tick()
    assert (core.role, core.term, core.vote) == (Role.CANDIDATE, 2, 1)
    reqs = drain(core, st).of(VoteRequest)
    assert sorted(r.dst for r in reqs) == [2, 3]
    core.step(VoteResponse(src=2, dst=1, term=2, granted=True))
    assert core.role == Role.LEADER
    # lose: someone else won this term
    core, st = make_core(hs=HardState(term=1))
    core.campaign()
    core.step(HeartbeatRequest(src=3, dst=1, term=2))
    assert core.role == Role.FOLLOWER and core.leader == 3
    # split: no majority, a new election with a higher term after another timeout
    core, st = make_core(voters=[1, 2, 3, 4], hs=HardState(term=1))
    core.campaign()
    drain(core, st)
    core.step(VoteResponse(src=2, dst=1, term=2, granted=False))
    for _ in range(20):
        core.tick()
    assert core.role == Role.CANDIDATE and core.term >= 3


def test_s05_one_vote_per_term_persisted_before_reply() -> None:
    core, st = make_core(hs=HardState(term=1))
    core.step(VoteRequest(src=2, dst=1, term=2, last_index=0, last_term=0))
    rd = core.ready()
    assert rd.hard_state is not None and rd.hard_state.vote == 2
    assert [type(m) for m in rd.persisted_messages] == [VoteResponse]
    assert not [m for m in rd.messages if isinstance(m, VoteResponse)]
    st.set_hard_state(rd.hard_state)
    core.on_persisted(rd.number)
    restarted = RaftCore(CoreConfig(id=1, pre_vote=False, check_quorum=False), st)
    restarted.step(VoteRequest(src=3, dst=1, term=2, last_index=5, last_term=1))
    (resp,) = drain(restarted, st).of(VoteResponse)
    assert not resp.granted  # already voted for 2 in term 2, even across a restart


def test_s06_randomized_timeouts_usually_single_candidate() -> None:
    single = 0
    for seed in range(100):
        cores = [make_core(i, seed=seed)[0] for i in (1, 2, 3)]
        for tick in range(1, 100):
            for c in cores:
                c.tick()
            started = [c for c in cores if c.role != Role.FOLLOWER]
            if started:
                assert 10 <= tick < 20
                single += len(started) == 1
                break
    assert single >= 80


def test_s07_up_to_date_voting() -> None:
    core, st = make_core(log=ents(1, 1, 3), hs=HardState(term=3))
    core.step(VoteRequest(src=2, dst=1, term=4, last_index=9, last_term=2))
    core.step(VoteRequest(src=3, dst=1, term=4, last_index=2, last_term=3))
    resps = {m.dst: m.granted for m in drain(core, st).of(VoteResponse)}
    assert resps == {2: False, 3: False}
    core.step(VoteRequest(src=3, dst=1, term=4, last_index=3, last_term=3))
    assert drain(core, st).of(VoteResponse)[0].granted


# -- replication --------------------------------------------------------------------------------


def test_s08_replicate_commit_at_majority_and_apply_in_order() -> None:
    c = Cluster(3, seed=8)
    c.elect(1)
    c.crash(3)
    idx = [c.propose(1, b"v%d" % i) for i in range(5)]
    c.stabilize()
    assert c.core(1).commit == idx[-1]  # leader + node 2 are a majority
    assert c.applied(2) == [(i, b"v%d" % k) for k, i in enumerate(idx)]  # commit reached it
    c.restart(3)
    c.advance(2)
    assert c.applied(3) == c.applied(1)


def test_s09_consistency_check_and_suffix_truncation() -> None:
    core, st = make_core(log=ents(1, 1, 2, 2), hs=HardState(term=3))
    core.step(AppendRequest(src=2, dst=1, term=3, prev_index=4, prev_term=3))
    (rej,) = drain(core, st).of(AppendResponse)
    assert rej.reject
    core.step(
        AppendRequest(
            src=2, dst=1, term=3, prev_index=2, prev_term=1, entries=tuple(ents(3, start=3))
        )
    )
    (ok,) = drain(core, st).of(AppendResponse)
    assert not ok.reject and ok.index == 3
    assert [st.term(i) for i in range(1, st.last_index() + 1)] == [1, 1, 3]


def test_s10_figure7_leader_repairs_divergent_follower_logs() -> None:
    leader_log = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
    followers = {
        "a": [1, 1, 1, 4, 4, 5, 5, 6, 6],
        "b": [1, 1, 1, 4],
        "c": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
        "d": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
        "e": [1, 1, 1, 4, 4, 4, 4],
        "f": [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
    }
    for name, flog in followers.items():
        lead, lst = make_core(1, log=ents(*leader_log), hs=HardState(term=7, commit=3))
        first = elect(lead, lst).messages  # node 3 grants the votes; the follower is node 2
        assert lead.term == 8, name
        fol, fst = make_core(2, log=ents(*flog), hs=HardState(term=7, commit=3))
        pump({1: (lead, lst), 2: (fol, fst)}, first)
        assert fst.entries(1, fst.last_index() + 1) == lst.entries(1, lst.last_index() + 1), name


def test_s11_figure8_never_commit_earlier_term_by_counting() -> None:
    lead, st = make_core(1, voters=[1, 2, 3, 4, 5], log=ents(1, 2), hs=HardState(term=3, commit=1))
    elect(lead, st)
    assert lead.term == 4 and lead.last_index == 3
    ack(lead, 2, 2)
    ack(lead, 3, 2)  # the term-2 entry is now on S1, S2, S3: a majority of five
    assert lead.commit == 1
    ack(lead, 2, 3)
    ack(lead, 3, 3)
    assert lead.commit == 3  # committing the term-4 entry commits index 2 with it


def test_s12_reordered_and_duplicated_responses() -> None:
    c = Cluster(3, seed=12)
    c.elect(1)
    for i in range(30):
        c.propose(1, b"d%d" % i)
        for n in c.alive_ids():
            while c.process(n) is not None:
                pass
        msgs = c.take_messages()
        c.network = list(reversed(msgs + msgs))  # every message twice, newest first
        c.deliver()
    c.advance(3)
    assert c.applied(2) == c.applied(1) == c.applied(3)
    assert [d for _, d in c.applied(3)] == [b"d%d" % i for i in range(30)]
    c.check_invariants()


# -- liveness extensions and membership ----------------------------------------------------------


def test_s13_prevote_rejoining_node_cannot_disrupt_the_leader() -> None:
    def run(pre_vote: bool) -> tuple[int, int | None]:
        c = Cluster(3, seed=13, config_overrides={"pre_vote": pre_vote, "check_quorum": False})
        c.elect(1)
        c.isolate(3)
        c.tick(3, 60)  # times out repeatedly while cut off
        c.stabilize()
        c.heal()
        c.advance(40)
        return c.core(1).term, c.leader()

    assert run(pre_vote=True) == (2, 1)
    term, _lead = run(pre_vote=False)
    assert term > 2  # without pre-vote the rejoining node forces a new term


def test_s14_check_quorum_steps_down_and_lease_refuses_votes() -> None:
    c = Cluster(3, seed=14, config_overrides={"check_quorum": True, "pre_vote": False})
    c.elect(1)
    # the lease: a vote request at a higher term is ignored while the leader is recent
    c.core(2).step(VoteRequest(src=3, dst=2, term=9, last_index=99, last_term=9))
    assert c.core(2).term == 2
    c.isolate(1)
    c.advance(25)
    assert c.core(1).role == Role.FOLLOWER


def test_s15_partial_partition_liveness_with_prevote_and_check_quorum() -> None:
    c = Cluster(5, seed=15, config_overrides={"pre_vote": True, "check_quorum": True})
    c.elect(1)
    for a, b in [(4, 1), (4, 3), (4, 5), (5, 1), (5, 2)]:
        c.block(a, b)
        c.block(b, a)
    term = c.core(1).term
    for _ in range(300):
        c.advance(1)
        assert c.leader() == 1 and c.core(1).term == term
    c.propose(1, b"still-live")
    c.advance(2)
    assert c.applied(2)[-1][1] == b"still-live"


def test_s16_own_term_commit_before_conf_change_and_removing_the_leader() -> None:
    c = Cluster(3, seed=16)
    c.campaign(1)
    c.drop(lambda m: isinstance(m, AppendRequest))
    c.stabilize()
    assert c.core(1).role == Role.LEADER
    try:
        c.propose_conf_change(1, ConfChange(changes=(ConfChangeSingle(ConfChangeType.REMOVE, 1),)))
    except ProposalDropped as exc:
        assert exc.reason == "conf-change-pending"
    else:  # pragma: no cover
        raise AssertionError("conf change accepted before an own-term commit")
    c.heal()
    c.advance(1)
    c.propose_conf_change(1, ConfChange(changes=(ConfChangeSingle(ConfChangeType.REMOVE, 1),)))
    c.stabilize()
    assert c.core(1).role == Role.FOLLOWER
    c.advance(40)
    assert c.leader() in (2, 3)
    assert c.core(2).conf_state.voters == {2, 3}


# -- snapshots, compaction and restart -----------------------------------------------------------


def compacted_leader(
    last: int = 10, snap: int = 5, compact: int | None = None
) -> tuple[RaftCore, MemoryStorage]:
    st = make_storage(log=ents(*[1] * last), hs=HardState(term=1, commit=last))
    st.set_snapshot(SnapshotMeta(index=snap, term=1, conf=CONF3))
    st.compact(snap if compact is None else compact)
    core = RaftCore(CoreConfig(id=1, pre_vote=False, check_quorum=False, applied=last), st)
    elect(core, st)
    return core, st


def test_s17_send_snapshot_when_compacted() -> None:
    c, st = compacted_leader()
    ack(c, 2, c.last_index - 1, reject=True, hint_index=0)
    (snap,) = drain(c, st).of(SnapshotRequest)
    assert snap.dst == 2 and snap.meta.index == 5
    assert c.status().progress[2].pending_snapshot == 5
    # an inactive follower gets none
    pr = c._trk.progress[3]
    pr.recent_active, pr.msg_app_flow_paused, pr.next = False, False, 2
    c.transfer_leadership(3)
    assert drain(c, st).of(SnapshotRequest) == []


def test_s18_snapshot_progress_state_machine() -> None:
    def snapshotting() -> tuple[RaftCore, MemoryStorage]:
        c, st = compacted_leader()
        ack(c, 2, c.last_index - 1, reject=True, hint_index=0)
        drain(c, st)
        assert c.status().progress[2].state == "snapshot"
        return c, st

    c, st = snapshotting()  # a pending snapshot pauses appends
    c.propose(b"x")
    assert [m for m in drain(c, st).messages if m.dst == 2] == []
    c, st = snapshotting()  # failure -> probe from match
    c.report_snapshot(2, ok=False)
    assert (c.status().progress[2].state, c.status().progress[2].next) == ("probe", 1)
    c, st = snapshotting()  # success -> next = snapshot index + 1
    c.report_snapshot(2, ok=True)
    assert (c.status().progress[2].state, c.status().progress[2].next) == ("probe", 6)
    ack(c, 2, 5)
    assert c.status().progress[2].state == "replicate"
    c, st = snapshotting()  # an acknowledgement at or beyond the pending index aborts it
    ack(c, 2, 6)
    assert c.status().progress[2].state == "replicate"


def test_s19_snapshot_at_last_index_returns_to_replicate_at_once() -> None:
    c = Cluster(3, seed=19)
    c.elect(1)
    c.isolate(3)
    for i in range(10):
        c.propose(1, b"s%d" % i)
    c.stabilize()
    meta = c.compact(1)
    assert meta.index == c.core(1).last_index == c.core(1).commit
    c.heal()
    c.advance(1)
    pr = c.core(1).status().progress[3]
    assert (pr.state, pr.match) == ("replicate", meta.index)  # without any new entry
    assert c.nodes[3].storage.snapshot().index == meta.index


def test_s20_stale_snapshot_still_catches_up() -> None:
    # pending snapshot at 8, but the log is kept from 5: a follower at 5 can be caught up
    c, st = compacted_leader(last=10, snap=8, compact=4)
    ack(c, 2, c.last_index - 1, reject=True, hint_index=0)
    drain(c, st)
    assert c.status().progress[2].pending_snapshot == 8
    ack(c, 2, 5)  # it installed an older snapshot (at 5) from somewhere else
    pr = c.status().progress[2]
    assert (pr.state, pr.match) == ("replicate", 5)


def test_s21_slow_follower_after_compaction() -> None:
    c = Cluster(3, seed=21, config_overrides={"max_inflight_msgs": 2, "max_msg_bytes": 64})
    c.elect(1)
    c.stabilize()
    # the follower is throttled: its appends are lost while its window fills up
    c.drop(lambda m: m.dst == 3 and isinstance(m, AppendRequest))
    for i in range(20):
        c.propose(1, b"slow%02d" % i)
        c.stabilize()
    pr = c.core(1).status().progress[3]
    assert pr.state == "replicate" and pr.paused
    # compact past the follower's match, but keep the entry its next probe is anchored at
    c.compact(1, pr.next - 1)
    assert c.core(1).first_index == pr.next > pr.match + 1
    c.heal()
    seen: list[Message] = []
    c.drop(lambda m: seen.append(m) is not None)  # records, drops nothing
    c.advance(3)
    rejected = [m for m in seen if isinstance(m, AppendResponse) and m.src == 3 and m.reject]
    snaps = [m for m in seen if isinstance(m, SnapshotRequest) and m.dst == 3]
    assert rejected and snaps
    assert seen.index(rejected[0]) < seen.index(snaps[0])
    assert c.applied(3) == c.applied(1)


def test_s22_no_state_regression() -> None:
    # a snapshot at or below commit is ignored (commit may still fast-forward)
    core, _ = make_core(log=ents(1, 1, 1), hs=HardState(term=1, commit=3))
    core.step(SnapshotRequest(src=2, dst=1, term=2, meta=SnapshotMeta(2, 1, CONF3)))
    assert core.ready().snapshot is None and core.commit == 3 and core.last_index == 3
    # a snapshot covering a prefix of the log keeps the suffix
    core, _ = make_core(log=ents(1, 1, 2, 2, 2), hs=HardState(term=2, commit=1))
    core.step(SnapshotRequest(src=2, dst=1, term=2, meta=SnapshotMeta(3, 2, CONF3)))
    rd = core.ready()
    assert rd.snapshot is None and core.commit == 3 and core.last_index == 5
    # a newer snapshot replaces the whole log
    core, _ = make_core(log=ents(1, 1, 2), hs=HardState(term=2, commit=1))
    core.step(SnapshotRequest(src=2, dst=1, term=3, meta=SnapshotMeta(9, 3, CONF3)))
    rd = core.ready()
    assert rd.snapshot == SnapshotMeta(9, 3, CONF3)
    assert (core.first_index, core.last_index, core.commit) == (10, 9, 9)
    assert core.term_at(3) == 0  # the old entries are gone
