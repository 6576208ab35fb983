"""Config's snapshot-streaming settings reach a transport built without its own options (the
tutorial builds one that way); a transport given its own keeps them, and the node says so."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from trioraft import Config, open_raft_node
from trioraft.runtime.disk import INLINE_DISK
from trioraft.runtime.transport.memory import MemoryNetwork
from trioraft.runtime.transport.streaming import StreamOptions
from trioraft.storage.fs import SimulatedFileSystem
from trioraft.testing.cluster import ListStateMachine

TUNED = {
    "snapshot_chunk_bytes": 256 * 1024,
    "snapshot_window_chunks": 2,
    "snapshot_throttle_bytes_per_s": 1_000_000.0,
    "snapshot_stall_timeout": 7.0,
}


async def _open(transport_kwargs: dict[str, object]) -> tuple[object, object]:
    net = MemoryNetwork(0)
    transport = net.transport(1, disk=INLINE_DISK, **transport_kwargs)
    config = Config(id=1, **TUNED)  # type: ignore[arg-type]
    async with open_raft_node(
        config,
        ListStateMachine(),
        data_dir="/d",
        transport=transport,
        fs=SimulatedFileSystem(),
        disk=INLINE_DISK,
    ):
        pass
    return transport, config


async def test_config_settings_reach_a_transport_built_without_its_own(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    transport, _ = await _open({})
    settings = transport._stream  # type: ignore[attr-defined]
    assert settings.options == StreamOptions(chunk_size=256 * 1024, window=2, stall_timeout=7.0)
    assert settings.throttle is not None
    assert "not used" not in caplog.text


async def test_a_transport_given_its_own_options_keeps_them_and_the_node_warns(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    own = StreamOptions(window=8)
    with caplog.at_level(logging.WARNING, logger="trioraft.runtime.node"):
        transport, _ = await _open({"stream_options": own})
    settings = transport._stream  # type: ignore[attr-defined]
    assert settings.options == own and settings.throttle is None
    assert "not used" in caplog.text


async def test_a_transport_given_the_configs_own_options_is_not_warned_about(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    config = Config(id=1, **TUNED)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="trioraft.runtime.node"):
        transport, _ = await _open(config.transport_options())
    assert transport._stream.throttle is not None  # type: ignore[attr-defined]
    assert "not used" not in caplog.text
