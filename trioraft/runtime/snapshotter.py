"""The snapshotter actor: takes snapshots, installs them, streams them to followers.

Theory of operation.

Taking a snapshot (never two at once): a trigger (entries applied since the last snapshot
reached ``snapshot_entries``; the interval timer with its margin; or a manual request) makes the
snapshotter ask the FSM actor for a capture. The FSM actor calls ``state_machine.capture()``
between two applies, so the capture is exactly at the applied index, and returns the user's
saver with the index, term, configuration and address book at that index. The saver then runs
*here*, in the snapshotter's task, while the FSM actor goes on applying newer entries. It writes
through a :class:`~trioraft.statemachine.SnapshotWriter` into a builder in the store's temp
directory; each file's chunks are written in a worker thread while the saver produces the next,
and every such write has ended before the builder is committed or aborted. On success:

1. ``builder.commit()``: files fsynced, meta written and fsynced, directory renamed into place,
   parent fsynced (the store's contract);
2. the WAL actor records the snapshot marker (durable) - contract 2;
3. the raft actor records the snapshot in the in-memory log and compacts it, keeping
   ``catchup_entries`` entries below the snapshot for slow followers;
4. the waiters (``snapshot()`` callers) get the snapshot; then, in the actor's next round,
   retention deletes old snapshots (never pinned ones) and the WAL releases segments below the
   oldest snapshot still kept, so an older snapshot stays usable if the newest is damaged.

On an exception or cancellation the writes still running are waited for, the builder is
aborted (its temp directory removed), the failure is logged, and the node keeps serving.

Streaming to a follower (leader side): for each ``SnapshotRequest`` the core emits, a task pins
the snapshot (retention cannot delete it meanwhile - contract 5), streams it with the
transport, and reports the outcome to the core. A newer request for the same peer supersedes
(cancels) an older stream. Receiving (follower side) goes through :meth:`begin_receive`, which
opens a builder the transport writes chunks into; the transport commits it and hands the
request to the raft actor.
"""

from __future__ import annotations

import builtins
import logging
import math
from collections.abc import Callable
from typing import Any, Protocol

import attrs
import trio

from trioraft.core.messages import SnapshotRequest
from trioraft.core.types import ConfState, SnapshotMeta
from trioraft.errors import NodeStopped, RaftError
from trioraft.runtime.disk import DiskExecutor
from trioraft.runtime.fsm_actor import MEMBERS_FILE, encode_members
from trioraft.runtime.items import (
    Captured,
    CaptureJob,
    LocalSnapshot,
    MarkerJob,
    ReleaseJob,
    SnapshotStatus,
)
from trioraft.runtime.proposals import Future
from trioraft.statemachine import SnapshotWriter

__all__ = ["SnapshotFailed", "Snapshotter", "SnapshotterConfig"]

log = logging.getLogger(__name__)


class SnapshotFailed(RaftError):
    """A snapshot could not be taken (the saver raised, was cancelled, or storage failed).
    Nothing of it remains on disk; the node keeps serving."""


@attrs.frozen
class SnapshotterConfig:
    """The snapshot knobs (see :class:`trioraft.Config`)."""

    snapshot_entries: int = 10000
    catchup_entries: int = 5000
    snapshot_interval: float | None = None
    snapshot_margin: int = 1
    chunk_bytes: int = 1 << 20
    #: the first timer fires after this fraction of the interval (like SOFAJRaft, a random
    #: value in [0.5, 1) keeps the nodes of a cluster from all saving at the same moment)
    first_interval_fraction: float = 1.0


class _Store(Protocol):
    def begin(self, index: int, term: int, conf: ConfState) -> Any: ...
    def get(self, index: int) -> Any: ...
    def list(self) -> builtins.list[Any]: ...
    def open_reader(self, index: int) -> Any: ...
    def pin(self, index: int) -> Any: ...
    def apply_retention(self) -> builtins.list[int]: ...


class _Streamer(Protocol):
    async def stream_snapshot(
        self, peer: int, snapshot: Any, reader: Any, request: SnapshotRequest
    ) -> None: ...


@attrs.define
class _Stream:
    index: int
    scope: trio.CancelScope
    superseded: bool = False


class Snapshotter:
    """See the module docstring.

    Args:
        node_id: for log context.
        config: the snapshot knobs.
        store: the snapshot store.
        disk: executor for blocking storage calls.
        fsm: send side of the FSM channel (captures).
        wal: send side of the WAL channel (markers, releases).
        raft_inbox: send side of the raft inbox (local snapshot records, stream reports).
        transport: streams snapshots to followers.
        applied_index: returns the FSM's applied index.
        last: the newest snapshot in use at start-up (None if none).
    """

    def __init__(
        self,
        node_id: int,
        config: SnapshotterConfig,
        store: _Store,
        disk: DiskExecutor,
        fsm: trio.MemorySendChannel[Any],
        wal: trio.MemorySendChannel[Any],
        raft_inbox: trio.MemorySendChannel[Any],
        transport: _Streamer,
        applied_index: Callable[[], int],
        last: Any | None,
    ) -> None:
        self._id = node_id
        self._cfg = config
        self._store = store
        self._disk = disk
        self._fsm = fsm
        self._wal = wal
        self._raft_inbox = raft_inbox
        self._transport = transport
        self._applied = applied_index
        self._wake = trio.Event()
        self._manual: list[Future[Any]] = []
        #: set when :meth:`run` ended: nobody would take a manual request any more
        self._stopped = False
        # The first round applies retention: a node stopped after a save but before the round
        # that follows it (retention runs after the save's waiters are answered) would otherwise
        # keep the extra snapshot and its WAL segments until its next save.
        self._housekeeping = True
        self._save_scope: trio.CancelScope | None = None
        self._streams: dict[int, _Stream] = {}
        self._nursery: trio.Nursery | None = None
        #: index and term of the newest snapshot recorded in the log
        self.last_index = 0 if last is None else int(last.index)
        self.last_term = 0 if last is None else int(last.term)
        #: a save is in progress
        self.saving = False
        #: counters
        self.saves = 0
        self.save_failures = 0
        self.snapshots_sent = 0

    # -- triggers ------------------------------------------------------------------------------

    def on_applied(self, applied: int) -> None:
        """Called by the FSM actor after each batch: the entry-count trigger."""
        n = self._cfg.snapshot_entries
        if n and not self.saving and applied - self.last_index >= n:
            self._wake.set()

    def on_installed(self, stored: Any) -> None:
        """Called by the FSM actor after loading a snapshot received from the leader."""
        if stored.index > self.last_index:
            self.last_index = stored.index
            self.last_term = stored.term
        self._housekeeping = True
        self._wake.set()

    async def snapshot(self) -> Any:
        """Take a snapshot now (after any save in progress) and return the stored snapshot.
        Returns the newest existing snapshot if nothing was applied since it.

        Raises:
            SnapshotFailed: the save failed; nothing was installed.
            NodeStopped: the node stopped first.
        """
        if self._stopped:
            # (the node's stop has not been noticed everywhere yet, say after an actor failed)
            raise NodeStopped(f"node {self._id} stopped")
        future: Future[Any] = Future()
        self._manual.append(future)
        self._wake.set()
        return await future.wait()

    def cancel_save(self) -> bool:
        """Cancel the save in progress while its files are being written (it is aborted and
        leaves nothing); False outside that phase."""
        if self._save_scope is None:
            return False
        self._save_scope.cancel()
        return True

    # -- the actor -----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled."""
        interval = self._cfg.snapshot_interval
        next_timer = (
            trio.current_time() + interval * self._cfg.first_interval_fraction
            if interval
            else math.inf
        )
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            self._wake.set()
            try:
                while True:
                    with trio.move_on_at(next_timer):
                        await self._wake.wait()
                    self._wake = trio.Event()
                    timer_fired = trio.current_time() >= next_timer
                    if timer_fired and interval:
                        next_timer = trio.current_time() + interval
                    await self._check(timer_fired)
            finally:
                self._stopped = True
                for future in self._manual:
                    future.set_exception(NodeStopped(f"node {self._id} stopped"))
                self._manual = []
                nursery.cancel_scope.cancel()

    async def _check(self, timer_fired: bool) -> None:
        if self._housekeeping:
            self._housekeeping = False
            await self._retention()
        applied = self._applied()
        since = applied - self.last_index
        reason = None
        if self._manual:
            reason = "manual"
        elif self._cfg.snapshot_entries and since >= self._cfg.snapshot_entries:
            reason = "entries"
        elif timer_fired and since >= max(self._cfg.snapshot_margin, 1):
            reason = "interval"
        elif timer_fired:
            log.debug(
                "node %d: interval snapshot skipped (%d entries since the last one, margin %d)",
                self._id,
                since,
                self._cfg.snapshot_margin,
            )
        if reason is not None:
            waiters, self._manual = self._manual, []
            await self._save(reason, waiters)

    async def _save(self, reason: str, waiters: list[Future[Any]]) -> None:
        self.saving = True
        try:
            try:
                stored = await self._take(reason)
            except Exception as exc:
                for w in waiters:
                    failure = SnapshotFailed(f"snapshot failed: {exc!r}")
                    failure.__cause__ = exc
                    w.set_exception(failure)
                return
            except BaseException:
                # Cancelled (the node stops), also wrapped in an exception group by a saver
                # that runs its own nursery: the waiters are out of self._manual already, so
                # run()'s cleanup would not reach them.
                for w in waiters:
                    w.set_exception(NodeStopped(f"node {self._id} stopped"))
                raise
            for w in waiters:
                w.set_result(stored)
        finally:
            self.saving = False

    async def _take(self, reason: str) -> Any:
        capture_future: Future[Captured | None] = Future()
        self._fsm.send_nowait(CaptureJob(since=self.last_index, future=capture_future))
        captured = await capture_future.wait()
        if captured is None:
            if self.last_index:
                existing = await self._disk(self._store.get, self.last_index)
                if existing is not None:
                    return existing
            raise SnapshotFailed("nothing applied yet")
        stored = await self._write(reason, captured)
        # Contract 2: files + meta durable (commit) before the WAL marker.
        meta = SnapshotMeta(index=stored.index, term=stored.term, conf=stored.conf)
        marker_done: Future[int] = Future()
        self._wal.send_nowait(MarkerJob(meta, marker_done))
        newer = await marker_done.wait()
        if newer:
            # A snapshot installed from the leader while this one was being saved is the node's
            # snapshot now (its restore may still be running, so last_index may not show it
            # yet); this one is never used and retention removes it.
            installed = await self._disk(self._store.get, newer)
            return installed if installed is not None else stored
        compact_to = max(0, stored.index - self._cfg.catchup_entries)
        recorded: Future[None] = Future()
        self._raft_inbox.send_nowait(LocalSnapshot(meta, compact_to, recorded))
        await recorded.wait()
        if stored.index > self.last_index:
            self.last_index = stored.index
            self.last_term = stored.term
        self.saves += 1
        # Retention (deleting older snapshots, releasing WAL segments) is housekeeping: the
        # actor's next round does it, after the waiters have their snapshot.
        self._housekeeping = True
        self._wake.set()
        return stored

    async def _write(self, reason: str, captured: Captured) -> Any:
        t0 = trio.current_time()
        builder = await self._disk(self._store.begin, captured.index, captured.term, captured.conf)
        try:
            with trio.CancelScope() as scope:
                self._save_scope = scope
                writer = SnapshotWriter(
                    builder,
                    self._disk,
                    index=captured.index,
                    term=captured.term,
                    conf=captured.conf,
                    chunk_bytes=self._cfg.chunk_bytes,
                )
                try:
                    await captured.saver(writer)
                    await writer._write_runtime_file(MEMBERS_FILE, encode_members(captured.members))
                    # Every file's writes and close (fsync) done; a failure is raised here.
                    await writer.aclose_all()
                finally:
                    # The writer's background writes end before the builder is committed or
                    # aborted (its temporary directory removed), whatever happened.
                    with trio.CancelScope(shield=True):
                        await writer._drain_all()
                stored = await self._disk(builder.commit, writer.user_meta)
            if scope.cancelled_caught:
                raise SnapshotFailed("snapshot save cancelled")
        except BaseException as exc:
            self.save_failures += 1
            with trio.CancelScope(shield=True):
                try:
                    await self._disk(builder.abort)
                except Exception:
                    log.exception("node %d: aborting snapshot %d failed", self._id, captured.index)
            log.warning(
                "node %d: %s snapshot at %d (term %d) failed, nothing installed: %r",
                self._id,
                reason,
                captured.index,
                captured.term,
                exc,
            )
            raise
        finally:
            self._save_scope = None
        log.info(
            "node %d: %s snapshot at %d (term %d) saved in %.3f s",
            self._id,
            reason,
            stored.index,
            stored.term,
            trio.current_time() - t0,
        )
        return stored

    async def _retention(self) -> None:
        deleted = await self._disk(self._store.apply_retention)
        if deleted:
            log.info("node %d: retention deleted snapshots %s", self._id, deleted)
        kept = await self._disk(self._store.list)
        if kept:
            oldest = min(s.index for s in kept)
            self._wal.send_nowait(ReleaseJob(oldest))

    # -- streaming (leader side) ---------------------------------------------------------------

    def send_snapshot(self, request: SnapshotRequest) -> None:
        """Start streaming ``request.meta``'s snapshot to ``request.dst``."""
        if self._nursery is None:
            return
        current = self._streams.get(request.dst)
        if current is not None:
            if current.index == request.meta.index:
                return
            current.superseded = True
            current.scope.cancel()
        stream = _Stream(index=request.meta.index, scope=trio.CancelScope())
        self._streams[request.dst] = stream
        self._nursery.start_soon(self._stream, request, stream)

    @property
    def streams_in_progress(self) -> int:
        """Number of snapshot streams running."""
        return len(self._streams)

    async def _stream(self, request: SnapshotRequest, stream: _Stream) -> None:
        peer = request.dst
        index = request.meta.index
        ok = False
        t0 = trio.current_time()
        try:
            with stream.scope:
                pin = self._store.pin(index)
                stored = await self._disk(pin.__enter__)
                try:
                    reader = await self._disk(self._store.open_reader, index)
                    try:
                        log.info("node %d: streaming snapshot %d to node %d", self._id, index, peer)
                        await self._transport.stream_snapshot(peer, stored, reader, request)
                        ok = True
                    finally:
                        close = getattr(reader, "close", None)
                        if close is not None:
                            with trio.CancelScope(shield=True):
                                await self._disk(close)
                finally:
                    with trio.CancelScope(shield=True):
                        await self._disk(pin.__exit__, None, None, None)
        except Exception as exc:
            log.warning(
                "node %d: snapshot %d stream to node %d failed: %r", self._id, index, peer, exc
            )
        finally:
            if self._streams.get(peer) is stream:
                del self._streams[peer]
        if stream.superseded:
            return
        if ok:
            self.snapshots_sent += 1
            log.info(
                "node %d: snapshot %d sent to node %d in %.3f s",
                self._id,
                index,
                peer,
                trio.current_time() - t0,
            )
        self._raft_inbox.send_nowait(SnapshotStatus(peer, ok))

    # -- receiving (follower side) -------------------------------------------------------------

    async def begin_receive(self, src: int, index: int, term: int, conf: ConfState) -> Any:
        """Open a builder for a snapshot streamed by ``src``."""
        log.info(
            "node %d: receiving snapshot %d (term %d) from node %d", self._id, index, term, src
        )
        return await self._disk(self._store.begin, index, term, conf)
