"""Node-level recovery on simulated disks: a damaged newest snapshot falls back to the older one
plus the WAL (contract 3), a failed fsync fails the node with StorageFailed, fsync=False runs."""

from __future__ import annotations

import errno

import pytest
import trio
import trio.testing

from trioraft import StorageFailed
from trioraft.config import Config
from trioraft.node import open_raft_node
from trioraft.runtime.disk import INLINE_DISK
from trioraft.runtime.transport.memory import MemoryNetwork
from trioraft.storage.fs import SimulatedFileSystem
from trioraft.testing.cluster import ListStateMachine, open_cluster


async def test_damaged_newest_snapshot_falls_back_to_the_older_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster(1, snapshot_entries=0, catchup_entries=0) as cluster:
        node = await cluster.wait_for_leader()
        for i in range(10):
            await node.propose(b"a%d" % i)
        older = await node.snapshot()
        for i in range(10):
            await node.propose(b"b%d" % i)
        newest = await node.snapshot()
        for i in range(5):
            await node.propose(b"c%d" % i)
        expected = list(cluster.state_machine(1).records)
        await cluster.stop(1)
        fs = cluster.handles[1].fs
        assert isinstance(fs, SimulatedFileSystem)
        path = f"{newest.path}/records"
        data = bytearray(fs.read_bytes(path))
        data[len(data) // 2] ^= 0xFF
        fs.write_bytes(path, bytes(data))
        await cluster.restart(1)
        node = await cluster.wait_for_leader()
        await node.propose(b"after")
        sm: ListStateMachine = cluster.state_machine(1)
        sm.check_exactly_once()
        assert sm.records[: len(expected)] == expected
        assert node.status().snapshot_index == older.index
        assert any(p.endswith(".broken") for p in fs.paths(f"{cluster.handles[1].data_dir}/snap"))


async def test_failed_fsync_fails_the_node(autojump_clock: trio.testing.MockClock) -> None:
    fs = SimulatedFileSystem()
    net = MemoryNetwork(0)
    with pytest.raises(StorageFailed):
        async with open_raft_node(
            Config(id=1),
            ListStateMachine(),
            data_dir="/d",
            transport=net.transport(1, disk=INLINE_DISK),
            fs=fs,
            disk=INLINE_DISK,
        ) as node:
            await node.wait_for_leader()
            await node.propose(b"ok")
            fs.inject_fault("fsync", errno.EIO, match="wal")
            await node.propose(b"this fsync fails")
            await trio.sleep_forever()


async def test_fsync_off(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3, fsync=False, snapshot_entries=5) as cluster:
        leader = await cluster.wait_for_leader()
        for i in range(12):
            await leader.propose(b"%d" % i)
        await cluster.wait_applied(leader.commit_index)
        assert leader.status().snapshot_index >= 5
