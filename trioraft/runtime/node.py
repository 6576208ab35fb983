"""Wiring of one node: recovery, the five actors, and the transport's inbound handler.

Start-up (all before any actor runs):

1. ``storage.recover(data_dir)`` returns the newest usable snapshot, the hard state and the WAL
   tail after the snapshot (contract 3), with the WAL and the snapshot store opened.
2. The newest snapshot (if any) is restored into the state machine; its index becomes the
   applied index.
3. A fresh data directory of an initial member is *bootstrapped* the way etcd does it: one
   membership-change entry per initial member (term 1, indexes 1..n, identical on every initial
   member) and a hard state committing them, written to the WAL. The log is then
   self-describing: a node that joins later and replays it from index 1 learns the original
   members too.
4. The in-memory log is rebuilt (snapshot, hard state, entries) and the core is created with
   ``applied`` = the snapshot index, so the core hands out exactly the committed entries after
   it and the FSM applies each index once.
5. Transport, WAL actor, FSM actor, snapshotter and raft actor start in one nursery, each with a
   ``nursery.start`` handshake. Any of them failing cancels the others: the node fails whole.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import math
import random
from typing import Any

import trio

from trioraft.codec import decode, encode
from trioraft.config import Config
from trioraft.core.bootstrap import bootstrap_state
from trioraft.core.confchange import apply_conf_change, restore
from trioraft.core.messages import Message, SnapshotRequest
from trioraft.core.raft import RaftCore
from trioraft.core.storage import MemoryStorage
from trioraft.core.types import (
    ConfChange,
    ConfState,
    Entry,
    HardState,
    SnapshotMeta,
)
from trioraft.errors import (
    AmbiguousOutcome,
    NodeStopped,
    NotLeader,
    ProposalDropped,
    RaftError,
    Timeout,
)
from trioraft.runtime.disk import AdaptiveDisk, DiskExecutor, ThreadDisk
from trioraft.runtime.fsm_actor import FsmActor
from trioraft.runtime.proposals import (
    AppliedWaiters,
    Deadlines,
    ProposalTracker,
    ReadBatcher,
    Slots,
)
from trioraft.runtime.raft_actor import LeaderWatch, RaftActor
from trioraft.runtime.snapshotter import Snapshotter, SnapshotterConfig
from trioraft.runtime.transport.base import (
    CallFailed,
    ClientRequest,
    ClientResponse,
    PeerUnreachable,
    Transport,
)
from trioraft.runtime.wal_actor import WalActor
from trioraft.statemachine import StateMachine

__all__ = ["NodeRuntime", "conf_after"]

log = logging.getLogger(__name__)

#: Inbound peer messages queued beyond this are dropped (Raft tolerates loss).
MAX_INBOX_MESSAGES = 8192


def conf_after(conf: ConfState, cc: ConfChange) -> ConfState:
    """The configuration after applying ``cc`` to ``conf`` (the core's rules).

    Raises:
        ConfChangeError: the change is invalid for ``conf``.
    """
    return apply_conf_change(restore(conf), cc).to_conf_state()


class NodeRuntime:
    """Everything one node runs. Built by :func:`trioraft.open_raft_node`; users see
    :class:`trioraft.RaftNode`, a thin facade over this object.

    Also the transport's :class:`~trioraft.runtime.transport.base.InboundHandler`.
    """

    def __init__(
        self,
        config: Config,
        state_machine: StateMachine,
        *,
        wal: Any,
        store: Any,
        recovered: Any,
        transport: Transport,
        disk: DiskExecutor,
        wal_disk: DiskExecutor | None = None,
    ) -> None:
        self.config = config
        self.id = config.id
        self.state_machine = state_machine
        self.wal = wal
        self.store = store
        self.transport = transport
        self._adopt_stream_settings(config, transport)
        self.disk = disk
        self._recovered = recovered
        self.stopped = False
        self.failure: BaseException | None = None
        self._request_ids = itertools.count(1)

        self.inbox_send, self.inbox_recv = trio.open_memory_channel[Any](math.inf)
        self.wal_send, self.wal_recv = trio.open_memory_channel[Any](math.inf)
        self.fsm_send, self.fsm_recv = trio.open_memory_channel[Any](math.inf)
        self.proposals = ProposalTracker()
        self.reads = ReadBatcher(self.id)
        self.waiters = AppliedWaiters()
        self.watch = LeaderWatch()
        self.proposal_slots = Slots(config.max_pending_proposals)
        self.deadlines = Deadlines()
        self.messages_dropped = 0
        #: this node's own seeded randomness (runtime decisions only; the core has its own)
        self.rng = random.Random(config.id if config.seed is None else config.seed)

        snap = recovered.snapshot
        self.snapshotter = Snapshotter(
            self.id,
            SnapshotterConfig(
                snapshot_entries=config.snapshot_entries,
                catchup_entries=config.catchup_entries,
                snapshot_interval=config.snapshot_interval,
                snapshot_margin=config.snapshot_margin,
                chunk_bytes=config.snapshot_chunk_bytes,
                first_interval_fraction=0.5 + 0.5 * self.rng.random(),
            ),
            store,
            disk,
            self.fsm_send,
            self.wal_send,
            self.inbox_send,
            transport,
            lambda: self.fsm.applied,
            snap,
        )
        self.fsm = FsmActor(
            self.id,
            state_machine,
            store,
            disk,
            self.fsm_recv,
            self.inbox_send,
            self.proposals,
            self.waiters,
            conf_after,
            transport,
            on_applied=self.snapshotter.on_applied,
            on_installed=self.snapshotter.on_installed,
            static_peers=config.peers,
            chunk_bytes=config.snapshot_chunk_bytes,
            leader=lambda: self.watch.leader,
        )
        # With the default worker threads, the WAL's group commits run inline when the event
        # loop has nothing else to do and in a lean thread hand-off otherwise (AdaptiveDisk).
        self._wal_disk: DiskExecutor = wal_disk or (
            AdaptiveDisk() if type(disk) is ThreadDisk else disk
        )
        self.wal_actor = WalActor(
            self.id,
            wal,
            self._wal_disk,
            self.wal_recv,
            self.inbox_send,
            snapshot_index=0 if snap is None else snap.index,
            hard_state=recovered.hard_state,
        )
        self.raft: RaftActor | None = None
        self.storage: MemoryStorage | None = None

    # -- start-up ------------------------------------------------------------------------------

    async def start(self, nursery: trio.Nursery) -> None:
        """Recover the state machine and the log, then start every actor in ``nursery``."""
        if isinstance(self._wal_disk, AdaptiveDisk):
            self._wal_disk.attach()
        cfg = self.config
        rec = self._recovered
        self._recovered = None
        snap = rec.snapshot
        hard_state: HardState = rec.hard_state
        entries: list[Entry] = list(rec.entries)

        # Peers known from the configuration; the address book grows as changes apply.
        for pid, addr in cfg.peers.items():
            if pid != self.id:
                self.transport.add_peer(pid, addr)

        if snap is not None:
            await self.fsm.load_snapshot(snap, install=False)
            log.info(
                "node %d: restored snapshot %d (term %d) from %s",
                self.id,
                snap.index,
                snap.term,
                snap.path,
            )
        elif hard_state == HardState() and not entries and not cfg.join:
            entries, hard_state = bootstrap_state(cfg.initial_voters())
            await self.disk(self.wal.save, entries, hard_state)
            self.wal_actor.note_written(hard_state)
            log.info(
                "node %d: bootstrapped a new cluster with voters %s",
                self.id,
                sorted(cfg.peers or {self.id}),
            )

        storage = MemoryStorage()
        applied = 0
        if snap is not None:
            meta = SnapshotMeta(index=snap.index, term=snap.term, conf=snap.conf)
            storage.apply_snapshot(meta)
            applied = snap.index
        else:
            self.fsm.set_start(0, 0, ConfState(), dict(cfg.peers))
        storage.set_hard_state(hard_state)
        storage.append(entries)
        storage.set_conf_state(snap.conf if snap is not None else ConfState())
        self.storage = storage

        core = RaftCore(cfg.to_core_config(applied=applied), storage)
        self.raft = RaftActor(
            core,
            storage,
            self.transport,
            self.inbox_recv,
            self.inbox_send,
            self.wal_send,
            self.fsm_send,
            self.proposals,
            self.reads,
            self.watch,
            self.snapshotter.send_snapshot,
            tick_interval=cfg.tick_interval,
            forward=cfg.forward_proposals,
            reissue_ticks=cfg.election_ticks,
            persist_now=(
                self.wal_actor.persist_now if isinstance(self._wal_disk, AdaptiveDisk) else None
            ),
            apply_now=functools.partial(self.fsm.apply_now, report=False),
        )
        log.info(
            "node %d: starting at term %d, commit %d, applied %d, log [%d, %d]",
            self.id,
            hard_state.term,
            hard_state.commit,
            applied,
            storage.first_index(),
            storage.last_index(),
        )
        await nursery.start(self.deadlines.run)
        await nursery.start(self._serve_transport)
        await nursery.start(self.wal_actor.run)
        await nursery.start(self.fsm.run)
        await nursery.start(self.snapshotter.run)
        await nursery.start(self.raft.run)

    async def _serve_transport(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        await self.transport.serve(self, task_status=task_status)

    def shutdown(self, error: BaseException | None = None) -> None:
        """Fail everything still waiting (idempotent)."""
        if self.stopped:
            return
        self.stopped = True
        if isinstance(self._wal_disk, AdaptiveDisk):
            with contextlib.suppress(RuntimeError):  # outside the Trio run: nothing to undo
                self._wal_disk.detach()
        stop = NodeStopped(f"node {self.id} stopped" + (f": {error!r}" if error else ""))
        self.proposals.fail_all(stop)
        self.reads.fail_all(stop)
        # Every proposal's future is also held by the deadline timer, including one that a
        # dying actor took from its inbox and never handed on: fail whatever is left.
        self.deadlines.fail_all(stop)
        # Requests still queued for the raft actor will never be handled: fail them too (a
        # proposer waiting without a timeout would otherwise wait forever).
        while True:
            try:
                item = self.inbox_recv.receive_nowait()
            except (trio.WouldBlock, trio.ClosedResourceError, trio.EndOfChannel):
                break
            future = getattr(item, "future", None)
            if future is not None:
                future.set_exception(stop)
        self.waiters.wake_all()
        self.watch.update(0, self.watch.term, self.watch.role)

    def _adopt_stream_settings(self, config: Config, transport: Transport) -> None:
        # The snapshot-streaming settings live in Config; a transport built without its own
        # takes them, so that setting them in Config is enough.
        adopt = getattr(transport, "adopt_stream_settings", None)
        if adopt is None:
            return
        opts = config.transport_options()
        if not adopt(opts["stream_options"], opts["snapshot_rate"]):
            log.warning(
                "node %d: the transport was given its own snapshot-stream options; Config's "
                "snapshot window, throttle and stall timeout are not used (pass "
                "**config.transport_options() to the transport, or neither)",
                self.id,
            )

    def check_running(self) -> None:
        """Raise :class:`NodeStopped` if the node is stopped."""
        if self.stopped:
            raise NodeStopped(f"node {self.id} is stopped")

    @property
    def core(self) -> RaftCore:
        """The Raft core (after start)."""
        assert self.raft is not None, "node not started"
        return self.raft.core

    # -- InboundHandler --------------------------------------------------------------------------

    def deliver(self, msg: Message) -> None:
        """Hand a peer's message to the raft actor; drops it when the inbox is full."""
        if self.stopped:
            return
        if self.raft is not None and self.raft.handle_now(msg):
            return
        if self.inbox_send.statistics().current_buffer_used >= MAX_INBOX_MESSAGES:
            self.messages_dropped += 1
            return
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            self.inbox_send.send_nowait(msg)

    async def begin_snapshot_receive(
        self, src: int, index: int, term: int, conf: ConfState, user_meta: bytes
    ) -> Any:
        """Open a builder for a snapshot streamed from ``src``."""
        self.check_running()
        return await self.snapshotter.begin_receive(src, index, term, conf)

    def snapshot_received(self, stored: Any, request: SnapshotRequest) -> None:
        """The snapshot's files are durable in the store: let the core decide what to do."""
        if self.stopped:
            return
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            self.inbox_send.send_nowait(request)

    async def handle_call(self, request: ClientRequest) -> ClientResponse:
        """Serve a request forwarded by another node's runtime (this node is the leader)."""
        from trioraft.node import RaftNode

        node = RaftNode(self)
        rid = request.request_id
        try:
            if request.kind == "propose":
                result = await node.propose(request.payload, forward=False)
                payload = encode_result(result)
            elif request.kind == "conf-change":
                conf = await node.change_membership(
                    decode(request.payload, ConfChange), forward=False
                )
                payload = encode(conf)
            elif request.kind == "transfer":
                target: int = decode(request.payload, int)
                await node.transfer_leadership(target, forward=False)
                payload = b""
            else:
                return ClientResponse(
                    ok=False, error="bad-request", detail=f"unknown kind {request.kind!r}"
                )
        except NotLeader as exc:
            return ClientResponse(
                ok=False, error="not-leader", leader_hint=exc.leader_hint or 0, request_id=rid
            )
        except ProposalDropped as exc:
            return ClientResponse(ok=False, error="dropped", detail=exc.reason, request_id=rid)
        except AmbiguousOutcome as exc:
            return ClientResponse(ok=False, error="ambiguous", detail=str(exc), request_id=rid)
        except Timeout as exc:
            return ClientResponse(ok=False, error="timeout", detail=str(exc), request_id=rid)
        except NodeStopped as exc:
            return ClientResponse(ok=False, error="stopped", detail=str(exc), request_id=rid)
        except Exception as exc:
            log.exception("node %d: forwarded %s failed", self.id, request.kind)
            return ClientResponse(ok=False, error="internal", detail=repr(exc), request_id=rid)
        return ClientResponse(ok=True, payload=payload, request_id=rid)

    # -- forwarding ----------------------------------------------------------------------------

    async def forward(self, leader: int, kind: str, payload: bytes) -> bytes:
        """Send a request to the leader's runtime and return its result payload, following
        up to three leader hints.

        Raises:
            ProposalDropped, AmbiguousOutcome, Timeout, NodeStopped: as the leader answered;
                ``ProposalDropped("unreachable")`` when it could not be reached;
                ``ProposalDropped("no-leader")`` when it was not the leader and its hint led
                nowhere new (none, this node, or still no leader after three hops).
        """
        hops = 0
        while True:
            request = ClientRequest(kind=kind, payload=payload, request_id=next(self._request_ids))
            try:
                resp = await self.transport.call(leader, request)
            except CallFailed as exc:
                if exc.sent:
                    raise AmbiguousOutcome(f"forwarded to node {leader}: {exc.detail}") from exc
                raise ProposalDropped("unreachable", f"node {leader}: {exc.detail}") from exc
            except PeerUnreachable as exc:
                raise ProposalDropped("unreachable", f"node {leader}: {exc}") from exc
            if resp.ok:
                return resp.payload
            if resp.error == "not-leader":
                hint = resp.leader_hint
                hops += 1
                if hint and hint != leader and hint != self.id and hops < 3:
                    leader = hint
                    continue
                # Refused, so certainly not done. Not NotLeader: callers only get that with
                # forwarding off, and its hint could name this very node (whose core does not
                # lead yet, or no longer).
                where = (
                    "names no leader"
                    if not hint
                    else "names this node as leader"
                    if hint == self.id
                    else f"names node {hint} as leader (after {hops} hops)"
                )
                raise ProposalDropped("no-leader", f"node {leader} is not the leader and {where}")
            raise error_from_response(resp)


def encode_result(result: Any) -> bytes:
    """Encode an apply result for a forwarded proposal (CBOR).

    Raises:
        RaftError: the result cannot be encoded.
    """
    try:
        return encode(result, unstructure_as=Any)
    except Exception as exc:
        raise RaftError(
            f"apply result of type {type(result).__name__} cannot be sent to the proposer's "
            f"node: {exc}"
        ) from exc


def decode_result(payload: bytes) -> Any:
    """Decode a forwarded proposal's result."""
    return decode(payload, Any)


def error_from_response(resp: ClientResponse) -> RaftError:
    """The exception a failed :class:`ClientResponse` stands for."""
    if resp.error == "dropped":
        return ProposalDropped(resp.detail or "dropped", "at the leader")
    if resp.error == "ambiguous":
        return AmbiguousOutcome(resp.detail)
    if resp.error == "timeout":
        return Timeout(resp.detail)
    if resp.error == "stopped":
        # The leader stopped while the request was in flight: it may have been appended.
        return AmbiguousOutcome(f"the leader stopped: {resp.detail}")
    return RaftError(f"forwarded request failed: {resp.error}: {resp.detail}")
