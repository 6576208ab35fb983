"""The raft actor: owns the sans-I/O core and its in-memory log; nothing else touches them
(except on this actor's behalf while it is idle, see :meth:`RaftActor.handle_now`).

Theory of operation: one loop. Wait for an inbox item or the next tick, whichever comes first;
then drain everything else queued without waiting (this is where concurrent proposals batch up
into one Ready); tick the core if a tick is due; then route each Ready:

* ``messages`` go to the transport at once (a ``SnapshotRequest`` starts a snapshot stream);
* hard state, entries, an incoming snapshot and ``persisted_messages`` go to the WAL actor as one
  :class:`PersistJob` - the held messages leave only after the WAL made the job durable
  (contract 1). A Ready that needs no write at all (no entries, no snapshot, at most a new
  commit index, which the WAL does not fsync on its own, like etcd's ``MustSync``) while no job
  is in flight is acknowledged at once: everything it depends on is already durable, and the
  round trip through the WAL actor would only add latency (the WAL actor still records the
  commit index). A Ready that does need a write, while no job is in flight, may be written
  and synced right here when the WAL actor and the event loop are idle
  (``WalActor.persist_now``), then acknowledged the same way;
* ``committed_entries`` go to the FSM actor (the core only hands out entries already persisted),
  or, while the FSM actor is idle, are applied right here (``FsmActor.apply_now``): by a leader
  before its write, so proposers are answered first, by a follower after routing its write;
* ``read_states`` resolve the read-barrier batch with the same context.

When the WAL actor acknowledges jobs (:class:`Persisted`), this actor mirrors them into the
in-memory log (``MemoryStorage``), releases their held messages, queues the FSM restore for an
installed snapshot, and calls ``core.on_persisted``. Nothing here blocks: every send to another
actor is ``send_nowait`` on an unbounded channel, so a slow disk or a slow state machine never
stalls elections or heartbeats.

Peer messages and proposals normally arrive through the inbox; while this actor is parked with
an empty inbox, the transport's reader or the proposer handles them itself
(:meth:`RaftActor.handle_now`), saving a scheduling round per hand-off on the replication round
trip.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from typing import Any, Protocol

import trio

from trioraft.core.messages import MESSAGE_TYPES, Message, SnapshotRequest
from trioraft.core.raft import RaftCore
from trioraft.core.ready import Ready, Role, SoftState
from trioraft.core.storage import MemoryStorage, SnapshotOutOfDate
from trioraft.core.types import Entry, HardState
from trioraft.errors import NotLeader, ProposalDropped
from trioraft.runtime.idle import receiver_parked
from trioraft.runtime.items import (
    Applied,
    ApplyBatch,
    CampaignReq,
    ConfChangeReq,
    Forward,
    HookJob,
    LocalSnapshot,
    Persisted,
    PersistJob,
    ProposeReq,
    ReadReq,
    Restored,
    RestoreJob,
    SnapshotStatus,
    TransferReq,
    UnreachableReq,
)
from trioraft.runtime.proposals import Future, ProposalTracker, ReadBatcher

__all__ = ["LeaderWatch", "RaftActor"]

log = logging.getLogger(__name__)

_MESSAGE_TYPES = frozenset(MESSAGE_TYPES)
#: inbox items handled before the actor emits a Ready
_MAX_DRAIN = 4096
#: the ticker's inbox item
_TICK = object()
#: the inbox item that re-raises, on the actor's task, a failure of :meth:`RaftActor.handle_now`
_FAILED = object()


class _Sender(Protocol):
    def send(self, msg: Message) -> None: ...


class LeaderWatch:
    """The latest known (leader, term, role), with a way to wait for changes.

    ``version`` increases on every change; :meth:`wait_changed` returns once it moved past the
    version the caller saw.
    """

    def __init__(self) -> None:
        self.leader = 0
        self.term = 0
        self.role = Role.FOLLOWER
        self.version = 0
        self._event = trio.Event()

    def update(self, leader: int, term: int, role: Role) -> None:
        """Record a change (a no-op if nothing changed)."""
        if (leader, term, role) == (self.leader, self.term, self.role):
            return
        self.leader, self.term, self.role = leader, term, role
        self.version += 1
        self._event.set()
        self._event = trio.Event()

    async def wait_changed(self, seen: int) -> None:
        """Wait until :attr:`version` differs from ``seen``."""
        while self.version == seen:
            await self._event.wait()


class RaftActor:
    """Drives the core; see the module docstring.

    Args:
        core: the Raft core (owned by this actor).
        storage: the core's in-memory log (written only by this actor).
        transport: where outgoing messages go.
        inbox: receive side of this actor's inbox.
        inbox_send: send side of the same inbox (the ticker posts ticks there).
        wal: send side of the WAL actor's channel.
        fsm: send side of the FSM actor's channel.
        proposals: proposals waiting for their entries to apply.
        reads: read-barrier batches.
        watch: leader/term/role observers.
        send_snapshot: starts streaming a snapshot to a follower.
        tick_interval: seconds per tick.
        forward: resolve refused requests with a :class:`Forward` to the leader.
        reissue_ticks: ticks after which unanswered read-index requests are issued again.
        persist_now: the WAL actor's synchronous shortcut (``WalActor.persist_now``), tried
            for a write when no job is in flight; None to always queue jobs.
        apply_now: the FSM actor's synchronous shortcut (``FsmActor.apply_now`` with
            ``report=False``), tried for committed entries; None to always queue them. For
            entries applied that way this actor tells the core itself (``on_applied``) rather
            than waiting for an :class:`Applied` report in its inbox.
    """

    def __init__(
        self,
        core: RaftCore,
        storage: MemoryStorage,
        transport: _Sender,
        inbox: trio.MemoryReceiveChannel[Any],
        inbox_send: trio.MemorySendChannel[Any],
        wal: trio.MemorySendChannel[Any],
        fsm: trio.MemorySendChannel[Any],
        proposals: ProposalTracker,
        reads: ReadBatcher,
        watch: LeaderWatch,
        send_snapshot: Callable[[SnapshotRequest], None],
        *,
        tick_interval: float,
        forward: bool = True,
        reissue_ticks: int = 10,
        persist_now: Callable[[PersistJob], bool] | None = None,
        apply_now: Callable[[tuple[Entry, ...]], bool] | None = None,
    ) -> None:
        if core.config.forward_proposals:
            # Proposals that reach a follower's core come back as NotLeader and the node
            # forwards them itself (Forward); a core forwarding them too would propose twice,
            # and what it returns (0) is no index to track.
            raise ValueError("the raft actor needs a core with forward_proposals off")
        self.core = core
        self.storage = storage
        self._id = core.id
        self._transport = transport
        self._inbox = inbox
        self._inbox_parked = receiver_parked(inbox)
        self._inbox_send = inbox_send
        self._wal = wal
        self._fsm = fsm
        self._proposals = proposals
        self._reads = reads
        self._watch = watch
        self._send_snapshot = send_snapshot
        self._tick = tick_interval
        #: when the next tick is due (the ticker's deadline; see _ticks_due)
        self._tick_due = math.inf
        # The core measures time in ticks. After a stall (the process paused, the event loop
        # blocked) the ticks missed are delivered, up to this many: a leader that slept through
        # an election timeout must see it pass, or its lease would outlive the others' patience
        # (they may have elected a new leader meanwhile) and a lease read could be stale. Beyond
        # two randomized election timeouts more ticks change nothing.
        self._most_ticks = 2 * core.config.election_ticks + 2
        self._forward = forward
        self._reads_queued = False
        self._reissue_ticks = reissue_ticks
        self._persist_now = persist_now
        self._apply_now = apply_now
        self._read_ticks = 0
        self._role = core.role
        self._restoring: PersistJob | None = None
        self._deferred: list[PersistJob] = []
        #: persist jobs handed to the WAL actor and not acknowledged yet
        self._wal_inflight = 0
        #: the term and vote of the newest hard state handed to the WAL actor (once its jobs
        #: are acknowledged, durable)
        self._durable_hs = HardState(core.term, core.vote, core.commit)
        #: True while :meth:`handle_now` runs (it must not nest: routing a Ready sends messages)
        self._stepping_now = False
        #: what :meth:`handle_now` caught, re-raised on the actor's own task
        self._failure: BaseException | None = None
        #: proposals gathered while draining the inbox, proposed together (see _handle)
        self._props: list[ProposeReq] = []
        #: items handled by :meth:`handle_now` so far, and how many of them were proposals
        self.handled_now = 0
        self.proposed_now = 0

    # -- the loop ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled."""
        core = self.core
        inbox = self._inbox
        self._watch.update(core.leader, core.term, core.role)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._ticker)
            task_status.started()
            while True:
                # One wait per batch; a tick arrives as an inbox item, so the hot loop needs no
                # cancel scope of its own.
                item = await inbox.receive()
                self._take_due_ticks()
                self._handle(item)
                for _ in range(_MAX_DRAIN):
                    try:
                        item = inbox.receive_nowait()
                    except trio.WouldBlock:
                        break
                    self._handle(item)
                if self._props:
                    self._propose_gathered()
                if self._reads_queued:
                    self._issue_reads()
                while core.has_ready():
                    self._route(core.ready())

    async def _ticker(self) -> None:
        # Only a wake-up: the actor takes the ticks due itself (_take_due_ticks), first thing
        # in every batch, so no queued item is ever handled ahead of a tick already due.
        self._tick_due = trio.current_time() + self._tick
        while True:
            await trio.sleep_until(self._tick_due)
            self._inbox_send.send_nowait(_TICK)
            # Until the actor has taken them the deadline stays put: wake it again a tick later.
            await trio.sleep_until(max(self._tick_due, trio.current_time() + self._tick))

    def _ticks_due(self, now: float) -> int:
        """How many ticks are due at ``now`` (missed ones included, bounded); they are taken."""
        due = self._tick_due
        if now < due:
            return 0
        # (a hair of slack: float steps of the deadline must not lose a tick that is due now)
        missed = int((now - due) / self._tick + 1e-9)
        self._tick_due = due + self._tick * (missed + 1)
        return 1 + min(missed, self._most_ticks)

    def _take_due_ticks(self) -> None:
        # Time passes in the core only through ticks. Taking them here, before anything else a
        # batch (or handle_now) handles, means that after a stall (a paused process, a blocked
        # loop) no item, a read included, sees the core's clock from before the stall.
        now = trio.current_time()
        if now >= self._tick_due:
            for _ in range(self._ticks_due(now)):
                self._on_tick()

    def _on_tick(self) -> None:
        self.core.tick()
        self._read_ticks += 1
        if self._read_ticks >= self._reissue_ticks:
            self._read_ticks = 0
            if self._reads.issued:
                # A forwarded read-index request or its answer may have been lost: ask again
                # (answers to the old contexts are ignored).
                self._reads.requeue_all()
                self._reads_queued = True

    # -- inbox ---------------------------------------------------------------------------------

    def handle_now(self, item: Any) -> bool:
        """Handle an inbox item (a peer's message, a proposal) and route the resulting Ready on
        the caller's task (the transport's reader, a proposer), if this actor is idle: parked
        waiting for its inbox, with nothing queued. Otherwise (or while another ``handle_now``
        runs) do nothing and return False; the caller queues the item as usual.

        Why: handing an item over costs a wake-up and a scheduling round of the event loop
        before the actor runs, and a proposal's round trip has three such hand-offs on its
        critical path (the proposal, the follower's append, the leader's acknowledgement).
        While the actor is parked nothing else touches the core, so handling the item here is
        exactly what the actor would do next, one round sooner. Under load the inbox is rarely
        empty and items take the queue, where the actor batches them into one Ready.

        A failure (say the WAL failing in an inline persist) is not raised into the caller:
        it is handed to the actor, which raises it on its own task, stopping the node as if
        it had happened there (a ``BaseException`` such as ``KeyboardInterrupt`` is handed over
        and also propagates).

        Returns:
            True if the item was handled (or its failure handed to the actor).
        """
        if self._stepping_now or not self._inbox_parked():
            return False
        core = self.core
        self._stepping_now = True
        self.handled_now += 1
        if type(item) is ProposeReq:
            self.proposed_now += 1
        try:
            self._take_due_ticks()
            self._handle(item)
            if self._props:
                self._propose_gathered()
            if self._reads_queued:
                self._issue_reads()
            while core.has_ready():
                self._route(core.ready())
        except BaseException as exc:
            # Whatever it is, the node must stop: a Ready taken from the core but not routed
            # must never be followed by another (it could acknowledge writes never made).
            self._failure = exc
            self._inbox_send.send_nowait(_FAILED)
            if not isinstance(exc, Exception):
                raise  # KeyboardInterrupt and the like also go their usual way
        finally:
            self._stepping_now = False
        return True

    def _handle(self, item: Any) -> None:
        if type(item) is ProposeReq:
            # Gathered, and proposed together when the drain ends or anything else comes
            # (so every other item sees the core exactly as if each were proposed at once).
            if not item.future.abandoned:  # the proposer gave up: never propose it
                self._props.append(item)
            return
        if self._props:
            self._propose_gathered()
        core = self.core
        if type(item) in _MESSAGE_TYPES:
            core.step(item)
        elif item is _TICK:
            self._take_due_ticks()
        elif item is _FAILED:
            assert self._failure is not None
            raise self._failure
        elif isinstance(item, Persisted):
            self._persisted(item)
        elif isinstance(item, Applied):
            core.on_applied(item.index)
        elif isinstance(item, Restored):
            self._restored()
        elif isinstance(item, ReadReq):
            self._reads.queue(item.future)
            self._reads_queued = True
        elif isinstance(item, ConfChangeReq):
            if item.future.abandoned:
                return
            change = functools.partial(core.propose_conf_change, item.change)
            self._propose_with(item.future, change)
        elif isinstance(item, SnapshotStatus):
            core.report_snapshot(item.peer, item.ok)
        elif isinstance(item, LocalSnapshot):
            self._local_snapshot(item)
        elif isinstance(item, TransferReq):
            if item.future.abandoned:
                return  # the caller gave up (timeout, cancellation): never start it
            try:
                core.transfer_leadership(item.target)
            except NotLeader as exc:
                self._refuse(item.future, exc)
            except Exception as exc:
                item.future.set_exception(exc)
            else:
                item.future.set_result(None)
        elif isinstance(item, UnreachableReq):
            core.report_unreachable(item.peer)
        elif isinstance(item, CampaignReq):
            core.campaign()
        else:
            raise TypeError(f"raft actor: unexpected inbox item {item!r}")

    def _propose_gathered(self) -> None:
        # One core call for the gathered proposals: one leadership check, one self-ack and
        # one set of entry objects for all of them, instead of per proposal.
        props, self._props = self._props, []
        core = self.core
        if len(props) > 1:
            try:
                first = core.propose_batch([p.data for p in props])
            except (NotLeader, ProposalDropped):
                pass  # each proposal below gets its own outcome (one may fit where all did not)
            else:
                term = core.term
                add = self._proposals.add
                for i, p in enumerate(props):
                    add(first + i, term, p.future)
                return
        for p in props:
            self._propose_with(p.future, functools.partial(core.propose, p.data))

    def _propose_with(self, future: Future[Any], propose: Callable[[], int]) -> None:
        # One proposal's outcome: tracked at its index, refused (Forward / NotLeader) or dropped.
        try:
            index = propose()
        except NotLeader as exc:
            self._refuse(future, exc)
        except ProposalDropped as exc:
            future.set_exception(exc)
        else:
            self._proposals.add(index, self.core.term, future)

    def _refuse(self, future: Any, exc: NotLeader) -> None:
        leader = exc.leader_hint or 0
        if self._forward and leader and leader != self._id:
            future.set_result(Forward(leader))
        else:
            future.set_exception(exc)

    def _issue_reads(self) -> None:
        batch = self._reads.take_batch()
        self._reads_queued = False
        if batch is None:
            return
        ctx, _ = batch
        try:
            self.core.read_index(ctx)
        except ProposalDropped:
            # No leader known yet: keep the batch and retry when one appears (the caller's
            # read timeout bounds the wait).
            self._reads.requeue(ctx)

    def _persisted(self, item: Persisted) -> None:
        self._wal_inflight -= sum(1 for job in item.jobs if not job.acked)
        if self._restoring is not None:
            self._deferred.extend(item.jobs)
            return
        self._ack_jobs(list(item.jobs))

    def _acked_now(self, job: PersistJob) -> None:
        # A job acknowledged on this task (``acked``: never counted in flight), as _persisted
        # would take it.
        if self._restoring is not None:
            self._deferred.append(job)
        else:
            self._ack_jobs([job])

    def _ack_jobs(self, jobs: list[PersistJob]) -> None:
        # Mirror durable jobs into the in-memory log, release their held messages, acknowledge.
        # A job installing a snapshot pauses this until the FSM actor restored the state
        # machine from it (the core's contract for on_persisted); later jobs wait behind it.
        storage = self.storage
        number = 0
        for i, job in enumerate(jobs):
            if job.snapshot is not None:
                if number:
                    self.core.on_persisted(number)
                    number = 0
                try:
                    storage.apply_snapshot(job.snapshot)
                except SnapshotOutOfDate:
                    log.warning(
                        "node %d: snapshot %d to install is older than the log's; skipped",
                        self._id,
                        job.snapshot.index,
                    )
                if job.hard_state is not None:
                    storage.set_hard_state(job.hard_state)
                if job.entries:
                    storage.append(job.entries)
                self._fsm.send_nowait(RestoreJob(job.snapshot))
                self._restoring = job
                self._deferred[:0] = jobs[i + 1 :]
                return
            if job.hard_state is not None:
                storage.set_hard_state(job.hard_state)
            if job.entries:
                storage.append(job.entries)
            for m in job.messages:
                self._send(m)
            number = job.number
        if number:
            self.core.on_persisted(number)

    def _restored(self) -> None:
        job = self._restoring
        if job is None:
            return
        self._restoring = None
        for m in job.messages:
            self._send(m)
        self.core.on_persisted(job.number)
        deferred, self._deferred = self._deferred, []
        if deferred:
            self._ack_jobs(deferred)

    def _local_snapshot(self, item: LocalSnapshot) -> None:
        storage = self.storage
        meta = item.meta
        current = storage.snapshot().index
        if meta.index > current:
            storage.set_snapshot(meta)
            compact_to = min(item.compact_to, meta.index)
            if compact_to >= storage.first_index():
                storage.compact(compact_to)
                log.debug(
                    "node %d: log compacted to %d (snapshot %d)", self._id, compact_to, meta.index
                )
        item.done.set_result(None)

    # -- Ready routing -------------------------------------------------------------------------

    def _route(self, rd: Ready) -> None:
        if rd.soft_state is not None:
            self._soft_state(rd.soft_state)
        for m in rd.messages:
            self._send(m)
        committed = rd.committed_entries
        # A leader answers its proposers before its next write rather than behind it; a
        # follower routes its write first (written and acknowledged, if done inline), then
        # applies.
        applied = bool(
            committed
            and self._role == Role.LEADER
            and self._apply_now is not None
            and self._apply_now(committed)
        )
        if rd.needs_ack:  # entries, snapshot, hard state or messages held for the persist
            hs = rd.hard_state
            durable = self._durable_hs
            if (
                self._wal_inflight == 0
                and not rd.entries
                and rd.snapshot is None
                and not rd.sync_hard_state
                and (hs is None or (hs.term == durable.term and hs.vote == durable.vote))
            ):
                # Nothing is in flight and this Ready needs no write (at most the commit index
                # moved, which the WAL defers anyway): acknowledge it now instead of a round
                # trip through the WAL actor, which still records the commit index.
                job = PersistJob(rd.number, hs, (), None, rd.persisted_messages, acked=True)
                if hs is not None and not (
                    self._persist_now is not None and self._persist_now(job)
                ):
                    self._wal.send_nowait(job)
                self._acked_now(job)
            elif (
                self._persist_now is not None
                and self._wal_inflight == 0
                and rd.snapshot is None
                # A leader's committed entries are applied (and their proposers answered)
                # before its next write rather than behind it (by the FSM actor when they
                # were not applied above).
                and not (committed and not applied and self._role == Role.LEADER)
                and self._persist_now(
                    job := PersistJob(
                        rd.number,
                        hs,
                        rd.entries,
                        None,
                        rd.persisted_messages,
                        acked=True,
                        sync=rd.sync_hard_state,
                    )
                )
            ):
                # Written and synced on this task (the WAL actor was idle, and so was the
                # event loop): acknowledge like a job the WAL actor reports back.
                if hs is not None:
                    self._durable_hs = hs
                self._acked_now(job)
            else:
                self._wal_inflight += 1
                if hs is not None:
                    self._durable_hs = hs
                self._wal.send_nowait(
                    PersistJob(
                        number=rd.number,
                        hard_state=hs,
                        entries=rd.entries,
                        snapshot=rd.snapshot,
                        messages=rd.persisted_messages,
                        sync=rd.sync_hard_state,
                    )
                )
        if committed and not applied:
            if self._apply_now is not None and self._apply_now(committed):
                applied = True
            else:
                self._fsm.send_nowait(ApplyBatch(committed))
        for rs in rd.read_states:
            self._reads.resolved(rs.context, rs.index)
        if rd.hard_state is not None or rd.soft_state is not None:
            self._watch.update(self.core.leader, self.core.term, self.core.role)
        if applied:
            # Applied on this task: what an Applied report would do once this actor woke up
            # for it, without the wake-up (and without handle_now refusing meanwhile).
            self.core.on_applied(committed[-1].index)

    def _send(self, m: Message) -> None:
        if isinstance(m, SnapshotRequest):
            self._send_snapshot(m)
        else:
            self._transport.send(m)

    def _soft_state(self, ss: SoftState) -> None:
        old_role = self._role
        self._role = ss.role
        term = self.core.term
        if ss.role == Role.LEADER and old_role != Role.LEADER:
            log.info("node %d: became leader at term %d", self._id, term)
            self._fsm.send_nowait(HookJob("on_leader_start", (term,)))
        elif old_role == Role.LEADER and ss.role != Role.LEADER:
            log.info("node %d: stepped down at term %d (leader now %d)", self._id, term, ss.leader)
            self._fsm.send_nowait(HookJob("on_leader_stop", (term,)))
        # Reads issued to a previous leader may never be answered: re-issue them.
        self._reads.requeue_all()
        self._reads_queued = True
