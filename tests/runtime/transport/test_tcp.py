"""The TCP transport on real loopback sockets (no MockClock): message exchange, handshake
refusals, garbage and oversize frames, overflow, reconnects, TLS, calls and snapshot streams."""

from __future__ import annotations

import logging
import ssl
import struct
from typing import Any

import cbor2
import pytest
import trio
import trustme
from transport_fakes import Builder, Handler, make_snapshot, pattern, request_for

from trioraft.core.messages import HeartbeatRequest
from trioraft.runtime.disk import INLINE_DISK
from trioraft.runtime.transport.base import CallFailed, ClientRequest, Transport
from trioraft.runtime.transport.frames import PROTOCOL_VERSION, Hello, encode_frame
from trioraft.runtime.transport.streaming import StreamOptions
from trioraft.runtime.transport.tcp import TcpTransport

LIMIT = 15.0  # generous bound for every real-socket test
KiB = 1024
MiB = 1024 * 1024


def hb(src: int, dst: int, seq: int) -> HeartbeatRequest:
    return HeartbeatRequest(src=src, dst=dst, term=1, commit=seq)


class Cluster:
    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.t: dict[int, TcpTransport] = {}
        self.h: dict[int, Handler] = {}
        self.scopes: dict[int, trio.CancelScope] = {}

    async def start(self, node: int, transport: TcpTransport) -> None:
        self.t[node] = transport
        self.h[node] = Handler(node)
        scope = trio.CancelScope()
        self.scopes[node] = scope

        async def run(*, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await transport.serve(self.h[node], task_status=task_status)

        await self.nursery.start(run)

    def stop(self, node: int) -> None:
        self.scopes[node].cancel()

    def link_all(self) -> None:
        for a, ta in self.t.items():
            for b, tb in self.t.items():
                if a != b:
                    ta.add_peer(b, tb.address)


async def make_cluster(
    nursery: trio.Nursery, ids: tuple[int, ...] = (1, 2, 3), **kw: Any
) -> Cluster:
    c = Cluster(nursery)
    kw.setdefault("backoff_initial", 0.01)
    kw.setdefault("backoff_max", 0.2)
    for i in ids:
        await c.start(i, TcpTransport(i, "test-cluster", **kw))
    c.link_all()
    return c


async def test_messages_between_three_nodes(nursery: trio.Nursery) -> None:
    with trio.fail_after(LIMIT):
        c = await make_cluster(nursery)
        for a in c.t:
            for b in c.t:
                if a != b:
                    for i in range(20):
                        c.t[a].send(hb(a, b, i))
        for h in c.h.values():
            await h.wait_messages(40)
        for b, h in c.h.items():
            for a in c.t:
                if a != b:
                    assert [m.commit for m in h.delivered if m.src == a] == list(range(20))  # type: ignore[union-attr]
        assert all(t.connected(p) for t in c.t.values() for p in t.peers())
        assert c.t[1].stats.messages_sent == 40 and c.t[1].stats.messages_received == 40


def test_tcp_transport_satisfies_the_protocol() -> None:
    t: Transport = TcpTransport(1, "c")
    assert t is not None
    with pytest.raises(RuntimeError):
        _ = t.port  # type: ignore[attr-defined]


async def raw_connect(port: int) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", port)


async def read_until_closed(stream: trio.SocketStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # the length prefix says ~1.2 GB: too large
        struct.pack(">I", 5) + b"\xff\xfe\xfd\xfc\xfb",  # not CBOR
        struct.pack(">I", 0),  # empty frame
        struct.pack(">I", 1 << 20) + b"x" * 100,  # 1 MiB is fine later, not before a Hello
        struct.pack(">I", 9) + cbor2.dumps({"type": "Hello"}),  # a Hello missing its fields
    ],
    ids=["http", "not-cbor", "empty", "big-before-hello", "bad-hello"],
)
async def test_garbage_closes_only_that_connection(
    nursery: trio.Nursery, garbage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    with trio.fail_after(LIMIT):
        c = await make_cluster(nursery, ids=(1, 2))
        c.t[1].send(hb(1, 2, 0))
        await c.h[2].wait_messages(1)
        s = await raw_connect(c.t[2].port)
        await s.send_all(garbage)
        assert await read_until_closed(s) == b""  # the node hung up on us ...
        await s.aclose()
        assert c.t[2].stats.bad_frames == 1
        assert "malformed frame" in caplog.text
        c.t[1].send(hb(1, 2, 1))  # ... and good peers still talk, on the existing connection
        await c.h[2].wait_messages(2)
        c.t[2].send(hb(2, 1, 0))
        await c.h[1].wait_messages(1)


async def test_garbage_after_a_valid_handshake(nursery: trio.Nursery) -> None:
    with trio.fail_after(LIMIT):
        c = await make_cluster(nursery, ids=(1, 2))
        s = await raw_connect(c.t[2].port)
        hello = encode_frame(
            Hello(
                version=PROTOCOL_VERSION,
                cluster_id="test-cluster",
                node_id=1,
                target=2,
                purpose="raft",
            )
        )
        await s.send_all(struct.pack(">I", len(hello)) + hello)
        await s.send_all(struct.pack(">I", 64 << 20))  # oversize frame on a raft connection
        ack = await s.receive_some(1000)
        assert b"ok" in ack
        assert await read_until_closed(s) == b""
        assert c.t[2].stats.bad_frames == 1
        c.t[1].send(hb(1, 2, 5))
        await c.h[2].wait_messages(1)


async def test_silent_connections_are_closed_after_the_handshake_timeout(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(LIMIT):
        c = await make_cluster(nursery, ids=(1,), handshake_timeout=0.3)
        s = await raw_connect(c.t[1].port)
        start = trio.current_time()
        assert await read_until_closed(s) == b""
        assert trio.current_time() - start >= 0.25


async def test_wrong_cluster_id_and_strangers_are_refused(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    with trio.fail_after(LIMIT):
        c = await make_cluster(nursery, ids=(1, 2))
        port2 = c.t[2].port
        # Right node id, wrong cluster.
        impostor = TcpTransport(1, "other-cluster", peers={2: f"127.0.0.1:{port2}"})
        await c.start(11, impostor)
        # Right cluster, unknown node id.
        stranger = TcpTransport(9, "test-cluster", peers={2: f"127.0.0.1:{port2}"})
        await c.start(9, stranger)
        for t, src in [(impostor, 1), (stranger, 9)]:
            with pytest.raises(CallFailed) as info:
                await t.call(2, ClientRequest(kind="echo"))
            assert info.value.sent is False and "refused" in info.value.detail
            t.send(hb(src, 2, 99))
        while c.t[2].stats.handshakes_refused < 4:
            await trio.sleep(0.01)
        assert "wrong cluster id 'other-cluster'" in caplog.text
        assert "unknown node 9" in caplog.text
        assert all(m.commit != 99 for m in c.h[2].delivered)  # type: ignore[union-attr]
        assert c.h[2].calls == []
        # The node is unharmed.
        c.t[1].send(hb(1, 2, 1))
        await c.h[2].wait_messages(1)


async def test_a_misconfigured_address_is_detected(nursery: trio.Nursery) -> None:
    with trio.fail_after(LIMIT):
        c = await make_cluster(nursery, ids=(1, 2, 3))
        c.t[1].add_peer(3, c.t[2].address)  # node 1 believes node 3 lives where node 2 is
        with pytest.raises(CallFailed, match="this is node 2, not 3"):
            await c.t[1].call(3, ClientRequest(kind="echo"))


async def test_send_never_blocks_and_drops_on_overflow(nursery: trio.Nursery) -> None:
    with trio.fail_after(LIMIT):
        c = await make_cluster(nursery, ids=(1, 2), queue_size=10)
        for i in range(1000):
            c.t[1].send(hb(1, 2, i))  # no checkpoint in between: the sender cannot drain
        assert c.t[1].stats.dropped_overflow == 990
        await c.h[2].wait_messages(10)
        assert [m.commit for m in c.h[2].delivered] == list(range(10))  # type: ignore[union-attr]
        c.t[1].send(HeartbeatRequest(src=1, dst=42, term=1))
        assert c.t[1].stats.dropped_unknown_peer == 1


async def test_unreachable_peer_is_reported_and_reconnects_after_restart(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(LIMIT):
        unreachable: list[int] = []
        c = Cluster(nursery)
        await c.start(
            1,
            TcpTransport(
                1,
                "test-cluster",
                backoff_initial=0.01,
                backoff_max=0.05,
                on_unreachable=unreachable.append,
            ),
        )
        await c.start(2, TcpTransport(2, "test-cluster"))
        c.link_all()
        port2 = c.t[2].port
        c.t[1].send(hb(1, 2, 0))
        await c.h[2].wait_messages(1)
        c.stop(2)  # node 2 goes down
        while not unreachable:
            c.t[1].send(hb(1, 2, 1))
            await trio.sleep(0.02)
        assert unreachable[0] == 2
        while c.t[1].stats.connect_failures == 0:  # connecting to a closed port fails ...
            c.t[1].send(hb(1, 2, 1))
            await trio.sleep(0.02)
        assert c.t[1].stats.dropped_unreachable > 0  # ... and what was queued is dropped
        # Node 2 comes back on the same port; node 1 reconnects on its own.
        await c.start(
            2,
            TcpTransport(2, "test-cluster", listen=("127.0.0.1", port2), peers={1: c.t[1].address}),
        )
        while not c.h[2].delivered:
            c.t[1].send(hb(1, 2, 2))
            await trio.sleep(0.02)
        assert c.t[1].connected(2)


async def test_calls_over_tcp(nursery: trio.Nursery) -> None:
    with trio.fail_after(LIMIT):
        c = await make_cluster(nursery, ids=(1, 2))
        resp = await c.t[1].call(2, ClientRequest(kind="echo", payload=b"x" * 100_000))
        assert resp.ok and resp.payload == b"x" * 100_000
        results: list[bytes] = []
        async with trio.open_nursery() as calls:
            for i in range(20):
                calls.start_soon(
                    lambda i=i: _echo(c.t[1], i, results)  # type: ignore[misc]
                )
        assert sorted(results) == sorted(str(i).encode() for i in range(20))
        with pytest.raises(CallFailed, match="not a peer"):
            await c.t[1].call(7, ClientRequest(kind="echo"))


async def _echo(t: TcpTransport, i: int, out: list[bytes]) -> None:
    r = await t.call(2, ClientRequest(kind="echo", payload=str(i).encode()))
    out.append(r.payload)


def tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext, trustme.CA]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client, ca


async def test_tls(nursery: trio.Nursery) -> None:
    server, client, _ = tls_contexts()
    with trio.fail_after(LIMIT):
        c = await make_cluster(
            nursery,
            ids=(1, 2),
            ssl_server_context=server,
            ssl_client_context=client,
            disk=INLINE_DISK,
            stream_options=StreamOptions(chunk_size=64 * KiB),
        )
        c.t[1].send(hb(1, 2, 0))
        await c.h[2].wait_messages(1)
        resp = await c.t[2].call(1, ClientRequest(kind="echo", payload=b"secret"))
        assert resp.payload == b"secret"
        files = {"a": pattern(300 * KiB)}
        stored, reader = make_snapshot(files)
        await c.t[1].stream_snapshot(2, stored, reader, request_for(stored))
        assert c.h[2].builders[0].bytes_of("a") == files["a"]

        # A plaintext client gets nowhere with a TLS node; nor does one trusting another CA.
        plain = TcpTransport(1, "test-cluster", peers={2: c.t[2].address})
        other_client = ssl.create_default_context()
        trustme.CA().configure_trust(other_client)
        untrusted = TcpTransport(
            1, "test-cluster", peers={2: c.t[2].address}, ssl_client_context=other_client
        )
        for i, t in [(21, plain), (22, untrusted)]:
            await c.start(i, t)
            with pytest.raises(CallFailed) as info:
                await t.call(2, ClientRequest(kind="echo"))
            assert info.value.sent is False
        assert len(c.h[2].calls) == 0 and len(c.h[1].calls) == 1


async def test_snapshot_stream_over_tcp_with_worker_threads(nursery: trio.Nursery) -> None:
    with trio.fail_after(LIMIT):
        c = await make_cluster(
            nursery, ids=(1, 2), stream_options=StreamOptions(chunk_size=256 * KiB)
        )
        files = {"state": pattern(3 * MiB + 123), "empty": b"", "index": pattern(1000, seed=4)}
        stored, reader = make_snapshot(files)
        # Raft traffic keeps flowing during the stream (its own connection).
        c.t[1].send(hb(1, 2, 0))
        await c.t[1].stream_snapshot(2, stored, reader, request_for(stored))
        b = c.h[2].builders[0]
        assert {n: b.bytes_of(n) for n in b.files} == files
        assert c.h[2].received[0][1] == request_for(stored)
        assert c.t[1].last_stream[2].connections == 1
        assert c.t[2].stats.snapshots_received == 1


async def test_snapshot_resumes_over_tcp_after_the_connection_is_cut(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(LIMIT):
        chunk = 64 * KiB
        c = await make_cluster(
            nursery,
            ids=(1, 2),
            disk=INLINE_DISK,
            stream_options=StreamOptions(chunk_size=chunk, retry_initial=0.01, retry_max=0.05),
        )
        files = {"a": pattern(2 * MiB)}
        stored, reader = make_snapshot(files)
        address1 = c.t[1].address
        cut = trio.Event()

        def on_write(b: Builder) -> None:
            if len(b.writes) == 10 and not cut.is_set():
                cut.set()
                c.t[2].remove_peer(1)  # kills node 1's connections to node 2 ...

        c.h[2].on_builder = lambda b: setattr(b, "on_write", on_write)

        async def readd() -> None:
            await cut.wait()
            await trio.sleep(0.2)
            c.t[2].add_peer(1, address1)  # ... until node 2 knows node 1 again

        nursery.start_soon(readd)
        await c.t[1].stream_snapshot(2, stored, reader, request_for(stored))
        st = c.t[1].last_stream[2]
        assert st.connections >= 2 and st.resumed_from[-1] >= 10 * chunk
        assert st.bytes_resent <= 4 * chunk
        assert len(c.h[2].builders) == 1
        assert c.h[2].builders[0].bytes_of("a") == files["a"]


async def test_a_peer_without_an_address_can_connect_in_but_not_be_reached(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(LIMIT):
        c = await make_cluster(nursery, ids=(1, 2))
        c.t[1].add_peer(2, "")  # address unknown (e.g. learned from a membership change)
        with pytest.raises(CallFailed, match="not known"):
            await c.t[1].call(2, ClientRequest(kind="echo"))
        c.t[2].send(hb(2, 1, 7))  # node 2 still gets in
        await c.h[1].wait_messages(1)
        with pytest.raises(ValueError):
            c.t[1].add_peer(3, "nonsense")
        with pytest.raises(ValueError):
            c.t[1].add_peer(1, "127.0.0.1:1")  # itself


async def test_direct_writes_keep_order_through_partial_writes(nursery: trio.Nursery) -> None:
    # Once the connection is up, send() writes straight to the socket; a burst far larger than
    # the socket buffers leaves partial writes for the writer task. Every frame must arrive, in
    # the order of the send() calls.
    from trioraft.core.messages import AppendRequest
    from trioraft.core.types import Entry

    with trio.fail_after(LIMIT):
        c = await make_cluster(nursery, ids=(1, 2), queue_size=100_000)
        c.t[1].send(hb(1, 2, 0))
        await c.h[2].wait_messages(1)
        await trio.testing.wait_all_tasks_blocked()  # the writer went idle after its batch
        peer = c.t[1]._peers[2]
        assert peer.direct_fd >= 0 and not peer.busy
        payload = b"p" * (64 * KiB)
        n = 200  # ~13 MiB in one burst, without yielding: the socket takes only a part
        for i in range(1, n + 1):
            c.t[1].send(
                AppendRequest(
                    src=1,
                    dst=2,
                    term=1,
                    prev_index=i,
                    prev_term=1,
                    entries=(Entry(1, i + 1, data=payload),),
                )
            )
        assert peer.busy  # a partial write handed the rest to the writer
        await c.h[2].wait_messages(n + 1)
        got = [m.prev_index for m in c.h[2].delivered[1:]]  # type: ignore[union-attr]
        assert got == list(range(1, n + 1))
        assert c.t[1].stats.messages_sent == n + 1
        assert c.t[1].stats.dropped_overflow == 0


async def test_a_peer_that_connects_in_ends_our_reconnect_backoff(nursery: trio.Nursery) -> None:
    # Node 2 restarts while node 1 waits out a long reconnect backoff. As soon as node 2 connects
    # to node 1, node 1 reconnects too, instead of leaving the restarted peer without appends
    # (or the snapshot it needs) until the backoff ends.
    with trio.fail_after(LIMIT):
        c = await make_cluster(nursery, ids=(1, 2), backoff_initial=60.0, backoff_max=60.0)
        c.t[1].send(hb(1, 2, 0))
        await c.h[2].wait_messages(1)
        port = c.t[2].port
        c.stop(2)
        while c.t[1].connected(2):  # node 1 notices the loss, then backs off for ~60 s
            await trio.sleep(0.01)
        await c.start(2, TcpTransport(2, "test-cluster", listen=("127.0.0.1", port)))
        c.t[2].add_peer(1, c.t[1].address)
        c.t[2].send(hb(2, 1, 0))
        c.t[1].send(hb(1, 2, 1))
        await c.h[2].wait_messages(1)
        assert [m.commit for m in c.h[2].delivered] == [1]  # type: ignore[union-attr]


async def test_a_restarted_node_announces_itself_without_sending_anything(
    nursery: trio.Nursery,
) -> None:
    # A restarted follower has nothing to say until it hears from the leader, but its transport
    # connects to every peer at start: the leader, backing off from the dead connection, takes
    # that as the sign to reconnect and its next message gets through at once.
    with trio.fail_after(LIMIT):
        c = await make_cluster(nursery, ids=(1, 2), backoff_initial=60.0, backoff_max=60.0)
        c.t[1].send(hb(1, 2, 0))
        await c.h[2].wait_messages(1)
        port = c.t[2].port
        c.stop(2)
        while c.t[1].connected(2):  # node 1 notices the loss, then backs off for ~60 s
            await trio.sleep(0.01)
        await c.start(2, TcpTransport(2, "test-cluster", listen=("127.0.0.1", port)))
        c.t[2].add_peer(1, c.t[1].address)
        while not c.t[2].connected(1):
            await trio.sleep(0.01)
        c.t[1].send(hb(1, 2, 1))
        await c.h[2].wait_messages(1)
        assert [m.commit for m in c.h[2].delivered] == [1]  # type: ignore[union-attr]
        assert c.t[2].stats.messages_sent == 0
