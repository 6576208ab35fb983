"""Snapshot streaming over the in-memory network, on MockClock: chunking, credit window, CRC32C,
resume after a broken connection, throttle, stall timeout, superseding, bounded memory."""

from __future__ import annotations

import functools
import os
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, TypeVarTuple, Unpack

import attrs
import pytest
import trio
import trio.testing
from transport_fakes import (
    CONF,
    Builder,
    FileInfo,
    Handler,
    Reader,
    Stored,
    make_snapshot,
    pattern,
    request_for,
)

from trioraft.runtime.disk import INLINE_DISK
from trioraft.runtime.transport.base import (
    SnapshotAborted,
    SnapshotRejected,
    SnapshotStalled,
    SnapshotTransferError,
)
from trioraft.runtime.transport.frames import (
    Frame,
    SnapshotAccept,
    SnapshotAck,
    SnapshotChunk,
    SnapshotDone,
    SnapshotError,
    SnapshotOffer,
)
from trioraft.runtime.transport.framing import FramedStream
from trioraft.runtime.transport.memory import MemoryNetwork, MemoryTransport
from trioraft.runtime.transport.streaming import (
    ReceiveOptions,
    SnapshotReceiver,
    StreamOptions,
    crc32c,
    send_snapshot,
)
from trioraft.runtime.transport.util import crc32c_combine

KiB = 1024
MiB = 1024 * 1024
T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class SlowDisk:
    """Runs calls inline after a simulated delay: ``write`` s per call that writes chunks (one
    ``write_at``, or a batch of them), ``commit`` s per commit (a slow fsync)."""

    def __init__(self, write: float = 0.0, commit: float = 0.0) -> None:
        self.delays = {"write_at": write, "_write_chunks": write, "commit": commit}
        self.calls: dict[str, int] = {}

    async def __call__(self, fn: Callable[[Unpack[Ts]], T], *args: *Ts) -> T:
        name = getattr(fn, "__name__", "")
        self.calls[name] = self.calls.get(name, 0) + 1
        await trio.sleep(self.delays.get(name, 0.0))
        return await INLINE_DISK(fn, *args)


async def start(
    nursery: trio.Nursery, net: MemoryNetwork, ids: tuple[int, ...] = (1, 2), **kw: Any
) -> tuple[list[MemoryTransport], list[Handler]]:
    kw.setdefault("disk", INLINE_DISK)
    recv_disk = kw.pop("recv_disk", kw["disk"])
    transports, handlers = [], []
    for i in ids:
        t = net.transport(i, **{**kw, "disk": kw["disk"] if i == ids[0] else recv_disk})
        h = Handler(i)
        await nursery.start(t.serve, h)
        transports.append(t)
        handlers.append(h)
    return transports, handlers


def assert_received(h: Handler, files: dict[str, bytes], stored: Stored) -> Builder:
    assert len(h.received) == 1
    got, req = h.received[0]
    assert (got.index, got.term) == (stored.index, stored.term)
    assert req == request_for(stored)
    b = next(b for b in h.builders if b.committed is not None)
    assert {n: b.bytes_of(n) for n in b.files} == files
    assert b.committed is not None and b.committed.user_meta == stored.user_meta
    return b


async def test_multi_file_snapshot_with_empty_and_odd_sized_files(
    autojump_clock: trio.testing.MockClock,
) -> None:
    files = {
        "state.bin": pattern(1_000_003),
        "empty": b"",
        "exact": pattern(4 * 64 * KiB, seed=1),
        "tiny": b"x",
        "empty2": b"",
    }
    stored, reader = make_snapshot(files)
    net = MemoryNetwork(seed=1)
    async with trio.open_nursery() as n:
        (t1, _t2), (_h1, h2) = await start(
            n, net, stream_options=StreamOptions(chunk_size=64 * KiB)
        )
        await t1.stream_snapshot(2, stored, reader, request_for(stored))
        n.cancel_scope.cancel()
    assert_received(h2, files, stored)
    st = t1.last_stream[2]
    assert st.connections == 1 and st.bytes_resent == 0
    assert st.total_bytes == sum(map(len, files.values()))
    assert t1.stats.snapshots_sent == 1 and t2_stats(h2) == 1


def t2_stats(h: Handler) -> int:
    return len(h.received)


async def test_snapshot_without_files(autojump_clock: trio.testing.MockClock) -> None:
    stored, reader = make_snapshot({})
    net = MemoryNetwork(seed=1)
    async with trio.open_nursery() as n:
        (t1, _), (_, h2) = await start(n, net)
        await t1.stream_snapshot(2, stored, reader, request_for(stored))
        n.cancel_scope.cancel()
    assert_received(h2, {}, stored)


@pytest.mark.parametrize(("send_window", "recv_window", "granted"), [(4, 8, 4), (16, 2, 2)])
async def test_memory_stays_bounded_by_the_window(
    autojump_clock: trio.testing.MockClock, send_window: int, recv_window: int, granted: int
) -> None:
    chunk = 64 * KiB
    files = {"big": pattern(8 * MiB), "more": pattern(3 * MiB + 5, seed=3)}
    stored, reader = make_snapshot(files)
    net = MemoryNetwork(seed=2)
    async with trio.open_nursery() as n:
        t1 = net.transport(
            1, disk=INLINE_DISK, stream_options=StreamOptions(chunk_size=chunk, window=send_window)
        )
        # A receiver whose disk is slower than the sender's: the window fills up.
        t2 = net.transport(
            2, disk=SlowDisk(write=0.001), receive_options=ReceiveOptions(max_window=recv_window)
        )
        h2 = Handler(2)
        await n.start(t1.serve, Handler(1))
        await n.start(t2.serve, h2)
        await t1.stream_snapshot(2, stored, reader, request_for(stored))
        n.cancel_scope.cancel()
    assert_received(h2, files, stored)
    st = t1.last_stream[2]
    # Unacknowledged chunk bytes never exceed the granted window ...
    assert st.max_inflight_bytes <= granted * chunk
    assert st.max_inflight_bytes == granted * chunk  # ... and the window is actually used
    # ... and neither do the bytes waiting on the receiver's side of the connection.
    assert net.stats.max_buffered_bytes <= granted * (chunk + 256)
    # The sender read each chunk once, chunk-sized.
    assert all(size <= chunk for _, _, size in reader.reads)


async def test_resume_after_a_broken_connection_continues_from_the_acked_offset(
    autojump_clock: trio.testing.MockClock,
) -> None:
    chunk, window = 32 * KiB, 4
    files = {"a": pattern(3 * MiB), "b": pattern(MiB + 17, seed=5)}
    stored, reader = make_snapshot(files)
    net = MemoryNetwork(seed=3)
    breaks = {"done": False}

    def break_midway(b: Builder) -> None:
        if len(b.writes) == 70 and not breaks["done"]:
            breaks["done"] = True
            assert net.break_connections(1, 2) == 1

    async with trio.open_nursery() as n:
        (t1, _), (_, h2) = await start(
            n,
            net,
            stream_options=StreamOptions(chunk_size=chunk, window=window),
            recv_disk=SlowDisk(write=0.001),  # keeps the window full when the break comes
        )
        h2.on_builder = lambda b: setattr(b, "on_write", break_midway)
        await t1.stream_snapshot(2, stored, reader, request_for(stored))
        n.cancel_scope.cancel()
    assert breaks["done"]
    b = assert_received(h2, files, stored)
    assert len(h2.builders) == 1  # the partial snapshot was kept and resumed, not restarted
    st = t1.last_stream[2]
    assert st.connections == 2
    assert st.resumed_from[0] == 0
    # The break came during the 70th write; the receiver keeps the rest of that write batch
    # (the window's chunks that had arrived) and resumes after it: exactly what it had written.
    assert 70 * chunk <= st.resumed_from[1] <= (70 + window) * chunk
    ends: dict[str, int] = {}
    for name, offset, size in b.writes:  # every write continues where the previous one ended
        assert offset == ends.get(name, 0)
        ends[name] = offset + size
    assert 0 < st.bytes_resent <= window * chunk
    # No byte was written twice into the builder.
    assert sum(size for _, _, size in b.writes) == st.total_bytes


async def test_resume_after_a_partition_heals(autojump_clock: trio.testing.MockClock) -> None:
    chunk = 64 * KiB
    files = {"a": pattern(4 * MiB)}
    stored, reader = make_snapshot(files)
    net = MemoryNetwork(seed=4)
    isolated_at: list[float] = []

    def isolate_once(b: Builder) -> None:
        if len(b.writes) == 20 and not isolated_at:
            isolated_at.append(trio.current_time())
            net.isolate(2)

    async with trio.open_nursery() as n:
        (t1, _), (_, h2) = await start(
            n, net, stream_options=StreamOptions(chunk_size=chunk, stall_timeout=30.0)
        )
        h2.on_builder = lambda b: setattr(b, "on_write", isolate_once)

        async def heal_later() -> None:
            while not isolated_at:
                await trio.sleep(0.01)
            await trio.sleep(10.0)
            net.heal()

        n.start_soon(heal_later)
        await t1.stream_snapshot(2, stored, reader, request_for(stored))
        elapsed = trio.current_time() - isolated_at[0]
        n.cancel_scope.cancel()
    assert_received(h2, files, stored)
    st = t1.last_stream[2]
    assert st.connections >= 2 and st.resumed_from[-1] == 20 * chunk
    assert 10.0 <= elapsed <= 10.0 + 2.5  # resumed within one max backoff after healing


async def test_throttle_makes_the_transfer_take_the_implied_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    chunk = 256 * KiB
    total = 4 * MiB
    files = {"a": pattern(total)}
    stored, reader = make_snapshot(files)
    net = MemoryNetwork(seed=5)
    async with trio.open_nursery() as n:
        (t1, _), (_, h2) = await start(
            n, net, stream_options=StreamOptions(chunk_size=chunk), snapshot_rate=1 * MiB
        )
        t0 = trio.current_time()
        await t1.stream_snapshot(2, stored, reader, request_for(stored))
        elapsed = trio.current_time() - t0
        n.cancel_scope.cancel()
    assert_received(h2, files, stored)
    # Bucket starts full with one chunk (the burst): the rest flows at exactly 1 MiB/s.
    assert elapsed == pytest.approx((total - chunk) / MiB, abs=0.01)


async def test_throttle_waits_do_not_count_as_a_stall(
    autojump_clock: trio.testing.MockClock,
) -> None:
    chunk = 256 * KiB
    files = {"a": pattern(MiB)}
    stored, reader = make_snapshot(files)
    net = MemoryNetwork(seed=6)
    async with trio.open_nursery() as n:
        # Each chunk waits 2 s for the throttle, four times the stall timeout.
        (t1, _), (_, h2) = await start(
            n,
            net,
            stream_options=StreamOptions(chunk_size=chunk, stall_timeout=0.5),
            snapshot_rate=128 * KiB,
        )
        t0 = trio.current_time()
        await t1.stream_snapshot(2, stored, reader, request_for(stored))
        elapsed = trio.current_time() - t0
        n.cancel_scope.cancel()
    assert_received(h2, files, stored)
    assert elapsed == pytest.approx(6.0, abs=0.01)


async def test_throttle_is_shared_by_streams_to_different_peers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    chunk = 128 * KiB
    files = {"a": pattern(MiB)}
    stored, reader = make_snapshot(files)
    net = MemoryNetwork(seed=7)
    async with trio.open_nursery() as n:
        (t1, _, _), (_, h2, h3) = await start(
            n,
            net,
            ids=(1, 2, 3),
            stream_options=StreamOptions(chunk_size=chunk),
            snapshot_rate=1 * MiB,
        )
        t0 = trio.current_time()
        async with trio.open_nursery() as streams:
            streams.start_soon(t1.stream_snapshot, 2, stored, reader, request_for(stored))
            streams.start_soon(
                t1.stream_snapshot, 3, stored, Reader(files), request_for(stored, dst=3)
            )
        elapsed = trio.current_time() - t0
        n.cancel_scope.cancel()
    assert len(h2.received) == len(h3.received) == 1
    assert elapsed == pytest.approx((2 * MiB - chunk) / MiB, abs=0.01)


async def test_stall_timeout_raises_and_the_receiver_drops_its_partial_copy(
    autojump_clock: trio.testing.MockClock,
) -> None:
    chunk = 64 * KiB
    files = {"a": pattern(2 * MiB)}
    stored, reader = make_snapshot(files)
    net = MemoryNetwork(seed=8)
    cut_at: list[float] = []

    def cut(b: Builder) -> None:
        if len(b.writes) == 5 and not cut_at:
            cut_at.append(trio.current_time())
            net.isolate(2)

    async with trio.open_nursery() as n:
        (t1, t2), (_, h2) = await start(
            n,
            net,
            stream_options=StreamOptions(chunk_size=chunk, stall_timeout=7.0),
            receive_options=ReceiveOptions(resume_timeout=20.0),
        )
        h2.on_builder = lambda b: setattr(b, "on_write", cut)
        with pytest.raises(SnapshotStalled, match=r"no progress for 7\.0s"):
            await t1.stream_snapshot(2, stored, reader, request_for(stored))
        stalled_after = trio.current_time() - cut_at[0]
        assert t1.stats.snapshots_failed == 1
        assert t2.receiver.pending() == {1: (10, 2, 5 * chunk)}
        assert not h2.builders[0].aborted
        await trio.sleep(20.0)  # the receiver gives up on the sender resuming
        assert h2.builders[0].aborted
        assert t2.receiver.pending() == {}
        n.cancel_scope.cancel()
    assert stalled_after == pytest.approx(7.0, abs=0.01)
    assert h2.received == []


async def test_stall_when_the_peer_is_down(autojump_clock: trio.testing.MockClock) -> None:
    stored, reader = make_snapshot({"a": b"abc"})
    net = MemoryNetwork(seed=9)
    async with trio.open_nursery() as n:
        (t1,), _ = await start(n, net, ids=(1,), stream_options=StreamOptions(stall_timeout=3.0))
        net.transport(2, disk=INLINE_DISK)  # exists but not serving
        t0 = trio.current_time()
        with pytest.raises(SnapshotStalled):
            await t1.stream_snapshot(2, stored, reader, request_for(stored))
        assert trio.current_time() - t0 == pytest.approx(3.0)
        n.cancel_scope.cancel()


async def test_a_newer_stream_supersedes_the_old_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    chunk = 64 * KiB
    old_files = {"a": pattern(2 * MiB)}
    new_files = {"a": pattern(MiB, seed=9), "b": b"new"}
    old, old_reader = make_snapshot(old_files, index=10, term=2)
    new, new_reader = make_snapshot(new_files, index=20, term=2)
    net = MemoryNetwork(seed=10)
    started = trio.Event()
    outcome: list[BaseException] = []

    async with trio.open_nursery() as n:
        (t1, t2), (_, h2) = await start(
            n, net, stream_options=StreamOptions(chunk_size=chunk), snapshot_rate=MiB
        )

        def on_builder(b: Builder) -> None:
            if b.index == 10:
                b.on_write = lambda b: started.set()

        h2.on_builder = on_builder

        async def old_stream() -> None:
            try:
                await t1.stream_snapshot(2, old, old_reader, request_for(old))
            except SnapshotAborted as exc:
                outcome.append(exc)

        n.start_soon(old_stream)
        await started.wait()
        await t1.stream_snapshot(2, new, new_reader, request_for(new))
        n.cancel_scope.cancel()
    assert len(outcome) == 1 and isinstance(outcome[0], SnapshotAborted)
    assert outcome[0].reason == "superseded"
    old_builder, new_builder = h2.builders
    assert old_builder.aborted and old_builder.committed is None
    assert new_builder.committed is not None
    assert [r.meta.index for _, r in h2.received] == [20]
    assert t2.receiver.pending() == {}


async def test_cancel_snapshot_and_remove_peer_abort_the_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stored, reader = make_snapshot({"a": pattern(MiB)})
    net = MemoryNetwork(seed=11)
    async with trio.open_nursery() as n:
        (t1, _), _ = await start(
            n, net, stream_options=StreamOptions(chunk_size=64 * KiB), snapshot_rate=64 * KiB
        )
        for how, reason in [("cancel", "cancelled"), ("remove", "peer-removed")]:
            results: list[BaseException] = []

            async def stream(results: list[BaseException] = results) -> None:
                try:
                    await t1.stream_snapshot(2, stored, reader, request_for(stored))
                except SnapshotAborted as exc:
                    results.append(exc)

            async with trio.open_nursery() as inner:
                inner.start_soon(stream)
                await trio.sleep(1.0)
                if how == "cancel":
                    assert t1.cancel_snapshot(2)
                else:
                    t1.remove_peer(2)
            assert isinstance(results[0], SnapshotAborted) and results[0].reason == reason
        assert not t1.cancel_snapshot(2)
        with pytest.raises(SnapshotTransferError, match="not a peer"):
            await t1.stream_snapshot(2, stored, reader, request_for(stored))
        n.cancel_scope.cancel()


async def test_caller_cancellation_is_plain_cancellation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stored, reader = make_snapshot({"a": pattern(MiB)})
    net = MemoryNetwork(seed=12)
    async with trio.open_nursery() as n:
        (t1, _), _ = await start(
            n, net, stream_options=StreamOptions(chunk_size=64 * KiB), snapshot_rate=64 * KiB
        )
        with trio.move_on_after(2.0) as scope:
            await t1.stream_snapshot(2, stored, reader, request_for(stored))
        assert scope.cancelled_caught
        n.cancel_scope.cancel()


async def test_completed_snapshot_is_not_sent_twice(autojump_clock: trio.testing.MockClock) -> None:
    files = {"a": pattern(300 * KiB)}
    stored, reader = make_snapshot(files)
    net = MemoryNetwork(seed=13)
    async with trio.open_nursery() as n:
        (t1, _), (_, h2) = await start(n, net, stream_options=StreamOptions(chunk_size=64 * KiB))
        await t1.stream_snapshot(2, stored, reader, request_for(stored))
        reads = len(reader.reads)
        # E.g. the sender missed the final acknowledgement and tries again.
        await t1.stream_snapshot(2, stored, reader, request_for(stored))
        assert len(reader.reads) == reads
        assert t1.last_stream[2].bytes_sent == 0
        assert len(h2.received) == 1
        # Same snapshot, newer request (say the leader's term moved on): no data is sent
        # again, but the new request is delivered, as the contract promises.
        newer = request_for(stored, term=stored.term + 1)
        await t1.stream_snapshot(2, stored, reader, newer)
        assert len(reader.reads) == reads
        n.cancel_scope.cancel()
    assert [r for _, r in h2.received] == [request_for(stored), newer]
    assert len(h2.builders) == 1


async def test_handler_refusal_is_a_rejection(autojump_clock: trio.testing.MockClock) -> None:
    stored, reader = make_snapshot({"a": b"abc"})
    net = MemoryNetwork(seed=14)
    async with trio.open_nursery() as n:
        (t1, _), (_, h2) = await start(n, net)
        h2.refuse_snapshots = True
        with pytest.raises(SnapshotRejected, match="not accepting"):
            await t1.stream_snapshot(2, stored, reader, request_for(stored))
        n.cancel_scope.cancel()


async def test_corrupt_file_is_detected_by_the_file_crc_and_aborted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    files = {"a": pattern(200 * KiB), "b": pattern(10 * KiB, seed=2)}
    stored, reader = make_snapshot(files)
    reader.corrupt_once.add(("b", 0))  # the disk returns bad bytes; chunk CRCs can't see it
    net = MemoryNetwork(seed=15)
    async with trio.open_nursery() as n:
        (t1, t2), (_, h2) = await start(n, net, stream_options=StreamOptions(chunk_size=64 * KiB))
        with pytest.raises(SnapshotRejected, match="corrupt"):
            await t1.stream_snapshot(2, stored, reader, request_for(stored))
        assert h2.builders[0].aborted and h2.received == []
        assert t2.receiver.pending() == {}
        # The next attempt starts from scratch and succeeds.
        await t1.stream_snapshot(2, stored, reader, request_for(stored))
        n.cancel_scope.cancel()
    assert len(h2.received) == 1


async def test_receiver_storage_failure_is_a_rejection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stored, reader = make_snapshot({"a": pattern(100 * KiB)})
    net = MemoryNetwork(seed=16)
    async with trio.open_nursery() as n:
        (t1, _), (_, h2) = await start(n, net, stream_options=StreamOptions(chunk_size=32 * KiB))
        h2.on_builder = lambda b: setattr(b, "fail_writes", True)
        with pytest.raises(SnapshotRejected, match="storage"):
            await t1.stream_snapshot(2, stored, reader, request_for(stored))
        assert h2.builders[0].aborted
        n.cancel_scope.cancel()


@pytest.mark.parametrize("name", ["../escape", "a/b", "", ".."])
async def test_unsafe_file_names_are_refused(
    autojump_clock: trio.testing.MockClock, name: str
) -> None:
    stored, reader = make_snapshot({name: b"x"})
    net = MemoryNetwork(seed=17)
    async with trio.open_nursery() as n:
        (t1, _), (_, h2) = await start(n, net)
        with pytest.raises(SnapshotRejected, match="protocol"):
            await t1.stream_snapshot(2, stored, reader, request_for(stored))
        assert h2.builders == []
        n.cancel_scope.cancel()


class CorruptingStream(FramedStream):
    """Flips a bit in the data of chosen outgoing chunks after their CRC was computed."""

    def __init__(self, inner: FramedStream, should_corrupt: Callable[[SnapshotChunk], bool]):
        super().__init__(inner.stream, max_frame_size=inner.max_frame_size)
        self._should = should_corrupt

    async def send(self, frame: Frame) -> None:
        if isinstance(frame, SnapshotChunk) and self._should(frame):
            bad = bytes([frame.data[0] ^ 1]) + frame.data[1:]
            frame = attrs.evolve(frame, data=bad)
        await super().send(frame)

    async def send_chunk(self, file_index: int, offset: int, crc32c: int, data: bytes) -> None:
        frame = SnapshotChunk(file_index=file_index, offset=offset, data=data, crc32c=crc32c)
        if self._should(frame):
            data = bytes([data[0] ^ 1]) + data[1:]
        await super().send_chunk(file_index, offset, crc32c, data)


async def test_chunk_crc_mismatch_is_detected_and_the_stream_resumes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    chunk = 16 * KiB
    files = {"a": pattern(256 * KiB)}
    stored, reader = make_snapshot(files)
    net = MemoryNetwork(seed=18)
    corrupted: list[int] = []

    def once(c: SnapshotChunk) -> bool:
        if c.offset == 5 * chunk and not corrupted:
            corrupted.append(c.offset)
            return True
        return False

    async with trio.open_nursery() as n:
        (_t1, t2), (_, h2) = await start(n, net)

        async def connect() -> FramedStream:
            return CorruptingStream(await net._connect(1, 2, "snapshot"), once)

        st = await send_snapshot(
            connect,
            stored,
            reader,
            request_for(stored),
            disk=INLINE_DISK,
            options=StreamOptions(chunk_size=chunk),
            peer=2,
        )
        n.cancel_scope.cancel()
    assert corrupted == [5 * chunk]
    assert st.crc_errors == 1 and t2.stats.snapshot_crc_errors == 1
    assert st.connections == 2 and st.resumed_from == [0, 5 * chunk]
    b = assert_received(h2, files, stored)
    assert (("a", 5 * chunk, chunk)) in b.writes
    assert sum(size for _, _, size in b.writes) == len(files["a"])  # the bad chunk never landed


async def test_persistent_chunk_corruption_gives_up(autojump_clock: trio.testing.MockClock) -> None:
    stored, reader = make_snapshot({"a": pattern(64 * KiB)})
    net = MemoryNetwork(seed=19)
    async with trio.open_nursery() as n:
        (_, t2), (_, h2) = await start(n, net)

        async def connect() -> FramedStream:
            return CorruptingStream(await net._connect(1, 2, "snapshot"), lambda c: True)

        with pytest.raises(SnapshotTransferError, match="CRC failures"):
            await send_snapshot(
                connect,
                stored,
                reader,
                request_for(stored),
                disk=INLINE_DISK,
                options=StreamOptions(chunk_size=16 * KiB, max_crc_errors=3),
            )
        assert t2.stats.snapshot_crc_errors == 4
        assert h2.builders[0].writes == []
        n.cancel_scope.cancel()


async def test_receiver_protocol_step_by_step(autojump_clock: trio.testing.MockClock) -> None:
    """Drives a SnapshotReceiver by hand: a bad chunk CRC is refused and nothing is written;
    a reconnect resumes at the last written position; out-of-place chunks end the connection."""
    data = pattern(10_000)
    stored, _ = make_snapshot({"f": data})
    handler = Handler(2)
    receiver = SnapshotReceiver(2, disk=INLINE_DISK)
    offer = SnapshotOffer(
        index=stored.index,
        term=stored.term,
        conf=stored.conf,
        user_meta=b"um",
        files=tuple(
            __import__("trioraft.runtime.transport.frames", fromlist=["FileDesc"]).FileDesc(
                name=f.name, size=f.size, crc32c=f.crc32c
            )
            for f in stored.files
        ),
        request=request_for(stored),
        chunk_size=4096,
        window=2,
    )

    async def session(script: Callable[[FramedStream], Awaitable[None]]) -> None:
        a, b = trio.testing.memory_stream_pair()
        client, server = FramedStream(a), FramedStream(b)

        async def serve() -> None:
            try:
                await receiver.handle(server, 1, handler)
            except Exception as exc:  # what the transport would log
                errors.append(exc)
            finally:
                await server.aclose()

        async with trio.open_nursery() as n:
            n.start_soon(serve)
            await script(client)
            await client.aclose()

    errors: list[Exception] = []

    def chunk(off: int, n: int, crc: int | None = None) -> SnapshotChunk:
        piece = data[off : off + n]
        return SnapshotChunk(
            file_index=0, offset=off, data=piece, crc32c=crc32c(piece) if crc is None else crc
        )

    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.run)

        async def first(c: FramedStream) -> None:
            await c.send(offer)
            assert await c.receive() == SnapshotAccept(file_index=0, offset=0, window=2)
            await c.send(chunk(0, 4096))
            assert await c.receive() == SnapshotAck(file_index=0, offset=4096)
            await c.send(chunk(4096, 4096, crc=12345))
            reply = await c.receive()
            assert isinstance(reply, SnapshotError) and reply.reason == "crc" and reply.retry

        await session(first)
        assert handler.builders[0].writes == [("f", 0, 4096)]

        async def second(c: FramedStream) -> None:
            await c.send(offer)
            assert await c.receive() == SnapshotAccept(file_index=0, offset=4096, window=2)
            await c.send(chunk(0, 4096))  # not where the receiver is: protocol error

        await session(second)
        assert len(errors) == 1 and "does not fit" in str(errors[0])

        async def third(c: FramedStream) -> None:
            await c.send(offer)
            assert await c.receive() == SnapshotAccept(file_index=0, offset=4096, window=2)
            await c.send(chunk(4096, 4096))
            await c.send(chunk(8192, 10_000 - 8192))
            assert await c.receive() == SnapshotAck(file_index=0, offset=8192)
            assert await c.receive() == SnapshotAck(file_index=0, offset=10_000)
            assert await c.receive() == SnapshotDone()

        await session(third)
        assert len(handler.builders) == 1
        assert handler.builders[0].bytes_of("f") == data
        assert handler.received[0][1] == offer.request
        assert receiver.stats.snapshot_crc_errors == 1
        nursery.cancel_scope.cancel()


async def test_keepalives_cover_a_slow_commit(autojump_clock: trio.testing.MockClock) -> None:
    stored, reader = make_snapshot({"a": pattern(100 * KiB)})
    net = MemoryNetwork(seed=20)
    async with trio.open_nursery() as n:
        t1 = net.transport(1, disk=INLINE_DISK, stream_options=StreamOptions(stall_timeout=3.0))
        t2 = net.transport(
            2, disk=SlowDisk(commit=10.0), receive_options=ReceiveOptions(keepalive_interval=1.0)
        )
        h2 = Handler(2)
        await n.start(t1.serve, Handler(1))
        await n.start(t2.serve, h2)
        t0 = trio.current_time()
        await t1.stream_snapshot(2, stored, reader, request_for(stored))
        assert trio.current_time() - t0 == pytest.approx(10.0)
        n.cancel_scope.cancel()
    assert len(h2.received) == 1


async def test_receiver_shutdown_aborts_partial_snapshots(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stored, reader = make_snapshot({"a": pattern(MiB)})
    net = MemoryNetwork(seed=21)
    async with trio.open_nursery() as n:
        t1 = net.transport(
            1,
            disk=INLINE_DISK,
            stream_options=StreamOptions(chunk_size=64 * KiB, stall_timeout=5.0),
            snapshot_rate=128 * KiB,
        )
        t2 = net.transport(2, disk=INLINE_DISK)
        h2 = Handler(2)
        await n.start(t1.serve, Handler(1))
        receiver_scope = trio.CancelScope()
        await n.start(_serve_in, t2, h2, receiver_scope)
        results: list[BaseException] = []

        async def stream() -> None:
            try:
                await t1.stream_snapshot(2, stored, reader, request_for(stored))
            except SnapshotStalled as exc:
                results.append(exc)

        async with trio.open_nursery() as inner:
            inner.start_soon(stream)
            await trio.sleep(2.0)
            receiver_scope.cancel()  # node 2 stops mid-transfer
            await trio.sleep(0.1)
            assert h2.builders[0].aborted  # at once, not after the resume timeout
        assert len(results) == 1
        n.cancel_scope.cancel()
    assert h2.builders[0].aborted


async def _serve_in(
    t: MemoryTransport,
    h: Handler,
    scope: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    with scope:
        await t.serve(h, task_status=task_status)


# ----------------------------------------------------------------------------------------------
# Bounded memory, measured: Python's peak allocation during a transfer does not grow with the
# snapshot's size (the data is generated on the sender and discarded on the receiver, so the
# only large buffers are the transport's own).

_BLOCK = bytes(range(256)) * 4096  # 1 MiB


class _GeneratedReader:
    def read_chunk(self, name: str, offset: int, size: int) -> bytes:
        return _BLOCK[:size]


class _CountingBuilder:
    def __init__(self) -> None:
        self.bytes = 0

    def write_at(
        self, name: str, offset: int, data: bytes | memoryview, prefix_crc: int | None = None
    ) -> None:
        self.bytes += len(data)

    def commit(self, user_meta: bytes = b"") -> Stored:
        return Stored(0, 0, CONF, ())

    def abort(self) -> None:
        pass


class _CountingHandler(Handler):
    async def begin_snapshot_receive(  # type: ignore[override]
        self, src: int, index: int, term: int, conf: Any, user_meta: bytes
    ) -> _CountingBuilder:
        await trio.lowlevel.checkpoint()
        self.counting = _CountingBuilder()
        return self.counting


async def _peak_while_streaming(total_mib: int) -> tuple[int, int]:
    crc = 0
    for _ in range(total_mib):
        crc = crc32c(_BLOCK, crc)
    stored = Stored(10, 2, CONF, (FileInfo("big", total_mib * MiB, crc),))
    net = MemoryNetwork(seed=1)
    async with trio.open_nursery() as n:
        t1 = net.transport(
            1, disk=INLINE_DISK, stream_options=StreamOptions(chunk_size=MiB, window=4)
        )
        t2 = net.transport(2, disk=INLINE_DISK)
        h2 = _CountingHandler(2)
        await n.start(t1.serve, Handler(1))
        await n.start(t2.serve, h2)
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            await t1.stream_snapshot(2, stored, _GeneratedReader(), request_for(stored))
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
        n.cancel_scope.cancel()
    assert h2.counting.bytes == total_mib * MiB and len(h2.received) == 1
    return peak, net.stats.max_buffered_bytes


async def test_peak_memory_does_not_grow_with_the_snapshot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    small, _ = await _peak_while_streaming(12)
    large, buffered = await _peak_while_streaming(48)
    assert buffered <= 4 * (MiB + 256)
    assert large <= 12 * MiB  # a few copies of the 4 x 1 MiB window, whatever the size
    assert large <= small + MiB


@pytest.mark.slow
async def test_256_mib_snapshot_streams_in_bounded_memory(
    autojump_clock: trio.testing.MockClock,
) -> None:
    peak, buffered = await _peak_while_streaming(256)
    assert buffered <= 4 * (MiB + 256)
    assert peak <= 12 * MiB


async def test_chunks_larger_than_the_default_frame_limit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    chunk = 20 * MiB  # a valid configuration (up to 64 MiB), above the 16 MiB frame default
    files = {"a": pattern(chunk + 5)}
    stored, reader = make_snapshot(files)
    net = MemoryNetwork(seed=30)
    async with trio.open_nursery() as n:
        (t1, _), (_, h2) = await start(n, net, stream_options=StreamOptions(chunk_size=chunk))
        await t1.stream_snapshot(2, stored, reader, request_for(stored))
        n.cancel_scope.cancel()
    assert_received(h2, files, stored)
    assert t1.last_stream[2].chunks_sent == 2


async def test_a_chunk_size_the_receiver_cannot_take_is_a_clear_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stored, reader = make_snapshot({"a": pattern(100 * KiB)})
    net = MemoryNetwork(seed=31)
    async with trio.open_nursery() as n:
        t1 = net.transport(1, disk=INLINE_DISK, stream_options=StreamOptions(chunk_size=20 * MiB))
        t2 = net.transport(2, disk=INLINE_DISK)  # default frame limit: 16 MiB
        await n.start(t1.serve, Handler(1))
        await n.start(t2.serve, Handler(2))
        with pytest.raises(SnapshotTransferError, match="frame limit"):
            await t1.stream_snapshot(2, stored, reader, request_for(stored))
        n.cancel_scope.cancel()


async def test_receiving_overlaps_writing_and_writes_are_batched(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """While the receiver's disk is busy with one write, the next chunks are received and
    queued, then written together in one disk call (a receiver that read, wrote and
    acknowledged strictly one chunk at a time needs one slow disk call per chunk)."""
    chunk, window, count = 16 * KiB, 8, 32
    files = {"a": pattern(count * chunk), "empty": b"", "b": pattern(chunk + 3, seed=4)}
    stored, reader = make_snapshot(files)
    net = MemoryNetwork(seed=31)
    disk = SlowDisk(write=1.0)
    async with trio.open_nursery() as n:
        (t1, _), (_, h2) = await start(
            n, net, stream_options=StreamOptions(chunk_size=chunk, window=window), recv_disk=disk
        )
        t0 = trio.current_time()
        await t1.stream_snapshot(2, stored, reader, request_for(stored))
        elapsed = trio.current_time() - t0
        n.cancel_scope.cancel()
    b = assert_received(h2, files, stored)
    assert sum(size for _, _, size in b.writes) == sum(len(d) for d in files.values())
    # count + 2 chunks (one is an empty file). Acknowledged once written, the window is split
    # between the chunks being written and those arriving meanwhile: half a window per call.
    assert disk.calls["_write_chunks"] <= (count + 2) // (window // 2) + 2
    assert elapsed < (count + 2) / 2


def test_crc32c_combine_matches_the_crc_of_the_concatenation() -> None:
    import random

    seed = int(os.environ.get("TRIORAFT_SEED") or random.randrange(1 << 30))
    print(f"TRIORAFT_SEED={seed}")
    rng = random.Random(seed)
    for _ in range(200):
        a = rng.randbytes(rng.choice([0, 1, 3, 4096, rng.randrange(70_000)]))
        b = rng.randbytes(rng.choice([0, 1, 5, 64 * KiB, rng.randrange(70_000)]))
        assert crc32c_combine(crc32c(a), crc32c(b), len(b)) == crc32c(a + b)
    assert crc32c_combine(crc32c(b"abc"), crc32c(b""), 0) == crc32c(b"abc")


async def test_a_chunk_that_matches_its_own_crc_but_not_the_file_crc_is_caught(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The file's CRC is built from the chunk CRCs; a chunk whose bytes *and* CRC were changed
    consistently in flight (or by the sender's disk) must still fail the file check."""
    files = {"a": pattern(100 * KiB), "b": pattern(40 * KiB, seed=9)}
    stored, reader = make_snapshot(files)
    net = MemoryNetwork(seed=32)

    class Rewriting(FramedStream):
        async def send(self, frame: Frame) -> None:
            if isinstance(frame, SnapshotChunk) and frame.file_index == 1 and frame.offset == 0:
                bad = bytes([frame.data[0] ^ 0x40]) + frame.data[1:]
                frame = attrs.evolve(frame, data=bad, crc32c=crc32c(bad))
            await super().send(frame)

        async def send_chunk(self, file_index: int, offset: int, crc: int, data: bytes) -> None:
            if file_index == 1 and offset == 0:
                data = bytes([data[0] ^ 0x40]) + data[1:]
                crc = crc32c(data)
            await super().send_chunk(file_index, offset, crc, data)

    async with trio.open_nursery() as n:
        (_t1, t2), (_, h2) = await start(n, net)

        async def connect() -> FramedStream:
            inner = await net._connect(1, 2, "snapshot")
            return Rewriting(inner.stream, max_frame_size=inner.max_frame_size)

        with pytest.raises(SnapshotRejected, match="corrupt"):
            await send_snapshot(
                connect,
                stored,
                reader,
                request_for(stored),
                disk=INLINE_DISK,
                options=StreamOptions(chunk_size=16 * KiB),
                peer=2,
            )
        assert h2.builders[0].aborted and h2.received == []
        assert t2.stats.snapshot_crc_errors == 0  # every chunk matched its own CRC
        n.cancel_scope.cancel()


async def test_the_sender_reads_one_chunk_ahead_of_its_credits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With the window full, the sender has read (and checksummed) exactly one more chunk, so
    an acknowledgement is answered with a send, not a disk read; never more than one."""
    chunk, window = 4 * KiB, 2
    data = pattern(10 * chunk)
    stored, reader = make_snapshot({"f": data})
    a, b = trio.testing.memory_stream_pair()
    client, server = FramedStream(a), FramedStream(b)

    async def connect() -> FramedStream:
        return client

    async with trio.open_nursery() as n:
        n.start_soon(
            functools.partial(
                send_snapshot,
                connect,
                stored,
                reader,
                request_for(stored),
                disk=INLINE_DISK,
                options=StreamOptions(chunk_size=chunk, window=window, stall_timeout=1000),
            )
        )
        assert isinstance(await server.receive(), SnapshotOffer)
        await server.send(SnapshotAccept(file_index=0, offset=0, window=window))
        got = [await server.receive() for _ in range(window)]
        await trio.sleep(1)  # the sender waits for a credit
        assert [r[1] for r in reader.reads] == [i * chunk for i in range(window + 1)]
        first = got[0]
        assert isinstance(first, SnapshotChunk) and first.crc32c == crc32c(first.data)
        await server.send(SnapshotAck(file_index=0, offset=chunk))
        nxt = await server.receive()
        assert isinstance(nxt, SnapshotChunk) and nxt.offset == window * chunk
        assert nxt.data == data[nxt.offset : nxt.offset + chunk]
        assert nxt.crc32c == crc32c(nxt.data)
        await trio.sleep(1)
        assert len(reader.reads) == window + 2
        n.cancel_scope.cancel()


async def test_chunks_in_the_converters_layout_are_still_received(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A sender that encodes chunks with the generic converter (key order file_index, offset,
    data, crc32c: e.g. an older version) streams byte-exact too, through the receiver's
    generic decoding path (odd chunk size, several files, one empty)."""
    files = {"a": pattern(100 * KiB + 7), "e": b"", "b": pattern(33 * KiB, seed=4)}
    stored, reader = make_snapshot(files)
    net = MemoryNetwork(seed=41)
    sent: list[int] = []

    class GenericChunks(FramedStream):
        async def send_chunk(self, file_index: int, offset: int, crc: int, data: bytes) -> None:
            sent.append(len(data))
            await self.send(
                SnapshotChunk(file_index=file_index, offset=offset, data=data, crc32c=crc)
            )

    async with trio.open_nursery() as n:
        (_t1, _t2), (_, h2) = await start(n, net)

        async def connect() -> FramedStream:
            inner = await net._connect(1, 2, "snapshot")
            return GenericChunks(inner.stream, max_frame_size=inner.max_frame_size)

        await send_snapshot(
            connect,
            stored,
            reader,
            request_for(stored),
            disk=INLINE_DISK,
            options=StreamOptions(chunk_size=10 * KiB + 3),
            peer=2,
        )
        n.cancel_scope.cancel()
    assert sum(sent) == sum(map(len, files.values())) and len(sent) > 10
    assert_received(h2, files, stored)


async def test_many_small_files_cost_the_receiver_their_size_not_a_chunk_each(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Each small payload is read into a buffer of its own size: 200 files of 1 KiB with 1 MiB
    chunks must not make the receiver allocate a chunk-sized buffer per file."""
    files = {f"f{i:03d}": pattern(KiB, seed=i) for i in range(200)}
    stored, reader = make_snapshot(files)
    net = MemoryNetwork(seed=43)
    async with trio.open_nursery() as n:
        (_t1, _t2), (_, h2) = await start(n, net)

        async def connect() -> FramedStream:
            return await net._connect(1, 2, "snapshot")

        tracemalloc.start()
        try:
            await send_snapshot(
                connect,
                stored,
                reader,
                request_for(stored),
                disk=INLINE_DISK,
                options=StreamOptions(chunk_size=MiB, window=16),
                peer=2,
            )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        n.cancel_scope.cancel()
    assert_received(h2, files, stored)
    assert peak < MiB, f"peak {peak} bytes while receiving 200 KiB of files"
