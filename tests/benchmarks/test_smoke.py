"""Smoke tests: every benchmark still runs end to end on tiny sizes and writes its JSON.

These check that the scripts work (processes start, talk, stop; the JSON has its keys); they
never assert on timings. The default suite runs trioraft-only variants (about 20 s on 2 cores);
the variants that also start PySyncObj, etcd or wrk are marked slow.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from benchmarks import common

REPO = Path(__file__).resolve().parents[2]

SNAPSHOT_KEYS = {
    "state_mib",
    "save_mib_s",
    "raw_write_mib_s",
    "save_ratio",
    "install_mib_s",
    "raw_copy_mib_s",
    "install_ratio",
    "recover_s",
    "leader_rss_growth_mib",
    "follower_rss_growth_mib",
    "catchup_s",
    "pysyncobj_catchup_s",
    "vs_pysyncobj",
    "etcd_catchup_s",
    "vs_etcd",
}


def run_bench(name: str, tmp_path: Path, *args: str, timeout: float = 120) -> dict[str, Any]:
    """Run ``python -m benchmarks.<name> --quick --quiet ...`` and return its JSON."""
    out = tmp_path / f"{name}.json"
    proc = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", "--quick", "--quiet", "--json", str(out),
         "--dir", str(tmp_path / "work"), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    doc: dict[str, Any] = json.loads(out.read_text())
    assert doc["benchmark"] == name
    assert doc["machine"]["nproc"] >= 1
    return doc


def test_snapshot_throughput_tiny(tmp_path: Path) -> None:
    doc = run_bench(
        "snapshot_throughput", tmp_path, "--state-mib", "2", "--tail", "300", "--no-pysyncobj",
        "--no-etcd",
    )  # fmt: skip
    assert set(doc) >= SNAPSHOT_KEYS
    assert doc["state_mib"] == 2
    for key in ("save_mib_s", "raw_write_mib_s", "install_mib_s", "raw_copy_mib_s", "recover_s"):
        assert doc[key] > 0
    # the raw write brackets the save; its baseline is the mean time of the two halves
    before, after = (
        doc["details"]["raw_write_before_mib_s"],
        doc["details"]["raw_write_after_mib_s"],
    )
    assert before > 0 and after > 0
    assert min(before, after) * 0.99 <= doc["raw_write_mib_s"] <= max(before, after) * 1.01
    # so does the raw copy around the install
    before, after = doc["details"]["raw_copy_before_mib_s"], doc["details"]["raw_copy_after_mib_s"]
    assert before > 0 and after > 0
    assert min(before, after) * 0.99 <= doc["raw_copy_mib_s"] <= max(before, after) * 1.01
    assert doc["pysyncobj_catchup_s"] is None and doc["vs_pysyncobj"] is None
    assert doc["etcd_catchup_s"] is None and doc["vs_etcd"] is None
    assert doc["details"]["trioraft"]["follower_snapshots_installed"] >= 1


def test_replication_tiny(tmp_path: Path) -> None:
    doc = run_bench(
        "replication", tmp_path, "--seconds", "0.3", "--warmup", "0.1", "--proposers", "1,4",
        "--payloads", "16", "--fsync", "on", "--no-pysyncobj",
    )  # fmt: skip
    assert set(doc["cases"]) == {"1x16B_fsync", "4x16B_fsync"}
    for case in doc["cases"].values():
        assert {"ops_s", "p50_ms", "p99_ms", "vs_pysyncobj"} <= set(case)
        assert case["ops_s"] > 0 and case["errors"] == 0
    # The hardware floor runs beside the single-proposer case only.
    floor = doc["cases"]["1x16B_fsync"]
    assert floor["floor_ops_s"] > 0 and 0 < floor["floor_p50_ms"] <= floor["floor_p99_ms"]
    assert "floor_p50_ms" not in doc["cases"]["4x16B_fsync"]


def test_replication_passes_the_gc_threshold_to_the_nodes(tmp_path: Path) -> None:
    doc = run_bench(
        "replication", tmp_path, "--seconds", "0.3", "--warmup", "0.1", "--proposers", "4",
        "--payloads", "16", "--fsync", "on", "--no-pysyncobj", "--no-floor", "--gc-gen0", "5000",
    )  # fmt: skip
    assert doc["gc_gen0"] == 5000
    assert doc["cases"]["4x16B_fsync"]["ops_s"] > 0


@pytest.mark.slow
def test_snapshot_throughput_with_references(tmp_path: Path) -> None:
    pytest.importorskip("pysyncobj")
    doc = run_bench(
        "snapshot_throughput", tmp_path, "--state-mib", "2", "--tail", "300",
        "--pysyncobj-timeout", "60", timeout=300,
    )  # fmt: skip
    assert set(doc) >= SNAPSHOT_KEYS
    if doc["pysyncobj_catchup_s"] is None:
        assert "pysyncobj" in doc["details"]["errors"]
    if shutil.which("etcd"):
        assert doc["etcd_catchup_s"] is not None and doc["vs_etcd"] is not None


@pytest.mark.slow
def test_replication_with_pysyncobj(tmp_path: Path) -> None:
    pytest.importorskip("pysyncobj")
    doc = run_bench(
        "replication", tmp_path, "--seconds", "0.5", "--warmup", "0.1", "--proposers", "1,64",
        "--payloads", "16", "--peak-proposers", "32", timeout=300,
    )  # fmt: skip
    assert len(doc["cases"]) == 4
    assert set(doc["pysyncobj"]) == {"batch", "nobatch"}
    assert all(c["vs_pysyncobj"] is not None for c in doc["cases"].values())
    # The peak phase: both sides at 32 proposers; the target compares 64 x 16 B with fsync
    # against PySyncObj's batching figure from that phase.
    peak, target = doc["peak"], doc["target"]
    assert peak["proposers"] == 32 and peak["trioraft_fsync"]["ops_s"] > 0
    assert peak["pysyncobj_batch"]["ops_s"] > 0 and peak["vs_pysyncobj"] is not None
    assert target["ops_s"] == doc["cases"]["64x16B_fsync"]["ops_s"]
    assert target["pysyncobj_batch_peak_ops_s"] == peak["pysyncobj_batch"]["ops_s"]
    assert target["met"] == (target["ratio"] >= 1.0)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_kv_http_tiny(tmp_path: Path) -> None:
    doc = run_bench("kv_http", tmp_path, "--seconds", "1", "--connections", "1,4", timeout=300)
    assert set(doc["cases"]) == {"c1", "c4"}
    for case in doc["cases"].values():
        assert {"ops_s", "p50_ms", "p99_ms", "etcd_ops_s", "vs_etcd"} <= set(case)
        assert case["ops_s"] > 0
        if shutil.which("etcd"):
            assert case["etcd_ops_s"] is not None


# -- the shared helpers ---------------------------------------------------------------------------


def test_percentile_and_ratio() -> None:
    values = [float(x) for x in range(1, 101)]
    assert common.percentile(values, 0.5) == 50.0
    assert common.percentile(values, 0.99) == 99.0
    assert common.percentile([], 0.5) is None
    assert common.ratio(3.0, 2.0) == 1.5
    assert common.ratio(None, 2.0) is None
    assert common.ratio(1.0, 0.0) is None


def test_free_ports_are_distinct() -> None:
    ports = common.free_ports(5)
    assert len(set(ports)) == 5


def test_raw_baselines_tiny(tmp_path: Path) -> None:
    assert common.raw_write_fsync(tmp_path / "w.bin", 3 * common.MIB + 5) > 0
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(2 * common.MIB + 7))
    assert common.raw_loopback_copy(src, tmp_path / "c.bin", src.stat().st_size) > 0
    assert common.raw_loopback_copy(None, tmp_path / "d.bin", 1000) > 0
    assert not (tmp_path / "w.bin").exists() and not (tmp_path / "c.bin").exists()


def test_values_are_deterministic() -> None:
    pool = common.make_value_pool()
    a = common.value_for(pool, 12345, 1024)
    assert len(a) == 1024 and a == common.value_for(common.make_value_pool(), 12345, 1024)
    assert a != common.value_for(pool, 12346, 1024)


def test_process_set_stops_children_and_grandchildren(tmp_path: Path) -> None:
    # The child ignores SIGTERM and starts a grandchild: leaving the set must stop both.
    script = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    out = tmp_path / "pid.txt"
    with pytest.raises(RuntimeError), common.ProcessSet(grace=1.0) as procs:
        with open(out, "wb") as f:
            child = procs.spawn(
                [sys.executable, "-c", script], log_path=tmp_path / "c.log", stdout=f
            )
        grandchild = int(
            common.wait_until("the grandchild", lambda: out.read_text().strip(), timeout=30)
        )
        raise RuntimeError("benchmark failed")
    assert child.poll() is not None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(grandchild, signal.SIGKILL)
        pytest.fail("the grandchild survived")


def test_peak_rss_sees_growth() -> None:
    with common.PeakRss({"me": os.getpid()}) as rss:
        blob = bytearray(64 * common.MIB)
        blob[::4096] = b"x" * len(blob[::4096])
        # Wait for the sampler to see it (the figure on hosts without the kernel's reset).
        common.wait_until("an RSS sample", lambda: rss.growth_mib("me") >= 32, timeout=10)
    assert rss.growth_mib("me") >= 32
    del blob
