"""WAL append throughput against plain ``os.write`` + ``os.fdatasync`` of the same bytes.

For each batch size (1, 64, 1024 entries per ``WAL.save``, each save also carrying a hard state
as the runtime's saves do) the benchmark first captures the exact bytes the WAL writes per save
(an untimed pass), then times, alternately for several rounds:

* ``wal``: ``WAL.save(batch, hard_state)`` — encode, frame, CRC32C, one write, one fdatasync;
* ``raw``: ``os.write(fd, same_bytes)`` + ``os.fdatasync(fd)`` per save into a fresh file.

WAL saves and raw writes are interleaved one by one (alternating which goes first) into two
files growing side by side, so both meet the same background disk and CPU conditions. The figure
of merit is ``batch_<n>_ratio`` = raw time / WAL time (1.0 = no overhead over the raw syscalls),
the median over the rounds (each round starts fresh files). Beside it: the CPU time of the
calling thread per save on each side (``batch_<n>_{wal,raw}_cpu_us_per_save``: the WAL's own
cost, less sensitive to a noisy disk than wall time) and ``batch_<n>_noise_ratio``, the same
protocol with a raw writer on both sides (how far from 1.0 an identical workload lands: the
noise floor of the ratio on this machine at this moment).

Usage::

    python -m benchmarks.wal_append [--quick] [--json PATH] [--dir DIR] [--entry-bytes N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from trioraft.core.types import Entry, HardState
from trioraft.storage.fs import REAL_FS, Buffer, FileSystem, NoSyncFileSystem
from trioraft.storage.wal import WAL

BATCH_SIZES = (1, 64, 1024)


class _Recorder(NoSyncFileSystem):
    """Captures every buffer written (no fsyncs: this pass only learns the bytes)."""

    def __init__(self, inner: FileSystem) -> None:
        super().__init__(inner)
        self.writes: list[bytes] = []
        inner_write = inner.write

        def write(fd: int, data: Buffer) -> None:
            self.writes.append(bytes(data))
            inner_write(fd, data)

        def writev(fd: int, parts: Sequence[Buffer]) -> None:
            write(fd, b"".join(parts))

        self.write = write
        self.writev = writev


class _Batches:
    """Save number ``k``: ``batch`` entries of ``entry_bytes`` (each its own bytes object, as
    entries arriving from clients are) and the hard state committing the previous save."""

    def __init__(self, batch: int, count: int, entry_bytes: int) -> None:
        self.batch = batch
        self.count = count
        self.payload = os.urandom(entry_bytes)

    def make(self, k: int) -> tuple[list[Entry], HardState]:
        first = 1 + k * self.batch
        tail = self.payload[8:]
        ents = [
            Entry(term=3, index=first + i, data=b"%08d" % ((first + i) % 10**8) + tail)
            for i in range(self.batch)
        ]
        return ents, HardState(term=3, vote=1, commit=first - 1)


def _capture(work: str, batches: _Batches) -> list[bytes]:
    d = os.path.join(work, "capture")
    rec = _Recorder(REAL_FS)
    wal, _ = WAL.open(d, fs=rec)
    try:
        rec.writes.clear()
        for k in range(batches.count):
            wal.save(*batches.make(k))
    finally:
        wal.close()
        shutil.rmtree(d)
    if len(rec.writes) != batches.count:
        raise RuntimeError("expected exactly one write per save (segment cut during capture?)")
    return rec.writes


def _round(
    work: str,
    batches: _Batches,
    bufs: Sequence[bytes],
    *,
    raw_only: bool = False,
    prezero: bool | None = None,
) -> tuple[float, float, float, float]:
    """One round: WAL saves and raw writes interleaved save by save (alternating which goes
    first), so both see the same background disk and CPU conditions. Each batch of entries is
    built (untimed) just before its save, as the runtime's entries are created by the core
    moments before the WAL persists them. With ``raw_only`` the "WAL" side is a second raw
    writer (the noise floor of the protocol). Returns the summed (wal, raw) wall times and
    (wal, raw) CPU times of this thread."""
    d = os.path.join(work, "wal")
    path = os.path.join(work, "raw.dat")
    wal, _ = WAL.open(d, prezero=prezero)
    fd2 = os.open(os.path.join(work, "raw2.dat"), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    clock = time.perf_counter
    cpu = time.thread_time
    wal_t = raw_t = wal_c = raw_c = 0.0
    try:
        for i, buf in enumerate(bufs):
            ents, hs = batches.make(i)
            for side in (i % 2, 1 - i % 2):
                c0 = cpu()
                t0 = clock()
                if side:
                    os.write(fd, buf)
                    os.fdatasync(fd)
                elif raw_only:
                    os.write(fd2, buf)
                    os.fdatasync(fd2)
                else:
                    wal.save(ents, hs)
                t1 = clock()
                c1 = cpu()
                if side:
                    raw_t += t1 - t0
                    raw_c += c1 - c0
                else:
                    wal_t += t1 - t0
                    wal_c += c1 - c0
    finally:
        wal.close()
        os.close(fd)
        os.close(fd2)
        shutil.rmtree(d)
        os.remove(path)
        os.remove(os.path.join(work, "raw2.dat"))
    return wal_t, raw_t, wal_c, raw_c


def run(
    *,
    quick: bool,
    work: str,
    entry_bytes: int,
    saves: int | None = None,
    rounds: int | None = None,
    prezero: bool | None = None,
) -> dict[str, Any]:
    """Run every batch size; returns the result dict (also the JSON document).

    ``saves`` and ``rounds`` override the mode's counts (the smoke test uses tiny ones);
    ``prezero`` turns the WAL's pre-zeroed segments on or off (``None``: the WAL's default, on
    for the real file system; ``Config.wal_prezero``)."""
    counts = {1: 300, 64: 200, 1024: 40} if quick else {1: 2000, 64: 1000, 1024: 200}
    if saves is not None:
        counts = dict.fromkeys(counts, saves)
    if rounds is None:
        rounds = 3 if quick else 5
    result: dict[str, Any] = {
        "benchmark": "wal_append",
        "quick": quick,
        "entry_bytes": entry_bytes,
        "prezero": True if prezero is None else prezero,
        "rounds": rounds,
        "dir": work,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
    for batch in BATCH_SIZES:
        batches = _Batches(batch, counts[batch], entry_bytes)
        bufs = _capture(work, batches)
        nbytes = sum(len(b) for b in bufs)
        nentries = batch * batches.count
        wal_times: list[float] = []
        raw_times: list[float] = []
        ratios: list[float] = []
        wal_cpu: list[float] = []
        raw_cpu: list[float] = []
        noise: list[float] = []
        for _ in range(rounds):
            w, r, wc, rc = _round(work, batches, bufs, prezero=prezero)
            wal_times.append(w)
            raw_times.append(r)
            ratios.append(r / w)
            wal_cpu.append(wc)
            raw_cpu.append(rc)
            a, b, _, _ = _round(work, batches, bufs, raw_only=True)
            noise.append(b / a)
        wal_t = statistics.median(wal_times)
        raw_t = statistics.median(raw_times)
        mib = nbytes / (1 << 20)
        key = f"batch_{batch}"
        result[f"{key}_saves"] = batches.count
        result[f"{key}_bytes"] = nbytes
        result[f"{key}_wal_entries_per_s"] = round(nentries / wal_t, 1)
        result[f"{key}_wal_mib_s"] = round(mib / wal_t, 3)
        result[f"{key}_raw_entries_per_s"] = round(nentries / raw_t, 1)
        result[f"{key}_raw_mib_s"] = round(mib / raw_t, 3)
        result[f"{key}_wal_us_per_save"] = round(wal_t / batches.count * 1e6, 1)
        result[f"{key}_raw_us_per_save"] = round(raw_t / batches.count * 1e6, 1)
        result[f"{key}_ratio"] = round(statistics.median(ratios), 3)
        result[f"{key}_ratio_rounds"] = [round(x, 3) for x in ratios]
        result[f"{key}_wal_cpu_us_per_save"] = round(
            statistics.median(wal_cpu) / batches.count * 1e6, 1
        )
        result[f"{key}_raw_cpu_us_per_save"] = round(
            statistics.median(raw_cpu) / batches.count * 1e6, 1
        )
        result[f"{key}_noise_ratio"] = round(statistics.median(noise), 3)
    return result


def _table(res: dict[str, Any]) -> str:
    lines = [
        f"WAL append{' (pre-zeroed segments)' if res['prezero'] else ''}, "
        f"{res['entry_bytes']} B entries, one fdatasync per save "
        f"(median of {res['rounds']} rounds, dir {res['dir']})",
        f"{'batch':>6} {'WAL entries/s':>14} {'WAL MiB/s':>10} {'raw entries/s':>14} "
        f"{'raw MiB/s':>10} {'WAL us/save':>12} {'raw us/save':>12} {'ratio':>6} "
        f"{'WAL cpu us':>11} {'raw cpu us':>11} {'raw/raw':>8}",
    ]
    for b in BATCH_SIZES:
        k = f"batch_{b}"
        lines.append(
            f"{b:>6} {res[k + '_wal_entries_per_s']:>14,.0f} {res[k + '_wal_mib_s']:>10.2f} "
            f"{res[k + '_raw_entries_per_s']:>14,.0f} {res[k + '_raw_mib_s']:>10.2f} "
            f"{res[k + '_wal_us_per_save']:>12.1f} {res[k + '_raw_us_per_save']:>12.1f} "
            f"{res[k + '_ratio']:>6.3f} {res[k + '_wal_cpu_us_per_save']:>11.1f} "
            f"{res[k + '_raw_cpu_us_per_save']:>11.1f} {res[k + '_noise_ratio']:>8.3f}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.wal_append", description=__doc__)
    p.add_argument("--quick", action="store_true", help="fewer saves and rounds")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH")
    p.add_argument(
        "--dir", help="where to write (default: a temp dir); use the disk you care about"
    )
    p.add_argument("--entry-bytes", type=int, default=256, help="payload bytes per entry (256)")
    p.add_argument(
        "--prezero",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="pre-zeroed WAL segments on or off (default: the WAL's default, on)",
    )
    args = p.parse_args(argv)
    work = tempfile.mkdtemp(prefix="trioraft-wal-bench-", dir=args.dir)
    try:
        res = run(quick=args.quick, work=work, entry_bytes=args.entry_bytes, prezero=args.prezero)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(_table(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2, sort_keys=True)
            f.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
