"""Proposal throughput of a 3-node trioraft cluster inside one process.

The three nodes run in one Trio program and talk real TCP on loopback, with real data
directories and (by default) fsync on: every acknowledged proposal was fdatasync'ed by a
majority. ``P`` concurrent proposer tasks each loop ``await leader.propose(payload)`` for a fixed
time; the table shows proposals/s and the latency percentiles of ``propose`` as the proposer
sees it (from the call until the state machine's result is back).

Everything shares one Python interpreter (and so one core for the event loop, plus worker
threads for the disk), so the figures are a floor for a cluster of separate processes.

Usage::

    python -m benchmarks.inprocess_cluster [--quick] [--json PATH] [--dir DIR]
        [--proposers 1,64] [--seconds S] [--payload BYTES] [--no-fsync]
        [--wal thread|inline|both]

``user us/op`` and ``sys us/op`` are the process's user and kernel CPU time (event loop and
disk threads) per proposal, for all three nodes together; ``loop us/op`` is the event loop
thread's share (the one core all three nodes' actors share: the throughput ceiling is about
1 / loop us/op); ``cpu util`` is CPU time over wall time. On a shared machine the CPU figures
are more stable than ops/s.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

import trio

from trioraft.node import RaftNode
from trioraft.runtime.disk import INLINE_DISK
from trioraft.statemachine import Saver, SnapshotReader, SnapshotWriter
from trioraft.testing.cluster import open_tcp_cluster


class CounterMachine:
    """The cheapest meaningful state machine: counts applied bytes."""

    def __init__(self) -> None:
        self.count = 0
        self.bytes = 0

    def apply(self, index: int, data: bytes) -> int:
        self.count += 1
        self.bytes += len(data)
        return self.count

    def capture(self) -> Saver:
        state = f"{self.count} {self.bytes}".encode()

        async def saver(writer: SnapshotWriter) -> None:
            await writer.write_file("counter", state)

        return saver

    async def restore(self, reader: SnapshotReader) -> None:
        count, nbytes = (await reader.read_file("counter")).split()
        self.count, self.bytes = int(count), int(nbytes)


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


async def _wait_leader(nodes: dict[int, RaftNode]) -> RaftNode:
    with trio.fail_after(30):
        while True:
            leaders = {n.leader for n in nodes.values()}
            if len(leaders) == 1 and 0 not in leaders:
                lead = nodes[leaders.pop()]
                if lead.is_leader:
                    return lead
            await trio.sleep(0.02)


async def run_case(
    base_dir: str,
    proposers: int,
    seconds: float,
    payload: int,
    fsync: bool,
    wal_inline: bool = False,
) -> dict[str, Any]:
    """One cluster, one proposer count; returns the case's figures."""
    data = b"x" * payload
    latencies: list[float] = []
    async with open_tcp_cluster(
        3,
        base_dir,
        lambda _: CounterMachine(),
        fsync=fsync,
        snapshot_entries=0,
        wal_disk=INLINE_DISK if wal_inline else None,
    ) as nodes:
        leader = await _wait_leader(nodes)
        # warm up connections and the WAL
        for _ in range(20):
            await leader.propose(data)
        done = 0
        stop_at = trio.current_time() + seconds

        async def proposer() -> None:
            nonlocal done
            while trio.current_time() < stop_at:
                t0 = trio.current_time()
                await leader.propose(data)
                latencies.append(trio.current_time() - t0)
                done += 1

        t_start = trio.current_time()
        cpu_start = time.process_time()
        loop_start = time.thread_time()
        ru_start = resource.getrusage(resource.RUSAGE_SELF)
        async with trio.open_nursery() as nursery:
            for _ in range(proposers):
                nursery.start_soon(proposer)
        elapsed = trio.current_time() - t_start
        cpu = time.process_time() - cpu_start
        loop_cpu = time.thread_time() - loop_start
        ru_end = resource.getrusage(resource.RUSAGE_SELF)
        user = ru_end.ru_utime - ru_start.ru_utime
        system = ru_end.ru_stime - ru_start.ru_stime
        saves = sum(n._rt.wal_actor.saves for n in nodes.values())
    latencies.sort()
    return {
        "proposers": proposers,
        "payload_bytes": payload,
        "fsync": fsync,
        "seconds": round(elapsed, 3),
        "proposals": done,
        "ops_s": round(done / elapsed, 1),
        "p50_ms": round(_percentile(latencies, 0.50) * 1000, 3),
        "p99_ms": round(_percentile(latencies, 0.99) * 1000, 3),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 3) if latencies else None,
        "wal_saves_all_nodes": saves,
        "wal_inline": wal_inline,
        "cpu_us_per_op": round(cpu / done * 1e6, 1) if done else None,
        "loop_us_per_op": round(loop_cpu / done * 1e6, 1) if done else None,
        "cpu_utilization": round(cpu / elapsed, 3),
        "user_us_per_op": round(user / done * 1e6, 1) if done else None,
        "system_us_per_op": round(system / done * 1e6, 1) if done else None,
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the cases, print a table, write JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short runs (about 15 s in all)")
    p.add_argument("--json", metavar="PATH", help="write the results here")
    p.add_argument("--dir", metavar="DIR", help="where the data directories go (default: tmp)")
    p.add_argument("--proposers", default="1,64", help="comma-separated proposer counts")
    p.add_argument("--seconds", type=float, default=None, help="measured seconds per case")
    p.add_argument("--payload", type=int, default=16, help="bytes per proposal (16)")
    p.add_argument("--no-fsync", action="store_true", help="turn fsync off (not durable)")
    p.add_argument(
        "--wal",
        choices=("thread", "inline", "both"),
        default="both",
        help="run WAL writes in worker threads, inline on the event loop, or compare both",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    counts = [int(x) for x in args.proposers.split(",") if x]
    root = args.dir or tempfile.mkdtemp(prefix="trioraft-bench-")
    results: list[dict[str, Any]] = []
    try:
        modes = {"thread": [False], "inline": [True], "both": [False, True]}[args.wal]
        for inline in modes:
            for i, count in enumerate(counts):
                case_dir = os.path.join(root, f"case-{i}-{count}-{inline}")
                print(
                    f"running {count} proposer(s) for {seconds:.0f} s "
                    f"(WAL {'inline' if inline else 'in threads'}) ...",
                    file=sys.stderr,
                )
                result = trio.run(
                    run_case, case_dir, count, seconds, args.payload, not args.no_fsync, inline
                )
                results.append(result)
                shutil.rmtree(case_dir, ignore_errors=True)
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)
    header = (
        f"{'proposers':>9} {'WAL':>7} {'fsync':>5} {'ops/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'fsyncs':>8} {'user us/op':>10} {'sys us/op':>9} {'loop us/op':>10} {'cpu util':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['proposers']:>9} {('inline' if r['wal_inline'] else 'thread'):>7} "
            f"{('on' if r['fsync'] else 'off'):>5} {r['ops_s']:>10.1f} "
            f"{r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['wal_saves_all_nodes']:>8} "
            f"{r['user_us_per_op']:>10} {r['system_us_per_op']:>9} {r['loop_us_per_op']:>10} "
            f"{r['cpu_utilization']:>8}"
        )
    doc = {
        "benchmark": "inprocess_cluster",
        "nodes": 3,
        "transport": "tcp-loopback",
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "cases": results,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
