"""Snapshot streaming (InstallSnapshot's data path), shared by the TCP and in-memory transports.

Theory of operation
-------------------
A stream moves one stored snapshot (a list of files) from a sender to a receiver over a
connection of purpose ``"snapshot"``. The files are treated as one byte sequence cut into chunks
(at most ``chunk_size`` bytes, never spanning two files); a position is (file number, offset).

1. The sender sends :class:`SnapshotOffer` (the metadata, the file list with sizes and CRC32Cs,
   and the core's ``SnapshotRequest``).
2. The receiver keeps one incoming state per source node. If it already holds a partial copy of
   the same snapshot (same source, index and term) it answers :class:`SnapshotAccept` with the
   position it has durably written up to, so the sender resumes there; a different snapshot from
   the same source supersedes (aborts) the partial one; an already committed one is answered
   with :class:`SnapshotDone` at once.
3. The sender keeps at most ``window`` chunks unacknowledged (credits). Each chunk carries a
   CRC32C. The receiver reads each chunk's payload straight into a reusable buffer (see
   :meth:`FramedStream.receive_chunk`), checks where it goes and queues it for its writer task,
   which checks the CRCs of what has queued up (at most half the window, so that the sender
   keeps credit while it is written) and writes it into the snapshot builder (``write_at``),
   both in one worker-thread call, and then acknowledges each chunk with the position it
   reached: receiving overlaps checking and writing, and an acknowledgement still means
   "written". On plain TCP, when the reader gives file paths (the real snapshot store), the
   sender never reads a payload into memory: a worker thread computes the chunk's CRC32C over a
   read-only mapping of its range (which also brings the pages into the page cache) and the
   kernel sends the bytes from the file (``sendfile``); otherwise each chunk is read and sent.
   The file is a committed snapshot, never modified, so the bytes sent are the bytes
   checksummed; should they differ, the receiver's checks catch it as for any damage.
   Memory on both sides is thus bounded by ``window * chunk_size`` (plus the one chunk the
   sender reads ahead while it waits for a credit) whatever the snapshot size.
   The receiver also keeps a running CRC32C per file, extended with each chunk's checked CRC
   (CRC combination, so the bytes are checksummed once; the builder is handed the running
   value instead of computing its own), and checks it against the offer when the file is
   complete. A chunk failing its own CRC ends the connection after the chunks before it are
   written and acknowledged; the sender resumes from there.
4. After the last chunk the receiver commits the builder (fsyncs, atomic rename; it sends
   :class:`SnapshotKeepalive` while that runs), hands the stored snapshot and the request to its
   handler, and answers :class:`SnapshotDone`.

A broken connection, a malformed frame or a chunk with a bad CRC ends the connection but not the
stream: the sender reconnects with backoff and resumes from what the receiver acknowledged. The
stream fails with :class:`SnapshotStalled` when no acknowledged progress happens for
``stall_timeout`` seconds (time spent waiting for the sender's own throttle does not count), and
with :class:`SnapshotRejected` when the receiver refuses or finds the data corrupt. A receiver
state that no connection resumes within ``resume_timeout`` is aborted (its temp files removed).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import attrs
import crc32c as _crc32c
import trio

from trioraft.core.messages import SnapshotRequest
from trioraft.runtime.disk import DiskExecutor
from trioraft.runtime.transport.base import (
    InboundHandler,
    PeerUnreachable,
    SnapshotAborted,
    SnapshotBuilderLike,
    SnapshotReaderLike,
    SnapshotRejected,
    SnapshotStalled,
    SnapshotTransferError,
    StoredSnapshotLike,
    TransportError,
)
from trioraft.runtime.transport.frames import (
    FileDesc,
    SnapshotAccept,
    SnapshotAck,
    SnapshotChunk,
    SnapshotDone,
    SnapshotError,
    SnapshotKeepalive,
    SnapshotOffer,
)
from trioraft.runtime.transport.framing import (
    ConnectionClosed,
    FramedStream,
    FrameError,
    ReceivedChunk,
)
from trioraft.runtime.transport.util import Backoff, Throttle, TransportStats, crc32c_combine

__all__ = [
    "CHUNK_FRAME_OVERHEAD",
    "ActiveStreams",
    "ReceiveOptions",
    "SnapshotReceiver",
    "StreamOptions",
    "StreamSettings",
    "StreamStats",
    "send_snapshot",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Room left in a frame for the chunk's envelope (field names, offsets, CRC).
CHUNK_FRAME_OVERHEAD = 256

#: The receiver's writer hands at most about this many queued bytes to one worker-thread call,
#: and at most half the window's chunks (see :meth:`SnapshotReceiver._receive_files`).
_WRITE_BATCH_BYTES = 8 << 20

# Connection-level failures after which the sender reconnects and resumes.
_RETRYABLE: tuple[type[BaseException], ...] = (
    ConnectionClosed,
    FrameError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
)


def _write_chunks(
    builder: SnapshotBuilderLike[Any],
    files: tuple[FileDesc, ...],
    chunks: list[ReceivedChunk],
    crc: int,
) -> list[int]:
    """Worker-thread side of :meth:`SnapshotReceiver._write_batch`: checks each chunk's CRC32C
    and writes it, stopping before the first chunk whose CRC does not match. ``crc`` is the
    running CRC32C of the first chunk's file up to that chunk. Returns the running CRC of its
    file after each chunk written (fewer entries than chunks: the next one was bad).

    Each chunk's CRC is checked here rather than on arrival, off the event loop thread, which
    is what limits the receive rate; the builder is given the running CRC, so each byte is
    checksummed exactly once."""
    crcs: list[int] = []
    for chunk in chunks:
        data = chunk.data
        if crc32c(data) != chunk.crc32c:
            break
        crc = crc32c_combine(crc if chunk.offset else 0, chunk.crc32c, len(data))
        builder.write_at(files[chunk.file_index].name, chunk.offset, data, prefix_crc=crc)
        crcs.append(crc)
    return crcs


def _read_chunk(reader: SnapshotReaderLike, name: str, offset: int, size: int) -> tuple[bytes, int]:
    """Worker-thread side of the sender's reads: a chunk and its CRC32C (the CRC library
    releases the GIL for large buffers, so the event loop keeps running meanwhile)."""
    data = reader.read_chunk(name, offset, size)
    return data, crc32c(data)


#: per worker thread, the buffer :func:`_crc_of_file_range` reads chunks into (reused, so a
#: stream costs one chunk of memory per thread, not a fresh allocation and its page faults per
#: chunk)
_crc_buffers = threading.local()


def _crc_of_file_range(fd: int, offset: int, size: int) -> int:
    """Worker-thread side of the sender's sendfile path: the CRC32C of ``size`` bytes of file
    ``fd`` at ``offset``. The bytes are read (``pread``) into a per-thread buffer that is
    reused; reading them also warms the page cache for the ``sendfile`` that follows. (A
    mapping would save the copy, but a file shortened under it kills the process with SIGBUS;
    a read just comes up short.) Raises ``ValueError`` when the file is shorter."""
    if size == 0:
        return crc32c(b"")
    buf: bytearray | None = getattr(_crc_buffers, "buf", None)
    if buf is None or len(buf) < size:
        buf = bytearray(size)
        _crc_buffers.buf = buf
    with memoryview(buf) as whole, whole[:size] as view:
        got = 0
        while got < size:
            n = os.preadv(fd, [view[got:]], offset + got)
            if n == 0:
                have = os.fstat(fd).st_size
                raise ValueError(f"the file has {have} bytes, the chunk needs {offset + size}")
            got += n
        return crc32c(view)


class _OpenFiles:
    """The sender's descriptors of the snapshot's files for the sendfile path: each opened
    (read-only) on first use, all closed when the connection's session ends. An open
    descriptor keeps a file readable even if retention removed it meanwhile."""

    def __init__(self, path_of: Callable[[str], str | None]) -> None:
        self._path_of = path_of
        self._fds: dict[str, int] = {}

    def fd(self, name: str) -> int:
        fd = self._fds.get(name)
        if fd is None:
            path = self._path_of(name)
            if path is None:
                raise FileNotFoundError(f"snapshot file {name!r} has no path")
            # opened here, not in a worker thread, so that a cancellation cannot lose it
            # (opening an existing file is a metadata lookup, not a data read)
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            self._fds[name] = fd
        return fd

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def crc32c(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """CRC32C of ``data``, continuing from ``value``."""
    result: int = _crc32c.crc32c(data, value)
    return result


@attrs.frozen(kw_only=True)
class StreamOptions:
    """Sender-side settings of snapshot streams.

    Attributes:
        chunk_size: bytes per chunk (default 1 MiB).
        window: chunks in flight without acknowledgement (the receiver may grant fewer).
        stall_timeout: seconds without acknowledged progress before the stream fails.
        retry_initial, retry_max: reconnect backoff bounds, seconds.
        max_crc_errors: consecutive chunk CRC failures without progress before giving up.
    """

    chunk_size: int = 1 << 20
    window: int = 4
    stall_timeout: float = 30.0
    retry_initial: float = 0.05
    retry_max: float = 2.0
    max_crc_errors: int = 3

    def __attrs_post_init__(self) -> None:
        if self.chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        if self.window < 1:
            raise ValueError("window must be >= 1")
        if not self.stall_timeout > 0:
            raise ValueError("stall_timeout must be > 0")
        if not 0 < self.retry_initial <= self.retry_max:
            raise ValueError("need 0 < retry_initial <= retry_max")


class StreamSettings:
    """A transport's outgoing snapshot-stream settings: the options, the throttle, and the
    largest frame it must accept (its own chunks plus their envelope).

    ``explicit`` is False when the transport was built without its own options, in which case
    the node that uses it applies its ``Config``'s (:meth:`adopt`)."""

    def __init__(
        self, options: StreamOptions | None, rate: float | None, max_frame_size: int
    ) -> None:
        self.explicit = options is not None or rate is not None
        self._base_max_frame = max_frame_size
        self._set(options or StreamOptions(), rate)

    def _set(self, options: StreamOptions, rate: float | None) -> None:
        self.options = options
        self.rate = rate
        self.throttle = Throttle(rate, options.chunk_size) if rate else None
        self.max_frame_size = max(
            self._base_max_frame, options.chunk_size + 2 * CHUNK_FRAME_OVERHEAD
        )

    def adopt(self, options: StreamOptions, rate: float | None) -> bool:
        """Take the node's settings unless the transport was given its own. True if the
        transport now streams with them (taken, or given the same ones)."""
        if self.explicit:
            return self.options == options and self.rate == rate
        self._set(options, rate)
        return True


@attrs.frozen(kw_only=True)
class ReceiveOptions:
    """Receiver-side settings of snapshot streams.

    Attributes:
        max_window: the most chunks a sender may have unacknowledged towards this node.
        max_chunk_size: the largest chunk accepted (also bounded by the connection's frame
            limit, which each transport sizes to fit its own ``chunk_size``).
        resume_timeout: seconds a partial snapshot waits for its sender to reconnect before it is
            aborted; also how long a completed one is remembered for a sender that missed the
            final acknowledgement.
        keepalive_interval: seconds between keepalives while committing.
    """

    max_window: int = 8
    max_chunk_size: int = 64 << 20
    resume_timeout: float = 60.0
    keepalive_interval: float = 1.0

    def __attrs_post_init__(self) -> None:
        if self.max_window < 1 or self.max_chunk_size < 1:
            raise ValueError("max_window and max_chunk_size must be >= 1")
        if not self.resume_timeout > 0 or not self.keepalive_interval > 0:
            raise ValueError("resume_timeout and keepalive_interval must be > 0")


@attrs.define(kw_only=True)
class StreamStats:
    """What one :func:`send_snapshot` call did (filled in as it goes)."""

    peer: int
    index: int
    term: int
    total_bytes: int
    bytes_sent: int = 0  #: chunk payload bytes sent, re-sends included
    chunks_sent: int = 0
    connections: int = 0  #: connections opened (1 when nothing went wrong)
    resumed_from: list[int] = attrs.field(factory=list)  #: byte position granted by each accept
    max_inflight_bytes: int = 0  #: most unacknowledged chunk bytes at any time
    throttle_wait: float = 0.0  #: seconds spent waiting for the throttle
    crc_errors: int = 0  #: chunks the receiver refused for a CRC mismatch
    started_at: float = 0.0
    finished_at: float = 0.0

    @property
    def bytes_resent(self) -> int:
        """Payload bytes sent more than once (work lost to interruptions)."""
        return max(0, self.bytes_sent - self.total_bytes)


class _Retry(TransportError):
    """The receiver asked to reconnect (e.g. after a CRC mismatch)."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}")


class _StorageFailure(Exception):
    """The receiver's builder failed (disk full, I/O error, name refused by the store)."""


class _Corrupt(Exception):
    """A received file does not match the CRC32C the sender announced."""


class _BadChunk(Exception):
    """A received chunk failed its CRC32C check (the chunks before it were written)."""

    def __init__(self, chunk: ReceivedChunk) -> None:
        super().__init__(f"chunk at ({chunk.file_index}, {chunk.offset}) failed its CRC check")
        self.chunk = chunk


class _Hangup(Exception):
    """The receiver ends the connection after telling the sender why."""


class _StallTimer:
    """Drives a cancel scope's deadline: ``stall_timeout`` after the last progress, or never
    while paused (waiting for our own throttle is not the peer stalling)."""

    def __init__(self, scope: trio.CancelScope, timeout: float) -> None:
        self.scope = scope
        self.timeout = timeout
        self._last = trio.current_time()
        self._paused = 0
        self._update()

    def _update(self) -> None:
        self.scope.deadline = math.inf if self._paused else self._last + self.timeout

    def progress(self) -> None:
        self._last = trio.current_time()
        self._update()

    def pause(self) -> None:
        self._paused += 1
        self._update()

    def resume(self) -> None:
        self._paused -= 1
        self._last = max(self._last, trio.current_time())
        self._update()


def _file_descs(snapshot: StoredSnapshotLike) -> tuple[FileDesc, ...]:
    return tuple(FileDesc(name=f.name, size=f.size, crc32c=f.crc32c) for f in snapshot.files)


async def send_snapshot(
    connect: Callable[[], Awaitable[FramedStream]],
    snapshot: StoredSnapshotLike,
    reader: SnapshotReaderLike,
    request: SnapshotRequest,
    *,
    disk: DiskExecutor,
    options: StreamOptions | None = None,
    throttle: Throttle | None = None,
    rng: random.Random | None = None,
    peer: int = 0,
) -> StreamStats:
    """Streams ``snapshot`` (read through ``reader``) to the node ``connect`` reaches.

    Args:
        connect: opens a handshaken ``"snapshot"`` connection to the peer; raises
            :class:`PeerUnreachable` when it cannot.
        snapshot, reader, request: what to send; ``request`` is delivered to the receiver's core.
        disk: runs the blocking ``reader.read_chunk`` calls.
        options: chunking, window, stall timeout, retry backoff.
        throttle: a shared bytes/s limit, or ``None``.
        rng: randomness for the retry jitter.
        peer: the receiver's node id (for logs and stats).

    Returns:
        Statistics of the transfer.

    Raises:
        SnapshotStalled: no acknowledged progress for ``options.stall_timeout`` seconds.
        SnapshotRejected: the receiver refused the snapshot or found it corrupt.
        SnapshotTransferError: reading the snapshot failed, or repeated CRC failures.
    """
    opts = options or StreamOptions()
    files = _file_descs(snapshot)
    starts: list[int] = []
    total = 0
    for f in files:
        starts.append(total)
        total += f.size
    stats = StreamStats(
        peer=peer,
        index=snapshot.index,
        term=snapshot.term,
        total_bytes=total,
        started_at=trio.current_time(),
    )
    offer = SnapshotOffer(
        index=snapshot.index,
        term=snapshot.term,
        conf=snapshot.conf,
        user_meta=snapshot.user_meta,
        files=files,
        request=request,
        chunk_size=opts.chunk_size,
        window=opts.window,
    )
    backoff = Backoff(opts.retry_initial, opts.retry_max, rng or random.Random())
    ctx = f"snapshot {snapshot.index}/{snapshot.term} -> node {peer}"
    state = _SenderState(files=files, starts=starts, total=total)
    with trio.CancelScope() as stall_scope:
        timer = _StallTimer(stall_scope, opts.stall_timeout)
        while True:
            try:
                conn = await connect()
            except PeerUnreachable as exc:
                log.debug("%s: cannot connect: %s", ctx, exc)
                await trio.sleep(backoff.next())
                continue
            stats.connections += 1
            try:
                done = await _session(
                    conn, offer, state, reader, disk, opts, throttle, timer, backoff, stats
                )
            except _Retry as exc:
                if exc.reason == "crc":
                    stats.crc_errors += 1
                    state.crc_errors += 1
                if state.crc_errors > opts.max_crc_errors:
                    raise SnapshotTransferError(
                        f"{ctx}: {state.crc_errors} chunk CRC failures in a row"
                    ) from exc
                log.info("%s: receiver asked to resume (%s)", ctx, exc)
                done = False
            except _RETRYABLE as exc:
                log.info(
                    "%s: connection lost at %d/%d bytes acknowledged (%s: %s); resuming",
                    ctx,
                    state.best,
                    total,
                    type(exc).__name__,
                    exc,
                )
                done = False
            except SnapshotTransferError:
                raise
            except Exception:
                # Something the receiver sent broke this session in a way nobody foresaw:
                # treated as a lost connection (the stall timer bounds the retries), never
                # as an error of the caller's.
                log.warning(
                    "%s: unexpected error at %d/%d bytes acknowledged; resuming",
                    ctx,
                    state.best,
                    total,
                    exc_info=True,
                )
                done = False
            finally:
                with trio.CancelScope(shield=True):
                    await conn.aclose()
            if done:
                stats.finished_at = trio.current_time()
                log.info(
                    "%s: done, %d bytes in %.3fs over %d connection(s), %d re-sent",
                    ctx,
                    total,
                    stats.finished_at - stats.started_at,
                    stats.connections,
                    stats.bytes_resent,
                )
                return stats
            await trio.sleep(backoff.next())
    raise SnapshotStalled(
        f"{ctx}: no progress for {opts.stall_timeout}s (acknowledged {max(state.best, 0)}"
        f" of {total} bytes)"
    )


@attrs.define(kw_only=True)
class _SenderState:
    files: tuple[FileDesc, ...]
    starts: list[int]
    total: int
    best: int = -1  #: highest global position the receiver has confirmed
    crc_errors: int = 0  #: consecutive, reset on progress

    def global_pos(self, file_index: int, offset: int) -> int | None:
        """Validates a position from the receiver and maps it to a byte offset."""
        if file_index == len(self.files) and offset == 0:
            return self.total
        if 0 <= file_index < len(self.files) and 0 <= offset <= self.files[file_index].size:
            return self.starts[file_index] + offset
        return None

    def chunks_from(
        self, file_index: int, offset: int, size: int
    ) -> Iterator[tuple[int, int, int]]:
        """(file index, offset, length) of every chunk from a position to the end."""
        while file_index < len(self.files):
            fsize = self.files[file_index].size
            while offset < fsize:
                n = min(size, fsize - offset)
                yield (file_index, offset, n)
                offset += n
            file_index += 1
            offset = 0


async def _session(
    conn: FramedStream,
    offer: SnapshotOffer,
    state: _SenderState,
    reader: SnapshotReaderLike,
    disk: DiskExecutor,
    opts: StreamOptions,
    throttle: Throttle | None,
    timer: _StallTimer,
    backoff: Backoff,
    stats: StreamStats,
) -> bool:
    """One connection's worth of a stream. Returns True when the receiver confirmed the commit;
    raises on anything that ends the connection."""
    if opts.chunk_size + CHUNK_FRAME_OVERHEAD > conn.max_frame_size:
        raise SnapshotTransferError(
            f"chunk_size {opts.chunk_size} does not fit the frame limit {conn.max_frame_size}"
        )
    try:
        packed_offer = conn.pack(offer)
    except FrameError as exc:
        raise SnapshotTransferError(f"the snapshot offer does not fit in a frame: {exc}") from exc
    await conn.send_packed([packed_offer])
    reply = await conn.receive()
    if isinstance(reply, SnapshotDone):
        return True
    if isinstance(reply, SnapshotError):
        _raise_remote(reply)
    if not isinstance(reply, SnapshotAccept):
        raise FrameError(f"expected SnapshotAccept, got {type(reply).__name__}")
    start = state.global_pos(reply.file_index, reply.offset)
    if start is None:
        raise FrameError(f"resume position ({reply.file_index}, {reply.offset}) out of range")
    window = max(1, min(opts.window, reply.window))
    stats.resumed_from.append(start)

    def progress(pos: int) -> None:
        if pos > state.best:
            state.best = pos
            state.crc_errors = 0
            timer.progress()
            backoff.reset()

    progress(start)
    credit = trio.Semaphore(window, max_value=window)
    expected: deque[tuple[int, int, int]] = deque()  # (file index, end offset, length)
    inflight = 0
    pump_done = False
    failure: BaseException | None = None
    send_failure: BaseException | None = None
    done = False

    # Plain TCP and a reader with real file paths: payloads go from the page cache to the
    # socket with sendfile and only their CRC is computed here (over a mapping of the range,
    # in a worker thread, which also brings the pages into the cache before the event loop's
    # sendfile needs them). Otherwise each chunk is read into memory and sent from there.
    path_of: Callable[[str], str | None] | None = getattr(reader, "os_path", None)
    open_files = _OpenFiles(path_of) if path_of is not None and conn.can_send_file else None

    async def pump(nursery: trio.Nursery) -> None:
        nonlocal inflight, pump_done, failure, send_failure
        try:
            for fi, off, n in state.chunks_from(reply.file_index, reply.offset, opts.chunk_size):
                # The chunk is read (and checksummed, in the same worker-thread call) before
                # its credit is awaited: the read overlaps the wait for the receiver's ack.
                name = offer.files[fi].name
                data = b""
                fd = -1
                try:
                    if open_files is not None:
                        fd = open_files.fd(name)
                        crc = await disk(_crc_of_file_range, fd, off, n)
                    else:
                        data, crc = await disk(_read_chunk, reader, name, off, n)
                except Exception as exc:
                    raise SnapshotTransferError(
                        f"reading {name!r} at {off} for the snapshot stream failed: {exc}"
                    ) from exc
                if open_files is None and len(data) != n:
                    raise SnapshotTransferError(
                        f"short read of {name!r} at {off}: {len(data)} of {n} bytes"
                    )
                await credit.acquire()
                if throttle is not None:
                    timer.pause()
                    try:
                        stats.throttle_wait += await throttle.take(n)
                    finally:
                        timer.resume()
                expected.append((fi, off + n, n))
                inflight += n
                stats.max_inflight_bytes = max(stats.max_inflight_bytes, inflight)
                if open_files is not None:
                    await conn.send_chunk_from_file(fi, off, crc, fd, off, n)
                else:
                    await conn.send_chunk(fi, off, crc, data)
                stats.bytes_sent += n
                stats.chunks_sent += 1
            pump_done = True
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            # The reader is about to see why (the receiver's SnapshotError, or the end of the
            # connection); its verdict is more telling than ours.
            send_failure = exc
        except Exception as exc:
            failure = exc
            nursery.cancel_scope.cancel()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, nursery)
            try:
                while True:
                    frame = await conn.receive()
                    if isinstance(frame, SnapshotAck):
                        if not expected or expected[0][:2] != (frame.file_index, frame.offset):
                            raise FrameError(
                                f"unexpected ack ({frame.file_index}, {frame.offset});"
                                f" expected {expected[0][:2] if expected else 'none'}"
                            )
                        _, _, n = expected.popleft()
                        inflight -= n
                        credit.release()
                        pos = state.global_pos(frame.file_index, frame.offset)
                        assert pos is not None  # it matched a chunk we sent
                        progress(pos)
                    elif isinstance(frame, SnapshotKeepalive):
                        if pump_done and not expected:
                            timer.progress()  # the receiver is committing
                    elif isinstance(frame, SnapshotDone):
                        if not pump_done or expected:
                            raise FrameError("SnapshotDone before every chunk was acknowledged")
                        done = True
                        break
                    elif isinstance(frame, SnapshotError):
                        _raise_remote(frame)
                    else:
                        raise FrameError(f"unexpected {type(frame).__name__} in a snapshot stream")
            except Exception as exc:
                failure = failure or exc
            nursery.cancel_scope.cancel()
    finally:
        if open_files is not None:
            open_files.close()
    if failure is not None:
        raise failure
    if send_failure is not None and not done:  # pragma: no cover - the reader fails first
        raise send_failure
    return done


def _raise_remote(frame: SnapshotError) -> None:
    if frame.retry:
        raise _Retry(frame.reason, frame.detail)
    raise SnapshotRejected(f"receiver refused the snapshot: {frame.reason}: {frame.detail}")


class ActiveStreams:
    """At most one outgoing stream per peer: starting a new one cancels the old one, which
    raises :class:`SnapshotAborted` ("superseded")."""

    def __init__(self) -> None:
        self._by_peer: dict[int, _Ticket] = {}

    async def run(self, peer: int, fn: Callable[[], Awaitable[T]]) -> T:
        """Runs ``fn`` as the current stream to ``peer``.

        Raises:
            SnapshotAborted: superseded or cancelled through :meth:`cancel`.
        """
        old = self._by_peer.get(peer)
        if old is not None:
            old.reason = "superseded"
            old.scope.cancel()
        ticket = _Ticket()
        self._by_peer[peer] = ticket
        try:
            with ticket.scope:
                return await fn()
        finally:
            if self._by_peer.get(peer) is ticket:
                del self._by_peer[peer]
        raise SnapshotAborted(ticket.reason)

    async def send_counted(
        self,
        peer: int,
        fn: Callable[[], Awaitable[StreamStats]],
        stats: TransportStats,
        last: dict[int, StreamStats],
    ) -> None:
        """Runs the stream ``fn`` as :meth:`run` does and records its outcome in a transport's
        ``stats`` (sent, failed, bytes) and ``last`` (the latest stream's figures per peer).

        Raises:
            SnapshotTransferError: as ``fn`` or :meth:`run` raise it.
        """
        try:
            result = await self.run(peer, fn)
        except SnapshotTransferError:
            stats.snapshots_failed += 1
            raise
        last[peer] = result
        stats.snapshots_sent += 1
        stats.snapshot_bytes_sent += result.bytes_sent

    def cancel(self, peer: int, reason: str = "cancelled") -> bool:
        """Aborts the stream to ``peer``; returns whether there was one."""
        ticket = self._by_peer.get(peer)
        if ticket is None:
            return False
        ticket.reason = reason
        ticket.scope.cancel()
        return True

    def cancel_all(self, reason: str = "cancelled") -> None:
        """Aborts every stream (transport shutting down)."""
        for peer in list(self._by_peer):
            self.cancel(peer, reason)

    def peers(self) -> list[int]:
        """Peers with a stream in progress."""
        return sorted(self._by_peer)


@attrs.define
class _Ticket:
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    reason: str = "cancelled"


# --------------------------------------------------------------------------------------------
# Receiver


@attrs.define(kw_only=True, eq=False)
class _Incoming:
    """A snapshot being received from one source node (kept across reconnects)."""

    src: int
    offer: SnapshotOffer
    builder: SnapshotBuilderLike[Any]
    file_index: int = 0
    offset: int = 0
    crc: int = 0  #: running CRC32C of the current file up to ``offset``
    completed: bool = False
    dropped: bool = False
    stored: Any = None
    delivered: SnapshotRequest | None = None  #: the request last handed to the handler
    active: trio.CancelScope | None = None
    claims: int = 0
    lock: trio.Lock = attrs.field(factory=trio.Lock)

    @property
    def key(self) -> tuple[int, int]:
        return (self.offer.index, self.offer.term)

    @property
    def all_received(self) -> bool:
        return self.file_index >= len(self.offer.files)


class SnapshotReceiver:
    """The receiving side of snapshot streams for one node.

    Args:
        node_id: this node (for logs).
        disk: runs the blocking builder calls.
        options: window, chunk and timeout limits.
        stats: counters to update (shared with the owning transport).
    """

    def __init__(
        self,
        node_id: int,
        *,
        disk: DiskExecutor,
        options: ReceiveOptions | None = None,
        stats: TransportStats | None = None,
    ) -> None:
        self.node_id = node_id
        self.options = options or ReceiveOptions()
        self.stats = stats or TransportStats()
        self._disk = disk
        self._states: dict[int, _Incoming] = {}
        self._nursery: trio.Nursery | None = None

    def pending(self) -> dict[int, tuple[int, int, int]]:
        """Partial snapshots held per source: (index, term, bytes received)."""
        out: dict[int, tuple[int, int, int]] = {}
        for src, st in self._states.items():
            if not st.completed:
                received = sum(f.size for f in st.offer.files[: st.file_index]) + st.offset
                out[src] = (st.offer.index, st.offer.term, received)
        return out

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hosts the expiry timers; on exit (cancellation) aborts every partial snapshot."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True):
                for src, st in list(self._states.items()):
                    await self._drop(src, st, "node shutting down")

    async def handle(self, conn: FramedStream, src: int, handler: InboundHandler[Any]) -> None:
        """Serves one ``"snapshot"`` connection from ``src`` until the stream ends or the
        connection fails. Raises connection/frame errors for the caller to log."""
        first = await conn.receive()
        if not isinstance(first, SnapshotOffer):
            raise FrameError(f"expected SnapshotOffer, got {type(first).__name__}")
        offer = first
        ctx = f"node {self.node_id}: snapshot {offer.index}/{offer.term} from node {src}"
        problem = self._check_offer(offer, src, conn.max_frame_size)
        if problem:
            log.warning("%s: refusing malformed offer: %s", ctx, problem)
            await conn.send(SnapshotError(reason="protocol", detail=problem))
            return
        state = self._states.get(src)
        if state is not None and (
            state.key != (offer.index, offer.term) or state.offer.files != offer.files
        ):
            if not state.completed:
                log.info("%s: supersedes the partial snapshot %d/%d", ctx, *state.key)
            await self._drop(src, state, "superseded by a newer offer")
            state = None
        if state is not None:
            state.offer = offer  # same data; keep the newest request (its term may be newer)
        if state is None:
            try:
                builder = await handler.begin_snapshot_receive(
                    src, offer.index, offer.term, offer.conf, offer.user_meta
                )
            except Exception as exc:
                log.warning("%s: handler refused the snapshot: %r", ctx, exc)
                await conn.send(SnapshotError(reason="rejected", detail=repr(exc)))
                return
            state = _Incoming(src=src, offer=offer, builder=builder)
            other = self._states.get(src)
            if other is not None:  # a concurrent offer got here while we were in the handler
                await self._drop(src, other, "superseded by a newer offer")
            self._states[src] = state
            log.info(
                "%s: receiving %d file(s), %d bytes",
                ctx,
                len(offer.files),
                sum(f.size for f in offer.files),
            )
        await self._claim_and_receive(conn, state, handler, ctx)

    def _check_offer(self, offer: SnapshotOffer, src: int, max_frame: int) -> str:
        req = offer.request
        if req.src != src or req.dst != self.node_id:
            return f"request is from {req.src} to {req.dst}"
        if (req.meta.index, req.meta.term) != (offer.index, offer.term):
            return "request meta does not match the offer"
        if (
            not 1
            <= offer.chunk_size
            <= min(self.options.max_chunk_size, max_frame - CHUNK_FRAME_OVERHEAD)
        ):
            return f"chunk size {offer.chunk_size} not allowed"
        if offer.window < 1:
            return "window must be >= 1"
        names = set()
        for f in offer.files:
            if (
                not f.name
                or f.name in (".", "..")
                or any(c in f.name for c in "/\\\0")
                or f.name in names
            ):
                return f"bad or duplicate file name {f.name!r}"
            names.add(f.name)
            if f.size < 0 or not 0 <= f.crc32c < 1 << 32:
                return f"bad size or crc for {f.name!r}"
        return ""

    async def _drop(self, src: int, state: _Incoming, why: str) -> None:
        """Stops and forgets ``state``; aborts its builder unless it was committed."""
        state.dropped = True
        if state.active is not None:
            state.active.cancel()
        with trio.CancelScope(shield=True):
            async with state.lock:
                await self._discard(state, why)

    async def _discard(self, state: _Incoming, why: str) -> None:
        """Forgets ``state`` and aborts its builder; the caller holds ``state.lock``."""
        state.dropped = True
        if self._states.get(state.src) is state:
            del self._states[state.src]
        if not state.completed:
            log.info(
                "node %d: aborting partial snapshot %d/%d from node %d: %s",
                self.node_id,
                *state.key,
                state.src,
                why,
            )
            with trio.CancelScope(shield=True):
                try:
                    await self._disk(state.builder.abort)
                except Exception:
                    log.exception("node %d: aborting a snapshot builder failed", self.node_id)

    async def _claim_and_receive(
        self, conn: FramedStream, state: _Incoming, handler: InboundHandler[Any], ctx: str
    ) -> None:
        # One connection at a time writes into a builder: a newcomer cancels the previous
        # connection (typically a half-dead one the sender already gave up on) and waits for it.
        state.claims += 1
        ticket = state.claims
        if state.active is not None:
            state.active.cancel()
        async with state.lock:
            if ticket != state.claims or state.dropped:
                await conn.send(SnapshotError(reason="superseded", retry=True))
                return
            if state.completed:
                if state.offer.request != state.delivered:
                    # Same snapshot, newer request (e.g. the sender's term moved on): the
                    # caller's contract is that *its* request reached the core.
                    self._deliver(handler, state, ctx)
                await conn.send(SnapshotDone())
                return
            with trio.CancelScope() as scope:
                state.active = scope
                try:
                    await self._receive(conn, state, handler, ctx)
                finally:
                    state.active = None
                    if not state.dropped:
                        self._schedule_expiry(state, ticket)

    def _schedule_expiry(self, state: _Incoming, ticket: int) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(self._expire, state, ticket)

    async def _expire(self, state: _Incoming, ticket: int) -> None:
        await trio.sleep(self.options.resume_timeout)
        if state.claims == ticket and state.active is None and not state.dropped:
            if state.completed:
                if self._states.get(state.src) is state:
                    del self._states[state.src]
            else:
                await self._drop(state.src, state, "sender did not resume in time")

    async def _write(self, state: _Incoming, name: str, offset: int, data: bytes) -> None:
        """One ``write_at`` of an empty file (they never get a chunk), recorded in ``state``
        (shielded, so a cancellation cannot separate the two). Raises :class:`_StorageFailure`."""
        with trio.CancelScope(shield=True):
            try:
                await self._disk(state.builder.write_at, name, offset, data)
            except Exception as exc:
                raise _StorageFailure(f"writing {name!r} at {offset}: {exc!r}") from exc
            state.offset = offset + len(data)

    async def _advance(self, state: _Incoming) -> None:
        """Moves past complete files, creating empty ones (they never get a chunk)."""
        files = state.offer.files
        while state.file_index < len(files) and state.offset == files[state.file_index].size:
            f = files[state.file_index]
            if f.size == 0:
                await self._write(state, f.name, 0, b"")
            state.file_index += 1
            state.offset = 0
            state.crc = 0

    async def _write_batch(
        self,
        conn: FramedStream,
        state: _Incoming,
        batch: list[ReceivedChunk],
        acked: Callable[[int], None],
    ) -> None:
        """Checks and writes consecutive chunks (``batch``, starting at ``state``'s position) in
        one worker thread call, then records each in ``state`` and acknowledges it. Writing and
        recording are shielded together, so ``state`` always describes what is on disk. Empty
        chunks stand for empty files (created, not acknowledged: the sender never sent them).

        Raises:
            _StorageFailure: a write failed.
            _Corrupt: a completed file does not match the CRC32C of the offer.
            _BadChunk: a chunk's own CRC32C did not match (the ones before it are written,
                recorded and acknowledged).
        """
        files = state.offer.files
        with trio.CancelScope(shield=True):
            try:
                crcs = await self._disk(_write_chunks, state.builder, files, batch, state.crc)
            except Exception as exc:
                first = batch[0]
                raise _StorageFailure(
                    f"writing {files[first.file_index].name!r} at {first.offset}: {exc!r}"
                ) from exc
            acks: list[bytes] = []
            for chunk, crc in zip(batch, crcs, strict=False):
                n = len(chunk.data)
                state.crc = crc
                state.offset = chunk.offset + n
                self.stats.snapshot_bytes_received += n
                if n:
                    acks.append(
                        conn.pack(SnapshotAck(file_index=chunk.file_index, offset=state.offset))
                    )
                f = files[chunk.file_index]
                if state.offset == f.size:
                    if f.size and state.crc != f.crc32c:
                        raise _Corrupt(f"file {f.name!r} failed its CRC check after transfer")
                    state.file_index += 1
                    state.offset = 0
                    state.crc = 0
        if acks:
            # Counted before they are sent: the sender may use the credit at once, and its
            # next chunk must not look like one beyond the window.
            acked(len(acks))
            await conn.send_packed(acks)
        if len(crcs) < len(batch):
            raise _BadChunk(batch[len(crcs)])

    async def _receive(
        self, conn: FramedStream, state: _Incoming, handler: InboundHandler[Any], ctx: str
    ) -> None:
        try:
            await self._receive_files(conn, state, ctx)
            received_at = trio.current_time()
            failure = await self._commit(conn, state, handler, ctx)
            if failure is None:
                log.debug("%s: commit took %.3fs", ctx, trio.current_time() - received_at)
            if failure is not None:
                raise _StorageFailure(f"commit: {failure!r}") from failure
        except _StorageFailure as exc:
            log.error("%s: %s", ctx, exc)
            await self._discard(state, "storage failure")
            await conn.send(SnapshotError(reason="storage", detail=str(exc)))
        except _Corrupt as exc:
            log.error("%s: %s", ctx, exc)
            await self._discard(state, "file CRC mismatch")
            await conn.send(SnapshotError(reason="corrupt", detail=str(exc)))
        except _Hangup:
            pass
        else:
            await conn.send(SnapshotDone())

    async def _receive_files(self, conn: FramedStream, state: _Incoming, ctx: str) -> None:
        """Receives chunks until every file is complete (returns) or the sender must
        reconnect (raises, or returns after telling it so when a chunk's CRC is wrong).

        Receiving and writing overlap: this task reads chunks, checks where they go and queues
        them; a writer task checks the CRCs of whatever has queued up, writes it in one
        worker-thread call and then acknowledges it. ``state`` only moves when bytes are
        written, so a resume always starts from what is on disk. Payloads are read straight
        into buffers that are reused once written. A sender may have at most ``window``
        chunks unacknowledged, and one that sends more (ignoring its credit) is cut off with a
        :class:`FrameError`: so at most the window's chunks are ever held here, and neither the
        queue nor the buffers grow with the snapshot or its number of files.
        """
        offer = state.offer
        files = offer.files
        await self._advance(state)
        window = min(offer.window, self.options.max_window)
        if state.file_index or state.offset:
            log.info("%s: resuming at file %d offset %d", ctx, state.file_index, state.offset)
        await conn.send(
            SnapshotAccept(file_index=state.file_index, offset=state.offset, window=window)
        )
        # The receiving position runs ahead of ``state`` by the queued chunks.
        file_index, offset = state.file_index, state.offset
        # The window bounds the data chunks in the queue; an empty file's marker (not a chunk
        # the sender sent) may wait for room instead of widening the queue for everyone.
        send_queue, receive_queue = trio.open_memory_channel[ReceivedChunk](window)
        unacked = 0  # data chunks received and not yet acknowledged

        def acked(n: int) -> None:
            nonlocal unacked
            unacked -= n

        free: list[bytearray] = []  # payload buffers ready for reuse
        chunk_size = offer.chunk_size
        # A batch is acknowledged only once all of it is written: taking the whole window at
        # once would leave the sender with no credit, and the connection idle, while it is
        # written. With at most half of it, the other half keeps arriving meanwhile.
        batch_chunks = max(1, window // 2)
        failure: BaseException | None = None

        def acquire(n: int) -> bytearray:
            # A small payload (a small file, a file's last chunk) gets a buffer of its own
            # size: a peer sending many of them then costs what it sends, not a chunk each.
            if n < chunk_size // 4:
                return bytearray(n)
            return free.pop() if free else bytearray(chunk_size)

        async def writer() -> None:
            nonlocal failure
            try:
                async for chunk in receive_queue:
                    batch = [chunk]
                    size = len(chunk.data)
                    while size < _WRITE_BATCH_BYTES and len(batch) < batch_chunks:
                        try:
                            chunk = receive_queue.receive_nowait()
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                        batch.append(chunk)
                        size += len(chunk.data)
                    try:
                        await self._write_batch(conn, state, batch, acked)
                    finally:
                        for c in batch:
                            buf = c.buffer
                            if buf is not None and len(buf) == chunk_size and len(free) <= window:
                                free.append(buf)
            except Exception as exc:
                failure = exc
                nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            try:
                async with send_queue:
                    while file_index < len(files):
                        frame = await conn.receive_chunk(acquire, chunk_size)
                        if type(frame) is ReceivedChunk:
                            chunk = frame
                        elif isinstance(frame, SnapshotChunk):  # another encoder's layout
                            chunk = ReceivedChunk(
                                frame.file_index, frame.offset, frame.crc32c, memoryview(frame.data)
                            )
                        else:
                            raise FrameError(f"expected SnapshotChunk, got {type(frame).__name__}")
                        f = files[file_index]
                        n = len(chunk.data)
                        if (
                            (chunk.file_index, chunk.offset) != (file_index, offset)
                            or n == 0
                            or n > chunk_size
                            or chunk.offset + n > f.size
                        ):
                            raise FrameError(
                                f"chunk ({chunk.file_index}, {chunk.offset}, {n} bytes) does"
                                f" not fit at ({file_index}, {offset})"
                            )
                        if unacked >= window:
                            raise FrameError(
                                f"sender exceeded its window of {window} unacknowledged chunks"
                            )
                        unacked += 1
                        await send_queue.send(chunk)
                        offset += n
                        while file_index < len(files) and offset == files[file_index].size:
                            file_index += 1
                            offset = 0
                            if file_index < len(files) and files[file_index].size == 0:
                                await send_queue.send(
                                    ReceivedChunk(file_index, 0, 0, memoryview(b""))
                                )
            except BaseException as exc:
                if failure is None:
                    failure = exc
                nursery.cancel_scope.cancel()
        if isinstance(failure, _BadChunk):
            bad = failure.chunk
            name = files[bad.file_index].name
            self.stats.snapshot_crc_errors += 1
            log.warning(
                "%s: chunk CRC mismatch in %r at offset %d; asking the sender to resume",
                ctx,
                name,
                bad.offset,
            )
            await conn.send(SnapshotError(reason="crc", detail=f"{name}@{bad.offset}", retry=True))
            # Hang up: the chunks in flight behind the bad one would not fit any more.
            raise _Hangup
        if failure is not None:
            raise failure

    def _deliver(self, handler: InboundHandler[Any], state: _Incoming, ctx: str) -> None:
        state.delivered = state.offer.request
        try:
            handler.snapshot_received(state.stored, state.offer.request)
        except Exception:
            log.exception("%s: snapshot_received raised", ctx)

    async def _commit(
        self, conn: FramedStream, state: _Incoming, handler: InboundHandler[Any], ctx: str
    ) -> Exception | None:
        async def keepalive() -> None:
            while True:
                await trio.sleep(self.options.keepalive_interval)
                await conn.send(SnapshotKeepalive())

        failure: Exception | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_ignore_errors, keepalive)
            # Shielded: once the commit returns, the handler must hear about it no matter what.
            with trio.CancelScope(shield=True):
                try:
                    stored = await self._disk(state.builder.commit, state.offer.user_meta)
                except Exception as exc:
                    log.error("%s: committing the received snapshot failed: %r", ctx, exc)
                    failure = exc
                else:
                    state.completed = True
                    state.stored = stored
                    self.stats.snapshots_received += 1
                    log.info("%s: committed; delivering the request to the core", ctx)
                    self._deliver(handler, state, ctx)
            nursery.cancel_scope.cancel()
        return failure


async def _ignore_errors(fn: Callable[[], Awaitable[None]]) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, TransportError):
        await fn()
