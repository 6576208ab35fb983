"""The public node API: :func:`open_raft_node` and :class:`RaftNode`.

Example::

    config = trioraft.Config(id=1, peers={1: "10.0.0.1:7001", 2: "10.0.0.2:7001", 3: ...})
    transport = TcpTransport(node_id=1, cluster_id="demo", listen=("0.0.0.0", 7001), peers=...)
    async with trioraft.open_raft_node(config, MyStateMachine(), data_dir="node-1",
                                       transport=transport) as node:
        await node.wait_for_leader()
        result = await node.propose(b"set x 1")     # the state machine's apply() result
        await node.read_barrier()                   # then read local state linearizably
        meta = await node.snapshot()                # manual snapshot
"""

from __future__ import annotations

import functools
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from trioraft.codec import decode, encode
from trioraft.config import Config
from trioraft.core.ready import ProgressInfo, Role
from trioraft.core.types import ConfChange, ConfChangeSingle, ConfChangeType, ConfState
from trioraft.errors import AmbiguousOutcome, NodeStopped, NotLeader, ProposalDropped, Timeout
from trioraft.runtime.disk import DiskExecutor, ThreadDisk
from trioraft.runtime.idle import tasks_runnable
from trioraft.runtime.items import (
    CampaignReq,
    ConfChangeReq,
    Forward,
    ProposeReq,
    ReadReq,
    TransferReq,
    UnreachableReq,
)
from trioraft.runtime.node import NodeRuntime, decode_result
from trioraft.runtime.proposals import Future
from trioraft.runtime.transport.base import Transport
from trioraft.statemachine import StateMachine

__all__ = ["LeaderInfo", "NodeStatus", "RaftNode", "open_raft_node"]


class _Default:
    def __repr__(self) -> str:
        return "<config default>"


#: "use the value from the node's Config"
DEFAULT: Any = _Default()


@attrs.frozen
class LeaderInfo:
    """A leadership observation.

    Attributes:
        leader: the leader's id (0 while unknown).
        term: the term it was observed in.
        is_self: this node is the leader.
    """

    leader: int
    term: int
    is_self: bool


@attrs.frozen
class NodeStatus:
    """A point-in-time view of one node (see :meth:`RaftNode.status`).

    Attributes:
        id, role, term, leader: identity, current role (``Role``), term and known leader.
        commit, applied: commit index and the state machine's applied index.
        first_index, last_index: the range of the in-memory log.
        snapshot_index, snapshot_term: the newest snapshot recorded in the log.
        snapshots_taken, snapshots_sent, snapshots_installed: snapshot counters since start.
        snapshot_in_progress: a local save is running.
        conf: the configuration as of the applied index.
        members: node id -> transport address, as known from membership changes.
        progress: per-follower replication progress (leader only).
        pending_proposals: proposals of this node waiting for their entries to apply.
        messages_dropped: inbound messages dropped because the inbox was full.
    """

    id: int
    role: Role
    term: int
    leader: int
    commit: int
    applied: int
    first_index: int
    last_index: int
    snapshot_index: int
    snapshot_term: int
    snapshots_taken: int
    snapshots_sent: int
    snapshots_installed: int
    snapshot_in_progress: bool
    conf: ConfState
    members: dict[int, str]
    progress: dict[int, ProgressInfo]
    pending_proposals: int
    messages_dropped: int


def _timeout(value: Any, default: float | None) -> float:
    t = default if value is DEFAULT else value
    return math.inf if t is None else float(t)


@functools.lru_cache(maxsize=64)
def _proposal_expired(limit: float) -> Callable[[], BaseException]:
    """The error factory for proposals that found no outcome within ``limit`` seconds, shared
    by every proposal with that timeout: a closure per proposal is three more objects alive
    while it waits, which the garbage collector walks again and again under load."""

    def expired() -> BaseException:
        return AmbiguousOutcome(f"no outcome for the proposal within {limit} s")

    return expired


def _never() -> BaseException:  # pragma: no cover - registered with an infinite deadline
    raise AssertionError("an infinite deadline never expires")


class RaftNode:
    """A running Raft node. Obtain one from :func:`open_raft_node`; every method must be called
    from the Trio run that opened it, while the ``async with`` block is open.

    After the node stops every method raises :class:`~trioraft.errors.NodeStopped`.
    """

    def __init__(self, runtime: NodeRuntime) -> None:
        self._rt = runtime

    # -- identity and state --------------------------------------------------------------------

    @property
    def id(self) -> int:
        """This node's id."""
        return self._rt.id

    @property
    def config(self) -> Config:
        """The node's configuration."""
        return self._rt.config

    @property
    def leader(self) -> int:
        """The leader this node knows of (0 when unknown)."""
        return self._rt.core.leader

    @property
    def term(self) -> int:
        """The current term."""
        return self._rt.core.term

    @property
    def role(self) -> Role:
        """The current role."""
        return self._rt.core.role

    @property
    def is_leader(self) -> bool:
        """True while this node is the leader."""
        return self._rt.core.role == Role.LEADER

    @property
    def applied_index(self) -> int:
        """The state machine's applied index."""
        return self._rt.fsm.applied

    @property
    def commit_index(self) -> int:
        """The commit index this node knows of."""
        return self._rt.core.commit

    def status(self) -> NodeStatus:
        """A consistent view of the node's state (cheap; no I/O)."""
        rt = self._rt
        core_status = rt.core.status()
        storage = rt.storage
        assert storage is not None
        snap = storage.snapshot()
        return NodeStatus(
            id=rt.id,
            role=core_status.role,
            term=core_status.term,
            leader=core_status.leader,
            commit=core_status.commit,
            applied=rt.fsm.applied,
            first_index=storage.first_index(),
            last_index=max(storage.last_index(), core_status.last_index),
            snapshot_index=max(snap.index, rt.snapshotter.last_index),
            snapshot_term=snap.term
            if snap.index >= rt.snapshotter.last_index
            else (rt.snapshotter.last_term),
            snapshots_taken=rt.snapshotter.saves,
            snapshots_sent=rt.snapshotter.snapshots_sent,
            snapshots_installed=rt.fsm.snapshots_installed,
            snapshot_in_progress=rt.snapshotter.saving,
            conf=rt.fsm.conf,
            members=dict(rt.fsm.members),
            progress=dict(core_status.progress),
            pending_proposals=len(rt.proposals),
            messages_dropped=rt.messages_dropped,
        )

    # -- proposals -----------------------------------------------------------------------------

    async def propose(
        self, data: bytes, *, timeout: float | None = DEFAULT, forward: bool = True
    ) -> Any:
        """Replicate ``data`` and return the state machine's ``apply`` result for it.

        On a follower the proposal is forwarded to the leader (unless ``forward_proposals`` is
        off in the config or ``forward=False``) and the leader's result is returned.

        Args:
            data: the command (an empty command is a no-op that returns None).
            timeout: seconds to wait for the outcome (default: ``Config.proposal_timeout``).
            forward: allow forwarding to the leader.

        Raises:
            NotLeader: not the leader and not forwarding (``leader_hint`` names the leader).
            ProposalDropped: certainly not appended (no leader, transfer in progress, limits,
                overwritten by a new leader: reason ``"superseded"``); safe to retry.
            AmbiguousOutcome: no outcome within the timeout; the entry may still commit.
            Timeout: all ``max_pending_proposals`` slots stayed taken for the whole timeout;
                nothing was proposed, retry freely.
            NodeStopped: the node stopped meanwhile.
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"proposal data must be bytes, got {type(data).__name__}")
        rt = self._rt
        rt.check_running()
        limit = _timeout(timeout, rt.config.proposal_timeout)
        deadline = trio.current_time() + limit
        expired = _proposal_expired(limit)
        # The hot path (this node leads) takes no cancel scope and does not yield before the
        # request is queued: the deadline timer fails the future if it takes too long.
        if not rt.proposal_slots.try_acquire():
            await self._wait_for_slot(deadline, limit)
        try:
            # A lone proposer (no other proposal in progress on this node, nothing else to
            # run) proposes right here, without a hand-off to the raft actor; concurrent
            # proposals queue, so they batch into one Ready. (Tasks woken together run in one
            # batch that trio does not count as runnable, hence the slot count; looked at
            # before the deadline timer may be woken below.)
            idle = rt.proposal_slots.used == 1 and tasks_runnable() == 0
            future: Future[Any] = Future()
            rt.deadlines.add(deadline, future, expired)
            req = ProposeReq(bytes(data), future)
            if not (idle and rt.raft is not None and rt.raft.handle_now(req)):
                rt.inbox_send.send_nowait(req)
            # (what _wait does, inline: one coroutine object less per waiting proposal)
            try:
                result = await future.wait()
            finally:
                if rt.stopped and not future.done():
                    future.set_exception(NodeStopped(f"node {self.id} stopped"))
        finally:
            rt.proposal_slots.release()
        if isinstance(result, Forward):
            if not (forward and rt.config.forward_proposals):
                raise NotLeader(result.leader)
            with trio.move_on_at(deadline):
                return decode_result(await rt.forward(result.leader, "propose", bytes(data)))
            raise expired()
        return result

    async def _wait_for_slot(self, deadline: float, limit: float) -> None:
        """Take a proposal slot, waiting until ``deadline`` (the slow path of :meth:`propose`).

        Raises:
            Timeout: no slot before the deadline (no slot is held; nothing was proposed).
            NodeStopped: the node stopped while waiting (no slot is held).
        """
        rt = self._rt
        slots = rt.proposal_slots
        with trio.move_on_at(deadline) as scope:
            await slots.acquire()
        if scope.cancelled_caught:
            # nothing was handed to Raft: certainly no effect
            raise Timeout(f"no proposal slot free within {limit} s; nothing was proposed")
        # The slot is ours from here on: give it back before raising.
        if rt.stopped:
            # The inbox is no longer read and the deadline timer is gone: queueing the request
            # now would wait forever.
            slots.release()
            raise NodeStopped(f"node {self.id} stopped")
        if trio.current_time() >= deadline:
            # Freed in the batch in which the deadline passed: too late, and nothing proposed.
            slots.release()
            raise Timeout(f"no proposal slot free within {limit} s; nothing was proposed")

    async def _wait(self, future: Future[Any]) -> Any:
        try:
            return await future.wait()
        finally:
            if self._rt.stopped and not future.done():
                future.set_exception(NodeStopped(f"node {self.id} stopped"))

    # -- reads ---------------------------------------------------------------------------------

    async def read_barrier(self, *, timeout: float | None = DEFAULT) -> int:
        """Wait until local reads are linearizable: the leader confirmed its leadership
        (ReadIndex, or its lease in ``"lease"`` read mode) and this node applied up to the read
        index. Reads of the state machine made after this returns observe every write that
        completed before it was called. Works on followers too.

        Returns:
            the read index.

        Raises:
            Timeout: no read point within the timeout (default ``Config.read_timeout``); the
                read certainly had no effect, retry freely.
            NodeStopped: the node stopped meanwhile.
        """
        rt = self._rt
        rt.check_running()
        limit = _timeout(timeout, rt.config.read_timeout)
        deadline = trio.current_time() + limit

        def expired() -> BaseException:
            return Timeout(f"no linearizable read point within {limit} s")

        future: Future[int] = Future()
        rt.deadlines.add(deadline, future, expired)
        rt.inbox_send.send_nowait(ReadReq(future))
        index: int = await self._wait(future)
        if rt.fsm.applied < index:
            with trio.move_on_at(deadline):
                await self.wait_applied(index)
                return index
            raise expired()
        return index

    async def wait_applied(self, index: int) -> None:
        """Wait until the state machine applied ``index``.

        Raises:
            NodeStopped: the node stopped meanwhile.
        """
        rt = self._rt
        while rt.fsm.applied < index:
            rt.check_running()
            event = rt.waiters.add(index)
            try:
                await event.wait()
            finally:
                rt.waiters.discard(event)  # (a no-op once it is set)
        rt.check_running()

    # -- snapshots -----------------------------------------------------------------------------

    async def snapshot(self) -> Any:
        """Take a snapshot now and return its metadata (a ``StoredSnapshot``: ``index``,
        ``term``, ``conf``, ``files``, ``user_meta``, ``path``). Waits for a save in progress
        first; returns the newest snapshot unchanged if nothing was applied since it.

        Raises:
            SnapshotFailed: the save failed (the node keeps serving, nothing was installed).
            NodeStopped: the node stopped.
        """
        self._rt.check_running()
        return await self._rt.snapshotter.snapshot()

    def cancel_snapshot(self) -> bool:
        """Cancel the snapshot save in progress while its files are being written (the saver
        runs); returns whether it was. Outside that phase (waiting for the capture, recording
        the finished snapshot) there is nothing left to cancel and it returns False."""
        return self._rt.snapshotter.cancel_save()

    # -- membership ----------------------------------------------------------------------------

    async def add_voter(
        self, node_id: int, address: str = "", *, timeout: float | None = DEFAULT
    ) -> ConfState:
        """Add ``node_id`` as a voter (or promote it if it is a learner). Prefer
        :meth:`add_learner` then :meth:`promote` for a node that must catch up first.

        Args:
            node_id: the node to add (a positive id).
            address: the node's transport address, recorded in the log so every member
                (and every future member) can reach it.
            timeout: seconds to wait for the change to apply (default
                ``Config.proposal_timeout``; None waits as long as it takes).

        Returns:
            the configuration after the change applied.

        Raises:
            ProposalDropped: e.g. ``"conf-change-pending"`` (another change is in progress) or
                ``"invalid-conf-change"``.
            NotLeader, AmbiguousOutcome, NodeStopped: as for :meth:`propose`.
        """
        return await self._change(ConfChangeType.ADD_VOTER, node_id, address, timeout)

    async def add_learner(
        self, node_id: int, address: str = "", *, timeout: float | None = DEFAULT
    ) -> ConfState:
        """Add ``node_id`` as a learner (receives the log, does not vote). See
        :meth:`add_voter` for arguments and errors."""
        return await self._change(ConfChangeType.ADD_LEARNER, node_id, address, timeout)

    async def promote(self, node_id: int, *, timeout: float | None = DEFAULT) -> ConfState:
        """Promote learner ``node_id`` to voter. See :meth:`add_voter` for the other errors.

        Raises:
            ProposalDropped: ``"invalid-conf-change"`` when this node leads and ``node_id`` is
                not a learner of its configuration (a voter already, or not a member: use
                :meth:`add_voter` with its address); nothing is proposed. (A follower forwards
                the change unchecked: its applied configuration may lag the leader's.)
        """
        rt = self._rt
        core = rt.core
        if self.is_leader and not core.conf_change_pending:
            # The leader's applied configuration is the latest one here; with a change still
            # to apply, the core refuses with the retryable "conf-change-pending" instead.
            conf = core.conf_state
            if node_id not in conf.learners and node_id not in conf.learners_next:
                raise ProposalDropped(
                    "invalid-conf-change",
                    f"node {node_id} is not a learner (configuration {conf})",
                )
        return await self._change(ConfChangeType.ADD_VOTER, node_id, "", timeout)

    async def remove(self, node_id: int, *, timeout: float | None = DEFAULT) -> ConfState:
        """Remove ``node_id`` from the cluster (any role). See :meth:`add_voter` for errors.

        Removing the leader: once the change applies, the leader accepts no more proposals and
        hands over as soon as a quorum of the remaining voters has reported the change
        committed (it tells the most up-to-date of them to campaign at once). Called on the
        leader for itself, this returns only after the hand-over (or at the timeout), so the
        node may be shut down right after it."""
        return await self._change(ConfChangeType.REMOVE, node_id, "", timeout)

    async def _change(
        self, kind: ConfChangeType, node_id: int, address: str, timeout: float | None
    ) -> ConfState:
        cc = ConfChange(changes=(ConfChangeSingle(kind, node_id),), context=address.encode())
        return await self.change_membership(cc, timeout=timeout)

    async def change_membership(
        self, change: ConfChange, *, timeout: float | None = DEFAULT, forward: bool = True
    ) -> ConfState:
        """Propose an arbitrary membership change (several nodes at once go through joint
        consensus; see :class:`~trioraft.core.types.ConfChange`). The change's ``context`` is
        recorded as the node's address only for a single-node change: add new nodes with
        :meth:`add_learner` (and their address) first.

        Args:
            change: the change (a single change, or several through joint consensus).
            timeout: seconds to wait for the change to apply (default
                ``Config.proposal_timeout``; None waits as long as it takes).
            forward: on a follower, forward the change to the leader.

        Returns:
            the configuration after the change applied.

        Raises:
            NotLeader: not the leader and not forwarding.
            ProposalDropped: certainly not proposed: ``"conf-change-pending"``,
                ``"invalid-conf-change"``, ``"transfer"``, ``"no-leader"``, ``"unreachable"``.
            AmbiguousOutcome: no outcome within the timeout; the change may still apply.
            NodeStopped: the node stopped meanwhile.
        """
        rt = self._rt
        rt.check_running()
        limit = _timeout(timeout, rt.config.proposal_timeout)
        applied: ConfState | None = None
        with trio.move_on_after(limit):
            future: Future[Any] = Future()
            # (held by the deadline timer too, so that a node that dies fails it: see shutdown)
            rt.deadlines.add(math.inf, future, _never)
            rt.inbox_send.send_nowait(ConfChangeReq(change, future))
            result = await self._wait(future)
            if isinstance(result, Forward):
                if not (forward and rt.config.forward_proposals):
                    raise NotLeader(result.leader)
                payload = await rt.forward(result.leader, "conf-change", encode(change))
                conf: ConfState = decode(payload, ConfState)
                return conf
            assert isinstance(result, ConfState)
            applied = result
            if self.id not in result.voters and self.id not in result.voters_outgoing:
                await self._handed_over()
        if applied is not None:
            return applied
        raise AmbiguousOutcome(f"no outcome for the membership change within {limit} s")

    async def _handed_over(self) -> None:
        """Wait until this node no longer leads (a leader that applied its own removal hands
        over first: see :meth:`remove`) or has stopped. Returns at once on any other node."""
        rt = self._rt
        watch = rt.watch
        while True:
            seen = watch.version
            if rt.stopped or rt.core.role != Role.LEADER:
                return
            await watch.wait_changed(seen)

    # -- leadership ----------------------------------------------------------------------------

    async def transfer_leadership(
        self, target: int, *, timeout: float | None = DEFAULT, forward: bool = True
    ) -> None:
        """Hand leadership to ``target`` and wait until this node sees it lead.

        Args:
            timeout: default two election timeouts.

        Raises:
            NotLeader: not the leader and not forwarding.
            ProposalDropped: forwarded, but the leader could not be reached
                (``"unreachable"``) or no longer leads (``"no-leader"``); nothing was started.
            Timeout: ``target`` did not become leader in time (the transfer may have been
                aborted by the core after an election timeout; a transfer whose caller timed
                out before the raft actor got to it is never started).
            NodeStopped: the node stopped meanwhile.
        """
        rt = self._rt
        rt.check_running()
        default = 2 * rt.config.election_timeout + rt.config.tick_interval * 2
        limit = _timeout(timeout, default)
        with trio.move_on_after(limit):
            if rt.watch.leader != target:
                future: Future[Any] = Future()
                rt.deadlines.add(math.inf, future, _never)
                rt.inbox_send.send_nowait(TransferReq(target, future))
                result = await self._wait(future)
                if isinstance(result, Forward):
                    if not (forward and rt.config.forward_proposals):
                        raise NotLeader(result.leader)
                    await rt.forward(result.leader, "transfer", encode(target))
            await self._wait_leader(lambda leader: leader == target)
            return
        raise Timeout(f"leadership did not move to node {target} within {limit} s")

    async def wait_for_leader(self, *, timeout: float | None = None) -> int:
        """Wait until a leader is known and return its id.

        Raises:
            Timeout: no leader within ``timeout`` seconds (None = wait forever).
            NodeStopped: the node stopped.
        """
        self._rt.check_running()
        limit = _timeout(timeout, None)
        with trio.move_on_after(limit):
            return await self._wait_leader(lambda leader: leader != 0)
        raise Timeout(f"no leader within {limit} s")

    async def _wait_leader(self, ok: Any) -> int:
        watch = self._rt.watch
        while True:
            self._rt.check_running()
            seen = watch.version
            if ok(watch.leader):
                return watch.leader
            await watch.wait_changed(seen)

    async def leader_changes(self) -> AsyncIterator[LeaderInfo]:
        """Yield the current leadership, then every change (leader or term) as it happens.

        Ends when the node stops. Intermediate states may be skipped if the consumer is slow;
        the latest state is always delivered.
        """
        watch = self._rt.watch
        last: tuple[int, int] | None = None
        while not self._rt.stopped:
            seen = watch.version
            current = (watch.leader, watch.term)
            if current != last:
                last = current
                yield LeaderInfo(watch.leader, watch.term, watch.leader == self.id)
            await watch.wait_changed(seen)

    def report_unreachable(self, peer: int) -> None:
        """Tell Raft that messages to ``peer`` cannot be delivered (wire a transport's
        ``on_unreachable`` callback here): the leader stops pipelining to it and probes instead.
        Safe to call from any task of the node's Trio run, also after the node stopped."""
        rt = self._rt
        if not rt.stopped:
            rt.inbox_send.send_nowait(UnreachableReq(peer))

    async def campaign(self) -> None:
        """Start an election now (tests, manual failover).

        In ``"lease"`` read mode a node that heard from a leader within the last election
        timeout (or restarted less than one ago) does not campaign (it logs why): its vote for
        itself would undercut the lease that leader's reads rely on. Use
        :meth:`transfer_leadership` to move leadership safely.

        Raises:
            NodeStopped: the node is stopped.
        """
        self._rt.check_running()
        self._rt.inbox_send.send_nowait(CampaignReq())
        await trio.lowlevel.checkpoint()


def unwrap_group(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The single real exception inside (nested) exception groups, ignoring ``Cancelled``;
    None when there are several."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for sub in exc.exceptions:
                walk(sub)
        elif not isinstance(exc, trio.Cancelled):
            leaves.append(exc)

    walk(group)
    return leaves[0] if len(leaves) == 1 else None


@asynccontextmanager
async def open_raft_node(
    config: Config,
    state_machine: StateMachine,
    *,
    data_dir: str,
    transport: Transport,
    fs: Any = None,
    disk: DiskExecutor | None = None,
    wal_disk: DiskExecutor | None = None,
) -> AsyncIterator[RaftNode]:
    """Start a Raft node and yield its :class:`RaftNode` once recovery is done.

    Recovery restores the newest valid snapshot into ``state_machine`` and replays the WAL
    tail; a fresh ``data_dir`` of an initial member bootstraps the cluster (see
    :class:`~trioraft.Config`). Then the transport, WAL, FSM, snapshotter and raft actors run
    until the block is left, which stops them all, closes the WAL and the transport's
    connections, and fails any request still waiting with
    :class:`~trioraft.errors.NodeStopped`. If any actor fails (a storage error, an exception
    in ``state_machine.apply``), the whole node stops and the block raises that exception.

    Args:
        config: the node's configuration.
        state_machine: the application (see :class:`~trioraft.statemachine.StateMachine`).
        data_dir: the node's directory (WAL in ``wal/``, snapshots in ``snap/``).
        transport: this node's transport (TCP or in-memory).
        fs: a ``trioraft.storage.fs.FileSystem`` (default: the real one; tests pass a
            ``SimulatedFileSystem``). ``Config.fsync=False`` wraps it so nothing is fsynced.
        disk: how blocking storage calls run (default: worker threads; ``INLINE_DISK`` for a
            simulated file system under a mock clock).
        wal_disk: how the WAL actor's writes and fsyncs run (default: like ``disk``; with the
            default worker threads, an ``AdaptiveDisk``: inline while the event loop has
            nothing else to run, else a lean thread hand-off, and always the thread while
            several nodes share the event loop). ``INLINE_DISK`` here always blocks the event
            loop for each group commit's fsync but saves the thread round trip;
            ``SerialThreadDisk()`` never blocks it. Give each node its own executor.

    Raises:
        StorageCorrupted: the data directory is damaged beyond automatic repair.
        StorageFailed: a write or fsync failed, or the data directory is locked by another
            process.
        ConfigError: an invalid configuration.
    """
    from trioraft.storage import fs as fsmod
    from trioraft.storage.recovery import recover

    executor: DiskExecutor = disk if disk is not None else ThreadDisk()
    filesystem = fs if fs is not None else fsmod.REAL_FS
    if not config.fsync:
        filesystem = fsmod.NoSyncFileSystem(filesystem)
    recovered, wal, store = await executor(
        functools.partial(
            recover,
            data_dir,
            fs=filesystem,
            retention=config.snapshot_retention,
            segment_bytes=config.wal_segment_bytes,
            prezero=config.wal_prezero,
        )
    )
    runtime: NodeRuntime | None = None
    try:
        runtime = NodeRuntime(
            config,
            state_machine,
            wal=wal,
            store=store,
            recovered=recovered,
            transport=transport,
            disk=executor,
            wal_disk=wal_disk,
        )
        try:
            async with trio.open_nursery() as nursery:
                await runtime.start(nursery)
                try:
                    yield RaftNode(runtime)
                finally:
                    runtime.shutdown()
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            only = unwrap_group(group)
            if only is None:
                raise
            raise only from None
    finally:
        if runtime is not None:
            runtime.shutdown()
        with trio.CancelScope(shield=True):
            await executor(wal.close)
