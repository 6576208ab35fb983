"""Helpers for driving one :class:`RaftCore` by hand in unit tests."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

import attrs

from trioraft.core.config import CoreConfig
from trioraft.core.messages import Message
from trioraft.core.raft import RaftCore
from trioraft.core.ready import ReadState
from trioraft.core.storage import MemoryStorage
from trioraft.core.types import ConfState, Entry, HardState

M = TypeVar("M")


def ents(*terms: int, start: int = 1) -> list[Entry]:
    """Entries with the given terms at consecutive indexes from ``start``."""
    return [Entry(term=t, index=start + i, data=b"e%d" % (start + i)) for i, t in enumerate(terms)]


def make_storage(
    voters: Iterable[int] = (1, 2, 3),
    learners: Iterable[int] = (),
    *,
    log: Sequence[Entry] = (),
    hs: HardState | None = None,
) -> MemoryStorage:
    """A storage holding ``log`` and ``hs`` with the given configuration."""
    st = MemoryStorage()
    st.set_conf_state(ConfState(voters=frozenset(voters), learners=frozenset(learners)))
    st.append(list(log))
    if hs is not None:
        st.set_hard_state(hs)
    return st


def make_core(
    node_id: int = 1,
    voters: Iterable[int] = (1, 2, 3),
    learners: Iterable[int] = (),
    *,
    log: Sequence[Entry] = (),
    hs: HardState | None = None,
    **overrides: Any,
) -> tuple[RaftCore, MemoryStorage]:
    """A core over a fresh storage (pre-vote and check-quorum off unless overridden)."""
    st = make_storage(voters, learners, log=log, hs=hs)
    fields: dict[str, Any] = {"pre_vote": False, "check_quorum": False, **overrides}
    return RaftCore(CoreConfig(id=node_id, **fields), st), st


@attrs.define
class Drained:
    """Everything a sequence of Readies produced."""

    messages: list[Message] = attrs.Factory(list)
    committed: list[Entry] = attrs.Factory(list)
    read_states: list[ReadState] = attrs.Factory(list)
    entries: list[Entry] = attrs.Factory(list)
    hard_states: list[HardState] = attrs.Factory(list)

    def of(self, cls: type[M]) -> list[M]:
        """Messages of one type."""
        return [m for m in self.messages if isinstance(m, cls)]


def drain(core: RaftCore, st: MemoryStorage, *, apply: bool = True) -> Drained:
    """Take every Ready, persist it into ``st``, acknowledge, and apply committed entries."""
    out = Drained()
    while core.has_ready():
        rd = core.ready()
        out.messages.extend(rd.messages)
        out.read_states.extend(rd.read_states)
        if rd.snapshot is not None:
            st.apply_snapshot(rd.snapshot)
        st.append(rd.entries)
        out.entries.extend(rd.entries)
        if rd.hard_state is not None:
            st.set_hard_state(rd.hard_state)
            out.hard_states.append(rd.hard_state)
        core.on_persisted(rd.number)
        out.messages.extend(rd.persisted_messages)
        out.committed.extend(rd.committed_entries)
        if apply and rd.committed_entries:
            core.on_applied(rd.committed_entries[-1].index)
    return out


def elect(core: RaftCore, st: MemoryStorage) -> Drained:
    """Make ``core`` win an election by granting it every vote it asks for; returns what it
    produced from the moment it won (the no-op entry and the first appends)."""
    from trioraft.core.messages import VoteRequest, VoteResponse

    core.campaign()
    d = drain(core, st)
    for _ in range(2):  # a pre-vote round, then the real one
        reqs = d.of(VoteRequest)
        if not reqs:
            break
        for req in reqs:
            core.step(
                VoteResponse(
                    src=req.dst, dst=core.id, term=req.term, granted=True, pre_vote=req.pre_vote
                )
            )
        d = drain(core, st)
    return d
