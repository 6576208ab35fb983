"""Applying membership changes to configurations (simple, joint, leave, learners)."""

from __future__ import annotations

import pytest

from trioraft.core.confchange import (
    ConfChangeError,
    apply_conf_change,
    check_invariants,
    enter_joint,
    leave_joint,
    restore,
    simple,
    uses_joint,
)
from trioraft.core.quorum import JointConfig, MajorityConfig
from trioraft.core.tracker import TrackerConfig
from trioraft.core.types import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeTransition,
    ConfChangeType,
    ConfState,
)

V = ConfChangeType.ADD_VOTER
L = ConfChangeType.ADD_LEARNER
R = ConfChangeType.REMOVE


def cfg(voters: set[int], learners: set[int] = set()) -> TrackerConfig:  # noqa: B006
    return restore(ConfState(voters=frozenset(voters), learners=frozenset(learners)))


def ch(t: ConfChangeType, node: int) -> ConfChangeSingle:
    return ConfChangeSingle(t, node)


def test_simple_add_and_remove_voter() -> None:
    c = simple(cfg({1, 2, 3}), [ch(V, 4)])
    assert c.voters.incoming.voters == {1, 2, 3, 4}
    c = simple(c, [ch(R, 2)])
    assert c.voters.incoming.voters == {1, 3, 4}
    assert not c.voters.joint


def test_simple_rejects_more_than_one_voter_change() -> None:
    with pytest.raises(ConfChangeError, match="more than one voter"):
        simple(cfg({1, 2, 3}), [ch(V, 4), ch(V, 5)])


def test_simple_allows_learner_changes_alongside_one_voter() -> None:
    c = simple(cfg({1, 2, 3}), [ch(V, 4), ch(L, 5), ch(L, 6)])
    assert c.voters.incoming.voters == {1, 2, 3, 4} and c.learners == {5, 6}


def test_add_learner_then_promote() -> None:
    c = simple(cfg({1, 2, 3}), [ch(L, 4)])
    assert c.learners == {4} and 4 not in c.voters.ids()
    c = simple(c, [ch(L, 4)])  # idempotent
    assert c.learners == {4}
    c = simple(c, [ch(V, 4)])
    assert c.learners == frozenset() and 4 in c.voters.incoming.voters


def test_demoting_a_voter_in_a_simple_change() -> None:
    c = simple(cfg({1, 2, 3}), [ch(L, 3)])
    assert c.voters.incoming.voters == {1, 2} and c.learners == {3}


def test_removing_all_voters_is_refused() -> None:
    with pytest.raises(ConfChangeError, match="all voters"):
        simple(cfg({1}), [ch(R, 1)])


def test_node_zero_is_ignored() -> None:
    assert simple(cfg({1}), [ch(V, 0)]) == cfg({1})


def test_enter_and_leave_joint() -> None:
    c = enter_joint(cfg({1, 2, 3}), True, [ch(V, 4), ch(V, 5), ch(R, 1)])
    assert c.voters.joint
    assert c.voters.incoming.voters == {2, 3, 4, 5}
    assert c.voters.outgoing.voters == {1, 2, 3}
    assert c.auto_leave
    c = leave_joint(c)
    assert not c.voters.joint and c.voters.incoming.voters == {2, 3, 4, 5}
    assert not c.auto_leave


def test_demotion_through_joint_uses_learners_next() -> None:
    c = enter_joint(cfg({1, 2, 3}), False, [ch(L, 3)])
    assert c.learners_next == {3} and c.learners == frozenset()
    assert 3 in c.voters.outgoing.voters
    c = leave_joint(c)
    assert c.learners == {3} and c.learners_next == frozenset()
    assert 3 not in c.voters.ids()


def test_joint_errors() -> None:
    joint = enter_joint(cfg({1, 2, 3}), False, [ch(V, 4)])
    with pytest.raises(ConfChangeError, match="already joint"):
        enter_joint(joint, False, [ch(V, 5)])
    with pytest.raises(ConfChangeError, match="simple change in a joint"):
        simple(joint, [ch(V, 5)])
    with pytest.raises(ConfChangeError, match="non-joint"):
        leave_joint(cfg({1, 2, 3}))
    with pytest.raises(ConfChangeError, match="zero-voter"):
        enter_joint(cfg(set()), False, [ch(V, 1)])


def test_uses_joint() -> None:
    assert uses_joint(ConfChange(changes=(ch(V, 4),))) == (False, False)
    assert uses_joint(ConfChange(changes=(ch(V, 4), ch(V, 5)))) == (True, True)
    explicit = ConfChange(changes=(ch(V, 4),), transition=ConfChangeTransition.JOINT_EXPLICIT)
    assert uses_joint(explicit) == (True, False)
    implicit = ConfChange(changes=(ch(V, 4),), transition=ConfChangeTransition.JOINT_IMPLICIT)
    assert uses_joint(implicit) == (True, True)


def test_apply_conf_change_dispatches() -> None:
    c = apply_conf_change(cfg({1, 2, 3}), ConfChange(changes=(ch(V, 4), ch(V, 5))))
    assert c.voters.joint and c.auto_leave
    c = apply_conf_change(c, ConfChange())
    assert not c.voters.joint
    c = apply_conf_change(c, ConfChange(changes=(ch(R, 5),)))
    assert c.voters.incoming.voters == {1, 2, 3, 4}


@pytest.mark.parametrize(
    "bad",
    [
        TrackerConfig(voters=JointConfig(MajorityConfig.of({1, 2}))).__class__(
            voters=JointConfig(MajorityConfig.of({1, 2})), learners=frozenset({2})
        ),
        TrackerConfig(voters=JointConfig(MajorityConfig.of({1, 2})), learners_next=frozenset({2})),
        TrackerConfig(voters=JointConfig(MajorityConfig.of({1, 2})), auto_leave=True),
        TrackerConfig(
            voters=JointConfig(MajorityConfig.of({1}), MajorityConfig.of({1, 2})),
            learners=frozenset({3}),
            learners_next=frozenset({3}),
        ),
    ],
)
def test_invariants_reject_inconsistent_configs(bad: TrackerConfig) -> None:
    with pytest.raises(ConfChangeError):
        check_invariants(bad)


def test_restore_round_trips_conf_state() -> None:
    cs = ConfState(
        voters=frozenset({1, 2}),
        learners=frozenset({5}),
        voters_outgoing=frozenset({1, 2, 3}),
        learners_next=frozenset({3}),
        auto_leave=True,
    )
    c = restore(cs)
    assert c.to_conf_state() == cs
    assert c.all_ids() == {1, 2, 3, 5}
    assert "autoleave" in str(c) and "learners_next" in str(c) and "&&" in str(c)
