"""Proposal correlation by (term, index), read batching and applied waiters."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from trioraft.errors import AmbiguousOutcome, NodeStopped, ProposalDropped
from trioraft.node import _proposal_expired
from trioraft.runtime.proposals import AppliedWaiters, Future, ProposalTracker, ReadBatcher


def test_same_term_resolves_other_term_supersedes() -> None:
    t = ProposalTracker()
    a: Future[object] = Future()
    b: Future[object] = Future()
    t.add(5, 2, a)
    t.add(6, 2, b)
    t.applied(5, 2, "ok")
    t.applied(6, 3, "someone else's")
    assert a.result() == "ok"
    with pytest.raises(ProposalDropped) as info:
        b.result()
    assert info.value.reason == "superseded"
    assert len(t) == 0


def test_a_proposal_displaced_from_the_local_log_is_ambiguous_not_dropped() -> None:
    # Our entry (term 2, index 7) was cut from this node's log and the index re-proposed in
    # term 4; a node that still holds the term-2 entry may win term 5 and commit it.
    t = ProposalTracker()
    old: Future[object] = Future()
    new: Future[object] = Future()
    t.add(7, 2, old)
    t.add(7, 4, new)
    with pytest.raises(AmbiguousOutcome, match="another node may still commit it"):
        old.result()
    t.applied(7, 4, "ok")
    assert new.result() == "ok"


def test_snapshot_cover_is_ambiguous_and_fail_all() -> None:
    t = ProposalTracker()
    fs = [Future[object]() for _ in range(3)]
    for i, f in enumerate(fs, start=10):
        t.add(i, 1, f)
    t.covered_by_snapshot(11)
    with pytest.raises(AmbiguousOutcome):
        fs[0].result()
    with pytest.raises(AmbiguousOutcome):
        fs[1].result()
    assert not fs[2].done()
    t.fail_all(NodeStopped("bye"))
    with pytest.raises(NodeStopped):
        fs[2].result()


def test_future_first_outcome_wins() -> None:
    f: Future[int] = Future()
    f.set_result(1)
    f.set_exception(RuntimeError())
    f.set_result(2)
    assert f.result() == 1


def test_read_batches_share_a_context() -> None:
    r = ReadBatcher(7)
    f1, f2, f3 = Future[int](), Future[int](), Future[int]()
    r.queue(f1)
    r.queue(f2)
    batch = r.take_batch()
    assert batch is not None
    ctx, futures = batch
    assert futures == [f1, f2] and ctx[:8] == (7).to_bytes(8, "big")
    r.queue(f3)
    ctx2, _ = r.take_batch() or (b"", [])
    assert ctx2 != ctx
    r.resolved(ctx, 42)
    assert f1.result() == 42 and f2.result() == 42 and not f3.done()
    r.requeue_all()
    assert r.queued
    assert r.take_batch() is not None
    r.fail_all(NodeStopped("x"))
    with pytest.raises(NodeStopped):
        f3.result()
    assert r.take_batch() is None


async def test_applied_waiters() -> None:
    w = AppliedWaiters()
    e5, e3 = w.add(5), w.add(3)
    w.advance(4)
    assert e3.is_set() and not e5.is_set()
    w.advance(5)
    assert e5.is_set()
    e9 = w.add(9)
    w.wake_all()
    assert e9.is_set()
    await trio.lowlevel.checkpoint()


def test_applied_waiters_that_stop_waiting_are_dropped() -> None:
    w = AppliedWaiters()
    events = [w.add(i) for i in range(10, 20)]
    for e in events[:4]:
        w.discard(e)
    assert len(w) == 6 and len(w._heap) == 10  # dropped lazily
    w.advance(10)  # pops a discarded one
    assert len(w) == 6 and len(w._heap) == 9
    w.discard(events[4])
    assert len(w) == 5 and len(w._heap) == 9
    w.discard(events[5])
    assert len(w) == 4 and len(w._heap) == 4  # half of them gone: compacted
    w.discard(events[1])  # already dropped: no effect on the live ones
    assert len(w) == 4
    w.advance(19)
    assert all(e.is_set() for e in events[7:])
    assert len(w) == 0 and len(w._heap) == 0


async def test_deadlines_fail_late_futures(autojump_clock: trio.testing.MockClock) -> None:
    from trioraft.runtime.proposals import Deadlines

    d = Deadlines()
    late: Future[int] = Future()
    early_done: Future[int] = Future()
    async with trio.open_nursery() as nursery:
        await nursery.start(d.run)
        d.add(trio.current_time() + 2, late, lambda: AmbiguousOutcome("late"))
        d.add(trio.current_time() + 1, early_done, lambda: AmbiguousOutcome("never"))
        d.add(float("inf"), Future(), lambda: AmbiguousOutcome("never"))
        early_done.set_result(7)
        await trio.sleep(1.5)
        assert not late.done()
        await trio.sleep(1)
        assert late.done() and late.abandoned
        with pytest.raises(AmbiguousOutcome):
            late.result()
        assert early_done.result() == 7
        nursery.cancel_scope.cancel()


def test_deadlines_drop_resolved_requests_long_before_their_deadline() -> None:
    from trioraft.runtime.proposals import Deadlines

    # Requests resolve quickly but their (fixed) timeout is far away: what is held must stay
    # bounded by the live requests, not by rate x timeout.
    d = Deadlines()
    live: list[Future[int]] = []
    for i in range(20 * Deadlines.COMPACT_MIN):
        f: Future[int] = Future()
        d.add(1000.0 + i, f, lambda: AmbiguousOutcome("late"))
        live.append(f)
        if len(live) > 10:
            live.pop(0).set_result(i)
    assert len(d) <= 2 * Deadlines.COMPACT_MIN + 1
    assert all(not f.done() for f in live)


def test_deadlines_drop_abandoned_requests_without_a_deadline() -> None:
    from trioraft.runtime.proposals import Deadlines

    # A request without a timeout whose caller gave up is dropped unanswered by the raft
    # actor; with an infinite deadline it used to stay held until the node stopped (final
    # review, eighth session).
    d = Deadlines()
    for _ in range(20 * Deadlines.COMPACT_MIN):
        f: Future[int] = Future()
        d.add(math.inf, f, lambda: AmbiguousOutcome("never"))
        f.abandoned = True
    assert len(d) <= 2 * Deadlines.COMPACT_MIN + 1


async def test_slots_limit_without_yielding(autojump_clock: trio.testing.MockClock) -> None:
    from trioraft.runtime.proposals import Slots

    s = Slots(2)
    assert s.try_acquire() and s.try_acquire()
    assert not s.try_acquire()
    got = []

    async def waiter() -> None:
        await s.acquire()
        got.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.sleep(1)
        assert got == []
        s.release()
    assert len(got) == 1 and s.used == 2


async def test_future_waiters_cancelled_in_any_order_leave_the_others_waiting() -> None:
    """The first waiter aborts through a bound method that removes the list's head, later ones
    through closures that remove themselves; whichever is cancelled, the rest still get the
    outcome and nobody else is removed."""
    for cancel in ((0,), (1,), (2,), (0, 1), (1, 0), (2, 0), (0, 2)):
        f: Future[int] = Future()
        got: dict[int, int] = {}
        scopes = [trio.CancelScope() for _ in range(3)]

        async def wait(
            i: int, f: Future[int], got: dict[int, int], scope: trio.CancelScope
        ) -> None:
            with scope:
                got[i] = await f.wait()

        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(wait, i, f, got, scopes[i])
                await trio.testing.wait_all_tasks_blocked()
            for i in cancel:
                scopes[i].cancel()
                await trio.testing.wait_all_tasks_blocked()
            assert f._waiters is not None and len(f._waiters) == 3 - len(cancel)
            f.set_result(7)
        assert got == {i: 7 for i in range(3) if i not in cancel}, cancel
        assert f.abandoned


def test_proposals_share_one_error_factory_per_timeout() -> None:
    """A proposal's deadline error comes from a factory shared by every proposal with the same
    timeout (no closure per waiting proposal); it still names the timeout."""
    assert _proposal_expired(5.0) is _proposal_expired(5.0)
    error = _proposal_expired(2.5)()
    assert isinstance(error, AmbiguousOutcome) and "2.5 s" in str(error)
