"""The examples' HTTP server: limits, malformed input, keep-alive, concurrency, shutdown."""

from __future__ import annotations

import trio
from _example_http_client import Client, assert_still_serving, raw_exchange, request

from examples.common.http import HttpServerConfig, Request, Response, serve_http, text_response


class Rendezvous:
    """Each request waits until ``n`` requests are inside the handler at the same time."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.inside = 0
        self.all_inside = trio.Event()


RENDEZVOUS: list[Rendezvous] = []


async def echo(req: Request) -> Response:
    if req.path == "/boom":
        raise RuntimeError("handler bug")
    if req.path == "/rendezvous":
        r = RENDEZVOUS[-1]
        r.inside += 1
        if r.inside == r.n:
            r.all_inside.set()
        await r.all_inside.wait()
    text = f"{req.method} {req.path} {sorted(req.query.items())} {len(req.body)}"
    return text_response(200, text)


async def start(nursery: trio.Nursery, **limits: float) -> int:
    cfg = HttpServerConfig(**limits)  # type: ignore[arg-type]
    port: int = await nursery.start(
        lambda task_status: serve_http(echo, port=0, config=cfg, task_status=task_status)
    )
    return port


async def test_basic_request_and_query_decoding() -> None:
    async with trio.open_nursery() as nursery:
        port = await start(nursery)
        status, headers, body = await request(port, "GET", "/a%20b?serializable=true&x=1")
        assert status == 200
        assert body == b"GET /a b [('serializable', ['true']), ('x', ['1'])] 0\n"
        assert headers["content-length"] == str(len(body))
        nursery.cancel_scope.cancel()


async def test_keep_alive_serves_many_requests_on_one_connection() -> None:
    async with trio.open_nursery() as nursery:
        port = await start(nursery)
        client = await Client.connect(port)
        for i in range(20):
            status, _, body = await client.request("PUT", f"/k{i}", b"x" * i)
            assert status == 200
            assert body.endswith(f" {i}\n".encode())
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_oversized_body_gets_413_by_content_length_and_by_chunks() -> None:
    async with trio.open_nursery() as nursery:
        port = await start(nursery, max_body_bytes=100)
        status, headers, _ = await request(port, "PUT", "/k", b"x" * 101)
        assert status == 413
        assert headers.get("connection") == "close"
        status, _, _ = await request(port, "PUT", "/k", b"x" * 100)
        assert status == 200
        chunked = (
            b"PUT /k HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
            + b"40\r\n"
            + b"y" * 64
            + b"\r\n"
            + b"40\r\n"
            + b"y" * 64
            + b"\r\n0\r\n\r\n"
        )
        out = await raw_exchange(port, chunked)
        assert out.startswith(b"HTTP/1.1 413 ")
        nursery.cancel_scope.cancel()


async def test_413_is_delivered_while_client_is_still_sending() -> None:
    async with trio.open_nursery() as nursery:
        port = await start(nursery, max_body_bytes=1000)
        head = b"PUT /k HTTP/1.1\r\nhost: x\r\ncontent-length: 5000000\r\n\r\n"
        out = await raw_exchange(port, head + b"z" * 200_000)
        assert out.startswith(b"HTTP/1.1 413 ")
        nursery.cancel_scope.cancel()


async def test_malformed_requests_get_400_and_server_survives() -> None:
    async with trio.open_nursery() as nursery:
        port = await start(nursery)
        for junk in (
            b"this is not http\r\n\r\n",
            b"GET / HTTP/1.1\r\nbad header line\r\n\r\n",
            b"GET / HTTP/1.1\r\nhost: x\r\ncontent-length: abc\r\n\r\n",
            b"PUT /k HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
            b"GET nopath HTTP/1.1\r\nhost: x\r\n\r\n",
            b"GET /%ff%fe HTTP/1.1\r\nhost: x\r\n\r\n",
        ):
            out = await raw_exchange(port, junk)
            assert out.startswith(b"HTTP/1.1 400 "), (junk, out)
        huge_header = b"GET / HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 40000 + b"\r\n\r\n"
        out = await raw_exchange(port, huge_header)
        assert out.startswith(b"HTTP/1.1 431 ")
        await assert_still_serving(port)
        nursery.cancel_scope.cancel()


async def test_handler_exception_becomes_500() -> None:
    async with trio.open_nursery() as nursery:
        port = await start(nursery)
        status, _, body = await request(port, "GET", "/boom")
        assert status == 500
        assert b"internal" in body
        nursery.cancel_scope.cancel()


async def test_concurrent_connections_are_served_in_parallel() -> None:
    async with trio.open_nursery() as nursery:
        port = await start(nursery)
        results: list[int] = []

        async def one() -> None:
            status, _, _ = await request(port, "GET", "/rendezvous")
            results.append(status)

        # Every request waits until all 20 are being handled at once: served one at a time,
        # none would ever finish and the deadline would fail the test.
        RENDEZVOUS.append(Rendezvous(20))
        with trio.fail_after(10):
            async with trio.open_nursery() as clients:
                for _ in range(20):
                    clients.start_soon(one)
        assert results == [200] * 20
        assert RENDEZVOUS[-1].inside == 20
        nursery.cancel_scope.cancel()


async def test_idle_keep_alive_connection_is_closed_and_shutdown_is_clean() -> None:
    async with trio.open_nursery() as nursery:
        port = await start(nursery, idle_timeout=0.2)
        client = await Client.connect(port)
        status, _, _ = await client.request("GET", "/x")
        assert status == 200
        with trio.fail_after(5):
            assert await client.stream.receive_some(10) == b""  # server closed the idle conn
        await client.aclose()
        # An open connection does not keep cancellation from finishing.
        other = await Client.connect(port)
        nursery.cancel_scope.cancel()
    await other.aclose()


async def test_expect_100_continue() -> None:
    async with trio.open_nursery() as nursery:
        port = await start(nursery)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(
            b"PUT /k HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\nexpect: 100-continue\r\n\r\n"
        )
        first = await stream.receive_some(1000)
        assert first.startswith(b"HTTP/1.1 100 ")
        await stream.send_all(b"abc")
        rest = b""
        while b"\r\n\r\n" not in rest or not rest.endswith(b"3\n"):
            rest += await stream.receive_some(1000)
        assert rest.startswith(b"HTTP/1.1 200 ")
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_head_and_absolute_form_targets() -> None:
    async with trio.open_nursery() as nursery:
        port = await start(nursery)
        client = await Client.connect(port)
        out = await raw_exchange(port, b"HEAD /x HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 200 ")
        assert out.endswith(b"\r\n\r\n")  # headers only, no body
        status, _, body = await client.request("GET", "http://example.com/abs?x=1")
        assert status == 200 and body.startswith(b"GET /abs [('x', ['1'])]")
        await client.aclose()
        nursery.cancel_scope.cancel()
