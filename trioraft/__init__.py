"""trioraft: Raft consensus for Trio applications, with snapshots as a first-class feature."""

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
