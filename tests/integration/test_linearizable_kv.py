"""End-to-end linearizability of a key-value store on an in-memory trioraft cluster.

Concurrent clients issue put / delete / cas (through the log) and get (a ReadIndex barrier plus
a local read, or a "get" command through the log) with unique written values, against random
nodes (followers forward), while a nemesis partitions the network, isolates the leader, drops,
duplicates and reorders messages, crashes and restarts nodes (losing unsynced writes), and
forces snapshots (tiny snapshot thresholds also make followers catch up by snapshot install).
Every operation is recorded with ``trio.current_time()`` (the MockClock: one virtual clock, no
skew) and the history is checked with :mod:`trioraft.testing.linearizability`, after narrowing
ambiguous writes with what the state machines applied (etcd's history patching).

Seeds are printed; ``TRIORAFT_SEED=N pytest tests/integration/test_linearizable_kv.py`` reruns
one (trio's scheduler is not seeded, so a rerun follows the same choices but not necessarily
the same interleaving). ``-m slow`` runs longer histories.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Callable, Hashable
from typing import Any

import attrs
import cbor2
import pytest
import trio
import trio.testing

from trioraft import AmbiguousOutcome, NodeStopped, NotLeader, ProposalDropped, RaftError, Timeout
from trioraft.statemachine import Saver, SnapshotReader, SnapshotWriter
from trioraft.testing.cluster import Cluster, open_cluster
from trioraft.testing.linearizability import (
    History,
    KvCas,
    KvDelete,
    KvGet,
    KvInput,
    KvModel,
    KvOutput,
    KvPut,
    Operation,
    Verdict,
    check_operations,
    patch_ambiguous,
)

KV = KvModel()


# --- the replicated state machine -------------------------------------------------------------


@attrs.define
class Registry:
    """What every replica applied, shared by all nodes of the test: request id -> (index,
    took effect). Conflicting records (the same request at two indexes, or different effects)
    are State Machine Safety / exactly-once violations."""

    applied: dict[str, tuple[int, bool]] = attrs.Factory(dict)
    conflicts: list[str] = attrs.Factory(list)
    restores: int = 0  # state machine restores from a snapshot (start-up or install)

    def record(self, rid: str, index: int, effect: bool) -> None:
        prev = self.applied.setdefault(rid, (index, effect))
        if prev != (index, effect):
            self.conflicts.append(f"{rid}: applied as {prev} and as {(index, effect)}")


class KvStateMachine:
    """A dict of str -> str. Commands are CBOR lists ``[rid, op, key, a, b]``."""

    def __init__(self, registry: Registry) -> None:
        self.data: dict[str, str] = {}
        self.registry = registry

    def apply(self, index: int, data: bytes) -> Any:
        rid, op, key, a, b = cbor2.loads(data)
        if op == "put":
            self.data[key] = a
            self.registry.record(rid, index, True)
            return None
        if op == "delete":
            self.data.pop(key, None)
            self.registry.record(rid, index, True)
            return None
        if op == "cas":
            ok = self.data.get(key) == a
            if ok:
                self.data[key] = b
            self.registry.record(rid, index, ok)
            return ok
        if op == "get":
            self.registry.record(rid, index, False)
            return self.data.get(key)
        raise ValueError(f"unknown op {op!r}")

    def capture(self) -> Saver:
        frozen = dict(self.data)

        async def saver(writer: SnapshotWriter) -> None:
            await writer.write_file("kv", cbor2.dumps(frozen))

        return saver

    async def restore(self, reader: SnapshotReader) -> None:
        self.data = dict(cbor2.loads(await reader.read_file("kv")))
        self.registry.restores += 1


# --- clients ----------------------------------------------------------------------------------


@attrs.define
class Counts:
    ok: int = 0
    failed: int = 0
    ambiguous: int = 0
    by_error: dict[str, int] = attrs.Factory(dict)

    def error(self, exc: BaseException) -> None:
        name = type(exc).__name__
        if isinstance(exc, ProposalDropped):
            name = f"{name}({exc.reason})"
        self.by_error[name] = self.by_error.get(name, 0) + 1


@attrs.define
class Workload:
    cluster: Cluster
    registry: Registry
    history: History[KvInput, KvOutput]
    rng: random.Random
    keys: list[str]
    counts: Counts = attrs.Factory(Counts)
    definite_failures: dict[str, str] = attrs.Factory(dict)  # request id -> error
    seq: int = 0
    log_reads: float = 0.15  # share of reads that go through the log instead of ReadIndex
    unsafe_reads: bool = False  # read the local state without a barrier (must be caught)

    def _pick_node(self) -> int | None:
        running = [n.id for n in self.cluster.running]
        return self.rng.choice(running) if running else None

    async def client(self, deadline: float) -> None:
        client = self.history.new_client()
        recent: dict[Hashable, Hashable | None] = {}
        while trio.current_time() < deadline:
            await trio.sleep(self.rng.uniform(0.0, 0.2))
            nid = self._pick_node()
            if nid is None:
                continue
            key = self.rng.choice(self.keys)
            roll = self.rng.random()
            self.seq += 1
            rid = f"r{self.seq}"
            if roll < 0.45:
                await self._read(client, nid, key, rid, recent)
            else:
                if roll < 0.75:
                    value = f"v{self.seq}"
                    inp: KvInput = KvPut(key, value)
                    cmd: list[Any] = [rid, "put", key, value, None]
                elif roll < 0.85:
                    inp = KvDelete(key)
                    cmd = [rid, "delete", key, None, None]
                else:
                    expected = recent.get(key)
                    value = f"v{self.seq}"
                    inp = KvCas(key, expected, value)
                    cmd = [rid, "cas", key, expected, value]
                if not await self._write(client, nid, inp, cmd, rid, recent):
                    client = self.history.new_client()  # Jepsen's process model

    async def _write(
        self,
        client: int,
        nid: int,
        inp: KvInput,
        cmd: list[Any],
        rid: str,
        recent: dict[Hashable, Hashable | None],
    ) -> bool:
        token = self.history.invoke(client, inp, tag=rid)
        try:
            node = self.cluster.node(nid)
            result = await node.propose(cbor2.dumps(cmd))
        except (ProposalDropped, NotLeader, KeyError) as exc:
            # Certainly not appended: not part of the history (checked against the replicas
            # after the run).
            self.history.fail(token)
            self.counts.failed += 1
            self.counts.error(exc)
            self.definite_failures[rid] = repr(exc)
            return True
        except (AmbiguousOutcome, NodeStopped, RaftError, OSError) as exc:
            self.history.ambiguous(token)
            self.counts.ambiguous += 1
            self.counts.error(exc)
            return False
        if isinstance(inp, KvCas):
            self.history.ok(token, KvOutput(ok=bool(result)))
            if result:
                recent[inp.key] = inp.new
        else:
            self.history.ok(token, KvOutput())
            if isinstance(inp, KvPut):
                recent[inp.key] = inp.value
            else:
                recent[inp.key] = None
        self.counts.ok += 1
        return True

    async def _read(
        self, client: int, nid: int, key: str, rid: str, recent: dict[Hashable, Hashable | None]
    ) -> None:
        token = self.history.invoke(client, KvGet(key), tag=rid)
        try:
            node = self.cluster.node(nid)
            if self.unsafe_reads:
                value = self.cluster.state_machine(nid).data.get(key)
            elif self.rng.random() < self.log_reads:
                value = await node.propose(cbor2.dumps([rid, "get", key, None, None]))
            else:
                sm: KvStateMachine = self.cluster.state_machine(nid)
                await node.read_barrier()
                # No checkpoint between the barrier and this read.
                value = sm.data.get(key)
        except (ProposalDropped, NotLeader, Timeout, NodeStopped, KeyError) as exc:
            self.history.fail(token)  # a read that failed has no effect
            self.counts.failed += 1
            self.counts.error(exc)
            return
        except (AmbiguousOutcome, RaftError, OSError) as exc:
            self.history.ambiguous(token)  # dropped by the checker (read-only)
            self.counts.ambiguous += 1
            self.counts.error(exc)
            return
        self.history.ok(token, KvOutput(value=value))
        recent[key] = value
        self.counts.ok += 1


# --- nemesis ----------------------------------------------------------------------------------


@attrs.define
class NemesisLog:
    events: list[tuple[float, str]] = attrs.Factory(list)

    def add(self, what: str) -> None:
        self.events.append((trio.current_time(), what))


FAULTS = (
    "partition",
    "isolate-leader",
    "lossy",
    "crash-leader",
    "crash-any",
    "snapshot",
    "slow-reorder",
)


async def nemesis(
    cluster: Cluster,
    rng: random.Random,
    deadline: float,
    log: NemesisLog,
    n: int,
    faults: tuple[str, ...] = FAULTS,
) -> None:
    net = cluster.network
    ids = list(range(1, n + 1))
    while trio.current_time() < deadline:
        await trio.sleep(rng.uniform(1.0, 3.0))  # a quiet period
        if trio.current_time() >= deadline:
            break
        fault = rng.choice(faults)
        log.add(fault)
        duration = rng.uniform(1.0, 4.0)
        leader = next((x.id for x in cluster.running if x.is_leader), None)
        if fault == "partition":
            side = set(rng.sample(ids, rng.randrange(1, n)))
            net.partition([sorted(side), sorted(set(ids) - side)])
            await trio.sleep(duration)
            net.heal()
        elif fault == "isolate-leader" and leader is not None:
            net.isolate(leader)
            await trio.sleep(duration)
            net.heal()
        elif fault == "lossy":
            net.set_drop(0.25)
            net.set_duplicate(0.1)
            await trio.sleep(duration)
            net.clear_faults()
            net.set_delay(0.001, 0.005)
        elif fault == "slow-reorder":
            net.set_reorder(True)
            net.set_delay(0.001, 0.2)
            await trio.sleep(duration)
            net.clear_faults()
            net.set_delay(0.001, 0.005)
        elif fault in ("crash-leader", "crash-any"):
            victim = leader if fault == "crash-leader" else rng.choice(ids)
            if victim is not None and cluster.handles[victim].running:
                await cluster.crash(victim, rng)
                await trio.sleep(duration)
                await cluster.restart(victim)
        elif fault == "snapshot":
            running = cluster.running
            if running:
                with trio.move_on_after(5), contextlib.suppress(RaftError, OSError):
                    await rng.choice(running).snapshot()
    net.heal()
    net.clear_faults()
    net.set_delay(0.001, 0.005)
    for nid in ids:
        if not cluster.handles[nid].running:
            await cluster.restart(nid)
    log.add("healed")


# --- the test ---------------------------------------------------------------------------------


@attrs.frozen
class Report:
    seed: int
    operations: int
    ambiguous: int
    failed: int
    verdict: Verdict
    check_seconds: float
    description: str


def _position(registry: Registry) -> Callable[[Operation[KvInput, KvOutput]], int | None]:
    def position(op: Operation[KvInput, KvOutput]) -> int | None:
        rec = registry.applied.get(str(op.tag))
        if rec is None or not rec[1]:
            return None  # never applied, or applied without effect (a failed cas)
        return rec[0]

    return position


async def run_workload(
    seed: int,
    *,
    duration: float = 30.0,
    clients: int = 5,
    n: int = 3,
    keys: int = 4,
    faults: tuple[str, ...] = FAULTS,
    unsafe_reads: bool = False,
    read_mode: str = "safe",
) -> Report:
    rng = random.Random(seed)
    registry = Registry()
    history: History[KvInput, KvOutput] = History(trio.current_time)
    log = NemesisLog()
    async with open_cluster(
        n,
        lambda _nid: KvStateMachine(registry),
        seed=rng.randrange(2**32),
        proposal_timeout=3.0,
        read_timeout=2.0,
        snapshot_entries=25,
        catchup_entries=5,
        read_mode=read_mode,
    ) as cluster:
        cluster.network.set_delay(0.001, 0.005)
        await cluster.wait_for_leader()
        work = Workload(cluster, registry, history, rng, [f"k{i}" for i in range(keys)])
        work.unsafe_reads = unsafe_reads
        deadline = trio.current_time() + duration
        async with trio.open_nursery() as nursery:
            nursery.start_soon(nemesis, cluster, rng, deadline, log, n, faults)
            for _ in range(clients):
                nursery.start_soon(work.client, deadline)
        # Convergence: after healing every node applies the same log.
        leader = await cluster.wait_for_leader(timeout=60)
        await leader.propose(cbor2.dumps(["final", "get", "k0", None, None]))
        await cluster.wait_applied(leader.commit_index, timeout=60)
        states = {nid: dict(cluster.state_machine(nid).data) for nid in range(1, n + 1)}
        assert all(s == states[1] for s in states.values()), f"replicas differ: {states}"

    assert not registry.conflicts, registry.conflicts[:5]
    # "Certainly not appended" must be true: such a request must not appear in any log.
    lies = {
        rid: (err, registry.applied[rid])
        for rid, err in work.definite_failures.items()
        if rid in registry.applied
    }
    assert not lies, f"seed={seed}: requests reported as dropped were applied: {lies}"
    assert history.pending == 0
    ops = history.operations()
    patched = patch_ambiguous(ops, _position(registry))
    wall0 = time.monotonic()
    result = check_operations(KV, patched, timeout=120)
    check_seconds = time.monotonic() - wall0
    ambiguous = sum(op.ambiguous for op in ops)
    report = Report(
        seed=seed,
        operations=len(ops),
        ambiguous=ambiguous,
        failed=work.counts.failed,
        verdict=result.verdict,
        check_seconds=check_seconds,
        description=result.describe(KV),
    )
    print(
        f"seed={seed}: {len(ops)} ops recorded ({work.counts.ok} ok, {ambiguous} ambiguous = "
        f"{ambiguous / max(1, len(ops)):.1%}, {work.counts.failed} failed and dropped; errors "
        f"{work.counts.by_error}); after patching {len(patched)} ops, "
        f"{sum(op.ambiguous for op in patched)} still ambiguous; verdict {result.verdict.value} "
        f"in {check_seconds:.2f}s; {registry.restores} snapshot restores; nemesis: "
        f"{[w for _, w in log.events]}"
    )
    return report


def _seeds(default: list[int]) -> list[int]:
    env = os.environ.get("TRIORAFT_SEED")
    return [int(env)] if env else default


@pytest.mark.parametrize("seed", _seeds([random.SystemRandom().randrange(2**32)]))
async def test_kv_is_linearizable_under_nemesis(
    autojump_clock: trio.testing.MockClock, seed: int
) -> None:
    report = await run_workload(seed, duration=30.0)
    assert report.verdict is Verdict.OK, f"seed={seed}\n{report.description}"
    assert report.operations > 200


@pytest.mark.slow
@pytest.mark.parametrize("read_mode", ["safe", "lease"])
@pytest.mark.parametrize("seed", _seeds(list(range(5))))
async def test_kv_is_linearizable_under_nemesis_long(
    autojump_clock: trio.testing.MockClock, seed: int, read_mode: str
) -> None:
    # One virtual clock for every node: the lease assumption (bounded drift) holds here.
    report = await run_workload(seed, duration=120.0, clients=8, n=5, keys=6, read_mode=read_mode)
    assert report.verdict is Verdict.OK, f"seed={seed}\n{report.description}"


async def test_reads_without_a_barrier_are_caught(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The pipeline has teeth: reading a node's local state without the ReadIndex barrier
    returns stale values from an isolated old leader or a lagging follower, and the checker
    must find the history not linearizable."""
    seed = int(os.environ.get("TRIORAFT_SEED", "7"))
    report = await run_workload(
        seed,
        duration=20.0,
        clients=6,
        keys=2,
        faults=("isolate-leader", "partition"),
        unsafe_reads=True,
    )
    assert report.verdict is Verdict.ILLEGAL, f"seed={seed}: stale reads went unnoticed"
    assert "cannot linearize next" in report.description


def test_checker_flags_a_stale_read_in_a_recorded_history() -> None:
    """The same pipeline must reject a history in which a read returns an overwritten value."""
    now = [0.0]
    history: History[KvInput, KvOutput] = History(lambda: now[0])
    c = history.new_client()
    t = history.invoke(c, KvPut("k", "v1"), tag="r1")
    now[0] = 1.0
    history.ok(t, KvOutput())
    now[0] = 1.5
    t = history.invoke(c, KvPut("k", "v2"), tag="r2")
    now[0] = 2.0
    history.ok(t, KvOutput())
    now[0] = 2.5
    t = history.invoke(c, KvGet("k"), tag="r3")
    now[0] = 3.0
    history.ok(t, KvOutput(value="v1"))
    registry = Registry()
    registry.record("r1", 5, True)
    registry.record("r2", 6, True)
    patched = patch_ambiguous(history.operations(), _position(registry))
    assert check_operations(KV, patched).verdict is Verdict.ILLEGAL
