"""trioraft: Raft consensus for Trio applications, with snapshots as a first-class feature."""

import importlib
from typing import TYPE_CHECKING, Any

from trioraft.config import Config as Config
from trioraft.errors import (
    AmbiguousOutcome as AmbiguousOutcome,
)
from trioraft.errors import (
    ConfigError as ConfigError,
)
from trioraft.errors import (
    NodeStopped as NodeStopped,
)
from trioraft.errors import (
    NotLeader as NotLeader,
)
from trioraft.errors import (
    ProposalDropped as ProposalDropped,
)
from trioraft.errors import (
    RaftError as RaftError,
)
from trioraft.errors import (
    StorageCorrupted as StorageCorrupted,
)
from trioraft.errors import (
    StorageFailed as StorageFailed,
)
from trioraft.errors import (
    Timeout as Timeout,
)

__version__ = "0.1.0"

# The runtime's public names are loaded on first use: importing ``trioraft.core`` (which
# imports this package first) must not pull in trio.
if TYPE_CHECKING:
    from trioraft.core.types import ConfChange as ConfChange
    from trioraft.core.types import ConfChangeSingle as ConfChangeSingle
    from trioraft.core.types import ConfChangeType as ConfChangeType
    from trioraft.core.types import ConfState as ConfState
    from trioraft.node import LeaderInfo as LeaderInfo
    from trioraft.node import NodeStatus as NodeStatus
    from trioraft.node import RaftNode as RaftNode
    from trioraft.node import open_raft_node as open_raft_node
    from trioraft.runtime.snapshotter import SnapshotFailed as SnapshotFailed
    from trioraft.runtime.transport import MemoryNetwork as MemoryNetwork
    from trioraft.runtime.transport import TcpTransport as TcpTransport
    from trioraft.runtime.transport import Transport as Transport
    from trioraft.statemachine import Saver as Saver
    from trioraft.statemachine import SnapshotReader as SnapshotReader
    from trioraft.statemachine import SnapshotWriter as SnapshotWriter
    from trioraft.statemachine import StateMachine as StateMachine

_LAZY = {
    "ConfChange": "trioraft.core.types",
    "ConfChangeSingle": "trioraft.core.types",
    "ConfChangeType": "trioraft.core.types",
    "ConfState": "trioraft.core.types",
    "LeaderInfo": "trioraft.node",
    "NodeStatus": "trioraft.node",
    "RaftNode": "trioraft.node",
    "open_raft_node": "trioraft.node",
    "SnapshotFailed": "trioraft.runtime.snapshotter",
    "MemoryNetwork": "trioraft.runtime.transport",
    "TcpTransport": "trioraft.runtime.transport",
    "Transport": "trioraft.runtime.transport",
    "Saver": "trioraft.statemachine",
    "SnapshotReader": "trioraft.statemachine",
    "SnapshotWriter": "trioraft.statemachine",
    "StateMachine": "trioraft.statemachine",
}


__all__ = [
    "AmbiguousOutcome",
    "Config",
    "ConfigError",
    "NodeStopped",
    "NotLeader",
    "ProposalDropped",
    "RaftError",
    "StorageCorrupted",
    "StorageFailed",
    "Timeout",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'trioraft' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
