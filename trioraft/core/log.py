"""The core's view of the Raft log: durable entries read through :class:`LogStorage` plus an
*unstable* tail of entries (and possibly a snapshot) not yet acknowledged as durable.

Theory of operation (after etcd's ``raftLog``/``unstable``):

* ``unstable.offset`` is the index of the first unstable entry; everything below it is durable
  and readable from storage (or covered by the unstable snapshot).
* Entries and a snapshot are handed to the runtime once (``offset_in_progress`` and
  ``snapshot_in_progress`` remember what is being written) and dropped from the unstable tail when
  the runtime acknowledges them (:meth:`RaftLog.stable_to`). An acknowledgement whose
  ``(index, term)`` no longer matches the unstable tail (it was overwritten meanwhile) is ignored.
* Term lookups distinguish indexes below the log (:class:`Compacted`) from indexes beyond it
  (:class:`Unavailable`).
* ``committed >= applying >= applied``: committed entries are handed out for application only
  once durable locally (``applying``) and acknowledged by :meth:`RaftLog.applied_to`.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence

from trioraft.core.storage import Compacted, LogStorage, Unavailable, limited_end
from trioraft.core.types import ENTRY_OVERHEAD, Entry, SnapshotMeta, entries_size

__all__ = ["RaftLog", "Unstable"]

logger = logging.getLogger(__name__)


class Unstable:
    """Entries and a snapshot not yet durable, with what of them is being written."""

    def __init__(self, offset: int) -> None:
        self.snapshot: SnapshotMeta | None = None
        self.entries: list[Entry] = []
        self.offset = offset
        self.snapshot_in_progress = False
        self.offset_in_progress = offset

    def maybe_first_index(self) -> int | None:
        """First log index implied by the unstable snapshot, if any."""
        return self.snapshot.index + 1 if self.snapshot is not None else None

    def maybe_last_index(self) -> int | None:
        """Last index of the unstable entries, else of the unstable snapshot, else None."""
        if self.entries:
            return self.offset + len(self.entries) - 1
        if self.snapshot is not None:
            return self.snapshot.index
        return None

    def maybe_term(self, index: int) -> int | None:
        """Term at ``index`` if the unstable part knows it."""
        if index < self.offset:
            if self.snapshot is not None and self.snapshot.index == index:
                return self.snapshot.term
            return None
        last = self.maybe_last_index()
        if last is None or index > last:
            return None
        return self.entries[index - self.offset].term

    def has_next_entries(self) -> bool:
        """True if some unstable entries were not yet handed out (without copying them)."""
        return self.offset_in_progress < self.offset + len(self.entries)

    def next_entries(self) -> list[Entry]:
        """Unstable entries not yet handed out for writing."""
        start = self.offset_in_progress - self.offset
        return self.entries[start:]

    def next_snapshot(self) -> SnapshotMeta | None:
        """The unstable snapshot if not yet handed out for writing."""
        if self.snapshot is None or self.snapshot_in_progress:
            return None
        return self.snapshot

    def accept_in_progress(self) -> None:
        """Mark everything unstable as handed out for writing."""
        if self.entries:
            self.offset_in_progress = self.entries[-1].index + 1
        if self.snapshot is not None:
            self.snapshot_in_progress = True

    def stable_to(self, index: int, term: int) -> None:
        """Entries up to ``(index, term)`` are durable; drop them if they are still ours."""
        got = self.maybe_term(index)
        if got is None or index < self.offset:
            # Unknown here: already stable, or replaced by a snapshot meanwhile.
            return
        if got != term:
            # Overwritten by a newer leader's entries after the write started.
            return
        n = index + 1 - self.offset
        del self.entries[:n]
        self.offset = index + 1
        self.offset_in_progress = max(self.offset_in_progress, self.offset)

    def stable_snap_to(self, index: int) -> None:
        """The unstable snapshot at ``index`` is durable."""
        if self.snapshot is not None and self.snapshot.index == index:
            self.snapshot = None
            self.snapshot_in_progress = False

    def restore(self, meta: SnapshotMeta) -> None:
        """Replace everything unstable by ``meta``."""
        self.offset = meta.index + 1
        self.offset_in_progress = self.offset
        self.entries = []
        self.snapshot = meta
        self.snapshot_in_progress = False

    def truncate_and_append(self, ents: Sequence[Entry]) -> None:
        """Append ``ents``, replacing whatever existed from ``ents[0].index`` on."""
        start = ents[0].index
        if start == self.offset + len(self.entries):
            self.entries.extend(ents)
        elif start <= self.offset:
            # Everything unstable (and durable entries from ``start`` on) is superseded.
            self.entries = list(ents)
            self.offset = start
            self.offset_in_progress = self.offset
        else:
            del self.entries[start - self.offset :]
            self.entries.extend(ents)
            self.offset_in_progress = min(self.offset_in_progress, start)


class RaftLog:
    """Storage plus unstable tail, with commit and apply cursors.

    Args:
        storage: the read-only durable view.
        max_applying_bytes: budget of committed entry bytes handed out and not yet applied.
    """

    def __init__(self, storage: LogStorage, max_applying_bytes: int) -> None:
        self.storage = storage
        first = storage.first_index()
        last = storage.last_index()
        self.unstable = Unstable(last + 1)
        self.committed = first - 1
        self.applying = first - 1
        self.applied = first - 1
        self.max_applying_bytes = max_applying_bytes
        self.applying_bytes = 0
        # (index, size) of entries handed out for application and not yet acknowledged.
        self._applying_sizes: deque[tuple[int, int]] = deque()

    # -- bounds and terms -------------------------------------------------------------------

    def first_index(self) -> int:
        """First index available (entries below are compacted)."""
        i = self.unstable.maybe_first_index()
        return i if i is not None else self.storage.first_index()

    def last_index(self) -> int:
        """Last index of the log."""
        i = self.unstable.maybe_last_index()
        return i if i is not None else self.storage.last_index()

    def last_term(self) -> int:
        """Term of the last entry (0 for an empty log)."""
        return self.term(self.last_index())

    def term(self, index: int) -> int:
        """Term at ``index``.

        Raises:
            Compacted: ``index < first_index() - 1``.
            Unavailable: ``index > last_index()``.
        """
        t = self.unstable.maybe_term(index)
        if t is not None:
            return t
        if index < self.first_index() - 1:
            raise Compacted(f"index {index} is compacted")
        if index > self.last_index():
            raise Unavailable(f"index {index} is beyond the last index {self.last_index()}")
        return self.storage.term(index)

    def term_or_zero(self, index: int) -> int:
        """Term at ``index``, or 0 when it is compacted or unavailable."""
        try:
            return self.term(index)
        except (Compacted, Unavailable):
            return 0

    def match_term(self, index: int, term: int) -> bool:
        """True iff the log holds an entry at ``index`` with ``term``."""
        try:
            return self.term(index) == term
        except (Compacted, Unavailable):
            return False

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Raft's election restriction (5.4.1): is a log ending at (last_index, last_term) at
        least as up to date as ours?"""
        our_term = self.last_term()
        return last_term > our_term or (last_term == our_term and last_index >= self.last_index())

    # -- reading entries ----------------------------------------------------------------------

    def slice(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries ``[lo, hi)`` limited to ``max_bytes`` (at least one entry).

        Raises:
            Compacted: ``lo < first_index()``.
            Unavailable: ``hi > last_index() + 1``.
        """
        if lo >= hi:
            return []
        if lo < self.first_index():
            raise Compacted(f"index {lo} is compacted")
        if hi > self.last_index() + 1:
            raise Unavailable(f"index {hi - 1} is beyond the last index {self.last_index()}")
        ents: list[Entry] = []
        offset = self.unstable.offset
        if lo < offset:
            ents = self.storage.entries(lo, min(hi, offset), max_bytes)
            if len(ents) < min(hi, offset) - lo:
                return ents  # the size limit cut the stored part short
        if hi > offset:
            u = self.unstable.entries
            start, end = max(lo, offset) - offset, hi - offset
            if max_bytes is None:
                return ents + u[start:end]
            used = entries_size(ents)
            if ents:
                # Continue the budget of the stored part; stop before the first entry too many.
                i = start
                while i < end:
                    size = len(u[i].data) + ENTRY_OVERHEAD
                    if used + size > max_bytes:
                        break
                    used += size
                    i += 1
                return ents + u[start:i]
            return u[start : limited_end(u, start, end, max_bytes)]
        return ents

    def entries_from(self, lo: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries from ``lo`` to the end, limited to ``max_bytes``."""
        if lo > self.last_index():
            return []
        return self.slice(lo, self.last_index() + 1, max_bytes)

    def snapshot(self) -> SnapshotMeta:
        """The unstable snapshot if any, else the storage's newest snapshot."""
        if self.unstable.snapshot is not None:
            return self.unstable.snapshot
        return self.storage.snapshot()

    # -- conflicts ------------------------------------------------------------------------------

    def find_conflict(self, ents: Sequence[Entry]) -> int:
        """Index of the first entry of ``ents`` that is missing from or conflicts with our log;
        0 if all of them are already present."""
        for e in ents:
            if not self.match_term(e.index, e.term):
                if e.index <= self.last_index():
                    logger.info(
                        "conflict at index %d [existing term %d, conflicting term %d]",
                        e.index,
                        self.term_or_zero(e.index),
                        e.term,
                    )
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest ``(i, t)`` with ``i <= index`` and ``t <= term`` in our log: the best guess
        of where a log whose term at ``index`` is ``term`` may agree with ours.

        An index whose term is unknown (compacted) is returned with term 0: it may match.
        """
        while index > 0:
            try:
                our = self.term(index)
            except (Compacted, Unavailable):
                return index, 0
            if our <= term:
                return index, our
            index -= 1
        return 0, 0

    def maybe_append(
        self, prev_index: int, prev_term: int, committed: int, ents: Sequence[Entry]
    ) -> int | None:
        """AppendEntries consistency check and append.

        Returns the last index covered by the request on success, or None when the log does not
        hold ``(prev_index, prev_term)``. Only the conflicting suffix is truncated; entries that
        are already present are kept as they are.
        """
        if not self.match_term(prev_index, prev_term):
            return None
        last_new = prev_index + len(ents)
        ci = self.find_conflict(ents)
        if ci != 0:
            if ci <= self.committed:
                logger.error(
                    "refusing to overwrite committed entry %d (commit %d)", ci, self.committed
                )
                return None
            self.append(ents[ci - (prev_index + 1) :])
        self.commit_to(min(committed, last_new))
        return last_new

    def append(self, ents: Sequence[Entry]) -> int:
        """Append (truncating a conflicting suffix first); returns the new last index."""
        if ents:
            if ents[0].index - 1 < self.committed:
                raise ValueError(
                    f"appending at {ents[0].index} would overwrite committed {self.committed}"
                )
            self.unstable.truncate_and_append(ents)
        return self.last_index()

    # -- commit and apply ---------------------------------------------------------------------

    def commit_to(self, index: int) -> None:
        """Raise the commit index (never lowers it; clamps to the last index)."""
        if index <= self.committed:
            return
        last = self.last_index()
        if index > last:
            logger.error("commit %d is beyond the last index %d; clamping", index, last)
            index = last
        self.committed = index

    def maybe_commit(self, index: int, term: int) -> bool:
        """Commit up to ``index`` if the entry there has ``term`` (the Figure-8 rule)."""
        if index > self.committed and self.term_or_zero(index) == term:
            self.commit_to(index)
            return True
        return False

    def max_appliable_index(self) -> int:
        """Highest index that may be handed out for application: committed and durable."""
        return min(self.committed, self.unstable.offset - 1)

    def has_next_committed_ents(self) -> bool:
        """Are there committed, durable entries not yet handed out (and room to hand them)?"""
        if self.unstable.snapshot is not None or self.applying_bytes >= self.max_applying_bytes:
            return False
        return self.applying < self.max_appliable_index()

    def next_committed_ents(self) -> list[Entry]:
        """Committed, durable entries not yet handed out, within the applying budget."""
        if not self.has_next_committed_ents():
            return []
        lo, hi = self.applying + 1, self.max_appliable_index() + 1
        budget = max(1, self.max_applying_bytes - self.applying_bytes)
        return self.slice(lo, hi, budget)

    def accept_applying(self, ents: Sequence[Entry]) -> None:
        """Record that ``ents`` were handed out for application."""
        if not ents:
            return
        size = entries_size(ents)
        self.applying = ents[-1].index
        self.applying_bytes += size
        self._applying_sizes.append((ents[-1].index, size))

    def applied_to(self, index: int) -> None:
        """The state machine applied everything up to ``index``."""
        index = min(index, self.applying)
        if index <= self.applied:
            return
        self.applied = index
        while self._applying_sizes and self._applying_sizes[0][0] <= index:
            self.applying_bytes -= self._applying_sizes.popleft()[1]

    def applied_snapshot(self, index: int) -> None:
        """A restored snapshot at ``index`` is installed in the state machine."""
        self.applying = max(self.applying, index)
        self.applied = max(self.applied, index)
        self._applying_sizes.clear()
        self.applying_bytes = 0

    # -- durability -----------------------------------------------------------------------------

    def stable_to(self, index: int, term: int) -> None:
        """Entries up to ``(index, term)`` are durable."""
        self.unstable.stable_to(index, term)

    def stable_snap_to(self, index: int) -> None:
        """The snapshot at ``index`` is installed durably."""
        self.unstable.stable_snap_to(index)

    def restore(self, meta: SnapshotMeta) -> None:
        """Replace the whole log by a snapshot (follower install)."""
        logger.info("log restored to snapshot [index %d, term %d]", meta.index, meta.term)
        self.committed = meta.index
        self.unstable.restore(meta)

    def has_pending_snapshot(self) -> bool:
        """Is a snapshot waiting to be (or being) installed?"""
        return self.unstable.snapshot is not None
