"""Snapshot streaming between two real :class:`SnapshotStore` s: on the simulated file system
over the in-memory network (MockClock), and on disk over TCP with worker threads."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import trio
import trio.testing
from transport_fakes import CONF, Handler, pattern

from trioraft.core.messages import SnapshotRequest
from trioraft.core.types import ConfState
from trioraft.runtime.disk import INLINE_DISK
from trioraft.runtime.transport.base import (
    InboundHandler,
    SnapshotBuilderLike,
    SnapshotReaderLike,
    SnapshotRejected,
    StoredSnapshotLike,
)
from trioraft.runtime.transport.memory import MemoryNetwork
from trioraft.runtime.transport.streaming import StreamOptions
from trioraft.runtime.transport.tcp import TcpTransport
from trioraft.storage.fs import FileSystem, SimulatedFileSystem
from trioraft.storage.snapshots import (
    SnapshotBuilder,
    SnapshotStore,
    StoredSnapshot,
)

KiB = 1024
MiB = 1024 * 1024


class StoreHandler(Handler):
    """A handler receiving into a real snapshot store."""

    def __init__(self, node_id: int, store: SnapshotStore) -> None:
        super().__init__(node_id)
        self.store = store
        self.real_builders: list[SnapshotBuilder] = []
        #: called after each write_at with (name, end offset)
        self.after_write: Callable[[str, int], None] | None = None

    async def begin_snapshot_receive(  # type: ignore[override]
        self, src: int, index: int, term: int, conf: ConfState, user_meta: bytes
    ) -> SnapshotBuilder:
        await trio.lowlevel.checkpoint()
        b = self.store.begin(index, term, conf)
        self.real_builders.append(b)
        write_at = b.write_at

        def spy(
            name: str, offset: int, data: bytes | memoryview, prefix_crc: int | None = None
        ) -> None:
            write_at(name, offset, data, prefix_crc)
            if self.after_write is not None:
                self.after_write(name, offset + len(data))

        b.write_at = spy  # type: ignore[method-assign]
        return b

    def snapshot_received(self, stored: StoredSnapshot, request: SnapshotRequest) -> None:  # type: ignore[override]
        self.received.append((stored, request))  # type: ignore[arg-type]


def make_stored(store: SnapshotStore, files: dict[str, bytes], index: int = 50) -> StoredSnapshot:
    b = store.begin(index, 3, CONF)
    for name, data in files.items():
        with b.open_file(name) as w:
            for i in range(0, len(data), 100_000):
                w.write(data[i : i + 100_000])
    return b.commit(b"user-meta")


def check_copy(src: SnapshotStore, dst: SnapshotStore, index: int) -> None:
    a, b = src.get(index), dst.get(index)
    assert a is not None and b is not None
    assert (a.index, a.term, a.conf, a.files, a.user_meta) == (
        b.index,
        b.term,
        b.conf,
        b.files,
        b.user_meta,
    )
    dst.open_reader(index).verify()


def test_real_store_types_fit_the_transport_protocols(tmp_path: str) -> None:
    store = SnapshotStore(str(tmp_path))
    stored = make_stored(store, {"a": b"x"})
    s: StoredSnapshotLike = stored
    r: SnapshotReaderLike = store.open_reader(stored.index)
    b: SnapshotBuilderLike[StoredSnapshot] = store.begin(60, 3, CONF)
    h: InboundHandler[StoredSnapshot] = StoreHandler(1, store)
    assert s and r and b and h
    b.abort()


@pytest.mark.parametrize("interrupt", [False, True])
async def test_stream_between_simulated_stores(
    autojump_clock: trio.testing.MockClock, interrupt: bool
) -> None:
    fs1, fs2 = SimulatedFileSystem(), SimulatedFileSystem()
    _mk(fs1, "/n1")
    _mk(fs2, "/n2")
    leader = SnapshotStore("/n1/snap", fs=fs1)
    follower = SnapshotStore("/n2/snap", fs=fs2)
    files = {"state": pattern(2 * MiB + 7), "empty": b"", "idx": pattern(5000, seed=3)}
    stored = make_stored(leader, files)
    net = MemoryNetwork(seed=1)
    h2 = StoreHandler(2, follower)
    async with trio.open_nursery() as n:
        opts = StreamOptions(chunk_size=64 * KiB)
        t1 = net.transport(1, disk=INLINE_DISK, stream_options=opts)
        t2 = net.transport(2, disk=INLINE_DISK)
        await n.start(t1.serve, Handler(1))
        await n.start(t2.serve, h2)
        if interrupt:

            def cut(name: str, end: int) -> None:
                if name == "state" and end == MiB:
                    assert net.break_connections(1, 2) == 1

            h2.after_write = cut
        with leader.pin(stored.index):
            request = SnapshotRequest(src=1, dst=2, term=3, meta=stored.raft_meta)
            await t1.stream_snapshot(2, stored, leader.open_reader(stored.index), request)
        n.cancel_scope.cancel()
    check_copy(leader, follower, stored.index)
    assert len(h2.real_builders) == 1
    got, req = h2.received[0]
    assert isinstance(got, StoredSnapshot) and req == request
    st = t1.last_stream[2]
    assert st.connections == (2 if interrupt else 1)
    # Nothing was left behind in the follower's temp area.
    assert [s.index for s in follower.list()] == [stored.index]


async def test_storage_refusal_is_a_rejection(autojump_clock: trio.testing.MockClock) -> None:
    fs1, fs2 = SimulatedFileSystem(), SimulatedFileSystem()
    _mk(fs1, "/n1")
    _mk(fs2, "/n2")
    leader = SnapshotStore("/n1/snap", fs=fs1)
    follower = SnapshotStore("/n2/snap", fs=fs2)
    stored = make_stored(leader, {"a": b"abc"})
    # The follower's store refuses this name (reserved); the sender hears why.
    stored = StoredSnapshot(
        stored.index,
        stored.term,
        stored.conf,
        (type(stored.files[0])("meta.cbor", 3, stored.files[0].crc32c),),
        stored.user_meta,
        stored.path,
    )

    class Renamed:
        def read_chunk(self, name: str, offset: int, size: int) -> bytes:
            return b"abc"[offset : offset + size]

    net = MemoryNetwork(seed=2)
    h2 = StoreHandler(2, follower)
    async with trio.open_nursery() as n:
        t1 = net.transport(1, disk=INLINE_DISK)
        t2 = net.transport(2, disk=INLINE_DISK)
        await n.start(t1.serve, Handler(1))
        await n.start(t2.serve, h2)
        request = SnapshotRequest(src=1, dst=2, term=3, meta=stored.raft_meta)
        with pytest.raises(SnapshotRejected, match="storage"):
            await t1.stream_snapshot(2, stored, Renamed(), request)
        n.cancel_scope.cancel()
    assert follower.list() == []


async def test_stream_between_disk_stores_over_tcp(tmp_path: str) -> None:
    leader = SnapshotStore(os.path.join(tmp_path, "n1"))
    follower = SnapshotStore(os.path.join(tmp_path, "n2"))
    files = {"state": pattern(6 * MiB + 1), "empty": b""}
    stored = make_stored(leader, files)
    h2 = StoreHandler(2, follower)
    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            t1 = TcpTransport(1, "c", stream_options=StreamOptions(chunk_size=MiB))
            t2 = TcpTransport(2, "c")
            await n.start(t1.serve, Handler(1))
            await n.start(t2.serve, h2)
            t1.add_peer(2, t2.address)
            t2.add_peer(1, t1.address)
            request = SnapshotRequest(src=1, dst=2, term=3, meta=stored.raft_meta)
            with leader.pin(stored.index):
                await t1.stream_snapshot(2, stored, leader.open_reader(stored.index), request)
            n.cancel_scope.cancel()
    check_copy(leader, follower, stored.index)
    assert isinstance(h2.received[0][0], StoredSnapshot)


def _mk(fs: FileSystem, path: str) -> None:
    fs.mkdir(path)
