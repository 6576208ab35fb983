"""The simulator must catch real bugs: each test breaks one durability or protocol promise in
the *environment* (not the core) and requires that some seed reports a violation. This guards
against a simulator whose invariant checks have quietly become vacuous."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import attrs
import pytest
from coresim import InFlight, Node, Sim, SimConfig, Violation

from trioraft.core.messages import VoteResponse
from trioraft.core.storage import MemoryStorage
from trioraft.core.types import HardState

CRASHY = SimConfig(nodes=3, weights={"crash": 3, "restart": 6, "campaign": 1, "propose_leader": 8})


@pytest.fixture(autouse=True)
def _quiet_core_logs() -> Iterator[None]:
    logger = logging.getLogger("trioraft.core")
    old = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(old)


class AmnesiacSim(Sim):
    """Restarts forget the persisted vote (a runtime that does not fsync it before replying)."""

    def _crash(self, node: Node) -> None:
        super()._crash(node)
        hs = node.storage.hard_state
        node.storage.set_hard_state(HardState(term=hs.term, vote=0, commit=hs.commit))


class LossyDiskSim(Sim):
    """Acknowledges writes but loses the log tail on a crash (no fsync before the ack)."""

    def _crash(self, node: Node) -> None:
        super()._crash(node)
        st = node.storage
        keep = max(st.first_index() - 1, st.hard_state.commit - 3)
        if st.last_index() > keep:
            ms = MemoryStorage()
            snap = st.snapshot()
            if snap.index:
                ms.apply_snapshot(snap)
            ms.set_hard_state(attrs.evolve(st.hard_state, commit=min(st.hard_state.commit, keep)))
            if keep >= st.first_index():
                ms.append(st.entries(st.first_index(), keep + 1))
            node.storage = ms


class VoteForgingSim(Sim):
    """The network turns every refused vote into a granted one."""

    def _deliver(self, f: InFlight) -> None:
        m = f.msg
        if isinstance(m, VoteResponse) and not m.granted:
            f = InFlight(attrs.evolve(m, granted=True), f.incarnation)
        super()._deliver(f)


class EagerSenderSim(Sim):
    """Sends the replies that promise durability before the write (slow disks make it show)."""

    send_persisted_early = True


def _first_violation(sim_cls: type[Sim], config: SimConfig, seeds: range, steps: int) -> str:
    for seed in seeds:
        sim = sim_cls(seed, config)
        try:
            for _ in range(steps):
                sim.apply_action(sim.random_action())
            sim.heal_and_check_liveness()
        except Violation as exc:
            return f"seed {seed}: {exc}"
    return ""


@pytest.mark.parametrize(
    ("sim_cls", "expected"),
    [
        (AmnesiacSim, ("Election Safety", "Log Matching", "Leader Completeness", "State Machine")),
        (
            LossyDiskSim,
            ("Leader Completeness", "State Machine", "Log Matching", "commit", "liveness"),
        ),
        (
            VoteForgingSim,
            ("Election Safety", "Log Matching", "Leader Completeness", "State", "Durable"),
        ),
        (EagerSenderSim, ("Durable Ack", "Durable Vote")),
    ],
)
def test_broken_environment_is_caught(sim_cls: type[Sim], expected: tuple[str, ...]) -> None:
    found = _first_violation(sim_cls, CRASHY, range(200), 400)
    assert found, f"{sim_cls.__name__}: no violation in 200 seeds"
    print(f"{sim_cls.__name__}: {found.splitlines()[0]}")
    assert any(word in found for word in expected), found
