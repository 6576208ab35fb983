"""The trioraft error hierarchy.

Every error raised to users derives from :class:`RaftError`. The hierarchy is deliberately small:
callers usually need to know only whether a request certainly did not happen
(:class:`NotLeader`, :class:`ProposalDropped`), might have happened (:class:`AmbiguousOutcome`),
or whether the node cannot continue (:class:`StorageCorrupted`, :class:`StorageFailed`).
"""

from __future__ import annotations

__all__ = [
    "AmbiguousOutcome",
    "ConfigError",
    "NodeStopped",
    "NotLeader",
    "ProposalDropped",
    "RaftError",
    "StorageCorrupted",
    "StorageFailed",
    "Timeout",
]


class RaftError(Exception):
    """Base class of every error trioraft raises on purpose."""


class NotLeader(RaftError):
    """The request needs the leader and this node is not it.

    Attributes:
        leader_hint: the node id this node believes is the leader, or ``None`` when unknown.
        leader_address: the address of that node when the runtime knows it, else ``None``.
    """

    def __init__(self, leader_hint: int | None, leader_address: str | None = None) -> None:
        self.leader_hint = leader_hint
        self.leader_address = leader_address
        hint = "unknown" if leader_hint is None else str(leader_hint)
        super().__init__(f"not the leader (leader hint: {hint})")


class ProposalDropped(RaftError):
    """The proposal was certainly not appended to the log; it is safe to retry.

    Attributes:
        reason: a short machine-readable reason: ``"no-leader"``, ``"transfer"``,
            ``"uncommitted-limit"``, ``"conf-change-pending"``, ``"too-large"``,
            ``"superseded"``, ``"unreachable"``, ``"invalid-conf-change"``,
            ``"invalid-target"``.
        detail: a human-readable explanation (may be empty).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"proposal dropped: {reason}" + (f" ({detail})" if detail else ""))


class Timeout(RaftError):
    """An operation did not finish in time and certainly had no effect (e.g. a read barrier)."""


class AmbiguousOutcome(Timeout):
    """A proposal was handed to Raft but its outcome is unknown (it may yet commit)."""


class NodeStopped(RaftError):
    """The node was shut down (or failed) while the request was outstanding."""


class StorageCorrupted(RaftError):
    """On-disk data failed a checksum or structural check.

    Attributes:
        path: the file or directory at fault.
        offset: the byte offset of the damage when known.
    """

    def __init__(self, path: str, detail: str, offset: int | None = None) -> None:
        self.path = path
        self.offset = offset
        self.detail = detail
        where = path if offset is None else f"{path} at offset {offset}"
        super().__init__(f"storage corrupted: {where}: {detail}")


class StorageFailed(RaftError):
    """A write or fsync failed (disk full, I/O error); the node stops writing rather than lie."""


class ConfigError(RaftError, ValueError):
    """A configuration value or combination is invalid.

    Attributes:
        field: the name of the offending configuration field.
        detail: what is wrong with it.
    """

    def __init__(self, field: str, detail: str) -> None:
        self.field = field
        self.detail = detail
        super().__init__(f"invalid config {field!r}: {detail}")
