"""Helpers for the end-to-end tests: real example processes on loopback (see trioraft.cli)."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from trioraft.cli import ProcessCluster, http_request

#: Fast timing for tests: 20 ms ticks, elections after 200-400 ms.
FAST = ("--tick-ms", "20", "--election-ticks", "10", "--request-timeout", "5")


@contextmanager
def running_cluster(
    workdir: Path,
    size: int = 3,
    *,
    example: str = "kv",
    extra: Sequence[str] = (),
    capacity: int | None = None,
    start: bool = True,
) -> Iterator[ProcessCluster]:
    """A started cluster with a leader; every process is stopped on exit, also on failure.

    On failure the node logs are printed (pytest shows them with the failure).
    """
    cluster = ProcessCluster(
        workdir, size, example=example, extra_args=[*FAST, *extra], capacity=capacity
    )
    try:
        if start:
            cluster.start_all()
            for i in range(1, size + 1):
                cluster.wait_ready(i)
            cluster.wait_leader()
        yield cluster
    except BaseException:
        print(cluster.logs_digest(60))
        raise
    finally:
        cluster.stop_all()


def put_all(
    cluster: ProcessCluster, node_id: int, items: dict[str, bytes], workers: int = 8
) -> None:
    """PUT every item through ``node_id`` (concurrently); each must answer 204."""

    def one(kv: tuple[str, bytes]) -> tuple[str, int, str]:
        res = cluster.put(node_id, kv[0], kv[1])
        return kv[0], res.status, res.text or res.error

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for key, status, text in pool.map(one, items.items()):
            assert status == 204, (key, status, text)


def assert_all_readable(
    cluster: ProcessCluster, node_id: int, items: dict[str, bytes], *, serializable: bool = False
) -> None:
    """Every item reads back from ``node_id`` with its value."""
    for key, value in items.items():
        res = cluster.get(node_id, key, serializable=serializable)
        assert (res.status, res.body) == (200, value), (node_id, key, res)


def wait_applied(cluster: ProcessCluster, node_id: int, index: int, timeout: float = 30) -> None:
    """Wait until the node has applied ``index``."""
    cluster.wait_for(
        f"node {node_id} to apply {index}",
        lambda: (st := cluster.status(node_id)) and int(st.get("applied") or 0) >= index,
        timeout,
    )


def commit_of(cluster: ProcessCluster, node_id: int) -> int:
    """The node's commit index."""
    st = cluster.status(node_id)
    assert st is not None, f"node {node_id} unreachable"
    return int(st["commit"])


def trioraft_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``trioraft ARGS`` (as ``python -m trioraft.cli``) and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "trioraft.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def signal_node(cluster: ProcessCluster, node_id: int, sig: int) -> bool:
    """Send ``sig`` to a running node and return at once (``ProcessCluster.kill`` waits for the
    process to exit, so it cannot send SIGSTOP or SIGCONT).

    Returns:
        False when the node is not running (nothing was sent).
    """
    proc = cluster.nodes[node_id].proc
    if proc is None or proc.poll() is not None:
        return False
    try:
        proc.send_signal(sig)
    except ProcessLookupError:
        return False
    return True


__all__ = [
    "FAST",
    "assert_all_readable",
    "commit_of",
    "http_request",
    "put_all",
    "running_cluster",
    "signal_node",
    "trioraft_cli",
    "wait_applied",
]
