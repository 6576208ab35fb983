"""A replicated counter: three trioraft nodes inside one Trio program.

This is the code of the tutorial (``docs/tutorial.md``); it uses nothing but the library's
public API. Run it from the repository root::

    python -m examples.counter.embedded

It starts three nodes talking TCP on loopback, increments the counter from every node at once,
reads it linearizably from a follower, takes a snapshot, hands leadership over, then stops the
whole cluster and starts it again from its data directories to show that nothing was lost.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import trio

from trioraft.cli import free_ports  # free loopback ports, outside the ephemeral range
from trioraft.config import Config
from trioraft.node import RaftNode, open_raft_node
from trioraft.runtime.transport.tcp import TcpTransport
from trioraft.statemachine import Saver, SnapshotReader, SnapshotWriter

# -- 1. The state machine ----------------------------------------------------------------------


class Counter:
    """The application: an integer that committed entries add to.

    trioraft calls ``apply`` for every committed entry, in log order, exactly once (also across
    restarts). ``capture``/``restore`` are the snapshot hooks.
    """

    def __init__(self) -> None:
        self.value = 0

    def apply(self, index: int, data: bytes) -> int:
        """Add the delta carried by the entry; the result goes back to the proposer."""
        self.value += int.from_bytes(data, "big", signed=True)
        return self.value

    def capture(self) -> Saver:
        """Called between two applies: copy what the snapshot needs (cheap), return the saver
        that writes it while applies go on."""
        value = self.value

        async def saver(writer: SnapshotWriter) -> None:
            await writer.write_file("value", str(value).encode())

        return saver

    async def restore(self, reader: SnapshotReader) -> None:
        """Replace the whole state with a snapshot (at start-up or sent by the leader)."""
        self.value = int(await reader.read_file("value"))


def incr(delta: int) -> bytes:
    """The command that adds ``delta``."""
    return delta.to_bytes(8, "big", signed=True)


# -- 2. Starting the nodes ---------------------------------------------------------------------


@asynccontextmanager
async def start_cluster(
    root: Path, peers: dict[int, str], counters: dict[int, Counter]
) -> AsyncIterator[dict[int, RaftNode]]:
    """Open one node per entry of ``peers``; all of them stop when the block is left."""
    async with AsyncExitStack() as stack:
        nodes: dict[int, RaftNode] = {}
        for node_id, address in peers.items():
            config = Config(
                id=node_id,
                peers=peers,  # the initial cluster, this node included
                tick_interval=0.02,  # fast elections for a demo; the default is 0.1 s
                snapshot_entries=20,  # snapshot often to show it; the default is 10000
                catchup_entries=5,
            )
            host, port = address.rsplit(":", 1)
            transport = TcpTransport(
                node_id,
                "tutorial-counter",
                listen=(host, int(port)),
                peers={i: a for i, a in peers.items() if i != node_id},
                **config.transport_options(),
            )
            nodes[node_id] = await stack.enter_async_context(
                open_raft_node(
                    config,
                    counters[node_id],
                    data_dir=str(root / f"node-{node_id}"),
                    transport=transport,
                )
            )
        yield nodes


# -- 3. Using the cluster ----------------------------------------------------------------------


async def tour(root: Path, *, increments: int = 10) -> int:
    """Run the tutorial's steps; returns the final counter value."""
    ports = free_ports(3)
    peers = {i + 1: f"127.0.0.1:{port}" for i, port in enumerate(ports)}
    counters = {i: Counter() for i in peers}

    async with start_cluster(root, peers, counters) as nodes:
        leader = await nodes[1].wait_for_leader(timeout=10)
        print(f"node {leader} is the leader")
        # A node learns the leader from its first message; until then a proposal made there
        # fails with ProposalDropped("no-leader"). Wait until every node knows it.
        for node in nodes.values():
            await node.wait_for_leader(timeout=10)

        # Any node accepts proposals: followers forward them to the leader. propose() returns
        # what Counter.apply returned for this entry, once it is committed and applied here.
        async def client(node: RaftNode) -> None:
            for _ in range(increments):
                await node.propose(incr(1))

        async with trio.open_nursery() as nursery:
            for node in nodes.values():
                nursery.start_soon(client, node)
        expected = 3 * increments

        # A linearizable read on a follower: read_barrier() waits until the local state
        # machine reflects every write that completed before the call.
        follower = next(i for i in nodes if i != leader)
        await nodes[follower].read_barrier()
        print(f"follower {follower} reads {counters[follower].value}")
        assert counters[follower].value == expected

        # A manual snapshot (automatic ones come every `snapshot_entries` entries).
        meta = await nodes[leader].snapshot()
        print(f"snapshot at index {meta.index} (term {meta.term}) in {meta.path}")

        # Hand leadership to another node, then keep writing through it.
        await nodes[leader].transfer_leadership(follower)
        new_leader = await nodes[follower].wait_for_leader(timeout=10)
        print(f"leadership moved from node {leader} to node {new_leader}")
        value = await nodes[new_leader].propose(incr(100))
        expected += 100
        assert value == expected
        status = nodes[new_leader].status()
        print(
            f"status: term {status.term}, commit {status.commit}, applied {status.applied}, "
            f"snapshot index {status.snapshot_index}"
        )

    # Every node has stopped. Start them again from their data directories: each restores its
    # newest snapshot and replays the log tail behind it.
    restarted = {i: Counter() for i in peers}
    async with start_cluster(root, peers, restarted) as nodes:
        await nodes[1].wait_for_leader(timeout=10)
        await nodes[1].read_barrier()
        print(f"after a full restart node 1 reads {restarted[1].value}")
        assert restarted[1].value == expected
        return restarted[1].value


async def main() -> int:
    """Run the tour in a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="trioraft-tutorial-") as tmp:
        return await tour(Path(tmp))


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    final = trio.run(main)
    print(f"final value: {final}")
    sys.exit(0)
