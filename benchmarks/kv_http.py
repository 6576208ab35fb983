"""HTTP PUT throughput of the KV example (3 processes) with ``wrk``, beside etcd's v2 API.

``wrk`` (Debian package ``wrk``) PUTs 64-byte values to distinct keys against the leader of a
3-node KV example cluster (``python -m examples.kv``; a PUT answers 204 only once the entry is
committed and applied, with fsync on), at 1 and 64 connections. When ``etcd`` (Debian package
``etcd-server``) is installed, the same wrk script runs against a 3-node etcd's v2 HTTP API
(``PUT /v2/keys/<key>``, body ``value=...``) in the same run. One wrk thread in both cases.

Usage::

    python -m benchmarks.kv_http [--quick] [--json PATH] [--seconds S] [--connections 1,64]
        [--no-etcd] [--dir DIR]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    PYTHON,
    BenchError,
    EtcdCluster,
    ProcessSet,
    Progress,
    free_ports,
    handle_signals,
    machine_info,
    print_table,
    ratio,
    rounded,
    wait_until,
    work_dir,
    write_json,
)

VALUE_BYTES = 64

# One script for both targets: WRK_PREFIX is the path before the key, WRK_FORM turns the body
# into etcd v2's form encoding. done() prints one JSON line with the figures we need.
WRK_SCRIPT = r"""
local prefix = os.getenv("WRK_PREFIX") or "/"
local form = os.getenv("WRK_FORM") == "1"
local value = string.rep("v", tonumber(os.getenv("WRK_VALUE_BYTES") or "64"))
local body = value
local headers = {}
if form then
  body = "value=" .. value
  headers["Content-Type"] = "application/x-www-form-urlencoded"
end
local counter = 0

request = function()
  counter = counter + 1
  return wrk.format("PUT", prefix .. "bench-" .. counter, headers, body)
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
"""


def run_wrk(
    url: str, script: Path, connections: int, seconds: float, *, prefix: str, form: bool
) -> dict[str, Any]:
    """One wrk run; returns ops/s, latency percentiles and error counts.

    Raises:
        BenchError: wrk failed or printed no result.
    """
    wrk = shutil.which("wrk")
    if wrk is None:
        raise BenchError("wrk is not installed (apt-get install wrk)")
    env = {
        "WRK_PREFIX": prefix,
        "WRK_FORM": "1" if form else "0",
        "WRK_VALUE_BYTES": str(VALUE_BYTES),
        "PATH": "/usr/bin:/bin",
    }
    argv = [
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
    ]
    proc = subprocess.run(
        argv, capture_output=True, text=True, env=env, timeout=seconds + 60, check=False
    )
    result: dict[str, Any] | None = None
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            result = json.loads(line)
    if proc.returncode != 0 or result is None:
        raise BenchError(f"wrk failed ({proc.returncode}): {proc.stderr.strip()[:300]}")
    duration = result["duration_us"] / 1e6
    errors = sum(result[k] for k in ("connect", "read", "write", "status", "timeout"))
    ok = result["requests"] - result["status"]
    return {
        "connections": connections,
        "requests": result["requests"],
        "errors": errors,
        "ops_s": rounded(ok / duration if duration else 0.0, 1),
        "p50_ms": rounded(result["p50_us"] / 1000),
        "p99_ms": rounded(result["p99_us"] / 1000),
        "mean_ms": rounded(result["mean_us"] / 1000),
    }


def _get_json(port: int, path: str) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    if resp.status != 200:
        raise BenchError(f"GET {path} -> {resp.status}")
    return json.loads(body)


def start_kv(procs: ProcessSet, base: Path, progress: Progress) -> int:
    """Start a 3-node KV example cluster; returns the leader's HTTP port."""
    ports = free_ports(6)
    raft, web = ports[:3], ports[3:]
    cluster = ",".join(f"http://127.0.0.1:{p}" for p in raft)
    progress.phase("kv: starting 3 KV example nodes")
    # Profiling aid, as for the node scripts: a command prefix, e.g. py-spy in spawn mode.
    wrapper = os.environ.get("TRIORAFT_BENCH_WRAPPER", "").split()
    for i in range(1, 4):
        log = base / f"kv-{i}.log"
        argv = [
            *[w.replace("{log}", str(log)) for w in wrapper],
            PYTHON,
            "-m",
            "examples.kv",
            "--id",
            str(i),
            "--cluster",
            cluster,
            "--port",
            str(web[i - 1]),
            "--data-dir",
            str(base / f"kv-{i}"),
            "--log-level",
            "WARNING",
        ]
        procs.spawn(argv, log_path=log, stop_signal=signal.SIGINT if wrapper else signal.SIGTERM)

    def leader_port() -> int | None:
        for port in web:
            try:
                doc = _get_json(port, "/-/status")
            except (OSError, BenchError, ValueError):
                continue
            if doc.get("role") == "leader":
                return port
        return None

    port: int = wait_until("a KV leader", leader_port, timeout=60, interval=0.2)
    return port


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.kv_http",
        description="wrk PUT throughput of the KV example, beside etcd's v2 API.",
    )
    p.add_argument("--quick", action="store_true", help="short runs (about 30 s in all)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON here")
    p.add_argument("--seconds", type=float, default=None, help="seconds per wrk run (10; quick 3)")
    p.add_argument("--connections", default="1,64", help="comma-separated connection counts")
    p.add_argument("--no-etcd", action="store_true", help="skip etcd even when installed")
    p.add_argument("--dir", metavar="DIR", help="work directory (default: a temp dir, removed)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    args = build_parser().parse_args(argv)
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    warmup = 1.0 if args.quick else 2.0
    conns = [int(x) for x in args.connections.split(",") if x]
    progress = Progress(enabled=not args.quiet)
    errors: dict[str, str] = {}
    ours: dict[int, dict[str, Any]] = {}
    theirs: dict[int, dict[str, Any]] = {}
    with handle_signals(), work_dir(args.dir, "trioraft-kvbench-") as base:
        script = base / "put.lua"
        script.write_text(WRK_SCRIPT)
        machine = machine_info(base)
        t_start = time.monotonic()
        with ProcessSet() as procs:
            port = start_kv(procs, base, progress)
            url = f"http://127.0.0.1:{port}"
            run_wrk(url, script, 8, warmup, prefix="/warm-", form=False)
            for c in conns:
                progress.phase(f"kv: wrk PUT, {c} connection(s), {seconds:.0f} s")
                before = _get_json(port, "/-/status").get("commit")
                ours[c] = run_wrk(url, script, c, seconds, prefix=f"/c{c}-", form=False)
                after = _get_json(port, "/-/status").get("commit")
                # The example groups concurrent PUTs into shared entries: say how much.
                if isinstance(before, int) and isinstance(after, int) and after > before:
                    ours[c]["entries"] = after - before
                    ours[c]["puts_per_entry"] = rounded(ours[c]["requests"] / (after - before), 1)
        if not args.no_etcd and EtcdCluster.available():
            try:
                with ProcessSet() as procs:
                    progress.phase("etcd: starting 3 members (v2 API enabled)")
                    etcd = EtcdCluster(procs, base, enable_v2=True)
                    etcd.start_all()
                    leader = etcd.wait_leader()
                    url = etcd.client_url(leader)
                    run_wrk(url, script, 8, warmup, prefix="/v2/keys/warm-", form=True)
                    for c in conns:
                        progress.phase(f"etcd: wrk PUT (v2 API), {c} connection(s)")
                        theirs[c] = run_wrk(
                            url, script, c, seconds, prefix=f"/v2/keys/c{c}-", form=True
                        )
            except BenchError as exc:
                errors["etcd"] = str(exc)
                progress.phase(f"etcd failed: {exc}")
        elif not args.no_etcd:
            errors["etcd"] = "etcd not installed (apt-get install etcd-server)"
        total_s = time.monotonic() - t_start

    cases: dict[str, Any] = {}
    for c, r in ours.items():
        e = theirs.get(c)
        cases[f"c{c}"] = {
            **r,
            "etcd_ops_s": e["ops_s"] if e else None,
            "etcd_p50_ms": e["p50_ms"] if e else None,
            "etcd_p99_ms": e["p99_ms"] if e else None,
            "vs_etcd": ratio(r["ops_s"], e["ops_s"] if e else None, 2),
        }
    doc: dict[str, Any] = {
        "benchmark": "kv_http",
        "quick": bool(args.quick),
        "seconds_per_run": seconds,
        "value_bytes": VALUE_BYTES,
        "cases": cases,
        "notes": [
            "wrk -t1 PUTs of 64-byte values to distinct keys against the leader; "
            "KV example: 204 once committed and applied, fsync on (library default); "
            "concurrent PUTs share Raft entries (group commit in the example, one batch in "
            "flight): entries / puts_per_entry count them",
            "etcd: same wrk script against the v2 API (PUT /v2/keys/<key>, form body), "
            "3 members, default settings (fsync on)",
            "vs_etcd = trioraft KV ops/s / etcd ops/s",
        ],
        "errors": errors,
        "total_s": round(total_s, 1),
        "machine": machine,
    }
    rows = [
        [name, r["ops_s"], r["p50_ms"], r["p99_ms"], r["errors"], r["etcd_ops_s"], r["etcd_p50_ms"],
         r["etcd_p99_ms"], r["vs_etcd"]]
        for name, r in cases.items()
    ]  # fmt: skip
    print_table(
        f"kv_http: wrk PUT {VALUE_BYTES} B values, 3 nodes on loopback",
        ["conns", "ops/s", "p50 ms", "p99 ms", "errors", "etcd ops/s", "etcd p50", "etcd p99",
         "vs etcd"],
        rows,
    )  # fmt: skip
    if errors:
        print("\nskipped/failed: " + "; ".join(f"{k}: {v}" for k, v in errors.items()))
    print(f"\nmachine: {machine['nproc']} x {machine['cpu_model']}")
    write_json(args.json, doc)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; every process was stopped", file=sys.stderr)
        sys.exit(130)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        sys.exit(1)
