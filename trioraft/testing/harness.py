"""A synchronous multi-node harness for :class:`~trioraft.core.raft.RaftCore` (no trio, no I/O).

It plays the runtime's part exactly as the contract in ``docs/design.md`` describes it, so tests of
the core exercise the same sequence a real node goes through:

* every Ready: ``messages`` go to the network at once; committed entries are applied to a tiny
  list state machine and acknowledged with ``on_applied``; the snapshot (installed into the
  node's storage and state machine), entries and hard state are written to the node's
  :class:`~trioraft.core.storage.MemoryStorage`; then ``on_persisted(number)`` and only then
  ``persisted_messages`` go to the network;
* a :class:`~trioraft.core.messages.SnapshotRequest` is delivered the way the runtime streams it:
  the sender's stored snapshot data is copied into the receiver's snapshot store, the request is
  stepped into the receiver, and the sender's core gets ``report_snapshot(peer, ok)``; a blocked
  link or a drop filter makes the "stream" fail (``ok=False``);
* a crash keeps only the node's storage (what it persisted) and its snapshot store; a restart
  rebuilds a fresh storage with the restart recipe (snapshot, hard state, entries), restores the
  state machine from the newest snapshot and creates a new core with ``applied`` = its index.

Example::

    c = Cluster(3, seed=7)
    c.elect(1)
    idx = c.propose(1, b"x")
    c.stabilize()
    assert c.applied(2) == [(idx, b"x")]
    c.isolate(3); ...; c.heal(); c.stabilize()
    c.check_invariants()

The network is a FIFO list of in-flight messages (:attr:`Cluster.network`); property tests may
reorder, duplicate or remove items in it freely. With ``auto_persist=False`` Readies wait in
:attr:`NodeState.unpersisted` until :meth:`Cluster.persist` (a crash loses them), which models a
slow disk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from trioraft.core.bootstrap import bootstrap_state
from trioraft.core.config import CoreConfig
from trioraft.core.messages import Message, SnapshotRequest
from trioraft.core.raft import RaftCore
from trioraft.core.ready import ReadState, Ready, Role
from trioraft.core.storage import MemoryStorage
from trioraft.core.types import ConfChange, Entry, EntryKind, NodeId, SnapshotMeta

__all__ = ["AppliedRecord", "Cluster", "NodeState", "StabilizeError"]

#: The harness state machine's contents: (index, data) of applied non-empty normal entries.
FsmContents = tuple[tuple[int, bytes], ...]


class StabilizeError(RuntimeError):
    """:meth:`Cluster.stabilize` did not reach quiescence within its step budget."""


@attrs.frozen
class AppliedRecord:
    """One entry applied by one node (kept across restarts, for safety checks)."""

    index: int
    term: int
    kind: EntryKind
    data: bytes


@attrs.define
class NodeState:
    """Everything the harness keeps for one node.

    Attributes:
        id: node id.
        storage: what the node has persisted (survives crashes).
        core: the live core, None while crashed.
        fsm: the list state machine: applied non-empty normal entries as (index, data).
        applied_index: last index applied to ``fsm`` (including conf changes and no-ops).
        snapshots: the node's snapshot store: (index, term) -> fsm contents at that index.
        unpersisted: Readies taken but not yet persisted (``auto_persist=False`` only).
        read_states: read states received, oldest first.
        history: every entry ever applied, across restarts (for safety checks).
        max_commit: highest commit index seen from the current core (monotonicity check).
    """

    id: NodeId
    storage: MemoryStorage
    core: RaftCore | None = None
    fsm: list[tuple[int, bytes]] = attrs.Factory(list)
    applied_index: int = 0
    snapshots: dict[tuple[int, int], FsmContents] = attrs.Factory(dict)
    unpersisted: list[Ready] = attrs.Factory(list)
    read_states: list[ReadState] = attrs.Factory(list)
    history: dict[int, AppliedRecord] = attrs.Factory(dict)
    max_commit: int = 0

    @property
    def alive(self) -> bool:
        """False while crashed."""
        return self.core is not None


class Cluster:
    """N Raft cores wired through an in-memory network, driven synchronously.

    Args:
        n: number of founding voters (ids ``1..n`` unless ``ids`` is given).
        ids: explicit founding voter ids.
        learners: founding learner ids (in addition to the voters).
        seed: seeds every core's election timer (each core mixes in its own id).
        config_overrides: :class:`CoreConfig` fields applied to every node
            (e.g. ``{"pre_vote": False}``).
        auto_persist: persist every Ready as soon as it is taken (default). When False, Readies
            queue until :meth:`persist` and a crash loses them.
    """

    def __init__(
        self,
        n: int = 3,
        *,
        ids: Iterable[NodeId] | None = None,
        learners: Iterable[NodeId] = (),
        seed: int = 0,
        config_overrides: Mapping[str, Any] | None = None,
        auto_persist: bool = True,
    ) -> None:
        voters = sorted(ids) if ids is not None else list(range(1, n + 1))
        learner_ids = sorted(learners)
        self.seed = seed
        self.config_overrides: dict[str, Any] = dict(config_overrides or {})
        self.auto_persist = auto_persist
        self.nodes: dict[NodeId, NodeState] = {}
        #: Messages in flight, oldest first. Tests may reorder, duplicate or remove items.
        self.network: list[Message] = []
        #: Every message dropped (by a filter, a blocked link or a dead receiver).
        self.dropped: list[Message] = []
        self._blocked: set[tuple[NodeId, NodeId]] = set()
        self._filters: list[Callable[[Message], bool]] = []
        self._leaders_by_term: dict[int, set[NodeId]] = {}
        entries, hs = bootstrap_state(voters, learner_ids)
        for i in [*voters, *learner_ids]:
            storage = MemoryStorage()
            storage.append(entries)
            storage.set_hard_state(hs)
            node = NodeState(id=i, storage=storage)
            self.nodes[i] = node
            self._start(node)
        # Apply the bootstrap configuration entries.
        self.stabilize()

    # -- configuration and access ---------------------------------------------------------------

    def config_for(self, node_id: NodeId, applied: int = 0) -> CoreConfig:
        """The CoreConfig the harness gives ``node_id``."""
        fields: dict[str, Any] = {"seed": self.seed, **self.config_overrides}
        return CoreConfig(id=node_id, applied=applied, **fields)

    def core(self, node_id: NodeId) -> RaftCore:
        """The live core of ``node_id``.

        Raises:
            KeyError: unknown node. RuntimeError: the node is crashed.
        """
        core = self.nodes[node_id].core
        if core is None:
            raise RuntimeError(f"node {node_id} is crashed")
        return core

    def alive_ids(self) -> list[NodeId]:
        """Ids of the nodes that are not crashed."""
        return [i for i, n in sorted(self.nodes.items()) if n.alive]

    def _start(self, node: NodeState) -> None:
        snap = node.storage.snapshot()
        node.fsm = list(node.snapshots[(snap.index, snap.term)]) if snap.index else []
        node.applied_index = snap.index
        node.unpersisted = []
        node.core = RaftCore(self.config_for(node.id, applied=snap.index), node.storage)
        node.max_commit = node.core.commit

    # -- time and processing ----------------------------------------------------------------------

    def tick(self, node_id: NodeId, ticks: int = 1) -> None:
        """Tick one node (Readies are not processed)."""
        for _ in range(ticks):
            self.core(node_id).tick()

    def tick_all(self, ticks: int = 1) -> None:
        """Tick every live node ``ticks`` times (Readies are not processed)."""
        for _ in range(ticks):
            for i in self.alive_ids():
                self.core(i).tick()

    def advance(self, ticks: int = 1) -> None:
        """``ticks`` times: tick every live node, then :meth:`stabilize`."""
        for _ in range(ticks):
            self.tick_all()
            self.stabilize()

    def process(self, node_id: NodeId) -> Ready | None:
        """Take and handle one Ready from ``node_id`` (None if it has nothing)."""
        node = self.nodes[node_id]
        core = node.core
        if core is None or not core.has_ready():
            return None
        rd = core.ready()
        self._observe(node, core)
        self.network.extend(rd.messages)
        node.read_states.extend(rd.read_states)
        if self.auto_persist:
            self._persist_ready(node, core, rd)
            self._apply(node, core, rd.committed_entries)
        else:
            self._apply(node, core, rd.committed_entries)
            node.unpersisted.append(rd)
        return rd

    def persist(self, node_id: NodeId, count: int | None = None) -> int:
        """Persist up to ``count`` (default all) queued Readies of ``node_id``, oldest first;
        returns how many were persisted."""
        node = self.nodes[node_id]
        done = 0
        while node.unpersisted and (count is None or done < count):
            core = node.core
            assert core is not None
            self._persist_ready(node, core, node.unpersisted.pop(0))
            done += 1
        return done

    def _persist_ready(self, node: NodeState, core: RaftCore, rd: Ready) -> None:
        if rd.snapshot is not None:
            meta = rd.snapshot
            data = node.snapshots.get((meta.index, meta.term))
            if data is None:
                raise AssertionError(f"node {node.id}: snapshot {meta} is not in its store")
            node.storage.apply_snapshot(meta)
            node.fsm = list(data)
            node.applied_index = meta.index
        if rd.entries:
            node.storage.append(rd.entries)
        if rd.hard_state is not None:
            node.storage.set_hard_state(rd.hard_state)
        if rd.needs_ack:
            core.on_persisted(rd.number)
            self._observe(node, core)
        self.network.extend(rd.persisted_messages)

    def _apply(self, node: NodeState, core: RaftCore, entries: tuple[Entry, ...]) -> None:
        if not entries:
            return
        for e in entries:
            if e.index != node.applied_index + 1:
                raise AssertionError(
                    f"node {node.id}: applying {e.index} after {node.applied_index}"
                )
            node.applied_index = e.index
            node.history.setdefault(e.index, AppliedRecord(e.index, e.term, e.kind, e.data))
            rec = node.history[e.index]
            if (rec.term, rec.data) != (e.term, e.data):
                raise AssertionError(f"node {node.id} applied two different entries at {e.index}")
            if e.kind == EntryKind.NORMAL and e.data:
                node.fsm.append((e.index, e.data))
        core.on_applied(node.applied_index)
        self._observe(node, core)

    def _observe(self, node: NodeState, core: RaftCore) -> None:
        if core.commit < node.max_commit:
            raise AssertionError(
                f"node {node.id}: commit went back from {node.max_commit} to {core.commit}"
            )
        node.max_commit = core.commit
        if core.role == Role.LEADER:
            self._leaders_by_term.setdefault(core.term, set()).add(node.id)

    # -- network ----------------------------------------------------------------------------------

    def _blocked_reason(self, m: Message) -> str | None:
        dst = self.nodes.get(m.dst)
        if dst is None or not dst.alive:
            return "receiver down"
        if (m.src, m.dst) in self._blocked:
            return "link blocked"
        if any(f(m) for f in self._filters):
            return "filtered"
        return None

    def deliver_message(self, m: Message) -> bool:
        """Deliver one message now (subject to links and filters); True if delivered."""
        src = self.nodes.get(m.src)
        sender = src.core if src is not None else None
        if self._blocked_reason(m) is not None:
            self.dropped.append(m)
            if isinstance(m, SnapshotRequest) and sender is not None:
                sender.report_snapshot(m.dst, False)
            return False
        dst = self.nodes[m.dst]
        receiver = dst.core
        assert receiver is not None
        if isinstance(m, SnapshotRequest):
            data = src.snapshots.get((m.meta.index, m.meta.term)) if src is not None else None
            if data is None:
                self.dropped.append(m)
                if sender is not None:
                    sender.report_snapshot(m.dst, False)
                return False
            # The stream completed: the files are durable in the receiver's store.
            dst.snapshots[(m.meta.index, m.meta.term)] = data
            receiver.step(m)
            if sender is not None:
                sender.report_snapshot(m.dst, True)
        else:
            receiver.step(m)
        self._observe(dst, receiver)
        return True

    def deliver(
        self, pred: Callable[[Message], bool] | None = None, limit: int | None = None
    ) -> int:
        """Deliver the messages in flight now (those matching ``pred``, at most ``limit``), in
        order; messages they cause are queued behind. Returns how many were delivered."""
        batch = [m for m in self.network if pred is None or pred(m)]
        if limit is not None:
            batch = batch[:limit]
        for m in batch:
            self.network.remove(m)
        return sum(1 for m in batch if self.deliver_message(m))

    def take_messages(self, pred: Callable[[Message], bool] | None = None) -> list[Message]:
        """Remove and return the in-flight messages matching ``pred`` (all by default)."""
        taken = [m for m in self.network if pred is None or pred(m)]
        self.network = [m for m in self.network if not (pred is None or pred(m))]
        return taken

    def stabilize(self, max_steps: int = 100_000) -> int:
        """Process Readies and deliver messages until nothing is left to do.

        Returns the number of rounds taken.

        Raises:
            StabilizeError: still busy after ``max_steps`` rounds.
        """
        for rounds in range(max_steps):
            busy = False
            for i in self.alive_ids():
                while self.process(i) is not None:
                    busy = True
                if self.nodes[i].unpersisted:
                    self.persist(i)
                    busy = True
            if self.network:
                self.deliver()
                busy = True
            if not busy:
                return rounds
        raise StabilizeError(f"cluster still busy after {max_steps} rounds")

    def block(self, src: NodeId, dst: NodeId) -> None:
        """Drop every message from ``src`` to ``dst`` (one direction)."""
        self._blocked.add((src, dst))

    def partition(self, *groups: Iterable[NodeId]) -> None:
        """Cut every link between nodes of different groups (both directions). Nodes in no group
        keep their links."""
        sets = [set(g) for g in groups]
        for a_i, a in enumerate(sets):
            for b in sets[a_i + 1 :]:
                for x in a:
                    for y in b:
                        self._blocked.add((x, y))
                        self._blocked.add((y, x))

    def isolate(self, node_id: NodeId) -> None:
        """Cut every link to and from ``node_id``."""
        self.partition([node_id], [i for i in self.nodes if i != node_id])

    def drop(self, pred: Callable[[Message], bool]) -> None:
        """Drop every message matching ``pred`` until :meth:`heal`."""
        self._filters.append(pred)

    def heal(self) -> None:
        """Restore every link and remove every drop filter."""
        self._blocked.clear()
        self._filters.clear()

    # -- crashes and membership -------------------------------------------------------------------

    def crash(self, node_id: NodeId) -> None:
        """Kill ``node_id``: keep only its storage (what it persisted) and snapshot store."""
        node = self.nodes[node_id]
        node.core = None
        node.unpersisted = []
        node.read_states = []

    def restart(self, node_id: NodeId) -> None:
        """Restart a crashed node from what it persisted, with the runtime's restart recipe."""
        node = self.nodes[node_id]
        if node.alive:
            raise RuntimeError(f"node {node_id} is running")
        old = node.storage
        fresh = MemoryStorage()
        snap = old.snapshot()
        if snap.index:
            fresh.apply_snapshot(snap)
        fresh.set_hard_state(old.hard_state)
        if old.last_index() >= old.first_index():
            fresh.append(old.entries(old.first_index(), old.last_index() + 1))
        node.storage = fresh
        self._start(node)

    def add_node(self, node_id: NodeId) -> None:
        """Create a node with an empty storage (to be added with a conf change)."""
        if node_id in self.nodes:
            raise ValueError(f"node {node_id} exists")
        node = NodeState(id=node_id, storage=MemoryStorage())
        self.nodes[node_id] = node
        self._start(node)

    def compact(self, node_id: NodeId, index: int | None = None) -> SnapshotMeta:
        """Take a snapshot of ``node_id``'s state machine at its applied index (recorded in its
        storage and snapshot store), then compact its log up to ``index`` (default: the applied
        index; must not exceed it)."""
        node = self.nodes[node_id]
        core = self.core(node_id)
        applied = node.applied_index
        meta = SnapshotMeta(index=applied, term=node.storage.term(applied), conf=core.conf_state)
        node.snapshots[(meta.index, meta.term)] = tuple(node.fsm)
        if meta.index > node.storage.snapshot().index:
            node.storage.set_snapshot(meta)
        node.storage.compact(applied if index is None else index)
        return meta

    # -- client operations ------------------------------------------------------------------------

    def campaign(self, node_id: NodeId) -> None:
        """Make ``node_id`` start an election (not stabilized)."""
        self.core(node_id).campaign()

    def elect(self, node_id: NodeId) -> None:
        """Make ``node_id`` campaign and stabilize.

        Raises:
            AssertionError: it did not become leader.
        """
        self.campaign(node_id)
        self.stabilize()
        if self.core(node_id).role != Role.LEADER:
            raise AssertionError(f"node {node_id} did not win: {self.core(node_id).status()}")

    def propose(self, node_id: NodeId, data: bytes) -> int:
        """``core.propose`` on ``node_id`` (not stabilized)."""
        return self.core(node_id).propose(data)

    def propose_conf_change(self, node_id: NodeId, cc: ConfChange) -> int:
        """``core.propose_conf_change`` on ``node_id`` (not stabilized)."""
        return self.core(node_id).propose_conf_change(cc)

    def read_index(self, node_id: NodeId, context: bytes) -> None:
        """``core.read_index`` on ``node_id`` (not stabilized)."""
        self.core(node_id).read_index(context)

    # -- observation ------------------------------------------------------------------------------

    def leader(self) -> NodeId | None:
        """The live leader of the highest term, or None."""
        best: tuple[int, NodeId] | None = None
        for i in self.alive_ids():
            core = self.core(i)
            if core.role == Role.LEADER and (best is None or core.term > best[0]):
                best = (core.term, i)
        return best[1] if best is not None else None

    def applied(self, node_id: NodeId) -> list[tuple[int, bytes]]:
        """The node's state machine: (index, data) of applied non-empty normal entries."""
        return list(self.nodes[node_id].fsm)

    def applied_index(self, node_id: NodeId) -> int:
        """Last index applied by ``node_id``'s state machine."""
        return self.nodes[node_id].applied_index

    def read_states(self, node_id: NodeId) -> list[ReadState]:
        """Read states ``node_id`` received so far."""
        return list(self.nodes[node_id].read_states)

    def log_entries(self, node_id: NodeId) -> list[Entry]:
        """The entries ``node_id`` has persisted (after its snapshot)."""
        st = self.nodes[node_id].storage
        if st.last_index() < st.first_index():
            return []
        return st.entries(st.first_index(), st.last_index() + 1)

    def check_invariants(self) -> None:
        """Check Raft's safety properties over everything observed so far.

        * Election Safety: at most one leader per term.
        * Log Matching: persisted logs that agree on (index, term) agree on every entry up to it.
        * State Machine Safety: no two nodes (or two lives of one node) applied different
          entries at one index.
        * Leader Completeness: the current leader's log holds every applied entry it still
          covers.
        * Commit monotonicity is checked continuously while driving.

        Raises:
            AssertionError: describing the first violation found.
        """
        for term, leaders in self._leaders_by_term.items():
            if len(leaders) > 1:
                raise AssertionError(f"two leaders in term {term}: {sorted(leaders)}")
        logs = {i: {e.index: e for e in self.log_entries(i)} for i in self.nodes}
        ids = sorted(logs)
        for a_i, a in enumerate(ids):
            for b in ids[a_i + 1 :]:
                common = sorted(set(logs[a]) & set(logs[b]))
                match = [i for i in common if logs[a][i].term == logs[b][i].term]
                if not match:
                    continue
                top = match[-1]
                for i in common:
                    if i <= top and logs[a][i] != logs[b][i]:
                        raise AssertionError(
                            f"log matching violated between {a} and {b} at {i} (agree at {top})"
                        )
        seen: dict[int, tuple[NodeId, AppliedRecord]] = {}
        for i, node in sorted(self.nodes.items()):
            for idx, rec in node.history.items():
                prev = seen.setdefault(idx, (i, rec))
                if prev[1] != rec:
                    raise AssertionError(
                        f"state machine safety: {prev[0]} and {i} applied different entries at "
                        f"{idx}: {prev[1]} vs {rec}"
                    )
        lead = self.leader()
        if lead is not None:
            core = self.core(lead)
            for idx, (_, rec) in seen.items():
                if core.first_index <= idx <= core.last_index and core.term_at(idx) != rec.term:
                    raise AssertionError(f"leader {lead} lacks applied entry {idx}")
