"""Hand-written histories for the linearizability checker: the classic examples from the
literature (atomic registers, Herlihy & Wing's queues), ambiguous writes, cas, partitioning,
deadlines and the History recorder."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Hashable

import attrs
import pytest

from trioraft.testing.linearizability import (
    UNKNOWN,
    History,
    KvCas,
    KvDelete,
    KvGet,
    KvInput,
    KvModel,
    KvOutput,
    KvPut,
    Model,
    Operation,
    UnknownOutput,
    Verdict,
    check_operations,
    patch_ambiguous,
)

KV = KvModel()
Op = Operation[KvInput, KvOutput]


def get(client: int, call: float, ret: float, value: Hashable | None, key: str = "k") -> Op:
    return Operation(client, KvGet(key), call, KvOutput(value=value), ret)


def put(client: int, call: float, ret: float, value: Hashable, key: str = "k") -> Op:
    return Operation(client, KvPut(key, value), call, KvOutput(), ret)


def put_unknown(client: int, call: float, value: Hashable, key: str = "k") -> Op:
    return Operation(client, KvPut(key, value), call, UNKNOWN)


def delete(client: int, call: float, ret: float, key: str = "k") -> Op:
    return Operation(client, KvDelete(key), call, KvOutput(), ret)


def cas(client: int, call: float, ret: float, exp: Hashable | None, new: Hashable, ok: bool) -> Op:
    return Operation(client, KvCas("k", exp, new), call, KvOutput(ok=ok), ret)


def verdict(ops: list[Op]) -> Verdict:
    return check_operations(KV, ops).verdict


# --- atomic registers (Lamport's regular vs atomic register examples) -------------------------


def test_empty_history_is_ok() -> None:
    result = check_operations(KV, [])
    assert result.ok
    assert result.operations == 0


def test_read_concurrent_with_write_may_see_old_or_new() -> None:
    assert verdict([put(0, 0, 10, 1), get(1, 2, 4, 1), get(2, 3, 5, None)]) is Verdict.OK
    # The reverse order of observations is fine too while everything overlaps.
    assert verdict([put(0, 0, 10, 1), get(1, 2, 4, None), get(2, 5, 7, 1)]) is Verdict.OK


def test_new_old_inversion_is_illegal() -> None:
    # Once a read has returned the new value, a later read must not return the old one: a
    # regular register allows it, an atomic (linearizable) register does not.
    assert verdict([put(0, 0, 10, 1), get(1, 2, 4, 1), get(2, 5, 7, None)]) is Verdict.ILLEGAL


def test_stale_read_after_completed_write_is_illegal() -> None:
    assert verdict([put(0, 0, 1, "a"), put(0, 2, 3, "b"), get(1, 4, 5, "a")]) is Verdict.ILLEGAL
    assert verdict([put(0, 0, 1, "a"), put(0, 2, 3, "b"), get(1, 2.5, 5, "a")]) is Verdict.OK


def test_read_of_never_written_value_is_illegal() -> None:
    assert verdict([put(0, 0, 1, "a"), get(1, 0, 5, "zzz")]) is Verdict.ILLEGAL
    assert verdict([get(1, 0, 5, "zzz")]) is Verdict.ILLEGAL


def test_touching_intervals_count_as_concurrent() -> None:
    # The read is called at exactly the write's return time: they may be ordered either way.
    assert verdict([put(0, 0, 1, "a"), get(1, 1, 2, None)]) is Verdict.OK
    assert verdict([put(0, 0, 1, "a"), get(1, 1.0000001, 2, None)]) is Verdict.ILLEGAL


def test_delete_and_cas_semantics() -> None:
    assert (
        verdict(
            [
                put(0, 0, 1, "a"),
                cas(0, 2, 3, "a", "b", True),
                cas(1, 4, 5, "a", "c", False),
                get(1, 6, 7, "b"),
                delete(0, 8, 9),
                get(1, 10, 11, None),
                cas(0, 12, 13, None, "d", True),
                get(0, 14, 15, "d"),
            ]
        )
        is Verdict.OK
    )
    # A cas claims success although the value did not match.
    assert verdict([put(0, 0, 1, "a"), cas(0, 2, 3, "x", "b", True)]) is Verdict.ILLEGAL
    # A cas claims failure although it matched.
    assert verdict([put(0, 0, 1, "a"), cas(0, 2, 3, "a", "b", False)]) is Verdict.ILLEGAL
    # Two concurrent cas from the same expected value: only one can win.
    both = [put(0, 0, 1, "a"), cas(1, 2, 5, "a", "b", True), cas(2, 2, 5, "a", "c", True)]
    assert verdict(both) is Verdict.ILLEGAL
    one = [put(0, 0, 1, "a"), cas(1, 2, 5, "a", "b", True), cas(2, 2, 5, "a", "c", False)]
    assert verdict([*one, get(0, 6, 7, "b")]) is Verdict.OK
    assert verdict([*one, get(0, 6, 7, "c")]) is Verdict.ILLEGAL


# --- Herlihy & Wing's FIFO queue histories (a non-KV model exercises the generic checker) ---


@attrs.frozen
class Enq:
    value: str


@attrs.frozen
class Deq:
    pass


class QueueModel(Model[tuple[str, ...], Enq | Deq, str | None]):
    """A FIFO queue; a dequeue on an empty queue returns None."""

    def init(self) -> tuple[str, ...]:
        return ()

    def step(
        self, state: tuple[str, ...], inp: Enq | Deq, out: str | UnknownOutput | None
    ) -> tuple[bool, tuple[str, ...]]:
        if isinstance(inp, Enq):
            return True, (*state, inp.value)
        head = state[0] if state else None
        return (out is UNKNOWN or out == head), state[1:]


def q(
    client: int, inp: Enq | Deq, call: float, ret: float, out: str | None = None
) -> Operation[Enq | Deq, str | None]:
    return Operation(client, inp, call, out, ret)


def test_queue_concurrent_enqueues_may_take_either_order() -> None:
    model = QueueModel()
    history = [
        q(0, Enq("x"), 0, 10),
        q(1, Enq("y"), 1, 3),
        q(1, Deq(), 4, 6, "x"),  # x's enqueue overlaps y's, so x may go first
        q(0, Deq(), 11, 12, "y"),
    ]
    result = check_operations(model, history)
    assert result.ok
    # The witness puts enq(x) first.
    part = result.partitions[0]
    assert [part.operations[i].input for i in part.linearization][:2] == [Enq("x"), Enq("y")]


def test_queue_order_violation_is_illegal() -> None:
    model = QueueModel()
    history = [q(0, Enq("x"), 0, 2), q(1, Enq("y"), 3, 5), q(0, Deq(), 6, 8, "y")]
    assert check_operations(model, history).verdict is Verdict.ILLEGAL


def test_queue_dequeue_concurrent_with_its_enqueue() -> None:
    model = QueueModel()
    assert check_operations(model, [q(0, Enq("x"), 0, 4), q(1, Deq(), 1, 3, "x")]).ok
    assert not check_operations(model, [q(0, Enq("x"), 0, 2), q(1, Deq(), 3, 4, None)]).ok


# --- ambiguous operations ------------------------------------------------------------------


def test_ambiguous_write_may_take_effect_later() -> None:
    assert verdict([put_unknown(0, 0, 1), get(1, 5, 6, 1)]) is Verdict.OK
    assert verdict([put_unknown(0, 0, 1), get(1, 1, 2, None), get(1, 5, 6, 1)]) is Verdict.OK


def test_ambiguous_write_may_never_take_effect() -> None:
    assert verdict([put_unknown(0, 0, 1), get(1, 5, 6, None), get(1, 7, 8, None)]) is Verdict.OK


def test_ambiguous_write_once_seen_stays_seen() -> None:
    assert verdict([put_unknown(0, 0, 1), get(1, 5, 6, 1), get(1, 7, 8, None)]) is Verdict.ILLEGAL


def test_ambiguous_write_cannot_be_seen_before_its_call() -> None:
    assert verdict([get(1, 0, 2, 1), put_unknown(0, 3, 1)]) is Verdict.ILLEGAL


def test_ambiguous_write_with_capped_return_time() -> None:
    # History patching may learn that an ambiguous write was persisted before some time.
    capped: Op = Operation(0, KvPut("k", 1), 0, UNKNOWN, 5.0)
    assert verdict([capped, get(1, 6, 7, None)]) is Verdict.ILLEGAL
    assert verdict([capped, get(1, 4, 7, None)]) is Verdict.OK


def test_ambiguous_cas_may_or_may_not_apply() -> None:
    amb: Op = Operation(0, KvCas("k", "a", "b"), 2, UNKNOWN)
    assert verdict([put(0, 0, 1, "a"), amb, get(1, 5, 6, "b")]) is Verdict.OK
    assert verdict([put(0, 0, 1, "a"), amb, get(1, 5, 6, "a")]) is Verdict.OK
    assert verdict([put(0, 0, 1, "a"), amb, get(1, 5, 6, "a"), get(1, 7, 8, "b")]) is Verdict.OK
    assert (
        verdict([put(0, 0, 1, "a"), amb, get(1, 5, 6, "b"), get(1, 7, 8, "a")]) is Verdict.ILLEGAL
    )


def test_ambiguous_reads_are_dropped() -> None:
    amb_get: Op = Operation(1, KvGet("k"), 0, UNKNOWN)
    result = check_operations(KV, [put(0, 0, 1, "a"), amb_get])
    assert result.ok
    assert (result.operations, result.dropped_reads, result.ambiguous) == (1, 1, 0)


def test_many_ambiguous_writes_stay_tractable() -> None:
    # 30 ambiguous writes, open until the end, followed by reads that pin down some of them.
    ops: list[Op] = [put_unknown(i, float(i), f"v{i}") for i in range(30)]
    ops += [get(100, 40 + i, 40.5 + i, f"v{i}") for i in range(0, 30, 3)]
    t0 = time.monotonic()
    result = check_operations(KV, ops, timeout=20)
    assert result.ok, result.describe(KV)
    assert time.monotonic() - t0 < 5


# --- partitioning, diagnostics, deadlines ----------------------------------------------------


def test_partitions_are_checked_independently() -> None:
    ops = [
        put(0, 0, 1, "a", key="x"),
        get(1, 2, 3, "a", key="x"),
        put(0, 0, 1, "b", key="y"),
        get(1, 2, 3, "a", key="y"),  # "a" was never written to y
    ]
    result = check_operations(KV, ops)
    assert result.verdict is Verdict.ILLEGAL
    verdicts = {p.key: p.verdict for p in result.partitions}
    assert verdicts == {"x": Verdict.OK, "y": Verdict.ILLEGAL}
    assert result.partitions[0].key == "y"  # failing partitions are listed first


def test_first_illegal_partition_stops_the_rest_unless_asked() -> None:
    ops = [get(0, 0, 1, "bad", key="a"), put(0, 0, 1, "v", key="b")]
    stopped = check_operations(KV, ops)
    assert {p.key: p.verdict for p in stopped.partitions} == {
        "a": Verdict.ILLEGAL,
        "b": Verdict.UNKNOWN,
    }
    full = check_operations(KV, ops, stop_on_illegal=False)
    assert {p.key: p.verdict for p in full.partitions} == {"a": Verdict.ILLEGAL, "b": Verdict.OK}


def test_witness_is_a_valid_linearization() -> None:
    ops = [
        put(0, 0, 10, 1),
        get(1, 2, 4, None),
        get(2, 5, 7, 1),
        put(1, 8, 12, 2),
        get(2, 13, 14, 2),
    ]
    result = check_operations(KV, ops)
    assert result.ok
    part = result.partitions[0]
    assert sorted(part.linearization) == list(range(len(ops)))
    state: Hashable | None = None
    for i in part.linearization:
        legal, state = KV.step(state, part.operations[i].input, part.operations[i].output)
        assert legal
    # Real-time order is respected.
    pos = {op: k for k, op in enumerate(part.linearization)}
    for a, b in itertools.permutations(range(len(ops)), 2):
        if part.operations[a].return_time < part.operations[b].call_time:
            assert pos[a] < pos[b]


def test_illegal_result_explains_itself() -> None:
    ops = [put(0, 0, 1, "a"), put(0, 2, 3, "b"), get(1, 4, 5, "a"), get(1, 6, 7, "b")]
    result = check_operations(KV, ops)
    assert result.verdict is Verdict.ILLEGAL
    part = result.partitions[0]
    assert [part.operations[i] for i in part.linearization] == ops[:2]
    assert part.blocking_operation() == 2
    text = result.describe(KV)
    assert "illegal" in text
    assert "get('k') -> 'a'" in text
    assert "state after it: 'b'" in text


def _hard_history(width: int) -> list[Op]:
    # `width` mutually concurrent writes and a concurrent read of a value nobody wrote: the
    # search must exhaust about width * 2**width configurations to prove it illegal.
    ops: list[Op] = [put(i, 0, 100, f"v{i}") for i in range(width)]
    ops.append(get(width, 0, 100, "never"))
    return ops


def test_deadline_gives_unknown_never_ok() -> None:
    ticks = itertools.count()

    def fake_clock() -> float:
        return float(next(ticks))

    result = check_operations(KV, _hard_history(20), timeout=5, now=fake_clock)
    assert result.verdict is Verdict.UNKNOWN
    assert not result.ok
    part = result.partitions[0]
    assert part.verdict is Verdict.UNKNOWN
    assert 0 < len(part.linearization) <= 20  # the longest partial linearization so far
    assert "unknown" in result.describe(KV)


def test_deadline_with_the_real_clock() -> None:
    t0 = time.monotonic()
    result = check_operations(KV, _hard_history(22), timeout=0.2)
    assert result.verdict is Verdict.UNKNOWN
    assert time.monotonic() - t0 < 3


def test_small_hard_history_is_found_illegal() -> None:
    result = check_operations(KV, _hard_history(8), timeout=30)
    assert result.verdict is Verdict.ILLEGAL
    assert result.partitions[0].steps > 2**8


def test_operation_validation() -> None:
    with pytest.raises(ValueError, match="returns before"):
        Operation(0, KvGet("k"), 2.0, KvOutput(), 1.0)
    with pytest.raises(ValueError, match="NaN"):
        Operation(0, KvGet("k"), math.nan, KvOutput(), 1.0)
    assert Operation(0, KvGet("k"), 1.0, UNKNOWN).return_time == math.inf
    assert Operation(0, KvGet("k"), 1.0, UNKNOWN).ambiguous
    assert UnknownOutput() is UNKNOWN
    assert repr(UNKNOWN) == "UNKNOWN"


def test_describe_operation_forms() -> None:
    assert KV.describe_operation(KvGet("k"), KvOutput(value=3)) == "get('k') -> 3"
    assert KV.describe_operation(KvPut("k", 1), UNKNOWN) == "put('k', 1) -> ?"
    assert KV.describe_operation(KvDelete("k"), KvOutput()) == "delete('k') -> ok"
    assert KV.describe_operation(KvCas("k", 1, 2), KvOutput(ok=False)) == "cas('k', 1, 2) -> failed"


# --- History recorder -------------------------------------------------------------------------


def test_history_recorder() -> None:
    now = [0.0]
    history = History[KvInput, KvOutput](lambda: now[0])
    c1, c2 = history.new_client(), history.new_client()
    assert c1 != c2
    t_put = history.invoke(c1, KvPut("k", "a"))
    now[0] = 1.0
    t_get = history.invoke(c2, KvGet("k"))
    now[0] = 2.0
    history.ok(t_put, KvOutput())
    now[0] = 3.0
    history.ok(t_get, KvOutput(value="a"))
    t_fail = history.invoke(c1, KvPut("k", "never"))
    history.fail(t_fail)
    t_amb = history.invoke(c1, KvPut("k", "b"))
    now[0] = 4.0
    history.ambiguous(t_amb)
    t_pending = history.invoke(c2, KvGet("k"))
    assert history.pending == 1
    assert history.failed == 1
    with pytest.raises(ValueError):
        history.ok(t_fail, KvOutput())

    ops = history.operations()
    # Events at one clock reading are ordered as recorded: the failed put's call came after
    # the get's return at 3.0, and the ambiguous put's after that.
    after_3 = math.nextafter(math.nextafter(3.0, math.inf), math.inf)
    assert [(op.input, op.call_time, op.return_time) for op in ops] == [
        (KvPut("k", "a"), 0.0, 2.0),
        (KvGet("k"), 1.0, 3.0),
        (KvPut("k", "b"), after_3, math.inf),
        (KvGet("k"), 4.0, math.inf),
    ]
    assert ops[2].output is UNKNOWN and ops[3].output is UNKNOWN
    result = check_operations(KV, ops)
    assert result.ok
    assert (result.operations, result.ambiguous, result.dropped_reads) == (3, 1, 1)
    history.ok(t_pending, KvOutput(value="b"))
    assert check_operations(KV, history.operations()).ok


# --- history patching ---------------------------------------------------------------------------


def test_patch_ambiguous_drops_unapplied_and_caps_applied() -> None:
    applied: dict[Hashable, int] = {
        "a": 1,
        "b": 2,
        "c": 3,
    }  # log order of the unique writes that took effect
    ops: list[Op] = [
        put_unknown(0, 0, "a"),  # applied before "c", which returned at 5
        put_unknown(1, 0, "lost"),  # never applied: removed
        put(2, 1, 5, "c"),
        put_unknown(3, 6, "b"),  # applied before "c" but called after it returned: left alone
        get(4, 7, 8, "c"),
    ]

    def position(op: Op) -> int | None:
        return applied.get(op.input.value) if isinstance(op.input, KvPut) else None

    patched = patch_ambiguous(ops, position)
    assert [op.input for op in patched] == [ops[0].input, ops[2].input, ops[3].input, ops[4].input]
    assert patched[0].return_time == 5.0
    assert patched[2].return_time == 6.0  # capped, but never before its own call
    assert patched[1] is ops[2] and patched[3] is ops[4]
    # With the cap, "a" can no longer be seen after "c" returned.
    late_read = get(5, 9, 10, "a")
    assert check_operations(KV, [*ops, late_read]).verdict is Verdict.OK
    assert check_operations(KV, patch_ambiguous([*ops, late_read], position)).verdict is (
        Verdict.ILLEGAL
    )


def test_history_orders_events_recorded_at_the_same_clock_reading() -> None:
    # Under MockClock time stands still while tasks run: a read invoked right after a write
    # completed, at the same reading, follows it. It used to count as concurrent, so a stale
    # read there passed (linearizability checker audit, eighth session).
    history = History[KvInput, KvOutput](lambda: 7.0)
    c = history.new_client()
    w = history.invoke(c, KvPut("k", "new"))
    history.ok(w, KvOutput())
    r = history.invoke(c, KvGet("k"))
    history.ok(r, KvOutput(value=None))
    assert check_operations(KV, history.operations()).verdict is Verdict.ILLEGAL


def test_history_keeps_tags() -> None:
    history = History[KvInput, KvOutput](lambda: 0.0)
    a = history.invoke(1, KvPut("k", "a"), tag="req-1")
    b = history.invoke(1, KvPut("k", "b"), tag="req-2")
    history.invoke(1, KvGet("k"), tag="req-3")
    history.ok(a, KvOutput())
    history.ambiguous(b)
    assert [op.tag for op in history.operations()] == ["req-1", "req-2", "req-3"]
