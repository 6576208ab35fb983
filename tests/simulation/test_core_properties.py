"""Property tests of the Raft core over random schedules (see ``coresim.py``).

Each example is one integer seed; the seed drives a ``random.Random`` that generates a schedule
of ticks, deliveries (in any order), duplications, drops, proposals, partitions, crashes (also
between taking a Ready and persisting it), restarts from persisted state, slow disks,
compactions and snapshot installs, leadership transfers and read-index requests. After every
action the simulator checks Election Safety, Log Matching, Leader Completeness, State Machine
Safety (also across snapshot installs), in-order application, ReadIndex safety and that commit
never goes backwards; at the end it heals everything and requires a leader and the commit of
new proposals within a bounded number of ticks.

Replay a failure: the failing seed is printed (``Falsifying example: ...seed=N``) and in the
error, together with a minimized schedule. Run exactly that seed with::

    TRIORAFT_SEED=N pytest tests/simulation -k <profile>

The larger run: ``pytest -m slow tests/simulation``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence

import pytest
from coresim import Action, Sim, SimConfig, Violation, minimize
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

ENV_SEED = os.environ.get("TRIORAFT_SEED")

PROFILES: dict[str, tuple[SimConfig, int]] = {
    # name: (configuration, actions before healing)
    "three": (SimConfig(nodes=3), 400),
    "five": (SimConfig(nodes=5), 400),
    "snapshots": (
        SimConfig(
            nodes=3,
            keep_after_compact=1,
            weights={"compact": 12, "propose_leader": 10, "isolate": 1.5, "heal": 0.8},
        ),
        400,
    ),
    "lossy": (
        SimConfig(
            nodes=3,
            weights={"drop": 25, "duplicate": 12, "crash": 0, "crash_mid_ready": 0},
        ),
        400,
    ),
    "flow-control": (
        SimConfig(nodes=3, max_msg_bytes=16, max_inflight_msgs=2, weights={"propose_leader": 10}),
        400,
    ),
    "plain-raft": (SimConfig(nodes=3, pre_vote=False, check_quorum=False), 400),
    "membership": (
        SimConfig(nodes=3, spares=2, weights={"conf_change": 3, "propose_leader": 6}),
        400,
    ),
    # The same without the runtime's fresh snapshot for joiners: the core alone must cope.
    "membership-core": (
        SimConfig(
            nodes=3,
            spares=2,
            fresh_snapshot_for_joiners=False,
            weights={"conf_change": 3, "propose_leader": 6, "compact": 8},
        ),
        400,
    ),
}

LIVENESS_TICKS = 200


@pytest.fixture(autouse=True)
def _quiet_core_logs() -> Iterator[None]:
    # The cores log every election at INFO and some recoveries at WARNING/ERROR; thousands of
    # runs would drown the report.
    logger = logging.getLogger("trioraft.core")
    old = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(old)


def _run(seed: int, profile: str, actions: Sequence[Action] | None = None) -> Sim:
    config, steps = PROFILES[profile]
    sim = Sim(seed, config)
    if actions is None:
        for _ in range(steps):
            sim.apply_action(sim.random_action())
    else:
        sim.run(actions)
    sim.heal_and_check_liveness(max_ticks=LIVENESS_TICKS)
    return sim


def _failure_kind(exc: BaseException) -> str:
    if isinstance(exc, Violation):
        return str(exc).split(":", 1)[0]
    return type(exc).__name__  # the core raised (step() must never raise)


def check_seed(seed: int, profile: str) -> Sim:
    """Run one seed; on a violation, minimize the schedule and fail with a replay recipe."""
    note(f"TRIORAFT_SEED={seed} profile={profile}")
    try:
        return _run(seed, profile)
    except Exception as exc:
        kind = _failure_kind(exc)
        config, steps = PROFILES[profile]
        recorder = Sim(seed, config)
        for _ in range(steps):
            recorder.trace.append(recorder.random_action())
        trace = recorder.trace

        def still_fails(actions: Sequence[Action]) -> bool:
            try:
                _run(seed, profile, actions)
            except Exception as again:
                return _failure_kind(again) == kind
            return False

        small = minimize(still_fails, trace) if still_fails(trace) else trace
        raise Violation(
            f"{type(exc).__name__}: {exc}\n  seed={seed} profile={profile}\n"
            f"  replay: TRIORAFT_SEED={seed} pytest tests/simulation -k '{profile}'\n"
            f"  minimized schedule ({len(small)} of {len(trace)} actions): "
            + " ".join(str(a) for a in small)
        ) from exc


def seeds() -> st.SearchStrategy[int]:
    if ENV_SEED is not None:
        return st.just(int(ENV_SEED))
    return st.integers(min_value=0, max_value=2**32 - 1)


def _examples(default: int) -> int:
    return 1 if ENV_SEED is not None else default


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_core_properties(profile: str) -> None:
    @settings(
        max_examples=_examples(60),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        database=None,
    )
    @given(seed=seeds())
    def run(seed: int) -> None:
        check_seed(seed, profile)

    run()


@pytest.mark.slow
@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_core_properties_long(profile: str) -> None:
    @settings(
        max_examples=_examples(1500),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        database=None,
    )
    @given(seed=seeds())
    def run(seed: int) -> None:
        check_seed(seed, profile)

    run()


def test_schedule_replays_identically() -> None:
    """The replay recipe works: the same seed gives the same run, and a recorded action list
    replays to the same state without the generator."""
    first = _run(1234, "snapshots")
    second = _run(1234, "snapshots")
    assert first.trace == second.trace
    assert first.stats == second.stats
    replayed = _run(1234, "snapshots", first.trace[: PROFILES["snapshots"][1]])
    assert replayed.applied.keys() == first.applied.keys()
    assert [n.fsm for n in replayed.nodes.values()] == [n.fsm for n in first.nodes.values()]


def test_minimize_shrinks_a_failing_schedule() -> None:
    acts = [Action("tick", i) for i in range(50)]

    def failing(candidate: Sequence[Action]) -> bool:
        return Action("tick", 17) in candidate and Action("tick", 33) in candidate

    assert minimize(failing, acts) == [Action("tick", 17), Action("tick", 33)]


def test_schedules_exercise_the_interesting_paths() -> None:
    """Guard against a simulator that silently stops covering snapshots, crashes or reads."""
    totals: dict[str, int] = {}
    for seed in range(12):
        for profile in ("snapshots", "three"):
            sim = _run(seed, profile)
            for field in ("snapshots_installed", "crashes", "reads_confirmed", "compactions"):
                totals[field] = totals.get(field, 0) + getattr(sim.stats, field)
    assert all(v > 0 for v in totals.values()), totals
