"""The Raft state machine: :class:`RaftCore`.

Theory of operation. The core is a deterministic function of its inputs: method calls
(:meth:`~RaftCore.tick`, :meth:`~RaftCore.step`, :meth:`~RaftCore.propose`, ...) mutate it, and
the runtime collects the consequences with :meth:`~RaftCore.ready`. It never performs I/O: log
entries, the hard state and received snapshots are *handed out* in a numbered :class:`Ready`
and become part of the durable log only when the runtime acknowledges that number with
:meth:`~RaftCore.on_persisted` (etcd's asynchronous storage writes). Everything that must not
happen before a write is durable waits for that acknowledgement:

* replies that promise durability (AppendResponse, VoteResponse) travel in
  ``Ready.persisted_messages``;
* the node's own acknowledgements (a leader counting its own log towards commit, a candidate
  counting its own vote) are stepped internally only on acknowledgement;
* committed entries are handed out for application only once they are durable locally.

Role changes all happen in the ``_become_*`` methods; message handling is split by role in
``_step_leader``, ``_step_candidate`` and ``_step_follower`` after the term rules common to
all roles in ``_step``. Membership changes take effect when the runtime reports the
conf-change entry applied (:meth:`~RaftCore.on_applied`), as in etcd.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence

import attrs

from trioraft.core import confchange
from trioraft.core.confchange import ConfChangeError
from trioraft.core.config import CoreConfig, ReadOnlyOption
from trioraft.core.encoding import DecodeError, decode_conf_change, encode_conf_change
from trioraft.core.log import RaftLog
from trioraft.core.messages import (
    AppendRequest,
    AppendResponse,
    HeartbeatRequest,
    HeartbeatResponse,
    Message,
    ProposalForward,
    ReadIndexRequest,
    ReadIndexResponse,
    SnapshotRequest,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from trioraft.core.progress import Progress, ProgressState
from trioraft.core.quorum import VoteResult
from trioraft.core.read_only import ReadOnly
from trioraft.core.ready import CoreStatus, ProgressInfo, ReadState, Ready, Role, SoftState
from trioraft.core.rng import SplitMix64
from trioraft.core.storage import (
    Compacted,
    LogStorage,
    SnapshotTemporarilyUnavailable,
    Unavailable,
)
from trioraft.core.tracker import ProgressTracker, TrackerConfig
from trioraft.core.types import (
    NONE,
    ConfChange,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    NodeId,
    SnapshotMeta,
    entries_size,
)
from trioraft.errors import ConfigError, NotLeader, ProposalDropped

__all__ = ["RaftCore"]

logger = logging.getLogger(__name__)

_GOLDEN = 0x9E3779B97F4A7C15
# Heartbeat contexts of lease tracking (ReadIndex contexts start with b"ri").
_LEASE_CONTEXT = b"ls"


@attrs.define
class _ReadyRecord:
    """What acknowledging one Ready makes durable, and what then becomes true."""

    number: int
    last_entry: tuple[int, int] | None  # (index, term) of the last entry handed out
    snapshot_index: int | None
    self_messages: list[Message]
    #: the hard state's commit index, when this Ready had to be synced (None otherwise)
    durable_commit: int | None = None
    #: tell the leader the durable commit once acknowledged (it covers a conf change)
    report_commit: bool = False


def _payload_size(entries: list[Entry] | tuple[Entry, ...]) -> int:
    return sum(len(e.data) for e in entries)


class RaftCore:
    """A sans-I/O Raft node.

    Args:
        config: the node's configuration (validated here).
        storage: read-only view of what the runtime has made durable.

    Raises:
        ConfigError: invalid ``config``, or an inconsistent configuration in ``storage``.
    """

    def __init__(self, config: CoreConfig, storage: LogStorage) -> None:
        config.validate()
        self._config = config
        self._id: NodeId = config.id
        self._rng = SplitMix64(config.seed ^ ((config.id * _GOLDEN) & ((1 << 64) - 1)))
        self._log = RaftLog(storage, config.committed_bytes_budget)
        self._trk = ProgressTracker(config.max_inflight_msgs, config.max_inflight_bytes)
        hs, cs = storage.initial_state()
        try:
            cfg = confchange.restore(cs)
        except ConfChangeError as exc:
            raise ConfigError("storage", f"inconsistent configuration {cs}: {exc}") from exc
        self._trk.set_config(cfg, self._log.last_index())

        self._term = 0
        self._vote: NodeId = NONE
        self._lead: NodeId = NONE
        self._role = Role.FOLLOWER
        if hs != HardState():
            self._load_state(hs)
        if config.applied > self._log.applied:
            applied = min(config.applied, self._log.committed)
            if applied != config.applied:
                logger.warning(
                    "%d: configured applied index %d is beyond the commit index %d; using %d",
                    self._id,
                    config.applied,
                    self._log.committed,
                    applied,
                )
            self._log.applying = self._log.applied = applied

        self._msgs: list[Message] = []
        self._msgs_after_persist: list[Message] = []
        self._self_after_persist: list[Message] = []
        #: entries slices by start index while _bcast_append runs (None otherwise)
        self._bcast_entries: dict[int, tuple[Entry, ...]] | None = None
        self._read_states: list[ReadState] = []
        self._read_only = ReadOnly()
        self._pending_reads: list[tuple[NodeId, bytes]] = []
        self._pending_conf: deque[tuple[int, ConfChange]] = deque()
        self._unacked: deque[_ReadyRecord] = deque()
        self._ready_number = 0
        self._acked_number = 0
        self._needs_bcast = False
        self._lead_transferee: NodeId = NONE
        self._pending_conf_index = 0
        #: while a leader removed from the voters waits to hand over: the index of the change
        #: that removed it (0 otherwise; see _switch_to_config)
        self._leaving_index = 0
        #: index of this leader's first entry (its no-op)
        self._term_start_index = 0
        self._uncommitted_size = 0
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_election_timeout = config.election_ticks
        # Lease reads (see _lease_valid). ``_clock`` counts every tick of this incarnation.
        # ``_leader_contact_elapsed`` counts ticks since we last heard from a leader, whatever
        # the term changes since; in LEASE_BASED mode a (re)started node counts as having just
        # heard from one, because before the crash it may have acknowledged a leader whose
        # lease depends on our refusing votes for an election timeout.
        lease = config.read_only == ReadOnlyOption.LEASE_BASED
        self._clock = 0
        self._leader_contact_elapsed = 0 if lease else config.election_ticks
        self._lease_acks: dict[NodeId, int] = {}
        self._lease_reads: list[tuple[NodeId, bytes]] = []
        #: our clock when the oldest read in ``_lease_reads`` began to wait
        self._lease_wait_since = 0
        self._lease_revoked = False

        self._become_follower(self._term, NONE)
        self._prev_hs = self._hard_state()
        #: the commit index of the newest hard state known to be on disk (synced): the
        #: restored one, then that of each acknowledged Ready that had to be synced
        self._durable_commit = self._log.committed
        self._prev_ss = self._soft_state()
        logger.info(
            "%d: started [term %d, commit %d, applied %d, last index %d, config %s]",
            self._id,
            self._term,
            self._log.committed,
            self._log.applied,
            self._log.last_index(),
            self._trk.config,
        )

    # ------------------------------------------------------------------------------------------
    # read-only properties

    @property
    def id(self) -> NodeId:
        """This node's id."""
        return self._id

    @property
    def term(self) -> int:
        """Current term."""
        return self._term

    @property
    def vote(self) -> NodeId:
        """Whom this node voted for in the current term (0 = nobody)."""
        return self._vote

    @property
    def config(self) -> CoreConfig:
        """The configuration this core runs with."""
        return self._config

    @property
    def leader(self) -> NodeId:
        """Known leader of the current term (0 = unknown)."""
        return self._lead

    @property
    def role(self) -> Role:
        """Current role."""
        return self._role

    @property
    def commit(self) -> int:
        """Commit index."""
        return self._log.committed

    @property
    def applied(self) -> int:
        """Index the state machine has acknowledged as applied."""
        return self._log.applied

    @property
    def last_index(self) -> int:
        """Index of the last log entry (durable or not)."""
        return self._log.last_index()

    @property
    def first_index(self) -> int:
        """Index of the first log entry still held (older ones are compacted)."""
        return self._log.first_index()

    @property
    def conf_state(self) -> ConfState:
        """The configuration in force (as of the applied index)."""
        return self._trk.conf_state()

    @property
    def conf_change_pending(self) -> bool:
        """A leader's configuration change (or a new leader's possible one among entries it
        has not applied yet) is still to be applied: :attr:`conf_state` may be about to
        change, and a new change would be refused as ``"conf-change-pending"``."""
        return self._pending_conf_index > self._log.applied

    @property
    def lead_transferee(self) -> NodeId:
        """Target of an ongoing leadership transfer (0 = none)."""
        return self._lead_transferee

    def term_at(self, index: int) -> int:
        """Term of the log entry at ``index``, or 0 when it is compacted or absent."""
        return self._log.term_or_zero(index)

    # ------------------------------------------------------------------------------------------
    # inputs

    def tick(self) -> None:
        """Advance logical time by one tick."""
        self._clock += 1
        if self._leader_contact_elapsed < self._config.election_ticks:
            self._leader_contact_elapsed += 1
        if self._role == Role.LEADER:
            self._tick_heartbeat()
        else:
            self._tick_election()

    def step(self, msg: Message) -> None:
        """Handle a message from a peer. Never raises for bad or stale input: such messages are
        logged and ignored."""
        if msg.dst != self._id:
            logger.warning("%d: ignoring %s addressed to %d", self._id, type(msg).__name__, msg.dst)
            return
        if msg.src == NONE or msg.src == self._id:
            logger.warning("%d: ignoring %s from %d", self._id, type(msg).__name__, msg.src)
            return
        self._step(msg)

    def campaign(self) -> bool:
        """Start an election now (with a pre-vote round when configured).

        In LEASE_BASED read mode a voter that heard from a leader within the last election
        timeout (or restarted less than one ago) refuses (logged): it would vote for itself
        inside the leader's lease, and the old leader could then serve a stale lease read. Move
        leadership with :meth:`transfer_leadership` instead (it revokes the lease first).

        Returns:
            False if refused for that reason.
        """
        # (At term 0 no leader ever reached us, so no lease can count on us.)
        lease = self._config.read_only == ReadOnlyOption.LEASE_BASED
        if lease and self._term > 0 and self._in_lease():
            logger.warning(
                "%d [term %d]: not campaigning: leader %d is recent and lease reads rely on "
                "that (transfer leadership instead)",
                self._id,
                self._term,
                self._lead,
            )
            return False
        self._hup(transfer=False)
        return True

    def _in_lease(self) -> bool:
        # Heard from a leader within an election timeout: with check-quorum, (pre-)votes other
        # than a leadership transfer's are refused meanwhile (see _step).
        et = self._config.election_ticks
        return self._config.check_quorum and (
            (self._lead != NONE and self._election_elapsed < et)
            or self._leader_contact_elapsed < et
        )

    def propose(self, data: bytes) -> int:
        """Propose ``data`` for the log.

        Returns:
            The new entry's index on the leader; 0 when forwarded to the leader.

        Raises:
            ProposalDropped: "no-leader", "transfer", "uncommitted-limit" or "too-large".
            NotLeader: a follower with ``forward_proposals`` off.
        """
        return self.propose_batch((data,))

    def propose_batch(self, datas: Sequence[bytes]) -> int:
        """Propose several commands at once: on the leader they become consecutive entries,
        appended together or not at all. Cheaper than a :meth:`propose` per command (one
        check, one self-acknowledgement, one broadcast for the batch).

        Args:
            datas: the commands, in log order (at least one).

        Returns:
            The index of the first new entry on the leader (the others follow it); 0 when
            forwarded to the leader (one forward per command).

        Raises:
            ValueError: ``datas`` is empty.
            ProposalDropped: "no-leader", "transfer", "uncommitted-limit" or "too-large" (a
                command exceeds ``max_msg_bytes``), for the whole batch: nothing was appended.
            NotLeader: a follower with ``forward_proposals`` off.
        """
        if not datas:
            raise ValueError("propose_batch needs at least one command")
        limit = self._config.max_msg_bytes
        for data in datas:
            if len(data) > limit:
                raise ProposalDropped("too-large", f"{len(data)} > {limit} bytes")
        if self._role == Role.LEADER:
            self._check_leader_can_propose()
            first = self._log.last_index() + 1
            term = self._term
            normal = EntryKind.NORMAL
            ents = [Entry(term, first + i, normal, data) for i, data in enumerate(datas)]
            if not self._append_indexed(ents, unlimited=False):
                raise ProposalDropped(
                    "uncommitted-limit",
                    f"{self._uncommitted_size} uncommitted bytes "
                    f"(limit {self._config.max_uncommitted_bytes})",
                )
            self._needs_bcast = True
            return first
        if self._lead == NONE:
            raise ProposalDropped("no-leader")
        if not self._config.forward_proposals:
            raise NotLeader(self._lead)
        for data in datas:
            self._send(
                ProposalForward(
                    src=self._id,
                    dst=self._lead,
                    term=self._term,
                    entries=(Entry(term=0, index=0, data=data),),
                )
            )
        return 0

    def propose_conf_change(self, cc: ConfChange) -> int:
        """Propose a membership change (leader only).

        Returns:
            The index of the conf-change entry.

        Raises:
            NotLeader: this node is not the leader.
            ProposalDropped: "conf-change-pending" (one is not yet applied, or the leader has not
                committed an entry of its term), "invalid-conf-change", "transfer",
                "uncommitted-limit" or "too-large".
        """
        if self._role != Role.LEADER:
            raise NotLeader(self._lead or None)
        self._check_leader_can_propose()
        if self._pending_conf_index > self._log.applied:
            raise ProposalDropped(
                "conf-change-pending",
                f"conf change at {self._pending_conf_index} not applied "
                f"(applied {self._log.applied})",
            )
        if not self._committed_entry_in_current_term():
            raise ProposalDropped("conf-change-pending", "no entry of this term committed yet")
        try:
            confchange.apply_conf_change(self._trk.config, cc)
        except ConfChangeError as exc:
            raise ProposalDropped("invalid-conf-change", str(exc)) from exc
        data = encode_conf_change(cc)
        if len(data) > self._config.max_msg_bytes:
            raise ProposalDropped("too-large")
        entry = Entry(term=self._term, index=0, kind=EntryKind.CONF_CHANGE, data=data)
        if not self._append_entries([entry]):
            raise ProposalDropped("uncommitted-limit")
        self._pending_conf_index = self._log.last_index()
        self._needs_bcast = True
        logger.info(
            "%d [term %d]: proposed conf change %s at %d",
            self._id,
            self._term,
            cc,
            self._pending_conf_index,
        )
        return self._pending_conf_index

    def read_index(self, context: bytes) -> None:
        """Request a linearizable read point; the answer arrives as a ``Ready.read_states`` entry
        with the same ``context``. Followers forward the request to the leader.

        Raises:
            ProposalDropped: "no-leader" when no leader is known.
        """
        if self._role == Role.LEADER:
            self._leader_read_index(self._id, context)
            return
        if self._lead == NONE:
            raise ProposalDropped("no-leader")
        self._send(ReadIndexRequest(src=self._id, dst=self._lead, term=self._term, context=context))

    def transfer_leadership(self, target: NodeId) -> None:
        """Hand leadership to ``target`` (leader only): bring it up to date, then TimeoutNow.
        Proposals are refused meanwhile; the transfer is abandoned after an election timeout.

        Raises:
            NotLeader: this node is not the leader.
            ProposalDropped: "invalid-target" when ``target`` is not a voter.
        """
        if self._role != Role.LEADER:
            raise NotLeader(self._lead or None)
        pr = self._trk.progress.get(target)
        if pr is None or pr.is_learner:
            raise ProposalDropped("invalid-target", f"{target} is not a voter")
        if target == self._id:
            logger.debug("%d: already leader; ignoring transfer to self", self._id)
            return
        if self._lead_transferee == target:
            return
        if self._lead_transferee != NONE:
            logger.info("%d: abandoning transfer to %d", self._id, self._lead_transferee)
            self._abort_leader_transfer()
        logger.info("%d [term %d]: transferring leadership to %d", self._id, self._term, target)
        # The transfer must finish within one election timeout.
        self._election_elapsed = 0
        self._lead_transferee = target
        if pr.match == self._log.last_index():
            self._send_timeout_now(target)
        else:
            self._send_append(target)

    def report_snapshot(self, peer: NodeId, ok: bool) -> None:
        """The runtime finished (``ok``) or gave up streaming a snapshot to ``peer``."""
        if self._role != Role.LEADER:
            return
        pr = self._trk.progress.get(peer)
        if pr is None or pr.state != ProgressState.SNAPSHOT:
            return
        if ok:
            # Probe just past the snapshot; the follower's AppendResponse moves it to replicate.
            pr.become_probe()
        else:
            pr.pending_snapshot = 0
            pr.become_probe()
        logger.info("%d: snapshot to %d %s; now %r", self._id, peer, "done" if ok else "failed", pr)
        # Wait for the follower's acknowledgement (or a heartbeat response) before appending.
        pr.msg_app_flow_paused = True

    def report_unreachable(self, peer: NodeId) -> None:
        """The runtime could not deliver a message to ``peer``."""
        if self._role != Role.LEADER:
            return
        pr = self._trk.progress.get(peer)
        if pr is not None and pr.state == ProgressState.REPLICATE:
            pr.become_probe()

    # ------------------------------------------------------------------------------------------
    # outputs and acknowledgements

    def has_ready(self) -> bool:
        """Is there anything for :meth:`ready` to hand out?"""
        if self._needs_bcast or self._msgs or self._msgs_after_persist:
            return True
        if self._self_after_persist or self._read_states:
            return True
        # Field by field rather than building and comparing new SoftState/HardState objects:
        # this runs several times per Ready.
        ss = self._prev_ss
        if ss.leader != self._lead or ss.role != self._role:
            return True
        hs = self._prev_hs
        if hs.term != self._term or hs.vote != self._vote or hs.commit != self._log.committed:
            return True
        unstable = self._log.unstable
        if unstable.has_next_entries() or unstable.next_snapshot() is not None:
            return True
        return self._log.has_next_committed_ents()

    def ready(self) -> Ready:
        """Take everything pending as one numbered :class:`Ready`."""
        if self._needs_bcast:
            self._needs_bcast = False
            if self._role == Role.LEADER:
                # New proposals: fill every follower's window as far as flow control allows.
                self._bcast_append(fill=True)
        self._ready_number += 1
        number = self._ready_number
        entries = tuple(self._log.unstable.next_entries())
        snapshot = self._log.unstable.next_snapshot()
        # New HardState/SoftState objects only when a field changed (as in has_ready): most
        # Readies change neither, or only the commit index.
        hs = self._prev_hs
        hs_changed = (
            hs.term != self._term or hs.vote != self._vote or hs.commit != self._log.committed
        )
        if hs_changed:
            hs = self._hard_state()
        committed = tuple(self._log.next_committed_ents())
        # A configuration change among the entries handed out to apply: their commit index
        # must reach the disk now rather than with the next write (see _durable_commit), so
        # the hard state goes out again if unchanged, to be synced.
        conf_entries = [e for e in committed if e.kind == EntryKind.CONF_CHANGE]
        sync = bool(conf_entries)
        if sync and not hs_changed:
            hs_changed = True
            hs = self._hard_state()
        prev = self._prev_hs
        must_sync = bool(
            entries or snapshot is not None or sync or hs.term != prev.term or hs.vote != prev.vote
        )
        ss = self._prev_ss
        if ss.leader != self._lead or ss.role != self._role:
            ss = self._soft_state()
            new_ss: SoftState | None = ss
        else:
            new_ss = None
        self_msgs = self._self_after_persist
        rd = Ready(
            number=number,
            soft_state=new_ss,
            hard_state=hs if hs_changed else None,
            entries=entries,
            snapshot=snapshot,
            committed_entries=committed,
            messages=tuple(self._msgs),
            persisted_messages=tuple(self._msgs_after_persist),
            read_states=tuple(self._read_states),
            sync_hard_state=sync,
            needs_ack=bool(
                entries
                or snapshot is not None
                or hs_changed
                or self._msgs_after_persist
                or self_msgs
            ),
        )
        self._msgs = []
        self._msgs_after_persist = []
        self._self_after_persist = []
        self._read_states = []
        if rd.needs_ack:
            self._unacked.append(
                _ReadyRecord(
                    number=number,
                    last_entry=(entries[-1].index, entries[-1].term) if entries else None,
                    snapshot_index=snapshot.index if snapshot is not None else None,
                    self_messages=self_msgs,
                    durable_commit=hs.commit if must_sync else None,
                    report_commit=sync,
                )
            )
        self._log.unstable.accept_in_progress()
        self._log.accept_applying(committed)
        for e in conf_entries:
            try:
                self._pending_conf.append((e.index, decode_conf_change(e.data)))
            except DecodeError as exc:
                logger.error("%d: undecodable conf change at %d: %s", self._id, e.index, exc)
        if self._role == Role.LEADER and committed:
            self._reduce_uncommitted_size(_payload_size(committed))
        self._prev_hs = hs
        self._prev_ss = ss
        return rd

    def on_persisted(self, number: int) -> None:
        """Everything in Ready ``number`` and earlier is durable and reflected in the storage's
        write side (an installed snapshot also restored into the state machine)."""
        if number <= self._acked_number:
            return
        if number > self._ready_number:
            logger.error(
                "%d: on_persisted(%d) beyond the last Ready %d",
                self._id,
                number,
                self._ready_number,
            )
            return
        self._acked_number = number
        while self._unacked and self._unacked[0].number <= number:
            rec = self._unacked.popleft()
            if rec.snapshot_index is not None:
                self._log.stable_snap_to(rec.snapshot_index)
                self._log.applied_snapshot(rec.snapshot_index)
                self._pending_conf = deque(
                    p for p in self._pending_conf if p[0] > rec.snapshot_index
                )
            if rec.last_entry is not None:
                self._log.stable_to(*rec.last_entry)
            if rec.durable_commit is not None and rec.durable_commit > self._durable_commit:
                self._durable_commit = rec.durable_commit
                if rec.report_commit:
                    self._report_durable_commit()
            for m in rec.self_messages:
                self._step(m)

    def _report_durable_commit(self) -> None:
        # A configuration change's commit just reached the disk: a leader that removed itself
        # may be waiting for exactly this report to hand over, so send it now rather than with
        # the next heartbeat's response.
        if self._role == Role.FOLLOWER and self._lead not in (NONE, self._id):
            self._send(
                HeartbeatResponse(
                    src=self._id,
                    dst=self._lead,
                    term=self._term,
                    commit=min(self._durable_commit, self._log.committed),
                )
            )

    def on_applied(self, index: int) -> None:
        """The state machine applied every handed-out committed entry up to ``index``.
        Membership changes among them take effect now."""
        self._log.applied_to(index)
        applied = self._log.applied
        while self._pending_conf and self._pending_conf[0][0] <= applied:
            at, cc = self._pending_conf.popleft()
            self._apply_conf_change(at, cc)
        if (
            self._role == Role.LEADER
            and self._trk.config.auto_leave
            and applied >= self._pending_conf_index
        ):
            self._propose_auto_leave()

    def status(self) -> CoreStatus:
        """A snapshot of the core's state."""
        progress: dict[NodeId, ProgressInfo] = {}
        if self._role == Role.LEADER:
            for i, pr in self._trk.visit():
                progress[i] = ProgressInfo(
                    state=pr.state.value,
                    match=pr.match,
                    next=pr.next,
                    recent_active=pr.recent_active,
                    is_learner=pr.is_learner,
                    pending_snapshot=pr.pending_snapshot,
                    paused=pr.is_paused(),
                    inflight=len(pr.inflights),
                )
        return CoreStatus(
            id=self._id,
            role=self._role,
            term=self._term,
            leader=self._lead,
            commit=self._log.committed,
            applied=self._log.applied,
            conf=self._trk.conf_state(),
            progress=progress,
            vote=self._vote,
            first_index=self._log.first_index(),
            last_index=self._log.last_index(),
            lead_transferee=self._lead_transferee,
        )

    # ------------------------------------------------------------------------------------------
    # state helpers

    def _hard_state(self) -> HardState:
        return HardState(term=self._term, vote=self._vote, commit=self._log.committed)

    def _soft_state(self) -> SoftState:
        return SoftState(leader=self._lead, role=self._role)

    def _load_state(self, hs: HardState) -> None:
        commit = hs.commit
        if commit < self._log.committed or commit > self._log.last_index():
            clamped = max(self._log.committed, min(commit, self._log.last_index()))
            logger.error(
                "%d: persisted commit %d outside [%d, %d]; using %d",
                self._id,
                commit,
                self._log.committed,
                self._log.last_index(),
                clamped,
            )
            commit = clamped
        self._log.committed = commit
        self._term = hs.term
        self._vote = hs.vote

    def _is_voter(self) -> bool:
        pr = self._trk.progress.get(self._id)
        return pr is not None and not pr.is_learner

    def _promotable(self) -> bool:
        return self._is_voter() and not self._log.has_pending_snapshot()

    def _committed_entry_in_current_term(self) -> bool:
        return self._log.term_or_zero(self._log.committed) == self._term

    def _has_unapplied_conf_changes(self) -> bool:
        lo, hi = self._log.applied + 1, self._log.committed + 1
        while lo < hi:
            try:
                ents = self._log.slice(lo, hi, self._log.max_applying_bytes)
            except (Compacted, Unavailable):  # pragma: no cover - applied >= first_index - 1
                return False
            if any(e.kind == EntryKind.CONF_CHANGE for e in ents):
                return True
            lo = ents[-1].index + 1
        return False

    def _reset_randomized_election_timeout(self) -> None:
        et = self._config.election_ticks
        self._randomized_election_timeout = et + self._rng.below(et)

    # ------------------------------------------------------------------------------------------
    # role changes (the only place the role changes)

    def _reset(self, term: int) -> None:
        if self._term != term:
            self._term = term
            self._vote = NONE
        self._lead = NONE
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._reset_randomized_election_timeout()
        self._abort_leader_transfer()
        self._trk.reset_votes()
        last = self._log.last_index()
        for i, old in list(self._trk.progress.items()):
            pr = self._trk.new_progress(last + 1, is_learner=old.is_learner)
            if i == self._id:
                pr.match = min(last, self._log.unstable.offset - 1)
            self._trk.progress[i] = pr
        self._pending_conf_index = 0
        self._leaving_index = 0
        self._uncommitted_size = 0
        self._read_only.reset()
        self._pending_reads = []
        self._lease_acks = {}
        self._lease_reads = []
        self._lease_revoked = False
        self._needs_bcast = False

    def _become_follower(self, term: int, lead: NodeId) -> None:
        self._reset(term)
        self._lead = lead
        self._role = Role.FOLLOWER
        logger.info("%d: became follower at term %d (leader %d)", self._id, self._term, lead)

    def _become_pre_candidate(self) -> None:
        # Term and vote stay as they are: a pre-vote must not disturb anyone.
        self._trk.reset_votes()
        self._lead = NONE
        self._role = Role.PRE_CANDIDATE
        logger.info("%d: became pre-candidate at term %d", self._id, self._term)

    def _become_candidate(self) -> None:
        self._reset(self._term + 1)
        self._vote = self._id
        self._role = Role.CANDIDATE
        logger.info("%d: became candidate at term %d", self._id, self._term)

    def _become_leader(self) -> bool:
        """Take office; False (and a follower) if this node is not a voter of its configuration.

        Callers check that first; the guard keeps an unforeseen path from crashing ``step``
        (a leader needs its own Progress)."""
        if not self._is_voter():
            logger.error(
                "%d [term %d]: not a voter of %s; refusing to become leader",
                self._id,
                self._term,
                self._trk.config,
            )
            self._become_follower(self._term, NONE)
            return False
        self._reset(self._term)
        self._lead = self._id
        self._role = Role.LEADER
        own = self._trk.progress[self._id]
        own.become_replicate()
        own.recent_active = True
        # Conservative: a conf change may be among the entries not yet applied.
        self._pending_conf_index = self._log.last_index()
        # The no-op of the new term: committing it commits everything before (Figure 8).
        self._append_entries([Entry(term=self._term, index=0)])
        self._term_start_index = self._log.last_index()
        logger.info(
            "%d: became leader at term %d (config %s)", self._id, self._term, self._trk.config
        )
        return True

    # ------------------------------------------------------------------------------------------
    # elections

    def _tick_election(self) -> None:
        self._election_elapsed += 1
        if self._promotable() and self._election_elapsed >= self._randomized_election_timeout:
            self._election_elapsed = 0
            self._hup(transfer=False)

    def _tick_heartbeat(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        self._lease_fallback()
        if self._election_elapsed >= self._config.election_ticks:
            self._election_elapsed = 0
            if self._config.check_quorum:
                if not self._trk.quorum_active():
                    logger.warning(
                        "%d [term %d]: stepping down, no quorum heard from", self._id, self._term
                    )
                    self._become_follower(self._term, NONE)
                    return
                for i, pr in self._trk.progress.items():
                    if i != self._id:
                        pr.recent_active = False
            if self._lead_transferee != NONE:
                logger.info(
                    "%d: transfer to %d timed out; aborting", self._id, self._lead_transferee
                )
                self._abort_leader_transfer()
        if self._heartbeat_elapsed >= self._config.heartbeat_ticks:
            self._heartbeat_elapsed = 0
            self._bcast_heartbeat(self._heartbeat_context())

    def _hup(self, transfer: bool) -> None:
        if self._role == Role.LEADER:
            logger.debug("%d: already leader; not campaigning", self._id)
            return
        if not self._promotable():
            logger.info("%d: not promotable; not campaigning", self._id)
            return
        if self._has_unapplied_conf_changes():
            logger.info(
                "%d: committed conf changes not yet applied; not campaigning at term %d",
                self._id,
                self._term,
            )
            return
        logger.info("%d: starting an election at term %d", self._id, self._term)
        self._campaign(pre_vote=self._config.pre_vote and not transfer, transfer=transfer)

    def _campaign(self, *, pre_vote: bool, transfer: bool = False) -> None:
        if pre_vote:
            self._become_pre_candidate()
            term = self._term + 1  # the term it would use; our own term does not change
        else:
            self._become_candidate()
            term = self._term
        last_index = self._log.last_index()
        last_term = self._log.last_term()
        for i in sorted(self._trk.voter_ids()):
            if i == self._id:
                continue
            self._send(
                VoteRequest(
                    src=self._id,
                    dst=i,
                    term=term,
                    last_index=last_index,
                    last_term=last_term,
                    pre_vote=pre_vote,
                    transfer=transfer,
                )
            )
        own = VoteResponse(src=self._id, dst=self._id, term=term, granted=True, pre_vote=pre_vote)
        if pre_vote:
            # A pre-vote changes nothing durable, so it counts at once.
            self._step_candidate(own)
        else:
            # A real vote counts only once it is durable (it is in the next Ready's hard state).
            self._self_after_persist.append(own)

    def _handle_vote_request(self, m: VoteRequest) -> None:
        can_vote = (
            self._vote == m.src
            or (self._vote == NONE and self._lead == NONE)
            or (m.pre_vote and m.term > self._term)
        )
        if can_vote and self._log.is_up_to_date(m.last_index, m.last_term):
            logger.info(
                "%d [term %d]: granting %svote to %d for term %d",
                self._id,
                self._term,
                "pre-" if m.pre_vote else "",
                m.src,
                m.term,
            )
            self._send(
                VoteResponse(
                    src=self._id,
                    dst=m.src,
                    term=m.term,
                    granted=True,
                    pre_vote=m.pre_vote,
                    commit=self._log.committed,
                    commit_term=self._log.term_or_zero(self._log.committed),
                )
            )
            if not m.pre_vote:
                self._election_elapsed = 0
                self._vote = m.src
        else:
            logger.info(
                "%d [term %d, vote %d, last %d/%d]: rejecting %svote from %d [last %d/%d]",
                self._id,
                self._term,
                self._vote,
                self._log.last_index(),
                self._log.last_term(),
                "pre-" if m.pre_vote else "",
                m.src,
                m.last_index,
                m.last_term,
            )
            self._send(
                VoteResponse(
                    src=self._id,
                    dst=m.src,
                    term=self._term,
                    granted=False,
                    pre_vote=m.pre_vote,
                    commit=self._log.committed,
                    commit_term=self._log.term_or_zero(self._log.committed),
                )
            )

    # ------------------------------------------------------------------------------------------
    # message dispatch

    def _step(self, m: Message) -> None:
        if isinstance(m, (ProposalForward, ReadIndexRequest)):
            # Carry no term semantics (like etcd's local MsgProp/MsgReadIndex).
            if self._role == Role.LEADER:
                self._step_leader(m)
            else:
                logger.debug("%d: not leader; dropping %s", self._id, type(m).__name__)
            return
        if m.term <= 0:
            logger.warning("%d: ignoring %s without a term", self._id, type(m).__name__)
            return
        if isinstance(m, VoteResponse) and m.commit > self._log.committed:
            self._learn_commit(m)
        if m.term > self._term:
            if isinstance(m, VoteRequest) and not m.transfer and self._in_lease():
                logger.info(
                    "%d [term %d]: ignoring %svote from %d at term %d: leader %d is recent",
                    self._id,
                    self._term,
                    "pre-" if m.pre_vote else "",
                    m.src,
                    m.term,
                    self._lead,
                )
                return
            if isinstance(m, VoteRequest) and m.pre_vote:
                pass  # never change term for a pre-vote
            elif isinstance(m, VoteResponse) and m.pre_vote and m.granted:
                pass  # granted pre-votes carry the term we would campaign at
            elif isinstance(m, (AppendRequest, HeartbeatRequest, SnapshotRequest)):
                logger.info(
                    "%d [term %d]: %s from leader %d at higher term %d",
                    self._id,
                    self._term,
                    type(m).__name__,
                    m.src,
                    m.term,
                )
                self._become_follower(m.term, m.src)
            else:
                logger.info(
                    "%d [term %d]: %s from %d at higher term %d",
                    self._id,
                    self._term,
                    type(m).__name__,
                    m.src,
                    m.term,
                )
                self._become_follower(m.term, NONE)
        elif m.term < self._term:
            if (self._config.check_quorum or self._config.pre_vote) and isinstance(
                m, (AppendRequest, HeartbeatRequest)
            ):
                # A stale leader (e.g. back from a partition) learns our term and steps down;
                # without this it could keep followers from ever hearing of the new term.
                self._send(AppendResponse(src=self._id, dst=m.src, term=self._term, index=0))
            elif isinstance(m, VoteRequest) and m.pre_vote:
                self._send(
                    VoteResponse(
                        src=self._id,
                        dst=m.src,
                        term=self._term,
                        granted=False,
                        pre_vote=True,
                        commit=self._log.committed,
                        commit_term=self._log.term_or_zero(self._log.committed),
                    )
                )
            else:
                logger.debug(
                    "%d [term %d]: ignoring %s from %d at lower term %d",
                    self._id,
                    self._term,
                    type(m).__name__,
                    m.src,
                    m.term,
                )
            return

        if isinstance(m, VoteRequest):
            self._handle_vote_request(m)
        elif self._role == Role.LEADER:
            self._step_leader(m)
        elif self._role == Role.FOLLOWER:
            self._step_follower(m)
        else:
            self._step_candidate(m)

    def _may_take_office(self) -> bool:
        # The rules of _hup, checked again at the end of each election phase: the commit index
        # may have moved during the election (learned from a vote response), and a conf change
        # may have been applied meanwhile (_switch_to_config steps a removed node down). Winning
        # with committed conf changes still unapplied would mean leading under a configuration
        # older than the committed one, whose quorums need not overlap the newer one's.
        if not self._is_voter():  # pragma: no cover - _switch_to_config stepped it down
            logger.info("%d [term %d]: not a voter; abandoning the election", self._id, self._term)
            return False
        if self._has_unapplied_conf_changes():
            logger.info(
                "%d [term %d]: committed conf changes not yet applied; abandoning the election",
                self._id,
                self._term,
            )
            return False
        return True

    def _learn_commit(self, m: VoteResponse) -> None:
        # Whatever the terms: the voter's entries up to its commit are committed, and if our log
        # holds its entry at that index, our prefix is the same (Log Matching). Without this a
        # candidate that must first apply a committed membership change (e.g. 2 voters -> 1
        # after the leader crashed before persisting the commit) could wait forever for a vote
        # the removed node refuses.
        if self._log.match_term(m.commit, m.commit_term):
            logger.info(
                "%d [term %d]: commit %d -> %d learned from %d's vote response",
                self._id,
                self._term,
                self._log.committed,
                m.commit,
                m.src,
            )
            self._log.commit_to(m.commit)

    def _step_follower(self, m: Message) -> None:
        if isinstance(m, (AppendRequest, HeartbeatRequest, SnapshotRequest)):
            self._election_elapsed = 0
            self._lead = m.src
            self._handle_leader_message(m)
        elif isinstance(m, TimeoutNow):
            logger.info("%d [term %d]: TimeoutNow from %d", self._id, self._term, m.src)
            # Transfers skip the pre-vote: the leader itself asked us to take over.
            self._hup(transfer=True)
        elif isinstance(m, ReadIndexResponse):
            self._read_states.append(ReadState(index=m.index, context=m.context))
        else:
            logger.debug("%d: follower ignoring %s from %d", self._id, type(m).__name__, m.src)

    def _step_candidate(self, m: Message) -> None:
        if isinstance(m, (AppendRequest, HeartbeatRequest, SnapshotRequest)):
            self._become_follower(m.term, m.src)  # m.term == our term: someone won
            self._handle_leader_message(m)
        elif isinstance(m, VoteResponse):
            if m.pre_vote != (self._role == Role.PRE_CANDIDATE):
                return  # a response to an earlier phase of the election
            self._trk.record_vote(m.src, m.granted)
            granted, rejected, result = self._trk.tally_votes()
            logger.info(
                "%d [term %d]: %d %svotes granted, %d rejected",
                self._id,
                self._term,
                granted,
                "pre-" if m.pre_vote else "",
                rejected,
            )
            if result == VoteResult.WON:
                if self._role == Role.CANDIDATE and not self._trk.votes.get(self._id, False):
                    # The other voters' grants alone can be a quorum, but our own term and
                    # vote may not be durable yet (pipelined writes). Leading now and then
                    # crashing before the write would restart us at the old term, from where
                    # the same voters can elect us again in this term, and we would append
                    # different entries at indexes already sent in it (Log Matching broken).
                    # Our own vote is stepped in only once durable: take office then.
                    logger.info(
                        "%d [term %d]: won; waiting for our own vote to be durable",
                        self._id,
                        self._term,
                    )
                    return
                if not self._may_take_office():
                    self._become_follower(self._term, NONE)
                elif self._role == Role.PRE_CANDIDATE:
                    self._campaign(pre_vote=False)
                elif self._become_leader():  # pragma: no branch - see _may_take_office
                    self._bcast_append()
            elif result == VoteResult.LOST:
                self._become_follower(self._term, NONE)
        else:
            logger.debug("%d: candidate ignoring %s from %d", self._id, type(m).__name__, m.src)

    def _step_leader(self, m: Message) -> None:
        if isinstance(m, ProposalForward):
            self._handle_forwarded_proposal(m)
            return
        if isinstance(m, ReadIndexRequest):
            self._leader_read_index(m.src, m.context)
            return
        pr = self._trk.progress.get(m.src)
        if pr is None:
            logger.debug("%d: no progress for %d; ignoring %s", self._id, m.src, type(m).__name__)
            return
        if isinstance(m, AppendResponse):
            pr.recent_active = True
            if m.reject:
                self._handle_append_reject(m, pr)
            else:
                self._handle_append_success(m, pr)
        elif isinstance(m, HeartbeatResponse):
            self._handle_heartbeat_response(m, pr)
        elif isinstance(m, (AppendRequest, HeartbeatRequest, SnapshotRequest)):
            logger.error(
                "%d [term %d]: two leaders in one term? %s from %d",
                self._id,
                self._term,
                type(m).__name__,
                m.src,
            )
        else:
            logger.debug("%d: leader ignoring %s from %d", self._id, type(m).__name__, m.src)

    # ------------------------------------------------------------------------------------------
    # follower side of replication

    def _handle_leader_message(self, m: AppendRequest | HeartbeatRequest | SnapshotRequest) -> None:
        self._leader_contact_elapsed = 0
        if isinstance(m, AppendRequest):
            self._handle_append_entries(m)
        elif isinstance(m, HeartbeatRequest):
            self._log.commit_to(min(m.commit, self._log.last_index()))
            # The commit index reported is the durable one: a leader that removed itself
            # hands over on these reports and may then be shut down for good; were the
            # commit of its removal lost in a crash here, we would need its vote again.
            self._send(
                HeartbeatResponse(
                    src=self._id,
                    dst=m.src,
                    term=self._term,
                    context=m.context,
                    commit=min(self._durable_commit, self._log.committed),
                )
            )
        else:
            self._handle_snapshot(m)

    def _valid_append(self, m: AppendRequest) -> bool:
        prev_term = m.prev_term
        for i, e in enumerate(m.entries):
            if e.index != m.prev_index + 1 + i or e.term < prev_term or e.term > m.term:
                return False
            prev_term = e.term
        return m.prev_index >= 0 and m.prev_term <= m.term

    def _handle_append_entries(self, m: AppendRequest) -> None:
        if not self._valid_append(m):
            logger.warning("%d: ignoring malformed AppendRequest from %d", self._id, m.src)
            return
        if m.prev_index < self._log.committed:
            self._send(
                AppendResponse(src=self._id, dst=m.src, term=self._term, index=self._log.committed)
            )
            return
        last_new = self._log.maybe_append(m.prev_index, m.prev_term, m.commit, m.entries)
        if last_new is not None:
            self._send(AppendResponse(src=self._id, dst=m.src, term=self._term, index=last_new))
            return
        # Point the leader at the largest (index, term) where our logs may agree: skip every
        # entry of ours with a term above the leader's prev_term in one round trip.
        hint_index, hint_term = self._log.find_conflict_by_term(
            min(m.prev_index, self._log.last_index()), m.prev_term
        )
        logger.debug(
            "%d [term %d]: rejecting append at %d/%d from %d; hint %d/%d",
            self._id,
            self._term,
            m.prev_index,
            m.prev_term,
            m.src,
            hint_index,
            hint_term,
        )
        self._send(
            AppendResponse(
                src=self._id,
                dst=m.src,
                term=self._term,
                index=m.prev_index,
                reject=True,
                hint_index=hint_index,
                hint_term=hint_term,
            )
        )

    def _handle_snapshot(self, m: SnapshotRequest) -> None:
        meta = m.meta
        if self._restore(meta):
            logger.info(
                "%d [term %d]: restoring snapshot %d/%d from %d",
                self._id,
                self._term,
                meta.index,
                meta.term,
                m.src,
            )
            index = self._log.last_index()
        else:
            logger.info(
                "%d [commit %d]: not restoring snapshot %d/%d from %d",
                self._id,
                self._log.committed,
                meta.index,
                meta.term,
                m.src,
            )
            index = self._log.committed
        self._send(AppendResponse(src=self._id, dst=m.src, term=self._term, index=index))

    def _restore(self, meta: SnapshotMeta) -> bool:
        if meta.index <= self._log.committed:
            return False  # stale: we already have everything it covers
        if self._id not in meta.conf.all_nodes():
            # A snapshot taken before we were added (etcd refuses these, which leaves a new
            # member that needs compacted entries stuck): the log after it adds us back.
            logger.info(
                "%d: snapshot %d predates our membership; restoring anyway", self._id, meta.index
            )
        if self._log.match_term(meta.index, meta.term):
            # Our log already holds the snapshot's last entry: keep the log, move commit.
            self._log.commit_to(meta.index)
            return False
        try:
            cfg = confchange.restore(meta.conf)
        except ConfChangeError as exc:
            logger.error("%d: snapshot %d has a bad configuration: %s", self._id, meta.index, exc)
            return False
        self._log.restore(meta)
        self._pending_conf.clear()
        self._switch_to_config(cfg)
        return True

    # ------------------------------------------------------------------------------------------
    # leader side of replication

    def _send_append(self, to: NodeId) -> None:
        self._maybe_send_append(to, send_if_empty=True)

    def _maybe_send_append(self, to: NodeId, send_if_empty: bool) -> bool:
        pr = self._trk.progress[to]
        if not send_if_empty and pr.next == self._log.last_index() + 1:
            # Nothing new for this follower (the callers loop until this returns False, so
            # every loop ends here): skip the term lookup and the empty slice.
            return False
        if pr.is_paused():
            return False
        prev_index = pr.next - 1
        try:
            prev_term = self._log.term(prev_index)
        except (Compacted, Unavailable):
            return self._maybe_send_snapshot(to, pr)
        entries: tuple[Entry, ...] = ()
        # A full window still gets empty appends, so that lost messages cannot stall the
        # follower: the acknowledgement (or rejection) of an empty append clears the window.
        if pr.state != ProgressState.REPLICATE or not pr.inflights.full():
            shared = self._bcast_entries
            cached = None if shared is None else shared.get(pr.next)
            if cached is not None:
                entries = cached
            else:
                try:
                    entries = tuple(self._log.entries_from(pr.next, self._config.max_msg_bytes))
                except Compacted:
                    return self._maybe_send_snapshot(to, pr)
                if shared is not None:
                    shared[pr.next] = entries
        if not entries and not send_if_empty:
            return False
        commit = self._log.committed
        self._send(
            AppendRequest(
                src=self._id,
                dst=to,
                term=self._term,
                prev_index=prev_index,
                prev_term=prev_term,
                entries=entries,
                commit=commit,
            )
        )
        pr.sent_entries(len(entries), entries_size(entries))
        pr.sent_commit = max(pr.sent_commit, commit)
        return True

    def _maybe_send_snapshot(self, to: NodeId, pr: Progress) -> bool:
        if not pr.recent_active:
            logger.debug("%d: not sending a snapshot to inactive %d", self._id, to)
            return False
        try:
            meta = self._log.snapshot()
        except SnapshotTemporarilyUnavailable:
            logger.debug("%d: snapshot temporarily unavailable for %d", self._id, to)
            return False
        if meta.index == 0 or meta.index + 1 < self._log.first_index():
            logger.error(
                "%d: %d needs compacted entries but no snapshot covers them (snapshot %d, "
                "first index %d)",
                self._id,
                to,
                meta.index,
                self._log.first_index(),
            )
            return False
        pr.become_snapshot(meta.index)
        logger.info(
            "%d [term %d, first index %d]: sending snapshot %d/%d to %d",
            self._id,
            self._term,
            self._log.first_index(),
            meta.index,
            meta.term,
            to,
        )
        self._send(SnapshotRequest(src=self._id, dst=to, term=self._term, meta=meta))
        return True

    def _bcast_append(self, *, fill: bool = False) -> None:
        # One append to every follower (empty ones too), or with ``fill`` as many as each
        # follower's window takes and none without entries. Followers at the same point get
        # the very same entries tuple (the log does not change during the loop), so the
        # transport can encode it once.
        self._bcast_entries = {}
        try:
            for i, _ in self._trk.visit():
                if i == self._id:
                    continue
                if fill:
                    while self._maybe_send_append(i, send_if_empty=False):
                        pass
                else:
                    self._send_append(i)
        finally:
            self._bcast_entries = None

    def _bcast_heartbeat(self, context: bytes) -> None:
        commit = self._log.committed
        for i, pr in self._trk.visit():
            if i == self._id:
                continue
            hb_commit = min(pr.match, commit)
            self._send(
                HeartbeatRequest(
                    src=self._id, dst=i, term=self._term, commit=hb_commit, context=context
                )
            )
            pr.sent_commit = max(pr.sent_commit, hb_commit)

    def _send_timeout_now(self, to: NodeId) -> None:
        logger.info("%d [term %d]: TimeoutNow to %d", self._id, self._term, to)
        self._send(TimeoutNow(src=self._id, dst=to, term=self._term))
        self._revoke_lease()

    def _handle_append_reject(self, m: AppendResponse, pr: Progress) -> None:
        next_probe = m.hint_index
        if m.hint_term > 0:
            # Skip every index where our term exceeds the follower's term at its hint: those
            # probes would be rejected as well (one probe per term instead of per entry).
            next_probe, _ = self._log.find_conflict_by_term(m.hint_index, m.hint_term)
        if pr.maybe_decr_to(m.index, next_probe):
            logger.debug("%d: %d rejected %d; now %r", self._id, m.src, m.index, pr)
            if pr.state == ProgressState.REPLICATE:
                pr.become_probe()
            self._send_append(m.src)

    def _handle_append_success(self, m: AppendResponse, pr: Progress) -> None:
        if not (
            pr.maybe_update(m.index) or (pr.match == m.index and pr.state == ProgressState.PROBE)
        ):
            return
        if pr.state == ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state == ProgressState.SNAPSHOT and (
            pr.match >= pr.pending_snapshot or pr.match + 1 >= self._log.first_index()
        ):
            # The follower can be caught up from the log (whichever snapshot it installed):
            # go back to replicating right away rather than waiting for the next entry.
            logger.info("%d: %d caught up after snapshot at %d", self._id, m.src, pr.match)
            pr.become_probe()
            pr.become_replicate()
        elif pr.state == ProgressState.REPLICATE:
            pr.inflights.free_le(m.index)
        if self._maybe_commit():
            self._on_commit_advanced()
        elif (
            m.src != self._id
            and pr.can_bump_commit(self._log.committed)
            and self._commit_is_urgent(pr.sent_commit)
        ):
            self._send_append(m.src)
        if m.src != self._id:
            while self._maybe_send_append(m.src, send_if_empty=False):
                pass
            if m.src == self._lead_transferee and pr.match == self._log.last_index():
                self._send_timeout_now(m.src)

    def _handle_heartbeat_response(self, m: HeartbeatResponse, pr: Progress) -> None:
        pr.recent_active = True
        pr.msg_app_flow_paused = False
        if m.commit > pr.known_commit:
            pr.known_commit = m.commit
            if self._leaving_index and self._maybe_hand_over():
                return
        if pr.match < self._log.last_index() or pr.state == ProgressState.PROBE:
            self._send_append(m.src)
        if not m.context:
            return
        if m.context.startswith(_LEASE_CONTEXT):
            self._recv_lease_ack(m.src, m.context)
            return
        acks = self._read_only.recv_ack(m.src, m.context)
        if acks is None:
            return
        if self._trk.config.voters.vote_result(dict.fromkeys(acks, True)) != VoteResult.WON:
            return
        for req in self._read_only.advance(m.context):
            self._respond_read(req.src, req.context, req.index)

    def _maybe_commit(self) -> bool:
        return self._log.maybe_commit(self._trk.committed(), self._term)

    # Commit propagation (``CoreConfig.piggyback_commit``). Theory of operation: a new commit
    # index reaches the followers piggybacked on the next AppendRequest (every one carries it)
    # or heartbeat (each carries min(match, commit)), not with a dedicated round of empty
    # appends as in etcd (the behaviour without the option). Under load appends leave
    # continuously anyway; with a single proposer the dedicated round doubled the
    # messages per proposal (an append and its response per follower) and competed for the CPU
    # with the next proposal, for the benefit of followers applying up to one heartbeat
    # interval sooner. Safety does not depend on when followers learn the commit. Two cases
    # are still sent at once: a commit covering a configuration change or a new leader's
    # first entry (which may commit changes of earlier terms), so that members learn of a
    # membership change promptly (a leader that removed itself stops sending heartbeats), and
    # a follower waiting to serve a read at an index it has not seen committed.

    def _commit_is_urgent(self, sent: int) -> bool:
        if not self._config.piggyback_commit:
            return True
        return sent < max(self._pending_conf_index, self._term_start_index) <= self._log.committed

    def _on_commit_advanced(self) -> None:
        if self._pending_reads and self._committed_entry_in_current_term():
            pending, self._pending_reads = self._pending_reads, []
            for src, ctx in pending:
                self._admit_read(src, ctx)
        if not self._config.piggyback_commit:
            self._bcast_append()
            return
        committed = self._log.committed
        for i, pr in self._trk.visit():
            if (
                i != self._id
                and pr.can_bump_commit(committed)
                and self._commit_is_urgent(pr.sent_commit)
            ):
                self._send_append(i)

    def _check_leader_can_propose(self) -> None:
        if self._leaving_index or self._id not in self._trk.progress:
            raise ProposalDropped(
                "no-leader", "this leader was removed or demoted and is handing over"
            )
        if self._lead_transferee != NONE:
            raise ProposalDropped("transfer", f"leadership moving to {self._lead_transferee}")

    def _append_entries(self, entries: list[Entry], *, unlimited: bool = False) -> bool:
        # ``entries`` carry kind and data only; they get this term and the next indexes.
        first = self._log.last_index() + 1
        term = self._term
        ents = [Entry(term, first + i, e.kind, e.data) for i, e in enumerate(entries)]
        return self._append_indexed(ents, unlimited=unlimited)

    def _append_indexed(self, ents: list[Entry], *, unlimited: bool) -> bool:
        # ``ents`` are of this term and follow the last index. As in etcd, one entry is always
        # admitted while nothing is uncommitted (however large, or nothing could ever pass);
        # a batch is not, so that gathering proposals cannot turn the limit into one per batch.
        term = self._term
        size = _payload_size(ents)
        limit = self._config.max_uncommitted_bytes
        if (
            not unlimited
            and limit > 0
            and (self._uncommitted_size > 0 or len(ents) > 1)
            and size > 0
            and self._uncommitted_size + size > limit
        ):
            logger.warning(
                "%d: dropping proposal: %d uncommitted bytes (limit %d)",
                self._id,
                self._uncommitted_size,
                limit,
            )
            return False
        self._uncommitted_size += size
        last = self._log.append(ents)
        # Our own copy counts towards commit only once durable: self-acknowledge on persist.
        # Acknowledging ``last`` covers every earlier index, so a pending self-ack of the same
        # term is replaced rather than stepped once per proposal.
        ack = AppendResponse(src=self._id, dst=self._id, term=term, index=last)
        pending = self._self_after_persist
        if pending and type(pending[-1]) is AppendResponse and pending[-1].term == term:
            pending[-1] = ack
        else:
            pending.append(ack)
        return True

    def _reduce_uncommitted_size(self, size: int) -> None:
        self._uncommitted_size = max(0, self._uncommitted_size - size)

    def _handle_forwarded_proposal(self, m: ProposalForward) -> None:
        if not m.entries:
            return
        try:
            self._check_leader_can_propose()
        except ProposalDropped as exc:
            logger.info("%d: dropping forwarded proposal from %d: %s", self._id, m.src, exc)
            return
        if any(
            e.kind != EntryKind.NORMAL or len(e.data) > self._config.max_msg_bytes
            for e in m.entries
        ):
            logger.warning("%d: dropping invalid forwarded proposal from %d", self._id, m.src)
            return
        if self._append_entries(list(m.entries)):
            self._needs_bcast = True

    def _abort_leader_transfer(self) -> None:
        self._lead_transferee = NONE

    # ------------------------------------------------------------------------------------------
    # reads

    def _leader_read_index(self, src: NodeId, context: bytes) -> None:
        if not self._committed_entry_in_current_term():
            # Our commit index may lag the true one until an entry of our term commits (even as
            # the only voter: a commit index applied but not yet durable is lost in a crash).
            self._pending_reads.append((src, context))
            return
        self._admit_read(src, context)

    def _admit_read(self, src: NodeId, context: bytes) -> None:
        # Only the configuration's one voter may answer on its own: a leader that removed or
        # demoted itself (handing over) may share a singleton configuration with the voter
        # that will succeed it, and must confirm reads by a quorum of that configuration.
        if self._trk.is_singleton() and self._is_voter():
            self._respond_read(src, context, self._log.committed)
            return
        if self._config.read_only == ReadOnlyOption.LEASE_BASED and not self._lease_revoked:
            if self._lease_valid():
                self._respond_read(src, context, self._log.committed)
                return
            # Renew the lease: a quorum echoing this heartbeat makes it valid again.
            if not self._lease_reads:
                self._lease_wait_since = self._clock
                self._bcast_heartbeat(self._lease_context())
            self._lease_reads.append((src, context))
            return
        self._read_index(src, context)

    def _read_index(self, src: NodeId, context: bytes) -> None:
        key = self._read_only.add_request(self._log.committed, src, context, self._id)
        self._bcast_heartbeat(key)

    # Lease reads. Theory of operation: a voter that handled a heartbeat from us refuses every
    # (pre-)vote that is not a leadership transfer for ``election_ticks`` of its own ticks after
    # it (a restarted voter too: it starts "in lease"). Every heartbeat carries the tick of our
    # clock at which it was sent; a voter echoing it was reset no earlier than that tick. If a
    # quorum (us included) echoed heartbeats sent at tick ``now - (election_ticks - 2)`` or
    # later, each of them refuses votes until after our tick ``now + 1``, and any quorum that
    # could elect another leader includes one of them (or us, and a leader ignores vote
    # requests): no other leader exists before our next tick, so our commit index is
    # current. The margin of two ticks covers the tick phase difference between nodes (all
    # tick at the same rate; lease reads assume bounded drift). Check-quorum alone is not
    # enough: a leader only notices a lost quorum at an election-timeout boundary, up to two
    # election timeouts after it last heard from it, while followers elect after one. After a
    # TimeoutNow the target may win a transfer election, whose votes bypass the voters' lease,
    # at any later time: the lease is revoked for the rest of the term and reads fall back to
    # ReadIndex.

    def _recheck_reads(self) -> None:
        # The configuration changed: acknowledgements already received may now make a quorum
        # (down to none needed when we are the only voter left, when no echo would ever come).
        voters = self._trk.config.voters
        for req in self._read_only.confirmed(
            lambda acks: voters.vote_result(dict.fromkeys(acks, True)) == VoteResult.WON
        ):
            self._respond_read(req.src, req.context, req.index)
        if self._lease_reads and self._lease_valid():
            waiting, self._lease_reads = self._lease_reads, []
            for src, ctx in waiting:
                self._respond_read(src, ctx, self._log.committed)

    def _lease_context(self) -> bytes:
        return _LEASE_CONTEXT + self._clock.to_bytes(8, "big")

    def _heartbeat_context(self) -> bytes:
        # A pending ReadIndex request (also in lease mode: see _lease_fallback) goes first: its
        # confirmation must not depend on one heartbeat getting through.
        key = self._read_only.last_pending_key()
        if key or self._config.read_only != ReadOnlyOption.LEASE_BASED or self._lease_revoked:
            return key
        return self._lease_context()

    def _lease_fallback(self) -> None:
        # Reads have waited an election timeout for the lease: the heartbeat round trip may
        # exceed the lease's window for good (it must be under election_ticks - 2 ticks),
        # while ReadIndex works whatever the round trip. Confirm them that way instead.
        if (
            self._lease_reads
            and self._clock - self._lease_wait_since >= self._config.election_ticks
        ):
            logger.info(
                "%d [term %d]: no lease after %d ticks; %d read(s) fall back to ReadIndex",
                self._id,
                self._term,
                self._clock - self._lease_wait_since,
                len(self._lease_reads),
            )
            waiting, self._lease_reads = self._lease_reads, []
            for src, ctx in waiting:
                self._read_index(src, ctx)

    def _lease_valid(self) -> bool:
        if self._lease_revoked or self._lead_transferee != NONE:
            return False
        bound = self._clock - (self._config.election_ticks - 2)
        acks = {
            i: i == self._id or self._lease_acks.get(i, -1) >= bound for i in self._trk.voter_ids()
        }
        return self._trk.config.voters.vote_result(acks) == VoteResult.WON

    def _recv_lease_ack(self, src: NodeId, context: bytes) -> None:
        if len(context) != len(_LEASE_CONTEXT) + 8:
            return
        sent = int.from_bytes(context[len(_LEASE_CONTEXT) :], "big")
        if sent > self._clock:
            return  # not ours (a context from an earlier incarnation)
        if sent > self._lease_acks.get(src, -1):
            self._lease_acks[src] = sent
        if self._lease_reads and self._lease_valid():
            waiting, self._lease_reads = self._lease_reads, []
            for req_src, req_ctx in waiting:
                self._respond_read(req_src, req_ctx, self._log.committed)

    def _revoke_lease(self) -> None:
        if self._config.read_only != ReadOnlyOption.LEASE_BASED or self._lease_revoked:
            return
        logger.info("%d [term %d]: lease revoked (TimeoutNow sent)", self._id, self._term)
        self._lease_revoked = True
        waiting, self._lease_reads = self._lease_reads, []
        for src, ctx in waiting:
            self._admit_read(src, ctx)

    def _respond_read(self, src: NodeId, context: bytes, index: int) -> None:
        if src == self._id:
            self._read_states.append(ReadState(index=index, context=context))
            return
        self._send(
            ReadIndexResponse(src=self._id, dst=src, term=self._term, index=index, context=context)
        )
        # The reader applies up to ``index`` before answering: tell it the commit now rather
        # than with the next heartbeat (commits are otherwise piggybacked, see above).
        pr = self._trk.progress.get(src)
        if self._config.piggyback_commit and pr is not None and pr.sent_commit < index:
            self._send_append(src)

    # ------------------------------------------------------------------------------------------
    # membership

    def _apply_conf_change(self, index: int, cc: ConfChange) -> None:
        try:
            cfg = confchange.apply_conf_change(self._trk.config, cc)
        except ConfChangeError as exc:
            logger.error("%d: cannot apply conf change at %d (%s): %s", self._id, index, cc, exc)
            return
        logger.info("%d: applied conf change at %d: %s", self._id, index, cfg)
        self._switch_to_config(cfg, index)

    # A leader that applies its own removal (or demotion) hands over instead of stepping down
    # at once. Theory of operation: the remaining voters hold the change's entry, but only
    # a leader's messages tell them it is committed, and until they apply it their own
    # configuration still counts the departing leader's vote. Were it to stop sending the
    # moment it applied the change, a single lost message and a prompt shutdown of the
    # departed node (the usual next step) could leave them waiting for its vote forever: with
    # {1, 2} -> {2}, or {1, 2, 3} -> {3, 4, 5} through joint consensus. So it stays leader of
    # its term, accepting no proposals, heartbeating as usual, and counting the commit index
    # each remaining voter reports in its heartbeat responses (the commit it has on disk, so
    # that a crash cannot take it back; a follower syncs a commit that covers a configuration
    # change at once and reports it unasked); once a quorum of the new configuration reports
    # the change committed, it sends TimeoutNow to the most up-to-date
    # of them (a prompt election instead of an election timeout) and becomes a follower.
    # Check-quorum still deposes it if the remaining voters stop answering.

    def _switch_to_config(self, cfg: TrackerConfig, index: int = 0) -> None:
        self._trk.set_config(cfg, self._log.last_index())
        if not self._is_voter() and self._role != Role.FOLLOWER:
            if self._role == Role.LEADER and index and cfg.voters.ids():
                self._leaving_index = max(self._leaving_index, index)
                logger.info(
                    "%d [term %d]: removed or demoted by the change at %d; handing over once a"
                    " quorum of %s knows it committed",
                    self._id,
                    self._term,
                    index,
                    sorted(cfg.voters.ids()),
                )
            else:
                # A (pre-)candidate stops campaigning: it could still collect a quorum of the
                # *new* configuration, but a node outside the voters must never lead. (A
                # leader without a change index: a configuration from a snapshot, which a
                # leader never restores.) The term stays.
                logger.info(
                    "%d [term %d]: removed or demoted while %s; stepping down",
                    self._id,
                    self._term,
                    self._role.value,
                )
                self._become_follower(self._term, NONE)
                return
        if self._role != Role.LEADER or not cfg.voters.incoming.voters:
            return
        if self._leaving_index:
            if self._maybe_hand_over():
                return
            self._bcast_heartbeat(b"")
        self._recheck_reads()
        if self._maybe_commit():
            self._on_commit_advanced()
        else:
            for i, _ in self._trk.visit():
                if i != self._id:
                    self._maybe_send_append(i, send_if_empty=False)
        if self._lead_transferee != NONE and self._lead_transferee not in cfg.voters.ids():
            self._abort_leader_transfer()

    def _maybe_hand_over(self) -> bool:
        """A leaving leader (see above): True, having stepped down, once a quorum of the
        configuration's voters reported a commit index at or past the change that removed it."""
        leaving = self._leaving_index
        informed = {
            i: pr.known_commit >= leaving
            for i, pr in self._trk.progress.items()
            if i != self._id and not pr.is_learner
        }
        if self._trk.config.voters.vote_result(informed) != VoteResult.WON:
            return False
        last = self._log.last_index()
        best = max(
            (i for i, ok in informed.items() if ok and self._trk.progress[i].match == last),
            key=lambda i: self._trk.progress[i].known_commit,
            default=NONE,
        )
        logger.info(
            "%d [term %d]: the voters know of our removal at %d; stepping down%s",
            self._id,
            self._term,
            leaving,
            f", TimeoutNow to {best}" if best != NONE else "",
        )
        if best != NONE:
            self._send_timeout_now(best)
        self._become_follower(self._term, NONE)
        return True

    def _propose_auto_leave(self) -> None:
        cc = ConfChange()
        entry = Entry(
            term=self._term, index=0, kind=EntryKind.CONF_CHANGE, data=encode_conf_change(cc)
        )
        # Internal and tiny: neither a transfer nor the uncommitted limit may strand us joint.
        self._append_entries([entry], unlimited=True)
        self._pending_conf_index = self._log.last_index()
        self._needs_bcast = True
        logger.info(
            "%d: leaving joint configuration %s automatically at %d",
            self._id,
            self._trk.config,
            self._pending_conf_index,
        )

    # ------------------------------------------------------------------------------------------
    # sending

    def _send(self, m: Message) -> None:
        if isinstance(m, (AppendResponse, VoteResponse)):
            # These promise that our log / vote / term is durable.
            self._msgs_after_persist.append(m)
        else:
            self._msgs.append(m)
