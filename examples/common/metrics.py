"""Prometheus metrics of an example node (prometheus-client, one registry per node).

Node gauges are read from the node's status at scrape time, so they are never stale and cost
nothing between scrapes; HTTP request counts and latencies are recorded as requests finish.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "ExampleMetrics"]

CONTENT_TYPE: str = CONTENT_TYPE_LATEST

StatusFn = Callable[[], Mapping[str, Any]]

_GAUGES = (
    ("term", "Current Raft term."),
    ("leader", "Id of the known leader (0 when none)."),
    ("commit", "Highest log index known to be committed."),
    ("applied", "Highest log index applied to the state machine."),
    ("first_index", "First log index still held in the log."),
    ("last_index", "Last log index."),
    ("snapshot_index", "Index covered by the newest local snapshot."),
    ("pending_proposals", "Proposals of this node waiting for their entries to apply."),
)
_COUNTERS = (
    ("snapshots_installed", "Snapshots received from a leader and installed."),
    ("snapshots_sent", "Snapshots streamed to followers."),
    ("snapshots_taken", "Snapshots taken locally (saved by this node's state machine)."),
    ("messages_dropped", "Inbound Raft messages dropped because the node's inbox was full."),
)
_ROLES = ("follower", "pre_candidate", "candidate", "leader", "learner")


class _StatusCollector(Collector):
    def __init__(self, status: StatusFn) -> None:
        self._status = status

    def collect(self) -> Iterator[Any]:
        try:
            st = self._status()
        except Exception:  # a stopping node: expose only the request metrics
            return
        node = str(st.get("id", ""))
        for name, doc in _GAUGES:
            value = st.get(name)
            if isinstance(value, int | float):
                fam = GaugeMetricFamily(f"trioraft_{name}", doc, labels=["node"])
                fam.add_metric([node], float(value))
                yield fam
        for name, doc in _COUNTERS:
            value = st.get(name)
            if isinstance(value, int | float):
                cfam = CounterMetricFamily(f"trioraft_{name}", doc, labels=["node"])
                cfam.add_metric([node], float(value))
                yield cfam
        role = str(st.get("role", "")).lower()
        rfam = GaugeMetricFamily(
            "trioraft_role", "1 for the role this node currently has.", labels=["node", "role"]
        )
        for r in _ROLES:
            rfam.add_metric([node, r], 1.0 if r == role else 0.0)
        yield rfam
        peers = st.get("peers")
        if isinstance(peers, Mapping):
            pfam = GaugeMetricFamily(
                "trioraft_peer_match",
                "Highest index known replicated on a peer (leader only).",
                labels=["node", "peer"],
            )
            for peer, info in peers.items():
                if isinstance(info, Mapping) and isinstance(info.get("match"), int):
                    pfam.add_metric([node, str(peer)], float(info["match"]))
            yield pfam


class ExampleMetrics:
    """The metrics of one node.

    Args:
        status: returns the node's status mapping (the ``/-/status`` document).
        app_collector: optional extra collector for application metrics.
    """

    def __init__(self, status: StatusFn, app_collector: Collector | None = None) -> None:
        # The "_created" series only add noise for a demo process.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            "trioraft_http_requests",
            "HTTP requests answered, by route and status code.",
            ["method", "route", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "trioraft_http_request_seconds",
            "Time to answer an HTTP request, by route.",
            ["route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        # label lookups (a lock and a tuple key each) cached per label combination
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.registry.register(_StatusCollector(status))
        if app_collector is not None:
            self.registry.register(app_collector)

    def observe(self, method: str, route: str, code: int, seconds: float) -> None:
        """Record one answered request."""
        key = (method, route, code)
        children = self._children.get(key)
        if children is None:
            children = (self.requests.labels(method, route, str(code)), self.latency.labels(route))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return bytes(generate_latest(self.registry))
