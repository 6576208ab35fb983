"""HTTP routes and the Raft error -> status code contract, against a fake node."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import trio

from examples.common.http import Request
from examples.common.metrics import ExampleMetrics
from examples.common.service import Service
from examples.counter.app import CounterApp
from examples.counter.store import CounterStore
from examples.kv.app import KVApp
from examples.kv.store import KVStore
from trioraft.errors import (
    AmbiguousOutcome,
    NodeStopped,
    NotLeader,
    ProposalDropped,
    RaftError,
    Timeout,
)

STATUS = {
    "id": 1,
    "role": "leader",
    "term": 3,
    "leader": 1,
    "commit": 10,
    "applied": 10,
    "first_index": 1,
    "last_index": 10,
    "snapshot_index": 0,
    "snapshots_installed": 0,
    "snapshots_sent": 2,
    "peers": {"2": {"match": 9}},
}


class FakeNode:
    """Applies proposals to a store immediately, or fails as scripted."""

    def __init__(self, apply: Callable[[int, bytes], Any]) -> None:
        self.apply = apply
        self.index = 0
        self.failures: list[BaseException | str] = []  # "hang" blocks forever
        self.barriers = 0
        self.members: list[tuple[str, int, str]] = []

    async def _maybe_fail(self) -> None:
        if self.failures:
            f = self.failures.pop(0)
            if f == "hang":
                await trio.sleep_forever()
            assert isinstance(f, BaseException)
            raise f

    async def propose(self, data: bytes) -> Any:
        await self._maybe_fail()
        self.index += 1
        return self.apply(self.index, data)

    async def read_barrier(self) -> int:
        await self._maybe_fail()
        self.barriers += 1
        return self.index

    async def add_voter(self, node_id: int, address: str) -> None:
        await self._maybe_fail()
        self.members.append(("voter", node_id, address))

    async def add_learner(self, node_id: int, address: str) -> None:
        await self._maybe_fail()
        self.members.append(("learner", node_id, address))

    async def remove(self, node_id: int) -> None:
        await self._maybe_fail()
        self.members.append(("remove", node_id, ""))


def req(method: str, target: str, body: bytes = b"") -> Request:
    path, _, q = target.partition("?")
    query: dict[str, list[str]] = {}
    for part in filter(None, q.split("&")):
        k, _, v = part.partition("=")
        query.setdefault(k, []).append(v)
    return Request(method=method, path=path, query=query, headers=(), body=body)


def kv_service(timeout: float = 5.0) -> tuple[Service, FakeNode, KVStore]:
    store = KVStore()
    node = FakeNode(store.apply)
    app = KVApp(store)
    metrics = ExampleMetrics(lambda: STATUS)
    service = Service(node, lambda: STATUS, request_timeout=timeout, app=app, metrics=metrics)
    app.bind(service)
    return service, node, store


async def test_kv_put_get_404_and_serializable() -> None:
    service, node, _ = kv_service()
    r = await service.handle(req("PUT", "/hello", b"world"))
    assert r.status == 204
    r = await service.handle(req("GET", "/hello"))
    assert (r.status, r.body) == (200, b"world")
    assert node.barriers == 1
    r = await service.handle(req("GET", "/hello?serializable=true"))
    assert (r.status, r.body) == (200, b"world")
    assert node.barriers == 1  # no barrier for serializable reads
    r = await service.handle(req("GET", "/missing"))
    assert r.status == 404


async def test_kv_bad_requests() -> None:
    service, _, _ = kv_service()
    assert (await service.handle(req("GET", "/"))).status == 400
    assert (await service.handle(req("PUT", "/-/thing", b"x"))).status == 400
    assert (await service.handle(req("PUT", "/" + "k" * 5000, b"x"))).status == 400
    assert (await service.handle(req("PATCH", "/k"))).status == 405
    assert (await service.handle(req("POST", "/-/status"))).status == 405


async def test_status_and_metrics() -> None:
    service, _, _ = kv_service()
    await service.handle(req("PUT", "/a", b"1"))
    r = await service.handle(req("GET", "/-/status"))
    assert r.status == 200 and r.content_type == "application/json"
    assert json.loads(r.body) == STATUS
    r = await service.handle(req("GET", "/metrics"))
    text = r.body.decode()
    assert 'trioraft_term{node="1"} 3.0' in text
    assert 'trioraft_snapshots_sent_total{node="1"} 2.0' in text
    assert 'trioraft_role{node="1",role="leader"} 1.0' in text
    assert 'trioraft_http_requests_total{code="204",method="PUT",route="/<key>"} 1.0' in text


async def test_membership_routes() -> None:
    service, node, _ = kv_service()
    r = await service.handle(req("POST", "/4", b"http://127.0.0.1:42379"))
    assert r.status == 204
    r = await service.handle(req("POST", "/5?learner=true", b"http://127.0.0.1:52379\n"))
    assert r.status == 204
    r = await service.handle(req("DELETE", "/2"))
    assert r.status == 204
    assert node.members == [
        ("voter", 4, "127.0.0.1:42379"),
        ("learner", 5, "127.0.0.1:52379"),
        ("remove", 2, ""),
    ]
    assert (await service.handle(req("POST", "/4", b"not a url"))).status == 400
    assert (await service.handle(req("POST", "/4", b"\xff"))).status == 400


async def test_error_mapping(autojump_clock: trio.testing.MockClock) -> None:
    service, node, _ = kv_service(timeout=5.0)
    cases: list[tuple[list[BaseException | str], int]] = [
        ([AmbiguousOutcome("lost")], 504),
        # a Timeout (not an AmbiguousOutcome) means nothing was proposed: retried, then 503
        ([Timeout("no proposal slot")] * 1000, 503),
        ([Timeout("no proposal slot")], 204),
        ([NotLeader(3, "http://127.0.0.1:3")], 503),
        ([ProposalDropped("uncommitted-limit")], 503),
        ([ProposalDropped("too-large")], 413),
        ([NodeStopped("bye")], 504),  # stopped while the proposal was outstanding
        ([RaftError("forwarded request failed: internal")], 504),
        (["hang"], 504),  # our own deadline while proposing
    ]
    for failures, status in cases:
        node.failures = list(failures)
        r = await service.handle(req("PUT", "/k", b"v"))
        assert r.status == status, (failures, r)
    # Reads: a timeout or a hang means certainly nothing happened.
    node.failures = ["hang"]
    assert (await service.handle(req("GET", "/k"))).status == 503
    node.failures = [Timeout("slow")] * 1000
    assert (await service.handle(req("GET", "/k"))).status == 503


async def test_transient_failures_are_retried_until_success(
    autojump_clock: trio.testing.MockClock,
) -> None:
    service, node, store = kv_service(timeout=5.0)
    node.failures = [ProposalDropped("no-leader"), NotLeader(None), ProposalDropped("no-leader")]
    r = await service.handle(req("PUT", "/k", b"v"))
    assert r.status == 204
    assert store.get("k") == b"v"
    node.failures = [ProposalDropped("no-leader")] * 10_000
    start = trio.current_time()
    r = await service.handle(req("PUT", "/k", b"v2"))
    assert r.status == 503
    assert 4.9 <= trio.current_time() - start <= 5.1


async def test_counter_routes() -> None:
    store = CounterStore()
    node = FakeNode(store.apply)
    app = CounterApp(store)
    service = Service(node, lambda: STATUS, request_timeout=5, app=app)
    app.bind(service)
    r = await service.handle(req("POST", "/incr", b"5"))
    assert (r.status, r.body) == (200, b"5\n")
    r = await service.handle(req("POST", "/incr"))
    assert (r.status, r.body) == (200, b"6\n")
    r = await service.handle(req("POST", "/incr", b"-10"))
    assert r.body == b"-4\n"
    r = await service.handle(req("GET", "/value"))
    assert (r.status, r.body) == (200, b"-4\n")
    assert (await service.handle(req("POST", "/incr", b"abc"))).status == 400
    assert (await service.handle(req("POST", "/incr", str(1 << 70).encode()))).status == 400
    assert (await service.handle(req("GET", "/incr"))).status == 405
    assert (await service.handle(req("PUT", "/value"))).status == 405
    assert (await service.handle(req("GET", "/other"))).status == 404


async def test_member_ids_beyond_64_bits_are_refused() -> None:
    service, node, _ = kv_service()
    huge = str(1 << 64)
    assert (await service.handle(req("POST", "/" + huge, b"http://127.0.0.1:42379"))).status == 400
    assert (await service.handle(req("DELETE", "/" + huge))).status == 400
    assert (await service.handle(req("DELETE", "/" + str((1 << 64) - 1)))).status == 204
    assert node.members == [("remove", (1 << 64) - 1, "")]


async def test_adding_a_voter_as_a_learner_is_refused() -> None:
    store = KVStore()
    node = FakeNode(store.apply)
    status = {**STATUS, "conf": {"voters": [1, 2, 3], "learners": []}}
    app = KVApp(store)
    service = Service(node, lambda: status, request_timeout=5.0, app=app)
    app.bind(service)
    r = await service.handle(req("POST", "/2?learner=true", b"http://127.0.0.1:22379"))
    assert r.status == 409
    assert node.members == []


async def test_removing_the_node_serving_the_request_answers_once_it_left(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The leader drops its connections to the removed node while applying the removal, so the
    # forwarded call's answer never arrives (outcome unknown): the node waits for the change to
    # apply locally and answers 204; for another node's removal, 504 stays 504.
    store = KVStore()
    node = FakeNode(store.apply)
    status: dict[str, Any] = {**STATUS, "conf": {"voters": [1, 2, 3]}}
    app = KVApp(store)
    service = Service(node, lambda: status, request_timeout=5.0, app=app)
    app.bind(service)

    async def removal_applies_later() -> None:
        await trio.sleep(1.0)
        status["conf"] = {"voters": [2, 3]}

    async with trio.open_nursery() as nursery:
        nursery.start_soon(removal_applies_later)
        node.failures = [AmbiguousOutcome("forwarded to node 2: connection closed")]
        assert (await service.handle(req("DELETE", "/1"))).status == 204
    node.failures = [AmbiguousOutcome("forwarded to node 2: connection closed")]
    assert (await service.handle(req("DELETE", "/3"))).status == 504
    # it never leaves: still unknown
    status["conf"] = {"voters": [1, 2, 3]}
    node.failures = [AmbiguousOutcome("lost")]
    assert (await service.handle(req("DELETE", "/1"))).status == 504
