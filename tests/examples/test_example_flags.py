"""raftexample-compatible flags and the status document of the examples."""

from __future__ import annotations

import pytest

from examples.common.flags import parse_flags, raft_address
from examples.common.runner import build_config, status_document
from trioraft.core.types import ConfState

CLUSTER = "http://127.0.0.1:12379,http://127.0.0.1:22379,http://127.0.0.1:32379"


def test_raftexample_flags_and_defaults() -> None:
    f = parse_flags(["--id", "2", "--cluster", CLUSTER, "--port", "22380"], prog="x", name="kv")
    assert f.id == 2
    assert f.raft_url == "http://127.0.0.1:22379"
    assert f.port == 22380
    assert f.data_dir == "kv-2"
    assert not f.join
    assert f.peers() == {1: "127.0.0.1:12379", 2: "127.0.0.1:22379", 3: "127.0.0.1:32379"}
    assert f.snapshot_entries is None and f.snapshot_interval == 0
    c = parse_flags(
        ["--join", "--snapshot-entries", "7"], prog="x", name="counter", snapshot_interval=30
    )
    assert c.data_dir == "counter-1" and c.join and c.snapshot_interval == 30
    assert c.snapshot_entries == 7


@pytest.mark.parametrize(
    "argv",
    [
        ["--id", "4", "--cluster", CLUSTER],
        ["--id", "0"],
        ["--cluster", "http://127.0.0.1"],
        ["--cluster", "http://a:1,http://a:1"],
        ["--port", "70000"],
        ["--snapshot-entries", "-1"],
        ["--tick-ms", "0"],
        ["--log-level", "LOUD"],
        ["--id", "x"],
    ],
)
def test_bad_flags_exit_with_usage(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_flags(argv, prog="x", name="kv")
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_raft_address() -> None:
    assert raft_address("http://127.0.0.1:5") == "127.0.0.1:5"
    assert raft_address("127.0.0.1:5") == "127.0.0.1:5"
    assert raft_address("http://[::1]:5") == "[::1]:5"


def test_build_config_maps_flags() -> None:
    f = parse_flags(
        [
            "--id",
            "1",
            "--cluster",
            CLUSTER,
            "--snapshot-entries",
            "100",
            "--catchup-entries",
            "10",
            "--tick-ms",
            "20",
            "--snapshot-interval",
            "30",
        ],
        prog="x",
        name="kv",
    )
    cfg = build_config(f)
    assert cfg.id == 1 and cfg.snapshot_entries == 100 and cfg.catchup_entries == 10
    assert cfg.tick_interval == pytest.approx(0.02)
    assert cfg.snapshot_interval == 30
    assert cfg.peers[3] == "127.0.0.1:32379"


def test_status_document_has_fixed_keys_and_peers() -> None:
    raw = {
        "id": 1,
        "role": "LEADER",
        "term": 2,
        "leader": 1,
        "commit": 5,
        "applied": 5,
        "conf": ConfState(voters=frozenset({1, 2, 3}), learners=frozenset({4})),
        "progress": {2: {"state": "replicate", "match": 5, "next": 6}},
        "extra": b"\x01",
    }
    doc = status_document(raw, node_id=1, addresses={1: "a:1", 2: "a:2", 3: "a:3"})
    for key in (
        "id",
        "role",
        "term",
        "leader",
        "commit",
        "applied",
        "first_index",
        "last_index",
        "snapshot_index",
        "snapshots_installed",
        "snapshots_sent",
        "peers",
    ):
        assert key in doc
    assert doc["peers"]["2"] == {
        "address": "a:2",
        "member": "voter",
        "state": "replicate",
        "match": 5,
        "next": 6,
    }
    assert doc["peers"]["4"]["member"] == "learner"
    assert "1" not in doc["peers"]
    assert doc["extra"] == "01"
