"""Quorum arithmetic: majority and joint commit indexes and vote results."""

from __future__ import annotations

import pytest

from trioraft.core.quorum import INFINITE_INDEX, JointConfig, MajorityConfig, VoteResult


@pytest.mark.parametrize(
    ("voters", "acked", "expected"),
    [
        ({1}, {1: 5}, 5),
        ({1, 2, 3}, {1: 5, 2: 3, 3: 1}, 3),
        ({1, 2, 3}, {1: 5}, 0),
        ({1, 2, 3, 4}, {1: 9, 2: 7, 3: 4, 4: 1}, 4),
        ({1, 2, 3, 4, 5}, {1: 9, 2: 9, 3: 2, 4: 2, 5: 1}, 2),
        ({1, 2, 3}, {1: 5, 2: 5, 7: 100}, 5),  # non-voters never count
    ],
)
def test_majority_committed_index(voters: set[int], acked: dict[int, int], expected: int) -> None:
    assert MajorityConfig.of(voters).committed_index(acked) == expected


def test_empty_majority_commits_everything_and_wins_every_vote() -> None:
    assert MajorityConfig().committed_index({1: 3}) == INFINITE_INDEX
    assert MajorityConfig().vote_result({}) == VoteResult.WON


@pytest.mark.parametrize(
    ("votes", "expected"),
    [
        ({}, VoteResult.PENDING),
        ({1: True}, VoteResult.PENDING),
        ({1: True, 2: True}, VoteResult.WON),
        ({1: True, 2: False}, VoteResult.PENDING),
        ({1: False, 2: False}, VoteResult.LOST),
        ({1: True, 2: False, 3: False}, VoteResult.LOST),
        ({1: True, 9: True}, VoteResult.PENDING),  # a non-voter's vote does not count
    ],
)
def test_majority_vote_result(votes: dict[int, bool], expected: VoteResult) -> None:
    assert MajorityConfig.of({1, 2, 3}).vote_result(votes) == expected


def test_joint_commit_is_the_minimum_of_both_halves() -> None:
    j = JointConfig(MajorityConfig.of({1, 2, 3}), MajorityConfig.of({3, 4, 5}))
    acked = {1: 10, 2: 10, 3: 4, 4: 2, 5: 1}
    assert j.committed_index(acked) == 2
    assert j.joint
    assert j.ids() == {1, 2, 3, 4, 5}


def test_joint_with_empty_outgoing_behaves_like_incoming() -> None:
    j = JointConfig(MajorityConfig.of({1, 2, 3}))
    assert not j.joint
    assert j.committed_index({1: 4, 2: 3, 3: 1}) == 3
    assert j.vote_result({1: True, 2: True}) == VoteResult.WON


@pytest.mark.parametrize(
    ("votes", "expected"),
    [
        ({1: True, 2: True, 4: True, 5: True}, VoteResult.WON),
        ({1: True, 2: True}, VoteResult.PENDING),  # incoming won, outgoing pending
        ({1: True, 2: True, 4: False, 5: False}, VoteResult.LOST),  # outgoing lost
        ({1: False, 2: False, 4: True, 5: True}, VoteResult.LOST),  # incoming lost
        ({}, VoteResult.PENDING),
    ],
)
def test_joint_vote_result(votes: dict[int, bool], expected: VoteResult) -> None:
    j = JointConfig(MajorityConfig.of({1, 2, 3}), MajorityConfig.of({3, 4, 5}))
    assert j.vote_result(votes) == expected
