"""Randomized linearizability check of whole nodes: concurrent clients put unique values and
read (read barrier + local read) through random nodes while the network partitions and nodes
crash and restart; the recorded history must be linearizable (KV model). MockClock; the seed is
printed and fixed per test id, so a failure replays."""

from __future__ import annotations

import random
from typing import Any

import cbor2
import pytest
import trio
import trio.testing

from trioraft import AmbiguousOutcome, NodeStopped, NotLeader, ProposalDropped, Timeout
from trioraft.statemachine import Saver, SnapshotReader, SnapshotWriter
from trioraft.testing.cluster import Cluster, open_cluster
from trioraft.testing.linearizability import (
    History,
    KvGet,
    KvInput,
    KvModel,
    KvOutput,
    KvPut,
    check_operations,
)


class KvMachine:
    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    def apply(self, index: int, data: bytes) -> None:
        key, value = cbor2.loads(data)
        self.data[key] = value

    def capture(self) -> Saver:
        frozen = dict(self.data)

        async def saver(writer: SnapshotWriter) -> None:
            await writer.write_file("kv", cbor2.dumps(frozen))

        return saver

    async def restore(self, reader: SnapshotReader) -> None:
        self.data = cbor2.loads(await reader.read_file("kv"))


async def run_workload(cluster: Cluster, rng: random.Random, seconds: float) -> History[Any, Any]:
    history: History[KvInput, KvOutput] = History(trio.current_time)
    keys = ["a", "b", "c"]
    counter = 0
    stop_at = trio.current_time() + seconds

    async def client() -> None:
        nonlocal counter
        cid = history.new_client()
        while trio.current_time() < stop_at:
            running = [h for h in cluster.handles.values() if h.node is not None]
            if not running:
                await trio.sleep(0.1)
                continue
            h = rng.choice(running)
            node, sm = h.node, h.state_machine
            assert node is not None
            key = rng.choice(keys)
            if rng.random() < 0.5:
                counter += 1
                value = f"v{counter}"
                token = history.invoke(cid, KvPut(key, value))
                try:
                    await node.propose(cbor2.dumps([key, value]), timeout=2.0)
                except (ProposalDropped, NotLeader):
                    history.fail(token)
                except (AmbiguousOutcome, NodeStopped):
                    history.ambiguous(token)
                    cid = history.new_client()
                else:
                    history.ok(token, KvOutput())
            else:
                token = history.invoke(cid, KvGet(key))
                try:
                    await node.read_barrier(timeout=2.0)
                except (Timeout, NodeStopped):
                    history.fail(token)
                else:
                    history.ok(token, KvOutput(value=sm.data.get(key)))
            await trio.sleep(rng.uniform(0, 0.05))

    async def nemesis() -> None:
        while trio.current_time() < stop_at - 2:
            await trio.sleep(rng.uniform(0.5, 1.5))
            action = rng.choice(["partition", "crash", "heal", "isolate-leader"])
            ids = sorted(cluster.handles)
            if action == "partition":
                rng.shuffle(ids)
                cluster.network.partition([ids[:1], ids[1:]])
            elif action == "isolate-leader":
                leaders = [n.id for n in cluster.running if n.is_leader]
                if leaders:
                    cluster.network.isolate(leaders[0])
            elif action == "crash":
                victim = rng.choice(ids)
                if cluster.handles[victim].node is not None:
                    await cluster.crash(victim, rng)
                    await trio.sleep(rng.uniform(0.1, 1.0))
                    await cluster.restart(victim)
            else:
                cluster.network.heal()
        cluster.network.heal()

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(client)
        nursery.start_soon(nemesis)
    return history


@pytest.mark.parametrize("seed", [1, 2])
async def test_linearizable_under_faults(autojump_clock: trio.testing.MockClock, seed: int) -> None:
    print("seed", seed)
    rng = random.Random(seed)
    async with open_cluster(
        3, lambda _: KvMachine(), seed=seed, snapshot_entries=20, catchup_entries=5
    ) as cluster:
        await cluster.wait_for_leader()
        history = await run_workload(cluster, rng, 15.0)
    ops = history.operations()
    assert sum(1 for op in ops if isinstance(op.input, KvPut)) > 20
    result = check_operations(KvModel(), ops, timeout=60.0)
    assert result.ok, result.describe(KvModel())


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(10, 20))
async def test_linearizable_under_faults_long(
    autojump_clock: trio.testing.MockClock, seed: int
) -> None:
    print("seed", seed)
    rng = random.Random(seed)
    async with open_cluster(
        5, lambda _: KvMachine(), seed=seed, snapshot_entries=30, catchup_entries=5
    ) as cluster:
        await cluster.wait_for_leader()
        history = await run_workload(cluster, rng, 60.0)
    result = check_operations(KvModel(), history.operations(), timeout=120.0)
    assert result.ok, result.describe(KvModel())
