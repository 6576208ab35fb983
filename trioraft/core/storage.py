"""The read-only log view the core uses (:class:`LogStorage`) and an in-memory implementation
(:class:`MemoryStorage`) whose write side the runtime drives.

Index conventions: the storage holds the entries ``[first_index(), last_index()]``; the entry just
before ``first_index()`` is covered by the newest snapshot, so ``term(first_index() - 1)`` is the
snapshot's term. An empty, never-compacted storage has ``first_index() == 1`` and
``last_index() == 0``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Protocol

from trioraft.core.types import ENTRY_OVERHEAD, ConfState, Entry, HardState, SnapshotMeta

__all__ = [
    "Compacted",
    "LogStorage",
    "MemoryStorage",
    "SnapshotOutOfDate",
    "SnapshotTemporarilyUnavailable",
    "StorageError",
    "Unavailable",
    "limit_size",
    "limited_end",
]


class StorageError(Exception):
    """Base class of the log storage errors."""


class Compacted(StorageError):
    """The requested index is below the log's first index: it was compacted into a snapshot."""


class Unavailable(StorageError):
    """The requested index is beyond the log's last index: it does not exist (yet)."""


class SnapshotTemporarilyUnavailable(StorageError):
    """No snapshot can be provided right now (e.g. one is being written); retry later."""


class SnapshotOutOfDate(StorageError):
    """A snapshot older than (or equal to) the current one was offered."""


class LogStorage(Protocol):
    """The read-only view of durable Raft state that the core consults.

    Every method must reflect exactly what the runtime has made durable and applied to the
    storage's write side; the core never writes through this interface.
    """

    def initial_state(self) -> tuple[HardState, ConfState]:
        """Return the persisted hard state and the configuration as of the applied index."""
        ...

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Return entries ``[lo, hi)``, at least one if ``lo < hi``, at most ``max_bytes`` in
        total size beyond the first.

        Raises:
            Compacted: ``lo < first_index()``.
            Unavailable: ``hi > last_index() + 1``.
        """
        ...

    def term(self, index: int) -> int:
        """Return the term of the entry at ``index`` (``first_index() - 1`` included).

        Raises:
            Compacted: ``index < first_index() - 1``.
            Unavailable: ``index > last_index()``.
        """
        ...

    def first_index(self) -> int:
        """Index of the first entry held (snapshot index + 1)."""
        ...

    def last_index(self) -> int:
        """Index of the last entry held (the snapshot index when no entries follow it)."""
        ...

    def snapshot(self) -> SnapshotMeta:
        """Metadata of the newest snapshot (index 0 when there is none).

        Raises:
            SnapshotTemporarilyUnavailable: no snapshot can be provided right now.
        """
        ...


def limited_end(entries: Sequence[Entry], start: int, end: int, max_bytes: int | None) -> int:
    """The end ``e`` (``start < e <= end``) such that ``entries[start:e]`` stays within
    ``max_bytes`` but holds at least one entry; ``start`` when ``start >= end``. Nothing is
    copied, so limiting a long range costs only the entries kept."""
    if max_bytes is None or start >= end:
        return end
    total = len(entries[start].data) + ENTRY_OVERHEAD
    i = start + 1
    while i < end:
        total += len(entries[i].data) + ENTRY_OVERHEAD
        if total > max_bytes:
            return i
        i += 1
    return end


def limit_size(entries: list[Entry], max_bytes: int | None) -> list[Entry]:
    """Return the longest prefix of ``entries`` within ``max_bytes`` total size, but never less
    than one entry (so progress is always possible)."""
    end = limited_end(entries, 0, len(entries), max_bytes)
    return entries if end == len(entries) else entries[:end]


class MemoryStorage:
    """An in-memory :class:`LogStorage` plus the write side the runtime (or the test harness)
    uses to mirror what it made durable.

    Internally ``_ents[0]`` is a placeholder entry standing for the snapshot (its index and term),
    which makes ``term(first_index() - 1)`` a plain lookup.

    Restart recipe: ``ms = MemoryStorage(); ms.apply_snapshot(meta)`` (if any);
    ``ms.set_hard_state(hs); ms.append(entries)``.
    """

    def __init__(self) -> None:
        self._hard_state = HardState()
        self._conf_state = ConfState()
        self._snapshot = SnapshotMeta(index=0, term=0)
        self._ents: list[Entry] = [Entry(term=0, index=0)]

    # -- read side (LogStorage) -------------------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        """See :meth:`LogStorage.initial_state`."""
        return self._hard_state, self._conf_state

    @property
    def hard_state(self) -> HardState:
        """The hard state last set with :meth:`set_hard_state`."""
        return self._hard_state

    def first_index(self) -> int:
        """See :meth:`LogStorage.first_index`."""
        return self._ents[0].index + 1

    def last_index(self) -> int:
        """See :meth:`LogStorage.last_index`."""
        return self._ents[0].index + len(self._ents) - 1

    def term(self, index: int) -> int:
        """See :meth:`LogStorage.term`."""
        offset = self._ents[0].index
        if index < offset:
            raise Compacted(f"index {index} is compacted (snapshot at {offset})")
        if index - offset >= len(self._ents):
            raise Unavailable(f"index {index} is beyond the last index {self.last_index()}")
        return self._ents[index - offset].term

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """See :meth:`LogStorage.entries`."""
        if lo > hi:
            raise ValueError(f"invalid range [{lo}, {hi})")
        offset = self._ents[0].index
        if lo <= offset:
            raise Compacted(f"index {lo} is compacted (snapshot at {offset})")
        if hi > self.last_index() + 1:
            raise Unavailable(f"index {hi - 1} is beyond the last index {self.last_index()}")
        start = lo - offset
        return self._ents[start : limited_end(self._ents, start, hi - offset, max_bytes)]

    def snapshot(self) -> SnapshotMeta:
        """See :meth:`LogStorage.snapshot`."""
        return self._snapshot

    # -- write side ---------------------------------------------------------------------------

    def set_hard_state(self, hs: HardState) -> None:
        """Record the durable hard state."""
        self._hard_state = hs

    def set_conf_state(self, conf: ConfState) -> None:
        """Record the configuration :meth:`initial_state` reports: the configuration as of the
        index the state machine has applied when the core (re)starts."""
        self._conf_state = conf

    def append(self, entries: Sequence[Entry]) -> None:
        """Append entries, replacing any existing suffix from ``entries[0].index`` on.

        Entries already covered by the snapshot are skipped.

        Raises:
            ValueError: the entries are not contiguous, or would leave a gap after the last index.
        """
        if not entries:
            return
        for a, b in itertools.pairwise(entries):
            if b.index != a.index + 1:
                raise ValueError(f"entries not contiguous: {a.index} then {b.index}")
        first = self.first_index()
        if entries[-1].index < first:
            return
        ents = list(entries)
        if ents[0].index < first:
            ents = ents[first - ents[0].index :]
        offset = ents[0].index - self._ents[0].index
        if offset > len(self._ents):
            raise ValueError(
                f"missing log entries: last index {self.last_index()}, appending at {ents[0].index}"
            )
        del self._ents[offset:]
        self._ents.extend(ents)

    def apply_snapshot(self, meta: SnapshotMeta) -> None:
        """Replace the whole log with a received snapshot (follower install).

        Raises:
            SnapshotOutOfDate: ``meta.index`` is not newer than the current snapshot.
        """
        if meta.index <= self._snapshot.index:
            raise SnapshotOutOfDate(
                f"snapshot at {meta.index} is not newer than the current {self._snapshot.index}"
            )
        self._snapshot = meta
        self._conf_state = meta.conf
        self._ents = [Entry(term=meta.term, index=meta.index)]

    def set_snapshot(self, meta: SnapshotMeta) -> None:
        """Record a snapshot taken locally; the log is unchanged (see :meth:`compact`).

        Raises:
            SnapshotOutOfDate: ``meta.index`` is older than the current snapshot.
            ValueError: ``meta.index`` is beyond the last index or its term does not match.
        """
        if meta.index < self._snapshot.index:
            raise SnapshotOutOfDate(
                f"snapshot at {meta.index} is older than the current {self._snapshot.index}"
            )
        if meta.index > self.last_index():
            raise ValueError(f"snapshot at {meta.index} is beyond the last index")
        if meta.index >= self._ents[0].index and self.term(meta.index) != meta.term:
            raise ValueError(f"snapshot term {meta.term} does not match the log at {meta.index}")
        self._snapshot = meta

    def compact(self, index: int) -> None:
        """Drop the entries up to and including ``index``; a no-op if already compacted.

        ``index`` must not exceed the snapshot's index (the state machine must already be
        captured there), so the leader can always send a snapshot for what is dropped.

        Raises:
            ValueError: ``index`` is beyond the last index or the newest snapshot.
        """
        offset = self._ents[0].index
        if index <= offset:
            return
        if index > self.last_index():
            raise ValueError(f"compact {index} is beyond the last index {self.last_index()}")
        if index > self._snapshot.index:
            raise ValueError(
                f"compact {index} is beyond the newest snapshot {self._snapshot.index}; "
                "call set_snapshot first"
            )
        i = index - offset
        head = self._ents[i]
        self._ents = [Entry(term=head.term, index=head.index), *self._ents[i + 1 :]]
