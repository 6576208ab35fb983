"""The hardware floor of one replicated proposal: the same round trip as a single proposer's
proposal on a 3-node cluster, with no Raft library at all.

Three processes on loopback. The leader (the benchmark's own process) sends each command
(sequence number + payload) over plain blocking TCP sockets to two follower processes, then
appends it to its own file with ``os.write`` + ``os.fdatasync``; each follower appends what it
receives the same way and answers with the sequence number. A round is complete once the
leader's own write is durable and one follower has answered (a majority of 3): the least any
Raft implementation must wait for before it may answer a client. Nothing else happens: no
encoding beyond a fixed header, no event loop, no state machine. ``--no-fsync`` drops the
fdatasyncs (writes only).

The replication benchmark runs this beside trioraft's single-proposer cases so its latency can
be read against what the machine (2 cores, 3 processes, one disk) allows.

Usage::

    python -m benchmarks.replication_floor [--seconds S] [--payload N] [--no-fsync] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    BenchError,
    ProcessSet,
    handle_signals,
    machine_info,
    percentile,
    print_table,
    rounded,
    work_dir,
    write_json,
)

_HEAD = struct.Struct("<QI")  # sequence number, payload length
_ACK = struct.Struct("<Q")


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def follower(path: str, fsync: bool) -> None:
    """Serve one leader connection: append each command to ``path`` (and fdatasync), then ack.

    Prints the listening port on stdout (one line) before accepting."""
    srv = socket.create_server(("127.0.0.1", 0))
    print(srv.getsockname()[1], flush=True)
    conn, _ = srv.accept()
    srv.close()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        while True:
            head = _recv_exact(conn, _HEAD.size)
            seq, n = _HEAD.unpack(head)
            os.write(fd, head + _recv_exact(conn, n))
            if fsync:
                os.fdatasync(fd)
            conn.sendall(_ACK.pack(seq))
    except (EOFError, ConnectionError):
        pass
    finally:
        os.close(fd)
        conn.close()


def run_floor(
    procs: ProcessSet,
    base: Path,
    *,
    payload: int,
    seconds: float,
    warmup: float,
    fsync: bool,
) -> dict[str, Any]:
    """Run the floor for ``seconds`` (after ``warmup``); returns ops/s and latency in ms."""
    base.mkdir(parents=True, exist_ok=True)
    socks: list[socket.socket] = []
    children = []
    for i in (2, 3):
        argv = [sys.executable, "-m", "benchmarks.replication_floor", "--follower"]
        argv += ["--file", str(base / f"follower-{i}.dat")]
        if not fsync:
            argv.append("--no-fsync")
        proc = procs.spawn(argv, log_path=base / f"follower-{i}.log", stdout=subprocess.PIPE)
        children.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.strip():
            raise BenchError(f"floor follower {i} did not start (see {base}/follower-{i}.log)")
        s = socket.create_connection(("127.0.0.1", int(line)))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(s)
    fd = os.open(base / "leader.dat", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    body = os.urandom(payload)
    acked = dict.fromkeys(socks, 0)
    pending = dict.fromkeys(socks, b"")
    lat: list[float] = []
    seq = 0
    clock = time.perf_counter
    try:
        t_measure = clock() + warmup
        t_end = t_measure + seconds
        measured_from = 0
        while True:
            t0 = clock()
            if t0 >= t_end:
                break
            if t0 >= t_measure and not measured_from:
                measured_from = seq + 1
            seq += 1
            msg = _HEAD.pack(seq, payload) + body
            for s in socks:
                s.sendall(msg)
            os.write(fd, msg)
            if fsync:
                os.fdatasync(fd)
            while max(acked.values()) < seq:
                ready, _, _ = select.select(socks, [], [])
                for s in ready:
                    data = pending[s] + s.recv(4096)
                    if not data:
                        raise BenchError("a floor follower closed its connection")
                    k = len(data) // _ACK.size * _ACK.size
                    for (a,) in _ACK.iter_unpack(data[:k]):
                        acked[s] = max(acked[s], a)
                    pending[s] = data[k:]
            if measured_from:
                lat.append(clock() - t0)
    finally:
        os.close(fd)
        for s in socks:
            s.close()
        for proc in children:
            ProcessSet.stop(proc, timeout=5)
    lat.sort()
    ops = len(lat)
    elapsed = sum(lat)
    return {
        "payload_bytes": payload,
        "fsync": fsync,
        "ops": ops,
        "ops_s": rounded(ops / elapsed if elapsed else None, 1),
        "p50_ms": rounded(_ms(percentile(lat, 0.5))),
        "p99_ms": rounded(_ms(percentile(lat, 0.99))),
    }


def _ms(v: float | None) -> float | None:
    return None if v is None else v * 1000


def main(argv: list[str] | None = None) -> int:
    """Command line: the floor on its own (the replication benchmark imports :func:`run_floor`)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.replication_floor", description=__doc__)
    p.add_argument("--follower", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--file", help=argparse.SUPPRESS)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--payload", type=int, default=16)
    p.add_argument("--no-fsync", action="store_true")
    p.add_argument("--dir", metavar="DIR", help="work directory (default: a temp dir, removed)")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    if args.follower:
        follower(args.file, not args.no_fsync)
        return 0
    with handle_signals(), work_dir(args.dir, "trioraft-floor-") as base, ProcessSet() as procs:
        machine = machine_info(base)
        r = run_floor(
            procs,
            base,
            payload=args.payload,
            seconds=args.seconds,
            warmup=args.warmup,
            fsync=not args.no_fsync,
        )
    print_table(
        "replication floor: one command to 2 followers over TCP, write (+ fdatasync) on all 3",
        ["payload B", "fsync", "ops/s", "p50 ms", "p99 ms"],
        [[r["payload_bytes"], r["fsync"], r["ops_s"], r["p50_ms"], r["p99_ms"]]],
    )
    write_json(args.json, {"benchmark": "replication_floor", **r, "machine": machine})
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        sys.exit(1)
