"""The TCP transport: length-prefixed CBOR frames over ``trio.SocketStream``, optionally TLS.

Connections are opened by the sending side and start with a handshake (:class:`Hello` /
:class:`HelloAck`) carrying the protocol version, the cluster id and both node ids; strangers,
other clusters and other versions are refused and logged. Per peer there is:

- one outbound ``"raft"`` connection, fed by a bounded queue that :meth:`TcpTransport.send`
  fills without ever blocking (overflow drops and counts); a sender task drains it in batches
  and reconnects with jittered exponential backoff (messages queued while the peer is
  unreachable are dropped: Raft retransmits what matters);
- one ``"call"`` connection, opened on the first :meth:`TcpTransport.call`;
- one ``"snapshot"`` connection per stream attempt, so a multi-gigabyte transfer never delays a
  heartbeat.

Raft messages from a peer arrive on the connection the peer opened. A malformed frame closes
only the connection it arrived on; the listener and every other connection carry on.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import ssl
import struct
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import trio

from trioraft.core.encoding import DecodeError
from trioraft.core.messages import Message, SnapshotRequest
from trioraft.runtime.disk import DiskExecutor, ThreadDisk
from trioraft.runtime.transport.base import (
    CallFailed,
    ClientRequest,
    ClientResponse,
    HandshakeRefused,
    InboundHandler,
    PeerUnreachable,
    SnapshotReaderLike,
    SnapshotTransferError,
    StoredSnapshotLike,
    TransportError,
)
from trioraft.runtime.transport.calls import CALL_DRAIN_GRACE, CallClient, serve_calls
from trioraft.runtime.transport.frames import (
    PROTOCOL_VERSION,
    PURPOSES,
    Hello,
    HelloAck,
    RaftFrame,
    decode_frame,
)
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
from trioraft.runtime.transport.util import (
    Backoff,
    TransportStats,
    format_address,
    parse_address,
)

__all__ = ["TcpTransport"]

log = logging.getLogger(__name__)

_BATCH = 128  # Raft messages written with one send_all
#: queued to wake a peer's writer for the leftover of a direct write (never sent as a frame)
_FLUSH: Any = object()
_HANDSHAKE_MAX_FRAME = 64 << 10  # frame limit until the peer has identified itself
_LENGTH = struct.Struct(">I")  # a frame's length prefix (as in framing.py)
_RAFT_READ_SIZE = 64 << 10  # bytes asked for per read on a raft connection
#: the most asked for in one read (``os.read`` allocates what it is asked for before it reads,
#: so a large frame arriving slowly must not cost its whole size per wake-up)
_RAFT_READ_MAX = 1 << 20


@attrs.define(eq=False)
class _Peer:
    id: int
    address: str
    send_channel: trio.MemorySendChannel[Message]
    receive_channel: trio.MemoryReceiveChannel[Message]
    scope: trio.CancelScope | None = None
    calls: CallClient | None = None
    connected: bool = False
    reported_down: bool = False
    #: the plain-TCP connection's file descriptor while its writer is idle-capable (-1: none)
    direct_fd: int = -1
    #: the connection the fd belongs to (for frame packing and limits)
    direct_conn: FramedStream | None = None
    #: the writer task has (or is about to get) something to write: direct writes must wait
    busy: bool = False
    #: bytes of a direct write the socket did not take; the writer sends them first
    leftover: bytes = b""
    #: set while the sender waits out a reconnect backoff; an inbound connection from the
    #: peer (it is evidently back up) ends the wait early
    wake: trio.Event | None = None


class TcpTransport:
    """Raft transport over TCP (optionally TLS).

    Args:
        node_id: this node.
        cluster_id: peers must present the same id in the handshake.
        listen: (host, port) to listen on; port 0 picks a free port (see :attr:`port`).
        peers: ``{node_id: "host:port"}`` of the other nodes.
        ssl_server_context: when set, inbound connections must speak TLS.
        ssl_client_context: when set, outbound connections speak TLS.
        server_hostname: the name to verify in peers' certificates (default: the host part of
            each peer's address).
        queue_size: per-peer bound of queued Raft messages.
        max_frame_size: the largest frame accepted or sent (raised to fit
            ``stream_options.chunk_size``).
        connect_timeout: seconds for connect + TLS + handshake of an outbound connection.
        handshake_timeout: seconds an inbound connection has to complete its handshake.
        backoff_initial, backoff_max: reconnect backoff bounds, seconds.
        stream_options, receive_options: snapshot streaming settings.
        snapshot_rate: bytes/s limit shared by all outgoing snapshot streams (None = unlimited).
        disk: runs blocking snapshot reads/writes (default: worker threads).
        allow_unknown_peers: accept connections from node ids not in ``peers``.
        on_unreachable: called with a peer id when a connection to it fails or is lost (for the
            core's ``report_unreachable``). Must not block.
        rng: randomness for backoff jitter.
    """

    def __init__(
        self,
        node_id: int,
        cluster_id: str,
        *,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        peers: Mapping[int, str] | None = None,
        ssl_server_context: ssl.SSLContext | None = None,
        ssl_client_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        queue_size: int = 1024,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        connect_timeout: float = 5.0,
        handshake_timeout: float = 10.0,
        backoff_initial: float = 0.05,
        backoff_max: float = 2.0,
        stream_options: StreamOptions | None = None,
        receive_options: ReceiveOptions | None = None,
        snapshot_rate: float | None = None,
        disk: DiskExecutor | None = None,
        allow_unknown_peers: bool = False,
        on_unreachable: Callable[[int], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if node_id <= 0:
            raise ValueError("node_id must be positive")
        if queue_size < 1:
            raise ValueError("queue_size must be >= 1")
        self.node_id = node_id
        self.cluster_id = cluster_id
        self.stats = TransportStats()
        #: Statistics of the most recent stream to each peer (finished or not).
        self.last_stream: dict[int, StreamStats] = {}
        self._listen = listen
        self._ssl_server = ssl_server_context
        self._ssl_client = ssl_client_context
        self._server_hostname = server_hostname
        self._queue_size = queue_size
        self._connect_timeout = connect_timeout
        self._handshake_timeout = handshake_timeout
        self._backoff = (backoff_initial, backoff_max)
        # Frames always fit this node's own chunks (plus their envelope).
        self._stream = StreamSettings(stream_options, snapshot_rate, max_frame_size)
        self._disk: DiskExecutor = disk or ThreadDisk()
        self._allow_unknown = allow_unknown_peers
        self._on_unreachable = on_unreachable
        self._rng = rng or random.Random()
        self._peers: dict[int, _Peer] = {}
        self._inbound: dict[int, set[trio.CancelScope]] = {}
        self._streams = ActiveStreams()
        self._receiver = SnapshotReceiver(
            node_id, disk=self._disk, options=receive_options, stats=self.stats
        )
        self._nursery: trio.Nursery | None = None
        self._handler: InboundHandler[Any] | None = None
        self._port: int | None = None
        for peer, address in (peers or {}).items():
            self.add_peer(peer, address)

    # ----------------------------------------------------------------------------------------
    # Public API

    @property
    def port(self) -> int:
        """The bound listening port (available once :meth:`serve` has started)."""
        if self._port is None:
            raise RuntimeError("the transport is not serving yet")
        return self._port

    @property
    def address(self) -> str:
        """``"host:port"`` of the listener (once serving)."""
        return format_address(self._listen[0], self.port)

    @property
    def receiver(self) -> SnapshotReceiver:
        """The receiving side of snapshot streams (for inspection)."""
        return self._receiver

    def peers(self) -> dict[int, str]:
        """Current peers and their addresses."""
        return {p.id: p.address for p in self._peers.values()}

    def connected(self, peer: int) -> bool:
        """Whether the outbound Raft connection to ``peer`` is up."""
        p = self._peers.get(peer)
        return p is not None and p.connected

    async def serve(
        self,
        handler: InboundHandler[Any],
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listens and runs the per-peer senders until cancelled.

        ``task_status.started`` receives the bound port.

        Raises:
            OSError: the listening address cannot be bound.
            RuntimeError: already serving.
        """
        if self._nursery is not None:
            raise RuntimeError("TcpTransport.serve() is already running")
        host, port = self._listen
        listeners = await trio.open_tcp_listeners(port, host=host)
        if port == 0 and len(listeners) > 1:
            # Each address family would get its own random port; keep one so the port is unique.
            for extra in listeners[1:]:
                await extra.aclose()
            listeners = listeners[:1]
        sock_port = listeners[0].socket.getsockname()[1]
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._handler = handler
                self._port = sock_port
                await nursery.start(self._receiver.run)
                await nursery.start(trio.serve_listeners, self._handle_inbound, listeners)
                for peer in self._peers.values():
                    self._start_sender(peer)
                log.info(
                    "node %d: transport listening on %s (tls=%s), peers %s",
                    self.node_id,
                    self.address,
                    self._ssl_server is not None,
                    self.peers(),
                )
                task_status.started(sock_port)
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self._handler = None
            self._streams.cancel_all("transport stopped")
            for peer in self._peers.values():
                peer.scope = None
                peer.calls = None
                peer.connected = False

    def send(self, msg: Message) -> None:
        """Queues ``msg`` for ``msg.dst``; never blocks. Drops (and counts) when the peer is
        unknown or its queue is full.

        When the peer's plain-TCP connection is up and its writer has nothing pending, the
        frame is written to the socket right here (non-blocking): this saves the writer task's
        wake-up and scheduling round trips on every message. Whatever the socket does not take
        is handed to the writer, which sends it before anything queued later, so the order of
        frames on the connection is the order of ``send`` calls.
        """
        peer = self._peers.get(msg.dst)
        if peer is None:
            self.stats.dropped_unknown_peer += 1
            log.debug(
                "node %d: dropping %s to unknown node %d", self.node_id, type(msg).__name__, msg.dst
            )
            return
        if peer.direct_fd >= 0 and not peer.busy:
            self._send_direct(peer, msg)
            return
        try:
            peer.send_channel.send_nowait(msg)
        except trio.WouldBlock:
            self.stats.dropped_overflow += 1
            return
        peer.busy = True

    def _send_direct(self, p: _Peer, msg: Message) -> None:
        conn = p.direct_conn
        assert conn is not None
        try:
            data = conn.pack(RaftFrame(msg=msg))
        except FrameError as exc:
            self.stats.dropped_too_large += 1
            log.error(
                "node %d: dropping %s to node %d: %s", self.node_id, type(msg).__name__, p.id, exc
            )
            return
        try:
            n = os.write(p.direct_fd, data)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            # The connection is broken; its reader notices too and the writer reconnects.
            # Raft retransmits whatever is lost here.
            log.debug("node %d: direct write to node %d failed: %r", self.node_id, p.id, exc)
            self.stats.dropped_unreachable += 1
            p.direct_fd = -1
            return
        self.stats.messages_sent += 1
        if n < len(data):
            p.leftover = data[n:]
            p.busy = True
            # The writer was idle (busy was False), so its queue is empty and takes this.
            with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError):
                p.send_channel.send_nowait(_FLUSH)

    async def stream_snapshot(
        self,
        peer: int,
        snapshot: StoredSnapshotLike,
        reader: SnapshotReaderLike,
        request: SnapshotRequest,
    ) -> None:
        """Streams a snapshot to ``peer`` over a dedicated connection (see
        :mod:`trioraft.runtime.transport.streaming`). A newer call for the same peer aborts this
        one.

        Raises:
            SnapshotTransferError: stalled, rejected, aborted (superseded / peer removed).
        """
        if peer not in self._peers:
            raise SnapshotTransferError(f"node {peer} is not a peer")

        async def run() -> StreamStats:
            return await send_snapshot(
                lambda: self._connect(peer, "snapshot"),
                snapshot,
                reader,
                request,
                disk=self._disk,
                options=self._stream.options,
                throttle=self._stream.throttle,
                rng=self._rng,
                peer=peer,
            )

        await self._streams.send_counted(peer, run, self.stats, self.last_stream)

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
        """Sends ``request`` to ``peer``'s handler and returns its response.

        Raises:
            CallFailed: the peer could not be reached (``sent=False``) or the connection broke
                before the response (``sent=True``).
        """
        p = self._peers.get(peer)
        if p is None:
            raise CallFailed(peer, False, "not a peer")
        if self._nursery is None:
            raise CallFailed(peer, False, "transport not serving")
        if p.calls is None:
            p.calls = CallClient(
                peer, lambda: self._connect(peer, "call"), self._nursery, self.stats
            )
        return await p.calls.call(request)

    def add_peer(self, peer: int, address: str) -> None:
        """Adds ``peer`` or changes its address (reconnecting if it changed). An empty address
        means "not known yet": the peer may connect to this node, but nothing can be sent to it
        until its address is set.

        Raises:
            ValueError: bad address or peer id.
        """
        if address:
            parse_address(address)
        if peer <= 0 or peer == self.node_id:
            raise ValueError(f"invalid peer id {peer}")
        old = self._peers.get(peer)
        if old is not None:
            if old.address == address:
                return
            self._stop_peer(old)
        send, recv = trio.open_memory_channel[Message](self._queue_size)
        p = _Peer(peer, address, send, recv)
        self._peers[peer] = p
        if self._nursery is not None:
            self._start_sender(p)

    def remove_peer(self, peer: int) -> None:
        """Forgets ``peer``: stops its sender, closes its connections, aborts streams to it."""
        p = self._peers.pop(peer, None)
        if p is not None:
            self._stop_peer(p)
        self._streams.cancel(peer, "peer-removed")
        for scope in self._inbound.get(peer, set()):
            scope.cancel()

    # ----------------------------------------------------------------------------------------
    # Outbound

    def _stop_peer(self, p: _Peer) -> None:
        if p.scope is not None:
            p.scope.cancel()
        if p.calls is not None and self._nursery is not None:
            self._nursery.start_soon(p.calls.aclose_when_idle, CALL_DRAIN_GRACE)
        p.calls = None
        p.send_channel.close()

    def _start_sender(self, p: _Peer) -> None:
        assert self._nursery is not None
        p.scope = trio.CancelScope()
        self._nursery.start_soon(self._run_sender, p, p.scope)

    def _notify_unreachable(self, p: _Peer) -> None:
        if self._on_unreachable is not None:
            try:
                self._on_unreachable(p.id)
            except Exception:
                log.exception("node %d: on_unreachable callback raised", self.node_id)

    async def _connect(self, peer: int, purpose: str) -> FramedStream:
        """Opens a connection of ``purpose`` to ``peer`` and performs the handshake.

        Raises:
            PeerUnreachable: unknown peer, connect/TLS failure, timeout.
            HandshakeRefused: the remote refused us, or it is not ``peer``.
        """
        p = self._peers.get(peer)
        if p is None:
            raise PeerUnreachable(f"node {peer} is not a peer")
        if not p.address:
            raise PeerUnreachable(f"the address of node {peer} is not known")
        host, port = parse_address(p.address)
        stream: trio.abc.Stream | None = None
        try:
            with trio.fail_after(self._connect_timeout):
                stream = await trio.open_tcp_stream(host, port)
                if self._ssl_client is not None:
                    stream = trio.SSLStream(
                        stream, self._ssl_client, server_hostname=self._server_hostname or host
                    )
                    await stream.do_handshake()
                conn = FramedStream(stream, max_frame_size=self._stream.max_frame_size)
                await conn.send(
                    Hello(
                        version=PROTOCOL_VERSION,
                        cluster_id=self.cluster_id,
                        node_id=self.node_id,
                        target=peer,
                        purpose=purpose,
                    )
                )
                ack = await conn.receive()
        except Exception as exc:
            # Whatever answers at the peer's address must not be able to raise anything but
            # PeerUnreachable into the sender (and so into the transport's nursery).
            if not isinstance(
                exc, (OSError, trio.TooSlowError, trio.BrokenResourceError, TransportError)
            ):
                log.warning(
                    "node %d: unexpected error in the handshake with node %d at %s",
                    self.node_id,
                    peer,
                    p.address,
                    exc_info=True,
                )
            self.stats.connect_failures += 1
            if stream is not None:
                with trio.CancelScope(shield=True):
                    await _close_quietly(stream)
            raise PeerUnreachable(
                f"node {peer} at {p.address}: {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(ack, HelloAck) or not ack.ok or ack.node_id != peer:
            self.stats.connect_failures += 1
            with trio.CancelScope(shield=True):
                await conn.aclose()
            if isinstance(ack, HelloAck) and not ack.ok:
                detail = f"refused: {ack.reason}"
            elif isinstance(ack, HelloAck):
                detail = f"the node there is {ack.node_id}, not {peer}"
            else:
                detail = f"unexpected {type(ack).__name__}"
            log.warning(
                "node %d: handshake with node %d at %s failed: %s",
                self.node_id,
                peer,
                p.address,
                detail,
            )
            raise HandshakeRefused(f"node {peer} at {p.address}: {detail}")
        self.stats.connects += 1
        return conn

    async def _run_sender(self, p: _Peer, scope: trio.CancelScope) -> None:
        with scope:
            backoff = Backoff(*self._backoff, self._rng)
            recv = p.receive_channel
            # The first connection is opened at once, before there is anything to send: a
            # restarted node announces itself this way, and a leader backing off from it
            # reconnects now (see _backoff_wait) instead of when its backoff runs out.
            first: Message = _FLUSH
            eager = True
            while True:
                if not eager:
                    try:
                        first = await recv.receive()
                    except trio.EndOfChannel:
                        return
                try:
                    conn = await self._connect(p.id, "raft")
                except PeerUnreachable as exc:
                    dropped = (first is not _FLUSH) + _drain(recv)
                    self.stats.dropped_unreachable += dropped
                    if eager:
                        # Peers starting at the same time are often not listening yet: no
                        # warning until a message cannot get through.
                        log.info("node %d: node %d not reachable yet: %s", self.node_id, p.id, exc)
                    elif not p.reported_down:
                        log.warning("node %d: cannot reach node %d: %s", self.node_id, p.id, exc)
                        p.reported_down = True
                    else:
                        log.debug("node %d: cannot reach node %d: %s", self.node_id, p.id, exc)
                    eager = False
                    self._notify_unreachable(p)
                    await self._backoff_wait(p, backoff.next())
                    continue
                eager = False
                if p.reported_down:
                    log.info("node %d: connected to node %d again", self.node_id, p.id)
                p.reported_down = False
                p.connected = True
                backoff.reset()
                try:
                    lost = await self._pump(conn, p, first)
                finally:
                    p.connected = False
                    with trio.CancelScope(shield=True):
                        await conn.aclose()
                log.info("node %d: connection to node %d lost: %s", self.node_id, p.id, lost)
                self._notify_unreachable(p)
                await self._backoff_wait(p, backoff.next())

    @staticmethod
    async def _backoff_wait(p: _Peer, delay: float) -> None:
        """Sleeps ``delay`` before the next connection attempt, unless the peer shows up first.

        A restarted follower connects to us long before our backoff (up to ``backoff_max``)
        runs out; reconnecting at once spares it that wait for its first append or snapshot.
        """
        p.wake = trio.Event()
        try:
            with trio.move_on_after(delay):
                await p.wake.wait()
        finally:
            p.wake = None

    async def _pump(self, conn: FramedStream, p: _Peer, first: Message) -> str:
        """Writes queued messages to ``conn`` until it fails; returns why it ended."""
        reason = "closed"

        async def watch(cancel: trio.CancelScope) -> None:
            # Nothing is ever sent back on a raft connection: any read result means it is over.
            nonlocal reason
            try:
                frame = await conn.receive()
                reason = f"peer sent an unexpected {type(frame).__name__}"
            except ConnectionClosed:
                reason = "closed by peer"
            except (FrameError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            except Exception as exc:
                # Only this connection is lost: nothing the peer sends may reach the nursery.
                log.warning(
                    "node %d: unexpected error reading from node %d",
                    self.node_id,
                    p.id,
                    exc_info=True,
                )
                reason = f"{type(exc).__name__}: {exc}"
            cancel.cancel()

        direct = type(conn.stream) is trio.SocketStream
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch, nursery.cancel_scope)
            batch = [first]
            try:
                while True:
                    packed: list[bytes] = []
                    if p.leftover:
                        packed.append(p.leftover)
                        p.leftover = b""
                    for msg in batch:
                        if msg is _FLUSH:
                            continue
                        try:
                            packed.append(conn.pack(RaftFrame(msg=msg)))
                        except FrameError as exc:
                            self.stats.dropped_too_large += 1
                            log.error(
                                "node %d: dropping %s to node %d: %s",
                                self.node_id,
                                type(msg).__name__,
                                p.id,
                                exc,
                            )
                    if packed:
                        # Counted at hand-off (as direct writes are), not after the await: a
                        # peer may have received these before this task runs again.
                        self.stats.messages_sent += sum(1 for m in batch if m is not _FLUSH)
                        await conn.send_packed(packed)
                    batch = []
                    while len(batch) < _BATCH:
                        try:
                            batch.append(p.receive_channel.receive_nowait())
                        except trio.WouldBlock:
                            break
                    if not batch and not p.leftover:
                        # Idle: let send() write directly until it hands us something again.
                        p.busy = False
                        if direct:
                            p.direct_conn = conn
                            p.direct_fd = conn.stream.socket.fileno()  # type: ignore[attr-defined]
                        batch = [await p.receive_channel.receive()]
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self.stats.dropped_unreachable += len(batch)
                reason = f"{type(exc).__name__}: {exc}"
            except trio.EndOfChannel:
                reason = "peer removed"
            finally:
                p.direct_fd = -1
                p.direct_conn = None
                p.busy = True
                p.leftover = b""
            nursery.cancel_scope.cancel()
        return reason

    # ----------------------------------------------------------------------------------------
    # Inbound

    def _check_hello(self, hello: Hello) -> str:
        if hello.version != PROTOCOL_VERSION:
            return f"protocol version {hello.version} not supported (want {PROTOCOL_VERSION})"
        if hello.cluster_id != self.cluster_id:
            return f"wrong cluster id {hello.cluster_id!r}"
        if hello.target != self.node_id:
            return f"this is node {self.node_id}, not {hello.target}"
        if hello.node_id == self.node_id or hello.node_id <= 0:
            return f"invalid node id {hello.node_id}"
        if hello.node_id not in self._peers and not self._allow_unknown:
            return f"unknown node {hello.node_id}"
        if hello.purpose not in PURPOSES:
            return f"unknown purpose {hello.purpose!r}"
        return ""

    async def _handle_inbound(self, stream: trio.SocketStream) -> None:
        try:
            remote = stream.socket.getpeername()
        except OSError:  # pragma: no cover - the peer vanished already
            remote = "?"
        s: trio.abc.Stream = stream
        try:
            if self._ssl_server is not None:
                s = trio.SSLStream(stream, self._ssl_server, server_side=True)
            # Strangers get small frames only: nobody unauthenticated makes us buffer megabytes.
            conn = FramedStream(s, max_frame_size=_HANDSHAKE_MAX_FRAME)
            with trio.move_on_after(self._handshake_timeout) as timeout:
                hello = await conn.receive()
            if timeout.cancelled_caught:
                log.warning("node %d: no handshake from %s in time; closing", self.node_id, remote)
                return
            if not isinstance(hello, Hello):
                raise FrameError(f"expected Hello, got {type(hello).__name__}")
            refusal = self._check_hello(hello)
            if refusal:
                self.stats.handshakes_refused += 1
                log.warning(
                    "node %d: refusing connection from %s (node %d, cluster %r): %s",
                    self.node_id,
                    remote,
                    hello.node_id,
                    hello.cluster_id,
                    refusal,
                )
                with trio.move_on_after(self._handshake_timeout):
                    await conn.send(HelloAck(ok=False, node_id=self.node_id, reason=refusal))
                return
            await conn.send(HelloAck(ok=True, node_id=self.node_id))
            conn.max_frame_size = self._stream.max_frame_size
            src = hello.node_id
            with trio.CancelScope() as scope:
                scopes = self._inbound.setdefault(src, set())
                scopes.add(scope)
                try:
                    await self._dispatch(conn, src, hello.purpose)
                finally:
                    scopes.discard(scope)
                    if not scopes:
                        self._inbound.pop(src, None)
        except ConnectionClosed:
            log.debug("node %d: connection from %s closed", self.node_id, remote)
        except FrameError as exc:
            self.stats.bad_frames += 1
            log.warning(
                "node %d: malformed frame from %s: %s; closing that connection",
                self.node_id,
                remote,
                exc,
            )
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.debug("node %d: connection from %s broke: %r", self.node_id, remote, exc)
        except Exception:
            log.exception("node %d: error serving a connection from %s", self.node_id, remote)
        finally:
            with trio.CancelScope(shield=True):
                await _close_quietly(s)

    async def _dispatch(self, conn: FramedStream, src: int, purpose: str) -> None:
        handler = self._handler
        assert handler is not None
        if purpose == "raft":
            peer = self._peers.get(src)
            if peer is not None and peer.wake is not None:
                peer.wake.set()
            if type(conn.stream) is trio.SocketStream:
                await self._read_raft_frames(conn, conn.stream, src, handler)
            else:  # TLS
                while True:
                    self._deliver_raft(await conn.receive(), src, handler)
        elif purpose == "call":
            await serve_calls(conn, handler, src=src, node_id=self.node_id, stats=self.stats)
        else:
            await self._receiver.handle(conn, src, handler)

    def _deliver_raft(self, frame: object, src: int, handler: InboundHandler[Any]) -> None:
        if type(frame) is not RaftFrame:
            raise FrameError(f"unexpected {type(frame).__name__} on a raft connection")
        msg = frame.msg
        if type(msg) is SnapshotRequest:
            # The core may only see a SnapshotRequest once the snapshot's files are stored
            # (the snapshot stream delivers it after the commit); here there is no snapshot,
            # and the core would try to restore one that is not in the store.
            raise FrameError("SnapshotRequest on a raft connection (only a stream carries one)")
        if msg.src != src or msg.dst != self.node_id:
            self.stats.misaddressed += 1
            log.warning(
                "node %d: dropping %s from %d to %d received on node %d's connection",
                self.node_id,
                type(msg).__name__,
                msg.src,
                msg.dst,
                src,
            )
            return
        self.stats.messages_received += 1
        handler.deliver(msg)

    async def _read_raft_frames(
        self, conn: FramedStream, stream: trio.SocketStream, src: int, handler: InboundHandler[Any]
    ) -> None:
        """Reads a plain-TCP raft connection's frames straight from its socket until it ends
        (raising what :meth:`FramedStream.receive` raises: ``ConnectionClosed``,
        ``FrameError``, ``trio.BrokenResourceError``).

        Why: every Raft message of the replication round trip arrives this way, and Trio's
        stream layers cost more Python per frame than decoding the frame does (a context
        manager per read, a failed read and its exception before every wait). Here a read
        follows readiness, and every whole frame it brought is delivered before the next
        wait. Frames are checked and decoded exactly as :meth:`FramedStream.receive` does.
        """
        # Bytes the handshake's reads already took from the socket stay first in line. Nothing
        # else reads this connection (inbound raft connections carry no replies).
        buf = conn._buf
        sock = stream.socket
        fd = sock.fileno()
        limit = conn.max_frame_size
        unpack = _LENGTH.unpack_from
        head = _LENGTH.size
        deliver = self._deliver_raft
        while True:
            pos = 0
            have = len(buf)
            missing = 0  # bytes of a frame begun in buf that are still to come
            while have - pos >= head:
                (length,) = unpack(buf, pos)
                if length == 0 or length > limit:
                    raise FrameError(f"frame length {length} outside 1..{limit}")
                end = pos + head + length
                if end > have:
                    missing = end - have
                    break
                try:
                    with memoryview(buf) as view, view[pos + head : end] as body:
                        frame = decode_frame(body)
                except DecodeError as exc:
                    raise FrameError(str(exc)) from exc
                pos = end
                deliver(frame, src, handler)
            if pos:
                del buf[:pos]
            await trio.lowlevel.wait_readable(sock)
            try:
                # A large frame's rest in one read when it is there already (as FramedStream),
                # up to a bound.
                data = os.read(fd, min(max(_RAFT_READ_SIZE, missing), _RAFT_READ_MAX))
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno == errno.EBADF:
                    raise trio.ClosedResourceError("the connection was closed") from exc
                raise trio.BrokenResourceError(f"receiving failed: {exc!r}") from exc
            if not data:
                if buf:
                    raise FrameError(f"connection closed inside a frame ({len(buf)} bytes)")
                raise ConnectionClosed("connection closed by peer")
            buf += data


def _drain(recv: trio.MemoryReceiveChannel[Message]) -> int:
    n = 0
    while True:
        try:
            recv.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            return n
        n += 1


async def _close_quietly(stream: trio.abc.AsyncResource) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        await stream.aclose()
