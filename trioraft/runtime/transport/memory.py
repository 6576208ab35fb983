"""An in-memory network for tests and simulations: every node's :class:`MemoryTransport` talks
through one :class:`MemoryNetwork`, which can partition, isolate, block one-way, drop, delay,
duplicate and reorder, all driven by one seeded ``random.Random`` so a run replays from its seed.

Raft messages are datagrams: each one is judged when sent (link up? dropped? duplicated? how
late?) and again when due (a link cut meanwhile loses it), then handed to the destination's
handler by the destination's delivery task, never synchronously inside ``send``. Without
reordering, messages on one link stay in FIFO order whatever their delays.

Snapshot streams and calls use reliable in-memory byte-stream connections carrying the same
frames as TCP (so framing, decoding and the streaming protocol are exercised for real). A
connection needs both directions of its link to be up; cutting a link breaks the connections on
it, exactly like a reset TCP connection, which is how tests interrupt and resume streams.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import trio

from trioraft.core.messages import Message, SnapshotRequest
from trioraft.runtime.disk import DiskExecutor, ThreadDisk
from trioraft.runtime.transport.base import (
    CallFailed,
    ClientRequest,
    ClientResponse,
    InboundHandler,
    PeerUnreachable,
    SnapshotReaderLike,
    SnapshotTransferError,
    StoredSnapshotLike,
)
from trioraft.runtime.transport.calls import CALL_DRAIN_GRACE, CallClient, serve_calls
from trioraft.runtime.transport.framing import (
    DEFAULT_MAX_FRAME_SIZE,
    ConnectionClosed,
    FramedStream,
    FrameError,
)
from trioraft.runtime.transport.streaming import (
    ActiveStreams,
    ReceiveOptions,
    SnapshotReceiver,
    StreamOptions,
    StreamSettings,
    StreamStats,
    send_snapshot,
)
from trioraft.runtime.transport.util import TransportStats

__all__ = ["LinkFaults", "MemoryNetwork", "MemoryTransport"]

log = logging.getLogger(__name__)


@attrs.define
class LinkFaults:
    """Fault settings of one direction of a link (or the network-wide default).

    Attributes:
        drop: probability that a message is lost.
        duplicate: probability that a message is delivered twice.
        delay_min, delay_max: each message is delayed by a uniform draw from this range (s).
    """

    drop: float = 0.0
    duplicate: float = 0.0
    delay_min: float = 0.0
    delay_max: float = 0.0


@attrs.define
class NetworkStats:
    """Counters of the simulated network."""

    sent: int = 0  #: messages handed to the network
    delivered: int = 0
    dropped_partition: int = 0  #: cut link at send or delivery time, or node not serving
    dropped_loss: int = 0  #: random loss
    dropped_overflow: int = 0  #: the link already held ``queue_size`` messages in flight
    duplicated: int = 0
    connections: int = 0  #: stream connections opened
    connections_broken: int = 0  #: stream connections broken by a fault
    max_buffered_bytes: int = 0  #: most bytes ever waiting in one direction of a connection


class MemoryNetwork:
    """The simulated network all :class:`MemoryTransport` s of a test share.

    Args:
        seed: an int seed or a ``random.Random`` to draw every fault decision from.
        queue_size: per-link bound of messages in flight (beyond it, sends are dropped).
        reorder_jitter: with reordering on, extra random delay (s) added to each message.
    """

    def __init__(
        self, seed: int | random.Random = 0, *, queue_size: int = 1024, reorder_jitter: float = 0.01
    ) -> None:
        self.rng = seed if isinstance(seed, random.Random) else random.Random(seed)
        self.queue_size = queue_size
        self.reorder_jitter = reorder_jitter
        self.stats = NetworkStats()
        self._transports: dict[int, MemoryTransport] = {}
        self._groups: dict[int, int] | None = None
        self._isolated: set[int] = set()
        self._blocked: set[tuple[int, int]] = set()
        self._default = LinkFaults()
        self._links: dict[tuple[int, int], LinkFaults] = {}
        self._reorder = False
        self._inflight: dict[tuple[int, int], int] = {}
        self._fifo_at: dict[tuple[int, int], float] = {}
        self._seq = itertools.count()
        self._conns: set[_MemConn] = set()

    # ----------------------------------------------------------------------------------------
    # Nodes

    def transport(self, node_id: int, **kwargs: Any) -> MemoryTransport:
        """Creates the transport of ``node_id`` (keyword arguments go to
        :class:`MemoryTransport`). Replaces a previous transport of the same node (restart)."""
        t = MemoryTransport(self, node_id, **kwargs)
        self._transports[node_id] = t
        return t

    def nodes(self) -> list[int]:
        """Node ids with a transport."""
        return sorted(self._transports)

    # ----------------------------------------------------------------------------------------
    # Connectivity

    def partition(self, groups: Iterable[Iterable[int]]) -> None:
        """Splits the network: nodes talk only within their group. Nodes in no group form one
        more group together. Replaces any previous partition; breaks cut connections."""
        mapping: dict[int, int] = {}
        for gid, group in enumerate(groups):
            for node in group:
                mapping[node] = gid
        self._groups = mapping
        self._break_cut()

    def isolate(self, node: int) -> None:
        """Cuts ``node`` off from everyone (until :meth:`heal`)."""
        self._isolated.add(node)
        self._break_cut()

    def block(self, src: int, dst: int) -> None:
        """Cuts the one-way link ``src -> dst`` (until :meth:`unblock` or :meth:`heal`)."""
        self._blocked.add((src, dst))
        self._break_cut()

    def unblock(self, src: int, dst: int) -> None:
        """Restores the one-way link ``src -> dst``."""
        self._blocked.discard((src, dst))

    def heal(self) -> None:
        """Removes every partition, isolation and block (loss/delay settings stay)."""
        self._groups = None
        self._isolated.clear()
        self._blocked.clear()

    def can_reach(self, src: int, dst: int) -> bool:
        """Whether messages from ``src`` to ``dst`` currently get through the topology."""
        if src == dst:
            return True
        if src in self._isolated or dst in self._isolated or (src, dst) in self._blocked:
            return False
        if self._groups is not None:
            return self._groups.get(src, -1) == self._groups.get(dst, -1)
        return True

    # ----------------------------------------------------------------------------------------
    # Faults

    def _set(self, src: int | None, dst: int | None, **changes: Any) -> None:
        if src is None and dst is None:
            self._default = attrs.evolve(self._default, **changes)
        elif src is None or dst is None:
            raise ValueError("give both src and dst for one link, or neither for all links")
        else:
            base = self._links.get((src, dst), self._default)
            self._links[(src, dst)] = attrs.evolve(base, **changes)

    def set_drop(self, prob: float, src: int | None = None, dst: int | None = None) -> None:
        """Loss probability for the link ``src -> dst``, or the default for all links."""
        _check_prob(prob)
        self._set(src, dst, drop=prob)

    def set_duplicate(self, prob: float, src: int | None = None, dst: int | None = None) -> None:
        """Duplication probability for the link ``src -> dst``, or for all links."""
        _check_prob(prob)
        self._set(src, dst, duplicate=prob)

    def set_delay(
        self, min_s: float, max_s: float, src: int | None = None, dst: int | None = None
    ) -> None:
        """Per-message delay range (seconds) for the link ``src -> dst``, or for all links."""
        if not 0 <= min_s <= max_s:
            raise ValueError("need 0 <= min <= max")
        self._set(src, dst, delay_min=min_s, delay_max=max_s)

    def set_reorder(self, enabled: bool) -> None:
        """With reordering, each message's delay is independent (plus a random jitter), so
        messages on a link may overtake each other; without, each link is FIFO."""
        self._reorder = enabled

    def clear_faults(self) -> None:
        """Back to a perfect network (loss, duplication, delay and reordering off)."""
        self._default = LinkFaults()
        self._links.clear()
        self._reorder = False

    def faults(self, src: int, dst: int) -> LinkFaults:
        """The fault settings in effect for ``src -> dst``."""
        return self._links.get((src, dst), self._default)

    # ----------------------------------------------------------------------------------------
    # Datagrams

    def _send(self, src: int, msg: Message) -> bool:
        """Judges and schedules one message; returns False when it was lost to the topology."""
        dst = msg.dst
        self.stats.sent += 1
        target = self._transports.get(dst)
        if target is None or not target.serving or not self.can_reach(src, dst):
            self.stats.dropped_partition += 1
            return False
        f = self.faults(src, dst)
        if f.drop and self.rng.random() < f.drop:
            self.stats.dropped_loss += 1
            return True
        copies = 1
        if f.duplicate and self.rng.random() < f.duplicate:
            copies = 2
            self.stats.duplicated += 1
        link = (src, dst)
        now = trio.current_time()
        for _ in range(copies):
            if self._inflight.get(link, 0) >= self.queue_size:
                self.stats.dropped_overflow += 1
                continue
            delay = self.rng.uniform(f.delay_min, f.delay_max) if f.delay_max > 0 else 0.0
            if self._reorder:
                delay += self.rng.uniform(0.0, self.reorder_jitter)
                at = now + delay
            else:
                at = max(now + delay, self._fifo_at.get(link, now))
                self._fifo_at[link] = at
            self._inflight[link] = self._inflight.get(link, 0) + 1
            target._schedule(at, next(self._seq), src, msg)
        return True

    def _delivered(self, src: int, dst: int) -> bool:
        """Bookkeeping when a message is due; returns whether it may be delivered."""
        link = (src, dst)
        self._inflight[link] -= 1
        if self.can_reach(src, dst):
            self.stats.delivered += 1
            return True
        self.stats.dropped_partition += 1
        return False

    # ----------------------------------------------------------------------------------------
    # Connections

    async def _connect(self, src: int, dst: int, purpose: str) -> FramedStream:
        await trio.lowlevel.checkpoint()
        source = self._transports.get(src)
        target = self._transports.get(dst)
        if (
            source is None
            or target is None
            or not target.serving
            or not self.can_reach(src, dst)
            or not self.can_reach(dst, src)
        ):
            raise PeerUnreachable(f"node {dst} unreachable from node {src}")
        conn = _MemConn(self, src, dst, purpose)
        self._conns.add(conn)
        self.stats.connections += 1
        max_frame = min(source.max_frame_size, target.max_frame_size)
        target._accept(src, purpose, FramedStream(conn.server, max_frame_size=max_frame))
        return FramedStream(conn.client, max_frame_size=max_frame)

    def break_connections(self, a: int | None = None, b: int | None = None) -> int:
        """Breaks stream connections (all, those of node ``a``, or those between ``a`` and
        ``b``) as if reset; returns how many."""
        n = 0
        for conn in list(self._conns):
            ends = {conn.src, conn.dst}
            if (a is None or a in ends) and (b is None or b in ends):
                conn.break_()
                n += 1
        return n

    def _break_cut(self) -> None:
        for conn in list(self._conns):
            if not (self.can_reach(conn.src, conn.dst) and self.can_reach(conn.dst, conn.src)):
                conn.break_()


def _check_prob(prob: float) -> None:
    if not 0.0 <= prob <= 1.0:
        raise ValueError("probability must be within [0, 1]")


# --------------------------------------------------------------------------------------------
# In-memory byte streams


class _Pipe:
    """One direction of a connection: an unbounded byte buffer (the sender's window is what
    bounds it) that records its high-water mark."""

    def __init__(self, network: MemoryNetwork) -> None:
        self.network = network
        self.buf = bytearray()
        self.eof = False
        self.broken = False
        self.reader_closed = False
        self._readable = trio.Event()

    def write(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) > self.network.stats.max_buffered_bytes:
            self.network.stats.max_buffered_bytes = len(self.buf)
        self._readable.set()

    def wake(self) -> None:
        self._readable.set()

    async def wait(self) -> None:
        await self._readable.wait()
        self._readable = trio.Event()


class _PipeStream(trio.abc.Stream):
    #: send_all writes all of its data at once, after its only checkpoint, or nothing: a
    #: cancelled send leaves no part of a frame behind (FramedStream checks this)
    send_all_is_atomic = True

    def __init__(self, conn: _MemConn, outgoing: _Pipe, incoming: _Pipe) -> None:
        self._conn = conn
        self._out = outgoing
        self._in = incoming
        self._closed = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise trio.ClosedResourceError("stream closed")
        if self._out.broken or self._out.reader_closed:
            raise trio.BrokenResourceError("connection reset")
        self._out.write(bytes(data))

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        while True:
            if self._closed:
                raise trio.ClosedResourceError("stream closed")
            if self._in.broken:
                raise trio.BrokenResourceError("connection reset")
            if self._in.buf:
                n = len(self._in.buf) if max_bytes is None else min(max_bytes, len(self._in.buf))
                out = bytes(self._in.buf[:n])
                del self._in.buf[:n]
                return out
            if self._in.eof:
                return b""
            await self._in.wait()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._out.eof = True
            self._out.wake()
            self._in.reader_closed = True
            self._in.wake()
            self._conn.closed_end()
        await trio.lowlevel.checkpoint()


class _MemConn:
    def __init__(self, network: MemoryNetwork, src: int, dst: int, purpose: str) -> None:
        self.network = network
        self.src = src
        self.dst = dst
        self.purpose = purpose
        up, down = _Pipe(network), _Pipe(network)
        self.client = _PipeStream(self, up, down)
        self.server = _PipeStream(self, down, up)
        self._open_ends = 2
        self._pipes = (up, down)

    def break_(self) -> None:
        self.network.stats.connections_broken += 1
        for pipe in self._pipes:
            pipe.broken = True
            pipe.buf.clear()
            pipe.wake()
        self.network._conns.discard(self)

    def closed_end(self) -> None:
        self._open_ends -= 1
        if self._open_ends == 0:
            self.network._conns.discard(self)


# --------------------------------------------------------------------------------------------
# The transport


class MemoryTransport:
    """One node's transport on a :class:`MemoryNetwork` (create it with
    :meth:`MemoryNetwork.transport`).

    Args:
        network: the shared network.
        node_id: this node.
        peers: the nodes this one may send to (None: every node of the network).
        disk: runs blocking snapshot reads/writes (use the inline executor under MockClock).
        stream_options, receive_options: snapshot streaming settings.
        snapshot_rate: bytes/s limit shared by all outgoing snapshot streams.
        max_frame_size: frame limit of stream/call connections (raised to fit
            ``stream_options.chunk_size``).
        on_unreachable: called (from this transport's task, soon after) with a peer id when a
            message to it was lost to the topology or to a stopped node. Must not block.
    """

    def __init__(
        self,
        network: MemoryNetwork,
        node_id: int,
        *,
        peers: Iterable[int] | None = None,
        disk: DiskExecutor | None = None,
        stream_options: StreamOptions | None = None,
        receive_options: ReceiveOptions | None = None,
        snapshot_rate: float | None = None,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        on_unreachable: Callable[[int], None] | None = None,
    ) -> None:
        self.network = network
        self.node_id = node_id
        self.stats = TransportStats()
        #: Statistics of the most recent completed stream to each peer.
        self.last_stream: dict[int, StreamStats] = {}
        self._peers: set[int] | None = set(peers) if peers is not None else None
        self._removed: set[int] = set()
        self._disk: DiskExecutor = disk or ThreadDisk()
        # Frames always fit this node's own chunks (plus their envelope).
        self._stream = StreamSettings(stream_options, snapshot_rate, max_frame_size)
        self._on_unreachable = on_unreachable
        self._receiver = SnapshotReceiver(
            node_id, disk=self._disk, options=receive_options, stats=self.stats
        )
        self._streams = ActiveStreams()
        self._calls: dict[int, CallClient] = {}
        self._heap: list[tuple[float, int, int, Message]] = []
        self._unreachable: set[int] = set()
        self._unreachable_event = trio.Event()
        self._wake = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._handler: InboundHandler[Any] | None = None

    @property
    def serving(self) -> bool:
        """Whether :meth:`serve` is running (a stopped node receives nothing)."""
        return self._nursery is not None

    @property
    def receiver(self) -> SnapshotReceiver:
        """The receiving side of snapshot streams (for inspection)."""
        return self._receiver

    def _is_peer(self, peer: int) -> bool:
        if peer == self.node_id or peer in self._removed:
            return False
        return self._peers is None or peer in self._peers

    async def serve(
        self,
        handler: InboundHandler[Any],
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Delivers inbound messages and serves inbound connections until cancelled.
        ``task_status.started`` receives the node id."""
        if self._nursery is not None:
            raise RuntimeError("MemoryTransport.serve() is already running")
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self._receiver.run)
                self._handler = handler
                self._nursery = nursery
                self._heap.clear()
                nursery.start_soon(self._deliver_loop, handler)
                if self._on_unreachable is not None:
                    nursery.start_soon(self._report_unreachable, self._on_unreachable)
                task_status.started(self.node_id)
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self._handler = None
            self._heap.clear()
            self._calls.clear()
            self._streams.cancel_all("transport stopped")
            self.network.break_connections(self.node_id)

    def send(self, msg: Message) -> None:
        """Hands ``msg`` to the network; never blocks."""
        if not self._is_peer(msg.dst):
            self.stats.dropped_unknown_peer += 1
            return
        if self.network._send(self.node_id, msg):
            self.stats.messages_sent += 1
        else:
            self.stats.dropped_unreachable += 1
            if self._on_unreachable is not None:
                # Reported from this transport's own task, never from inside send() (which the
                # raft actor calls while it handles a Ready).
                self._unreachable.add(msg.dst)
                self._unreachable_event.set()

    async def _report_unreachable(self, callback: Callable[[int], None]) -> None:
        while True:
            await self._unreachable_event.wait()
            self._unreachable_event = trio.Event()
            peers, self._unreachable = sorted(self._unreachable), set()
            for peer in peers:
                try:
                    callback(peer)
                except Exception:
                    log.exception("node %d: on_unreachable callback raised", self.node_id)

    def _schedule(self, at: float, seq: int, src: int, msg: Message) -> None:
        if self._heap and (at, seq) >= self._heap[0][:2]:
            heapq.heappush(self._heap, (at, seq, src, msg))
            return
        heapq.heappush(self._heap, (at, seq, src, msg))
        self._wake.set()

    async def _deliver_loop(self, handler: InboundHandler[Any]) -> None:
        while True:
            if not self._heap:
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            at = self._heap[0][0]
            if at > trio.current_time():
                with trio.move_on_at(at):
                    await self._wake.wait()
                if self._wake.is_set():
                    self._wake = trio.Event()
                continue
            _, _, src, msg = heapq.heappop(self._heap)
            if not self.network._delivered(src, self.node_id) or src in self._removed:
                continue
            self.stats.messages_received += 1
            handler.deliver(msg)
            await trio.lowlevel.checkpoint()

    async def stream_snapshot(
        self,
        peer: int,
        snapshot: StoredSnapshotLike,
        reader: SnapshotReaderLike,
        request: SnapshotRequest,
    ) -> None:
        """Streams a snapshot to ``peer`` over an in-memory connection (same protocol as TCP).

        Raises:
            SnapshotTransferError: stalled, rejected, aborted (superseded / peer removed).
        """
        if not self._is_peer(peer):
            raise SnapshotTransferError(f"node {peer} is not a peer")

        async def run() -> StreamStats:
            return await send_snapshot(
                lambda: self.network._connect(self.node_id, peer, "snapshot"),
                snapshot,
                reader,
                request,
                disk=self._disk,
                options=self._stream.options,
                throttle=self._stream.throttle,
                rng=self.network.rng,
                peer=peer,
            )

        await self._streams.send_counted(peer, run, self.stats, self.last_stream)

    @property
    def max_frame_size(self) -> int:
        """The largest frame this transport accepts (fits its own snapshot chunks)."""
        return self._stream.max_frame_size

    def adopt_stream_settings(self, options: StreamOptions, rate: float | None) -> bool:
        """Use a node's ``Config`` snapshot-streaming settings (``Config.transport_options``):
        called by the node at start. A transport given its own ``stream_options`` or
        ``snapshot_rate`` keeps them. Returns True if the transport streams with these
        settings (taken, or its own are the same)."""
        return self._stream.adopt(options, rate)

    def cancel_snapshot(self, peer: int) -> bool:
        """Aborts the stream to ``peer`` (it raises :class:`SnapshotAborted`)."""
        return self._streams.cancel(peer)

    async def call(self, peer: int, request: ClientRequest) -> ClientResponse:
        """Sends ``request`` to ``peer``'s handler over an in-memory connection.

        Raises:
            CallFailed: unreachable (``sent=False``) or connection broken (``sent=True``).
        """
        if not self._is_peer(peer):
            raise CallFailed(peer, False, "not a peer")
        if self._nursery is None:
            raise CallFailed(peer, False, "transport not serving")
        client = self._calls.get(peer)
        if client is None:
            client = CallClient(
                peer,
                lambda: self.network._connect(self.node_id, peer, "call"),
                self._nursery,
                self.stats,
            )
            self._calls[peer] = client
        return await client.call(request)

    def add_peer(self, peer: int, address: str = "") -> None:
        """Allows sending to ``peer`` (the address is ignored)."""
        self._removed.discard(peer)
        if self._peers is not None:
            self._peers.add(peer)

    def remove_peer(self, peer: int) -> None:
        """Stops sending to and receiving from ``peer``; aborts streams and calls to it."""
        self._removed.add(peer)
        if self._peers is not None:
            self._peers.discard(peer)
        self._streams.cancel(peer, "peer-removed")
        client = self._calls.pop(peer, None)
        if client is not None and self._nursery is not None:
            self._nursery.start_soon(client.aclose_when_idle, CALL_DRAIN_GRACE)

    # ----------------------------------------------------------------------------------------
    # Inbound connections

    def _accept(self, src: int, purpose: str, conn: FramedStream) -> None:
        assert self._nursery is not None and self._handler is not None
        self._nursery.start_soon(self._handle_inbound, src, purpose, conn, self._handler)

    async def _handle_inbound(
        self, src: int, purpose: str, conn: FramedStream, handler: InboundHandler[Any]
    ) -> None:
        try:
            if src in self._removed:
                return
            if purpose == "call":
                await serve_calls(conn, handler, src=src, node_id=self.node_id, stats=self.stats)
            else:
                await self._receiver.handle(conn, src, handler)
        except ConnectionClosed:
            pass
        except FrameError as exc:
            self.stats.bad_frames += 1
            log.warning("node %d: malformed frame from node %d: %s", self.node_id, src, exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.debug("node %d: connection from node %d broke: %r", self.node_id, src, exc)
        except Exception:
            log.exception("node %d: error serving a connection from node %d", self.node_id, src)
        finally:
            with trio.CancelScope(shield=True):
                await conn.aclose()
