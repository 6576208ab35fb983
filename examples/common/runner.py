"""Runs one example node: Raft node + TCP transport + HTTP service, until SIGINT/SIGTERM.

Shared by ``python -m examples.kv`` and ``python -m examples.counter``; each supplies its state
machine and its HTTP routes.
"""

from __future__ import annotations

import enum
import logging
import signal
import sys
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import attrs
import trio

from examples.common.flags import ExampleFlags, parse_raft_url
from examples.common.http import HttpServerConfig, Request, Response, serve_http
from examples.common.metrics import ExampleMetrics
from examples.common.service import Service
from trioraft.config import Config
from trioraft.errors import ConfigError, RaftError, StorageCorrupted

__all__ = ["BindableApp", "build_config", "run_example", "status_document"]

logger = logging.getLogger(__name__)


class BindableApp(Protocol):
    """An example's HTTP routes (see :class:`examples.kv.app.KVApp`)."""

    def bind(self, service: Service) -> None: ...

    async def __call__(self, req: Request) -> Response | None: ...


def build_config(flags: ExampleFlags) -> Config:
    """The trioraft :class:`Config` for the flags.

    Raises:
        ConfigError: naming the offending field.
    """
    extra: dict[str, Any] = {}
    if flags.snapshot_entries is not None:
        extra["snapshot_entries"] = flags.snapshot_entries
    if flags.catchup_entries is not None:
        extra["catchup_entries"] = flags.catchup_entries
    return Config(
        id=flags.id,
        peers=flags.peers(),
        join=flags.join,
        tick_interval=flags.tick_ms / 1000.0,
        election_ticks=flags.election_ticks,
        snapshot_interval=flags.snapshot_interval or None,
        proposal_timeout=flags.request_timeout,
        read_timeout=flags.request_timeout,
        **extra,
    )


def _plain(value: Any) -> Any:
    """A JSON-friendly version of a status value."""
    if isinstance(value, enum.Enum):
        return value.name.lower()
    if attrs.has(type(value)):
        return {k: _plain(v) for k, v in attrs.asdict(value, recurse=False).items()}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, frozenset | set):
        return sorted(_plain(v) for v in value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    return value


def status_document(status: Any, *, node_id: int, addresses: Mapping[int, str]) -> dict[str, Any]:
    """The ``/-/status`` JSON document built from ``node.status()``.

    The fixed keys are always present (``None`` when the runtime does not report them);
    everything else the runtime reports is passed through under its own name.
    """
    raw = _plain(status)
    doc: dict[str, Any] = dict(raw) if isinstance(raw, dict) else {}
    out: dict[str, Any] = {
        "id": doc.pop("id", node_id),
        "role": str(doc.pop("role", "")).lower() or None,
        "term": doc.pop("term", None),
        "leader": doc.pop("leader", None),
        "commit": doc.pop("commit", None),
        "applied": doc.pop("applied", None),
        "first_index": doc.pop("first_index", None),
        "last_index": doc.pop("last_index", None),
        "snapshot_index": doc.pop("snapshot_index", None),
        "snapshots_installed": doc.pop("snapshots_installed", None),
        "snapshots_sent": doc.pop("snapshots_sent", None),
    }
    progress = doc.pop("progress", None) or {}
    members = doc.pop("members", None)
    known = dict(addresses)
    if isinstance(members, dict):
        known.update({int(k): str(v) for k, v in members.items() if v})
    conf = doc.get("conf") or {}
    in_conf: set[int] = set()
    if isinstance(conf, dict):
        for key in ("voters", "learners", "voters_outgoing", "learners_next"):
            in_conf.update(int(x) for x in conf.get(key) or ())
    peers: dict[str, Any] = {}
    for pid in sorted(in_conf | set(known) | {int(p) for p in progress}):
        if pid == node_id:
            continue
        entry: dict[str, Any] = {"address": known.get(pid)}
        if isinstance(conf, dict):
            if pid in (conf.get("learners") or ()):
                entry["member"] = "learner"
            elif pid in (conf.get("voters") or ()) or pid in (conf.get("voters_outgoing") or ()):
                entry["member"] = "voter"
            else:
                entry["member"] = None
        prog = progress.get(str(pid)) if isinstance(progress, dict) else None
        if isinstance(prog, dict):
            entry.update(prog)
        peers[str(pid)] = entry
    out["peers"] = peers
    out.update(doc)
    return out


def setup_logging(level: str, node_id: int) -> None:
    """Log to stderr with the node id on every line."""
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format=f"%(asctime)s %(levelname)s [node {node_id}] %(name)s: %(message)s",
        stream=sys.stderr,
    )


async def _serve(
    flags: ExampleFlags,
    state_machine: Any,
    app: BindableApp,
    *,
    ready: Callable[[int], None] | None = None,
) -> None:
    from trioraft.node import open_raft_node
    from trioraft.runtime.transport.tcp import TcpTransport

    config = build_config(flags)
    host, port = parse_raft_url(flags.raft_url)
    # The transport exists before the node; unreachable-peer reports reach the node once it is up.
    node_box: list[Any] = []
    transport = TcpTransport(
        node_id=flags.id,
        cluster_id=flags.cluster_id,
        listen=(host, port),
        peers={pid: addr for pid, addr in config.peers.items() if pid != flags.id},
        on_unreachable=lambda peer: node_box[0].report_unreachable(peer) if node_box else None,
        **config.transport_options(),
    )
    addresses = dict(config.peers)
    async with open_raft_node(
        config, state_machine, data_dir=flags.data_dir, transport=transport
    ) as node:
        node_box.append(node)

        def status() -> dict[str, Any]:
            return status_document(node.status(), node_id=flags.id, addresses=addresses)

        metrics = ExampleMetrics(status)
        service = Service(
            node, status, request_timeout=flags.request_timeout, app=app, metrics=metrics
        )
        app.bind(service)
        http_cfg = HttpServerConfig(max_body_bytes=flags.max_value_bytes)
        async with trio.open_nursery() as nursery:
            http_port = await nursery.start(
                lambda task_status: serve_http(
                    service.handle,
                    host=flags.http_host,
                    port=flags.port,
                    config=http_cfg,
                    on_reject=lambda code: metrics.observe("-", "-", code, 0.0),
                    task_status=task_status,
                )
            )
            logger.info(
                "node %d serving: raft %s, HTTP http://%s:%d, data %s",
                flags.id,
                flags.raft_url,
                flags.http_host,
                http_port,
                flags.data_dir,
            )
            if ready is not None:
                ready(http_port)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    logger.info(
                        "node %d: %s received, shutting down", flags.id, signal.Signals(signum).name
                    )
                    break
            nursery.cancel_scope.cancel()
    logger.info("node %d stopped", flags.id)


def _leaf(exc: BaseException) -> BaseException:
    """The first non-group exception inside (nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def run_example(flags: ExampleFlags, state_machine: Any, app: BindableApp) -> int:
    """Run a node until SIGINT/SIGTERM; returns the process exit status."""
    setup_logging(flags.log_level, flags.id)
    try:
        trio.run(_serve, flags, state_machine, app)
    except BaseException as group:
        exc = _leaf(group)
        if isinstance(exc, KeyboardInterrupt):
            return 130
        if isinstance(exc, ConfigError):
            logger.error("configuration error: %s", exc)
            return 2
        if isinstance(exc, StorageCorrupted):
            logger.error("storage corrupted, refusing to start: %s", exc)
            return 3
        if isinstance(exc, RaftError | OSError):
            logger.error("node failed: %s", exc, exc_info=group)
            return 1
        raise
    return 0
