"""InstallSnapshot streaming through whole nodes (in-memory network, MockClock): a throttled
transfer takes the time the throttle implies, a connection broken mid-transfer resumes from its
offset, and the snapshot being streamed stays pinned."""

from __future__ import annotations

import trio
import trio.testing

from trioraft.testing.cluster import Cluster, ListStateMachine, open_cluster

VALUE = b"v" * 1024
KIB = 1024


async def lagging_setup(cluster: Cluster, entries: int) -> tuple[int, int]:
    """Stop a follower, write ``entries`` 1 KiB values and snapshot+compact on the leader."""
    leader = await cluster.wait_for_leader()
    lagging = next(n for n in cluster.running if n.id != leader.id).id
    await cluster.stop(lagging)
    for _ in range(entries):
        await leader.propose(VALUE)
    await leader.snapshot()
    await cluster.wait_until(lambda: leader.status().first_index > 10)
    return leader.id, lagging


async def test_throttled_transfer_takes_the_time_the_throttle_implies(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rate = 100 * KIB
    async with open_cluster(
        3,
        snapshot_entries=0,
        catchup_entries=5,
        snapshot_chunk_bytes=16 * KIB,
        snapshot_throttle_bytes_per_s=float(rate),
    ) as cluster:
        leader_id, lagging = await lagging_setup(cluster, 300)
        t0 = trio.current_time()
        node = await cluster.restart(lagging)
        await cluster.wait_until(lambda: node.status().snapshots_installed == 1, timeout=60)
        elapsed = trio.current_time() - t0
        transport = cluster.handles[leader_id].transport
        assert transport is not None
        stats = transport.last_stream[lagging]
        expected = stats.total_bytes / rate
        assert stats.total_bytes > 300 * KIB
        assert elapsed >= 0.8 * expected, (elapsed, expected)
        assert elapsed < 3 * expected + 5, (elapsed, expected)


async def test_broken_connection_resumes_from_the_offset(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster(
        3,
        snapshot_entries=0,
        catchup_entries=5,
        snapshot_chunk_bytes=16 * KIB,
        snapshot_window_chunks=2,
        snapshot_throttle_bytes_per_s=float(200 * KIB),
    ) as cluster:
        leader_id, lagging = await lagging_setup(cluster, 300)
        leader = cluster[leader_id]
        node = await cluster.restart(lagging)
        store = cluster.handles[leader_id].node._rt.store  # type: ignore[union-attr]
        # wait until the stream is under way, then cut the connection
        await cluster.wait_until(lambda: leader._rt.snapshotter.streams_in_progress > 0)
        assert store.pinned()  # contract 5: the streamed snapshot is pinned
        await trio.sleep(0.6)
        assert cluster.network.break_connections(leader_id, lagging) >= 1
        await cluster.wait_until(lambda: node.status().snapshots_installed == 1, timeout=60)
        transport = cluster.handles[leader_id].transport
        assert transport is not None
        stats = transport.last_stream[lagging]
        assert stats.connections >= 2
        assert any(pos > 0 for pos in stats.resumed_from), stats.resumed_from
        assert stats.bytes_resent < stats.total_bytes // 2
        assert not store.pinned()
        await cluster.wait_applied(leader.commit_index)
        sm: ListStateMachine = cluster.state_machine(lagging)
        assert sm.records == cluster.state_machine(leader_id).records
