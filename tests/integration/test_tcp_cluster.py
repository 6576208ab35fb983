"""A real 3-node cluster in one process: TCP on loopback (plain and TLS via trustme), real
data directories, worker threads for the disk, real time."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trio
import trustme

from trioraft.node import RaftNode
from trioraft.testing.cluster import ListStateMachine, open_tcp_cluster

LIMIT = 30.0
FAST = {"tick_interval": 0.02, "election_ticks": 10, "snapshot_entries": 40, "catchup_entries": 5}


async def wait_leader(nodes: dict[int, RaftNode]) -> RaftNode:
    while True:
        leaders = {n.leader for n in nodes.values()}
        if len(leaders) == 1 and 0 not in leaders:
            lead = nodes[leaders.pop()]
            if lead.is_leader:
                return lead
        await trio.sleep(0.02)


async def exercise(nodes: dict[int, RaftNode]) -> None:
    leader = await wait_leader(nodes)
    follower = next(n for n in nodes.values() if n is not leader)
    for i in range(30):
        await leader.propose(b"L%d" % i)
    for i in range(30):
        await follower.propose(b"F%d" % i)  # forwarded over the call channel
    await follower.read_barrier()
    snap = await leader.snapshot()
    assert snap.index >= 60
    for n in nodes.values():
        await n.wait_applied(leader.commit_index)
    ref = list(nodes.values())
    first = ref[0]
    for n in ref[1:]:
        assert n.applied_index == first.applied_index


@pytest.mark.parametrize("tls", [False, True])
async def test_tcp_cluster(tmp_path: Path, tls: bool) -> None:
    kwargs: dict[str, object] = {}
    if tls:
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(server)
        client = ssl.create_default_context()
        ca.configure_trust(client)
        kwargs = {"ssl_server_context": server, "ssl_client_context": client}
    machines: dict[int, ListStateMachine] = {}

    def factory(nid: int) -> ListStateMachine:
        machines[nid] = ListStateMachine()
        return machines[nid]

    with trio.fail_after(LIMIT):
        async with open_tcp_cluster(3, str(tmp_path), factory, **kwargs, **FAST) as nodes:
            await exercise(nodes)
            records = machines[1].records
            assert len(records) == 60
            assert machines[2].records == records and machines[3].records == records
        # the whole cluster restarts from its data directories
        async with open_tcp_cluster(3, str(tmp_path), factory, **kwargs, **FAST) as nodes:
            leader = await wait_leader(nodes)
            await leader.propose(b"again")
            for n in nodes.values():
                await n.wait_applied(leader.commit_index)
            for nid in (1, 2, 3):
                machines[nid].check_exactly_once()
                assert machines[nid].records[:60] == records
                assert machines[nid].records[-1][1] == b"again"
