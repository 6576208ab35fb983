"""Group commit for the examples: concurrent requests share one Raft entry.

Theory of operation: every Raft entry costs the leader a fixed amount of work however small it is
(log append, a WAL write, append messages to each follower and their answers, an apply, a
result to correlate), and under concurrent load that fixed cost, not the bytes, bounds
throughput. So requests that arrive while earlier entries are still in flight wait in an *open
batch*; the first request of a batch becomes its *owner*. The owner waits for one of
``max_inflight`` proposal slots (acquiring a slot always yields once, so requests handled in the
same scheduler round join even when a slot is free), closes the batch, proposes all its items as
one entry and then wakes the other members, which take the owner's outcome as theirs.

Each member still gets a linearizable answer of its own: its item was in the batch before the
entry was proposed, and nobody is answered before the entry is committed and applied, so the
item takes effect at one point inside each member's request. When the batch fails, every member
gets the same status (503 when certainly not done, 504 when the outcome is unknown). A batch is
closed early when it reaches ``max_items`` or ``max_bytes``; an item bigger than ``max_bytes``
travels alone (and gets the same 413 as without batching when it is too large for an entry).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import trio

from examples.common.service import HttpError

__all__ = ["GroupCommit"]

T = TypeVar("T")

#: Proposes a closed batch (all its items as one entry) before ``deadline``; returns the result
#: every member gets. Raises :class:`HttpError` on failure.
ProposeBatch = Callable[[list[T], float], Awaitable[Any]]


class _Batch(Generic[T]):
    __slots__ = ("deadline", "done", "error", "items", "nbytes", "result")

    def __init__(self, deadline: float) -> None:
        self.items: list[T] = []
        self.nbytes = 0
        self.deadline = deadline
        self.done = trio.Event()
        self.result: Any = None
        self.error: HttpError | None = None


def _copy(exc: HttpError) -> HttpError:
    """A fresh exception per member (raising one instance in many tasks tangles tracebacks)."""
    return HttpError(exc.status, exc.text, exc.headers)


class GroupCommit(Generic[T]):
    """Batches concurrent submissions into shared proposals (see the module docstring).

    Args:
        propose: proposes one closed batch before a deadline (see :data:`ProposeBatch`).
        timeout: seconds from a batch's first submission to the end of its proposal.
        max_inflight: batches proposed at the same time; more wait, accumulating items.
        max_items: a batch is closed once it holds this many items.
        max_bytes: a batch is closed before its items' declared sizes would exceed this.
        max_waiting: closed batches waiting for a proposal slot; a request that would start
            one more is answered 503 at once (memory stays bounded while proposals stall).
    """

    def __init__(
        self,
        propose: ProposeBatch[T],
        *,
        timeout: float,
        max_inflight: int = 1,
        max_items: int = 256,
        max_bytes: int = 64 * 1024,
        max_waiting: int = 64,
    ) -> None:
        if min(max_inflight, max_items, max_bytes, max_waiting) < 1:
            raise ValueError("max_inflight, max_items, max_bytes and max_waiting must be positive")
        self._propose = propose
        self._timeout = timeout
        self._slots = trio.Semaphore(max_inflight)
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._open: _Batch[T] | None = None
        self._max_waiting = max_waiting
        self._waiting = 0  # batches waiting for a slot
        #: batches proposed so far and the items they carried (for tests and metrics)
        self.batches = 0
        self.items = 0

    async def submit(self, item: T, size: int) -> Any:
        """Add ``item`` (``size`` bytes) to the open batch and wait for the batch's outcome.

        Returns:
            the result of the batch's proposal.

        Raises:
            HttpError: the batch failed (503: certainly not done; 504: outcome unknown).
        """
        batch = self._open
        if batch is not None and (
            len(batch.items) >= self._max_items or batch.nbytes + size > self._max_bytes
        ):
            batch = None
        if batch is None:
            if self._waiting >= self._max_waiting:
                raise HttpError(
                    503, "unavailable: too many requests waiting", (("retry-after", "1"),)
                )
            batch = self._open = _Batch(trio.current_time() + self._timeout)
            batch.items.append(item)
            batch.nbytes += size
            return await self._lead(batch)
        batch.items.append(item)
        batch.nbytes += size
        await batch.done.wait()
        if batch.error is not None:
            raise _copy(batch.error)
        return batch.result

    async def _lead(self, batch: _Batch[T]) -> Any:
        proposed = False
        try:
            acquired = False
            self._waiting += 1
            try:
                with trio.move_on_at(batch.deadline):
                    await self._slots.acquire()
                    acquired = True
            finally:
                self._waiting -= 1
            if not acquired:
                raise HttpError(
                    503, "unavailable: too many requests in flight", (("retry-after", "1"),)
                )
            try:
                if self._open is batch:
                    self._open = None
                proposed = True
                self.batches += 1
                self.items += len(batch.items)
                batch.result = await self._propose(batch.items, batch.deadline)
                return batch.result
            finally:
                self._slots.release()
        except HttpError as exc:
            batch.error = exc
            raise
        except BaseException:
            # Cancelled (shutdown) or a bug: the members must not wait for an answer forever.
            if proposed:
                batch.error = HttpError(504, "outcome unknown: the batch's proposal was abandoned")
            else:
                batch.error = HttpError(503, "not done: the batch was abandoned")
            raise
        finally:
            if self._open is batch:
                self._open = None
            batch.done.set()
