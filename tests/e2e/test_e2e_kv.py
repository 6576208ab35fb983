"""End-to-end (fast): real KV processes on loopback; SIGKILL the leader; malformed requests."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from e2e_support import assert_all_readable, http_request, put_all, running_cluster


def test_kill_leader_keeps_every_acknowledged_write(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as c:
        leader = c.wait_leader()
        follower = next(i for i in (1, 2, 3) if i != leader)
        items = {f"key-{i}": f"value-{i}".encode() for i in range(40)}
        put_all(c, follower, items)  # through a follower: proposals are forwarded
        for node in (1, 2, 3):
            assert_all_readable(c, node, dict(list(items.items())[:5]))

        # Writers keep going while the leader is SIGKILLed; every write answered 204 must
        # survive. 503 (certainly not done) and 504 (unknown) are allowed answers meanwhile.
        acked: dict[str, bytes] = {}
        answers: list[int] = []
        stop = threading.Event()
        # An assert inside a thread only becomes a warning: collect, check after the join.
        unexpected: list[object] = []

        def writer(wid: int) -> None:
            n = 0
            while not stop.is_set():
                node = (1, 2, 3)[(wid + n) % 3]
                key, value = f"w{wid}-{n}", f"{wid}:{n}".encode()
                res = c.put(node, key, value, timeout=10)
                answers.append(res.status)
                if res.status == 204:
                    acked[key] = value
                elif res.status not in (0, 503, 504):
                    unexpected.append(res)
                n += 1

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        try:
            c.wait_for("some writes", lambda: len(acked) >= 20)
            c.kill(leader)
            survivors = [i for i in (1, 2, 3) if i != leader]
            new_leader = c.wait_leader(among=survivors)
            assert new_leader != leader
            before = len(acked)
            c.wait_for("writes under the new leader", lambda: len(acked) >= before + 20)
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert unexpected == []

        more = {f"after-{i}": b"x" * i for i in range(10)}
        put_all(c, survivors[0], more)
        for node in survivors:
            assert_all_readable(c, node, items | acked | more)


def _raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


def test_bad_requests_single_node(tmp_path: Path) -> None:
    with running_cluster(tmp_path, 1, extra=("--max-value-bytes", "1024")) as c:
        base = c.nodes[1].url
        assert http_request("PUT", base + "/ok", b"v" * 1024).status == 204
        assert http_request("PUT", base + "/big", b"v" * 1025).status == 413
        assert http_request("GET", base + "/big").status == 404
        assert http_request("GET", base + "/ok").body == b"v" * 1024
        assert http_request("PATCH", base + "/ok").status == 405
        assert http_request("POST", base + "/5", b"not a url").status == 400
        assert _raw(c.nodes[1].http_port, b"NONSENSE\r\n\r\n").startswith(b"HTTP/1.1 400")
        assert _raw(
            c.nodes[1].http_port, b"PUT /k HTTP/1.1\r\nhost: x\r\ncontent-length: zz\r\n\r\n"
        ).startswith(b"HTTP/1.1 400")
        status = c.status(1)
        assert status is not None and status["role"] == "leader"
        metrics = http_request("GET", base + "/metrics")
        assert metrics.status == 200
        assert b"trioraft_term" in metrics.body
        assert b'trioraft_http_requests_total{code="413"' in metrics.body
        # The node survived all of it.
        assert http_request("PUT", base + "/after", b"1").status == 204
