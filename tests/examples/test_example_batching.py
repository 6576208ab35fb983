"""Group commit of the examples: concurrent PUTs share entries, each still gets its own answer."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from examples.common.batching import GroupCommit
from examples.common.http import Request
from examples.common.records import encode_record
from examples.common.service import HttpError, Service
from examples.kv.app import KVApp
from examples.kv.store import KVStore, encode_put, encode_puts
from trioraft.errors import AmbiguousOutcome, ProposalDropped


class Proposer:
    """Records every batch; each proposal blocks until released (or fails as scripted)."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.release = trio.Event()
        self.failures: list[BaseException] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def __call__(self, items: list[Any], deadline: float) -> Any:
        self.batches.append(list(items))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await self.release.wait()
            if self.failures:
                raise self.failures.pop(0)
            return len(self.batches)
        finally:
            self.in_flight -= 1


async def submit_all(
    gc: GroupCommit[Any], items: list[Any], results: dict[Any, Any], order: list[Any] | None = None
) -> None:
    async def one(item: Any) -> None:
        if order is not None:
            order.append(item)  # submit() joins a batch before its first checkpoint
        try:
            results[item] = await gc.submit(item, 1)
        except HttpError as exc:
            results[item] = exc

    async with trio.open_nursery() as nursery:
        for item in items:
            nursery.start_soon(one, item)


async def test_requests_arriving_while_a_batch_is_in_flight_share_the_next_entry() -> None:
    proposer = Proposer()
    gc: GroupCommit[int] = GroupCommit(proposer, timeout=10)
    results: dict[Any, Any] = {}
    order: list[int] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(submit_all, gc, [0], results)
        await trio.testing.wait_all_tasks_blocked()
        assert proposer.batches == [[0]]  # nothing in flight: proposed at once, alone
        nursery.start_soon(submit_all, gc, list(range(1, 11)), results, order)
        await trio.testing.wait_all_tasks_blocked()
        assert proposer.batches == [[0]]  # the others wait for the slot, accumulating
        proposer.release.set()
    assert proposer.batches == [[0], order]  # arrival order is kept
    assert results == {0: 1, **dict.fromkeys(range(1, 11), 2)}
    assert proposer.max_in_flight == 1
    assert (gc.batches, gc.items) == (2, 11)


async def test_concurrent_arrivals_with_a_free_slot_still_share_one_entry() -> None:
    proposer = Proposer()
    proposer.release.set()
    gc: GroupCommit[int] = GroupCommit(proposer, timeout=10)
    results: dict[Any, Any] = {}
    await submit_all(gc, list(range(20)), results)
    # All 20 were submitted in one scheduler round; the owner yields once before closing.
    assert [sorted(b) for b in proposer.batches] == [list(range(20))]
    assert set(results.values()) == {1}


async def test_batches_are_closed_at_max_items_and_max_bytes() -> None:
    proposer = Proposer()
    proposer.release.set()
    gc: GroupCommit[str] = GroupCommit(proposer, timeout=10, max_items=3, max_bytes=100)
    done: list[str] = []

    async def one(item: str, size: int) -> None:
        await gc.submit(item, size)
        done.append(item)

    async with trio.open_nursery() as nursery:
        for item, size in [("a", 1), ("b", 1), ("c", 1), ("d", 1), ("big", 150), ("e", 60)]:
            nursery.start_soon(one, item, size)
    sizes = sorted(len(b) for b in proposer.batches)
    assert sum(sizes) == 6 and max(sizes) <= 3
    assert ["big"] in proposer.batches  # an item over max_bytes travels alone
    assert sorted(done) == ["a", "b", "big", "c", "d", "e"]


async def test_a_failed_batch_fails_every_member_with_the_same_status() -> None:
    proposer = Proposer()
    gc: GroupCommit[int] = GroupCommit(proposer, timeout=10)
    results: dict[Any, Any] = {}
    proposer.failures = [HttpError(504, "outcome unknown: x")]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(submit_all, gc, [0, 1, 2], results)
        await trio.testing.wait_all_tasks_blocked()
        proposer.release.set()
    errors = [results[i] for i in range(3)]
    assert all(isinstance(e, HttpError) and e.status == 504 for e in errors)
    assert len({id(e) for e in errors}) == 3  # one exception object per member


async def test_waiting_for_a_slot_past_the_deadline_is_503(
    autojump_clock: trio.testing.MockClock,
) -> None:
    proposer = Proposer()  # never released: the first batch holds the only slot
    gc: GroupCommit[int] = GroupCommit(proposer, timeout=5)
    results: dict[Any, Any] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(submit_all, gc, [0], results)
        await trio.testing.wait_all_tasks_blocked()
        await submit_all(gc, [1, 2], results)
        assert results[1].status == results[2].status == 503
        assert proposer.batches == [[0]]  # 1 and 2 were certainly not proposed
        nursery.cancel_scope.cancel()


async def test_too_many_batches_waiting_for_a_slot_are_refused_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    proposer = Proposer()  # never released: the first batch holds the only slot
    gc: GroupCommit[int] = GroupCommit(proposer, timeout=5, max_items=1, max_waiting=2)
    results: dict[Any, Any] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(submit_all, gc, [0], results)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(submit_all, gc, [1, 2], results)  # two batches wait for the slot
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        with pytest.raises(HttpError) as info:
            await gc.submit(3, 1)
        assert info.value.status == 503 and trio.current_time() == start  # at once
        nursery.cancel_scope.cancel()
    assert proposer.batches == [[0]]


async def test_cancelled_owner_fails_its_members_instead_of_hanging() -> None:
    proposer = Proposer()
    gc: GroupCommit[int] = GroupCommit(proposer, timeout=10)
    scopes = {0: trio.CancelScope(), 1: trio.CancelScope()}
    outcome: dict[int, Any] = {}

    async def one(item: int) -> None:
        with scopes[item]:
            try:
                outcome[item] = await gc.submit(item, 1)
            except HttpError as exc:
                outcome[item] = exc.status
            return
        outcome[item] = "cancelled"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, 0)
        nursery.start_soon(one, 1)
        await trio.testing.wait_all_tasks_blocked()
        [batch] = proposer.batches  # both joined one batch; its first item is the owner's
        owner, member = batch
        scopes[owner].cancel()  # e.g. shutdown while the batch is being proposed
    assert outcome == {owner: "cancelled", member: 504}  # proposed, then abandoned: unknown


def test_invalid_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        GroupCommit(Proposer(), timeout=1, max_inflight=0)
    with pytest.raises(ValueError):
        GroupCommit(Proposer(), timeout=1, max_waiting=0)


# -- the KV store's batched command ---------------------------------------------------------------


def test_puts_command_applies_all_pairs_in_order() -> None:
    store = KVStore()
    store.apply(1, encode_puts([("a", b"1"), ("b", b"2"), ("a", b"3")]))
    assert (store.get("a"), store.get("b"), store.applied_index) == (b"3", b"2", 1)
    assert encode_puts([("k", b"v")]) == encode_put("k", b"v")  # one pair: the plain command


def test_malformed_puts_command_is_skipped_whole() -> None:
    store = KVStore()
    store.apply(1, encode_record(["puts", [["a", b"1"], ["b", 2]]]))
    store.apply(2, encode_record(["puts", "nope"]))
    store.apply(3, encode_record(["puts", [["a", b"1"]], "extra"]))
    assert len(store) == 0 and store.applied_index == 3


async def test_kv_puts_through_the_service_share_entries_and_read_back() -> None:
    store = KVStore()
    proposals: list[bytes] = []

    class Node:
        index = 0

        async def propose(self, data: bytes) -> Any:
            proposals.append(data)
            await trio.sleep(0.01)  # the entry takes time to commit
            self.index += 1
            return store.apply(self.index, data)

        async def read_barrier(self) -> int:
            return self.index

        async def add_voter(self, node_id: int, address: str) -> None: ...
        async def add_learner(self, node_id: int, address: str) -> None: ...
        async def remove(self, node_id: int) -> None: ...

    app = KVApp(store)
    service = Service(Node(), dict, request_timeout=5, app=app)
    app.bind(service)

    async def put(i: int) -> None:
        r = await service.handle(Request("PUT", f"/k{i}", {}, (), f"v{i}".encode()))
        assert r.status == 204
        assert store.get(f"k{i}") == f"v{i}".encode()  # applied before the answer

    async with trio.open_nursery() as nursery:
        for i in range(50):
            nursery.start_soon(put, i)
    assert len(store) == 50
    assert len(proposals) < 10


async def test_kv_batch_failure_maps_to_each_request(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = KVStore()
    outcomes = [ProposalDropped("too-large"), AmbiguousOutcome("lost")]

    class Node:
        async def propose(self, data: bytes) -> Any:
            raise outcomes.pop(0)

        async def read_barrier(self) -> int:
            return 0

        async def add_voter(self, node_id: int, address: str) -> None: ...
        async def add_learner(self, node_id: int, address: str) -> None: ...
        async def remove(self, node_id: int) -> None: ...

    app = KVApp(store)
    service = Service(Node(), dict, request_timeout=5, app=app)
    app.bind(service)

    statuses: list[int] = []
    for _ in range(2):
        r = await service.handle(Request("PUT", "/k", {}, (), b"v"))
        statuses.append(r.status)
    assert statuses == [413, 504]
