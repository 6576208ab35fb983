"""Randomized tests of the linearizability checker.

* Small random histories (non-unique values, random outputs, ambiguous and capped operations)
  are checked against a brute-force enumeration of every real-time-respecting order.
* Histories generated from a sequential execution with random overlapping intervals must be OK;
  mutated ones (a read of a value never written, or a stale read after a completed write) must
  be ILLEGAL.

Every test prints its base seed; replay with ``TRIORAFT_SEED=<seed> pytest tests/testing``.
"""

from __future__ import annotations

import itertools
import math
import os
import random
from collections.abc import Hashable

import attrs
import pytest

from trioraft.testing.linearizability import (
    UNKNOWN,
    KvCas,
    KvDelete,
    KvGet,
    KvInput,
    KvModel,
    KvOutput,
    KvPut,
    Model,
    Operation,
    Verdict,
    check_operations,
)

Op = Operation[KvInput, KvOutput]
KV = KvModel()


class PlainKvModel(KvModel):
    """The same model without the optional-ambiguous pruning (plain porcupine search)."""

    ambiguous_always_legal = False


def base_seed() -> int:
    env = os.environ.get("TRIORAFT_SEED")
    seed = int(env) if env else random.SystemRandom().randrange(2**32)
    print(f"TRIORAFT_SEED={seed}")
    return seed


# --- brute force cross-check -------------------------------------------------------------------


def brute_force(model: Model[Hashable | None, KvInput, KvOutput], ops: list[Op]) -> bool:
    n = len(ops)
    for perm in itertools.permutations(range(n)):
        pos = {op: k for k, op in enumerate(perm)}
        if any(
            ops[a].return_time < ops[b].call_time and pos[a] > pos[b]
            for a in range(n)
            for b in range(n)
        ):
            continue
        state = model.init()
        for i in perm:
            legal, state = model.step(state, ops[i].input, ops[i].output)
            if not legal:
                break
        else:
            return True
    return False


def random_small_history(rng: random.Random, n: int) -> list[Op]:
    values = [1, 2, 3]
    ops: list[Op] = []
    for client in range(n):
        call = float(rng.randrange(10))
        ret = call + rng.randrange(4)
        kind = rng.randrange(4)
        inp: KvInput
        if kind == 0:
            inp = KvGet("k")
            out = KvOutput(value=rng.choice([None, *values]))
        elif kind == 1:
            inp = KvPut("k", rng.choice(values))
            out = KvOutput()
        elif kind == 2:
            inp = KvDelete("k")
            out = KvOutput()
        else:
            inp = KvCas("k", rng.choice([None, *values]), rng.choice(values))
            out = KvOutput(ok=rng.random() < 0.5)
        roll = rng.random()
        if roll < 0.25 and kind != 0:
            ops.append(Operation(client, inp, call, UNKNOWN))  # open ambiguous
        elif roll < 0.3:
            ops.append(Operation(client, inp, call, UNKNOWN, ret))  # capped ambiguous
        else:
            ops.append(Operation(client, inp, call, out, ret))
    return ops


def test_checker_agrees_with_brute_force() -> None:
    seed = base_seed()
    rng = random.Random(seed)
    counts = {Verdict.OK: 0, Verdict.ILLEGAL: 0}
    for k in range(1500):
        ops = random_small_history(rng, rng.randrange(1, 7))
        expected = brute_force(KV, ops)
        for model in (KV, PlainKvModel()):
            result = check_operations(model, ops)
            assert result.ok == expected, (
                f"seed={seed} history #{k} ({type(model).__name__}): checker says "
                f"{result.verdict}, brute force says {expected}\n{ops}\n{result.describe(model)}"
            )
            if result.ok:
                # The witness must be a valid real-time-respecting linearization.
                part = result.partitions[0] if result.partitions else None
                pops = list(part.operations) if part else []
                order = part.linearization if part else ()
                assert len(pops) == result.operations
                assert sorted(order) == list(range(len(pops)))
                state = model.init()
                for i in order:
                    legal, state = model.step(state, pops[i].input, pops[i].output)
                    assert legal, f"seed={seed} history #{k}: witness is not legal"
                pos = {op: j for j, op in enumerate(order)}
                for a, b in itertools.permutations(range(len(pops)), 2):
                    if pops[a].return_time < pops[b].call_time:
                        assert pos[a] < pos[b], f"seed={seed} history #{k}: real-time order"
        counts[Verdict.OK if expected else Verdict.ILLEGAL] += 1
    # The generator must produce a healthy mix, or the comparison proves little.
    assert counts[Verdict.OK] > 200 and counts[Verdict.ILLEGAL] > 200, counts


# --- generated linearizable histories and their mutations ---------------------------------------


@attrs.frozen
class Generated:
    ops: list[Op]
    writer_of: dict[Hashable, int]  # unique value -> index of the op that wrote it


def generate(
    rng: random.Random,
    n_ops: int,
    n_keys: int,
    overlap: float,
    ambiguous_rate: float,
    phantom_writes: int,
) -> Generated:
    """A sequential execution with linearization points 0, 1, 2, ... and each operation's
    interval stretched randomly around its point: linearizable by construction. Written values
    are unique. Ambiguous operations took effect at their point but report UNKNOWN and never
    return; "phantom" ambiguous writes never took effect at all."""
    store: dict[str, Hashable | None] = {}
    ops: list[Op] = []
    writer_of: dict[Hashable, int] = {}
    counter = itertools.count()
    for t in range(n_ops):
        key = f"k{rng.randrange(n_keys)}"
        current = store.get(key)
        call = t - rng.uniform(0, overlap)
        ret = t + rng.uniform(0, overlap)
        kind = rng.choices(["get", "put", "delete", "cas"], weights=[5, 4, 1, 2])[0]
        inp: KvInput
        if kind == "get":
            inp, out = KvGet(key), KvOutput(value=current)
        elif kind == "put":
            inp, out = KvPut(key, f"v{next(counter)}"), KvOutput()
            store[key] = inp.value
        elif kind == "delete":
            inp, out = KvDelete(key), KvOutput()
            store[key] = None
        else:
            expected = current if rng.random() < 0.6 else f"v{rng.randrange(n_ops)}x"
            inp = KvCas(key, expected, f"v{next(counter)}")
            swapped = current == expected
            out = KvOutput(ok=swapped)
            if swapped:
                store[key] = inp.new
        if kind != "get" and rng.random() < ambiguous_rate:
            op: Op = Operation(len(ops), inp, call, UNKNOWN)
        else:
            op = Operation(len(ops), inp, call, out, ret)
        if isinstance(inp, KvPut):
            writer_of[inp.value] = len(ops)
        elif isinstance(inp, KvCas):
            writer_of[inp.new] = len(ops)
        ops.append(op)
    for _ in range(phantom_writes):
        key = f"k{rng.randrange(n_keys)}"
        ops.append(
            Operation(
                len(ops), KvPut(key, f"phantom{next(counter)}"), rng.uniform(0, n_ops), UNKNOWN
            )
        )
    return Generated(ops, writer_of)


def wrote(op: Op) -> bool:
    """A completed operation that definitely changed the value."""
    if op.output is UNKNOWN:
        return False
    if isinstance(op.input, KvCas):
        return isinstance(op.output, KvOutput) and op.output.ok
    return isinstance(op.input, KvPut | KvDelete)


def stale_read_mutation(rng: random.Random, gen: Generated) -> tuple[int, Hashable] | None:
    """Find a completed get G, a completed write Q of value w and a completed write P on the
    same key with Q before P before G in real time; returning w from G is then impossible."""
    ops = gen.ops
    gets = [i for i, op in enumerate(ops) if isinstance(op.input, KvGet)]
    rng.shuffle(gets)
    for g in gets:
        key = ops[g].input.key
        writes = [i for i, op in enumerate(ops) if op.input.key == key and wrote(op)]
        before_g = [p for p in writes if ops[p].return_time < ops[g].call_time]
        rng.shuffle(before_g)
        for p in before_g:
            for q in before_g:
                qin = ops[q].input
                if ops[q].return_time < ops[p].call_time and isinstance(qin, KvPut | KvCas):
                    w = qin.value if isinstance(qin, KvPut) else qin.new
                    return g, w
    return None


def with_output(ops: list[Op], i: int, value: Hashable | None) -> list[Op]:
    mutated = list(ops)
    mutated[i] = attrs.evolve(ops[i], output=KvOutput(value=value))
    return mutated


PROFILES = {
    # name: (n_ops, n_keys, overlap, ambiguous_rate, phantom_writes)
    "sequentialish": (150, 3, 0.6, 0.0, 0),
    "overlapping": (150, 2, 3.0, 0.0, 0),
    "ambiguous": (150, 3, 2.0, 0.08, 3),
    "one-key-wide": (80, 1, 4.0, 0.05, 2),
}


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_generated_histories_are_ok_and_mutations_illegal(profile: str) -> None:
    seed = base_seed()
    n_ops, n_keys, overlap, amb, phantoms = PROFILES[profile]
    stale_checked = 0
    for k in range(25):
        case_seed = seed + k
        rng = random.Random(case_seed)
        gen = generate(rng, n_ops, n_keys, overlap, amb, phantoms)
        where = f"profile={profile} TRIORAFT_SEED={seed} case seed={case_seed}"

        result = check_operations(KV, gen.ops, timeout=20)
        assert result.ok, f"{where}\n{result.describe(KV)}"

        gets = [
            i
            for i, op in enumerate(gen.ops)
            if isinstance(op.input, KvGet) and op.output is not UNKNOWN
        ]
        if gets:
            bogus = with_output(gen.ops, rng.choice(gets), "never-written")
            result = check_operations(KV, bogus, timeout=20)
            assert result.verdict is Verdict.ILLEGAL, f"{where} (bogus read)\n{result.describe(KV)}"

        found = stale_read_mutation(rng, gen)
        if found is not None:
            g, w = found
            stale = with_output(gen.ops, g, w)
            result = check_operations(KV, stale, timeout=20)
            assert result.verdict is Verdict.ILLEGAL, (
                f"{where} (stale read of {w!r} at op {g})\n{result.describe(KV)}"
            )
            stale_checked += 1
    assert stale_checked >= 5, f"only {stale_checked} stale-read mutations found ({profile})"


def test_many_concurrent_ambiguous_writes_illegal_quickly() -> None:
    # 40 ambiguous writes, all open until the end, and a read of a value nobody wrote: the
    # optional-operation pruning proves this illegal without enumerating subsets.
    ops: list[Op] = [Operation(i, KvPut("k", f"v{i}"), float(i), UNKNOWN) for i in range(40)]
    ops.append(Operation(99, KvGet("k"), 50.0, KvOutput(value="nobody"), 51.0))
    result = check_operations(KV, ops, timeout=10)
    assert result.verdict is Verdict.ILLEGAL
    assert result.partitions[0].steps < 50_000
    # Reads that pin down a few of them: OK quickly.
    ops = ops[:-1] + [
        Operation(99, KvGet("k"), 50.0 + i, KvOutput(value=f"v{i}"), 50.5 + i)
        for i in range(0, 40, 4)
    ]
    result = check_operations(KV, ops, timeout=10)
    assert result.ok, result.describe(KV)
    assert math.isinf(max(op.return_time for op in ops))
