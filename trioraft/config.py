"""The one public configuration object of a trioraft node.

Defaults follow etcd (tick 100 ms, election 10 ticks, heartbeat 1 tick, pre-vote and check-quorum
on, 10000 entries between snapshots, 5000 catch-up entries kept after compaction, 256 inflight
messages of at most 1 MiB) and SOFAJRaft (interval snapshots with a log-index margin, off by
default; 1 MiB snapshot chunks). Every field is validated when the object is built: an invalid
value or combination raises :class:`~trioraft.errors.ConfigError` naming the field.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

import attrs

from trioraft.errors import ConfigError

if TYPE_CHECKING:
    from trioraft.core.config import CoreConfig

__all__ = ["Config", "ReadMode"]

ReadMode = Literal["safe", "lease"]

_MIB = 1 << 20


def _peers_converter(value: object) -> dict[int, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        try:
            value = dict(value)  # type: ignore[call-overload]
        except (TypeError, ValueError) as exc:
            raise ConfigError("peers", f"expected a mapping of node id to address: {exc}") from exc
    assert isinstance(value, dict)
    return dict(value)


@attrs.frozen(kw_only=True)
class Config:
    """Configuration of one Raft node.

    Identity and membership:
        id: this node's id (a positive int, unique in the cluster).
        peers: the initial cluster, node id to transport address, *including this node*. Used
            only to bootstrap a fresh data directory (the initial members become voters) and to
            tell the transport where the initial members live. Empty means a one-node cluster
            made of this node alone (unless ``join``).
        join: start with no configuration and wait to be added by an existing cluster
            (``node.add_learner``/``add_voter`` on a member); ``peers`` then only lists addresses.

    Timing (ticks are driven by Trio time, so tests can use ``MockClock``):
        tick_interval: seconds per logical tick (100 ms).
        election_ticks: election timeout in ticks (10); the real timeout is randomized in
            ``[election_ticks, 2 * election_ticks)``.
        heartbeat_ticks: heartbeat interval in ticks (1); must be below ``election_ticks``.
        seed: seed of this node's election randomness; ``None`` derives it from ``id``.

    Raft behaviour:
        pre_vote: run a pre-vote before a real election (on).
        check_quorum: a leader steps down without a quorum of recent responses (on).
        read_mode: ``"safe"`` (ReadIndex: one heartbeat round per read batch) or ``"lease"``
            (leader lease; requires ``check_quorum`` and bounded clock drift).
        forward_proposals: followers forward proposals, membership changes and leadership
            transfers to the leader and return its answer (on); off raises
            :class:`~trioraft.errors.NotLeader` with a leader hint instead.
        piggyback_commit: the leader tells followers a new commit index with its next append
            or heartbeat rather than a dedicated message round (on): half the messages per
            proposal at low load; followers apply up to one heartbeat interval later (reads
            through a follower and membership changes are still told at once).

    Flow control and limits:
        max_inflight_msgs: append messages in flight per follower (256).
        max_inflight_bytes: bytes of entries in flight per follower (0 = unlimited).
        max_msg_bytes: maximum bytes of entries in one append message (1 MiB). A single
            proposal larger than this is rejected with ``ProposalDropped("too-large")``.
        max_uncommitted_bytes: proposals beyond this many uncommitted bytes are dropped (1 GiB).
        max_committed_bytes_per_ready: bytes of committed entries handed to the state machine per
            batch (0 = ``64 * max_msg_bytes``).
        max_pending_proposals: proposals accepted by this node and not yet resolved; further
            ``propose`` calls wait (backpressure) (16384).
        proposal_timeout: seconds ``propose`` and membership changes wait for their outcome
            before raising :class:`~trioraft.errors.AmbiguousOutcome` (10 s; ``None`` = forever).
        read_timeout: seconds ``read_barrier`` waits before raising
            :class:`~trioraft.errors.Timeout` (5 s; ``None`` = forever).

    Snapshots:
        snapshot_entries: take a snapshot when ``applied - last snapshot index`` reaches this
            (10000; 0 disables the entry-count trigger).
        catchup_entries: entries kept in the log below a new snapshot so slow followers can
            catch up without a snapshot transfer (5000).
        snapshot_interval: seconds between timer-driven snapshots (``None`` = off, the default;
            SOFAJRaft uses 3600).
        snapshot_margin: the timer skips its snapshot unless at least this many entries were
            applied since the last one (1).
        snapshot_retention: snapshots kept on disk (2). WAL segments are kept back to the oldest
            retained snapshot so an older snapshot remains usable if the newest is damaged.
        snapshot_chunk_bytes: bytes per chunk when streaming a snapshot to a follower (1 MiB).
        snapshot_window_chunks: chunks in flight per snapshot stream (credit window) (4).
        snapshot_throttle_bytes_per_s: cap on the node's total outgoing snapshot streaming
            bandwidth, shared by all concurrent streams (``None`` = unthrottled).
        snapshot_stall_timeout: seconds without progress after which a snapshot stream is
            abandoned and reported as failed to Raft (30 s).

    Durability:
        fsync: fsync the WAL and snapshots (on). Off trades crash safety for speed (benchmarks,
            tests); a node that lost unsynced data must not rejoin its cluster.
        wal_segment_bytes: WAL segment size (64 MiB).
        wal_prezero: start WAL segments zero-filled and synced (``None``, the default: on
            for the real file system, off for a simulated one). Appends then overwrite
            written blocks and each fdatasync has no metadata to journal (on the benchmark VM:
            145 instead of 216 µs for a small synced write, 290 instead of 515 µs for 266 KB).
            The price is more disk writes: a background thread zero-fills the next segment at
            up to 16 MiB/s (``trioraft.storage.wal.PREPARE_BYTES_PER_S``), so a WAL written
            faster than that gets segments zeroed only in part (docs/storage.md).
    """

    id: int
    peers: dict[int, str] = attrs.field(factory=dict, converter=_peers_converter)
    join: bool = False

    tick_interval: float = 0.1
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    seed: int | None = None

    pre_vote: bool = True
    check_quorum: bool = True
    read_mode: ReadMode = "safe"
    forward_proposals: bool = True
    piggyback_commit: bool = True

    max_inflight_msgs: int = 256
    max_inflight_bytes: int = 0
    max_msg_bytes: int = _MIB
    max_uncommitted_bytes: int = 1 << 30
    max_committed_bytes_per_ready: int = 0
    max_pending_proposals: int = 16384
    proposal_timeout: float | None = 10.0
    read_timeout: float | None = 5.0

    snapshot_entries: int = 10000
    catchup_entries: int = 5000
    snapshot_interval: float | None = None
    snapshot_margin: int = 1
    snapshot_retention: int = 2
    snapshot_chunk_bytes: int = _MIB
    snapshot_window_chunks: int = 4
    snapshot_throttle_bytes_per_s: float | None = None
    snapshot_stall_timeout: float = 30.0

    fsync: bool = True
    wal_segment_bytes: int = 64 * _MIB
    wal_prezero: bool | None = None

    def __attrs_post_init__(self) -> None:
        self.validate()

    # -- validation --------------------------------------------------------------------------

    def validate(self) -> None:
        """Check every field and combination.

        Raises:
            ConfigError: naming the first offending field.
        """
        _int_at_least("id", self.id, 1)
        for pid, addr in self.peers.items():
            if not isinstance(pid, int) or isinstance(pid, bool) or pid < 1:
                raise ConfigError("peers", f"node ids must be positive ints, got {pid!r}")
            if not isinstance(addr, str):
                raise ConfigError("peers", f"address of node {pid} must be a str, got {addr!r}")
        if self.peers and not self.join and self.id not in self.peers:
            raise ConfigError(
                "peers",
                f"this node ({self.id}) must be one of the initial peers {sorted(self.peers)}",
            )
        _bool("join", self.join)
        _positive_float("tick_interval", self.tick_interval)
        _int_at_least("heartbeat_ticks", self.heartbeat_ticks, 1)
        _int_at_least("election_ticks", self.election_ticks, 1)
        if self.election_ticks <= self.heartbeat_ticks:
            raise ConfigError(
                "election_ticks",
                f"must be greater than heartbeat_ticks ({self.heartbeat_ticks}), "
                f"got {self.election_ticks}",
            )
        if self.seed is not None:
            _int_at_least("seed", self.seed, 0)
        _bool("pre_vote", self.pre_vote)
        _bool("check_quorum", self.check_quorum)
        _bool("forward_proposals", self.forward_proposals)
        _bool("piggyback_commit", self.piggyback_commit)
        if self.read_mode not in ("safe", "lease"):
            raise ConfigError("read_mode", f"must be 'safe' or 'lease', got {self.read_mode!r}")
        if self.read_mode == "lease" and not self.check_quorum:
            raise ConfigError("read_mode", "'lease' reads require check_quorum=True")
        _int_at_least("max_inflight_msgs", self.max_inflight_msgs, 1)
        _int_at_least("max_inflight_bytes", self.max_inflight_bytes, 0)
        _int_at_least("max_msg_bytes", self.max_msg_bytes, 1)
        _int_at_least("max_uncommitted_bytes", self.max_uncommitted_bytes, 0)
        _int_at_least("max_committed_bytes_per_ready", self.max_committed_bytes_per_ready, 0)
        _int_at_least("max_pending_proposals", self.max_pending_proposals, 1)
        _optional_positive_float("proposal_timeout", self.proposal_timeout)
        _optional_positive_float("read_timeout", self.read_timeout)
        _int_at_least("snapshot_entries", self.snapshot_entries, 0)
        _int_at_least("catchup_entries", self.catchup_entries, 0)
        _optional_positive_float("snapshot_interval", self.snapshot_interval)
        _int_at_least("snapshot_margin", self.snapshot_margin, 0)
        _int_at_least("snapshot_retention", self.snapshot_retention, 1)
        _int_at_least("snapshot_chunk_bytes", self.snapshot_chunk_bytes, 1)
        if self.snapshot_chunk_bytes > 64 * _MIB:
            raise ConfigError("snapshot_chunk_bytes", "must be at most 64 MiB")
        _int_at_least("snapshot_window_chunks", self.snapshot_window_chunks, 1)
        _optional_positive_float(
            "snapshot_throttle_bytes_per_s", self.snapshot_throttle_bytes_per_s
        )
        if (
            self.snapshot_throttle_bytes_per_s is not None
            and self.snapshot_throttle_bytes_per_s < 1
        ):
            raise ConfigError("snapshot_throttle_bytes_per_s", "must be at least 1 byte/s")
        _positive_float("snapshot_stall_timeout", self.snapshot_stall_timeout)
        _bool("fsync", self.fsync)
        _int_at_least("wal_segment_bytes", self.wal_segment_bytes, 4096)
        if self.wal_prezero is not None:
            _bool("wal_prezero", self.wal_prezero)

    # -- derived values ----------------------------------------------------------------------

    @property
    def election_timeout(self) -> float:
        """The base election timeout in seconds (``election_ticks * tick_interval``)."""
        return self.election_ticks * self.tick_interval

    def initial_voters(self) -> frozenset[int]:
        """The voters a fresh data directory is bootstrapped with (empty when joining)."""
        if self.join:
            return frozenset()
        return frozenset(self.peers) if self.peers else frozenset({self.id})

    def transport_options(self) -> dict[str, Any]:
        """Keyword arguments that carry the snapshot-streaming knobs (chunk size, window, stall
        timeout, throttle) to a transport::

            TcpTransport(1, "cluster", listen=..., peers=..., **config.transport_options())
        """
        from trioraft.runtime.transport.streaming import StreamOptions

        return {
            "stream_options": StreamOptions(
                chunk_size=self.snapshot_chunk_bytes,
                window=self.snapshot_window_chunks,
                stall_timeout=self.snapshot_stall_timeout,
            ),
            "snapshot_rate": self.snapshot_throttle_bytes_per_s,
        }

    def to_core_config(self, *, applied: int = 0) -> CoreConfig:
        """The sans-I/O core's configuration for this node.

        Args:
            applied: the index the state machine has already applied (the restored snapshot's
                index on restart), so the core replays only what follows it.

        The core never forwards proposals itself: the runtime forwards them with a
        request/response call so the proposer still gets the apply result.
        """
        from trioraft.core.config import CoreConfig, ReadOnlyOption

        return CoreConfig(
            id=self.id,
            election_ticks=self.election_ticks,
            heartbeat_ticks=self.heartbeat_ticks,
            pre_vote=self.pre_vote,
            check_quorum=self.check_quorum,
            read_only=(
                ReadOnlyOption.LEASE_BASED if self.read_mode == "lease" else ReadOnlyOption.SAFE
            ),
            max_inflight_msgs=self.max_inflight_msgs,
            max_inflight_bytes=self.max_inflight_bytes,
            max_msg_bytes=self.max_msg_bytes,
            max_uncommitted_bytes=self.max_uncommitted_bytes,
            max_committed_bytes_per_ready=self.max_committed_bytes_per_ready,
            forward_proposals=False,
            piggyback_commit=self.piggyback_commit,
            seed=self.id if self.seed is None else self.seed,
            applied=applied,
        )


def _int_at_least(name: str, value: object, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(name, f"must be an int, got {value!r}")
    if value < low:
        raise ConfigError(name, f"must be >= {low}, got {value}")


def _bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigError(name, f"must be a bool, got {value!r}")


def _positive_float(name: str, value: object) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ConfigError(name, f"must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(name, f"must be a finite number > 0, got {value}")


def _optional_positive_float(name: str, value: object) -> None:
    if value is not None:
        _positive_float(name, value)
