"""Regressions found by the property tests (see ``test_core_properties.py``), as small
deterministic scenarios on the same simulator."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from coresim import Action, Sim, SimConfig

from trioraft.core.ready import Role
from trioraft.core.types import ConfChange, ConfChangeSingle, ConfChangeType


@pytest.fixture(autouse=True)
def _quiet_core_logs() -> Iterator[None]:
    logger = logging.getLogger("trioraft.core")
    old = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(old)


def _joiner_after_compaction(fresh_snapshot_for_joiners: bool) -> Sim:
    """Three voters elect a leader and commit a few entries; the leader snapshots and compacts
    its log; then node 4 is added as a voter. Node 4 needs index 1, which is compacted, so it
    can only catch up through a snapshot, and the leader's newest snapshot predates node 4."""
    sim = Sim(
        0, SimConfig(nodes=3, spares=1, fresh_snapshot_for_joiners=fresh_snapshot_for_joiners)
    )
    for _ in range(50):
        sim._round()
        if sim.leader() is not None:
            break
    leader = sim.leader()
    assert leader is not None
    sim.apply_action(Action("propose_leader", 0, 4))
    sim._round()
    assert sim._compact(leader, 0)
    sim._conf_change(4, 0)  # ADD_VOTER 4
    assert sim.stats.conf_changes == 1
    sim.heal_and_check_liveness(max_ticks=100)
    return sim


def test_joiner_added_after_newest_snapshot_catches_up_without_runtime_help() -> None:
    """Found by the 'membership' profile (TRIORAFT_SEED=270 without the runtime's fresh
    snapshot): the leader core sent storage.snapshot(), whose ConfState predated the joiner,
    the joiner's core ignored snapshots that did not include it, and the leader looped probe ->
    snapshot -> ignored forever. Fixed in the core (4a6f1da): a follower restores a snapshot
    that predates its membership."""
    sim = _joiner_after_compaction(fresh_snapshot_for_joiners=False)
    assert sim.stats.fresh_snapshots == 0
    assert sim.stats.snapshots_installed >= 1
    assert sim.nodes[4].fsm.index == max(n.fsm.index for n in sim.nodes.values())


def test_joiner_added_after_newest_snapshot_catches_up_with_a_fresh_snapshot() -> None:
    sim = _joiner_after_compaction(fresh_snapshot_for_joiners=True)
    assert sim.stats.fresh_snapshots >= 1
    assert sim.stats.snapshots_installed >= 1
    assert sim.nodes[4].fsm.index == max(n.fsm.index for n in sim.nodes.values())


def _deliver_all(sim: Sim) -> None:
    for _ in range(50):
        if not sim.net:
            return
        batch, sim.net = sim.net, []
        for f in batch:
            sim._deliver(f)
        sim.settle()


def _change(sim: Sim, change: ConfChangeType, node_id: int) -> None:
    leader = sim.leader()
    assert leader is not None and leader.core is not None
    leader.core.propose_conf_change(ConfChange(changes=(ConfChangeSingle(change, node_id),)))
    sim.settle()


def _shrink_to_one_voter_then_crash_leader(change: ConfChangeType) -> Sim:
    """Two voters L (leader) and F. L proposes demoting F (``change``); the entry is durable on
    both, F acknowledges, L commits and applies it (L is now the only voter) but its disk is
    slow: the hard state carrying the new commit index and a few newer entries are not yet
    durable on L, while F already stored them and learned the commit. L crashes. After the
    restart L knows only the old configuration {L, F} and needs F's vote, which F refuses
    because F's log is longer; F is a learner in its configuration, so it never campaigns."""
    sim = Sim(0, SimConfig(nodes=3))
    for _ in range(50):
        sim._round()
        if sim.leader() is not None:
            break
    first = sim.leader()
    assert first is not None and first.core is not None
    _change(sim, ConfChangeType.REMOVE, max(i for i in (1, 2, 3) if i != first.id))
    _deliver_all(sim)
    for _ in range(3):
        sim._round()
    leader = sim.leader()
    assert leader is not None and leader.core is not None
    assert len(leader.core.conf_state.voters) == 2
    (other,) = leader.core.conf_state.voters - {leader.id}
    follower = sim.nodes[other]
    _change(sim, change, follower.id)
    leader.hold_writes = True
    _deliver_all(sim)
    assert leader.core.conf_state.voters == {leader.id}
    assert leader.storage.hard_state.commit < leader.core.commit
    for j in range(3):
        leader.core.propose(b"tail%d" % j)
    sim.settle()
    _deliver_all(sim)
    assert follower.storage.last_index() > leader.storage.last_index()
    sim._crash(leader)
    sim.heal_and_check_liveness(max_ticks=100)
    return sim


def test_two_voters_demote_one_and_leader_crashes() -> None:
    """Apply-time membership (as in etcd) used to lose liveness here: the remaining voter kept
    the old configuration and needed the vote of the demoted node, which refused it (longer
    log) and could not campaign itself (etcd-io/etcd#10563, #12359). Found by the 'membership'
    profile (seeds 10192 and 10234, 1000-action schedules); fixed in the core (80afc81): vote
    responses carry the voter's commit, and a candidate holding that entry adopts it."""
    sim = _shrink_to_one_voter_then_crash_leader(ConfChangeType.ADD_LEARNER)
    assert sim.stats.liveness_leader_ticks > 0


def test_candidate_removed_mid_election_does_not_become_leader() -> None:
    """Found by the 'membership-core' profile (seeds 40167 and 40429, 1000-action schedules):
    a candidate learned from a pre-vote response that the entry removing it was committed,
    applied it mid-election, still won with the remaining voters' quorum, and step() raised
    KeyError. Fixed in the core (9450d17)."""
    sim = Sim(0, SimConfig(nodes=3))
    n1, n2, n3 = (sim.nodes[i] for i in (1, 2, 3))
    assert n1.core is not None and n2.core is not None and n3.core is not None
    sim.settle()  # apply the bootstrap configuration
    n1.core.campaign()
    sim.settle()
    _deliver_all(sim)
    assert sim.leader() is n1
    # Remove node 3: it stores the entry but never hears that it committed.
    n1.core.propose_conf_change(ConfChange(changes=(ConfChangeSingle(ConfChangeType.REMOVE, 3),)))
    sim.settle()
    batch, sim.net = sim.net, []
    for f in batch:  # the appends reach 2 and 3
        sim._deliver(f)
    sim.settle()
    sim.blocked = {(1, 3)}
    _deliver_all(sim)  # the acknowledgements: 1 commits and applies the removal
    n1.core.tick()
    sim.settle()
    _deliver_all(sim)  # a heartbeat tells 2 the commit
    assert n2.core.conf_state.voters == {1, 2}
    assert 3 in n3.core.conf_state.voters
    assert n3.core.last_index == n1.core.last_index
    # Node 1 loses its quorum and steps down; node 2's leader lease expires.
    sim.blocked = {(a, b) for a in (1, 2, 3) for b in (1, 2, 3) if a != b}
    for _ in range(40):
        n1.core.tick()
        n2.core.tick()
        sim.settle()
    sim.net = []
    sim.blocked = set()
    # Node 3 campaigns: pre-vote responses carry commit, it applies its own removal, and the
    # votes of 1 and 2 form a quorum of {1, 2}.
    n3.core.campaign()
    sim.settle()
    _deliver_all(sim)
    sim.check()
    assert n3.core.role is not Role.LEADER


def _lead_twice_in_one_term(check_durable_vote: bool) -> None:
    """Node 1's disk is slow. It campaigns; nodes 2 and 3 grant their votes before node 1's
    hard state (term 2, vote 1) is durable, and node 1 becomes leader anyway: two external
    votes are a quorum of three. Node 1 appends "first" at index 5 (term 2), which reaches
    node 2 only, and crashes: it restarts at term 1. Node 3 (which voted for 1 in term 2 and
    saw nothing else) votes for it again, so node 1 leads term 2 a second time and appends
    "second" at index 5: two different entries with the same index and term."""
    sim = Sim(0, SimConfig(nodes=3, check_durable_vote=check_durable_vote))
    n1, n2, n3 = (sim.nodes[i] for i in (1, 2, 3))
    assert n1.core is not None
    sim.settle()
    n1.hold_writes = True
    n1.core.campaign()
    sim.settle()
    while n1.core.role is not Role.LEADER and sim.net:
        sim._deliver(sim.net.pop(0))
        sim.settle()
    # Since the core fix, node 1 waits for its own vote to be durable before leading.
    assert n1.core.role is Role.CANDIDATE
    if check_durable_vote:
        sim.check()  # Durable Vote
    sim.blocked = {(1, 3)}
    _deliver_all(sim)
    if n1.core.role is Role.LEADER:
        n1.core.propose(b"first")
        sim.settle()
        _deliver_all(sim)
    sim.net = []
    sim.blocked = set()
    for n in (n1, n2, n3):
        sim._crash(n)
    sim._start(n1)
    sim._start(n3)
    sim.settle()
    n1.core.campaign()
    sim.settle()
    _deliver_all(sim)
    if n1.core.role is Role.LEADER:
        n1.core.propose(b"second")
        sim.settle()
        _deliver_all(sim)
    sim.check()  # Log Matching


# A candidate became leader when the other voters' grants formed a quorum even though its own
# hard state (new term, vote for itself) was not yet durable (pipelined writes: Ready N+1
# processed before Ready N is acknowledged). Crashing before the write, it restarted at the old
# term, won the same term again from voters that had already voted for it, and wrote a
# different entry at an index it had already replicated in that term (Log Matching broken).
# Found by the 'membership-core' profile (seed 60130, 1000-action schedule) and the 'three'
# profile (seed 535). Fixed in the core: a candidate takes office only once its own vote is
# durable (tests/core/test_election.py).


def test_leader_only_after_its_vote_is_durable() -> None:
    _lead_twice_in_one_term(check_durable_vote=True)


def test_no_term_is_led_twice_with_different_logs() -> None:
    _lead_twice_in_one_term(check_durable_vote=False)


_SEED_535_THREE = (
    "tick(54911,51200) tick(30512,14158) tick(43154,45518) tick(62855,23838) "
    "slow_disk(6627,43672) tick_all(14418,734) slow_disk(38957,19564) tick_all(59616,64024) "
    "tick(7949,60982) tick(1727,3534) tick(57263,19458) tick_all(14014,23231) "
    "deliver(24974,26121) drop(56925,14620) deliver(45484,30332) deliver(53744,58503) "
    "deliver(25404,40232) persist(4113,43874) deliver(57440,7810) deliver(33971,34325) "
    "deliver(27521,24676) deliver(46439,54027) deliver(47955,64334) propose(49625,44070) "
    "crash(27641,24838) deliver(52322,11750) crash_mid_ready(50358,56296) deliver(57684,45760)"
)


@pytest.mark.parametrize("check_durable_vote", [False, True])
def test_seed_535_three_leader_with_volatile_vote(check_durable_vote: bool) -> None:
    """The minimized 'three' schedule of TRIORAFT_SEED=535: node 3 (slow disk) won term 2 on
    the grants of nodes 1 and 2 alone, proposed at index 5, crashed before its term was
    durable, was re-elected in term 2 and put a different entry at index 5."""
    actions = []
    for item in _SEED_535_THREE.split():
        kind, args = item.rstrip(")").split("(")
        a, b = (int(x) for x in args.split(","))
        actions.append(Action(kind, a, b))
    sim = Sim(535, SimConfig(nodes=3, check_durable_vote=check_durable_vote))
    sim.run(actions)
    sim.heal_and_check_liveness(max_ticks=200)
