"""An in-memory trioraft cluster for tests: N real nodes (all five actors each) on a
:class:`~trioraft.runtime.transport.memory.MemoryNetwork`, with simulated or real disks.

Made for ``MockClock(autojump_threshold=0)`` (pytest-trio's ``autojump_clock`` fixture): with
simulated disks every storage call runs inline, so no thread makes the mock clock jump, and a
3-node cluster elects a leader and commits within a few simulated seconds and a few real
milliseconds. Example::

    async def test_replication(autojump_clock):
        async with open_cluster(3) as cluster:
            leader = await cluster.wait_for_leader()
            assert await leader.propose(b"x") == 1      # ListStateMachine returns its length
            await cluster.wait_applied(leader.commit_index)
            await cluster.crash(leader.id)              # lose everything not fsynced
            await cluster.restart(leader.id)

Nodes can be stopped cleanly (:meth:`Cluster.stop`), crashed (:meth:`Cluster.crash`: on a
simulated disk, unsynced writes are lost), restarted, and new nodes joined
(:meth:`Cluster.add_node`). The network's fault controls (partition, drop, delay, ...) are on
:attr:`Cluster.network`.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import cbor2
import trio

from trioraft.config import Config
from trioraft.core.encoding import loads
from trioraft.errors import Timeout
from trioraft.node import RaftNode, open_raft_node, unwrap_group
from trioraft.runtime.disk import INLINE_DISK, DiskExecutor, ThreadDisk
from trioraft.runtime.transport.memory import MemoryNetwork, MemoryTransport
from trioraft.statemachine import Saver, SnapshotReader, SnapshotWriter
from trioraft.storage.fs import SimulatedFileSystem

__all__ = [
    "Cluster",
    "ListStateMachine",
    "NodeHandle",
    "free_tcp_ports",
    "open_cluster",
    "open_tcp_cluster",
    "transport_options",
]

log = logging.getLogger(__name__)


def transport_options(config: Config) -> dict[str, Any]:
    """Same as :meth:`Config.transport_options`."""
    return config.transport_options()


class ListStateMachine:
    """A simple state machine for tests: it records every applied ``(index, data)`` and returns
    the number of records after each apply. Its snapshot is one CBOR file of all records, so a
    restored node has exactly the history up to the snapshot, and ``check_exactly_once()``
    proves no index was applied twice or skipped.

    Attributes:
        records: ``[(index, data), ...]`` in apply order.
        applies: ``apply`` calls on this instance (not counting restored records).
        restores: ``restore`` calls on this instance.
    """

    def __init__(self) -> None:
        self.records: list[tuple[int, bytes]] = []
        self.applies = 0
        self.restores = 0
        self.leader_terms: list[tuple[str, int]] = []

    def apply(self, index: int, data: bytes) -> int:
        """Record the entry; returns the number of records."""
        self.records.append((index, bytes(data)))
        self.applies += 1
        return len(self.records)

    def capture(self) -> Saver:
        """Snapshot the records as they are now."""
        records = list(self.records)

        async def saver(writer: SnapshotWriter) -> None:
            await writer.write_file("records", cbor2.dumps([[i, d] for i, d in records]))

        return saver

    async def restore(self, reader: SnapshotReader) -> None:
        """Replace the records with the snapshot's."""
        raw = loads(await reader.read_file("records"))
        self.records = [(int(i), bytes(d)) for i, d in raw]
        self.restores += 1

    def on_leader_start(self, term: int) -> None:
        """Remember leadership changes (tests check hooks with it)."""
        self.leader_terms.append(("start", term))

    def on_leader_stop(self, term: int) -> None:
        """Remember leadership changes."""
        self.leader_terms.append(("stop", term))

    @property
    def data(self) -> list[bytes]:
        """The applied payloads, in order."""
        return [d for _, d in self.records]

    def check_exactly_once(self) -> None:
        """Assert the records are contiguous: the payload entries of each index appear once.

        Raises:
            AssertionError: an index repeats or goes backwards.
        """
        indexes = [i for i, _ in self.records]
        assert indexes == sorted(set(indexes)), f"index applied twice or out of order: {indexes}"


@attrs.define(eq=False)
class NodeHandle:
    """One cluster member, running or not."""

    id: int
    config: Config
    data_dir: str
    fs: Any
    state_machine: Any = None
    node: RaftNode | None = None
    transport: MemoryTransport | None = None
    starts: int = 0
    _scope: trio.CancelScope | None = None
    _stopped: trio.Event | None = None

    @property
    def running(self) -> bool:
        """True while the node runs."""
        return self.node is not None


class Cluster:
    """See the module docstring. Build it with :func:`open_cluster`."""

    def __init__(
        self,
        nursery: trio.Nursery,
        network: MemoryNetwork,
        *,
        state_machine_factory: Callable[[int], Any],
        make_config: Callable[[int, dict[int, str], bool], Config],
        base_dir: str,
        simulated_fs: bool,
        disk: DiskExecutor,
    ) -> None:
        self._nursery = nursery
        self.network = network
        self._factory = state_machine_factory
        self._make_config = make_config
        self._base_dir = base_dir
        self._simulated = simulated_fs
        self._disk = disk
        self.handles: dict[int, NodeHandle] = {}
        self.peers: dict[int, str] = {}

    # -- access --------------------------------------------------------------------------------

    def node(self, node_id: int) -> RaftNode:
        """The running node ``node_id``.

        Raises:
            KeyError: unknown or not running.
        """
        h = self.handles[node_id]
        if h.node is None:
            raise KeyError(f"node {node_id} is not running")
        return h.node

    def __getitem__(self, node_id: int) -> RaftNode:
        return self.node(node_id)

    def state_machine(self, node_id: int) -> Any:
        """The state machine of the node's current (or last) run."""
        return self.handles[node_id].state_machine

    @property
    def running(self) -> list[RaftNode]:
        """Running nodes, by id."""
        return [h.node for _, h in sorted(self.handles.items()) if h.node is not None]

    # -- lifecycle -----------------------------------------------------------------------------

    def _handle(self, node_id: int, *, join: bool) -> NodeHandle:
        h = self.handles.get(node_id)
        if h is None:
            self.peers.setdefault(node_id, f"mem://{node_id}")
            config = self._make_config(node_id, dict(self.peers), join)
            fs: Any = SimulatedFileSystem() if self._simulated else None
            h = NodeHandle(
                id=node_id,
                config=config,
                data_dir=os.path.join(self._base_dir, f"node-{node_id}"),
                fs=fs,
            )
            self.handles[node_id] = h
        return h

    async def start(self, node_id: int, *, join: bool = False) -> RaftNode:
        """Start (or restart) ``node_id`` with a fresh state machine; returns once recovered.

        Args:
            join: for a node not in the initial configuration: start empty and wait to be added.
        """
        h = self._handle(node_id, join=join)
        if h.node is not None:
            raise RuntimeError(f"node {node_id} is already running")
        h.state_machine = self._factory(node_id)
        transport = self.network.transport(
            node_id,
            disk=self._disk,
            on_unreachable=lambda peer: h.node.report_unreachable(peer) if h.node else None,
            **transport_options(h.config),
        )
        h.transport = transport
        node: RaftNode = await self._nursery.start(self._run, h, transport)
        return node

    async def _run(
        self,
        h: NodeHandle,
        transport: MemoryTransport,
        *,
        task_status: trio.TaskStatus[RaftNode] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        stopped = trio.Event()
        h._stopped = stopped
        try:
            with trio.CancelScope() as scope:
                h._scope = scope
                async with open_raft_node(
                    h.config,
                    h.state_machine,
                    data_dir=h.data_dir,
                    transport=transport,
                    fs=h.fs,
                    disk=self._disk,
                ) as node:
                    h.node = node
                    h.starts += 1
                    task_status.started(node)
                    await trio.sleep_forever()
        finally:
            h.node = None
            h._scope = None
            stopped.set()

    async def stop(self, node_id: int) -> None:
        """Stop ``node_id`` cleanly (everything acknowledged stays durable)."""
        h = self.handles[node_id]
        if h._scope is None or h._stopped is None:
            return
        h._scope.cancel()
        await h._stopped.wait()

    async def crash(self, node_id: int, rng: random.Random | None = None) -> None:
        """Stop ``node_id`` abruptly: on a simulated disk, everything not fsynced is lost
        (``rng`` keeps a random part of it; None keeps nothing)."""
        await self.stop(node_id)
        h = self.handles[node_id]
        if isinstance(h.fs, SimulatedFileSystem):
            h.fs.crash(rng)

    async def restart(self, node_id: int) -> RaftNode:
        """Start ``node_id`` again from its data directory."""
        return await self.start(node_id)

    async def add_node(
        self, node_id: int, *, voter: bool = True, via: RaftNode | None = None
    ) -> RaftNode:
        """Start a new empty node, add it as a learner through the leader, wait until it
        caught up, then (``voter``) promote it.

        Returns:
            the new node.
        """
        leader = via or await self.wait_for_leader()
        new = await self.start(node_id, join=True)
        await leader.add_learner(node_id, self.peers[node_id])
        await self.wait_applied(leader.commit_index, nodes=[node_id])
        if voter:
            await leader.promote(node_id)
        return new

    # -- waiting -------------------------------------------------------------------------------

    async def wait_for_leader(self, *, timeout: float = 30.0) -> RaftNode:
        """Wait until all running nodes agree on one leader of the highest term, and return it.

        Raises:
            Timeout: no agreed leader within ``timeout`` (simulated) seconds.
        """
        with trio.move_on_after(timeout):
            while True:
                nodes = self.running
                leaders = {n.leader for n in nodes}
                if len(leaders) == 1 and 0 not in leaders:
                    lid = leaders.pop()
                    h = self.handles.get(lid)
                    if h is not None and h.node is not None and h.node.is_leader:
                        return h.node
                await trio.sleep(0.05)
        raise Timeout(f"no agreed leader within {timeout} s")

    async def wait_applied(
        self, index: int, *, nodes: Iterable[int] | None = None, timeout: float = 30.0
    ) -> None:
        """Wait until the given running nodes (default: all running) applied ``index``.

        Raises:
            Timeout: not within ``timeout`` (simulated) seconds.
        """
        ids = list(nodes) if nodes is not None else [n.id for n in self.running]
        with trio.move_on_after(timeout):
            for nid in ids:
                await self.node(nid).wait_applied(index)
            return
        behind = {nid: self.node(nid).applied_index for nid in ids}
        raise Timeout(f"index {index} not applied within {timeout} s: {behind}")

    async def wait_until(self, predicate: Callable[[], bool], *, timeout: float = 30.0) -> None:
        """Poll ``predicate`` (every 10 ms of clock time) until it holds.

        Raises:
            Timeout: not within ``timeout`` seconds.
        """
        with trio.move_on_after(timeout):
            while not predicate():
                await trio.sleep(0.01)
            return
        raise Timeout(f"condition not met within {timeout} s")


@asynccontextmanager
async def open_cluster(
    n: int = 3,
    state_machine_factory: Callable[[int], Any] | None = None,
    *,
    simulated_fs: bool = True,
    base_dir: str | None = None,
    seed: int = 0,
    network: MemoryNetwork | None = None,
    start: bool = True,
    disk: DiskExecutor | None = None,
    **config: Any,
) -> AsyncIterator[Cluster]:
    """Start an ``n``-node cluster (ids 1..n) and yield it; everything stops on exit.

    Args:
        n: initial members.
        state_machine_factory: ``node_id -> state machine`` (default :class:`ListStateMachine`).
        simulated_fs: give each node a :class:`SimulatedFileSystem` and run disk calls inline
            (for mock clocks); False uses the real file system under ``base_dir``.
        base_dir: where data directories go (required for real disks; default ``/sim``).
        seed: seeds the network's fault decisions.
        network: bring your own network.
        start: start the initial members (False: call :meth:`Cluster.start` yourself).
        disk: override the disk executor (default: inline for simulated disks, threads else).
        **config: :class:`Config` overrides applied to every node.
    """
    if not simulated_fs and base_dir is None:
        raise ValueError("base_dir is required with real disks")
    factory: Callable[[int], Any] = state_machine_factory or (lambda _: ListStateMachine())
    net = network if network is not None else MemoryNetwork(seed)
    executor = disk if disk is not None else (INLINE_DISK if simulated_fs else ThreadDisk())

    def make_config(node_id: int, peers: dict[int, str], join: bool) -> Config:
        return Config(id=node_id, peers=peers, join=join, **config)

    try:
        async with _cluster_nursery(
            net, factory, make_config, base_dir or "/sim", simulated_fs, executor, n, start
        ) as cluster:
            yield cluster
    except BaseExceptionGroup as group:
        only = unwrap_group(group)
        if only is None:
            raise
        raise only from None


@asynccontextmanager
async def _cluster_nursery(
    net: MemoryNetwork,
    factory: Callable[[int], Any],
    make_config: Callable[[int, dict[int, str], bool], Config],
    base_dir: str,
    simulated_fs: bool,
    executor: DiskExecutor,
    n: int,
    start: bool,
) -> AsyncIterator[Cluster]:
    async with trio.open_nursery() as nursery:
        cluster = Cluster(
            nursery,
            net,
            state_machine_factory=factory,
            make_config=make_config,
            base_dir=base_dir,
            simulated_fs=simulated_fs,
            disk=executor,
        )
        for nid in range(1, n + 1):
            cluster.peers[nid] = f"mem://{nid}"
        try:
            if start:
                for nid in range(1, n + 1):
                    await cluster.start(nid)
            yield cluster
        finally:
            nursery.cancel_scope.cancel()


def free_tcp_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports that were free a moment ago (for tests on loopback)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@asynccontextmanager
async def open_tcp_cluster(
    n: int,
    base_dir: str,
    state_machine_factory: Callable[[int], Any] | None = None,
    *,
    cluster_id: str = "trioraft-test",
    ssl_server_context: ssl.SSLContext | None = None,
    ssl_client_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    host: str = "127.0.0.1",
    wal_disk: DiskExecutor | None = None,
    **config: Any,
) -> AsyncIterator[dict[int, RaftNode]]:
    """Run ``n`` nodes in this process, talking real TCP (optionally TLS) on loopback, with
    real data directories under ``base_dir``. Yields ``{node_id: RaftNode}``; everything stops
    on exit. Uses real time and worker threads for disk I/O (not for mock clocks). WAL segments
    are 4 MiB unless ``wal_segment_bytes`` is given."""
    from trioraft.runtime.transport.tcp import TcpTransport

    # Small WAL segments unless asked otherwise: each segment is zero-filled on disk before use,
    # and tests need neither 64 MiB per node nor the time to write it (more rolls, too).
    config.setdefault("wal_segment_bytes", 4 << 20)
    factory: Callable[[int], Any] = state_machine_factory or (lambda _: ListStateMachine())
    ports = free_tcp_ports(n, host)
    peers = {i: f"{host}:{ports[i - 1]}" for i in range(1, n + 1)}
    nodes: dict[int, RaftNode] = {}
    disk = ThreadDisk()

    async def run(nid: int, *, task_status: trio.TaskStatus[RaftNode]) -> None:
        cfg = Config(id=nid, peers=peers, **config)
        transport = TcpTransport(
            nid,
            cluster_id,
            listen=(host, ports[nid - 1]),
            peers={p: a for p, a in peers.items() if p != nid},
            ssl_server_context=ssl_server_context,
            ssl_client_context=ssl_client_context,
            server_hostname=server_hostname,
            disk=disk,
            on_unreachable=lambda peer: box[0].report_unreachable(peer) if box else None,
            **transport_options(cfg),
        )
        box: list[RaftNode] = []
        async with open_raft_node(
            cfg,
            factory(nid),
            data_dir=os.path.join(base_dir, f"node-{nid}"),
            transport=transport,
            disk=disk,
            wal_disk=wal_disk,
        ) as node:
            box.append(node)
            task_status.started(node)
            await trio.sleep_forever()

    try:
        async with trio.open_nursery() as nursery:
            for nid in range(1, n + 1):
                nodes[nid] = await nursery.start(run, nid)
            try:
                yield nodes
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        only = unwrap_group(group)
        if only is None:
            raise
        raise only from None
