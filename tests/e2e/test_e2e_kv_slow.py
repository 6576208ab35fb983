"""End-to-end (slow): snapshot catch-up, membership, whole-cluster restart, damaged snapshots,
and the counter example, with real processes on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_support import (
    assert_all_readable,
    commit_of,
    http_request,
    put_all,
    running_cluster,
    trioraft_cli,
    wait_applied,
)

pytestmark = pytest.mark.slow

SNAP = ("--snapshot-entries", "40", "--catchup-entries", "10")


def test_lagging_follower_catches_up_through_install_snapshot(tmp_path: Path) -> None:
    with running_cluster(tmp_path, extra=SNAP) as c:
        leader = c.wait_leader()
        lagger = next(i for i in (3, 2, 1) if i != leader)
        before = {f"a{i}": f"before-{i}".encode() for i in range(20)}
        put_all(c, leader, before)
        wait_applied(c, lagger, commit_of(c, leader))
        lagger_last = int(c.status(lagger)["last_index"])  # type: ignore[index]
        c.kill(lagger)

        during = {f"b{i}": os.urandom(64) for i in range(200)}
        put_all(c, leader, during)
        c.wait_for(
            "the leader to compact past the lagging follower",
            lambda: int(c.status(leader)["first_index"]) > lagger_last + 1,  # type: ignore[index]
        )

        c.start(lagger)
        c.wait_ready(lagger)
        target = commit_of(c, leader)
        c.wait_for(
            "a snapshot install",
            lambda: (st := c.status(lagger)) and int(st["snapshots_installed"] or 0) >= 1,
        )
        wait_applied(c, lagger, target)
        assert_all_readable(c, lagger, before | during, serializable=True)
        assert int(c.status(leader)["snapshots_sent"] or 0) >= 1  # type: ignore[index]


def test_add_a_fourth_node_then_remove_one(tmp_path: Path) -> None:
    with running_cluster(tmp_path, extra=SNAP, capacity=4) as c:
        items = {f"k{i}": f"v{i}".encode() for i in range(60)}
        put_all(c, 1, items)
        c.start(4, join=True)
        c.wait_ready(4)
        res = http_request("POST", c.url(2, "/4"), c.nodes[4].raft_url.encode())
        assert res.status == 204, res
        wait_applied(c, 4, commit_of(c, c.wait_leader()))
        assert_all_readable(c, 4, items, serializable=True)
        put_all(c, 4, {"via-4": b"hello"})  # the new node serves writes too

        res = http_request("DELETE", c.url(4, "/3"))
        assert res.status == 204, res
        c.stop(3)
        leader = c.wait_leader(among=[1, 2, 4])
        put_all(c, 1, {"after-remove": b"ok"})
        for node in (1, 2, 4):
            assert_all_readable(c, node, {"after-remove": b"ok", "via-4": b"hello"})
        st = c.status(leader)
        assert st is not None and "3" not in {
            p for p, info in st["peers"].items() if info.get("member")
        }


def test_whole_cluster_restart_loses_nothing(tmp_path: Path) -> None:
    with running_cluster(tmp_path, extra=SNAP) as c:
        items = {f"k{i}": os.urandom(32) for i in range(150)}  # spans several snapshots
        put_all(c, 2, items)
        for i in (1, 2, 3):
            c.kill(i)  # SIGKILL: only what was fsynced survives, and that must be everything
        c.start_all()
        for i in (1, 2, 3):
            c.wait_ready(i)
        c.wait_leader()
        for i in (1, 2, 3):
            assert_all_readable(c, i, items)


def _newest_snapshot_dir(data_dir: Path) -> Path:
    snaps = sorted(p for p in (data_dir / "snap").iterdir() if p.name[:1].isdigit() and p.is_dir())
    assert snaps, f"no snapshot in {data_dir}"
    return snaps[-1]


def test_damaged_snapshot_is_detected_by_verify_and_by_the_node(tmp_path: Path) -> None:
    with running_cluster(tmp_path, extra=SNAP) as c:
        items = {f"k{i}": f"v{i}".encode() * 4 for i in range(150)}
        put_all(c, 1, items)
        victim = next(i for i in (3, 2, 1) if i != c.wait_leader())
        wait_applied(c, victim, commit_of(c, c.wait_leader()))
        c.stop(victim)
        data_dir = c.nodes[victim].data_dir

        ok = trioraft_cli("snapshot", "verify", str(data_dir))
        assert ok.returncode == 0, ok.stdout + ok.stderr

        newest = _newest_snapshot_dir(data_dir)
        damaged = newest / "kv.cbor"
        raw = bytearray(damaged.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        damaged.write_bytes(bytes(raw))

        bad = trioraft_cli("snapshot", "verify", str(data_dir))
        assert bad.returncode == 1, bad.stdout + bad.stderr
        assert "kv.cbor" in bad.stdout + bad.stderr

        c.start(victim)
        c.wait_ready(victim)
        wait_applied(c, victim, commit_of(c, c.wait_leader()))
        assert_all_readable(c, victim, items, serializable=True)
        assert not newest.exists() or any(
            p.name.endswith(".broken") for p in (data_dir / "snap").iterdir()
        )
        log = c.nodes[victim].log_tail(400)
        assert newest.name in log or "broken" in log.lower() or "corrupt" in log.lower()


def test_counter_cluster(tmp_path: Path) -> None:
    with running_cluster(
        tmp_path,
        example="counter",
        extra=("--snapshot-entries", "20", "--snapshot-interval", "1"),
    ) as c:
        total = 0
        for i in range(30):
            res = http_request("POST", c.url(1 + i % 3, "/incr"), str(i).encode())
            total += i
            assert (res.status, res.text.strip()) == (200, str(total)), res
        for node in (1, 2, 3):
            res = http_request("GET", c.url(node, "/value"))
            assert res.text.strip() == str(total)
        c.wait_for(
            "counter snapshots",
            lambda: all((c.status(i) or {}).get("snapshot_index") for i in (1, 2, 3)),
        )
        leader = c.wait_leader()
        c.kill(leader)
        survivor = next(i for i in (1, 2, 3) if i != leader)
        res = http_request("POST", c.url(survivor, "/incr"), b"")
        assert res.text.strip() == str(total + 1)


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if text.encode() in cmdline:
                found.append(int(entry.name))
    return found


def test_demo_tour_runs_and_leaves_no_process_behind(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "trioraft.cli", "demo", "--tour-only", "--dir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for step in ("elected leader", "snapshot", "SIGKILL", "InstallSnapshot", "removed"):
        assert step in out, out
    assert _processes_mentioning(str(workdir)) == []
