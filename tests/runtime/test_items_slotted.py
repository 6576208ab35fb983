"""The hot-path runtime items that are plain slotted classes (not attrs) keep the attrs
constructor signature (positional and keyword) and a readable repr, and take no other fields."""

from __future__ import annotations

import pytest

from trioraft.core.types import Entry, HardState
from trioraft.runtime.items import PersistJob, ProposeReq
from trioraft.runtime.proposals import Future


def test_persist_job_constructor_and_repr() -> None:
    hs = HardState(term=2, vote=1, commit=3)
    e = Entry(2, 4, data=b"x")
    pos = PersistJob(7, hs, (e,), None, ())
    kw = PersistJob(number=7, hard_state=hs, entries=(e,), snapshot=None, messages=(), acked=True)
    assert (pos.number, pos.hard_state, pos.entries, pos.snapshot, pos.messages) == (
        7,
        hs,
        (e,),
        None,
        (),
    )
    assert not pos.acked and kw.acked
    assert "number=7" in repr(kw) and "acked=True" in repr(kw)
    with pytest.raises(AttributeError):
        pos.other = 1  # type: ignore[attr-defined]


def test_propose_req_constructor_and_repr() -> None:
    fut: Future[object] = Future()
    req = ProposeReq(b"abc", fut)
    assert req.data == b"abc" and req.future is fut
    assert ProposeReq(data=b"", future=fut).data == b""
    assert "3 bytes" in repr(req)
    with pytest.raises(AttributeError):
        req.other = 1  # type: ignore[attr-defined]
