"""A linearizability checker (Wing & Gong search with Lowe's memoization) and a key-value model.

Use it to check histories recorded by concurrent clients of a replicated state machine::

    history = History[KvInput, KvOutput](trio.current_time)
    token = history.invoke(client, KvPut("k", "v1"))
    ...                                  # run the request
    history.ok(token, KvOutput())        # or history.fail(token) / history.ambiguous(token)
    result = check_operations(KvModel(), history.operations(), timeout=30.0)
    assert result.ok, result.describe(KvModel())

Theory of operation
-------------------
A history is linearizable when every operation can be given a single instant between its call
and its return such that executing the operations one at a time, in the order of those instants,
on the sequential model yields exactly the recorded outputs. An operation whose outcome is not
known (a timeout, a dropped connection) has the output :data:`UNKNOWN` and a return time of
``+inf``: the search may place it anywhere after its call, including after every other
operation, which is the same as "it never took effect".

Linearizability is local (Herlihy & Wing), so a model may split the history into independent
partitions (one per key for the key-value model) that are checked one by one.

For one partition the search follows Wing & Gong with Lowe's cache, as porcupine does:

* every operation contributes a call event and a return event; the events are sorted by time
  (calls before returns on ties, so intervals that touch are concurrent) and threaded into a
  doubly linked list behind a sentinel head;
* walking the list from the head, a call event is a candidate to linearize next. If the model
  accepts it and the configuration ``(set of linearized operations, model state)`` has not been
  explored before, the operation is linearized: its call and return events are unlinked, the
  previous state is pushed on a stack, and the walk restarts from the head;
* reaching a return event means that operation had to be linearized before anything later in
  the list could be, and every candidate ahead of it has been tried, so the search backtracks:
  it pops the last linearized operation, relinks its events (dancing links: the unlinked nodes
  keep their own pointers, and relinking in LIFO order restores the list exactly) and continues
  with the candidate after it;
* an empty list means success, and the stack is a witness linearization; an empty stack at a
  return event means the history is not linearizable.

The set of linearized operations is a Python ``int`` used as a bitset, so ``(bits, state)`` is a
cheap hashable cache key; model states therefore must be immutable and hashable. The search is
iterative (no recursion limit) and checks a deadline periodically; past it the verdict is
:attr:`Verdict.UNKNOWN`, which is never a pass. The longest partial linearization reached is
kept for diagnostics.
"""

from __future__ import annotations

import bisect
import enum
import logging
import math
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, Final, Generic, TypeVar

import attrs

__all__ = [
    "UNKNOWN",
    "CheckResult",
    "History",
    "KvCas",
    "KvDelete",
    "KvGet",
    "KvInput",
    "KvModel",
    "KvOutput",
    "KvPut",
    "Model",
    "Operation",
    "PartitionResult",
    "UnknownOutput",
    "Verdict",
    "check_operations",
    "patch_ambiguous",
]

logger = logging.getLogger(__name__)

S = TypeVar("S")
I = TypeVar("I")  # noqa: E741
O = TypeVar("O")  # noqa: E741
I_co = TypeVar("I_co", covariant=True)
O_co = TypeVar("O_co", covariant=True)

# How many search steps between two reads of the clock: reading it every step would dominate
# the cost of small histories.
_DEADLINE_CHECK_INTERVAL: Final = 512


class UnknownOutput:
    """The type of :data:`UNKNOWN`, the output of an operation whose outcome is not known."""

    _instance: UnknownOutput | None = None

    def __new__(cls) -> UnknownOutput:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Final = UnknownOutput()
"""Output of an ambiguous operation (timeout, reset, crash): it may or may not have taken effect."""


class Verdict(enum.Enum):
    """Outcome of a check. Only :attr:`OK` is a pass."""

    OK = "ok"
    ILLEGAL = "illegal"
    UNKNOWN = "unknown"  # the deadline passed before the search finished


@attrs.frozen
class Operation(Generic[I_co, O_co]):
    """One client operation.

    Attributes:
        client: the client (process) that issued it; informational only.
        input: the request, as the model understands it.
        call_time: when the request was sent (before sending).
        output: the response, or :data:`UNKNOWN` when the outcome is not known.
        return_time: when the response arrived; ``math.inf`` for an ambiguous operation that may
            have taken effect at any time after ``call_time``.
        tag: any identifier the recorder wants to keep (e.g. a request id for
            :func:`patch_ambiguous`); ignored by the checker.
    """

    client: int
    input: I_co
    call_time: float
    output: O_co | UnknownOutput
    return_time: float = math.inf
    tag: Hashable = None

    def __attrs_post_init__(self) -> None:
        if math.isnan(self.call_time) or math.isnan(self.return_time):
            raise ValueError(f"operation times must not be NaN: {self!r}")
        if self.call_time > self.return_time:
            raise ValueError(f"operation returns before it is called: {self!r}")

    @property
    def ambiguous(self) -> bool:
        """True when the output is :data:`UNKNOWN`."""
        return self.output is UNKNOWN


class Model(Generic[S, I, O]):
    """A sequential specification. Subclass and implement :meth:`init` and :meth:`step`.

    States must be immutable and hashable (they are cache keys; a mutable state silently
    breaks the search).
    """

    def init(self) -> S:
        """Return the initial state of one partition."""
        raise NotImplementedError

    def step(self, state: S, inp: I, out: O | UnknownOutput) -> tuple[bool, S]:
        """Apply ``inp`` to ``state``.

        Returns:
            ``(legal, new_state)``: ``legal`` is False when ``out`` cannot be the response to
            ``inp`` in ``state``. ``out`` may be :data:`UNKNOWN`, which must be legal whenever
            some response would be.
        """
        raise NotImplementedError

    def partition_key(self, inp: I) -> Hashable:
        """Key of the independent partition ``inp`` belongs to (one partition by default).

        Only valid when every operation touches exactly one partition's state.
        """
        return None

    ambiguous_always_legal: bool = False
    """Set to True when ``step(state, inp, UNKNOWN)`` is legal for every state and input. Then
    an ambiguous operation that never returns is *optional* (it can always be placed last, as
    if it never took effect), which enables a sound pruning of the search."""

    def is_read_only(self, inp: I) -> bool:
        """True when ``inp`` never changes the state: an ambiguous read-only operation is
        dropped before the search (it constrains nothing and would widen every window)."""
        return False

    def is_blind_write(self, inp: I) -> bool:
        """True when the state after ``inp`` does not depend on the state before it (e.g. a
        put). Used only with :attr:`ambiguous_always_legal`: an optional blind write never
        needs to directly follow another optional operation."""
        return False

    def describe_operation(self, inp: I, out: O | UnknownOutput) -> str:
        """Human-readable form of one operation, for reports."""
        return f"{inp!r} -> {out!r}"

    def describe_state(self, state: S) -> str:
        """Human-readable form of a state, for reports."""
        return repr(state)


# ---------------------------------------------------------------------------------------------
# Key-value register model


@attrs.frozen
class KvGet:
    """Read ``key``; the output's ``value`` is the value read (None when absent)."""

    key: Hashable


@attrs.frozen
class KvPut:
    """Set ``key`` to ``value`` (unique values make histories much cheaper to check)."""

    key: Hashable
    value: Hashable


@attrs.frozen
class KvDelete:
    """Remove ``key``."""

    key: Hashable


@attrs.frozen
class KvCas:
    """Set ``key`` to ``new`` if its value equals ``expected`` (None: if absent).

    The output's ``ok`` says whether the swap happened.
    """

    key: Hashable
    expected: Hashable | None
    new: Hashable


KvInput = KvGet | KvPut | KvDelete | KvCas


@attrs.frozen
class KvOutput:
    """Response of a key-value operation.

    Attributes:
        value: for a get, the value read (None when the key is absent); ignored otherwise.
        ok: for a cas, whether the swap happened; ignored otherwise.
    """

    value: Hashable | None = None
    ok: bool = True


class KvModel(Model[Hashable | None, KvInput, KvOutput]):
    """A map of independent registers, partitioned by key; the state of a partition is the
    key's value, None when absent."""

    def init(self) -> Hashable | None:
        """Every key starts absent."""
        return None

    def step(
        self, state: Hashable | None, inp: KvInput, out: KvOutput | UnknownOutput
    ) -> tuple[bool, Hashable | None]:
        """Sequential semantics of get/put/delete/cas on one key."""
        if isinstance(inp, KvGet):
            return (isinstance(out, UnknownOutput) or out.value == state), state
        if isinstance(inp, KvPut):
            return True, inp.value
        if isinstance(inp, KvDelete):
            return True, None
        swapped = state == inp.expected
        new_state = inp.new if swapped else state
        if isinstance(out, UnknownOutput):
            return True, new_state
        return out.ok == swapped, new_state

    def partition_key(self, inp: KvInput) -> Hashable:
        """Operations on different keys are independent."""
        return inp.key

    ambiguous_always_legal = True

    def is_read_only(self, inp: KvInput) -> bool:
        """Gets change nothing."""
        return isinstance(inp, KvGet)

    def is_blind_write(self, inp: KvInput) -> bool:
        """Puts and deletes overwrite whatever was there."""
        return isinstance(inp, KvPut | KvDelete)

    def describe_operation(self, inp: KvInput, out: KvOutput | UnknownOutput) -> str:
        """E.g. ``get(k) -> 'v1'``, ``cas(k, 'v1', 'v2') -> ok``, ``put(k, 'v3') -> ?``."""
        if isinstance(inp, KvGet):
            call = f"get({inp.key!r})"
        elif isinstance(inp, KvPut):
            call = f"put({inp.key!r}, {inp.value!r})"
        elif isinstance(inp, KvDelete):
            call = f"delete({inp.key!r})"
        else:
            call = f"cas({inp.key!r}, {inp.expected!r}, {inp.new!r})"
        if isinstance(out, UnknownOutput):
            return f"{call} -> ?"
        if isinstance(inp, KvGet):
            return f"{call} -> {out.value!r}"
        if isinstance(inp, KvCas):
            return f"{call} -> {'ok' if out.ok else 'failed'}"
        return f"{call} -> ok"


# ---------------------------------------------------------------------------------------------
# Results


@attrs.frozen
class PartitionResult(Generic[S, I, O]):
    """Result of checking one partition.

    Attributes:
        key: the partition key.
        verdict: OK, ILLEGAL, or UNKNOWN (deadline passed, or not checked because another
            partition was found ILLEGAL first).
        operations: the operations of this partition, in the order the indexes below refer to.
        linearization: on OK, a witness order (indexes into ``operations``); otherwise the
            longest partial linearization the search reached.
        steps: search steps taken (a measure of the effort).
        elapsed: seconds spent (by the checker's clock).
    """

    key: Hashable
    verdict: Verdict
    operations: tuple[Operation[I, O], ...]
    linearization: tuple[int, ...]
    steps: int
    elapsed: float

    def partial_state(self, model: Model[S, I, O]) -> S:
        """State after the (partial) linearization."""
        state = model.init()
        for i in self.linearization:
            op = self.operations[i]
            _, state = model.step(state, op.input, op.output)
        return state

    def blocking_operation(self) -> int | None:
        """Index of the operation that could not be linearized next: among those not in the
        longest partial linearization, the one that returns first. None when all were placed."""
        placed = set(self.linearization)
        rest = [i for i in range(len(self.operations)) if i not in placed]
        if not rest:
            return None
        return min(rest, key=lambda i: (self.operations[i].return_time, i))

    def describe(self, model: Model[S, I, O], *, max_lines: int = 40) -> str:
        """Multi-line diagnostic: the (partial) linearization and, when the partition is not
        OK, the operation that could not be placed and those concurrent with it."""

        def fmt(i: int) -> str:
            op = self.operations[i]
            return (
                f"  [{i}] client {op.client} "
                f"[{op.call_time:.6f}, {op.return_time:.6f}] "
                f"{model.describe_operation(op.input, op.output)}"
            )

        lines = [
            f"partition {self.key!r}: {self.verdict.value} "
            f"({len(self.operations)} ops, {self.steps} steps, {self.elapsed:.3f}s)"
        ]
        order = self.linearization
        title = "linearization" if self.verdict is Verdict.OK else "longest partial linearization"
        lines.append(f" {title} ({len(order)} of {len(self.operations)} ops):")
        shown = order if len(order) <= max_lines else order[-max_lines:]
        if len(shown) < len(order):
            lines.append(f"  ... {len(order) - len(shown)} earlier ops omitted")
        lines.extend(fmt(i) for i in shown)
        if self.verdict is not Verdict.OK:
            lines.append(f" state after it: {model.describe_state(self.partial_state(model))}")
            blocking = self.blocking_operation()
            if blocking is not None:
                lines.append(" cannot linearize next (returns first among the rest):")
                lines.append(fmt(blocking))
                bop = self.operations[blocking]
                placed = set(order)
                concurrent = [
                    i
                    for i in range(len(self.operations))
                    if i not in placed
                    and i != blocking
                    and self.operations[i].call_time <= bop.return_time
                ]
                if concurrent:
                    lines.append(" other candidates called before it returned:")
                    lines.extend(fmt(i) for i in concurrent[:max_lines])
        return "\n".join(lines)


@attrs.frozen
class CheckResult(Generic[S, I, O]):
    """Result of :func:`check_operations`.

    Attributes:
        verdict: ILLEGAL if any partition is; else UNKNOWN if any timed out; else OK.
        partitions: per-partition results (ILLEGAL and UNKNOWN ones first).
        operations: number of operations checked (after dropping ambiguous read-only ones).
        ambiguous: how many of those have an :data:`UNKNOWN` output.
        dropped_reads: ambiguous read-only operations dropped before the search.
        elapsed: seconds spent.
    """

    verdict: Verdict
    partitions: tuple[PartitionResult[S, I, O], ...]
    operations: int
    ambiguous: int
    dropped_reads: int
    elapsed: float

    @property
    def ok(self) -> bool:
        """True only for :attr:`Verdict.OK` (a timed-out check is not a pass)."""
        return self.verdict is Verdict.OK

    def describe(self, model: Model[S, I, O], *, max_partitions: int = 3) -> str:
        """Summary plus the diagnostics of the first failing partitions."""
        counts = dict.fromkeys(Verdict, 0)
        for p in self.partitions:
            counts[p.verdict] += 1
        lines = [
            f"linearizability: {self.verdict.value}: {self.operations} ops "
            f"({self.ambiguous} ambiguous, {self.dropped_reads} ambiguous reads dropped) in "
            f"{len(self.partitions)} partitions (ok={counts[Verdict.OK]} "
            f"illegal={counts[Verdict.ILLEGAL]} unknown={counts[Verdict.UNKNOWN]}), "
            f"{self.elapsed:.3f}s"
        ]
        bad = [p for p in self.partitions if p.verdict is not Verdict.OK]
        for p in bad[:max_partitions]:
            lines.append(p.describe(model))
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The search


def _check_partition(
    model: Model[S, I, O],
    ops: Sequence[Operation[I, O]],
    deadline: float,
    now: Callable[[], float],
) -> tuple[Verdict, tuple[int, ...], int]:
    # Refinements of the plain search (see the module docstring), both sound:
    #
    # * Candidate order: a configuration's candidates are the calls before the first return in
    #   the list, and any order of trying them is complete. Calls of operations that never
    #   return ("open", return_time = inf) are tried in a second pass, after the others, so
    #   ambiguous writes are linearized only when something needs them.
    # * Optional operations: if the model says ambiguous operations are always legal, an open
    #   ambiguous operation can always go last. Hence if a configuration (required set F,
    #   state s, optional set A) can be completed, so can (F, s, A') for every A' <= A (put the
    #   extra optional operations last), and once some (F, s, A') has been reached, any
    #   (F, s, A) with A >= A' adds nothing. The cache maps (F, s) to the optional sets
    #   reached, and a configuration is skipped when a recorded set is a subset of its own.
    #   Likewise an optional blind write directly after another optional operation is
    #   skipped: the blind write alone reaches the same state with a smaller optional set.
    #   Once every required operation is placed, the remaining optional ones are appended.
    n = len(ops)
    if n == 0:
        return Verdict.OK, (), 0
    # Events: (time, kind, op) with kind 0 = call, 1 = return, so calls sort first on ties.
    events = sorted(
        [(op.call_time, 0, i) for i, op in enumerate(ops)]
        + [(op.return_time, 1, i) for i, op in enumerate(ops)]
    )
    # Node 0 is the sentinel head; event k in sorted order is node k + 1; -1 terminates.
    size = 2 * n + 1
    nxt = list(range(1, size + 1))
    nxt[-1] = -1
    prv = list(range(-1, size - 1))
    is_call = [False] * size
    op_of = [-1] * size
    ret_node = [-1] * n
    for k, (_, kind, i) in enumerate(events):
        node = k + 1
        op_of[node] = i
        if kind == 0:
            is_call[node] = True
        else:
            ret_node[i] = node
    inputs = [op.input for op in ops]
    outputs = [op.output for op in ops]
    bits = [1 << i for i in range(n)]
    is_open = [op.return_time == math.inf for op in ops]
    optional = [
        model.ambiguous_always_legal and is_open[i] and outputs[i] is UNKNOWN for i in range(n)
    ]
    blind = [optional[i] and model.is_blind_write(inputs[i]) for i in range(n)]
    required_left = n - sum(optional)
    open_left = sum(is_open)
    step = model.step

    state = model.init()
    req_bits = 0
    opt_bits = 0
    seen: dict[tuple[int, Any], list[int]] = {}
    stack: list[tuple[int, Any, bool]] = []  # (call node, state before it, second pass)
    best: tuple[int, ...] = ()
    steps = 0
    second_pass = False  # trying open operations' calls
    e = nxt[0]
    while required_left:
        steps += 1
        if steps % _DEADLINE_CHECK_INTERVAL == 0 and now() > deadline:
            return Verdict.UNKNOWN, best, steps
        if is_call[e]:
            i = op_of[e]
            if is_open[i] != second_pass or (blind[i] and stack and optional[op_of[stack[-1][0]]]):
                e = nxt[e]
                continue
            legal, new_state = step(state, inputs[i], outputs[i])
            if legal:
                if optional[i]:
                    new_req, new_opt = req_bits, opt_bits | bits[i]
                else:
                    new_req, new_opt = req_bits | bits[i], opt_bits
                key = (new_req, new_state)
                recorded = seen.get(key)
                if recorded is None:
                    seen[key] = [new_opt]
                elif any(a | new_opt == new_opt for a in recorded):
                    e = nxt[e]
                    continue
                else:
                    recorded.append(new_opt)
                stack.append((e, state, second_pass))
                state = new_state
                req_bits, opt_bits = new_req, new_opt
                required_left -= not optional[i]
                open_left -= is_open[i]
                # Unlink the call and its return; their own pointers stay for relinking.
                r = ret_node[i]
                nxt[prv[e]] = nxt[e]
                prv[nxt[e]] = prv[e]
                nxt[prv[r]] = nxt[r]
                if nxt[r] != -1:
                    prv[nxt[r]] = prv[r]
                if len(stack) > len(best):
                    best = tuple(op_of[c] for c, _, _ in stack)
                second_pass = False
                e = nxt[0]
                continue
            e = nxt[e]
        elif not second_pass and open_left:
            second_pass = True
            e = nxt[0]
        else:
            if not stack:
                return Verdict.ILLEGAL, best, steps
            c, state, second_pass = stack.pop()
            i = op_of[c]
            if optional[i]:
                opt_bits &= ~bits[i]
            else:
                req_bits &= ~bits[i]
                required_left += 1
            open_left += is_open[i]
            r = ret_node[i]
            # Relink in reverse order of unlinking.
            nxt[prv[r]] = r
            if nxt[r] != -1:
                prv[nxt[r]] = r
            nxt[prv[c]] = c
            prv[nxt[c]] = c
            e = nxt[c]
    order = [op_of[c] for c, _, _ in stack]
    # Only optional operations remain: append them (always legal) in list order.
    node = nxt[0]
    while node != -1:
        if is_call[node]:
            order.append(op_of[node])
        node = nxt[node]
    return Verdict.OK, tuple(order), steps


def check_operations(
    model: Model[S, I, O],
    operations: Iterable[Operation[I, O]],
    *,
    timeout: float | None = None,
    now: Callable[[], float] = time.monotonic,
    stop_on_illegal: bool = True,
) -> CheckResult[S, I, O]:
    """Check that ``operations`` are linearizable with respect to ``model``.

    Args:
        model: the sequential specification (see :class:`Model`).
        operations: the history. Operations that definitely failed must already be removed;
            ambiguous ones carry :data:`UNKNOWN` (and usually ``return_time = inf``).
        timeout: seconds for the whole check (None: no limit). Past it the unfinished
            partitions get :attr:`Verdict.UNKNOWN`, checked periodically.
        now: the clock used for ``timeout`` and ``elapsed`` (injectable for tests).
        stop_on_illegal: stop at the first ILLEGAL partition (the remaining ones are reported
            UNKNOWN); False checks every partition.

    Returns:
        A :class:`CheckResult`; use ``result.ok`` and ``result.describe(model)``.

    Raises:
        ValueError: an operation has NaN times or returns before it is called (from
            :class:`Operation`).
    """
    start = now()
    deadline = math.inf if timeout is None else start + timeout
    groups: dict[Hashable, list[Operation[I, O]]] = {}
    dropped = 0
    total = 0
    ambiguous = 0
    for op in operations:
        if op.output is UNKNOWN and model.is_read_only(op.input):
            dropped += 1
            continue
        total += 1
        ambiguous += op.output is UNKNOWN
        groups.setdefault(model.partition_key(op.input), []).append(op)

    results: list[PartitionResult[S, I, O]] = []
    stop = False
    for key, ops in groups.items():
        t0 = now()
        order: tuple[int, ...]
        if stop:
            verdict, order, steps = Verdict.UNKNOWN, (), 0
        else:
            verdict, order, steps = _check_partition(model, ops, deadline, now)
        results.append(
            PartitionResult(
                key=key,
                verdict=verdict,
                operations=tuple(ops),
                linearization=order,
                steps=steps,
                elapsed=now() - t0,
            )
        )
        if verdict is Verdict.ILLEGAL:
            logger.info("partition %r is not linearizable (%d ops)", key, len(ops))
            stop = stop or stop_on_illegal
        elif verdict is Verdict.UNKNOWN and not stop:
            logger.warning("linearizability check of partition %r timed out", key)

    rank = {Verdict.ILLEGAL: 0, Verdict.UNKNOWN: 1, Verdict.OK: 2}
    results.sort(key=lambda p: rank[p.verdict])
    if any(p.verdict is Verdict.ILLEGAL for p in results):
        overall = Verdict.ILLEGAL
    elif any(p.verdict is Verdict.UNKNOWN for p in results):
        overall = Verdict.UNKNOWN
    else:
        overall = Verdict.OK
    return CheckResult(
        verdict=overall,
        partitions=tuple(results),
        operations=total,
        ambiguous=ambiguous,
        dropped_reads=dropped,
        elapsed=now() - start,
    )


def patch_ambiguous(
    operations: Iterable[Operation[I, O]],
    position: Callable[[Operation[I, O]], int | None],
) -> list[Operation[I, O]]:
    """Use facts learned after the run to narrow ambiguous operations (as etcd's robustness
    tests do), which keeps the search small.

    ``position(op)`` returns where ``op`` took effect in the replicated log (e.g. the Raft index
    at which its unique write was applied), or None if it is known never to have taken effect.
    Then an ambiguous operation with no position is removed, and one with a position gets a
    return time no later than the earliest return of a completed operation that took effect
    after it in the log (it must have taken effect before that one did).

    Only valid when ``position`` is read from the complete, final log (every node stopped or
    converged) and maps each operation to a unique log entry.

    Args:
        operations: the history.
        position: log position of an operation's effect, or None (never took effect, or a
            read that is not in the log; only ambiguous operations are affected).

    Returns:
        The patched history, in the original order.
    """
    ops = list(operations)
    positions = [position(op) for op in ops]
    # Earliest return among completed operations at each log position and after it.
    completed = sorted(
        (p, op.return_time)
        for op, p in zip(ops, positions, strict=True)
        if p is not None and op.output is not UNKNOWN
    )
    suffix_min: list[float] = [math.inf] * (len(completed) + 1)
    for k in range(len(completed) - 1, -1, -1):
        suffix_min[k] = min(completed[k][1], suffix_min[k + 1])
    completed_positions = [p for p, _ in completed]

    patched: list[Operation[I, O]] = []
    for op, p in zip(ops, positions, strict=True):
        if op.output is not UNKNOWN:
            patched.append(op)
        elif p is not None:
            k = bisect.bisect_right(completed_positions, p)
            cap = suffix_min[k]
            if cap < op.return_time:
                op = attrs.evolve(op, return_time=max(cap, op.call_time))
            patched.append(op)
    return patched


# ---------------------------------------------------------------------------------------------
# Recording


@attrs.frozen
class _Pending(Generic[I]):
    client: int
    input: I
    call_time: float
    tag: Hashable


class History(Generic[I, O]):
    """Records a concurrent history, timestamping with a caller-supplied clock.

    Use one clock for all clients of the history, read in the client process (e.g.
    ``trio.current_time``): timestamps from different clocks can produce false violations.

    Events recorded at the same clock reading (common under ``MockClock``, where time stands
    still while tasks run) are ordered as they were recorded: each timestamp is strictly
    later than the previous one. Otherwise a call recorded after another operation's response
    at the same instant would count as concurrent with it, and a stale read right after a
    completed write would pass.

    Args:
        clock: returns the current time; it must never go backwards.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._last = -math.inf
        self._next_token = 0
        self._next_client = 0
        self._pending: dict[int, _Pending[I]] = {}
        self._done: list[tuple[int, Operation[I, O]]] = []
        self.failed = 0
        """Operations reported as definitely failed (not part of the history)."""

    def new_client(self) -> int:
        """A fresh client id (give a client a new id after an ambiguous outcome)."""
        self._next_client += 1
        return self._next_client

    def invoke(self, client: int, inp: I, *, tag: Hashable = None) -> int:
        """Record a call, just before sending the request. Returns a token for the outcome.

        Args:
            client: the calling client's id.
            inp: the request.
            tag: kept in :attr:`Operation.tag` (e.g. a unique request id).
        """
        token = self._next_token
        self._next_token += 1
        self._pending[token] = _Pending(client, inp, self._now(), tag)
        return token

    def _now(self) -> float:
        now = self._clock()
        if now <= self._last:
            now = math.nextafter(self._last, math.inf)
        self._last = now
        return now

    def _take(self, token: int) -> _Pending[I]:
        try:
            return self._pending.pop(token)
        except KeyError:
            raise ValueError(f"unknown or already completed operation token {token}") from None

    def ok(self, token: int, output: O) -> None:
        """Record a definite response, just after it arrived."""
        now = self._now()
        p = self._take(token)
        self._done.append((token, Operation(p.client, p.input, p.call_time, output, now, p.tag)))

    def fail(self, token: int) -> None:
        """The operation definitely had no effect (e.g. rejected before being proposed, or a
        failed read): it is left out of the history."""
        self._take(token)
        self.failed += 1

    def ambiguous(self, token: int) -> None:
        """The outcome is unknown (timeout, connection reset, server crash): recorded with
        output :data:`UNKNOWN` and return time ``+inf``."""
        p = self._take(token)
        op: Operation[I, O] = Operation(p.client, p.input, p.call_time, UNKNOWN, math.inf, p.tag)
        self._done.append((token, op))

    @property
    def pending(self) -> int:
        """Operations invoked but not yet completed."""
        return len(self._pending)

    def operations(self) -> list[Operation[I, O]]:
        """The history in call order; still-pending operations are included as ambiguous."""
        ops = list(self._done)
        ops.extend(
            (t, Operation(p.client, p.input, p.call_time, UNKNOWN, math.inf, p.tag))
            for t, p in self._pending.items()
        )
        ops.sort(key=lambda x: (x[1].call_time, x[0]))
        return [op for _, op in ops]
