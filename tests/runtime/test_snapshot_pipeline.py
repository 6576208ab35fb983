"""The snapshot writer's background writes (a chunk is written in a worker thread while the
saver produces the next): overlap and its bound, byte-exact content whatever the write sizes,
failures of background writes, and cancellation mid-save (the snapshotter waits for the write
in flight before it removes the temporary directory). Real worker threads and a real snapshot
store in a temporary directory: no mock clock."""

from __future__ import annotations

import os
import random
import threading
from array import array
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from trioraft.core.types import ConfState
from trioraft.errors import NodeStopped, StorageFailed
from trioraft.runtime.disk import (
    INLINE_DISK,
    AdaptiveDisk,
    DiskExecutor,
    SerialThreadDisk,
    ThreadDisk,
    start_call,
)
from trioraft.runtime.items import Captured, ReleaseJob
from trioraft.runtime.snapshotter import SnapshotFailed, Snapshotter, SnapshotterConfig
from trioraft.statemachine import SnapshotWriter
from trioraft.storage.snapshots import SnapshotStore

CONF = ConfState(voters=frozenset({1}))


class GatedFile:
    """A fake store file whose writes run only as the test lets them (``gate``), and which
    records how many writes ran at once and which one may fail."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.data = bytearray()
        self.gate = threading.Semaphore(0)
        self.started = threading.Semaphore(0)
        self.writes = 0
        self.running = 0
        self.max_running = 0
        self.closed = False
        self.fail_at = fail_at
        self._mu = threading.Lock()

    def write(self, data: bytes | bytearray) -> None:
        with self._mu:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        self.started.release()
        try:
            assert self.gate.acquire(timeout=10), "the test never let the write run"
            self.writes += 1
            if self.writes == self.fail_at:
                raise StorageFailed(f"write {self.writes} failed (injected)")
            self.data += data
        finally:
            with self._mu:
                self.running -= 1

    def close(self) -> None:
        self.closed = True


class OneFileBuilder:
    def __init__(self, file: Any) -> None:
        self.file = file

    def open_file(self, name: str) -> Any:
        return self.file


def writer_for(builder: Any, disk: DiskExecutor, chunk: int) -> SnapshotWriter:
    return SnapshotWriter(builder, disk, index=5, term=1, conf=CONF, chunk_bytes=chunk)


async def wait_thread(sem: threading.Semaphore) -> None:
    """Wait (off the event loop) until a worker thread signals ``sem``."""
    assert await trio.to_thread.run_sync(sem.acquire, True, 10)


async def test_a_chunk_is_written_while_the_next_is_produced_one_at_a_time() -> None:
    raw = GatedFile()
    w = writer_for(OneFileBuilder(raw), ThreadDisk(), chunk=4)
    f = await w.create("data")
    await f.write(b"aaaa")  # handed over: returns while its write is still held
    await wait_thread(raw.started)
    assert raw.writes == 0 and raw.running == 1
    await f.write(b"bb")  # gathered, nothing to wait for
    async with trio.open_nursery() as nursery:
        second_returned = trio.Event()

        async def second() -> None:
            await f.write(b"cc")  # a full chunk: waits until the first write is done
            second_returned.set()

        nursery.start_soon(second)
        await trio.testing.wait_all_tasks_blocked()
        assert not second_returned.is_set()
        raw.gate.release()
        await second_returned.wait()
    await wait_thread(raw.started)
    raw.gate.release()
    await w.aclose_all()
    assert bytes(raw.data) == b"aaaabbcc"
    assert raw.closed
    assert raw.max_running == 1  # never two writes of one file at once


@pytest.mark.parametrize("last_chunk_fails", [False, True])
async def test_a_failed_background_write_is_raised_not_lost(last_chunk_fails: bool) -> None:
    raw = GatedFile(fail_at=1)
    w = writer_for(OneFileBuilder(raw), ThreadDisk(), chunk=4)
    f = await w.create("data")
    await f.write(b"1234")  # the write that fails, in the background
    raw.gate.release()
    if last_chunk_fails:
        # nothing else is written: closing raises it (and so does every later close)
        with pytest.raises(StorageFailed, match="injected"):
            await f.aclose()
    else:
        with pytest.raises(StorageFailed, match="injected"):
            await f.write(b"5678")
        with pytest.raises(StorageFailed, match="injected"):
            await f.write(b"9")
    with pytest.raises(StorageFailed, match="injected"):
        await w.aclose_all()
    assert not raw.closed  # a file that failed is not closed as if complete
    assert raw.running == 0


async def test_a_write_cancelled_while_waiting_for_the_previous_one_takes_nothing() -> None:
    raw = GatedFile()
    w = writer_for(OneFileBuilder(raw), ThreadDisk(), chunk=4)
    f = await w.create("data")
    await f.write(b"aaaa")
    await wait_thread(raw.started)
    with trio.move_on_after(0.01) as scope:
        await f.write(b"bbbb")  # waits for the held write: cancelled there
    assert scope.cancelled_caught
    assert f.size == 4
    await f.write(b"cc")  # gathered
    with trio.move_on_after(0.01) as scope:
        await f.write(b"dd")  # full chunk: waits, cancelled; the bytes stay gathered
    assert scope.cancelled_caught
    assert f.size == 8
    raw.gate.release()
    await f.write(b"eeee")  # gathered behind "ccdd": one write of both
    await wait_thread(raw.started)
    raw.gate.release()
    await w.aclose_all()
    assert raw.writes == 2
    assert bytes(raw.data) == b"aaaaccddeeee"
    assert raw.closed


async def test_sizes_count_bytes_for_wide_views_and_arrays() -> None:
    raw = GatedFile()
    for _ in range(4):
        raw.gate.release()
    w = writer_for(OneFileBuilder(raw), INLINE_DISK, chunk=1 << 20)
    numbers = array("I", [1, 2, 3])
    async with w.open("data") as f:
        await f.write(memoryview(numbers))
        await f.write(numbers)  # type: ignore[arg-type]  # any buffer works
        assert f.size == 24
    assert bytes(raw.data) == numbers.tobytes() * 2


def _pieces(rng: random.Random, total: int) -> list[bytes | bytearray | memoryview]:
    """Pieces of random sizes (empty ones, tiny ones, ones larger than several chunks) of the
    kinds savers hand over: bytes, bytearrays, views of either, views with a wider format."""
    out: list[bytes | bytearray | memoryview] = []
    left = total
    while left > 0:
        n = min(left, rng.choice([0, 1, 3, 100, 4095, 4096, 4097, 70_000, 300_000]))
        data = rng.randbytes(n)
        kind = rng.randrange(5)
        if kind == 0:
            out.append(data)
        elif kind == 1:
            out.append(bytearray(data))
        elif kind == 2:
            out.append(memoryview(data))
        elif kind == 3:
            out.append(memoryview(bytearray(data)))
        else:
            n -= n % 4
            out.append(memoryview(data[:n]).cast("I"))
        left -= n
    return out


def _as_bytes(piece: bytes | bytearray | memoryview) -> bytes:
    return piece.tobytes() if isinstance(piece, memoryview) else bytes(piece)


@pytest.mark.parametrize("chunk", [1, 7, 4096, 65536, 1 << 20])
async def test_content_is_byte_exact_whatever_the_chunk_and_write_sizes(
    tmp_path: Any, chunk: int
) -> None:
    seed = int(os.environ.get("TRIORAFT_SEED") or random.randrange(1 << 32))
    print(f"TRIORAFT_SEED={seed}")
    rng = random.Random(seed)
    store = SnapshotStore(str(tmp_path / "snap"))
    disk = ThreadDisk()
    builder = await disk(store.begin, 9, 2, CONF)
    w = writer_for(builder, disk, chunk)
    expected: dict[str, bytes] = {}
    for name, total in (("small", 10 if chunk > 1 else 3), ("big", 2_000_000)):
        if chunk == 1 and total > 100_000:
            total = 100_000  # a thread round trip per byte: keep it short
        pieces = _pieces(rng, total)
        sink = bytearray()
        async with w.open(name) as f:
            for piece in pieces:
                await f.write(piece)
                sink += _as_bytes(piece)
                # The caller may reuse its buffer once write returns: the snapshot must not
                # see the change.
                if isinstance(piece, bytearray) and piece:
                    piece[0] ^= 0xFF
                elif isinstance(piece, memoryview) and not piece.readonly and piece.nbytes:
                    piece.cast("B")[0] ^= 0xFF
        expected[name] = bytes(sink)
        assert f.size == len(sink)
    await w.aclose_all()
    stored = await disk(builder.commit, b"")
    reader = store.open_reader(stored.index)
    reader.verify()  # sizes and CRC32C recorded at commit match the files
    for name, content in expected.items():
        assert reader.read_chunk(name, 0, len(content) + 1) == content, f"seed={seed}"


async def test_inline_disk_writes_in_program_order() -> None:
    """With the inline executor (simulated file systems under the mock clock) every write and
    the close run before ``write``/``aclose`` return, in the program's order."""
    events: list[str] = []

    class LoggingFile:
        def write(self, data: bytes) -> None:
            events.append(f"write {bytes(data)!r}")

        def close(self) -> None:
            events.append("close")

    w = writer_for(OneFileBuilder(LoggingFile()), INLINE_DISK, chunk=2)
    async with w.open("a") as f:
        await f.write(b"xy")
        events.append("after write")
        await f.write(b"z")
    events.append("after close")
    assert events == ["write b'xy'", "after write", "write b'z'", "close", "after close"]


# -- through the snapshotter: cancellation and failures leave nothing behind --------------------


class GatedBuilder:
    """Wraps a real builder; the file named ``gated`` holds each write until the test lets it
    run, and records whether the temporary directory still existed when the write ended."""

    def __init__(self, builder: Any, gate: threading.Semaphore, started: threading.Semaphore):
        self._builder = builder
        self.gate = gate
        self.started = started
        self.dir_existed_after_write: list[bool] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._builder, name)

    def open_file(self, name: str) -> Any:
        real = self._builder.open_file(name)
        if name != "gated":
            return real
        outer = self

        class Gated:
            def write(self, data: bytes) -> None:
                outer.started.release()
                assert outer.gate.acquire(timeout=10)
                real.write(data)
                outer.dir_existed_after_write.append(os.path.isdir(outer._builder.path))

            def close(self) -> None:
                real.close()

        return Gated()


class GatedStore:
    def __init__(self, store: SnapshotStore) -> None:
        self.store = store
        self.gate = threading.Semaphore(0)
        self.started = threading.Semaphore(0)
        self.builders: list[GatedBuilder] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def begin(self, index: int, term: int, conf: ConfState) -> GatedBuilder:
        b = GatedBuilder(self.store.begin(index, term, conf), self.gate, self.started)
        self.builders.append(b)
        return b


def make_snapshotter(store: Any) -> Snapshotter:
    def channel() -> trio.MemorySendChannel[Any]:
        return trio.open_memory_channel[Any](10)[0]

    return Snapshotter(
        1,
        SnapshotterConfig(chunk_bytes=4096),
        store,
        ThreadDisk(),
        channel(),
        channel(),
        channel(),
        transport=None,  # type: ignore[arg-type]  # no streaming here
        applied_index=lambda: 0,
        last=None,
    )


def captured_with(saver: Callable[[SnapshotWriter], Any]) -> Captured:
    return Captured(index=3, term=1, conf=CONF, members={1: "a"}, saver=saver)


def tmp_dirs(store: SnapshotStore) -> list[str]:
    return os.listdir(os.path.join(store.directory, "tmp"))


async def test_cancelled_mid_save_waits_for_the_write_in_flight_then_removes_the_tmp_dir(
    tmp_path: Any,
) -> None:
    store = GatedStore(SnapshotStore(str(tmp_path / "snap")))
    snapshotter = make_snapshotter(store)
    produced = trio.Event()

    async def saver(writer: SnapshotWriter) -> None:
        async with writer.open("gated") as f:
            await f.write(b"x" * 4096)  # handed to a worker thread, held by the gate
            produced.set()
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:

        async def save() -> None:
            with pytest.raises(SnapshotFailed, match="cancelled"):
                await snapshotter._write("manual", captured_with(saver))

        nursery.start_soon(save)
        await produced.wait()
        await wait_thread(store.started)
        assert snapshotter.cancel_save()
        # The save is cancelled but the write is still running: nothing may be removed yet.
        await trio.testing.wait_all_tasks_blocked()
        assert len(tmp_dirs(store.store)) == 1
        store.gate.release()
    assert store.builders[0].dir_existed_after_write == [True]
    assert tmp_dirs(store.store) == []
    assert store.store.list() == []
    assert snapshotter.save_failures == 1


async def test_a_failed_background_write_fails_the_snapshot(tmp_path: Any) -> None:
    store = SnapshotStore(str(tmp_path / "snap"))
    snapshotter = make_snapshotter(store)
    failing = threading.Event()

    class FailingBuilder:
        def __init__(self, builder: Any) -> None:
            self.builder = builder

        def __getattr__(self, name: str) -> Any:
            return getattr(self.builder, name)

        def open_file(self, name: str) -> Any:
            real = self.builder.open_file(name)

            class Failing:
                def write(self, data: bytes) -> None:
                    if failing.is_set():
                        raise StorageFailed("disk full (injected)")
                    real.write(data)

                def close(self) -> None:
                    real.close()

            return Failing()

    class Store:
        def __getattr__(self, name: str) -> Any:
            return getattr(store, name)

        def begin(self, index: int, term: int, conf: ConfState) -> Any:
            return FailingBuilder(store.begin(index, term, conf))

    snapshotter._store = Store()

    async def saver(writer: SnapshotWriter) -> None:
        async with writer.open("data") as f:
            await f.write(b"a" * 4096)
            failing.set()
            await f.write(b"b" * 4096)  # fails in the background: raised by the close

    with pytest.raises(StorageFailed, match="injected"):
        await snapshotter._write("manual", captured_with(saver))
    assert tmp_dirs(store) == []
    assert store.list() == []


async def test_a_saved_snapshot_holds_every_byte(tmp_path: Any) -> None:
    store = SnapshotStore(str(tmp_path / "snap"))
    snapshotter = make_snapshotter(store)
    values = [os.urandom(1000) for _ in range(300)]
    widths = array("I", map(len, values))

    async def saver(writer: SnapshotWriter) -> None:
        async with writer.open("index") as f:
            await f.write(memoryview(widths))
        async with writer.open("values") as f:
            for i in range(0, len(values), 7):
                await f.write(b"".join(values[i : i + 7]))
        writer.user_meta = b"n=300"

    stored = await snapshotter._write("manual", captured_with(saver))
    reader = store.open_reader(stored.index)
    reader.verify()
    assert reader.read_chunk("values", 0, 1 << 20) == b"".join(values)
    assert reader.read_chunk("index", 0, 1 << 20) == widths.tobytes()
    assert stored.user_meta == b"n=300"
    assert tmp_dirs(store) == []


# -- the executors' start (the seam the writer uses) --------------------------------------------


async def test_thread_disk_start_returns_before_the_call_ends_and_holds_a_limiter_token() -> None:
    limiter = trio.CapacityLimiter(1)
    disk = ThreadDisk(limiter)
    gate = threading.Event()
    pending = start_call(disk, lambda: gate.wait(10) and threading.get_ident())
    assert pending is not None and not pending.done
    assert limiter.borrowed_tokens == 1
    assert start_call(disk, threading.get_ident) is None  # no token left: the caller awaits
    gate.set()
    assert await pending.wait() != threading.get_ident()
    assert limiter.borrowed_tokens == 0


@pytest.mark.parametrize("disk", [ThreadDisk(), SerialThreadDisk(), INLINE_DISK])
async def test_started_calls_raise_their_exception_on_every_wait(disk: DiskExecutor) -> None:
    def fail() -> None:
        raise OSError("no space (injected)")

    pending = start_call(disk, fail)
    assert pending is not None
    for _ in range(2):
        with pytest.raises(OSError, match="injected"):
            await pending.wait()


async def test_inline_disk_start_runs_the_call_at_once() -> None:
    ran: list[int] = []
    pending = start_call(INLINE_DISK, ran.append, 1)
    assert pending is not None and pending.done and ran == [1]
    await pending.wait()


async def test_executors_without_start_are_awaited_instead() -> None:
    assert start_call(AdaptiveDisk(), threading.get_ident) is None


class PlainFile:
    """A fake store file; its first ``fail_writes`` writes fail."""

    def __init__(self, fail_writes: int = 0) -> None:
        self.data = bytearray()
        self.closed = False
        self.fail_writes = fail_writes

    def write(self, data: bytes | bytearray) -> None:
        if self.fail_writes:
            self.fail_writes -= 1
            raise StorageFailed("write failed (injected)")
        self.data += data

    def close(self) -> None:
        self.closed = True


def take_only_token(limiter: trio.CapacityLimiter) -> object:
    """Hold the limiter's only token (as other disk work would): ThreadDisk.start gives up
    and the writer waits for the call instead."""
    holder = object()
    limiter.acquire_on_behalf_of_nowait(holder)
    return holder


async def test_a_write_cancelled_while_waiting_for_a_disk_thread_still_happens() -> None:
    raw = PlainFile()
    limiter = trio.CapacityLimiter(1)
    w = writer_for(OneFileBuilder(raw), ThreadDisk(limiter), 4)
    f = await w.create("data")
    await f.write(b"aa")
    holder = take_only_token(limiter)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(f.write, b"bb")  # a full chunk: taken, then waits for a thread

        async def cancel_then_release() -> None:
            await trio.testing.wait_all_tasks_blocked()  # the write waits for the token
            nursery.cancel_scope.cancel()
            limiter.release_on_behalf_of(holder)

        nursery.start_soon(cancel_then_release)
    assert nursery.cancel_scope.cancel_called
    await f.write(b"cccc")
    await w.aclose_all()
    assert bytes(raw.data) == b"aabbcccc" and f.size == 8 and raw.closed


@pytest.mark.parametrize("busy", [False, True])
async def test_a_failure_of_a_write_that_was_waited_for_is_raised_again(busy: bool) -> None:
    raw = PlainFile(fail_writes=1)
    limiter = trio.CapacityLimiter(1)
    # AdaptiveDisk cannot start calls in the background at all
    disk: DiskExecutor = ThreadDisk(limiter) if busy else AdaptiveDisk()
    w = writer_for(OneFileBuilder(raw), disk, 4)
    f = await w.create("data")
    await f.write(b"ab")
    async with trio.open_nursery() as nursery:
        if busy:
            holder = take_only_token(limiter)

            async def release_later() -> None:
                await trio.testing.wait_all_tasks_blocked()  # the close waits for the token
                limiter.release_on_behalf_of(holder)

            nursery.start_soon(release_later)
        with pytest.raises(StorageFailed):
            await f.aclose()
    with pytest.raises(StorageFailed):
        await w.aclose_all()  # never reported done: the snapshot must not be committed


async def test_a_restarted_snapshotter_applies_retention_left_over_from_before_the_stop(
    tmp_path: Any,
) -> None:
    # Retention runs in the round after a save; a node stopped before that round left three
    # snapshots where two are kept. The next start must delete the oldest and release the WAL.
    store = SnapshotStore(str(tmp_path / "snap"), retention=2)
    for index in (3, 6, 9):
        builder = store.begin(index, 1, CONF)
        with builder.open_file("data") as f:
            f.write(b"x")
        builder.commit()
    wal_send, wal_receive = trio.open_memory_channel[Any](10)
    snapshotter = Snapshotter(
        1,
        SnapshotterConfig(chunk_bytes=4096),
        store,
        ThreadDisk(),
        trio.open_memory_channel[Any](10)[0],
        wal_send,
        trio.open_memory_channel[Any](10)[0],
        transport=None,  # type: ignore[arg-type]  # no streaming here
        applied_index=lambda: 9,
        last=store.get(9),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(snapshotter.run)
        with trio.fail_after(10):  # real threads: a bound, not a stand-in for the event
            release = await wal_receive.receive()
        nursery.cancel_scope.cancel()
    assert isinstance(release, ReleaseJob)
    assert release.index == 6
    assert sorted(s.index for s in store.list()) == [6, 9]


async def test_a_save_overtaken_by_an_installed_snapshot_returns_the_installed_one(
    tmp_path: Any,
) -> None:
    # A follower's local save at 3 finishes after a snapshot at 10 from the leader recorded its
    # marker (its restore may still be running): the WAL refuses the older marker, and the
    # caller gets the installed snapshot, not an older one or the unmarked one just written.
    store = SnapshotStore(str(tmp_path / "snap"))
    fsm_send, fsm_recv = trio.open_memory_channel[Any](10)
    wal_send, wal_recv = trio.open_memory_channel[Any](10)
    snapshotter = Snapshotter(
        1,
        SnapshotterConfig(chunk_bytes=4096),
        store,
        ThreadDisk(),
        fsm_send,
        wal_send,
        trio.open_memory_channel[Any](10)[0],
        transport=None,  # type: ignore[arg-type]  # no streaming here
        applied_index=lambda: 3,
        last=None,
    )

    async def saver(writer: SnapshotWriter) -> None:
        await writer.write_file("state", b"local")

    async def fsm_and_wal() -> None:
        capture = await fsm_recv.receive()
        capture.future.set_result(captured_with(saver))
        marker = await wal_recv.receive()
        assert marker.meta.index == 3
        installed = store.begin(10, 2, CONF)
        installed.write_at("state", 0, b"from the leader")
        installed.commit()
        marker.done.set_result(10)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(fsm_and_wal)
        got = await snapshotter._take("manual")
    assert (got.index, got.term) == (10, 2)
    assert snapshotter.last_index == 0  # moves when the install's restore reports in


async def test_a_snapshot_requested_after_the_snapshotter_stopped_fails_at_once(
    tmp_path: Any,
) -> None:
    snapshotter = make_snapshotter(SnapshotStore(str(tmp_path / "snap")))
    async with trio.open_nursery() as nursery:
        await nursery.start(snapshotter.run)
        nursery.cancel_scope.cancel()
    with trio.fail_after(5), pytest.raises(NodeStopped):
        await snapshotter.snapshot()
