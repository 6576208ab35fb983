"""The WAL actor: group commit (one save per drained batch), suffix replacement when merging,
marker ordering, and acknowledgements."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import trio
import trio.testing

from trioraft.core.types import Entry, HardState, SnapshotMeta
from trioraft.runtime.disk import INLINE_DISK, AdaptiveDisk
from trioraft.runtime.items import MarkerJob, Persisted, PersistJob, ReleaseJob
from trioraft.runtime.proposals import Future
from trioraft.runtime.wal_actor import WalActor, merge_entries


def ents(lo: int, hi: int, term: int = 1) -> tuple[Entry, ...]:
    return tuple(Entry(term=term, index=i) for i in range(lo, hi + 1))


class FakeWal:
    def __init__(self) -> None:
        self.ops: list[tuple[Any, ...]] = []

    def save(self, entries: Sequence[Entry], hard_state: HardState | None) -> None:
        self.ops.append(("save", [(e.index, e.term) for e in entries], hard_state))

    def save_snapshot_marker(self, meta: SnapshotMeta) -> None:
        self.ops.append(("marker", meta.index))

    def release_to(self, index: int) -> None:
        self.ops.append(("release", index))


def test_merge_replaces_conflicting_suffix() -> None:
    acc: list[Entry] = []
    merge_entries(acc, ents(1, 5))
    merge_entries(acc, ents(4, 6, term=2))
    assert [(e.index, e.term) for e in acc] == [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2), (6, 2)]
    merge_entries(acc, ents(1, 2, term=3))
    assert [(e.index, e.term) for e in acc] == [(1, 3), (2, 3)]
    merge_entries(acc, ())
    assert len(acc) == 2


def job(
    n: int, entries: tuple[Entry, ...] = (), hs: HardState | None = None, **kw: Any
) -> PersistJob:
    return PersistJob(
        number=n, hard_state=hs, entries=entries, snapshot=kw.get("snapshot"), messages=()
    )


async def test_one_save_per_batch_and_ordering() -> None:
    wal = FakeWal()
    jobs_send, jobs_recv = trio.open_memory_channel[Any](math.inf)
    inbox_send, inbox_recv = trio.open_memory_channel[Any](math.inf)
    actor = WalActor(1, wal, INLINE_DISK, jobs_recv, inbox_send)
    # Queue everything before the actor runs: it must be one batch.
    jobs_send.send_nowait(job(1, ents(1, 2), HardState(term=1, commit=0)))
    jobs_send.send_nowait(job(2, ents(3, 3), HardState(term=1, commit=2)))
    marker_done: Future[int] = Future()
    stale: Future[int] = Future()
    jobs_send.send_nowait(MarkerJob(SnapshotMeta(index=2, term=1), marker_done))
    jobs_send.send_nowait(job(3, ents(3, 4, term=2), HardState(term=2, commit=3)))
    jobs_send.send_nowait(ReleaseJob(2))
    jobs_send.send_nowait(job(4, (), None, snapshot=SnapshotMeta(index=10, term=2)))
    jobs_send.send_nowait(job(5, ents(11, 11, term=2), HardState(term=2, commit=10)))
    jobs_send.send_nowait(MarkerJob(SnapshotMeta(index=8, term=2), stale))  # older than 10
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        acked = await inbox_recv.receive()
        nursery.cancel_scope.cancel()
    assert isinstance(acked, Persisted)
    assert [j.number for j in acked.jobs] == [1, 2, 3, 4, 5]
    assert marker_done.result() == 0
    assert stale.result() == 10  # never rewinds past the installed snapshot
    assert wal.ops == [
        ("save", [(1, 1), (2, 1), (3, 1)], HardState(term=1, commit=2)),
        ("marker", 2),
        ("save", [(3, 2), (4, 2)], HardState(term=2, commit=3)),
        ("release", 2),
        ("marker", 10),  # an installed snapshot's marker precedes the hard state committing it
        ("save", [(11, 2)], HardState(term=2, commit=10)),
    ]
    assert actor.saves == 3


async def test_group_commit_under_load(autojump_clock: trio.testing.MockClock) -> None:
    """While one save is in progress, later jobs pile up and share the next save."""
    wal = FakeWal()
    jobs_send, jobs_recv = trio.open_memory_channel[Any](math.inf)
    inbox_send, inbox_recv = trio.open_memory_channel[Any](math.inf)

    class SlowDisk:
        async def __call__(self, fn: Any, *args: Any) -> Any:
            await trio.sleep(0.01)  # an fsync
            return fn(*args)

    actor = WalActor(1, wal, SlowDisk(), jobs_recv, inbox_send)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        for i in range(1, 101):
            jobs_send.send_nowait(job(i, ents(i, i), HardState(term=1, commit=i - 1)))
            await trio.sleep(0.001)
        acked = 0
        while acked < 100:
            acked += len((await inbox_recv.receive()).jobs)
        nursery.cancel_scope.cancel()
    assert acked == 100
    assert actor.saves < 20, actor.saves
    saved = [i for op in wal.ops for i, _ in op[1]]
    assert saved == list(range(1, 101))


async def test_commit_only_hard_state_rides_along() -> None:
    """A hard state that only moves the commit index costs no fsync of its own."""
    wal = FakeWal()
    jobs_send, jobs_recv = trio.open_memory_channel[Any](math.inf)
    inbox_send, inbox_recv = trio.open_memory_channel[Any](math.inf)
    actor = WalActor(1, wal, INLINE_DISK, jobs_recv, inbox_send, hard_state=HardState(term=2))
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        jobs_send.send_nowait(job(1, ents(1, 1, term=2), HardState(term=2, commit=0)))
        await inbox_recv.receive()
        jobs_send.send_nowait(job(2, (), HardState(term=2, commit=1)))  # commit only
        assert [j.number for j in (await inbox_recv.receive()).jobs] == [2]  # acked at once
        assert len(wal.ops) == 1
        jobs_send.send_nowait(job(3, ents(2, 2, term=2), HardState(term=2, commit=1)))
        await inbox_recv.receive()
        assert wal.ops[-1] == ("save", [(2, 2)], HardState(term=2, commit=1))
        jobs_send.send_nowait(job(4, (), HardState(term=3, vote=1, commit=1)))  # vote: durable
        await inbox_recv.receive()
        assert wal.ops[-1] == ("save", [], HardState(term=3, vote=1, commit=1))
        jobs_send.send_nowait(job(5, (), HardState(term=3, vote=1, commit=2)))
        await inbox_recv.receive()
        done: Future[int] = Future()
        jobs_send.send_nowait(MarkerJob(SnapshotMeta(index=2, term=2), done))
        await done.wait()
        # the deferred commit is written before the marker
        assert wal.ops[-2:] == [("save", [], HardState(term=3, vote=1, commit=2)), ("marker", 2)]
        nursery.cancel_scope.cancel()


async def test_already_acknowledged_jobs_only_record_their_commit() -> None:
    """The raft actor acknowledges write-free Readys itself; the WAL actor reports nothing for
    them, writes nothing for them alone, and carries their commit index into the next save."""
    wal = FakeWal()
    jobs_send, jobs_recv = trio.open_memory_channel[Any](math.inf)
    inbox_send, inbox_recv = trio.open_memory_channel[Any](math.inf)
    actor = WalActor(1, wal, INLINE_DISK, jobs_recv, inbox_send, hard_state=HardState(term=1))
    acked_job = PersistJob(
        number=1,
        hard_state=HardState(term=1, commit=5),
        entries=(),
        snapshot=None,
        messages=(),
        acked=True,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        jobs_send.send_nowait(acked_job)
        await trio.testing.wait_all_tasks_blocked()
        assert wal.ops == []
        assert inbox_recv.statistics().current_buffer_used == 0  # nothing reported
        jobs_send.send_nowait(job(2, ents(6, 6)))
        acked = await inbox_recv.receive()
        nursery.cancel_scope.cancel()
    assert [j.number for j in acked.jobs] == [2]
    assert wal.ops == [("save", [(6, 1)], HardState(term=1, commit=5))]


class _IdleDisk(AdaptiveDisk):
    idle = True

    def loop_is_idle(self) -> bool:
        return self.idle


async def test_persist_now_writes_synchronously_with_the_same_bookkeeping() -> None:
    wal = FakeWal()
    jobs_send, jobs_recv = trio.open_memory_channel[Any](math.inf)
    inbox_send, inbox_recv = trio.open_memory_channel[Any](math.inf)
    disk = _IdleDisk()
    actor = WalActor(1, wal, disk, jobs_recv, inbox_send, hard_state=HardState(term=2))
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        assert actor.persist_now(job(1, ents(1, 1, term=2), HardState(term=2, commit=0)))
        assert wal.ops == [("save", [(1, 2)], HardState(term=2, commit=0))]  # done on return
        # Commit only: recorded, no fsync of its own; it rides along with the next save.
        assert actor.persist_now(job(2, (), HardState(term=2, commit=1)))
        assert len(wal.ops) == 1
        assert actor.persist_now(job(3, ents(2, 2, term=2)))
        assert wal.ops[-1] == ("save", [(2, 2)], HardState(term=2, commit=1))
        # A vote must be durable even without entries.
        assert actor.persist_now(job(4, (), HardState(term=3, vote=1, commit=1)))
        assert wal.ops[-1] == ("save", [], HardState(term=3, vote=1, commit=1))
        assert actor.saves == 3
        # Refused (nothing done): a snapshot install, a busy loop, jobs queued for the actor.
        assert not actor.persist_now(job(5, (), None, snapshot=SnapshotMeta(index=9, term=3)))
        disk.idle = False
        assert not actor.persist_now(job(5, ents(3, 3, term=3)))
        disk.idle = True
        jobs_send.send_nowait(job(5, ents(3, 3, term=3)))  # handed to the parked actor
        assert not actor.persist_now(job(6, ents(4, 4, term=3)))
        assert [j.number for j in (await inbox_recv.receive()).jobs] == [5]
        assert len(wal.ops) == 4
        await trio.testing.wait_all_tasks_blocked()
        assert actor.persist_now(job(6, ents(4, 4, term=3)))
        assert len(wal.ops) == 5
        nursery.cancel_scope.cancel()
    assert inbox_recv.statistics().current_buffer_used == 0  # persist_now reports nothing


async def test_persist_now_refused_while_a_batch_is_in_progress() -> None:
    wal = FakeWal()
    jobs_send, jobs_recv = trio.open_memory_channel[Any](math.inf)
    inbox_send, inbox_recv = trio.open_memory_channel[Any](math.inf)
    gate = trio.Event()

    class GatedDisk(_IdleDisk):
        async def __call__(self, fn: Any, *args: Any) -> Any:
            await gate.wait()
            return fn(*args)

    actor = WalActor(1, wal, GatedDisk(), jobs_recv, inbox_send)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        jobs_send.send_nowait(job(1, ents(1, 1)))
        await trio.testing.wait_all_tasks_blocked()
        assert not actor.persist_now(job(2, ents(2, 2)))  # the actor is mid-batch
        gate.set()
        await inbox_recv.receive()
        assert actor.persist_now(job(2, ents(2, 2)))
        nursery.cancel_scope.cancel()
    assert [op[1] for op in wal.ops] == [[(1, 1)], [(2, 1)]]


async def test_persist_now_writes_only_with_an_adaptive_disk() -> None:
    wal = FakeWal()
    _, jobs_recv = trio.open_memory_channel[Any](math.inf)
    inbox_send, _ = trio.open_memory_channel[Any](math.inf)
    actor = WalActor(1, wal, INLINE_DISK, jobs_recv, inbox_send)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        assert not actor.persist_now(job(1, ents(1, 1)))
        assert not actor.persist_now(job(1, (), HardState(term=1, vote=1)))  # a vote: a write
        # A moved commit index needs no write: recorded for the next save.
        assert actor.persist_now(job(1, (), HardState(term=0, commit=1)))
        nursery.cancel_scope.cancel()
    assert wal.ops == [("save", [], HardState(term=0, commit=1))]  # written on the clean stop


async def test_a_commit_only_hard_state_is_saved_when_the_job_asks_for_a_sync() -> None:
    # A commit index covering a configuration change that the node is about to report must
    # be durable (Ready.sync_hard_state); other commit-only hard states ride along later.
    wal = FakeWal()
    jobs_send, jobs_recv = trio.open_memory_channel[Any](math.inf)
    inbox_send, inbox_recv = trio.open_memory_channel[Any](math.inf)
    actor = WalActor(1, wal, INLINE_DISK, jobs_recv, inbox_send)
    jobs_send.send_nowait(job(1, ents(1, 2), HardState(term=1, commit=0)))
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        await inbox_recv.receive()
        jobs_send.send_nowait(job(2, (), HardState(term=1, commit=1)))
        await inbox_recv.receive()
        assert len(wal.ops) == 1  # deferred
        synced = PersistJob(3, HardState(term=1, commit=2), (), None, (), sync=True)
        jobs_send.send_nowait(synced)
        await inbox_recv.receive()
        # saved before the acknowledgement (not by the final write on the way out)
        assert wal.ops[-1] == ("save", [], HardState(term=1, commit=2))
        nursery.cancel_scope.cancel()
