"""Snapshot save throughput through the store's builder against a raw write + fsync.

Each round writes the same bytes through both paths, interleaved chunk by chunk so that both meet
the same (on virtual disks, very changeable) conditions, then finishes each, alternating which
finishes first:

* ``save``: ``store.begin()`` -> ``open_file("data").write(chunk)`` in 1 MiB chunks -> ``commit()``
  (CRC32C while writing, fsync of the file, ``meta.cbor`` written and fsynced, directory fsync,
  rename into place, parent fsync) — everything a snapshot costs before its WAL marker;
* ``raw``: ``os.write`` of the same chunks into a fresh file, then one ``os.fsync``;
* ``raw_flush``: the same plus the builder's early-writeback hint every 8 MiB
  (``posix_fadvise(DONTNEED)``, which starts writeback without waiting), so that
  ``save_ratio_vs_raw_flush_after`` isolates the builder's own overhead (CRC32C, metadata,
  renames and directory fsyncs) from the gain the hint brings.

``save_ratio`` = raw time / save time (median over the rounds; 1.0 = no overhead). The same
protocol with raw writes on both sides gives ``raw_vs_raw_ratio``, the noise floor of the
measurement. A read-back check through the reader (sizes and CRCs) is timed too
(``verify_mib_s``).

Usage::

    python -m benchmarks.snapshot_store [--quick] [--json PATH] [--dir DIR] [--mib N]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from trioraft.core.types import ConfState
from trioraft.storage.snapshots import FLUSH_AFTER_BYTES, SnapshotStore

CHUNK = 1 << 20
CONF = ConfState(voters=frozenset({1, 2, 3}))


class _RawWriter:
    """``os.write`` + one ``os.fsync``; with ``flush_after``, also the builder's early-writeback
    hint every that many bytes (``posix_fadvise(DONTNEED)``)."""

    def __init__(self, path: str, flush_after: int = 0) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.flush_after = flush_after
        self.written = self.flushed = 0

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)
        self.written += len(data)
        if self.flush_after and self.written - self.flushed >= self.flush_after:
            os.posix_fadvise(
                self.fd, self.flushed, self.written - self.flushed, os.POSIX_FADV_DONTNEED
            )
            self.flushed = self.written

    def finish(self) -> None:
        os.fsync(self.fd)
        os.close(self.fd)


class _StoreWriter:
    def __init__(self, store: SnapshotStore, index: int) -> None:
        self.builder = store.begin(index, 1, CONF)
        self.file = self.builder.open_file("data")

    def write(self, data: bytes) -> None:
        self.file.write(data)

    def finish(self) -> None:
        self.file.close()
        self.builder.commit(b"bench")


def _round(makers: Sequence[Callable[[], Any]], block: bytes, chunks: int, rot: int) -> list[float]:
    """Write the same chunks through several writers, interleaved chunk by chunk (so all meet
    the same disk conditions), then finish (fsync / commit) each; the order rotates with
    ``rot``. Returns each writer's summed time."""
    clock = time.perf_counter
    n = len(makers)
    t = [0.0] * n
    writers: list[Any] = [None] * n
    order = [(k + rot) % n for k in range(n)]
    for k in order:
        t0 = clock()
        writers[k] = makers[k]()
        t[k] += clock() - t0
    for i in range(chunks):
        off = (i * CHUNK) % len(block)
        chunk = block[off : off + CHUNK]
        for k in order:
            t0 = clock()
            writers[k].write(chunk)
            t[k] += clock() - t0
    for k in order:
        t0 = clock()
        writers[k].finish()
        t[k] += clock() - t0
    return t


def run(*, quick: bool, work: str, mib: int | None = None) -> dict[str, Any]:
    """Run the rounds; returns the result dict (also the JSON document)."""
    size_mib = mib or (64 if quick else 256)
    rounds = 6 if quick else 9
    chunks = size_mib
    block = os.urandom(16 * CHUNK)
    store = SnapshotStore(os.path.join(work, "snap"), retention=1)
    paths = [os.path.join(work, f"raw{k}.dat") for k in range(3)]
    times: dict[str, list[float]] = {"save": [], "raw": [], "raw_flush": []}
    ratios: list[float] = []
    flush_ratios: list[float] = []
    noise: list[float] = []
    verify_times: list[float] = []
    for r in range(rounds):
        index = r + 1
        makers: list[Callable[[], Any]] = [
            functools.partial(_StoreWriter, store, index),
            functools.partial(_RawWriter, paths[0]),
            functools.partial(_RawWriter, paths[1], FLUSH_AFTER_BYTES),
        ]
        st, rt, ft = _round(makers, block, chunks, r)
        times["save"].append(st)
        times["raw"].append(rt)
        times["raw_flush"].append(ft)
        ratios.append(rt / st)
        flush_ratios.append(ft / st)
        t0 = time.perf_counter()
        store.open_reader(index).verify()
        verify_times.append(time.perf_counter() - t0)
        store.apply_retention()
        for p in paths:
            if os.path.exists(p):
                os.remove(p)
        # the same protocol with plain raw writes on both sides: the noise floor
        a, b = _round(
            [functools.partial(_RawWriter, paths[2]), functools.partial(_RawWriter, paths[0])],
            block,
            chunks,
            r,
        )
        noise.append(b / a)
        for p in paths:
            if os.path.exists(p):
                os.remove(p)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "benchmark": "snapshot_store",
        "quick": quick,
        "size_mib": size_mib,
        "chunk_bytes": CHUNK,
        "rounds": rounds,
        "dir": work,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "save_mib_s": round(size_mib / med["save"], 1),
        "raw_mib_s": round(size_mib / med["raw"], 1),
        "save_ratio": round(statistics.median(ratios), 3),
        "save_ratio_rounds": [round(x, 3) for x in ratios],
        "raw_flush_after_mib_s": round(size_mib / med["raw_flush"], 1),
        "save_ratio_vs_raw_flush_after": round(statistics.median(flush_ratios), 3),
        "raw_vs_raw_ratio": round(statistics.median(noise), 3),
        "raw_vs_raw_rounds": [round(x, 3) for x in noise],
        "verify_mib_s": round(size_mib / statistics.median(verify_times), 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.snapshot_store", description=__doc__)
    p.add_argument("--quick", action="store_true", help="64 MiB, 6 rounds (default 256 MiB, 8)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH")
    p.add_argument("--dir", help="where to write (default: a temp dir on the system's temp disk)")
    p.add_argument("--mib", type=int, help="snapshot size in MiB (overrides --quick's 64)")
    args = p.parse_args(argv)
    work = tempfile.mkdtemp(prefix="trioraft-snap-bench-", dir=args.dir)
    try:
        res = run(quick=args.quick, work=work, mib=args.mib)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"snapshot save, {res['size_mib']} MiB in {CHUNK >> 20} MiB writes, "
        f"median of {res['rounds']} rounds (dir {res['dir']})\n"
        f"  builder (CRC32C, fsync, meta, rename, dir fsyncs): {res['save_mib_s']:8.1f} MiB/s\n"
        f"  raw os.write + fsync:                              {res['raw_mib_s']:8.1f} MiB/s\n"
        f"  raw, with the builder's early writeback hints:     "
        f"{res['raw_flush_after_mib_s']:8.1f} MiB/s\n"
        f"  save_ratio {res['save_ratio']:.3f} (rounds {res['save_ratio_rounds']}); "
        f"vs raw with early writeback {res['save_ratio_vs_raw_flush_after']:.3f}\n"
        f"  raw vs raw with the same protocol (noise): {res['raw_vs_raw_ratio']:.3f} "
        f"(rounds {res['raw_vs_raw_rounds']})\n"
        f"  read-back verify {res['verify_mib_s']:.1f} MiB/s"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2, sort_keys=True)
            f.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
