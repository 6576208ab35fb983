"""CoreConfig validation, the seeded RNG and cluster bootstrap."""

from __future__ import annotations

from typing import Any

import pytest

from trioraft.core.bootstrap import BOOTSTRAP_TERM, bootstrap_state
from trioraft.core.config import CoreConfig, ReadOnlyOption
from trioraft.core.encoding import decode_conf_change
from trioraft.core.raft import RaftCore
from trioraft.core.rng import SplitMix64
from trioraft.core.storage import MemoryStorage
from trioraft.core.types import ConfChangeType, ConfState, EntryKind
from trioraft.errors import ConfigError


@pytest.mark.parametrize(
    ("fields", "bad"),
    [
        ({"id": 0}, "id"),
        ({"heartbeat_ticks": 0}, "heartbeat_ticks"),
        ({"election_ticks": 1, "heartbeat_ticks": 1}, "election_ticks"),
        ({"max_inflight_msgs": 0}, "max_inflight_msgs"),
        ({"max_msg_bytes": 0}, "max_msg_bytes"),
        ({"max_inflight_bytes": -1}, "max_inflight_bytes"),
        ({"max_inflight_bytes": 10, "max_msg_bytes": 100}, "max_inflight_bytes"),
        ({"max_uncommitted_bytes": -1}, "max_uncommitted_bytes"),
        ({"max_committed_bytes_per_ready": -1}, "max_committed_bytes_per_ready"),
        ({"applied": -1}, "applied"),
        ({"read_only": 1}, "read_only"),
        ({"read_only": ReadOnlyOption.LEASE_BASED, "check_quorum": False}, "read_only"),
    ],
)
def test_invalid_config_names_the_field(fields: dict[str, Any], bad: str) -> None:
    cfg = CoreConfig(**{"id": 1, **fields})
    with pytest.raises(ConfigError) as exc:
        cfg.validate()
    assert exc.value.field == bad


def test_defaults_validate_and_budget_defaults_to_64_messages() -> None:
    cfg = CoreConfig(id=3)
    cfg.validate()
    assert cfg.committed_bytes_budget == cfg.max_msg_bytes * 64
    assert CoreConfig(id=3, max_committed_bytes_per_ready=7).committed_bytes_budget == 7


def test_core_rejects_invalid_config_and_inconsistent_storage() -> None:
    with pytest.raises(ConfigError):
        RaftCore(CoreConfig(id=0), MemoryStorage())
    st = MemoryStorage()
    st.set_conf_state(ConfState(voters=frozenset({1}), learners=frozenset({1})))
    with pytest.raises(ConfigError) as exc:
        RaftCore(CoreConfig(id=1), st)
    assert exc.value.field == "storage"


def test_splitmix64_is_deterministic_and_bounded() -> None:
    a, b = SplitMix64(7), SplitMix64(7)
    assert [a.next_u64() for _ in range(5)] == [b.next_u64() for _ in range(5)]
    r = SplitMix64(1)
    values = [r.below(3) for _ in range(300)]
    assert set(values) == {0, 1, 2}
    assert SplitMix64(0).below(1) == 0
    with pytest.raises(ValueError):
        r.below(0)


def test_bootstrap_state_writes_one_conf_change_per_member() -> None:
    entries, hs = bootstrap_state([3, 1, 2], learners=[5])
    assert [e.index for e in entries] == [1, 2, 3, 4]
    assert all(e.term == BOOTSTRAP_TERM and e.kind == EntryKind.CONF_CHANGE for e in entries)
    changes = [decode_conf_change(e.data).changes[0] for e in entries]
    assert [(c.type, c.node_id) for c in changes] == [
        (ConfChangeType.ADD_VOTER, 1),
        (ConfChangeType.ADD_VOTER, 2),
        (ConfChangeType.ADD_VOTER, 3),
        (ConfChangeType.ADD_LEARNER, 5),
    ]
    assert (hs.term, hs.commit) == (BOOTSTRAP_TERM, 4)


@pytest.mark.parametrize(("voters", "learners"), [([], []), ([0, 1], []), ([1, 2], [2])])
def test_bootstrap_state_rejects_bad_members(voters: list[int], learners: list[int]) -> None:
    with pytest.raises(ConfigError):
        bootstrap_state(voters, learners)


def test_bootstrapped_core_applies_its_configuration_then_campaigns() -> None:
    entries, hs = bootstrap_state([1])
    st = MemoryStorage()
    st.append(entries)
    st.set_hard_state(hs)
    core = RaftCore(CoreConfig(id=1), st)
    core.campaign()  # not yet a member: the bootstrap entries are not applied
    assert core.term == 1
    rd = core.ready()
    assert [e.index for e in rd.committed_entries] == [1]
    core.on_applied(1)
    assert core.conf_state.voters == {1}
    core.campaign()
    rd = core.ready()
    core.on_persisted(rd.number)
    assert core.leader == 1 and core.term == 2
