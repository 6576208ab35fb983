"""Render the benchmark results (JSON written with ``--json``) as PNG plots for ``docs/``.

Usage::

    python -m benchmarks.plots [--results benchmarks/results] [--out docs/img]

Reads ``snapshot_throughput.json``, ``replication.json`` and ``kv_http.json`` from the results
directory (any that exist) and writes ``snapshot_throughput.png``, ``snapshot_catchup.png``,
``replication.png`` and ``kv_http.png``. Needs matplotlib (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import REPO_ROOT

_OURS = "#2b6cb0"
_RAW = "#a0aec0"
_PYSYNCOBJ = "#dd6b20"
_ETCD = "#38a169"


def _load(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def _subtitle(doc: dict[str, Any]) -> str:
    m = doc.get("machine", {})
    disk = m.get("disk", {})
    return (
        f"{m.get('nproc')} x {m.get('cpu_model')}, {disk.get('device', '?')} "
        f"({disk.get('fs', '?')}); load avg at start {m.get('loadavg_at_start')}"
    )


def _label_bars(ax: Any, bars: Any, fmt: str = "{:,.0f}", *, vertical: bool = False) -> None:
    for bar in bars:
        h = bar.get_height()
        if h:
            ax.annotate(
                fmt.format(h),
                (bar.get_x() + bar.get_width() / 2, h),
                ha="center",
                va="bottom",
                fontsize=7 if vertical else 8,
                rotation=90 if vertical else 0,
                xytext=(0, 2),
                textcoords="offset points",
            )


def plot_snapshot(doc: dict[str, Any], out: Path) -> list[Path]:
    """Save/install MiB/s beside the raw baselines; catch-up seconds beside the others."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    fig, ax = plt.subplots(figsize=(7, 4))
    x = [0, 1]
    ours = [doc["save_mib_s"] or 0, doc["install_mib_s"] or 0]
    raw = [doc["raw_write_mib_s"] or 0, doc["raw_copy_mib_s"] or 0]
    w = 0.38
    b1 = ax.bar([i - w / 2 for i in x], ours, w, label="trioraft", color=_OURS)
    b2 = ax.bar([i + w / 2 for i in x], raw, w, label="raw baseline (same bytes)", color=_RAW)
    _label_bars(ax, b1)
    _label_bars(ax, b2)
    ax.set_xticks(x)
    ax.set_xticklabels(
        [
            f"save (trigger -> durable)\nvs write + fsync\nratio {doc['save_ratio']}",
            f"install (receive -> loaded)\nvs loopback copy + write + fsync\n"
            f"ratio {doc['install_ratio']}",
        ]
    )
    ax.set_ylabel("MiB/s")
    ax.set_title(f"Snapshot throughput, {doc['state_mib']} MiB of 1 KiB values", fontsize=11)
    fig.text(0.5, 0.005, _subtitle(doc), ha="center", fontsize=7, color="#555")
    ax.legend(fontsize=8)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path = out / "snapshot_throughput.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)

    fig, ax = plt.subplots(figsize=(7, 4))
    names = ["trioraft", "PySyncObj", "etcd"]
    values = [doc["catchup_s"], doc["pysyncobj_catchup_s"], doc["etcd_catchup_s"]]
    colors = [_OURS, _PYSYNCOBJ, _ETCD]
    bars = ax.bar(names, [v or 0 for v in values], color=colors)
    _label_bars(ax, bars, "{:,.2f} s")
    timeout = ((doc.get("details") or {}).get("pysyncobj") or {}).get("timed_out_after_s")
    for i, v in enumerate(values):
        if v is None:
            text = f"not done after\n{timeout:.0f} s" if (i == 1 and timeout) else "not run"
            ax.annotate(text, (i, 0), ha="center", va="bottom", fontsize=8, xytext=(0, 4),
                        textcoords="offset points")  # fmt: skip
    ax.set_ylabel("seconds (follower process start -> state loaded)")
    bound = (doc.get("details") or {}).get("vs_pysyncobj_at_least")
    vs_py = f"{doc['vs_pysyncobj']}x" if doc["vs_pysyncobj"] is not None else (
        f">= {bound}x" if bound else "n/a")  # fmt: skip
    vs_etcd = f"{doc['vs_etcd']}x" if doc["vs_etcd"] is not None else "n/a"
    ax.set_title(
        f"Follower catch-up by snapshot, {doc['state_mib']} MiB "
        f"(their time / ours: PySyncObj {vs_py}, etcd {vs_etcd})",
        fontsize=10,
    )
    fig.text(0.5, 0.005, _subtitle(doc), ha="center", fontsize=7, color="#555")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path = out / "snapshot_catchup.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)
    return written


def plot_replication(doc: dict[str, Any], out: Path) -> list[Path]:
    """Ops/s per case: trioraft fsync on/off beside PySyncObj's two modes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = doc["cases"]
    keys = sorted({(c["proposers"], c["payload_bytes"]) for c in cases.values()})
    labels = [f"{p} x {b} B" for p, b in keys]
    series: list[tuple[str, str, list[float]]] = []
    for fsync, name, color in ((True, "trioraft fsync on", _OURS), (False, "trioraft fsync off",
                                                                     "#63b3ed")):  # fmt: skip
        vals = []
        for p, b in keys:
            key = f"{p}x{b}B_{'fsync' if fsync else 'nofsync'}"
            vals.append((cases.get(key) or {}).get("ops_s") or 0)
        series.append((name, color, vals))
    for mode, name, color in (("batch", "PySyncObj batch (no fsync)", _PYSYNCOBJ),
                              ("nobatch", "PySyncObj no-batch (no fsync)", "#f6ad55")):  # fmt: skip
        by = doc.get("pysyncobj", {}).get(mode)
        if by:
            series.append((name, color, [(by.get(f"{p}x{b}B") or {}).get("ops_s") or 0
                                         for p, b in keys]))  # fmt: skip
    fig, ax = plt.subplots(figsize=(9, 4.5))
    n = len(series)
    w = 0.8 / n
    for i, (name, color, vals) in enumerate(series):
        xs = [k + (i - (n - 1) / 2) * w for k in range(len(keys))]
        bars = ax.bar(xs, vals, w, label=name, color=color)
        _label_bars(ax, bars, vertical=True)
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels(labels)
    ax.set_yscale("log")
    ax.set_ylim(top=max(max(v) for _, _, v in series) * 6)
    ax.set_ylabel("proposals/s (log scale)")
    ax.set_title("Replication, 3 processes on loopback: proposers x command size", fontsize=11)
    ax.legend(fontsize=8)
    fig.text(0.5, 0.005, _subtitle(doc), ha="center", fontsize=7, color="#555")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path = out / "replication.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


def plot_kv(doc: dict[str, Any], out: Path) -> list[Path]:
    """wrk PUT ops/s, KV example beside etcd v2."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = doc["cases"]
    names = list(cases)
    ours = [cases[n]["ops_s"] or 0 for n in names]
    theirs = [cases[n].get("etcd_ops_s") or 0 for n in names]
    fig, ax = plt.subplots(figsize=(7, 4))
    w = 0.38
    xs = list(range(len(names)))
    b1 = ax.bar([x - w / 2 for x in xs], ours, w, label="trioraft KV example", color=_OURS)
    b2 = ax.bar([x + w / 2 for x in xs], theirs, w, label="etcd (v2 API)", color=_ETCD)
    _label_bars(ax, b1)
    _label_bars(ax, b2)
    ax.set_xticks(xs)
    ax.set_xticklabels(
        [f"{cases[n]['connections']} connection(s)\nvs etcd {cases[n]['vs_etcd']}x" for n in names]
    )
    ax.set_ylabel("PUT/s")
    ax.set_title("HTTP PUT of 64-byte values (wrk), 3 nodes, fsync on", fontsize=11)
    ax.legend(fontsize=8)
    fig.text(0.5, 0.005, _subtitle(doc), ha="center", fontsize=7, color="#555")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path = out / "kv_http.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


def main(argv: list[str] | None = None) -> int:
    """Render every plot whose results exist; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.plots", description=__doc__)
    p.add_argument("--results", default=str(REPO_ROOT / "benchmarks" / "results"))
    p.add_argument("--out", default=str(REPO_ROOT / "docs" / "img"))
    args = p.parse_args(argv)
    results = Path(args.results)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    snap = _load(results / "snapshot_throughput.json")
    if snap:
        written += plot_snapshot(snap, out)
    repl = _load(results / "replication.json")
    if repl:
        written += plot_replication(repl, out)
    kv = _load(results / "kv_http.json")
    if kv:
        written += plot_kv(kv, out)
    for path in written:
        print(path)
    if not written:
        print(f"no results in {results}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
