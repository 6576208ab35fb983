"""Config: documented defaults, validation naming the field, conversion to the core config."""

from __future__ import annotations

import pytest

from trioraft.config import Config
from trioraft.errors import ConfigError


def test_defaults_follow_etcd_and_jraft() -> None:
    c = Config(id=1)
    assert c.tick_interval == 0.1
    assert (c.election_ticks, c.heartbeat_ticks) == (10, 1)
    assert c.pre_vote and c.check_quorum
    assert c.read_mode == "safe"
    assert c.snapshot_entries == 10000
    assert c.catchup_entries == 5000
    assert c.snapshot_interval is None
    assert c.max_inflight_msgs == 256
    assert c.max_msg_bytes == 1 << 20
    assert c.snapshot_chunk_bytes == 1 << 20
    assert c.snapshot_retention == 2
    assert c.snapshot_throttle_bytes_per_s is None
    assert c.fsync is True
    assert c.election_timeout == pytest.approx(1.0)
    assert c.initial_voters() == frozenset({1})


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"id": 0}, "id"),
        ({"id": 1, "tick_interval": 0}, "tick_interval"),
        ({"id": 1, "election_ticks": 1, "heartbeat_ticks": 1}, "election_ticks"),
        ({"id": 1, "heartbeat_ticks": 0}, "heartbeat_ticks"),
        ({"id": 1, "read_mode": "fast"}, "read_mode"),
        ({"id": 1, "read_mode": "lease", "check_quorum": False}, "read_mode"),
        ({"id": 1, "max_inflight_msgs": 0}, "max_inflight_msgs"),
        ({"id": 1, "snapshot_entries": -1}, "snapshot_entries"),
        ({"id": 1, "snapshot_interval": 0.0}, "snapshot_interval"),
        ({"id": 1, "snapshot_retention": 0}, "snapshot_retention"),
        ({"id": 1, "snapshot_chunk_bytes": 0}, "snapshot_chunk_bytes"),
        ({"id": 1, "snapshot_throttle_bytes_per_s": -5.0}, "snapshot_throttle_bytes_per_s"),
        ({"id": 1, "proposal_timeout": float("nan")}, "proposal_timeout"),
        ({"id": 1, "peers": {2: "a", 3: "b"}}, "peers"),
        ({"id": 1, "peers": {0: "a"}}, "peers"),
        ({"id": 1, "fsync": "yes"}, "fsync"),
        ({"id": True}, "id"),
    ],
)
def test_invalid_values_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field
    assert field in str(info.value)


def test_join_and_peers() -> None:
    c = Config(id=4, peers={1: "a", 2: "b", 3: "c"}, join=True)
    assert c.initial_voters() == frozenset()
    c = Config(id=2, peers={1: "a", 2: "b", 3: "c"})
    assert c.initial_voters() == frozenset({1, 2, 3})


def test_to_core_config() -> None:
    from trioraft.core.config import ReadOnlyOption

    c = Config(id=3, election_ticks=20, read_mode="lease", max_msg_bytes=4096, seed=None)
    core = c.to_core_config(applied=42)
    core.validate()
    assert core.id == 3
    assert core.election_ticks == 20
    assert core.read_only == ReadOnlyOption.LEASE_BASED
    assert core.max_msg_bytes == 4096
    assert core.applied == 42
    assert core.seed == 3  # derived from the id
    assert core.forward_proposals is False  # the runtime forwards with a call instead
