"""The snapshot receiver holds at most the window's chunks, whatever the sender does: a sender
that ignores its credit is cut off, instead of the receiver queueing (window + number of files)
chunks in memory while its disk is slow."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing
from transport_fakes import Handler, make_snapshot, pattern, request_for

from trioraft.runtime.disk import INLINE_DISK
from trioraft.runtime.transport.frames import (
    FileDesc,
    SnapshotAccept,
    SnapshotAck,
    SnapshotDone,
    SnapshotOffer,
)
from trioraft.runtime.transport.framing import FramedStream, FrameError
from trioraft.runtime.transport.streaming import ReceiveOptions, SnapshotReceiver, crc32c

CHUNK = 4096
WINDOW = 2
NFILES = 20


class CountingStream(trio.abc.Stream):
    """Counts the bytes the receiver has taken from the connection."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.received = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.inner.receive_some(max_bytes)
        self.received += len(data)
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()


def _offer(files: dict[str, bytes]) -> SnapshotOffer:
    stored, _ = make_snapshot(files)
    return SnapshotOffer(
        index=stored.index,
        term=stored.term,
        conf=stored.conf,
        user_meta=b"um",
        files=tuple(FileDesc(name=f.name, size=f.size, crc32c=f.crc32c) for f in stored.files),
        request=request_for(stored),
        chunk_size=CHUNK,
        window=WINDOW,
    )


async def test_a_sender_ignoring_its_credit_is_cut_off_at_the_window() -> None:
    files = {f"f{i:02d}": pattern(CHUNK, seed=i) for i in range(NFILES)}
    release = trio.Event()
    writes_started = 0

    async def slow_disk(fn: Any, *args: Any) -> Any:
        nonlocal writes_started
        if getattr(fn, "__name__", "") == "_write_chunks":
            writes_started += 1
            await release.wait()  # a disk that takes its time
        return await INLINE_DISK(fn, *args)

    receiver = SnapshotReceiver(2, disk=slow_disk, options=ReceiveOptions(max_window=WINDOW))
    errors: list[BaseException] = []
    finished = trio.Event()
    a, b = trio.testing.memory_stream_pair()
    counting = CountingStream(b)
    client, server = FramedStream(a), FramedStream(counting)

    async def serve() -> None:
        try:
            await receiver.handle(server, 1, Handler(2))
        except Exception as exc:  # what the transport would log before closing
            errors.append(exc)
        finally:
            finished.set()

    with trio.fail_after(10):
        async with trio.open_nursery() as n:
            await n.start(receiver.run)
            n.start_soon(serve)
            await client.send(_offer(files))
            assert await client.receive() == SnapshotAccept(file_index=0, offset=0, window=WINDOW)
            for i, data in enumerate(files.values()):  # one chunk per file, no credit awaited
                await client.send_chunk(i, 0, crc32c(data), data)
            # Everything the receiver does with these happens before every task is blocked
            # (the memory stream holds all of them): it has taken what it was going to take.
            await trio.testing.wait_all_tasks_blocked()
            assert writes_started == 1  # the first chunk, waiting for the disk
            read = counting.received
            release.set()
            await trio.testing.wait_all_tasks_blocked()
            assert finished.is_set(), "the receiver is still reading chunks beyond the window"
            n.cancel_scope.cancel()
    assert len(errors) == 1 and isinstance(errors[0], FrameError), errors
    assert "window" in str(errors[0])
    # It read the window's chunks and the one beyond it (and perhaps the next one's head),
    # and left the rest unread.
    assert read <= (WINDOW + 1) * (CHUNK + 100) + 4096, f"the receiver read {read} bytes"


async def test_empty_files_do_not_count_against_the_window() -> None:
    # Empty files between the chunks take queue room of their own, not the window's: a sender
    # with one chunk in flight at a time (the smallest window) gets every file across.
    files: dict[str, bytes] = {}
    for i in range(6):
        files[f"d{i}"] = pattern(CHUNK + 10, seed=i)  # two chunks each
        files[f"e{i}a"] = b""
        files[f"e{i}b"] = b""
    offer = _offer(files)
    receiver = SnapshotReceiver(2, disk=INLINE_DISK, options=ReceiveOptions(max_window=1))
    handler = Handler(2)
    a, b = trio.testing.memory_stream_pair()
    client, server = FramedStream(a), FramedStream(b)
    with trio.fail_after(10):
        async with trio.open_nursery() as n:
            await n.start(receiver.run)
            n.start_soon(receiver.handle, server, 1, handler)
            await client.send(offer)
            assert await client.receive() == SnapshotAccept(file_index=0, offset=0, window=1)
            for i, data in enumerate(files.values()):
                for off in range(0, len(data), CHUNK):
                    piece = data[off : off + CHUNK]
                    await client.send_chunk(i, off, crc32c(piece), piece)
                    ack = await client.receive()  # the credit back before the next chunk
                    assert ack == SnapshotAck(file_index=i, offset=off + len(piece))
            assert await client.receive() == SnapshotDone()
            n.cancel_scope.cancel()
    builder = handler.builders[0]
    assert builder.committed is not None
    assert {name: builder.bytes_of(name) for name in files} == files
