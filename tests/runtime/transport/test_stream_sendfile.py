"""The sender's sendfile path (payloads from the snapshot file straight to the socket, CRC from
a mapping of the range) and the receiver's write batches of at most half the window."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import crc32c
import pytest
import trio
import trio.testing
from test_chunk_path import tcp_pair
from test_real_store import StoreHandler, check_copy, make_stored
from test_streaming import SlowDisk, assert_received, start
from transport_fakes import Handler, make_snapshot, pattern, request_for

from trioraft.core.messages import SnapshotRequest
from trioraft.runtime.transport import framing
from trioraft.runtime.transport.base import SnapshotRejected
from trioraft.runtime.transport.frames import SnapshotAck
from trioraft.runtime.transport.framing import FramedStream, FrameError, ReceivedChunk
from trioraft.runtime.transport.memory import MemoryNetwork
from trioraft.runtime.transport.streaming import StreamOptions, _crc_of_file_range
from trioraft.runtime.transport.tcp import TcpTransport
from trioraft.storage.snapshots import SnapshotStore

KiB = 1024
MiB = 1024 * 1024
LIMIT = 30


def _open(path: Path) -> int:
    return os.open(path, os.O_RDONLY)


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)


async def test_a_chunk_sent_from_a_file_is_received_byte_exact(tmp_path: Path) -> None:
    """``send_chunk_from_file`` puts the file's bytes at the given offset in the same frame
    layout as ``send_chunk``; frames before and after it are unaffected."""
    data = pattern(3 * MiB + 11)
    path = tmp_path / "f"
    _write(path, data)
    fd = _open(path)
    a, b = await tcp_pair()
    sender, receiver = FramedStream(a), FramedStream(b)
    try:
        assert sender.can_send_file
        with trio.fail_after(LIMIT):
            pieces = [(0, 1, MiB), (1, 2 * MiB + 5, MiB + 6), (2, 0, 1)]

            async def send() -> None:
                for k, (fi, off, n) in enumerate(pieces):
                    piece = data[off : off + n]
                    await sender.send_chunk_from_file(fi, k, crc32c.crc32c(piece), fd, off, n)
                await sender.send(SnapshotAck(file_index=9, offset=9))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                for k, (fi, off, n) in enumerate(pieces):
                    got = await receiver.receive_chunk(bytearray, 4 * MiB)
                    assert isinstance(got, ReceivedChunk)
                    assert (got.file_index, got.offset) == (fi, k)
                    assert bytes(got.data) == data[off : off + n]
                    assert got.crc32c == crc32c.crc32c(got.data)
                assert await receiver.receive() == SnapshotAck(file_index=9, offset=9)
    finally:
        os.close(fd)
        await sender.aclose()
        await receiver.aclose()


async def test_send_chunk_from_file_refuses_what_it_cannot_send(tmp_path: Path) -> None:
    """Too large for the frame limit: FrameError, nothing written. A file shorter than the
    chunk: the connection is broken (the frame cannot be completed). A stream other than
    plain TCP: TypeError."""
    path = tmp_path / "f"
    _write(path, pattern(100))
    fd = _open(path)
    a, b = await tcp_pair()
    sender = FramedStream(a, max_frame_size=64 * KiB)
    receiver = FramedStream(b)
    try:
        with trio.fail_after(LIMIT):
            with pytest.raises(FrameError, match="exceeds the limit"):
                await sender.send_chunk_from_file(0, 0, 0, fd, 0, 64 * KiB)
            await sender.send(SnapshotAck(file_index=1, offset=2))
            assert await receiver.receive() == SnapshotAck(file_index=1, offset=2)
            with pytest.raises(trio.BrokenResourceError, match="short"):
                await sender.send_chunk_from_file(0, 0, 0, fd, 50, 51)
    finally:
        os.close(fd)
        await sender.aclose()
        await receiver.aclose()
    left, _right = trio.testing.memory_stream_pair()
    in_memory = FramedStream(left)
    assert not in_memory.can_send_file
    with pytest.raises(TypeError):
        await in_memory.send_chunk_from_file(0, 0, 0, 0, 0, 1)


class _CountingReader:
    """A store reader that counts chunk reads (the sendfile path makes none)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.reads = 0

    def read_chunk(self, name: str, offset: int, size: int) -> bytes:
        self.reads += 1
        data: bytes = self.inner.read_chunk(name, offset, size)
        return data

    def os_path(self, name: str) -> str | None:
        path: str | None = self.inner.os_path(name)
        return path


async def _stream_over_tcp(
    tmp_path: Path,
    files: dict[str, bytes],
    reader_of: Callable[[SnapshotStore, int], Any],
    *,
    chunk: int = 256 * KiB,
) -> tuple[SnapshotStore, SnapshotStore, int, Any]:
    leader = SnapshotStore(str(tmp_path / "n1"))
    follower = SnapshotStore(str(tmp_path / "n2"))
    stored = make_stored(leader, files)
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as n:
            t1 = TcpTransport(
                1,
                "c",
                stream_options=StreamOptions(chunk_size=chunk, retry_initial=0.01, retry_max=0.05),
            )
            t2 = TcpTransport(2, "c")
            await n.start(t1.serve, Handler(1))
            await n.start(t2.serve, StoreHandler(2, follower))
            t1.add_peer(2, t2.address)
            t2.add_peer(1, t1.address)
            request = SnapshotRequest(src=1, dst=2, term=3, meta=stored.raft_meta)
            try:
                with leader.pin(stored.index):
                    await t1.stream_snapshot(2, stored, reader_of(leader, stored.index), request)
            finally:
                n.cancel_scope.cancel()
    return leader, follower, stored.index, t1.last_stream[2]


async def test_over_tcp_payloads_go_by_sendfile_not_through_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = os.sendfile

    def counting(out: int, fd: int, offset: int | None, count: int) -> int:
        calls.append(count)
        return real(out, fd, offset, count)

    monkeypatch.setattr(framing.os, "sendfile", counting)
    files = {"state": pattern(2 * MiB + 7), "empty": b"", "small": pattern(10, seed=3)}
    readers: list[_CountingReader] = []

    def reader_of(store: SnapshotStore, index: int) -> _CountingReader:
        readers.append(_CountingReader(store.open_reader(index)))
        return readers[-1]

    leader, follower, index, _ = await _stream_over_tcp(tmp_path, files, reader_of)
    check_copy(leader, follower, index)
    assert readers[0].reads == 0
    assert calls and sum(calls) >= sum(len(d) for d in files.values())


async def test_a_broken_sendfile_reconnects_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection that breaks in the middle of a chunk sent from its file: the sender
    reconnects, resumes from what the receiver acknowledged, and the copy is exact."""
    real = os.sendfile
    sent = [0]

    def breaking(out: int, fd: int, offset: int | None, count: int) -> int:
        if sent[0] >= 5 * MiB // 2:
            sent[0] = -(1 << 40)  # once: the connection goes down in the middle of a chunk
            with socket.socket(fileno=os.dup(out)) as sock:
                sock.shutdown(socket.SHUT_RDWR)
        n = real(out, fd, offset, min(count, 64 * KiB))
        sent[0] += n
        return n

    monkeypatch.setattr(framing.os, "sendfile", breaking)
    files = {"state": pattern(4 * MiB + 3), "b": pattern(MiB, seed=2)}
    leader, follower, index, stats = await _stream_over_tcp(
        tmp_path, files, lambda store, i: store.open_reader(i)
    )
    check_copy(leader, follower, index)
    assert stats.connections == 2
    assert stats.resumed_from[0] == 0 and 0 < stats.resumed_from[1] <= 5 * MiB // 2


async def test_a_file_ending_early_closes_the_connection_and_the_stream_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sendfile reaching the end of the file inside a chunk (the file shrank after its CRC was
    taken): the frame cannot be completed, so the connection is closed at once (the receiver
    would otherwise wait for the rest of the frame until the stall timeout) and the stream
    resumes on a new one."""
    real = os.sendfile
    calls = [0]

    def ending(out: int, fd: int, offset: int | None, count: int) -> int:
        calls[0] += 1
        if calls[0] == 3:
            return 0
        return real(out, fd, offset, min(count, 64 * KiB))

    monkeypatch.setattr(framing.os, "sendfile", ending)
    files = {"state": pattern(MiB + 3)}
    with trio.fail_after(10):  # well below the 30 s stall timeout
        leader, follower, index, stats = await _stream_over_tcp(
            tmp_path, files, lambda store, i: store.open_reader(i)
        )
    check_copy(leader, follower, index)
    assert stats.connections == 2


async def test_a_file_changed_on_the_leaders_disk_is_caught_end_to_end(tmp_path: Path) -> None:
    """Each chunk's CRC is computed from the file being sent, so bytes damaged on the
    leader's disk pass the chunk check; the receiver's check of the whole file against the
    CRC recorded when the snapshot was taken refuses them."""
    files = {"state": pattern(MiB + 5)}

    def damaged_reader(store: SnapshotStore, index: int) -> Any:
        reader = store.open_reader(index)
        path = reader.os_path("state")
        assert path is not None
        with open(path, "r+b") as f:
            f.seek(1000)
            f.write(b"\xff")
        return reader

    with pytest.RaisesGroup(
        pytest.RaisesExc(SnapshotRejected, match="corrupt"), flatten_subgroups=True
    ):
        await _stream_over_tcp(tmp_path, files, damaged_reader)


async def test_the_receiver_writes_at_most_half_the_window_per_disk_call(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """While one batch is written the sender must still have credit: a batch is at most half
    the window (a writer that took every queued chunk left the connection idle while it
    wrote, the sender having no credit left)."""
    chunk, window, count = 16 * KiB, 4, 24
    files = {"a": pattern(count * chunk)}
    stored, reader = make_snapshot(files)
    net = MemoryNetwork(seed=5)
    batches: list[int] = []

    class Recording(SlowDisk):
        async def __call__(self, fn: Any, *args: Any) -> Any:
            if getattr(fn, "__name__", "") == "_write_chunks":
                batches.append(len(args[2]))
            return await super().__call__(fn, *args)

    async with trio.open_nursery() as n:
        (t1, _), (_, h2) = await start(
            n,
            net,
            stream_options=StreamOptions(chunk_size=chunk, window=window),
            recv_disk=Recording(write=1.0),
        )
        await t1.stream_snapshot(2, stored, reader, request_for(stored))
        n.cancel_scope.cancel()
    assert_received(h2, files, stored)
    assert sum(batches) == count
    assert max(batches) == window // 2


@pytest.mark.parametrize(
    ("offset", "size"), [(0, 1), (1, 4095), (4095, 2), (65536 + 7, 300_000), (0, 1 << 20)]
)
def test_the_senders_crc_of_a_file_range_is_that_of_the_bytes(
    tmp_path: Path, offset: int, size: int
) -> None:
    """The CRC is that of exactly the requested bytes at any alignment (the buffer is reused
    across calls of different sizes), and a file too short for them is an error."""
    data = pattern((1 << 20) + 70_000, seed=offset)
    path = tmp_path / "f"
    _write(path, data)
    fd = _open(path)
    try:
        assert _crc_of_file_range(fd, offset, size) == crc32c.crc32c(data[offset : offset + size])
        with pytest.raises(ValueError, match="bytes, the chunk needs"):
            _crc_of_file_range(fd, len(data) - size + 1, size)
    finally:
        os.close(fd)


def test_the_senders_crc_of_an_empty_range_is_that_of_no_bytes(tmp_path: Path) -> None:
    path = tmp_path / "f"
    _write(path, pattern(3 * 65536, seed=1))
    fd = _open(path)
    try:
        assert _crc_of_file_range(fd, 4096, 0) == crc32c.crc32c(b"")
    finally:
        os.close(fd)


def test_a_file_shortened_while_its_crc_is_computed_does_not_kill_the_process(
    tmp_path: Path,
) -> None:
    """Committed snapshot files are never shortened by trioraft, but outside damage can do it.
    Over a mapping, that kills the whole process with SIGBUS; the sender must just fail the
    chunk (or compute the CRC of the bytes it read). Run in a child process so a crash shows
    as its exit status."""
    data = pattern(3 * 65536, seed=2)
    path = tmp_path / "f"
    _write(path, data)
    script = f"""
import os
import crc32c
import trioraft.runtime.transport.streaming as s
path = {str(path)!r}
real = s.crc32c
def shortening_crc(data, *rest):
    os.truncate(path, 0)  # the file shrinks between the read (or mapping) and the CRC
    return real(data, *rest)
s.crc32c = shortening_crc
fd = os.open(path, os.O_RDONLY)
try:
    got = s._crc_of_file_range(fd, 70000, 60000)
except ValueError:
    print("short")
else:
    print("crc", got)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"the child died: status {done.returncode}, {done.stderr}"
    assert done.stdout.split() in (["short"], ["crc", str(crc32c.crc32c(data[70000:130000]))])
