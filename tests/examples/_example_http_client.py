"""Small HTTP client helpers for the example tests (raw sockets, parsed by h11: an independent
implementation checks the server's output)."""

from __future__ import annotations

import h11
import trio


async def raw_exchange(port: int, data: bytes, *, read_all: bool = True) -> bytes:
    """Send raw bytes and return everything the server sends until it closes (or 5 s pass)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        out = bytearray()
        with trio.move_on_after(5):
            while True:
                try:
                    chunk = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    break
                if not chunk:
                    break
                out += chunk
                if not read_all:
                    break
        return bytes(out)


class Client:
    """A keep-alive HTTP/1.1 client over one connection."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def connect(cls, port: int) -> Client:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def request(
        self,
        method: str,
        target: str,
        body: bytes = b"",
        headers: list[tuple[str, str]] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        hdrs = [("host", "localhost"), ("content-length", str(len(body)))]
        hdrs += headers or []
        out = self.conn.send(h11.Request(method=method, target=target, headers=hdrs))
        out += self.conn.send(h11.Data(data=body)) if body else b""
        out += self.conn.send(h11.EndOfMessage())
        await self.stream.send_all(out)
        status = 0
        resp_headers: dict[str, str] = {}
        chunks: list[bytes] = []
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                resp_headers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        return status, resp_headers, b"".join(chunks)

    async def aclose(self) -> None:
        await self.stream.aclose()


async def request(
    port: int, method: str, target: str, body: bytes = b""
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection."""
    client = await Client.connect(port)
    try:
        return await client.request(method, target, body)
    finally:
        await client.aclose()


async def assert_still_serving(port: int) -> None:
    """A fresh request still gets a 200: whatever came before did not hurt the server."""
    status, _, _ = await request(port, "GET", "/still-alive")
    assert status == 200
