"""Regressions found by the property tests (see ``test_core_properties.py``), as small
deterministic scenarios on the same simulator."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from coresim import Action, Sim, SimConfig


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
