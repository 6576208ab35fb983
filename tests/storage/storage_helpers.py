"""Helpers shared by the storage tests."""

from __future__ import annotations

from trioraft.core.types import Entry, EntryKind


def ents(first: int, last: int, term: int = 1, tag: bytes = b"") -> list[Entry]:
    """Entries ``first..last`` (inclusive) of one term with recognisable data."""
    return [
        Entry(term, i, EntryKind.NORMAL, b"%s-%d-%d" % (tag, term, i))
        for i in range(first, last + 1)
    ]


def ids(entries: list[Entry]) -> list[tuple[int, int]]:
    """(index, term) pairs."""
    return [(e.index, e.term) for e in entries]
