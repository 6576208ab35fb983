"""Transports: how nodes exchange Raft messages, snapshot files and forwarded client requests.

- :class:`Transport` / :class:`InboundHandler`: the contract with the runtime (:mod:`.base`).
- :class:`TcpTransport`: CBOR frames over TCP, optional TLS (:mod:`.tcp`).
- :class:`MemoryNetwork` / :class:`MemoryTransport`: a simulated network with partitions, loss,
  delay, duplication and reordering for tests (:mod:`.memory`).
- Snapshot streaming (chunks, credit window, CRC32C, throttle, resume, stall timeout) is shared
  by both (:mod:`.streaming`).
"""

from trioraft.runtime.transport.base import (
    CallFailed,
    ClientRequest,
    ClientResponse,
    HandshakeRefused,
    InboundHandler,
    PeerUnreachable,
    SnapshotAborted,
    SnapshotBuilderLike,
    SnapshotReaderLike,
    SnapshotRejected,
    SnapshotStalled,
    SnapshotTransferError,
    StoredSnapshotLike,
    Transport,
    TransportError,
)
from trioraft.runtime.transport.memory import LinkFaults, MemoryNetwork, MemoryTransport
from trioraft.runtime.transport.streaming import ReceiveOptions, StreamOptions, StreamStats
from trioraft.runtime.transport.tcp import TcpTransport
from trioraft.runtime.transport.util import Throttle, TransportStats

__all__ = [
    "CallFailed",
    "ClientRequest",
    "ClientResponse",
    "HandshakeRefused",
    "InboundHandler",
    "LinkFaults",
    "MemoryNetwork",
    "MemoryTransport",
    "PeerUnreachable",
    "ReceiveOptions",
    "SnapshotAborted",
    "SnapshotBuilderLike",
    "SnapshotReaderLike",
    "SnapshotRejected",
    "SnapshotStalled",
    "SnapshotTransferError",
    "StoredSnapshotLike",
    "StreamOptions",
    "StreamStats",
    "TcpTransport",
    "Throttle",
    "Transport",
    "TransportError",
    "TransportStats",
]
