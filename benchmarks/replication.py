"""Replication throughput and latency of a 3-node trioraft cluster beside PySyncObj.

Three node processes on loopback. ``P`` proposer tasks inside the leader's process each loop
``propose(command)`` for a fixed time (after a warm-up); the leader's process measures each
proposal from the call until the state machine's result is back (committed by a majority and
applied). Cases: 1 and 64 proposers (and 1024 in full mode, a saturation point), 16 B and 1 KiB
commands, trioraft with fsync on and off.

Beside the single-proposer cases the benchmark measures the machine's floor for the same round
(``benchmarks.replication_floor``: three processes with plain sockets and ``os.write`` +
``os.fdatasync``, no library): ``floor_p50_ms`` / ``floor_p99_ms`` / ``floor_ops_s`` are what any
implementation on this machine, disk and core count must wait for at the least.

PySyncObj runs the same workload in the same run (its ``noop`` replicated method, the callback
marking completion) in both of its modes: batching (its default: entries leave on its 100 ms
append period) and no batching (each command sent at once). PySyncObj never fsyncs, in either
mode; ``vs_pysyncobj`` compares with the better of its two modes for the same case.

PySyncObj's batching mode only reaches its throughput with thousands of proposals in flight (a
proposer waits up to one 100 ms period per command). So full mode also measures the **peak**
(``--peak-proposers``, default 8192, 16 B commands): PySyncObj batching and trioraft with fsync at
that concurrency, in the same run. ``target`` then holds what the issue's replication target
compares: trioraft with fsync at 64 proposers against PySyncObj's batching peak.

Besides ops/s and latency percentiles, every case reports the CPU time the three node
processes spent per proposal (from ``/proc``), which stays meaningful on a busy machine.

Usage::

    python -m benchmarks.replication [--quick] [--json PATH] [--seconds S] [--proposers 1,64]
        [--payloads 16,1024] [--peak-proposers N] [--no-pysyncobj] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    BenchError,
    NodeCluster,
    ProcessSet,
    Progress,
    handle_signals,
    machine_info,
    print_table,
    ratio,
    rounded,
    work_dir,
    write_json,
)
from benchmarks.replication_floor import run_floor

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid`` (0.0 when unreadable)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def case_name(proposers: int, payload: int, fsync: bool | None) -> str:
    """The JSON key of a case, e.g. ``64x16B_fsync`` / ``64x16B_nofsync`` / ``64x16B``."""
    base = f"{proposers}x{payload}B"
    if fsync is None:
        return base
    return base + ("_fsync" if fsync else "_nofsync")


def run_cases(
    cluster: NodeCluster,
    cases: list[tuple[int, int]],
    seconds: float,
    warmup: float,
    progress: Progress,
    label: str,
) -> dict[str, dict[str, Any]]:
    """Start the cluster, run every (proposers, payload) case on its leader, stop it."""
    progress.phase(f"{label}: starting 3 nodes")
    cluster.start_all()
    leader_id = cluster.wait_leader()
    leader = cluster.nodes[leader_id]
    pids = [n.pid for n in cluster.nodes.values()]
    out: dict[str, dict[str, Any]] = {}
    for n, (proposers, payload) in enumerate(cases):
        progress.update(f"{label}: {proposers} proposer(s) x {payload} B", n / len(cases))
        cpu0 = sum(cpu_seconds(p) for p in pids)
        t0 = time.monotonic()
        r = leader.request(
            "bench",
            proposers=proposers,
            seconds=seconds,
            payload=payload,
            warmup=warmup,
            timeout=seconds + warmup + 300,
        )
        wall = time.monotonic() - t0
        cpu = sum(cpu_seconds(p) for p in pids) - cpu0
        # CPU of the warm-up is included in `cpu` but not in `ops`: scale it out.
        measured_share = r["seconds"] / wall if wall > 0 else 1.0
        ops = int(r["ops"])
        out[f"{proposers}x{payload}B"] = {
            "proposers": proposers,
            "payload_bytes": payload,
            "ops": ops,
            "ops_s": rounded(r["ops_s"], 1),
            "p50_ms": rounded(r["p50_ms"]),
            "p99_ms": rounded(r["p99_ms"]),
            "errors": r["errors"],
            "cpu_us_per_op": rounded(cpu * measured_share / ops * 1e6, 1) if ops else None,
        }
        if "leader_msgs_sent" in r and ops:
            out[f"{proposers}x{payload}B"]["leader_msgs_per_op"] = rounded(
                (r["leader_msgs_sent"] + r["leader_msgs_received"]) / ops, 2
            )
    progress.update(f"{label}: done", 1.0)
    progress.done()
    for i in list(cluster.nodes):
        cluster.stop(i)
    return out


def run_peak(
    procs: ProcessSet,
    base: Path,
    proposers: int,
    seconds: float,
    warmup: float,
    gc_args: list[str],
    progress: Progress,
    errors: dict[str, str],
) -> dict[str, Any]:
    """The peak phase: PySyncObj batching and trioraft with fsync, ``proposers`` x 16 B each.

    Returns ``{"proposers", "payload_bytes", "trioraft_fsync", "pysyncobj_batch",
    "vs_pysyncobj"}`` (a side that failed is None; its error is in ``errors``)."""
    case = [(proposers, 16)]
    key = f"{proposers}x16B"
    sides: dict[str, dict[str, Any] | None] = {"trioraft_fsync": None, "pysyncobj_batch": None}
    for side, module, extra in (
        ("trioraft_fsync", "benchmarks.trioraft_node", gc_args),
        ("pysyncobj_batch", "benchmarks.pysyncobj_node", gc_args),
    ):
        try:
            cluster = NodeCluster(
                procs, base / f"peak-{side}", module, label=side.split("_")[0], extra_args=extra
            )
            sides[side] = run_cases(
                cluster, case, seconds, warmup, progress, f"peak: {side.replace('_', ' ')}"
            )[key]
        except BenchError as exc:
            errors[f"peak_{side}"] = str(exc)
            progress.phase(f"peak {side} failed: {exc}")
    ours, theirs = sides["trioraft_fsync"], sides["pysyncobj_batch"]
    return {
        "proposers": proposers,
        "payload_bytes": 16,
        **sides,
        "vs_pysyncobj": ratio(
            ours["ops_s"] if ours else None, theirs["ops_s"] if theirs else None, 2
        ),
    }


def _target(results: dict[str, dict[str, Any]], peak: dict[str, Any] | None) -> dict[str, Any]:
    """The issue's replication target: trioraft with fsync at 64 proposers (16 B) against
    PySyncObj's batching peak measured in the same run (None parts when not measured)."""
    ours = results.get("64x16B_fsync")
    theirs = (peak or {}).get("pysyncobj_batch")
    ops = ours["ops_s"] if ours else None
    ref = theirs["ops_s"] if theirs else None
    r = ratio(ops, ref, 2)
    return {
        "case": "64x16B_fsync",
        "ops_s": ops,
        "pysyncobj_batch_peak_ops_s": ref,
        "pysyncobj_batch_peak_proposers": (peak or {}).get("proposers") if ref else None,
        "ratio": r,
        "met": None if r is None else r >= 1.0,
    }


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.replication",
        description="Proposals/s and latency of 3 trioraft processes, beside PySyncObj.",
    )
    p.add_argument("--quick", action="store_true", help="short cases (about 40 s in all)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON here")
    p.add_argument("--seconds", type=float, default=None, help="measured seconds per case")
    p.add_argument("--warmup", type=float, default=None, help="warm-up seconds per case")
    p.add_argument(
        "--proposers", default=None, help="comma-separated counts (1,64; full: 1,64,1024)"
    )
    p.add_argument("--payloads", default="16,1024", help="comma-separated command sizes")
    p.add_argument(
        "--fsync", choices=("both", "on", "off"), default="both", help="trioraft fsync modes"
    )
    p.add_argument(
        "--peak-proposers",
        type=int,
        default=None,
        help="proposers of the peak phase (PySyncObj batching and trioraft with fsync, 16 B); "
        "0 skips it (default: 8192; quick: 0)",
    )
    p.add_argument("--no-pysyncobj", action="store_true", help="skip PySyncObj")
    p.add_argument(
        "--gc-gen0",
        type=int,
        default=None,
        help="generation-0 GC threshold for every node, trioraft's and PySyncObj's alike "
        "(default: Python's, 700)",
    )
    p.add_argument("--no-floor", action="store_true", help="skip the hardware floor")
    p.add_argument("--dir", metavar="DIR", help="work directory (default: a temp dir, removed)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    args = build_parser().parse_args(argv)
    seconds = args.seconds or (1.5 if args.quick else 10.0)
    warmup = args.warmup if args.warmup is not None else (0.3 if args.quick else 2.0)
    proposers = [
        int(x) for x in (args.proposers or ("1,64" if args.quick else "1,64,1024")).split(",")
    ]
    payloads = [int(x) for x in args.payloads.split(",")]
    cases = [(p, b) for p in proposers for b in payloads]
    progress = Progress(enabled=not args.quiet)
    errors: dict[str, str] = {}
    with handle_signals(), work_dir(args.dir, "trioraft-replbench-") as base, ProcessSet() as procs:
        machine = machine_info(base)
        t_start = time.monotonic()
        ours: dict[bool, dict[str, dict[str, Any]]] = {}
        floors: dict[tuple[bool, int], dict[str, Any]] = {}
        modes = {"both": (True, False), "on": (True,), "off": (False,)}[args.fsync]
        gc_args = [] if args.gc_gen0 is None else ["--gc-gen0", str(args.gc_gen0)]
        for fsync in modes:
            label = "trioraft fsync " + ("on" if fsync else "off")
            cluster = NodeCluster(
                procs,
                base / ("fsync" if fsync else "nofsync"),
                "benchmarks.trioraft_node",
                label="trioraft",
                extra_args=([] if fsync else ["--no-fsync"]) + gc_args,
            )
            ours[fsync] = run_cases(cluster, cases, seconds, warmup, progress, label)
            if args.no_floor:
                continue
            for proposers_, payload in cases:
                if proposers_ != 1:
                    continue
                progress.phase(f"floor: {payload} B, fsync {'on' if fsync else 'off'}")
                try:
                    floors[(fsync, payload)] = run_floor(
                        procs,
                        base / f"floor-{'fsync' if fsync else 'nofsync'}-{payload}",
                        payload=payload,
                        seconds=seconds,
                        warmup=warmup,
                        fsync=fsync,
                    )
                except (BenchError, OSError) as exc:
                    errors[f"floor_{payload}B_{'fsync' if fsync else 'nofsync'}"] = str(exc)
        theirs: dict[str, dict[str, dict[str, Any]]] = {}
        if not args.no_pysyncobj:
            for mode, extra in (("batch", []), ("nobatch", ["--no-batch"])):
                try:
                    cluster = NodeCluster(
                        procs,
                        base / f"pysyncobj-{mode}",
                        "benchmarks.pysyncobj_node",
                        label="pysyncobj",
                        extra_args=extra + gc_args,
                    )
                    theirs[mode] = run_cases(
                        cluster, cases, seconds, warmup, progress, f"pysyncobj {mode}"
                    )
                except BenchError as exc:
                    errors[f"pysyncobj_{mode}"] = str(exc)
                    progress.phase(f"pysyncobj {mode} failed: {exc}")
        peak: dict[str, Any] | None = None
        peak_proposers = (
            args.peak_proposers if args.peak_proposers is not None else (0 if args.quick else 8192)
        )
        if peak_proposers > 0 and not args.no_pysyncobj and True in modes:
            peak = run_peak(procs, base, peak_proposers, seconds, warmup, gc_args, progress, errors)
        total_s = time.monotonic() - t_start

    results: dict[str, Any] = {}
    for fsync, by_case in ours.items():
        for key, r in by_case.items():
            best = None
            for by_mode in theirs.values():
                other = by_mode.get(key)
                if other and other["ops_s"] and (best is None or other["ops_s"] > best):
                    best = other["ops_s"]
            results[case_name(r["proposers"], r["payload_bytes"], fsync)] = {
                **r,
                "fsync": fsync,
                "vs_pysyncobj": ratio(r["ops_s"], best, 2),
            }
            floor = floors.get((fsync, r["payload_bytes"])) if r["proposers"] == 1 else None
            if floor is not None:
                results[case_name(r["proposers"], r["payload_bytes"], fsync)].update(
                    floor_ops_s=floor["ops_s"],
                    floor_p50_ms=floor["p50_ms"],
                    floor_p99_ms=floor["p99_ms"],
                )
    target = _target(results, peak)
    doc: dict[str, Any] = {
        "benchmark": "replication",
        "quick": bool(args.quick),
        "gc_gen0": args.gc_gen0,
        "seconds_per_case": seconds,
        "warmup_s": warmup,
        "cases": results,
        "pysyncobj": theirs,
        "peak": peak,
        "target": target,
        "notes": [
            "proposers run inside the leader's process; latency = propose() until the applied "
            "result is back",
            "PySyncObj never fsyncs (journal file written through mmap, no fsync), in both "
            "modes; vs_pysyncobj = trioraft ops/s / best PySyncObj mode's ops/s",
            "cpu_us_per_op: user+system CPU of all three node processes per proposal",
            "floor_*: the same single-proposer round with plain sockets and os.write + "
            "os.fdatasync in three processes, no library (benchmarks.replication_floor)",
            "peak: PySyncObj batching and trioraft with fsync at --peak-proposers proposers "
            "(16 B); target: trioraft 64x16B_fsync ops/s over PySyncObj's batching peak",
        ],
        "errors": errors,
        "total_s": round(total_s, 1),
        "machine": machine,
    }
    _print(doc)
    write_json(args.json, doc)
    return 0


def _print(doc: dict[str, Any]) -> None:
    rows: list[list[Any]] = []
    theirs = doc["pysyncobj"]
    for name, r in doc["cases"].items():
        key = f"{r['proposers']}x{r['payload_bytes']}B"
        bt = theirs.get("batch", {}).get(key, {})
        nb = theirs.get("nobatch", {}).get(key, {})
        rows.append(
            [
                name,
                r["ops_s"],
                r["p50_ms"],
                r["p99_ms"],
                r["cpu_us_per_op"],
                bt.get("ops_s"),
                nb.get("ops_s"),
                nb.get("p50_ms"),
                r["vs_pysyncobj"],
                r.get("floor_p50_ms"),
            ]
        )
    print_table(
        "replication: 3 processes on loopback (PySyncObj never fsyncs)",
        [
            "case",
            "ops/s",
            "p50 ms",
            "p99 ms",
            "CPU us/op",
            "PySyncObj batch ops/s",
            "no-batch ops/s",
            "no-batch p50",
            "vs PySyncObj",
            "floor p50",
        ],
        rows,
    )
    peak = doc.get("peak")
    if peak:
        ours, theirs = peak["trioraft_fsync"] or {}, peak["pysyncobj_batch"] or {}
        print(
            f"\npeak ({peak['proposers']} proposers x 16 B): trioraft fsync {ours.get('ops_s')} "
            f"ops/s (p50 {ours.get('p50_ms')} ms), PySyncObj batching (no fsync) "
            f"{theirs.get('ops_s')} ops/s (p50 {theirs.get('p50_ms')} ms): "
            f"{peak['vs_pysyncobj']}x"
        )
    t = doc.get("target") or {}
    if t.get("ratio") is not None:
        verdict = "met" if t["met"] else f"missed by {100 * (1 - t['ratio']):.0f}%"
        print(
            f"target: trioraft 64 x 16 B with fsync {t['ops_s']} ops/s vs PySyncObj's batching "
            f"peak {t['pysyncobj_batch_peak_ops_s']} ops/s = {t['ratio']}x ({verdict})"
        )
    if doc["errors"]:
        print("\nfailed: " + "; ".join(f"{k}: {v}" for k, v in doc["errors"].items()))
    m = doc["machine"]
    print(f"\nmachine: {m['nproc']} x {m['cpu_model']}, load avg at start {m['loadavg_at_start']}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; every process was stopped", file=sys.stderr)
        sys.exit(130)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        sys.exit(1)
