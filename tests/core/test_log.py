"""MemoryStorage and the snapshot-aware RaftLog (stable + unstable, conflicts, cursors)."""

from __future__ import annotations

import pytest
from core_helpers import ents

from trioraft.core.log import RaftLog, Unstable
from trioraft.core.storage import (
    Compacted,
    MemoryStorage,
    SnapshotOutOfDate,
    Unavailable,
    limit_size,
)
from trioraft.core.types import ConfState, Entry, HardState, SnapshotMeta


def stored(*terms: int) -> MemoryStorage:
    st = MemoryStorage()
    st.append(ents(*terms))
    return st


# -- MemoryStorage -------------------------------------------------------------------------------


def test_empty_storage_bounds() -> None:
    st = MemoryStorage()
    assert (st.first_index(), st.last_index()) == (1, 0)
    assert st.term(0) == 0
    assert st.snapshot().index == 0
    assert st.initial_state() == (HardState(), ConfState())
    assert st.entries(1, 1) == []


def test_storage_term_reports_compacted_and_unavailable_distinctly() -> None:
    st = stored(1, 1, 2, 2, 3)
    st.set_snapshot(SnapshotMeta(index=3, term=2))
    st.compact(3)
    assert st.term(3) == 2  # the snapshot's term
    assert st.term(5) == 3
    with pytest.raises(Compacted):
        st.term(2)
    with pytest.raises(Unavailable):
        st.term(6)
    with pytest.raises(Compacted):
        st.entries(3, 5)
    with pytest.raises(Unavailable):
        st.entries(4, 7)
    with pytest.raises(ValueError):
        st.entries(5, 4)


def test_storage_entries_respect_max_bytes_but_return_at_least_one() -> None:
    st = MemoryStorage()
    st.append([Entry(term=1, index=i, data=b"x" * 84) for i in range(1, 6)])  # 100 bytes each
    assert len(st.entries(1, 6, max_bytes=250)) == 2
    assert len(st.entries(1, 6, max_bytes=1)) == 1
    assert len(st.entries(1, 6)) == 5
    assert limit_size([], 5) == []


def test_storage_append_replaces_only_the_suffix() -> None:
    st = stored(1, 1, 1, 1)
    st.append([Entry(term=2, index=3), Entry(term=2, index=4), Entry(term=2, index=5)])
    assert [st.term(i) for i in range(1, 6)] == [1, 1, 2, 2, 2]
    st.append([])
    with pytest.raises(ValueError, match="missing"):
        st.append([Entry(term=2, index=9)])
    with pytest.raises(ValueError, match="contiguous"):
        st.append([Entry(term=2, index=6), Entry(term=2, index=8)])


def test_storage_append_skips_compacted_entries() -> None:
    st = stored(1, 1, 1, 1)
    st.set_snapshot(SnapshotMeta(index=2, term=1))
    st.compact(2)
    st.append(ents(1, 1))  # indexes 1, 2: all compacted
    assert st.last_index() == 4
    st.append(ents(1, 1, 5, start=2))  # 2 compacted, 3 kept equal, 4 replaced
    assert st.last_index() == 4 and st.term(4) == 5


def test_storage_compact_rules() -> None:
    st = stored(1, 1, 2, 2)
    with pytest.raises(ValueError, match="snapshot"):
        st.compact(2)  # no snapshot covers it
    st.set_snapshot(SnapshotMeta(index=3, term=2))
    with pytest.raises(ValueError, match="last index"):
        st.compact(9)
    st.compact(2)
    assert st.first_index() == 3
    st.compact(1)  # already compacted: no-op
    assert st.first_index() == 3


def test_storage_snapshot_rules() -> None:
    st = stored(1, 1, 2)
    with pytest.raises(ValueError, match="beyond"):
        st.set_snapshot(SnapshotMeta(index=4, term=2))
    with pytest.raises(ValueError, match="term"):
        st.set_snapshot(SnapshotMeta(index=3, term=1))
    st.set_snapshot(SnapshotMeta(index=3, term=2))
    with pytest.raises(SnapshotOutOfDate):
        st.set_snapshot(SnapshotMeta(index=2, term=1))
    conf = ConfState(voters=frozenset({1, 2}))
    st.apply_snapshot(SnapshotMeta(index=10, term=4, conf=conf))
    assert (st.first_index(), st.last_index(), st.term(10)) == (11, 10, 4)
    assert st.initial_state()[1] == conf
    with pytest.raises(SnapshotOutOfDate):
        st.apply_snapshot(SnapshotMeta(index=10, term=4))


# -- Unstable ------------------------------------------------------------------------------------


def test_unstable_stable_to_ignores_overwritten_entries() -> None:
    u = Unstable(5)
    u.truncate_and_append(ents(1, 1, 1, start=5))
    u.accept_in_progress()
    assert u.next_entries() == []
    u.truncate_and_append(ents(2, 2, start=6))  # overwrite 6.. while 5..7 are being written
    assert [e.index for e in u.next_entries()] == [6, 7]
    u.stable_to(7, 1)  # the write of the old 7 finished: not ours any more
    assert u.offset == 5
    u.stable_to(5, 1)
    assert u.offset == 6
    u.stable_to(3, 1)  # below offset: ignored
    u.stable_to(7, 2)
    assert u.entries == [] and u.offset == 8


def test_unstable_truncate_before_offset_replaces_everything() -> None:
    u = Unstable(5)
    u.truncate_and_append(ents(1, 1, start=5))
    u.truncate_and_append(ents(3, start=3))
    assert u.offset == 3 and [e.term for e in u.entries] == [3]
    assert u.maybe_term(2) is None and u.maybe_term(9) is None


def test_unstable_snapshot_lifecycle() -> None:
    u = Unstable(1)
    assert u.maybe_first_index() is None and u.maybe_last_index() is None
    meta = SnapshotMeta(index=10, term=3)
    u.restore(meta)
    assert u.maybe_first_index() == 11 and u.maybe_last_index() == 10
    assert u.maybe_term(10) == 3 and u.maybe_term(9) is None
    assert u.next_snapshot() == meta
    u.accept_in_progress()
    assert u.next_snapshot() is None
    u.stable_snap_to(9)
    assert u.snapshot is not None
    u.stable_snap_to(10)
    assert u.snapshot is None


# -- RaftLog -------------------------------------------------------------------------------------


def make_log(*terms: int, budget: int = 1 << 20) -> RaftLog:
    return RaftLog(stored(*terms), budget)


def test_log_term_spans_storage_and_unstable() -> None:
    log = make_log(1, 1, 2)
    log.append(ents(3, 3, start=4))
    assert [log.term(i) for i in range(6)] == [0, 1, 1, 2, 3, 3]
    assert log.last_index() == 5 and log.last_term() == 3
    with pytest.raises(Unavailable):
        log.term(6)
    assert log.term_or_zero(6) == 0
    assert [e.index for e in log.slice(2, 6)] == [2, 3, 4, 5]
    assert log.slice(4, 4) == []
    assert log.entries_from(9) == []


def test_log_slice_size_limit_stops_in_storage_part() -> None:
    st = MemoryStorage()
    st.append([Entry(term=1, index=i, data=b"x" * 84) for i in range(1, 4)])
    log = RaftLog(st, 1 << 20)
    log.append([Entry(term=1, index=4, data=b"y" * 84)])
    assert len(log.slice(1, 5, max_bytes=150)) == 1
    assert len(log.slice(1, 5, max_bytes=350)) == 3
    assert len(log.slice(1, 5, max_bytes=450)) == 4


def test_log_compacted_vs_unavailable() -> None:
    st = stored(1, 1, 2, 2)
    st.set_snapshot(SnapshotMeta(index=2, term=1))
    st.compact(2)
    log = RaftLog(st, 1 << 20)
    assert log.first_index() == 3 and log.term(2) == 1
    with pytest.raises(Compacted):
        log.term(1)
    with pytest.raises(Compacted):
        log.slice(2, 4)
    with pytest.raises(Unavailable):
        log.slice(3, 9)
    assert not log.match_term(1, 1)
    assert log.snapshot().index == 2


def test_find_conflict() -> None:
    log = make_log(1, 2, 3)
    assert log.find_conflict(ents(1, 2, 3)) == 0
    assert log.find_conflict(ents(2, 3, start=2)) == 0
    assert log.find_conflict(ents(2, 3, 4, 4, start=2)) == 4  # new entries
    assert log.find_conflict(ents(4, 4, start=2)) == 2  # conflicting
    assert log.find_conflict([]) == 0


@pytest.mark.parametrize(
    ("index", "term", "expected"),
    [
        (6, 4, (6, 3)),  # leader at term 4 at 6: our 6 has term 3 <= 4
        (6, 2, (3, 2)),  # skip our term-3 entries
        (6, 1, (2, 1)),
        (6, 0, (0, 0)),
        (2, 2, (2, 1)),
    ],
)
def test_find_conflict_by_term(index: int, term: int, expected: tuple[int, int]) -> None:
    log = make_log(1, 1, 2, 3, 3, 3)
    assert log.find_conflict_by_term(index, term) == expected


def test_find_conflict_by_term_stops_at_compacted_index() -> None:
    st = stored(1, 2, 3, 3)
    st.set_snapshot(SnapshotMeta(index=2, term=2))
    st.compact(2)
    log = RaftLog(st, 1 << 20)
    assert log.find_conflict_by_term(4, 1) == (1, 0)  # unknown term below the snapshot


def test_maybe_append_truncates_only_the_conflicting_suffix() -> None:
    log = make_log(1, 1, 2, 2, 2)
    # (prev 2/1) then entries 3/2 (present), 4/3, 5/3 (conflict at 4)
    last = log.maybe_append(2, 1, 3, [Entry(2, 3, data=b"e3"), *ents(3, 3, start=4)])
    assert last == 5
    assert [log.term(i) for i in range(1, 6)] == [1, 1, 2, 3, 3]
    assert log.committed == 3
    assert log.unstable.offset == 4  # entry 3 was kept, not rewritten


def test_maybe_append_keeps_longer_log_when_entries_match() -> None:
    log = make_log(1, 1, 2, 2, 2)
    assert log.maybe_append(1, 1, 0, ents(1, 2, start=2)) == 3
    assert log.last_index() == 5  # a stale, shorter append must not truncate


def test_maybe_append_rejects_mismatching_prev() -> None:
    log = make_log(1, 1, 2)
    assert log.maybe_append(3, 1, 0, []) is None
    assert log.maybe_append(7, 2, 0, []) is None


def test_maybe_append_refuses_to_overwrite_committed() -> None:
    log = make_log(1, 1, 2)
    log.commit_to(3)
    assert log.maybe_append(1, 1, 3, ents(5, 5, start=2)) is None
    assert log.term(3) == 2
    with pytest.raises(ValueError):
        log.append(ents(5, start=2))


def test_commit_to_never_decreases_and_clamps() -> None:
    log = make_log(1, 1)
    log.commit_to(2)
    log.commit_to(1)
    assert log.committed == 2
    log.append(ents(1, start=3))
    log.commit_to(10)
    assert log.committed == 3


def test_maybe_commit_requires_the_term() -> None:
    log = make_log(1, 1, 2)
    assert not log.maybe_commit(3, 1)
    assert log.maybe_commit(2, 1)
    assert not log.maybe_commit(2, 1)


def test_committed_entries_are_handed_out_only_when_durable() -> None:
    log = make_log(1, 1)
    log.append(ents(1, 1, start=3))
    log.commit_to(4)
    assert [e.index for e in log.next_committed_ents()] == [1, 2]
    log.storage.append(log.unstable.next_entries())  # type: ignore[attr-defined]
    log.stable_to(4, 1)
    assert [e.index for e in log.next_committed_ents()] == [1, 2, 3, 4]
    log.accept_applying(log.next_committed_ents())
    assert log.applying == 4 and not log.has_next_committed_ents()
    log.applied_to(9)  # clamps to what was handed out
    assert log.applied == 4


def test_applying_budget_pauses_hand_out_until_applied() -> None:
    st = MemoryStorage()
    st.append([Entry(term=1, index=i, data=b"x" * 84) for i in range(1, 6)])
    log = RaftLog(st, 250)
    log.commit_to(5)
    first = log.next_committed_ents()
    assert [e.index for e in first] == [1, 2]
    log.accept_applying(first)
    assert [e.index for e in log.next_committed_ents()] == [3]
    log.accept_applying(log.next_committed_ents())
    assert not log.has_next_committed_ents()  # 300 bytes outstanding
    log.applied_to(2)
    assert log.has_next_committed_ents()
    log.applied_to(1)  # already applied: no-op
    assert log.applied == 2


def test_restore_and_pending_snapshot_blocks_application() -> None:
    log = make_log(1, 1, 1)
    log.commit_to(2)
    meta = SnapshotMeta(index=9, term=4)
    log.restore(meta)
    assert log.committed == 9 and log.has_pending_snapshot()
    assert log.first_index() == 10 and log.last_index() == 9 and log.term(9) == 4
    assert not log.has_next_committed_ents()
    assert log.snapshot() == meta
    log.stable_snap_to(9)
    log.applied_snapshot(9)
    assert not log.has_pending_snapshot()
    assert log.applied == log.applying == 9


def test_is_up_to_date() -> None:
    log = make_log(1, 2, 2)
    assert log.is_up_to_date(3, 2)
    assert log.is_up_to_date(1, 3)
    assert not log.is_up_to_date(2, 2)
    assert not log.is_up_to_date(9, 1)
