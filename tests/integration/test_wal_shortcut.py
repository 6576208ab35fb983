"""The WAL shortcut of a node that has its event loop to itself: the raft actor writes and
syncs idle-time persists itself (``WalActor.persist_now``); real disk and threads, no mock
clock. Everything acknowledged must be in the WAL after a restart."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import trio

from trioraft.errors import NodeStopped, StorageFailed
from trioraft.runtime.disk import AdaptiveDisk
from trioraft.testing.cluster import ListStateMachine, open_tcp_cluster


async def test_single_node_persists_inline_and_recovers_everything(tmp_path: Path) -> None:
    machines: dict[int, ListStateMachine] = {}

    def factory(nid: int) -> ListStateMachine:
        machines[nid] = ListStateMachine()
        return machines[nid]

    acked: list[int] = []
    with trio.fail_after(30):
        async with open_tcp_cluster(1, str(tmp_path), factory, snapshot_entries=0) as nodes:
            node = nodes[1]
            while not node.is_leader:
                await trio.sleep(0.01)
            for i in range(50):
                acked.append(await node.propose(b"v%d" % i))
            rt = node._rt
            assert isinstance(rt._wal_disk, AdaptiveDisk)
            # Idle single proposer: (almost) every write took the shortcut on the raft actor.
            assert rt._wal_disk.inline_calls >= 40, rt._wal_disk.inline_calls
        assert [d for _, d in machines[1].records] == [b"v%d" % i for i in range(50)]
        async with open_tcp_cluster(1, str(tmp_path), factory, snapshot_entries=0) as nodes:
            node = nodes[1]
            while node.applied_index < acked[-1] + 1:  # + the new term's no-op
                await trio.sleep(0.01)
    assert [d for _, d in machines[1].records if d][-50:] == [b"v%d" % i for i in range(50)]


async def test_nodes_sharing_a_loop_never_block_it(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with open_tcp_cluster(3, str(tmp_path), snapshot_entries=0) as nodes:
            while not any(n.is_leader for n in nodes.values()):
                await trio.sleep(0.01)
            leader = next(n for n in nodes.values() if n.is_leader)
            for i in range(10):
                await leader.propose(b"x%d" % i)
            for n in nodes.values():
                assert isinstance(n._rt._wal_disk, AdaptiveDisk)
                assert n._rt._wal_disk.inline_calls == 0


async def test_a_failed_inline_fsync_stops_the_node_and_acknowledges_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trioraft.storage import fs as fsmod

    machine = ListStateMachine()
    results: list[int] = []

    def failing_fdatasync(fd: int) -> None:
        raise OSError(errno.EIO, "injected I/O error")

    with (
        trio.fail_after(30),
        pytest.RaisesGroup(StorageFailed, allow_unwrapped=True, flatten_subgroups=True),
    ):
        async with open_tcp_cluster(
            1, str(tmp_path), lambda _: machine, snapshot_entries=0
        ) as nodes:
            node = nodes[1]
            while not node.is_leader:
                await trio.sleep(0.01)
            results.append(await node.propose(b"kept"))
            rt = node._rt
            assert isinstance(rt._wal_disk, AdaptiveDisk)
            before = rt._wal_disk.inline_calls
            monkeypatch.setattr(fsmod, "_fdatasync", failing_fdatasync)
            with pytest.raises(NodeStopped):  # the proposer is told, never acknowledged
                results.append(await node.propose(b"lost"))
            await trio.sleep_forever()  # the node's failure ends the cluster
    assert rt._wal_disk.inline_calls > before  # the failure happened on the shortcut
    assert len(results) == 1
    assert b"lost" not in [d for _, d in machine.records]
