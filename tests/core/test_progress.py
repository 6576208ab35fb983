"""Per-follower Progress and the inflight window."""

from __future__ import annotations

import pytest

from trioraft.core.progress import Inflights, Progress, ProgressState
from trioraft.core.tracker import ProgressTracker, TrackerConfig
from trioraft.core.types import ConfState


def test_inflights_full_by_count_and_freed_by_acknowledgement() -> None:
    inf = Inflights(3)
    for i in (5, 7, 9):
        assert not inf.full()
        inf.add(i, 10)
    assert inf.full() and len(inf) == 3
    inf.free_le(6)
    assert len(inf) == 2 and not inf.full()
    inf.free_le(100)
    assert len(inf) == 0 and inf.bytes == 0


def test_inflights_full_by_bytes() -> None:
    inf = Inflights(100, max_bytes=50)
    inf.add(1, 30)
    assert not inf.full()
    inf.add(2, 25)
    assert inf.full()
    inf.free_le(1)
    assert inf.bytes == 25 and not inf.full()


def test_inflights_reject_misuse() -> None:
    inf = Inflights(1)
    inf.add(3, 1)
    with pytest.raises(ValueError):
        inf.add(4, 1)
    inf.reset()
    inf.add(3, 1)
    inf.free_le(3)
    inf.add(5, 1)
    bad = Inflights(5)
    bad.add(4, 1)
    with pytest.raises(ValueError, match="increase"):
        bad.add(4, 1)


def test_become_probe_from_snapshot_probes_past_the_snapshot() -> None:
    pr = Progress(5, 10, match=3)
    pr.become_snapshot(20)
    assert pr.state == ProgressState.SNAPSHOT and pr.next == 21 and pr.is_paused()
    pr.become_probe()
    assert pr.state == ProgressState.PROBE and pr.next == 21 and pr.pending_snapshot == 0


def test_become_probe_after_failed_snapshot_probes_past_match() -> None:
    pr = Progress(5, 10, match=3)
    pr.become_snapshot(20)
    pr.pending_snapshot = 0  # what report_snapshot(ok=False) does
    pr.become_probe()
    assert pr.next == 4


def test_become_replicate_and_sent_entries_fill_the_window() -> None:
    pr = Progress(4, 2, match=3)
    pr.become_replicate()
    assert pr.next == 4 and not pr.is_paused()
    pr.sent_entries(3, 30)
    assert pr.next == 7 and not pr.is_paused()
    pr.sent_entries(1, 10)
    assert pr.next == 8 and pr.is_paused()  # window of 2 is full
    assert pr.maybe_update(6)
    pr.inflights.free_le(6)
    assert pr.match == 6 and not pr.is_paused()


def test_probe_pauses_after_one_append_with_entries() -> None:
    pr = Progress(4, 10, match=3)
    pr.sent_entries(0, 0)
    assert not pr.is_paused()
    pr.sent_entries(2, 20)
    assert pr.is_paused() and pr.next == 4  # probing does not advance next optimistically


def test_maybe_update_only_moves_forward() -> None:
    pr = Progress(10, 10, match=5)
    assert not pr.maybe_update(5)
    assert not pr.maybe_update(2)
    assert pr.maybe_update(12)
    assert pr.match == 12 and pr.next == 13


def test_maybe_decr_to_in_replicate_ignores_stale_rejections() -> None:
    pr = Progress(10, 10, match=5)
    pr.become_replicate()
    pr.sent_entries(4, 40)
    assert not pr.maybe_decr_to(5, 5)  # rejection of something already matched
    assert pr.maybe_decr_to(8, 2)
    assert pr.next == 6  # back to match + 1


def test_maybe_decr_to_in_probe_uses_the_hint() -> None:
    pr = Progress(10, 10, match=2)
    assert not pr.maybe_decr_to(5, 1)  # not the probe we sent (next - 1 == 9)
    assert pr.maybe_decr_to(9, 6)
    assert pr.next == 7
    pr.msg_app_flow_paused = True
    assert pr.maybe_decr_to(6, 0)
    assert pr.next == 3 and not pr.msg_app_flow_paused  # never below match + 1


def test_can_bump_commit() -> None:
    pr = Progress(10, 10, match=5)
    assert pr.can_bump_commit(4)
    pr.sent_commit = 9
    assert not pr.can_bump_commit(12)  # already sent a commit covering next - 1
    pr.sent_commit = 4
    assert not pr.can_bump_commit(4)
    assert "probe" in repr(pr)


def test_tracker_set_config_adds_and_removes_progress() -> None:
    trk = ProgressTracker(4)
    trk.set_config(TrackerConfig.from_conf_state(ConfState(voters=frozenset({1, 2}))), 7)
    assert set(trk.progress) == {1, 2}
    assert trk.progress[2].next == 7 and trk.progress[2].recent_active
    trk.set_config(
        TrackerConfig.from_conf_state(ConfState(voters=frozenset({1}), learners=frozenset({3}))),
        9,
    )
    assert set(trk.progress) == {1, 3}
    assert trk.progress[3].is_learner
    assert trk.conf_state().learners == {3}


def test_tracker_quorum_active_ignores_learners() -> None:
    trk = ProgressTracker(4)
    trk.set_config(
        TrackerConfig.from_conf_state(
            ConfState(voters=frozenset({1, 2, 3}), learners=frozenset({4, 5}))
        ),
        1,
    )
    for pr in trk.progress.values():
        pr.recent_active = False
    trk.progress[1].recent_active = True
    trk.progress[4].recent_active = True
    trk.progress[5].recent_active = True
    assert not trk.quorum_active()
    trk.progress[2].recent_active = True
    assert trk.quorum_active()


def test_tracker_votes_count_only_voters_and_first_answer() -> None:
    trk = ProgressTracker(4)
    trk.set_config(
        TrackerConfig.from_conf_state(
            ConfState(voters=frozenset({1, 2, 3}), learners=frozenset({4}))
        ),
        1,
    )
    trk.record_vote(1, True)
    trk.record_vote(4, True)
    assert trk.tally_votes()[0] == 1
    trk.record_vote(2, False)
    trk.record_vote(2, True)  # a second answer from the same node is ignored
    granted, rejected, _ = trk.tally_votes()
    assert (granted, rejected) == (1, 1)
    assert not trk.is_singleton()


def test_tracker_committed_is_the_quorum_rule_in_every_configuration() -> None:
    # The non-joint fast path of committed() must agree with the quorum code's own rule,
    # including learners (ignored), voters without progress (0) and joint configurations.
    import os
    import random

    from trioraft.core.quorum import INFINITE_INDEX

    seed = int(os.environ.get("TRIORAFT_SEED") or random.randrange(2**32))
    print(f"TRIORAFT_SEED={seed}")
    rng = random.Random(seed)
    for _ in range(500):
        ids = list(range(1, rng.randrange(2, 8)))
        voters = frozenset(rng.sample(ids, rng.randrange(0, len(ids) + 1)))
        outgoing = (
            frozenset(rng.sample(ids, rng.randrange(1, len(ids) + 1)))
            if rng.random() < 0.3
            else frozenset()
        )
        learners = frozenset(i for i in ids if i not in voters and i not in outgoing)
        cs = ConfState(voters=voters, voters_outgoing=outgoing, learners=learners)
        trk = ProgressTracker(4)
        trk.set_config(TrackerConfig.from_conf_state(cs), 1)
        for pr in trk.progress.values():
            pr.match = rng.choice([0, 1, 5, 9, 2**40])
        if trk.progress and rng.random() < 0.2:
            del trk.progress[rng.choice(sorted(trk.progress))]
        acked = {i: pr.match for i, pr in trk.progress.items()}
        expected = trk.config.voters.committed_index(acked)
        assert trk.committed() == expected, (cs, acked)
        if not voters and not outgoing:
            assert expected == INFINITE_INDEX
