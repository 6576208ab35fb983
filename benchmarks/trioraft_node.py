"""One trioraft node as a process, driven by the benchmarks over stdin/stdout.

The node uses only the public library API (``Config``, ``TcpTransport``, ``open_raft_node``,
``RaftNode``) with a small key-value state machine (``BenchMachine``) whose snapshot is three
column-wise files: a plain application that adds little to what the library does, so the
figures are mostly the library's.

Control protocol (JSON lines): requests ``{"id": n, "op": ..., ...}`` on stdin, replies
``{"id": n, "ok": true, ...}`` and events ``{"event": ...}`` on stdout; every timestamp is
``time.monotonic()`` (comparable across processes on Linux). Ops:

* ``status``: role, leader, indexes, snapshot counters, keys, state bytes.
* ``load``: ``count`` keys of ``value_bytes`` values, ``batch`` puts per proposal, ``concurrency``
  proposals in flight, keys from ``start``.
* ``tail``: ``count`` single-put proposals overwriting keys below ``keys`` (a WAL tail).
* ``snapshot``: take a snapshot now (trigger to durable install); bytes and seconds.
* ``wait_applied``: until ``applied >= index``; the exact time it happened, plus the install
  timeline (receive begin, restore begin/end, peak RSS before the restore).
* ``bench``: ``proposers`` tasks proposing ``payload``-byte no-op commands for ``seconds``
  (after ``warmup`` seconds); ops/s and latency percentiles.

Run: ``python -m benchmarks.trioraft_node --id 1 --peers 1=127.0.0.1:7001,2=...,3=...
--data-dir DIR [--no-fsync] [--catchup-entries N]``. It stops on SIGTERM, SIGINT or stdin EOF.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import mmap
import operator
import os
import resource
import struct
import sys
import time
from array import array
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Iterator
from itertools import accumulate, compress, islice, pairwise
from typing import Any

import trio

from benchmarks.common import key_for, make_value_pool, percentile, status_kib, value_for
from trioraft.config import Config
from trioraft.node import RaftNode, open_raft_node
from trioraft.runtime.transport.tcp import TcpTransport
from trioraft.statemachine import Saver, SnapshotReader, SnapshotWriter

_HDR = struct.Struct("<HI")  # key length, value length (put commands)
_COUNT = struct.Struct("<Q")
INDEX_FILE = "index.bin"
KEYS_FILE = "keys.bin"
VALUES_FILE = "values.bin"
STATE_FILES = (INDEX_FILE, KEYS_FILE, VALUES_FILE)
_CHUNK = 1 << 20
_KEY_BLOCK = 4096  #: keys cut per struct call when they all have one width


def encode_puts(pairs: list[tuple[bytes, bytes]]) -> bytes:
    """A put command: ``b"P"`` then records (u16 key length, u32 value length, key, value)."""
    parts = [b"P"]
    for k, v in pairs:
        parts.append(_HDR.pack(len(k), len(v)))
        parts.append(k)
        parts.append(v)
    return b"".join(parts)


class _SortedKeys:
    """The loaded keys' index when ``keys.bin`` lists them in strictly ascending order: key ->
    record number (its position in the list) by bisection, so a restore builds no hash table
    (hashing and inserting 262k keys cost about 50-75 ms, the list and the order check about
    25 ms). Supports what :class:`BenchMachine` does with its dict of loaded keys: ``get``,
    ``pop`` (a put of a loaded key marks it dead), ``len``, truth, and iteration over the live
    keys, record numbers and pairs in record order."""

    __slots__ = ("_dead", "_keys", "_live")

    def __init__(self, keys: list[bytes]) -> None:
        self._keys = keys
        self._dead = bytearray(len(keys))  #: 1 for each record whose key was put since
        self._live = len(keys)

    def _find(self, key: bytes) -> int:
        keys = self._keys
        i = bisect_left(keys, key)
        if i < len(keys) and keys[i] == key and not self._dead[i]:
            return i
        return -1

    def get(self, key: bytes, default: int | None = None) -> int | None:
        """The record number of live ``key``, else ``default``."""
        i = self._find(key)
        return default if i < 0 else i

    def pop(self, key: bytes, default: int | None = None) -> int | None:
        """Like ``get``, and ``key`` is no longer live."""
        i = self._find(key)
        if i < 0:
            return default
        self._dead[i] = 1
        self._live -= 1
        return i

    def __len__(self) -> int:
        return self._live

    def _alive(self) -> Iterable[int]:
        # 1 for each live record, as the selectors of itertools.compress
        return map(operator.not_, self._dead)

    def __iter__(self) -> Iterator[bytes]:
        if self._live == len(self._keys):
            return iter(self._keys)
        return compress(self._keys, self._alive())

    def values(self) -> Iterable[int]:
        """The live records' numbers, ascending."""
        n = len(self._keys)
        if self._live == n:
            return range(n)
        return compress(range(n), self._alive())

    def items(self) -> Iterable[tuple[bytes, int]]:
        """(key, record number) of each live record, in record order."""
        return zip(self, self.values(), strict=True)


class BenchMachine:
    """Keys to values; anything that is not a put command is a counted no-op.

    A snapshot is three files, column-wise: ``index.bin`` (the record count, then every key's
    length as u16 and every value's length as u32), ``keys.bin`` (the keys back to back) and
    ``values.bin`` (the values back to back, streamed).

    The state has two layers that never hold the same key. Values put by commands live in
    ``data``, a dict of values sliced straight out of the commands. Values loaded by a restore
    stay where the restore read them: ``values.bin`` is read with one large read into one
    ``bytes`` object, their offsets go into an array, and a dict maps each key to its record
    number. A read slices the value out; a put of a loaded key moves the key to ``data``. So a
    restore reads every file whole and builds its key index with C-level passes, but makes no
    Python object per value (measured for 256 MiB of 1 KiB values: about 0.25 s instead of
    0.65 s, most of what is left being the page faults of the memory the values are read
    into). When ``keys.bin`` lists its keys in strictly ascending order (it does for the
    benchmark's keys, loaded in key order), the key index is that sorted list itself,
    searched by bisection (:class:`_SortedKeys`), instead of a dict: building a dict of 262k
    keys was about 3/4 of a mapped 256 MiB restore. By default (``map_values``) the values
    file is not read but mapped read-only from the snapshot store through
    :meth:`SnapshotReader.map_file`, so a restore costs about the key index alone; the values
    then live in the page cache, not in the process's anonymous memory, and count in its RSS
    only once read (``--read-values`` reads them instead). The loaded values stay in memory as
    long as any of them is live; the next snapshot holds only the live ones.
    """

    def __init__(self, map_values: bool = True) -> None:
        self.data: dict[bytes, bytes] = {}
        #: keys loaded by the last restore (and not put since) -> their record numbers
        self._base: dict[bytes, int] | _SortedKeys = {}
        #: the loaded values back to back, the offset of each (and the end), each one's length
        self._blob: bytes | mmap.mmap = b""
        #: whether a restore maps ``values.bin`` (``SnapshotReader.map_file``) instead of
        #: reading it into memory (``--read-values``: False)
        self.map_values = map_values
        #: whether the last restore mapped its values file
        self.values_mapped = False
        self._offsets = array("q", [0])
        self._lengths = array("I")
        self.value_bytes = 0
        self.applied = 0
        self.noops = 0
        self.watch: int | None = None
        self.watch_t: float | None = None
        self.restore_begin: float | None = None
        self.restore_end: float | None = None
        #: process CPU seconds (all threads) at the restore's begin and end
        self.restore_begin_cpu: float | None = None
        self.restore_end_cpu: float | None = None
        #: the process's minor page faults so far at the restore's begin and end
        self.restore_begin_faults: int | None = None
        self.restore_end_faults: int | None = None
        self.hwm_before_restore_kib: int | None = None
        self.rss_before_restore_kib: int | None = None

    def _reached(self, index: int) -> None:
        self.applied = index
        if self.watch is not None and self.watch_t is None and index >= self.watch:
            self.watch_t = time.monotonic()

    @property
    def key_count(self) -> int:
        """Number of keys."""
        return len(self.data) + len(self._base)

    def get(self, key: bytes) -> bytes | None:
        """The value of ``key`` (None when absent)."""
        value = self.data.get(key)
        if value is None and self._base:
            i = self._base.get(key)
            if i is not None:
                offsets = self._offsets
                return self._blob[offsets[i] : offsets[i + 1]]
        return value

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every key with its value."""
        blob, offsets = self._blob, self._offsets
        for key, i in self._base.items():
            yield key, blob[offsets[i] : offsets[i + 1]]
        yield from self.data.items()

    def _set_base(
        self,
        base: dict[bytes, int] | _SortedKeys,
        blob: bytes | mmap.mmap,
        offsets: array[int],
        lengths: array[int],
    ) -> None:
        self._base = base
        self._blob = blob
        self._offsets = offsets
        self._lengths = lengths

    def apply(self, index: int, data: bytes) -> int:
        if data[:1] == b"P":
            pos = 1
            end = len(data)
            unpack = _HDR.unpack_from
            hsize = _HDR.size
            store = self.data
            base = self._base
            while pos < end:
                klen, vlen = unpack(data, pos)
                key_end = pos + hsize + klen
                rec_end = key_end + vlen
                key = data[pos + hsize : key_end]
                old = store.get(key)
                if old is not None:
                    self.value_bytes -= len(old)
                elif base:
                    i = base.pop(key, None)
                    if i is not None:
                        self.value_bytes -= self._lengths[i]
                        if not base:  # nothing loaded is live any more
                            self._set_base({}, b"", array("q", [0]), array("I"))
                            base = self._base
                store[key] = data[key_end:rec_end]
                self.value_bytes += vlen
                pos = rec_end
        else:
            self.noops += 1
        self._reached(index)
        return index

    def capture(self) -> Saver:
        # Everything the saver needs is taken now: the loaded values' bytes and arrays are
        # never modified (a restore or the last live one going replaces them).
        keys = list(self._base)
        loaded = list(self._base.values())
        keys += self.data
        values = list(self.data.values())
        blob, offsets, lengths = self._blob, self._offsets, self._lengths
        intact = len(loaded) == len(lengths)  # every loaded value live, in file order

        async def saver(writer: SnapshotWriter) -> None:
            async with writer.open(INDEX_FILE) as f:
                await f.write(_COUNT.pack(len(keys)))
                await f.write(array("H", map(len, keys)).tobytes())
                if intact:
                    await f.write(lengths.tobytes())
                elif loaded:
                    await f.write(array("I", map(lengths.__getitem__, loaded)).tobytes())
                await f.write(array("I", map(len, values)).tobytes())
            async with writer.open(KEYS_FILE) as f:
                await f.write(b"".join(keys))
            async with writer.open(VALUES_FILE) as f:
                # Pieces of about 1 MiB go straight through the writer (no re-buffering).
                if intact:
                    view = memoryview(blob)
                    for i in range(0, len(blob), _CHUNK):
                        await f.write(view[i : i + _CHUNK])
                elif loaded:
                    step = _records_per_chunk(lengths[loaded[0]])
                    for i in range(0, len(loaded), step):
                        part = loaded[i : i + step]
                        await f.write(b"".join([blob[offsets[j] : offsets[j + 1]] for j in part]))
                step = _records_per_chunk(len(values[0]) if values else 0)
                for i in range(0, len(values), step):
                    await f.write(b"".join(values[i : i + step]))
            writer.user_meta = b"keys=%d" % len(keys)

        return saver

    async def restore(self, reader: SnapshotReader) -> None:
        self.restore_begin = time.monotonic()
        self.restore_begin_cpu = time.process_time()
        self.restore_begin_faults = _minor_faults()
        self.hwm_before_restore_kib = status_kib("VmHWM")
        self.rss_before_restore_kib = status_kib("VmRSS")
        base: dict[bytes, int] | _SortedKeys = {}
        blob: bytes | mmap.mmap = b""
        offsets = array("q", [0])
        vlens = array("I")
        self.values_mapped = False
        if INDEX_FILE in reader.files:
            # The values file, by far the largest, is read in a worker thread (the disk
            # executor's) while this task builds the key index; failures of either are raised
            # once both are done, as themselves.
            errors: list[Exception] = []
            blobs: list[bytes | mmap.mmap] = []

            async def read_values() -> None:
                try:
                    if self.map_values:
                        values = await reader.map_file(VALUES_FILE)
                        self.values_mapped = isinstance(values, mmap.mmap)
                        blobs.append(values)
                    else:
                        blobs.append(await _read_all(reader, VALUES_FILE))
                except Exception as exc:
                    errors.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_values)
                try:
                    base, vlens = await _key_index(reader)
                except Exception as exc:
                    errors.append(exc)
            if errors:
                raise errors[0]
            blob = blobs[0]
            offsets = array("q", accumulate(vlens, initial=0))
            if offsets[-1] != len(blob):
                raise ValueError(
                    f"truncated {VALUES_FILE}: {len(blob)} bytes, the index says {offsets[-1]}"
                )
        self.data = {}
        self._set_base(base, blob, offsets, vlens)
        self.value_bytes = offsets[-1]
        self.restore_end = time.monotonic()
        self.restore_end_cpu = time.process_time()
        self.restore_end_faults = _minor_faults()
        self._reached(reader.index)


async def _key_index(
    reader: SnapshotReader,
) -> tuple[dict[bytes, int] | _SortedKeys, array[int]]:
    """From ``index.bin`` and ``keys.bin``: every key to its record number (a
    :class:`_SortedKeys` when the keys are in strictly ascending order, else a dict), and the
    values' lengths."""
    index = await _read_all(reader, INDEX_FILE)
    (n,) = _COUNT.unpack_from(index) if len(index) >= _COUNT.size else (-1,)
    if n < 0 or len(index) != _COUNT.size + 6 * n:
        raise ValueError(f"{INDEX_FILE}: {len(index)} bytes do not hold a record count")
    klens = array("H")
    klens.frombytes(index[_COUNT.size : _COUNT.size + 2 * n])
    vlens = array("I")
    vlens.frombytes(index[_COUNT.size + 2 * n :])
    if sys.byteorder != "little":  # pragma: no cover - big-endian hosts
        klens.byteswap()
        vlens.byteswap()
    kblob = await _read_all(reader, KEYS_FILE)
    width = klens[0] if n else 0
    if n and width and klens.count(width) == n:
        # Keys of one width (the benchmark's): cut by struct in blocks of _KEY_BLOCK keys,
        # without the offsets list and one slice call per key (about 1/3 less time).
        if n * width != len(kblob):
            raise ValueError(f"{KEYS_FILE}: {len(kblob)} bytes, the index says {n * width}")
        block = struct.Struct(f"{width}s" * _KEY_BLOCK)
        keys: list[bytes] = []
        whole = n - n % _KEY_BLOCK
        for off in range(0, whole * width, block.size):
            keys.extend(block.unpack_from(kblob, off))
        keys.extend(kblob[i : i + width] for i in range(whole * width, n * width, width))
    else:
        ko = list(accumulate(klens, initial=0))
        if ko[-1] != len(kblob):
            raise ValueError(f"{KEYS_FILE}: {len(kblob)} bytes, the index says {ko[-1]}")
        keys = [kblob[a:b] for a, b in pairwise(ko)]
    # one C-level pass: strictly ascending keys (hence no duplicates) need no hash table
    if all(map(operator.lt, keys, islice(keys, 1, None))):
        return _SortedKeys(keys), vlens
    base = dict(zip(keys, range(n), strict=True))
    if len(base) != n:
        raise ValueError(f"{KEYS_FILE}: {n - len(base)} duplicate keys")
    return base, vlens


def _minor_faults() -> int:
    """Minor page faults of this process so far (each one maps a page of memory; on a VM the
    first touch of a page can cost microseconds)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _records_per_chunk(size: int) -> int:
    """How many values of ``size`` bytes make a write of about 1 MiB."""
    return max(1, -(-_CHUNK // (size or 1)))


async def _read_all(reader: SnapshotReader, name: str) -> bytes:
    """The whole file ``name``: one large read (a read may return less, say past 2 GiB on
    Linux; then the rest follows)."""
    async with reader.open(name) as f:
        data = await f.read()
        if len(data) >= f.size:
            return data
        parts = [data]
        while piece := await f.read():
            parts.append(piece)
        return b"".join(parts)


class _SnapshotLog(logging.Handler):
    """Records when the runtime starts receiving a snapshot (from its log line)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.receive_begin: float | None = None
        self.receive_begin_cpu: float | None = None
        self.receive_begin_faults: int | None = None
        self.sent: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = str(record.msg)
        if "receiving snapshot" in msg:
            self.receive_begin = time.monotonic()
            self.receive_begin_cpu = time.process_time()
            self.receive_begin_faults = _minor_faults()
        elif "snapshot" in msg and "sent to node" in msg:
            self.sent.append(time.monotonic())


def _out(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


class Controller:
    """Executes control requests against the node."""

    def __init__(
        self, node: RaftNode, fsm: BenchMachine, snaplog: _SnapshotLog, transport: TcpTransport
    ) -> None:
        self.node = node
        self.transport = transport
        self.fsm = fsm
        self.snaplog = snaplog
        self.pool = make_value_pool()
        self._profiler: Any = None

    async def op_status(self) -> dict[str, Any]:
        st = self.node.status()
        return {
            "node": st.id,
            "role": st.role.name.lower(),
            "leader": st.leader,
            "term": st.term,
            "commit": st.commit,
            "applied": st.applied,
            "first_index": st.first_index,
            "last_index": st.last_index,
            "snapshot_index": st.snapshot_index,
            "snapshots_installed": st.snapshots_installed,
            "snapshots_sent": st.snapshots_sent,
            "keys": self.fsm.key_count,
            "value_bytes": self.fsm.value_bytes,
            "pid": os.getpid(),
        }

    async def _run_parallel(
        self, jobs: int, concurrency: int, job: Callable[[int], Awaitable[None]]
    ) -> float:
        next_job = 0

        async def worker() -> None:
            nonlocal next_job
            while next_job < jobs:
                j = next_job
                next_job += 1
                await job(j)

        t0 = time.monotonic()
        async with trio.open_nursery() as nursery:
            for _ in range(max(1, min(concurrency, jobs))):
                nursery.start_soon(worker)
        return time.monotonic() - t0

    async def op_load(
        self, count: int, value_bytes: int, batch: int = 64, concurrency: int = 8, start: int = 0
    ) -> dict[str, Any]:
        pool = self.pool
        batches = (count + batch - 1) // batch

        async def job(b: int) -> None:
            lo = start + b * batch
            hi = min(start + count, lo + batch)
            pairs = [(key_for(i).encode(), value_for(pool, i, value_bytes)) for i in range(lo, hi)]
            await self.node.propose(encode_puts(pairs), timeout=60)

        elapsed = await self._run_parallel(batches, concurrency, job)
        return {"seconds": elapsed, "proposals": batches, "commit": self.node.commit_index}

    async def op_tail(
        self, count: int, value_bytes: int, keys: int, concurrency: int = 64
    ) -> dict[str, Any]:
        pool = self.pool

        async def job(j: int) -> None:
            i = j % max(1, keys)
            pair = (key_for(i).encode(), value_for(pool, j + 7, value_bytes))
            await self.node.propose(encode_puts([pair]), timeout=60)

        elapsed = await self._run_parallel(count, concurrency, job)
        return {"seconds": elapsed, "commit": self.node.commit_index}

    async def op_snapshot(self) -> dict[str, Any]:
        t0 = time.monotonic()
        stored = await self.node.snapshot()
        t1 = time.monotonic()
        return {
            "seconds": t1 - t0,
            "t0": t0,
            "t1": t1,
            "index": stored.index,
            "bytes": sum(f.size for f in stored.files),
            "state_file_bytes": sum(f.size for f in stored.files if f.name in STATE_FILES),
            "path": stored.path,
        }

    async def op_wait_applied(self, index: int, timeout: float = 600.0) -> dict[str, Any]:
        # Done when the runtime itself reports the index applied (after a snapshot install that
        # is a little later than the state machine's restore returning).
        fsm = self.fsm
        node = self.node
        fsm.watch, fsm.watch_t = index, None
        with trio.fail_after(timeout):
            while node.applied_index < index:
                await trio.sleep(0.001)
        t = time.monotonic()
        return {
            "t": t,
            "fsm_t": fsm.watch_t,
            "applied": fsm.applied,
            "receive_begin": self.snaplog.receive_begin,
            "restore_begin": fsm.restore_begin,
            "restore_end": fsm.restore_end,
            "cpu": time.process_time(),
            "receive_begin_cpu": self.snaplog.receive_begin_cpu,
            "restore_begin_cpu": fsm.restore_begin_cpu,
            "restore_end_cpu": fsm.restore_end_cpu,
            "faults": _minor_faults(),
            "receive_begin_faults": self.snaplog.receive_begin_faults,
            "restore_begin_faults": fsm.restore_begin_faults,
            "restore_end_faults": fsm.restore_end_faults,
            "hwm_before_restore_kib": fsm.hwm_before_restore_kib,
            "rss_before_restore_kib": fsm.rss_before_restore_kib,
            "rss_kib": status_kib("VmRSS"),
            "hwm_kib": status_kib("VmHWM"),
        }

    async def op_transfer(self, target: int) -> dict[str, Any]:
        await self.node.transfer_leadership(target)
        return {"leader": self.node.leader}

    async def op_profile_start(self, interval: float = 0.001) -> dict[str, Any]:
        """Start pyinstrument on the event loop's thread (profiling aid, not a measurement)."""
        from pyinstrument import Profiler

        self._profiler = Profiler(interval=interval, async_mode="disabled")
        self._profiler.start()
        return {}

    async def op_profile_stop(self, path: str) -> dict[str, Any]:
        """Stop pyinstrument and write its text report to ``path``."""
        profiler = self._profiler
        self._profiler = None
        if profiler is None:
            raise RuntimeError("no profile running")
        profiler.stop()
        text = profiler.output_text(unicode=False, color=False, show_all=False)
        await trio.Path(path).write_text(text)
        return {"path": path}

    async def op_bench(
        self, proposers: int, seconds: float, payload: int, warmup: float = 1.0
    ) -> dict[str, Any]:
        data = b"x" * payload
        node = self.node
        latencies: list[float] = []
        done = 0
        errors = 0
        measuring = False
        stop_at = 0.0

        async def proposer() -> None:
            nonlocal done, errors
            while time.monotonic() < stop_at:
                t0 = time.perf_counter()
                try:
                    await node.propose(data)
                except Exception:
                    errors += 1
                    continue
                if measuring:
                    latencies.append(time.perf_counter() - t0)
                    done += 1

        stop_at = time.monotonic() + warmup
        async with trio.open_nursery() as nursery:
            for _ in range(proposers):
                nursery.start_soon(proposer)
        measuring = True
        stats = self.transport.stats
        sent0, recv0 = stats.messages_sent, stats.messages_received
        t0 = time.monotonic()
        stop_at = t0 + seconds
        async with trio.open_nursery() as nursery:
            for _ in range(proposers):
                nursery.start_soon(proposer)
        elapsed = time.monotonic() - t0
        latencies.sort()
        p50 = percentile(latencies, 0.5)
        p99 = percentile(latencies, 0.99)
        return {
            "ops": done,
            "seconds": elapsed,
            "ops_s": done / elapsed if elapsed else 0.0,
            "p50_ms": None if p50 is None else p50 * 1000,
            "p99_ms": None if p99 is None else p99 * 1000,
            "errors": errors,
            "leader_msgs_sent": stats.messages_sent - sent0,
            "leader_msgs_received": stats.messages_received - recv0,
        }


async def _serve_control(ctl: Controller) -> None:
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    buf = b""

    async def handle(req: dict[str, Any]) -> None:
        rid = req.pop("id", None)
        op = str(req.pop("op", ""))
        fn = getattr(ctl, f"op_{op}", None)
        try:
            if fn is None:
                raise ValueError(f"unknown op {op!r}")
            result = await fn(**req)
            _out({"id": rid, "ok": True, **result})
        except Exception as exc:
            logging.getLogger("bench").exception("op %s failed", op)
            _out({"id": rid, "ok": False, "error": repr(exc)})

    async with trio.open_nursery() as nursery:
        while True:
            data = await stdin.receive_some(65536)
            if not data:
                break
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.strip():
                    nursery.start_soon(handle, json.loads(line))
        nursery.cancel_scope.cancel()


async def main_async(args: argparse.Namespace) -> None:
    peers: dict[int, str] = {}
    for item in args.peers.split(","):
        nid, addr = item.split("=", 1)
        peers[int(nid)] = addr
    knobs: dict[str, Any] = {}
    if args.snapshot_chunk:
        knobs["snapshot_chunk_bytes"] = args.snapshot_chunk
    if args.snapshot_window:
        knobs["snapshot_window_chunks"] = args.snapshot_window
    config = Config(
        **knobs,
        id=args.id,
        peers=peers,
        fsync=not args.no_fsync,
        snapshot_entries=args.snapshot_entries,
        catchup_entries=args.catchup_entries,
        tick_interval=args.tick_ms / 1000.0,
        max_pending_proposals=args.max_pending,
    )
    host, port = peers[args.id].rsplit(":", 1)
    transport_knobs: dict[str, Any] = {}
    if args.backoff_max:
        transport_knobs["backoff_max"] = args.backoff_max
    transport = TcpTransport(
        **transport_knobs,
        node_id=args.id,
        cluster_id="trioraft-bench",
        listen=(host, int(port)),
        peers={p: a for p, a in peers.items() if p != args.id},
        **config.transport_options(),
    )
    fsm = BenchMachine(map_values=not args.read_values)
    snaplog = _SnapshotLog()
    logging.getLogger("trioraft").addHandler(snaplog)
    async with open_raft_node(config, fsm, data_dir=args.data_dir, transport=transport) as node:
        _out(
            {
                "event": "ready",
                "t": time.monotonic(),
                "applied": fsm.applied,
                "pid": os.getpid(),
                "rss_kib": status_kib("VmRSS"),
            }
        )
        ctl = Controller(node, fsm, snaplog, transport)
        async with trio.open_nursery() as nursery:

            async def control() -> None:
                await _serve_control(ctl)
                nursery.cancel_scope.cancel()

            nursery.start_soon(control)
            with trio.open_signal_receiver(2, 15) as signals:  # SIGINT, SIGTERM
                async for _ in signals:
                    break
            nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    """Parse flags and run the node until SIGTERM/SIGINT or stdin EOF."""
    p = argparse.ArgumentParser(description="trioraft benchmark node")
    p.add_argument("--id", type=int, required=True)
    p.add_argument("--peers", required=True, help="1=host:port,2=host:port,...")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--no-fsync", action="store_true")
    p.add_argument("--snapshot-entries", type=int, default=0, help="0: manual snapshots only")
    p.add_argument("--catchup-entries", type=int, default=0)
    p.add_argument("--tick-ms", type=int, default=100)
    p.add_argument("--max-pending", type=int, default=16384)
    p.add_argument("--snapshot-chunk", type=int, default=None, help="default: library's")
    p.add_argument("--snapshot-window", type=int, default=None, help="default: library's")
    p.add_argument(
        "--backoff-max", type=float, default=None, help="transport reconnect cap (library's)"
    )
    p.add_argument(
        "--read-values",
        action="store_true",
        help="restores read values.bin into memory instead of mapping it from the snapshot",
    )
    p.add_argument("--map-values", action="store_true", help="(the default now; ignored)")
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
        format=f"%(asctime)s %(levelname)s [node {args.id}] %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # The snapshot timeline comes from these INFO lines.
    for name in ("trioraft.runtime.snapshotter", "trioraft.runtime.fsm_actor"):
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        trio.run(main_async, args)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
