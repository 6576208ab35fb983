"""Command-line flags shared by the KV and counter examples.

The core flags are those of etcd's raftexample (``--id``, ``--cluster``, ``--port``, ``--join``);
the rest expose the snapshot and timing knobs an operator wants to turn.
"""

from __future__ import annotations

import argparse
import logging
import urllib.parse
from collections.abc import Sequence

import attrs

from trioraft.config import Config

__all__ = [
    "ExampleFlags",
    "FlagError",
    "build_parser",
    "parse_flags",
    "parse_raft_url",
    "raft_address",
]


class FlagError(ValueError):
    """A flag value is invalid; the message names the flag."""


@attrs.frozen
class ExampleFlags:
    """The parsed, validated flags of one example node.

    Attributes:
        id: this node's id (1-based position in ``cluster``).
        cluster: raft URLs of the nodes, in id order (``cluster[id - 1]`` is this node).
        port: the HTTP port (0 picks a free one).
        http_host: the address the HTTP server binds.
        join: this node joins an existing cluster instead of bootstrapping one.
        data_dir: where the WAL and snapshots live.
        snapshot_entries: take a snapshot after this many applied entries (None: library default).
        catchup_entries: entries kept after compaction for slow followers (None: library default).
        snapshot_interval: seconds between timer-driven snapshots (0 disables the timer).
        tick_ms: length of one Raft tick in milliseconds.
        election_ticks: election timeout in ticks.
        max_value_bytes: request bodies larger than this are refused with 413.
        request_timeout: seconds a request may wait for Raft before 503/504.
        cluster_id: identifies the cluster in the transport handshake.
        log_level: Python logging level name.
    """

    id: int
    cluster: tuple[str, ...]
    port: int
    http_host: str
    join: bool
    data_dir: str
    snapshot_entries: int | None
    catchup_entries: int | None
    snapshot_interval: float
    tick_ms: int
    election_ticks: int
    max_value_bytes: int
    request_timeout: float
    cluster_id: str
    log_level: str

    @property
    def raft_url(self) -> str:
        """This node's own raft URL."""
        return self.cluster[self.id - 1]

    def peers(self) -> dict[int, str]:
        """Transport addresses (``host:port``) of every node in ``--cluster`` by id, this one
        included."""
        return {i + 1: raft_address(url) for i, url in enumerate(self.cluster)}


def parse_raft_url(url: str) -> tuple[str, int]:
    """Split a raft URL such as ``http://127.0.0.1:12379`` into host and port.

    Raises:
        FlagError: when the URL has no host or no valid port.
    """
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    parsed = urllib.parse.urlsplit(text)
    try:
        port = parsed.port
    except ValueError as exc:
        raise FlagError(f"bad raft URL {url!r}: {exc}") from None
    if not parsed.hostname or port is None:
        raise FlagError(f"bad raft URL {url!r}: expected scheme://host:port")
    if parsed.path not in ("", "/") or parsed.query:
        raise FlagError(f"bad raft URL {url!r}: unexpected path or query")
    return parsed.hostname, port


def raft_address(url: str) -> str:
    """The transport address (``host:port``, IPv6 hosts bracketed) of a raft URL.

    Raises:
        FlagError: when the URL is invalid.
    """
    host, port = parse_raft_url(url)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: ...)`` only where the default is a real value: a flag whose default
    is None (resolved later) or a plain switch states its behaviour in its own help text."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def build_parser(prog: str, *, name: str, snapshot_interval: float) -> argparse.ArgumentParser:
    """The argument parser of an example.

    Args:
        prog: the program name shown in usage.
        name: the example's name, used for the default data dir (``<name>-<id>``) and cluster id.
        snapshot_interval: the default of ``--snapshot-interval`` in seconds.
    """
    p = argparse.ArgumentParser(
        prog=prog,
        description=f"trioraft {name} example node (flags compatible with etcd's raftexample).",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--id", type=int, default=1, help="node id (1-based position in --cluster)")
    p.add_argument(
        "--cluster",
        default="http://127.0.0.1:9021",
        help="comma-separated raft URLs of all nodes, in id order",
    )
    p.add_argument("--port", type=int, default=9121, help="HTTP port (0 picks a free one)")
    p.add_argument("--http-host", default="127.0.0.1", help="address the HTTP server binds")
    p.add_argument("--join", action="store_true", help="join an existing cluster (default: off)")
    p.add_argument("--data-dir", default=None, help=f"data directory (default: {name}-<id>)")
    library = attrs.fields(Config)
    p.add_argument(
        "--snapshot-entries",
        type=int,
        default=None,
        help="snapshot after this many applied entries, 0 disables (default: "
        f"{library.snapshot_entries.default}, the library's)",
    )
    p.add_argument(
        "--catchup-entries",
        type=int,
        default=None,
        help="entries kept after compaction for slow followers (default: "
        f"{library.catchup_entries.default}, the library's)",
    )
    p.add_argument(
        "--snapshot-interval",
        type=float,
        default=snapshot_interval,
        help="seconds between timer-driven snapshots (0 disables)",
    )
    p.add_argument("--tick-ms", type=int, default=100, help="Raft tick length in milliseconds")
    p.add_argument("--election-ticks", type=int, default=10, help="election timeout in ticks")
    p.add_argument(
        "--max-value-bytes",
        type=int,
        default=1 << 20,
        help="largest accepted request body; larger ones get 413",
    )
    p.add_argument(
        "--request-timeout",
        type=float,
        default=5.0,
        help="seconds a request may wait for Raft before answering 503/504",
    )
    p.add_argument("--cluster-id", default=f"trioraft-{name}", help="cluster id for the handshake")
    p.add_argument("--log-level", default="INFO", help="logging level (DEBUG, INFO, WARNING, ...)")
    return p


def parse_flags(
    argv: Sequence[str] | None, *, prog: str, name: str, snapshot_interval: float = 0.0
) -> ExampleFlags:
    """Parse and validate ``argv`` (``sys.argv[1:]`` when None).

    Raises:
        SystemExit: on ``--help`` or invalid flags (argparse's usual behaviour).
    """
    parser = build_parser(prog, name=name, snapshot_interval=snapshot_interval)
    ns = parser.parse_args(argv)
    try:
        return _validate(ns, name)
    except FlagError as exc:
        parser.error(str(exc))
        raise  # pragma: no cover - parser.error exits


def _validate(ns: argparse.Namespace, name: str) -> ExampleFlags:
    cluster = tuple(u.strip() for u in str(ns.cluster).split(",") if u.strip())
    if not cluster:
        raise FlagError("--cluster: at least one raft URL is required")
    for url in cluster:
        parse_raft_url(url)
    if len(set(cluster)) != len(cluster):
        raise FlagError("--cluster: duplicate raft URLs")
    node_id = int(ns.id)
    if not 1 <= node_id <= len(cluster):
        raise FlagError(f"--id {node_id}: must be between 1 and {len(cluster)} (size of --cluster)")
    if not 0 <= int(ns.port) <= 65535:
        raise FlagError(f"--port {ns.port}: not a TCP port")
    for flag, value in (
        ("--snapshot-entries", ns.snapshot_entries),
        ("--catchup-entries", ns.catchup_entries),
    ):
        if value is not None and value < 0:
            raise FlagError(f"{flag} {value}: must be >= 0")
    if ns.snapshot_interval < 0:
        raise FlagError("--snapshot-interval: must be >= 0")
    if ns.tick_ms <= 0:
        raise FlagError("--tick-ms: must be > 0")
    if ns.election_ticks <= 1:
        raise FlagError("--election-ticks: must be > 1")
    if ns.max_value_bytes <= 0:
        raise FlagError("--max-value-bytes: must be > 0")
    if ns.request_timeout <= 0:
        raise FlagError("--request-timeout: must be > 0")
    level = str(ns.log_level).upper()
    if not isinstance(logging.getLevelName(level), int):
        raise FlagError(f"--log-level {ns.log_level}: unknown level")
    return ExampleFlags(
        id=node_id,
        cluster=cluster,
        port=int(ns.port),
        http_host=str(ns.http_host),
        join=bool(ns.join),
        data_dir=ns.data_dir or f"{name}-{node_id}",
        snapshot_entries=ns.snapshot_entries,
        catchup_entries=ns.catchup_entries,
        snapshot_interval=float(ns.snapshot_interval),
        tick_ms=int(ns.tick_ms),
        election_ticks=int(ns.election_ticks),
        max_value_bytes=int(ns.max_value_bytes),
        request_timeout=float(ns.request_timeout),
        cluster_id=str(ns.cluster_id),
        log_level=level,
    )
