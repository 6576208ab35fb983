"""Snapshot throughput of a 3-node trioraft cluster, beside the hardware, PySyncObj and etcd.

What is measured (all processes on loopback, one run, same machine):

* save: on the leader, trigger to durable install of a snapshot of S MiB of 1 KiB values
  (capture, write, fsync, atomic rename, WAL marker, log compaction), beside a raw sequential
  write + fsync of the same number of bytes, run once right before and once right after the
  save (the baseline is the mean of the two times).
* install: a follower that was down while the leader loaded the state and compacted restarts;
  from its first received byte until its runtime has installed and loaded the snapshot, beside a
  raw loopback TCP copy + write + fsync of the same bytes, run once right before and once right
  after the install (the baseline is the mean of the two times). ``catchup_s`` is the whole
  catch-up as a user sees it: from starting the follower's process until it has the state.
* recover: the same follower, now holding the snapshot plus a WAL tail of 100k single-put
  entries, is restarted; from process start until it has applied everything again (serves).
* peak RSS growth of the leader (during the transfer) and of the follower (from ready until the
  received snapshot is on disk, i.e. before its state is loaded into memory).
* the same catch-up on PySyncObj (file dump mode) and, when ``etcd`` is installed, on a 3-node
  etcd loaded with the same keys and values (small ``--snapshot-count`` so the follower must be
  sent a snapshot).

Usage::

    python -m benchmarks.snapshot_throughput [--quick] [--json PATH] [--state-mib S]
        [--tail N] [--dir DIR] [--no-pysyncobj] [--no-etcd]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    MIB,
    BenchError,
    EtcdCluster,
    NodeCluster,
    PeakRss,
    ProcessSet,
    Progress,
    handle_signals,
    key_for,
    machine_info,
    make_value_pool,
    print_table,
    ratio,
    raw_loopback_copy,
    raw_write_fsync,
    rounded,
    value_for,
    wait_until,
    work_dir,
    write_json,
)

SENTINEL = 10**9  # index of the key written last (its presence means "caught up")


def _others(leader: int, size: int = 3) -> list[int]:
    return [i for i in range(1, size + 1) if i != leader]


def _load_in_steps(
    node: Any, count: int, value_bytes: int, progress: Progress, what: str, **kw: Any
) -> float:
    """Load ``count`` keys through ``node`` in about 20 requests (for progress); seconds."""
    steps = max(1, min(20, count // 1024))
    per = (count + steps - 1) // steps
    t0 = time.monotonic()
    done = 0
    while done < count:
        n = min(per, count - done)
        node.request("load", count=n, value_bytes=value_bytes, start=done, timeout=900, **kw)
        done += n
        mib = done * value_bytes / MIB
        progress.update(f"{what}: {mib:,.0f} MiB loaded", done / count)
    progress.done()
    return time.monotonic() - t0


# -- trioraft -----------------------------------------------------------------------------------


def _largest_file(snapshot_dir: Path) -> Path | None:
    """The largest file of a stored snapshot (the bench node's ``values.bin``): what the raw
    copy sends. (It named ``state.bin``, the file of the earlier row-wise format, and so sent
    generated data ever since the snapshot became column-wise.)"""
    try:
        files = [p for p in snapshot_dir.iterdir() if p.is_file()]
    except OSError:
        return None
    return max(files, key=lambda p: p.stat().st_size, default=None)


#: per-repetition figures reported as the median of the repetitions
_MEDIAN_KEYS = (
    "load_s",
    "save_s",
    "raw_write_s",
    "raw_write_before_s",
    "raw_write_after_s",
    "catchup_s",
    "ready_s",
    "install_s",
    "receive_s",
    "load_state_s",
    "restore_s",
    "after_restore_s",
    "raw_copy_s",
    "raw_copy_before_s",
    "raw_copy_after_s",
    "install_cpu_s",
    "receive_cpu_s",
    "load_state_cpu_s",
    "receive_faults",
    "load_state_faults",
)
#: per-repetition figures reported as the worst repetition
_MAX_KEYS = (
    "leader_rss_growth_mib",
    "follower_rss_growth_mib",
    "follower_rss_growth_with_state_mib",
)


def run_trioraft(
    procs: ProcessSet, base: Path, args: argparse.Namespace, progress: Progress
) -> dict[str, Any]:
    """The trioraft part, ``args.repeat`` times on fresh clusters (the catch-up time depends on
    when the leader's transport retries the restarted follower, so one sample can be lucky):
    medians of the timings, the worst RSS growth, every sample under ``samples``. The recover
    phase runs on the last repetition only."""
    reps: list[dict[str, Any]] = []
    for rep in range(args.repeat):
        last = rep == args.repeat - 1
        label = f"trioraft (run {rep + 1}/{args.repeat})" if args.repeat > 1 else "trioraft"
        reps.append(run_trioraft_once(procs, base / f"run-{rep + 1}", args, progress, label, last))
    res: dict[str, Any] = dict(reps[-1])
    for key in _MEDIAN_KEYS:
        values = [r[key] for r in reps if r.get(key) is not None]
        res[key] = statistics.median(values) if values else None
    for key in _MAX_KEYS:
        values = [r[key] for r in reps if r.get(key) is not None]
        res[key] = max(values) if values else None
    res["repetitions"] = len(reps)
    res["samples"] = {
        key: [rounded(r.get(key)) for r in reps] for key in (*_MEDIAN_KEYS, *_MAX_KEYS)
    }
    return res


def run_trioraft_once(
    procs: ProcessSet,
    base: Path,
    args: argparse.Namespace,
    progress: Progress,
    label: str,
    recover: bool,
) -> dict[str, Any]:
    """One trioraft run on a fresh cluster: save, install (with raw baselines), RSS, and when
    ``recover`` the WAL tail and recover phases."""
    count = args.state_mib * MIB // args.value_bytes
    res: dict[str, Any] = {}
    base.mkdir(parents=True, exist_ok=True)
    cluster = NodeCluster(
        procs,
        base,
        "benchmarks.trioraft_node",
        label="trioraft",
        extra_args=["--catchup-entries", "0", "--snapshot-entries", "0", *args.node_args],
    )
    progress.phase(f"{label}: starting 3 nodes")
    cluster.start_all()
    leader_id = cluster.wait_leader()
    follower_id = _others(leader_id)[-1]
    leader = cluster.nodes[leader_id]
    progress.phase(f"{label}: node {follower_id} down; loading {args.state_mib} MiB")
    cluster.stop(follower_id)
    res["load_s"] = _load_in_steps(
        leader, count, args.value_bytes, progress, "trioraft", batch=64, concurrency=8
    )

    # The raw write runs right before and right after the save, and its baseline is the mean
    # of the two: this VM's disk slows down for a while after a burst of writes (the load
    # wrote the WAL), so a baseline taken only after the save could catch the disk in a
    # different mode than the save did.
    state_bytes = count * args.value_bytes
    progress.phase(f"raw: sequential write + fsync of {state_bytes / MIB:,.1f} MiB (before)")
    before_s = raw_write_fsync(base / "raw-write.bin", state_bytes)

    progress.phase(f"{label}: save (snapshot on the leader, compacting its log)")
    snap = leader.request("snapshot", timeout=900)
    snap_bytes = int(snap["bytes"])
    res["snapshot_index"] = snap["index"]
    res["snapshot_bytes"] = snap_bytes
    res["save_s"] = snap["seconds"]
    state_file = _largest_file(Path(snap["path"]))

    progress.phase(f"raw: sequential write + fsync of {snap_bytes / MIB:,.1f} MiB (after)")
    after_s = raw_write_fsync(base / "raw-write.bin", snap_bytes)
    res["raw_write_before_s"] = before_s * snap_bytes / state_bytes  # scaled to the same bytes
    res["raw_write_after_s"] = after_s
    res["raw_write_s"] = (res["raw_write_before_s"] + after_s) / 2

    # The raw copy, like the raw write, runs right before and right after what it is compared
    # with, and its baseline is the mean of the two times: the same bytes (the leader's
    # snapshot file itself, read with sendfile, or generated data of the same size when it is
    # gone).
    src = state_file if state_file is not None and state_file.exists() else None
    copy_bytes = src.stat().st_size if src is not None else snap_bytes
    res["raw_copy_source"] = src.name if src is not None else "generated"
    progress.phase("raw: loopback TCP copy + write + fsync of the same bytes (before)")
    copy_before_s = raw_loopback_copy(src, base / "raw-copy.bin", copy_bytes)

    progress.phase(f"{label}: node {follower_id} restarts and catches up by snapshot")
    with PeakRss({"leader": leader.pid}) as rss:
        node = cluster.start(follower_id, wait_ready=False)
        ready = node.wait_event("ready", timeout=120)
        t_ready = float(ready["t"])
        waited = node.request("wait_applied", index=snap["index"], timeout=1800)
    res["catchup_s"] = waited["t"] - node.spawn_t
    res["ready_s"] = t_ready - node.spawn_t
    begin = waited.get("receive_begin") or t_ready
    res["install_s"] = waited["t"] - begin
    res["receive_s"] = (waited.get("restore_begin") or waited["t"]) - begin
    if waited.get("restore_begin"):
        res["load_state_s"] = waited["t"] - waited["restore_begin"]
        if waited.get("restore_end"):
            # the application's restore alone (the rest of load_state_s is the runtime's)
            res["restore_s"] = waited["restore_end"] - waited["restore_begin"]
            res["after_restore_s"] = waited["t"] - waited["restore_end"]
    # CPU seconds of the follower's process (all threads): less noisy than wall time on a
    # shared machine
    if waited.get("receive_begin_cpu") is not None:
        res["install_cpu_s"] = waited["cpu"] - waited["receive_begin_cpu"]
        if waited.get("restore_begin_cpu") is not None:
            res["receive_cpu_s"] = waited["restore_begin_cpu"] - waited["receive_begin_cpu"]
            res["load_state_cpu_s"] = waited["cpu"] - waited["restore_begin_cpu"]
    # minor page faults of the follower's process (a first touch of memory costs microseconds
    # on a VM): how much fresh memory the receive and the load went through
    if waited.get("receive_begin_faults") is not None and waited.get("restore_begin_faults"):
        res["receive_faults"] = waited["restore_begin_faults"] - waited["receive_begin_faults"]
        res["load_state_faults"] = waited["faults"] - waited["restore_begin_faults"]
    res["leader_rss_growth_mib"] = rss.growth_mib("leader")
    base_kib = ready.get("rss_kib")
    hwm_kib = waited.get("hwm_before_restore_kib")
    res["follower_rss_growth_mib"] = (
        (hwm_kib - base_kib) / 1024 if hwm_kib is not None and base_kib is not None else None
    )
    if waited.get("hwm_kib") is not None and base_kib is not None:
        res["follower_rss_growth_with_state_mib"] = (waited["hwm_kib"] - base_kib) / 1024
    st = cluster.status(follower_id)
    res["follower_snapshots_installed"] = st["snapshots_installed"]
    if st["snapshots_installed"] < 1:
        raise BenchError(f"node {follower_id} caught up without installing a snapshot")

    progress.phase("raw: loopback TCP copy + write + fsync of the same bytes (after)")
    if src is not None and not src.exists():
        src = None  # retention removed it meanwhile: generated data of the same size
    copy_after_s = raw_loopback_copy(src, base / "raw-copy.bin", copy_bytes)
    scale = snap_bytes / copy_bytes  # same rate, scaled to the same bytes
    res["raw_copy_before_s"] = copy_before_s * scale
    res["raw_copy_after_s"] = copy_after_s * scale
    res["raw_copy_s"] = (res["raw_copy_before_s"] + res["raw_copy_after_s"]) / 2

    if not recover:
        for i in list(cluster.nodes):
            cluster.stop(i)
        shutil.rmtree(base, ignore_errors=True)  # the next repetition starts from scratch
        return res

    tail = args.tail
    progress.phase(f"trioraft: writing a {tail:,}-entry WAL tail (single 1 KiB puts)")
    steps = max(1, min(20, tail // 500))
    per = (tail + steps - 1) // steps
    done = 0
    t0 = time.monotonic()
    while done < tail:
        n = min(per, tail - done)
        leader.request(
            "tail", count=n, value_bytes=args.value_bytes, keys=count, concurrency=64, timeout=900
        )
        done += n
        progress.update(f"{done:,} entries", done / tail)
    progress.done()
    res["tail_s"] = time.monotonic() - t0
    commit = int(leader.request("status")["commit"])
    cluster.nodes[follower_id].request("wait_applied", index=commit, timeout=900)

    progress.phase(f"trioraft: recover (restart node {follower_id}: snapshot + {tail:,} entries)")
    cluster.stop(follower_id)
    node = cluster.start(follower_id, wait_ready=False)
    ready = node.wait_event("ready", timeout=600)
    waited = node.request("wait_applied", index=commit, timeout=900)
    res["recover_s"] = waited["t"] - node.spawn_t
    res["recover_open_s"] = float(ready["t"]) - node.spawn_t
    res["recover_entries"] = commit - int(snap["index"])
    for i in list(cluster.nodes):
        cluster.stop(i)
    return res


# -- PySyncObj ----------------------------------------------------------------------------------


def run_pysyncobj(
    procs: ProcessSet, base: Path, args: argparse.Namespace, progress: Progress
) -> dict[str, Any]:
    """The same catch-up on PySyncObj (file dump mode)."""
    count = args.state_mib * MIB // args.value_bytes
    res: dict[str, Any] = {}
    cluster = NodeCluster(
        procs,
        base,
        "benchmarks.pysyncobj_node",
        label="pysyncobj",
        extra_args=["--connection-timeout", str(args.pysyncobj_connection_timeout)],
    )
    progress.phase("pysyncobj: starting 3 nodes")
    cluster.start_all()
    leader_id = cluster.wait_leader()
    follower_id = _others(leader_id)[-1]
    leader = cluster.nodes[leader_id]
    progress.phase(f"pysyncobj: node {follower_id} down; loading {args.state_mib} MiB")
    cluster.stop(follower_id)
    res["load_s"] = _load_in_steps(
        leader, count, args.value_bytes, progress, "pysyncobj", batch=64, concurrency=64
    )
    leader.request("load", count=1, value_bytes=16, start=SENTINEL, timeout=60)
    progress.phase("pysyncobj: full dumps (log compaction) on both live nodes")
    # Both live nodes compact (in parallel), so whoever leads must send the dump.
    pending = {i: cluster.nodes[i].send("compact", timeout=3600) for i in cluster.live()}
    dumps = {i: cluster.nodes[i].reply(rid, timeout=3600) for i, rid in pending.items()}
    res["dump_s"] = dumps[leader_id]["seconds"]
    dump = cluster.data_dir(leader_id) / "dump.bin"
    res["dump_bytes"] = dump.stat().st_size if dump.exists() else None
    progress.phase(f"pysyncobj: node {follower_id} restarts and catches up")
    limit = args.pysyncobj_timeout
    with PeakRss({"leader": leader.pid}) as rss:
        node = cluster.start(follower_id, wait_ready=False)
        ready = node.wait_event("ready", timeout=120)
        # PySyncObj receives the dump into <dump>.1.tmp and starts that file over when the
        # transfer restarts: watch it to count restarts (and show progress).
        tmp = cluster.data_dir(follower_id) / "dump.bin.1.tmp"
        dump_bytes = res["dump_bytes"] or 1
        rid = node.send("wait_key", key=key_for(SENTINEL), timeout=limit)
        deadline = time.monotonic() + limit
        restarts = 0
        last = 0
        waited = None
        while time.monotonic() < deadline:
            waited = node.try_reply(rid, timeout=0.5, what="wait_key")
            if waited is not None:
                break
            try:
                size = tmp.stat().st_size
            except FileNotFoundError:  # not started yet, or renamed into place when complete
                continue
            if size < last:
                restarts += 1
            last = size
            progress.update(
                f"pysyncobj: dump received {size / MIB:,.0f} MiB ({restarts} restarts)",
                size / dump_bytes,
            )
        progress.done()
        res["transfer_restarts"] = restarts
    log = cluster.base / f"pysyncobj-{follower_id}.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    res["follower_failed_dump_loads"] = text.count("failed to load full dump")
    res["leader_rss_growth_mib"] = rss.growth_mib("leader")
    if waited is None:
        res["catchup_s"] = None
        res["timed_out_after_s"] = limit
        for i in list(cluster.nodes):
            cluster.stop(i)
        return res
    res["catchup_s"] = waited["t"] - node.spawn_t
    res["ready_s"] = float(ready["t"]) - node.spawn_t
    base_kib = ready.get("rss_kib")
    if waited.get("hwm_kib") is not None and base_kib is not None:
        res["follower_rss_growth_with_state_mib"] = (waited["hwm_kib"] - base_kib) / 1024
    res["follower_keys"] = waited.get("keys")
    for i in list(cluster.nodes):
        cluster.stop(i)
    return res


# -- etcd ---------------------------------------------------------------------------------------


def run_etcd(
    procs: ProcessSet, base: Path, args: argparse.Namespace, progress: Progress
) -> dict[str, Any]:
    """The same catch-up on a 3-node etcd: a stopped member misses enough entries (beyond
    etcd's 5000 catch-up entries) that the leader must send it a snapshot."""
    count = args.state_mib * MIB // args.value_bytes
    res: dict[str, Any] = {}
    snapshot_count = 1000
    cluster = EtcdCluster(procs, base, snapshot_count=snapshot_count)
    progress.phase("etcd: starting 3 members")
    cluster.start_all()
    leader = cluster.wait_leader()
    follower = _others(leader)[-1]
    cluster.stop(follower)
    live = _others(follower)
    leader = cluster.wait_leader(among=live)
    progress.phase(f"etcd: member {follower} down; loading {args.state_mib} MiB")
    pool = make_value_pool()
    batch = 64
    batches = (count + batch - 1) // batch

    def put_batch(b: int) -> None:
        lo = b * batch
        hi = min(count, lo + batch)
        pairs = [(key_for(i), value_for(pool, i, args.value_bytes)) for i in range(lo, hi)]
        cluster.put_many(leader, pairs)

    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        for n, fut in enumerate(
            concurrent.futures.as_completed([ex.submit(put_batch, b) for b in range(batches)])
        ):
            fut.result()
            if n % 64 == 0:
                progress.update("etcd: loading", (n + 1) / batches)
    progress.done()
    res["load_s"] = time.monotonic() - t0
    # etcd keeps 5000 entries behind each snapshot for slow followers: write enough small
    # entries that the stopped member's position is compacted away.
    filler = 5000 + 2 * snapshot_count + 100
    progress.phase(f"etcd: {filler:,} small puts so the log is compacted past member {follower}")

    def put_small(j: int) -> None:
        cluster.put(leader, f"filler-{j % 100}", b"x")

    with concurrent.futures.ThreadPoolExecutor(16) as ex:
        for n, fut in enumerate(
            concurrent.futures.as_completed([ex.submit(put_small, j) for j in range(filler)])
        ):
            fut.result()
            if n % 500 == 0:
                progress.update("etcd: filler", (n + 1) / filler)
    progress.done()
    cluster.put(leader, key_for(SENTINEL), b"sentinel")
    st = cluster.status(leader) or {}
    res["db_bytes"] = int(st.get("dbSize", 0)) or None
    progress.phase(f"etcd: member {follower} restarts and catches up by snapshot")
    with PeakRss({"leader": cluster.pid(leader)}) as rss:
        cluster.start(follower)
        spawn_t = cluster.spawn_t[follower]
        wait_until(
            "the etcd member to catch up",
            lambda: cluster.has_key(follower, key_for(SENTINEL)),
            timeout=1800,
            interval=0.01,
        )
        t = time.monotonic()
    res["catchup_s"] = t - spawn_t
    res["leader_rss_growth_mib"] = rss.growth_mib("leader")
    received = cluster.metric_sum(follower, "etcd_network_snapshot_receive_success")
    res["follower_snapshots_received"] = None if received is None else int(received)
    if received == 0:
        raise BenchError(f"etcd member {follower} caught up without receiving a snapshot")
    for i in range(1, 4):
        cluster.stop(i)
    return res


# -- main ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.snapshot_throughput",
        description="Snapshot save/install/recover throughput vs raw disk, PySyncObj and etcd.",
    )
    p.add_argument("--quick", action="store_true", help="64 MiB state, 10k-entry tail")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON here")
    p.add_argument("--state-mib", type=int, default=None, help="state size (256; quick 64)")
    p.add_argument("--tail", type=int, default=None, help="WAL tail entries (100000; quick 10000)")
    p.add_argument("--value-bytes", type=int, default=1024, help="bytes per value (1024)")
    p.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="trioraft runs on fresh clusters, medians reported (3; quick 1)",
    )
    p.add_argument("--dir", metavar="DIR", help="work directory (default: a temp dir, removed)")
    p.add_argument("--no-pysyncobj", action="store_true", help="skip the PySyncObj comparison")
    p.add_argument("--no-etcd", action="store_true", help="skip etcd even when installed")
    p.add_argument(
        "--pysyncobj-timeout",
        type=float,
        default=None,
        help="give up on PySyncObj's catch-up after this many seconds (600; quick 60)",
    )
    p.add_argument(
        "--node-arg",
        dest="node_args",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for every trioraft node (experiments, e.g. --node-arg=--tick-ms=50)",
    )
    p.add_argument(
        "--pysyncobj-connection-timeout",
        type=float,
        default=30.0,
        help="PySyncObj connectionTimeout (library default 3.5 s, which drops the connection "
        "and restarts the dump transfer whenever a node is starved of CPU for 3.5 s)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.state_mib is None:
        args.state_mib = 64 if args.quick else 256
    if args.tail is None:
        args.tail = 10_000 if args.quick else 100_000
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.pysyncobj_timeout is None:
        args.pysyncobj_timeout = 60.0 if args.quick else 600.0
    progress = Progress(enabled=not args.quiet)
    errors: dict[str, str] = {}
    with handle_signals(), work_dir(args.dir, "trioraft-snapbench-") as base, ProcessSet() as procs:
        machine = machine_info(base)
        t_start = time.monotonic()
        ours = run_trioraft(procs, base, args, progress)
        theirs: dict[str, Any] | None = None
        if not args.no_pysyncobj:
            try:
                theirs = run_pysyncobj(procs, base, args, progress)
            except BenchError as exc:
                errors["pysyncobj"] = str(exc)
                progress.phase(f"pysyncobj failed: {exc}")
        etcd: dict[str, Any] | None = None
        if not args.no_etcd and EtcdCluster.available():
            try:
                etcd = run_etcd(procs, base, args, progress)
            except BenchError as exc:
                errors["etcd"] = str(exc)
                progress.phase(f"etcd failed: {exc}")
        elif not args.no_etcd:
            errors["etcd"] = "etcd not installed (apt-get install etcd-server)"
        total_s = time.monotonic() - t_start

    snap_mib = ours["snapshot_bytes"] / MIB
    save_mib_s = snap_mib / ours["save_s"]
    raw_write_mib_s = snap_mib / ours["raw_write_s"]
    install_mib_s = snap_mib / ours["install_s"]
    raw_copy_mib_s = snap_mib / ours["raw_copy_s"]
    py_catchup = theirs["catchup_s"] if theirs else None
    py_bound = None
    if theirs and theirs.get("timed_out_after_s"):
        errors["pysyncobj"] = (
            f"catch-up not done after {theirs['timed_out_after_s']:.0f} s "
            f"(transfer restarted {theirs.get('transfer_restarts')} times; "
            f"{theirs['follower_failed_dump_loads']} 'failed to load full dump' in its log)"
        )
        py_bound = ratio(theirs["timed_out_after_s"], ours["catchup_s"], 2)
    etcd_catchup = etcd["catchup_s"] if etcd else None
    doc: dict[str, Any] = {
        "benchmark": "snapshot_throughput",
        "quick": bool(args.quick),
        "node_args": args.node_args,
        "pysyncobj_connection_timeout": args.pysyncobj_connection_timeout,
        "state_mib": args.state_mib,
        "save_mib_s": rounded(save_mib_s, 1),
        "raw_write_mib_s": rounded(raw_write_mib_s, 1),
        "save_ratio": ratio(save_mib_s, raw_write_mib_s),
        "install_mib_s": rounded(install_mib_s, 1),
        "raw_copy_mib_s": rounded(raw_copy_mib_s, 1),
        "install_ratio": ratio(install_mib_s, raw_copy_mib_s),
        "recover_s": rounded(ours["recover_s"]),
        "leader_rss_growth_mib": rounded(ours["leader_rss_growth_mib"], 1),
        "follower_rss_growth_mib": rounded(ours["follower_rss_growth_mib"], 1),
        "catchup_s": rounded(ours["catchup_s"]),
        "pysyncobj_catchup_s": rounded(py_catchup),
        "vs_pysyncobj": ratio(py_catchup, ours["catchup_s"], 2),
        "etcd_catchup_s": rounded(etcd_catchup),
        "vs_etcd": ratio(etcd_catchup, ours["catchup_s"], 2),
        "details": {
            "value_bytes": args.value_bytes,
            "keys": args.state_mib * MIB // args.value_bytes,
            # the raw write's two halves (right before and right after the save)
            "raw_write_before_mib_s": rounded(snap_mib / ours["raw_write_before_s"], 1),
            "raw_write_after_mib_s": rounded(snap_mib / ours["raw_write_after_s"], 1),
            # the raw copy's two halves (right before and right after the install)
            "raw_copy_before_mib_s": rounded(snap_mib / ours["raw_copy_before_s"], 1),
            "raw_copy_after_mib_s": rounded(snap_mib / ours["raw_copy_after_s"], 1),
            # the transfer alone: first byte received until committed on disk (before loading)
            "receive_mib_s": rounded(snap_mib / ours["receive_s"], 1)
            if ours["receive_s"]
            else None,
            "receive_ratio": ratio(snap_mib / ours["receive_s"], raw_copy_mib_s)
            if ours["receive_s"]
            else None,
            "wal_tail_entries": args.tail,
            "trioraft": {k: rounded(v) if isinstance(v, float) else v for k, v in ours.items()},
            "trioraft_repetitions": args.repeat,
            "pysyncobj": theirs
            and {k: rounded(v) if isinstance(v, float) else v for k, v in theirs.items()},
            "etcd": etcd
            and {k: rounded(v) if isinstance(v, float) else v for k, v in etcd.items()},
            "vs_pysyncobj_at_least": py_bound,
            "errors": errors,
            "total_s": round(total_s, 1),
            "notes": [
                "save: trigger to durable install on the leader (node.snapshot()), MiB of "
                "snapshot files; raw: sequential write + fsync of the same byte count",
                "install: follower's first received byte to runtime applied == snapshot index "
                "(received, committed, state loaded); raw: loopback TCP copy + write + fsync",
                "catchup: follower process start to state loaded (all three systems); trioraft "
                "figures are medians of `repeat` runs on fresh clusters (samples in details)",
                "follower_rss_growth_mib: from ready until the snapshot is on disk, before the "
                "state is loaded into memory (the loaded state itself is the application's)",
                "PySyncObj never fsyncs; its dump is pickle+gzip written by a forked child; "
                "its connectionTimeout is raised from 3.5 s (see pysyncobj_connection_timeout)",
            ],
        },
        "machine": machine,
    }
    _print(doc)
    write_json(args.json, doc)
    return 0


def _print(doc: dict[str, Any]) -> None:
    d = doc["details"]
    ours = d["trioraft"]
    rows: list[list[Any]] = [
        ["save (trigger -> durable)", doc["save_mib_s"], doc["raw_write_mib_s"]],
        ["install (receive -> loaded)", doc["install_mib_s"], doc["raw_copy_mib_s"]],
    ]
    rows[0].append(doc["save_ratio"])
    rows[1].append(doc["install_ratio"])
    print_table(
        f"snapshot_throughput: {doc['state_mib']} MiB of {d['value_bytes']} B values "
        f"({ours['snapshot_bytes'] / MIB:,.1f} MiB of snapshot files)",
        ["trioraft", "MiB/s", "raw MiB/s", "ratio"],
        rows,
    )
    py = d.get("pysyncobj") or {}
    et = d.get("etcd") or {}

    def row(label: str, key: str, top: str | None = None) -> list[Any]:
        ours_value = doc[top] if top else ours.get(key)
        return [label, ours_value, py.get(key), et.get(key)]

    rows2: list[list[Any]] = [
        ["catch-up by snapshot (s)", doc["catchup_s"], doc["pysyncobj_catchup_s"]],
        ["  their time / ours", None, doc["vs_pysyncobj"]],
        row("leader RSS growth (MiB)", "leader_rss_growth_mib", "leader_rss_growth_mib"),
        ["follower RSS growth, transfer (MiB)", doc["follower_rss_growth_mib"], None, None],
        row("follower RSS growth, with state (MiB)", "follower_rss_growth_with_state_mib"),
        row("load (s)", "load_s"),
        ["leader snapshot / dump (s)", ours.get("save_s"), py.get("dump_s"), None],
    ]
    rows2[0].append(doc["etcd_catchup_s"])
    rows2[1].append(doc["vs_etcd"])
    print_table("catch-up of a restarted follower", ["", "trioraft", "PySyncObj", "etcd"], rows2)
    rows3: list[list[Any]] = [
        ["recover (process start -> applied)", doc["recover_s"]],
        ["  of which open (recovery until ready)", ours.get("recover_open_s")],
        ["  WAL tail entries replayed", ours.get("recover_entries")],
        ["install: receive (s)", ours.get("receive_s")],
        ["  receive MiB/s (ratio to raw copy)", f"{d['receive_mib_s']} ({d['receive_ratio']})"],
        ["install: load state (s)", ours.get("load_state_s")],
    ]
    print_table("trioraft details", ["", "value"], rows3)
    if d["errors"]:
        print("\nskipped/failed: " + "; ".join(f"{k}: {v}" for k, v in d["errors"].items()))
    m = doc["machine"]
    print(
        f"\nmachine: {m['nproc']} x {m['cpu_model']}, disk {m['disk'].get('device')} "
        f"({m['disk'].get('fs')}), load avg at start {m['loadavg_at_start']}"
    )


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; every process was stopped", file=sys.stderr)
        sys.exit(130)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        sys.exit(1)
