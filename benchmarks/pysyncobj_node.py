"""One PySyncObj node as a process, driven by the benchmarks like ``benchmarks.trioraft_node``.

Our own script around PySyncObj from PyPI (``pip install pysyncobj``): a ``SyncObj`` holding a
dict of keys to values, with replicated ``put_many`` (a batch of puts) and ``noop`` methods.
PySyncObj runs in "file dump" mode: an operation journal (``journalFile``) and full dumps on
compaction (``fullDumpFile``, pickled and gzipped by a forked child). It never fsyncs.
Compaction happens only when asked (``compact``), like the trioraft node's manual snapshots.

Control protocol: the same JSON lines as ``benchmarks.trioraft_node``; ops ``status``, ``load``,
``compact`` (force a dump and wait until the log is compacted), ``wait_key`` (until a key is
present locally; the time it was first seen, polled every 2 ms), ``bench`` (``proposers``
commands in flight for ``seconds``; latency from the call to the leader's callback).

Run: ``python -m benchmarks.pysyncobj_node --id 1 --peers 1=127.0.0.1:7001,2=...,3=...
--data-dir DIR``.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import key_for, make_value_pool, percentile, status_kib, value_for

try:
    from pysyncobj import SyncObj, SyncObjConf, replicated  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover - reported to the driver
    SyncObj = None


def _out(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def build_class() -> Any:
    """The replicated class (defined lazily so importing this module never needs pysyncobj)."""

    class BenchObj(SyncObj):  # type: ignore[misc]
        def __init__(self, self_addr: str, partners: list[str], conf: Any) -> None:
            super().__init__(self_addr, partners, conf)
            self.data: dict[str, bytes] = {}
            self.noops = 0

        @replicated  # type: ignore[untyped-decorator]
        def put_many(self, pairs: list[tuple[str, bytes]]) -> int:
            data = self.data
            for k, v in pairs:
                data[k] = v
            return len(pairs)

        @replicated  # type: ignore[untyped-decorator]
        def noop(self, payload: bytes) -> int:
            self.noops += 1
            return self.noops

    return BenchObj


class Node:
    """Executes control requests against the SyncObj (from the main thread)."""

    def __init__(self, obj: Any, peers: dict[int, str], self_id: int) -> None:
        self.obj = obj
        self.by_addr = {addr: nid for nid, addr in peers.items()}
        self.id = self_id
        self.pool = make_value_pool()

    def op_status(self) -> dict[str, Any]:
        st = self.obj.getStatus()
        leader = st.get("leader")
        leader_id = self.by_addr.get(str(leader), 0) if leader is not None else 0
        state = int(st.get("state", 0))
        return {
            "node": self.id,
            "role": {0: "follower", 1: "candidate", 2: "leader"}.get(state, str(state)),
            "leader": leader_id,
            "term": st.get("raft_term"),
            "commit": st.get("commit_idx"),
            "applied": st.get("last_applied"),
            "log_len": st.get("log_len"),
            "keys": len(self.obj.data),
            "pid": os.getpid(),
        }

    def _call(self, fn: Any, arg: Any, timeout: float = 60.0) -> None:
        done = threading.Event()
        err: list[int] = []

        def cb(_res: Any, e: int) -> None:
            if e != 0:
                err.append(e)
            done.set()

        fn(arg, callback=cb)
        if not done.wait(timeout):
            raise TimeoutError("no callback")
        if err:
            raise RuntimeError(f"pysyncobj error {err[0]}")

    def op_load(
        self, count: int, value_bytes: int, batch: int = 64, concurrency: int = 8, start: int = 0
    ) -> dict[str, Any]:
        """``concurrency`` batches in flight (callbacks release the next one)."""
        pool = self.pool
        batches = (count + batch - 1) // batch
        sem = threading.Semaphore(concurrency)
        finished = threading.Event()
        errors: list[int] = []
        left = [batches]
        lock = threading.Lock()

        def cb(_res: Any, e: int) -> None:
            if e != 0:
                errors.append(e)
            sem.release()
            with lock:
                left[0] -= 1
                if left[0] == 0:
                    finished.set()

        t0 = time.monotonic()
        for b in range(batches):
            lo = start + b * batch
            hi = min(start + count, lo + batch)
            pairs = [(key_for(i), value_for(pool, i, value_bytes)) for i in range(lo, hi)]
            if not sem.acquire(timeout=120):
                raise TimeoutError("load stalled")
            self.obj.put_many(pairs, callback=cb)
        if not finished.wait(300):
            raise TimeoutError("load did not finish")
        if errors:
            raise RuntimeError(f"{len(errors)} puts failed, first error {errors[0]}")
        return {"seconds": time.monotonic() - t0, "proposals": batches}

    def op_compact(self, timeout: float = 900.0) -> dict[str, Any]:
        """Force a full dump and wait until the leader's log is compacted (dump done)."""
        t0 = time.monotonic()
        before = int(self.obj.getStatus()["log_len"])
        self.obj.forceLogCompaction()
        deadline = t0 + timeout
        while True:
            log_len = int(self.obj.getStatus()["log_len"])
            if log_len < max(3, before // 2):
                break
            if time.monotonic() > deadline:
                raise TimeoutError("log compaction did not finish")
            time.sleep(0.01)
        return {"seconds": time.monotonic() - t0, "log_len_before": before, "log_len": log_len}

    def op_wait_key(self, key: str, timeout: float = 900.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while key not in self.obj.data:
            if time.monotonic() > deadline:
                raise TimeoutError(f"key {key!r} not seen")
            time.sleep(0.002)
        return {
            "t": time.monotonic(),
            "keys": len(self.obj.data),
            "rss_kib": status_kib("VmRSS"),
            "hwm_kib": status_kib("VmHWM"),
        }

    def op_bench(
        self, proposers: int, seconds: float, payload: int, warmup: float = 1.0
    ) -> dict[str, Any]:
        data = b"x" * payload
        obj = self.obj
        lock = threading.Lock()
        latencies: list[float] = []
        state = {"done": 0, "errors": 0, "inflight": 0, "stop_at": 0.0, "measuring": False}
        finished = threading.Event()

        def issue() -> None:
            t0 = time.perf_counter()
            measuring = state["measuring"]

            def cb(_res: Any, e: int) -> None:
                dt = time.perf_counter() - t0
                with lock:
                    if e != 0:
                        state["errors"] += 1
                    elif measuring:
                        latencies.append(dt)
                        state["done"] += 1
                    again = time.monotonic() < float(state["stop_at"])
                    if not again:
                        state["inflight"] -= 1
                        if state["inflight"] == 0:
                            finished.set()
                if again:
                    issue()

            obj.noop(data, callback=cb)

        def run(duration: float, measuring: bool) -> float:
            finished.clear()
            state["measuring"] = measuring
            t0 = time.monotonic()
            state["stop_at"] = t0 + duration
            state["inflight"] = proposers
            for _ in range(proposers):
                issue()
            if not finished.wait(duration + 60):
                raise TimeoutError("bench did not finish")
            return time.monotonic() - t0

        if warmup > 0:
            run(warmup, False)
        elapsed = run(seconds, True)
        latencies.sort()
        p50 = percentile(latencies, 0.5)
        p99 = percentile(latencies, 0.99)
        done = int(state["done"])
        return {
            "ops": done,
            "seconds": elapsed,
            "ops_s": done / elapsed if elapsed else 0.0,
            "p50_ms": None if p50 is None else p50 * 1000,
            "p99_ms": None if p99 is None else p99 * 1000,
            "errors": state["errors"],
        }


def main(argv: list[str] | None = None) -> int:
    """Run the node until SIGTERM/SIGINT or stdin EOF."""
    p = argparse.ArgumentParser(description="PySyncObj benchmark node")
    p.add_argument("--id", type=int, required=True)
    p.add_argument("--peers", required=True, help="1=host:port,2=host:port,...")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--in-memory", action="store_true", help="no journal or dump files")
    p.add_argument(
        "--no-batch",
        action="store_true",
        help="appendEntriesUseBatch=False: send each command at once (lower latency)",
    )
    p.add_argument(
        "--connection-retry",
        type=float,
        default=5.0,
        help="connectionRetryTime: seconds between reconnect attempts (library default 5)",
    )
    p.add_argument(
        "--connection-timeout",
        type=float,
        default=3.5,
        help="connectionTimeout: silence after which a connection is dropped (default 3.5)",
    )
    p.add_argument(
        "--gc-gen0",
        type=int,
        default=None,
        help="the garbage collector's generation-0 threshold (Python's default: 700)",
    )
    p.add_argument("--log-level", default="WARNING")
    args = p.parse_args(argv)
    if args.gc_gen0 is not None:
        # An application-level tuning, offered to both systems' nodes alike.
        gc.set_threshold(args.gc_gen0, *gc.get_threshold()[1:])
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper(), logging.WARNING),
        format=f"%(asctime)s %(levelname)s [pysyncobj {args.id}] %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if SyncObj is None:
        _out({"event": "error", "error": "pysyncobj is not installed (pip install pysyncobj)"})
        return 2
    peers: dict[int, str] = {}
    for item in args.peers.split(","):
        nid, addr = item.split("=", 1)
        peers[int(nid)] = addr
    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {}
    if not args.in_memory:
        files = {
            "fullDumpFile": str(data_dir / "dump.bin"),
            "journalFile": str(data_dir / "journal.bin"),
        }
    conf = SyncObjConf(
        logCompactionMinEntries=1 << 40,  # compaction only when forced
        logCompactionMinTime=1 << 30,
        connectionRetryTime=args.connection_retry,
        connectionTimeout=args.connection_timeout,
        appendEntriesUseBatch=not args.no_batch,
        **files,
    )
    obj = build_class()(peers[args.id], [a for i, a in peers.items() if i != args.id], conf)
    node = Node(obj, peers, args.id)

    def on_signal(_signum: int, _frame: object) -> None:
        raise SystemExit(0)  # interrupts the blocking stdin read; `finally` destroys the node

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    ready = {"event": "ready", "t": time.monotonic(), "pid": os.getpid()}
    _out({**ready, "rss_kib": status_kib("VmRSS")})
    try:
        for raw in sys.stdin:
            if not raw.strip():
                continue
            req = json.loads(raw)
            rid = req.pop("id", None)
            op = str(req.pop("op", ""))
            fn = getattr(node, f"op_{op}", None)
            try:
                if fn is None:
                    raise ValueError(f"unknown op {op!r}")
                _out({"id": rid, "ok": True, **fn(**req)})
            except Exception as exc:
                logging.getLogger("bench").exception("op %s failed", op)
                _out({"id": rid, "ok": False, "error": repr(exc)})
    except (OSError, ValueError):
        pass
    finally:
        obj.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
