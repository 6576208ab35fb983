"""A deterministic multi-node simulator for property tests of :class:`RaftCore`.

It is deliberately independent of ``trioraft.testing.harness``: it drives the cores only through
the public contract in the team brief (``tick``/``step``/``propose``/``ready``/``on_persisted``/
``on_applied``/``report_snapshot``, :class:`MemoryStorage` as the durable state), so it checks
the core and not a second copy of the same assumptions.

Theory of operation
-------------------
Every node has a durable :class:`MemoryStorage` (what it persisted; it survives a crash) and a
volatile core plus a toy state machine (a hash chain over the applied entries). The network is a
bag of in-flight messages; a schedule is a list of :class:`Action` values (tick a node, deliver,
duplicate or drop message k, propose, partition, heal, crash, restart, compact). The driver
processes every Ready right after each action, following the Ready contract: install a snapshot,
append entries, store the hard state, send ``messages`` (possibly before the write, as the
contract allows), send ``persisted_messages`` after it, acknowledge, apply committed entries and
acknowledge the application. A crash may also hit between taking a Ready and persisting it.

Snapshots: a node compacts by recording ``SnapshotMeta`` at its applied index with the state
machine's hash in a global registry; the leader's ``SnapshotRequest`` travels as a message (the
"stream"), and on delivery the follower's state machine restores from the registry; the leader
hears ``report_snapshot(peer, ok)`` when the stream succeeds or is lost.

After every action the invariants are checked; a violation raises :class:`Violation` with a
description. The :class:`Sim` also records the actions it executed, so a failing schedule can be
replayed and minimized (:func:`minimize`).
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Callable, Sequence

import attrs

from trioraft.core.bootstrap import bootstrap_state
from trioraft.core.config import CoreConfig
from trioraft.core.messages import AppendResponse, Message, SnapshotRequest, VoteResponse
from trioraft.core.raft import RaftCore
from trioraft.core.ready import Ready, Role
from trioraft.core.storage import MemoryStorage
from trioraft.core.types import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeTransition,
    ConfChangeType,
    ConfState,
    Entry,
    HardState,
    SnapshotMeta,
)
from trioraft.errors import NotLeader, ProposalDropped


class Violation(AssertionError):
    """A safety or liveness property does not hold."""


@attrs.frozen
class Action:
    """One step of a schedule. ``a`` and ``b`` are small integers interpreted modulo the
    relevant range, so any action list replays (useful for minimization)."""

    kind: str
    a: int = 0
    b: int = 0

    def __str__(self) -> str:
        return f"{self.kind}({self.a},{self.b})"


DEFAULT_WEIGHTS: dict[str, float] = {
    "tick": 30,
    "tick_all": 10,
    "deliver": 40,
    "duplicate": 3,
    "drop": 6,
    "propose": 8,
    "partition": 0.7,
    "isolate": 0.7,
    "heal": 1.5,
    "crash": 0.4,
    "crash_mid_ready": 0.3,
    "restart": 1.5,
    "compact": 4,
    "slow_disk": 0.7,
    "persist": 4,
    "propose_leader": 4,
    "transfer": 0.3,
    "read_index": 2,
    "campaign": 0.2,
    "conf_change": 0,
    "one_way": 0.5,
}

ACTION_KINDS = tuple(DEFAULT_WEIGHTS)


@attrs.define
class Fsm:
    """A toy state machine: the hash chain of the applied entries."""

    index: int = 0
    digest: bytes = b""


def _member(node_id: int, conf: ConfState) -> bool:
    return node_id in (conf.voters | conf.learners | conf.voters_outgoing)


def _chain(digest: bytes, e: Entry) -> bytes:
    h = hashlib.blake2b(digest, digest_size=16)
    h.update(b"%d|%d|%d|" % (e.term, e.index, int(e.kind)))
    h.update(e.data)
    return h.digest()


@attrs.define
class Node:
    id: int
    storage: MemoryStorage
    core: RaftCore | None = None
    fsm: Fsm = attrs.Factory(Fsm)
    incarnation: int = 0
    last_commit: int = 0
    hold_writes: bool = False  # a slow disk: Readies wait for a "persist" action
    unpersisted: list[Ready] = attrs.Factory(list)


@attrs.frozen
class InFlight:
    msg: Message
    incarnation: int  # sender's incarnation (a snapshot stream dies with its sender)


@attrs.define
class SimConfig:
    nodes: int = 3
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    max_msg_bytes: int = 1 << 20
    max_inflight_msgs: int = 256
    spares: int = 0  # extra node ids, not members at first (for membership changes)
    # Take a fresh snapshot when the stored one does not include the peer it must go to (see
    # Sim._send). The runtime no longer does this (a follower restores a snapshot that predates
    # its membership), so it is off by default, as in the runtime.
    fresh_snapshot_for_joiners: bool = False
    # A leader's term and self-vote must be durable (else it can lead the same term twice after
    # a crash): test_core_regressions.py::test_leader_only_after_its_vote_is_durable.
    check_durable_vote: bool = True
    keep_after_compact: int = 2  # entries kept behind a snapshot (maximum, drawn uniformly)
    # CoreConfig.piggyback_commit (the runtime turns it on); None: on for odd seeds, so every
    # profile explores both ways of propagating the commit index.
    piggyback_commit: bool | None = None
    weights: dict[str, float] = attrs.Factory(dict)  # overrides of DEFAULT_WEIGHTS


@attrs.define
class Stats:
    proposals: int = 0
    proposals_accepted: int = 0
    delivered: int = 0
    dropped: int = 0
    duplicated: int = 0
    crashes: int = 0
    restarts: int = 0
    compactions: int = 0
    snapshots_sent: int = 0
    snapshots_installed: int = 0
    leaders: int = 0
    max_term: int = 0
    max_commit: int = 0
    reads_confirmed: int = 0
    liveness_leader_ticks: int = 0  # ticks after healing until a leader was seen
    liveness_retries: int = 0  # proposals re-sent after a leadership change
    conf_changes: int = 0  # membership changes accepted by a leader
    fresh_snapshots: int = 0  # snapshots taken because a joiner was not in the stored one


class Sim:
    """The simulated cluster: :meth:`run` a list of actions, then
    :meth:`heal_and_check_liveness`."""

    send_persisted_early = False

    def __init__(self, seed: int, config: SimConfig | None = None) -> None:
        self.seed = seed
        self.cfg = config or SimConfig()
        # The schedule generator; everything else is derived from (seed, node, incarnation)
        # so that a recorded action list replays identically without it.
        self.rng = random.Random(seed)
        self.weights = {**DEFAULT_WEIGHTS, **self.cfg.weights}
        founders = list(range(1, self.cfg.nodes + 1))
        entries, hs = bootstrap_state(founders)
        self.nodes: dict[int, Node] = {}
        for i in range(1, self.cfg.nodes + self.cfg.spares + 1):
            # Founders start from the bootstrap log, spares empty (they join by conf change).
            ms = MemoryStorage()
            if i in founders:
                ms.append(entries)
                ms.set_hard_state(hs)
            self.nodes[i] = Node(i, ms)
        self.net: list[InFlight] = []
        self.blocked: set[tuple[int, int]] = set()
        self.trace: list[Action] = []
        self.stats = Stats()
        self.proposal_counter = 0
        self.read_counter = 0
        # read context -> (node, highest index known committed anywhere when it was issued)
        self.pending_reads: dict[bytes, tuple[int, int]] = {}
        # Global knowledge for the invariants.
        self.leader_of_term: dict[int, int] = {}
        self.applied: dict[int, tuple[Entry, bytes, int]] = {}  # index -> (entry, hash, term seen)
        self.snapshot_digest: dict[tuple[int, int], bytes] = {}
        self.applied_data: set[bytes] = set()
        self.snapshot_digest[(0, 0)] = b""
        for node in self.nodes.values():
            self._start(node)

    # -- lifecycle ---------------------------------------------------------------------------

    def _core_config(self, node: Node, applied: int) -> CoreConfig:
        return CoreConfig(
            id=node.id,
            election_ticks=self.cfg.election_ticks,
            heartbeat_ticks=self.cfg.heartbeat_ticks,
            pre_vote=self.cfg.pre_vote,
            check_quorum=self.cfg.check_quorum,
            max_msg_bytes=self.cfg.max_msg_bytes,
            max_inflight_msgs=self.cfg.max_inflight_msgs,
            seed=(self.seed * 1_000_003 + node.id * 7919 + node.incarnation) & 0xFFFFFFFF,
            applied=applied,
            piggyback_commit=(
                self.seed % 2 == 1
                if self.cfg.piggyback_commit is None
                else self.cfg.piggyback_commit
            ),
        )

    def _start(self, node: Node) -> None:
        snap = node.storage.snapshot()
        node.fsm = Fsm(
            snap.index, self.snapshot_digest[(snap.index, snap.term)] if snap.index else b""
        )
        node.incarnation += 1
        node.core = RaftCore(self._core_config(node, snap.index), node.storage)
        node.last_commit = node.core.commit

    def _crash(self, node: Node) -> None:
        """Lose everything volatile; keep exactly what was persisted (rebuilt from scratch
        with the restart recipe, so no in-memory state leaks into the next incarnation)."""
        node.core = None
        node.unpersisted = []
        node.hold_writes = False
        old = node.storage
        ms = MemoryStorage()
        snap = old.snapshot()
        if snap.index:
            ms.apply_snapshot(snap)
        ms.set_hard_state(old.hard_state)
        if old.last_index() >= old.first_index():
            ms.append(old.entries(old.first_index(), old.last_index() + 1))
        node.storage = ms
        self.stats.crashes += 1

    def live(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.core is not None]

    def leader(self) -> Node | None:
        """The live leader with the highest term, if any."""
        leaders = [n for n in self.live() if n.core is not None and n.core.role is Role.LEADER]
        return max(leaders, key=lambda n: n.core.term if n.core else 0, default=None)

    # -- message passing ---------------------------------------------------------------------

    def _check_promise(self, node: Node, m: Message) -> None:
        """Replies that promise durability must only leave once it holds."""
        st = node.storage
        if isinstance(m, VoteResponse) and m.granted and not m.pre_vote:
            hs = st.hard_state
            # A later durable term is fine too: the node can never vote in m.term again.
            if hs.term < m.term or (hs.term == m.term and hs.vote != m.dst):
                raise Violation(
                    f"Durable Vote: node {node.id} grants its vote to {m.dst} in term {m.term} "
                    f"but its durable hard state is {hs}"
                )
        elif isinstance(m, AppendResponse) and not m.reject:
            durable = max(st.last_index(), st.snapshot().index)
            if m.index > durable or st.hard_state.term < m.term:
                raise Violation(
                    f"Durable Ack: node {node.id} acknowledges index {m.index} in term {m.term} "
                    f"to {m.dst} but has only {durable} durable (hard state {st.hard_state})"
                )

    def _send(self, node: Node, msgs: Sequence[Message]) -> None:
        for m in msgs:
            self._check_promise(node, m)
            if isinstance(m, SnapshotRequest):
                self.stats.snapshots_sent += 1
                # The stored snapshot may predate the peer's admission, and the peer's core
                # ignores snapshots that do not include it (as etcd's does). Like etcd's
                # server (which sends a snapshot at the current applied index and
                # configuration), take a fresh snapshot, fail this stream, and let the core
                # retry with the new one.
                if (
                    self.cfg.fresh_snapshot_for_joiners
                    and not _member(m.dst, m.meta.conf)
                    and self._compact(node, 0)
                ):
                    self.stats.fresh_snapshots += 1
                    assert node.core is not None
                    node.core.report_snapshot(m.dst, False)
                    continue
            if (m.src, m.dst) in self.blocked or m.dst not in self.nodes:
                self._lost(InFlight(m, node.incarnation))
            else:
                self.net.append(InFlight(m, node.incarnation))

    def _lost(self, f: InFlight) -> None:
        self.stats.dropped += 1
        if isinstance(f.msg, SnapshotRequest):
            sender = self.nodes.get(f.msg.src)
            if sender and sender.core is not None and sender.incarnation == f.incarnation:
                sender.core.report_snapshot(f.msg.dst, False)

    def _deliver(self, f: InFlight) -> None:
        m = f.msg
        dst = self.nodes[m.dst]
        if dst.core is None or (m.src, m.dst) in self.blocked:
            self._lost(f)
            return
        self.stats.delivered += 1
        if isinstance(m, SnapshotRequest):
            sender = self.nodes[m.src]
            if sender.incarnation != f.incarnation:
                return  # the stream died with its sender
            dst.core.step(m)
            if sender.core is not None:
                sender.core.report_snapshot(m.dst, True)
        else:
            dst.core.step(m)

    # -- Ready processing --------------------------------------------------------------------

    def _handle_ready(self, node: Node, crash_before_persist: bool = False) -> None:
        core = node.core
        assert core is not None
        rd: Ready = core.ready()
        self._send(node, rd.messages)
        if self.send_persisted_early and rd.persisted_messages:
            # A broken runtime (sensitivity tests only): promises leave before the write.
            self._send(node, rd.persisted_messages)
            rd = attrs.evolve(rd, persisted_messages=())
        if crash_before_persist:
            self._crash(node)
            return
        node.unpersisted.append(rd)
        if rd.snapshot is not None or not node.hold_writes:
            # A snapshot is installed (state machine restored) before anything after it is
            # applied, so its Ready and every earlier one are written at once.
            self._persist(node, len(node.unpersisted))
        for e in rd.committed_entries:
            self._apply(node, e)
        if rd.committed_entries:
            core.on_applied(rd.committed_entries[-1].index)
        for rs in rd.read_states:
            self._check_read(node, rs.index, rs.context)

    def _known_commit(self) -> int:
        """The highest index any node knows to be committed (or has applied)."""
        commits = [n.core.commit for n in self.live() if n.core is not None]
        return max([*commits, max(self.applied, default=0)])

    def _check_read(self, node: Node, index: int, ctx: bytes) -> None:
        # A duplicated ReadIndexResponse yields the same read state twice: harmless, and still
        # checked against the bound of the original request.
        issued = self.pending_reads.get(ctx)
        if issued is None:
            raise Violation(f"node {node.id} got a read state for unknown context {ctx!r}")
        origin, committed = issued
        if origin != node.id:
            raise Violation(f"read {ctx!r} issued on {origin} answered on {node.id}")
        if index < committed:
            raise Violation(
                f"ReadIndex safety: read {ctx!r} on node {node.id} got index {index}, but "
                f"{committed} was already committed when it was issued (stale read)"
            )
        self.stats.reads_confirmed += 1

    def _persist(self, node: Node, count: int) -> None:
        """Write the oldest ``count`` unpersisted Readies, in order, and acknowledge them."""
        core = node.core
        assert core is not None
        st = node.storage
        for _ in range(min(count, len(node.unpersisted))):
            rd = node.unpersisted.pop(0)
            if rd.snapshot is not None:
                key = (rd.snapshot.index, rd.snapshot.term)
                if key not in self.snapshot_digest:
                    raise Violation(f"node {node.id} asked to install unknown snapshot {key}")
                st.apply_snapshot(rd.snapshot)
                node.fsm = Fsm(rd.snapshot.index, self.snapshot_digest[key])
                self._check_apply_digest(node, rd.snapshot.index, node.fsm.digest, "snapshot")
                self.stats.snapshots_installed += 1
            if rd.entries:
                st.append(rd.entries)
            if rd.hard_state is not None:
                st.set_hard_state(rd.hard_state)
            self._send(node, rd.persisted_messages)
            if rd.needs_ack or rd.must_persist:
                core.on_persisted(rd.number)

    def _apply(self, node: Node, e: Entry) -> None:
        core = node.core
        assert core is not None
        if e.index != node.fsm.index + 1:
            raise Violation(
                f"node {node.id} applies index {e.index} but its state machine is at "
                f"{node.fsm.index} (gap or repeat)"
            )
        if e.index > core.commit:
            raise Violation(f"node {node.id} applies {e.index} beyond its commit {core.commit}")
        node.fsm = Fsm(e.index, _chain(node.fsm.digest, e))
        self.applied_data.add(e.data)
        known = self.applied.get(e.index)
        if known is None:
            self.applied[e.index] = (e, node.fsm.digest, core.term)
        else:
            if known[0] != e:
                raise Violation(
                    f"State Machine Safety: node {node.id} applies {e} at {e.index}, "
                    f"but {known[0]} was applied there before"
                )
            self._check_apply_digest(node, e.index, node.fsm.digest, "apply")

    def _check_apply_digest(self, node: Node, index: int, digest: bytes, how: str) -> None:
        known = self.applied.get(index)
        if known is not None and known[1] != digest:
            raise Violation(
                f"State Machine Safety: node {node.id} state after {how} at {index} differs "
                "from the state other nodes had there"
            )

    def settle(self) -> None:
        """Process Readies until no node has one."""
        for _ in range(1000):
            busy = False
            for node in self.nodes.values():
                if node.core is not None and node.core.has_ready():
                    busy = True
                    self._handle_ready(node)
            if not busy:
                return
        raise Violation("Readies keep coming: livelock inside the cores")

    # -- actions -----------------------------------------------------------------------------

    def apply_action(self, act: Action) -> None:
        self.trace.append(act)
        ids = sorted(self.nodes)
        pick = ids[act.a % len(ids)]
        node = self.nodes[pick]
        k = act.kind
        if k == "tick":
            if node.core is not None:
                node.core.tick()
        elif k == "tick_all":
            for n in self.live():
                assert n.core is not None
                n.core.tick()
        elif k in ("deliver", "duplicate", "drop"):
            if self.net:
                j = act.b % len(self.net)
                f = self.net[j] if k == "duplicate" else self.net.pop(j)
                if k == "drop":
                    self._lost(f)
                else:
                    if k == "duplicate":
                        self.stats.duplicated += 1
                    self._deliver(f)
        elif k == "propose":
            if node.core is not None:
                self.proposal_counter += 1
                self.stats.proposals += 1
                data = b"p%d" % self.proposal_counter
                try:
                    idx = node.core.propose(data)
                except (ProposalDropped, NotLeader):
                    pass
                else:
                    if idx:
                        self.stats.proposals_accepted += 1
        elif k == "partition":
            # Split into two sides by the bits of b.
            side = {i for n, i in enumerate(ids) if (act.b >> n) & 1}
            self.blocked = {(x, y) for x in ids for y in ids if (x in side) != (y in side)}
        elif k == "isolate":
            self.blocked = {(x, y) for x in ids for y in ids if x != y and pick in (x, y)}
        elif k == "one_way":
            # Asymmetric fault: cut only the directed link pick -> other.
            others = [i for i in ids if i != pick]
            self.blocked.add((pick, others[act.b % len(others)]))
        elif k == "heal":
            self.blocked = set()
        elif k == "crash":
            if node.core is not None:
                self._crash(node)
        elif k == "crash_mid_ready":
            if node.core is not None:
                if node.core.has_ready():
                    self._handle_ready(node, crash_before_persist=True)
                else:
                    self._crash(node)
        elif k == "restart":
            if node.core is None:
                self._start(node)
                self.stats.restarts += 1
        elif k == "compact":
            if node.core is not None:
                self._compact(node, act.b)
        elif k == "propose_leader":
            leader = self.leader()
            if leader is not None and leader.core is not None:
                n = 1 + act.b % 5
                if (act.b >> 3) & 1:
                    # As the runtime does with the proposals it drains together.
                    first = self.proposal_counter + 1
                    self.proposal_counter += n
                    self.stats.proposals += n
                    datas = [b"p%d" % i for i in range(first, first + n)]
                    with contextlib.suppress(ProposalDropped, NotLeader):
                        leader.core.propose_batch(datas)
                        self.stats.proposals_accepted += n
                else:
                    for _ in range(n):
                        self.proposal_counter += 1
                        self.stats.proposals += 1
                        try:
                            leader.core.propose(b"p%d" % self.proposal_counter)
                        except (ProposalDropped, NotLeader):
                            break
                        self.stats.proposals_accepted += 1
        elif k == "transfer":
            leader = self.leader()
            if leader is not None and leader.core is not None and leader.id != pick:
                with contextlib.suppress(ProposalDropped, NotLeader):
                    leader.core.transfer_leadership(pick)
        elif k == "read_index":
            if node.core is not None:
                self.read_counter += 1
                ctx = b"r%d" % self.read_counter
                try:
                    node.core.read_index(ctx)
                except (ProposalDropped, NotLeader):
                    pass
                else:
                    self.pending_reads[ctx] = (node.id, self._known_commit())
        elif k == "conf_change":
            self._conf_change(pick, act.b)
        elif k == "campaign":
            if node.core is not None:
                node.core.campaign()
        elif k == "slow_disk":
            if node.core is not None:
                node.hold_writes = not node.hold_writes
                if not node.hold_writes:
                    self._persist(node, len(node.unpersisted))
        elif k == "persist":
            if node.core is not None:
                self._persist(node, 1 + act.b % 3)
        else:
            raise ValueError(f"unknown action {k}")
        self.settle()
        self.check()

    def _conf_change(self, target: int, b: int) -> None:
        leader = self.leader()
        if leader is None or leader.core is None:
            return
        conf = leader.core.conf_state
        others = [i for i in sorted(self.nodes) if i != target]
        second = others[(b >> 4) % len(others)]
        choice = b % 8
        if choice in (0, 1):
            changes = [(ConfChangeType.ADD_VOTER, target)]
        elif choice == 2:
            changes = [(ConfChangeType.ADD_LEARNER, target)]
            # (may demote one of two voters: see test_two_voters_demote_one_and_leader_crashes)
        elif choice in (3, 4):
            # Keep at least two voters so that liveness after healing stays meaningful.
            if len(conf.voters - {target}) < 2:
                return
            changes = [(ConfChangeType.REMOVE, target)]
        elif choice == 5:
            changes = [(ConfChangeType.ADD_VOTER, target), (ConfChangeType.REMOVE, second)]
            if len(conf.voters - {second}) < 2:
                return
        elif choice == 6:
            changes = [(ConfChangeType.ADD_VOTER, target), (ConfChangeType.ADD_VOTER, second)]
        else:
            changes = [(ConfChangeType.ADD_LEARNER, target)]
            if target not in conf.voters or len(conf.voters) < 3:
                return  # demote a voter (joint), keeping two voters
        cc = ConfChange(
            changes=tuple(ConfChangeSingle(t, i) for t, i in changes),
            transition=ConfChangeTransition.AUTO,
        )
        try:
            leader.core.propose_conf_change(cc)
        except (ProposalDropped, NotLeader):
            return
        self.stats.conf_changes += 1

    def _compact(self, node: Node, b: int) -> bool:
        st = node.storage
        index = node.fsm.index
        if index <= st.snapshot().index or index > st.last_index():
            return False
        assert node.core is not None
        meta = SnapshotMeta(index=index, term=st.term(index), conf=node.core.conf_state)
        self.snapshot_digest.setdefault((meta.index, meta.term), node.fsm.digest)
        if self.snapshot_digest[(meta.index, meta.term)] != node.fsm.digest:
            raise Violation(f"node {node.id}: two different states for snapshot {meta}")
        st.set_snapshot(meta)
        keep = b % (self.cfg.keep_after_compact + 1)
        st.compact(max(index - keep, st.first_index() - 1))
        self.stats.compactions += 1
        return True

    def random_action(self) -> Action:
        """Draw the next action from the schedule generator (``self.rng``)."""
        r = self.rng
        kinds = list(self.weights)
        kind = r.choices(kinds, weights=[self.weights[k] for k in kinds])[0]
        return Action(kind, r.randrange(1 << 16), r.randrange(1 << 16))

    def run(self, actions: Sequence[Action]) -> None:
        for act in actions:
            self.apply_action(act)

    # -- invariants --------------------------------------------------------------------------

    def check(self) -> None:
        for node in self.live():
            core = node.core
            assert core is not None
            self.stats.max_term = max(self.stats.max_term, core.term)
            self.stats.max_commit = max(self.stats.max_commit, core.commit)
            if core.role is Role.LEADER:
                prev = self.leader_of_term.setdefault(core.term, node.id)
                if prev == node.id and len(self.leader_of_term) > self.stats.leaders:
                    self.stats.leaders = len(self.leader_of_term)
                if prev != node.id:
                    raise Violation(
                        f"Election Safety: nodes {prev} and {node.id} both lead term {core.term}"
                    )
                hs_durable = node.storage.hard_state
                if self.cfg.check_durable_vote and (
                    hs_durable.term != core.term or hs_durable.vote != node.id
                ):
                    # Otherwise a crash can bring it back at an older term, from where it can
                    # win the same term again and lead it twice with a different log.
                    raise Violation(
                        f"Durable Vote: node {node.id} leads term {core.term} but its durable "
                        f"hard state is {hs_durable}"
                    )
                self._check_leader_completeness(node)
            if core.commit < node.last_commit:
                raise Violation(
                    f"node {node.id}: commit went back from {node.last_commit} to {core.commit}"
                )
            node.last_commit = core.commit
            hs: HardState = node.storage.hard_state
            if core.commit < hs.commit:
                raise Violation(
                    f"node {node.id}: commit {core.commit} below its persisted commit {hs.commit}"
                )
            if node.fsm.index > core.commit:
                raise Violation(
                    f"node {node.id}: applied {node.fsm.index} beyond commit {core.commit}"
                )
        self._check_log_matching()

    def _check_leader_completeness(self, leader: Node) -> None:
        core = leader.core
        assert core is not None
        first = core.first_index
        for index, (entry, _, seen_term) in self.applied.items():
            if seen_term >= core.term or index < first:
                continue
            if core.term_at(index) != entry.term:
                raise Violation(
                    f"Leader Completeness: leader {leader.id} of term {core.term} has term "
                    f"{core.term_at(index)} at {index}, but {entry} was committed there (seen "
                    f"in term {seen_term})"
                )

    def _check_log_matching(self) -> None:
        nodes = list(self.nodes.values())
        for x in range(len(nodes)):
            for y in range(x + 1, len(nodes)):
                a, b = nodes[x].storage, nodes[y].storage
                lo = max(a.first_index(), b.first_index())
                hi = min(a.last_index(), b.last_index())
                if lo > hi:
                    continue
                ea = a.entries(lo, hi + 1)
                eb = b.entries(lo, hi + 1)
                # Highest common index with equal terms; everything below must be equal.
                k = hi - lo
                while k >= 0 and ea[k].term != eb[k].term:
                    k -= 1
                if k >= 0 and ea[: k + 1] != eb[: k + 1]:
                    bad = next(i for i in range(k + 1) if ea[i] != eb[i])
                    raise Violation(
                        f"Log Matching: nodes {nodes[x].id} and {nodes[y].id} agree on the "
                        f"term at {lo + k} but differ at {lo + bad}: {ea[bad]} vs {eb[bad]}"
                    )

    # -- liveness ----------------------------------------------------------------------------

    def heal_and_check_liveness(self, proposals: int = 5, max_ticks: int = 200) -> int:
        """Heal the network, restart every node, and require that a leader emerges and that
        ``proposals`` new entries are applied on every node within ``max_ticks`` ticks.

        Returns:
            the number of ticks it took.
        """
        self.blocked = set()
        for node in self.nodes.values():
            if node.core is None:
                self._start(node)
            elif node.hold_writes:
                node.hold_writes = False
                self._persist(node, len(node.unpersisted))
        self.settle()
        ticks = 0
        wanted = {b"live%d" % j for j in range(proposals)}
        proposed_to: tuple[int, int] | None = None  # (leader id, term) of the last attempt
        while ticks < max_ticks:
            self._round()
            ticks += 1
            leader = self.leader()
            if leader is not None and leader.core is not None:
                if self.stats.liveness_leader_ticks == 0:
                    self.stats.liveness_leader_ticks = ticks
                target = (leader.id, leader.core.term)
                if proposed_to != target:
                    # First attempt, or leadership changed: an uncommitted proposal to a
                    # deposed leader may be lost, and a client would retry, so retry the
                    # ones not applied anywhere yet.
                    missing = sorted(wanted - self.applied_data)
                    if missing:
                        try:
                            for data in missing:
                                leader.core.propose(data)
                        except ProposalDropped:
                            pass
                        else:
                            if proposed_to is not None:
                                self.stats.liveness_retries += 1
                            proposed_to = target
                        self.settle()
                        self.check()
            if proposed_to and leader is not None and leader.core is not None:
                conf = leader.core.conf_state
                members = conf.voters | conf.learners | conf.voters_outgoing | conf.learners_next
                if all(self._has_applied(self.nodes[i], wanted) for i in members):
                    return ticks
        state = ", ".join(
            f"{n.id}: {n.core.role.value} term {n.core.term} commit {n.core.commit} "
            f"applied {n.fsm.index}"
            for n in self.nodes.values()
            if n.core is not None
        )
        raise Violation(
            f"liveness: after healing, proposals were not applied everywhere within {max_ticks} "
            f"ticks (last proposed to (leader, term) {proposed_to}; {state})"
        )

    def _has_applied(self, node: Node, wanted: set[bytes]) -> bool:
        found = {
            e.data
            for i, (e, _, _) in self.applied.items()
            if i <= node.fsm.index and e.data in wanted
        }
        return found == wanted

    def _round(self) -> None:
        """Tick everybody, then deliver every message until the network is quiet."""
        for node in self.live():
            assert node.core is not None
            node.core.tick()
        self.settle()
        for _ in range(100):
            if not self.net:
                break
            batch, self.net = self.net, []
            for f in batch:
                self._deliver(f)
            self.settle()
        self.check()


def run_schedule(seed: int, actions: Sequence[Action], config: SimConfig | None = None) -> Sim:
    sim = Sim(seed, config)
    sim.run(actions)
    return sim


def minimize(
    failing: Callable[[Sequence[Action]], bool], actions: Sequence[Action]
) -> list[Action]:
    """Delta debugging (ddmin-style): drop chunks of the schedule while it still fails."""
    current = list(actions)
    chunk = max(1, len(current) // 2)
    while chunk >= 1:
        i = 0
        changed = False
        while i < len(current):
            candidate = current[:i] + current[i + chunk :]
            if candidate and failing(candidate):
                current = candidate
                changed = True
            else:
                i += chunk
        if not changed:
            chunk //= 2
    return current
