"""Applying a :class:`ConfChange` to a configuration, as pure functions of
:class:`TrackerConfig` (after etcd's ``confchange.Changer``).

* A *simple* change alters at most one voter and applies directly (single-server change).
* Entering a *joint* configuration copies the voters to the outgoing half and applies every
  change to the incoming half; both halves must then agree on every decision. With ``auto_leave``
  the leader proposes the empty change that leaves the joint configuration as soon as the entering
  change is applied.
* Leaving the joint configuration drops the outgoing half and turns ``learners_next`` (voters
  demoted while joint) into learners.

Invariants checked after every change: learners are never voters; ``learners_next`` are outgoing
voters only; a non-joint configuration has no ``learners_next`` and no ``auto_leave``.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from trioraft.core.quorum import JointConfig, MajorityConfig
from trioraft.core.tracker import TrackerConfig
from trioraft.core.types import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeTransition,
    ConfChangeType,
    ConfState,
)

__all__ = [
    "ConfChangeError",
    "apply_conf_change",
    "check_invariants",
    "enter_joint",
    "leave_joint",
    "restore",
    "simple",
    "uses_joint",
]


class ConfChangeError(ValueError):
    """The change cannot be applied to the configuration."""


def check_invariants(cfg: TrackerConfig) -> None:
    """Raise :class:`ConfChangeError` if ``cfg`` is inconsistent."""
    voters = cfg.voters.ids()
    both = cfg.learners & voters
    if both:
        raise ConfChangeError(f"{sorted(both)} are both learners and voters")
    stray = cfg.learners_next - cfg.voters.outgoing.voters
    if stray:
        raise ConfChangeError(f"learners_next {sorted(stray)} are not outgoing voters")
    if cfg.learners_next & cfg.learners:
        raise ConfChangeError("a node is in both learners and learners_next")
    if not cfg.voters.joint:
        if cfg.learners_next:
            raise ConfChangeError("learners_next outside a joint configuration")
        if cfg.auto_leave:
            raise ConfChangeError("auto_leave outside a joint configuration")


def restore(cs: ConfState) -> TrackerConfig:
    """The configuration described by ``cs`` (from a snapshot or storage).

    Raises:
        ConfChangeError: ``cs`` is inconsistent.
    """
    cfg = TrackerConfig.from_conf_state(cs)
    check_invariants(cfg)
    return cfg


def _apply_changes(cfg: TrackerConfig, changes: Iterable[ConfChangeSingle]) -> TrackerConfig:
    incoming = set(cfg.voters.incoming.voters)
    outgoing = cfg.voters.outgoing.voters
    learners = set(cfg.learners)
    learners_next = set(cfg.learners_next)
    for ch in changes:
        node = ch.node_id
        if node == 0:
            continue  # id 0 means "no node"; etcd ignores it the same way
        if ch.type == ConfChangeType.ADD_VOTER:
            incoming.add(node)
            learners.discard(node)
            learners_next.discard(node)
        elif ch.type == ConfChangeType.ADD_LEARNER:
            if node in learners:
                continue
            incoming.discard(node)
            learners_next.discard(node)
            # A node still voting in the outgoing half becomes a learner only on leaving.
            if node in outgoing:
                learners_next.add(node)
            else:
                learners.add(node)
        elif ch.type == ConfChangeType.REMOVE:
            incoming.discard(node)
            learners.discard(node)
            learners_next.discard(node)
        else:  # pragma: no cover - enum is closed
            raise ConfChangeError(f"unknown change type {ch.type!r}")
    if not incoming:
        raise ConfChangeError("removed all voters")
    return attrs.evolve(
        cfg,
        voters=JointConfig(MajorityConfig(frozenset(incoming)), cfg.voters.outgoing),
        learners=frozenset(learners),
        learners_next=frozenset(learners_next),
    )


def simple(cfg: TrackerConfig, changes: Iterable[ConfChangeSingle]) -> TrackerConfig:
    """Apply a change touching at most one voter.

    Raises:
        ConfChangeError: joint configuration, more than one voter changed, or invalid result.
    """
    if cfg.voters.joint:
        raise ConfChangeError("cannot apply a simple change in a joint configuration")
    new = _apply_changes(cfg, changes)
    changed = new.voters.incoming.voters ^ cfg.voters.incoming.voters
    if len(changed) > 1:
        raise ConfChangeError("more than one voter changed without entering joint consensus")
    check_invariants(new)
    return new


def enter_joint(
    cfg: TrackerConfig, auto_leave: bool, changes: Iterable[ConfChangeSingle]
) -> TrackerConfig:
    """Enter a joint configuration (old voters outgoing, changed voters incoming).

    Raises:
        ConfChangeError: already joint, no voters, or invalid result.
    """
    if cfg.voters.joint:
        raise ConfChangeError("configuration is already joint")
    if not cfg.voters.incoming.voters:
        raise ConfChangeError("cannot make a zero-voter configuration joint")
    start = attrs.evolve(cfg, voters=JointConfig(cfg.voters.incoming, cfg.voters.incoming))
    new = attrs.evolve(_apply_changes(start, changes), auto_leave=auto_leave)
    check_invariants(new)
    return new


def leave_joint(cfg: TrackerConfig) -> TrackerConfig:
    """Leave the joint configuration.

    Raises:
        ConfChangeError: not in a joint configuration.
    """
    if not cfg.voters.joint:
        raise ConfChangeError("cannot leave a non-joint configuration")
    new = TrackerConfig(
        voters=JointConfig(cfg.voters.incoming, MajorityConfig()),
        learners=cfg.learners | cfg.learners_next,
        learners_next=frozenset(),
        auto_leave=False,
    )
    check_invariants(new)
    return new


def uses_joint(cc: ConfChange) -> tuple[bool, bool]:
    """(joint?, auto_leave?) for a non-empty change: AUTO with one change is simple; AUTO with
    several changes, and the explicit joint transitions, go through joint consensus."""
    if cc.transition == ConfChangeTransition.AUTO and len(cc.changes) <= 1:
        return False, False
    return True, cc.transition != ConfChangeTransition.JOINT_EXPLICIT


def apply_conf_change(cfg: TrackerConfig, cc: ConfChange) -> TrackerConfig:
    """Apply ``cc`` to ``cfg`` and return the new configuration.

    Raises:
        ConfChangeError: the change is not valid for ``cfg``.
    """
    if cc.leave_joint:
        return leave_joint(cfg)
    joint, auto_leave = uses_joint(cc)
    if joint:
        return enter_joint(cfg, auto_leave, cc.changes)
    return simple(cfg, cc.changes)
