"""Bootstrapping a brand-new cluster.

The initial configuration is written into the log (as etcd does), not only into the storage's
conf state: a node that joins later and catches up from the log replays these entries first, so
it learns the full configuration before any later change. Every initial member must start from
the same :func:`bootstrap_state`; nodes that join later start from an empty storage.
"""

from __future__ import annotations

from collections.abc import Iterable

from trioraft.core.encoding import encode_conf_change
from trioraft.core.types import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeType,
    Entry,
    EntryKind,
    HardState,
    NodeId,
)
from trioraft.errors import ConfigError

__all__ = ["BOOTSTRAP_TERM", "bootstrap_state"]

#: The term of the bootstrap entries; the first election runs at term 2.
BOOTSTRAP_TERM = 1


def bootstrap_state(
    voters: Iterable[NodeId], learners: Iterable[NodeId] = ()
) -> tuple[list[Entry], HardState]:
    """The initial log and hard state shared by every founding member.

    One single-node conf-change entry per member (voters first, in id order), all at term
    :data:`BOOTSTRAP_TERM` and committed. Persist both on first start (WAL and MemoryStorage);
    the core applies them like any other committed conf change.

    Raises:
        ConfigError: no voters, an id <= 0, or an id that is both voter and learner.
    """
    v = sorted(set(voters))
    lrn = sorted(set(learners))
    if not v:
        raise ConfigError("voters", "a cluster needs at least one voter")
    if any(i <= 0 for i in (*v, *lrn)):
        raise ConfigError("voters", "node ids must be positive")
    if set(v) & set(lrn):
        raise ConfigError("learners", "a node cannot be both voter and learner")
    changes = [(ConfChangeType.ADD_VOTER, i) for i in v] + [
        (ConfChangeType.ADD_LEARNER, i) for i in lrn
    ]
    entries = [
        Entry(
            term=BOOTSTRAP_TERM,
            index=n,
            kind=EntryKind.CONF_CHANGE,
            data=encode_conf_change(ConfChange(changes=(ConfChangeSingle(t, i),))),
        )
        for n, (t, i) in enumerate(changes, start=1)
    ]
    return entries, HardState(term=BOOTSTRAP_TERM, vote=0, commit=len(entries))
