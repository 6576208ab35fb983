"""The FSM actor: owns the application's state machine; nothing calls it concurrently.

Theory of operation: committed entries arrive in order (one :class:`ApplyBatch` per Ready).
Each index is applied at most once: anything at or below ``applied`` is skipped (entries
re-delivered after a snapshot install or on restart), and a gap is a bug that fails the node.
Because this actor handles one channel item at a time, a :class:`CaptureJob` always runs
*between* two applies, so ``capture()`` sees the state at exactly ``applied``; a
:class:`RestoreJob` (follower snapshot install) likewise lands between two batches and moves
``applied`` to the snapshot's index.

Shortcut (:meth:`FsmActor.apply_now`): while this actor is parked with nothing queued, the raft
actor applies a small batch of ordinary entries itself, through the same code. The state machine
is still never entered twice at once (this actor is idle, and both run on one event loop), and
order is kept (nothing is queued ahead), but a proposer's answer no longer waits for this
actor's wake-up.

Alongside the application state this actor tracks, in log order, the two things a snapshot must
record besides the user's files: the cluster configuration at ``applied`` and the address book
(node id -> transport address, carried in the context of membership changes). Both are written
into every snapshot and restored from it, so a node restarted from a compacted log still knows
its peers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Set
from typing import Any, Protocol

import trio

from trioraft.codec import decode, decode_conf_change, encode
from trioraft.core.types import ConfChange, ConfChangeType, ConfState, Entry, EntryKind
from trioraft.errors import ProposalDropped, StorageCorrupted
from trioraft.runtime.disk import DiskExecutor
from trioraft.runtime.idle import receiver_parked
from trioraft.runtime.items import (
    Applied,
    ApplyBatch,
    Captured,
    CaptureJob,
    HookJob,
    Restored,
    RestoreJob,
)
from trioraft.runtime.proposals import AppliedWaiters, ProposalTracker
from trioraft.statemachine import RESERVED_PREFIX, SnapshotReader, StateMachine, call_hook

__all__ = ["MEMBERS_FILE", "FsmActor", "decode_members", "encode_members"]

log = logging.getLogger(__name__)

#: The runtime's own file inside every snapshot: the address book at the snapshot's index.
MEMBERS_FILE = RESERVED_PREFIX + "_members.cbor"

FsmItem = ApplyBatch | RestoreJob | CaptureJob | HookJob

#: Entries applied between two checkpoints, so a long batch does not starve other tasks.
_APPLY_SLICE = 512


def encode_members(members: dict[int, str]) -> bytes:
    """Encode an address book for :data:`MEMBERS_FILE`."""
    return encode(dict(sorted(members.items())), unstructure_as=dict[int, str])


def decode_members(data: bytes) -> dict[int, str]:
    """Decode :data:`MEMBERS_FILE` (raises ``DecodeError``)."""
    result: dict[int, str] = decode(data, dict[int, str])
    return result


class _Store(Protocol):
    def get(self, index: int) -> Any: ...
    def open_reader(self, index: int) -> Any: ...


class _PeerBook(Protocol):
    def add_peer(self, peer: int, address: str) -> None: ...
    def remove_peer(self, peer: int) -> None: ...


class FsmActor:
    """Applies committed entries and serves captures and restores; see the module docstring.

    Args:
        node_id: this node (never added to the transport's peers).
        state_machine: the application.
        store: the snapshot store (restores read from it).
        disk: executor for blocking storage calls.
        items: receive side of the FSM channel.
        raft_inbox: where :class:`Applied` reports go.
        proposals: resolved as entries apply.
        waiters: woken as ``applied`` advances.
        conf_applier: computes the configuration after a membership change (the core's rules).
        peers: the transport's peer book, updated when membership changes apply.
        on_applied: called after each batch with the new applied index (snapshot trigger).
        on_installed: called after a follower snapshot install was loaded.
        static_peers: addresses from the configuration; they override recorded ones.
    """

    def __init__(
        self,
        node_id: int,
        state_machine: StateMachine,
        store: _Store,
        disk: DiskExecutor,
        items: trio.MemoryReceiveChannel[FsmItem],
        raft_inbox: trio.MemorySendChannel[Any],
        proposals: ProposalTracker,
        waiters: AppliedWaiters,
        conf_applier: Callable[[ConfState, ConfChange], ConfState],
        peers: _PeerBook,
        *,
        on_applied: Callable[[int], None] = lambda _: None,
        on_installed: Callable[[Any], None] = lambda _: None,
        static_peers: dict[int, str] | None = None,
        chunk_bytes: int = 1 << 20,
        leader: Callable[[], int] = lambda: 0,
    ) -> None:
        self._id = node_id
        self._sm = state_machine
        self._store = store
        self._disk = disk
        self._items = items
        self._parked = receiver_parked(items)
        #: entries applied through :meth:`apply_now` so far
        self.applied_now = 0
        self._raft_inbox = raft_inbox
        self._proposals = proposals
        self._waiters = waiters
        self._conf_applier = conf_applier
        self._peers = peers
        self._on_applied = on_applied
        self._on_installed = on_installed
        self._static_peers = {k: v for k, v in (static_peers or {}).items() if v}
        self._chunk = chunk_bytes
        #: last applied index and its term
        self.applied = 0
        self.applied_term = 0
        #: the configuration at ``applied``
        self.conf = ConfState()
        #: node id -> transport address at ``applied``
        self.members: dict[int, str] = {}
        self._removed_peers: set[int] = set()
        self._leader = leader
        #: nodes that left the configuration while leading: still heard (and answered) until
        #: another node leads, since a leader that removed itself hands over first
        self._leaving_leaders: set[int] = set()
        #: snapshots received from a leader and loaded
        self.snapshots_installed = 0

    # -- start-up ----------------------------------------------------------------------------

    def set_start(self, index: int, term: int, conf: ConfState, members: dict[int, str]) -> None:
        """Initial position (after a restore at start-up, or the empty state)."""
        self.applied = index
        self.applied_term = term
        self.conf = conf
        self.members = dict(members)
        self._sync_peers({}, self.members)

    async def load_snapshot(self, stored: Any, *, install: bool) -> None:
        """Restore the state machine from ``stored`` (a ``StoredSnapshot``) and move ``applied``
        to its index. Used at start-up and for follower installs."""
        backend = await self._disk(self._store.open_reader, stored.index)
        try:
            reader = SnapshotReader(stored, backend, self._disk, chunk_bytes=self._chunk)
            await self._sm.restore(reader)
            raw = await reader.read_reserved(MEMBERS_FILE)
        finally:
            close = getattr(backend, "close", None)
            if close is not None:
                await self._disk(close)
        members = dict(self.members)
        if raw is not None:
            try:
                members = decode_members(raw)
            except ValueError as exc:
                raise StorageCorrupted(stored.path, f"bad {MEMBERS_FILE}: {exc}") from exc
        # The operator's configuration wins over addresses recorded in the snapshot (nodes may
        # have moved); the snapshot supplies the nodes added since.
        members.update(self._static_peers)
        old = self.members
        old_nodes = self.conf.all_nodes()
        self.applied = stored.index
        self.applied_term = stored.term
        self.conf = stored.conf
        # Nodes the snapshot's configuration no longer has (removed by entries it covers) are
        # dropped as _apply_conf_change drops them; nodes it has again are peers again.
        self._forget(old_nodes - stored.conf.all_nodes(), members)
        self.members = members
        self._sync_peers(old, members)
        for nid in stored.conf.all_nodes() & self._removed_peers:
            self._removed_peers.discard(nid)
            self._peers.add_peer(nid, members.get(nid, ""))
        self._proposals.covered_by_snapshot(stored.index)
        if install:
            self.snapshots_installed += 1
            log.info(
                "node %d: installed snapshot %d (term %d) from the leader",
                self._id,
                stored.index,
                stored.term,
            )

    # -- the actor ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve items until cancelled or the channel closes."""
        task_status.started()
        # Not closed on exit, so late senders during shutdown never see a broken channel.
        async for item in self._items:
            if isinstance(item, ApplyBatch):
                await self._apply(item.entries)
            elif isinstance(item, RestoreJob):
                await self._restore(item)
            elif isinstance(item, CaptureJob):
                self._capture(item)
            else:
                await call_hook(self._sm, item.name, *item.args)

    def apply_now(self, entries: tuple[Entry, ...], *, report: bool = True) -> bool:
        """Apply ``entries`` on the caller's task if this actor is idle (parked waiting for
        work, nothing queued) and the batch is at most one slice of ordinary entries (no
        membership change, whose hook is async). Otherwise do nothing.

        Args:
            entries: committed entries, in order.
            report: post :class:`Applied` to the raft actor's inbox as the actor does. The raft
                actor itself passes False and tells its core directly: a report through the
                inbox would wake it once more per batch and, until it ran, make it refuse
                :meth:`RaftActor.handle_now <trioraft.runtime.raft_actor.RaftActor.handle_now>`
                for the next message or proposal.

        Returns:
            True if the entries were applied (the caller must not queue them).
        """
        if len(entries) > _APPLY_SLICE:
            return False
        if not self._parked():
            return False
        for e in entries:
            if e.kind is not EntryKind.NORMAL:
                return False
        self._apply_normal(entries)
        self._report(raft=report)
        self.applied_now += len(entries)
        return True

    def _apply_normal(self, entries: tuple[Entry, ...]) -> None:
        for e in entries:
            if self._is_next(e):
                self._apply_command(e)

    def _is_next(self, e: Entry) -> bool:
        """True if ``e`` is the next entry to apply, False if it is applied already; a gap is a
        bug that fails the node."""
        if e.index <= self.applied:
            return False
        if e.index != self.applied + 1:
            raise RuntimeError(
                f"node {self._id}: apply gap: applied {self.applied}, next entry {e.index}"
            )
        return True

    def _apply_command(self, e: Entry) -> None:
        # An empty command is a leader's no-op (or an empty proposal): nothing to apply.
        result = self._sm.apply(e.index, e.data) if e.data else None
        self.applied = e.index
        self.applied_term = e.term
        self._proposals.applied(e.index, e.term, result)

    async def _apply(self, entries: tuple[Entry, ...]) -> None:
        sm = self._sm
        proposals = self._proposals
        n = 0
        for e in entries:
            if not self._is_next(e):
                continue
            if e.kind == EntryKind.NORMAL:
                self._apply_command(e)
            else:
                cc = decode_conf_change(e.data)
                self.applied = e.index
                self.applied_term = e.term
                try:
                    self._apply_conf_change(e.index, cc)
                except ValueError as exc:
                    # The core refuses the same change the same way: the configuration stays.
                    log.warning(
                        "node %d: membership change at %d ignored: %s", self._id, e.index, exc
                    )
                    proposals.failed(
                        e.index, e.term, ProposalDropped("invalid-conf-change", str(exc))
                    )
                else:
                    proposals.applied(e.index, e.term, self.conf)
                    await call_hook(sm, "on_conf_committed", e.index, self.conf)
            n += 1
            if n % _APPLY_SLICE == 0:
                self._report()
                await trio.lowlevel.checkpoint()
        self._report()

    def _report(self, *, raft: bool = True) -> None:
        if self._leaving_leaders:
            self._drop_leaving_leaders()
        if raft:
            self._raft_inbox.send_nowait(Applied(self.applied))
        self._waiters.advance(self.applied)
        self._on_applied(self.applied)

    def _apply_conf_change(self, index: int, cc: ConfChange) -> None:
        before = self.conf.all_nodes()
        self.conf = self._conf_applier(self.conf, cc)
        # The address book only learns (from a change's context) and forgets (when a node
        # leaves the configuration); a node that is merely not yet in it keeps its address.
        address = cc.context.decode("utf-8", "replace") if cc.context else ""
        for single in cc.changes:
            nid = single.node_id
            if single.type == ConfChangeType.REMOVE:
                continue  # gone once it leaves every part of the configuration (below)
            self._leaving_leaders.discard(nid)
            if address and len(cc.changes) == 1:
                self.members[nid] = address
            if nid != self._id and (
                (address and len(cc.changes) == 1) or nid in self._removed_peers
            ):
                self._removed_peers.discard(nid)
                self._peers.add_peer(nid, self.members.get(nid, ""))
        # A node removed by a joint change is still an outgoing voter (and must stay reachable)
        # until the configuration leaves the joint state, by an entry that names no one.
        self._forget(before - self.conf.all_nodes(), self.members)
        log.info("node %d: membership change at %d applied: %s", self._id, index, self.conf)

    def _forget(self, gone: Set[int], members: dict[int, str]) -> None:
        # Nodes that left the configuration: out of the address book and the transport. A
        # leader that removed itself stays reachable until another node leads: it hands over
        # on our reports of the change's commit, and its TimeoutNow must get through.
        leader = self._leader()
        for nid in gone:
            members.pop(nid, None)
            if nid == self._id:
                continue
            if nid == leader:
                self._leaving_leaders.add(nid)
                continue
            self._peers.remove_peer(nid)
            self._removed_peers.add(nid)

    def _drop_leaving_leaders(self) -> None:
        leader = self._leader()
        for nid in [n for n in self._leaving_leaders if n != leader]:
            self._leaving_leaders.discard(nid)
            if nid not in self.conf.all_nodes():
                self._peers.remove_peer(nid)
                self._removed_peers.add(nid)

    def _sync_peers(self, old: dict[int, str], new: dict[int, str]) -> None:
        for nid, addr in new.items():
            if nid != self._id and old.get(nid) != addr:
                self._peers.add_peer(nid, addr)

    async def _restore(self, job: RestoreJob) -> None:
        meta = job.meta
        if meta.index <= self.applied:
            log.info(
                "node %d: snapshot %d already covered (applied %d)",
                self._id,
                meta.index,
                self.applied,
            )
            self._raft_inbox.send_nowait(Restored(meta.index))
            return
        stored = await self._disk(self._store.get, meta.index)
        if stored is None or stored.term != meta.term:
            raise StorageCorrupted(
                f"snap/{meta.index}", f"snapshot {meta.index}/{meta.term} to install is missing"
            )
        await self.load_snapshot(stored, install=True)
        self._raft_inbox.send_nowait(Restored(meta.index))
        self._report()
        self._on_installed(stored)

    def _capture(self, job: CaptureJob) -> None:
        if self.applied <= job.since:
            job.future.set_result(None)
            return
        try:
            saver = self._sm.capture()
        except Exception as exc:
            job.future.set_exception(exc)
            return
        job.future.set_result(
            Captured(
                index=self.applied,
                term=self.applied_term,
                conf=self.conf,
                members=dict(self.members),
                saver=saver,
            )
        )
