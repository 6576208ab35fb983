"""The application side of trioraft: the :class:`StateMachine` protocol and the asynchronous
:class:`SnapshotWriter` / :class:`SnapshotReader` that user code sees.

Snapshot lifecycle, from the state machine's point of view:

1. ``capture()`` is called on the FSM actor *between two applies*, exactly at the applied index.
   It must be cheap and synchronous: take a consistent view (copy a dict, freeze a version, open
   a database snapshot) and return a *saver*.
2. ``await saver(writer)`` then runs in the snapshotter's own task while ``apply`` keeps being
   called for newer entries. The saver writes any number of named files through ``writer``.
   If it raises, or is cancelled, the half-written snapshot is discarded.
3. ``await restore(reader)`` replaces the whole state with a snapshot's content, at start-up
   (newest snapshot on disk) and when a leader streams a snapshot to this node.

Writers and readers move data in chunks through a worker thread; memory use is bounded by a
few chunks, whatever the snapshot size. A writer hands each chunk to the thread and lets the
saver go on producing the next one meanwhile (see :class:`SnapshotFileWriter`).
"""

from __future__ import annotations

import inspect
import mmap
import os
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any, Protocol, runtime_checkable

import trio

from trioraft.core.types import ConfState
from trioraft.errors import StorageCorrupted
from trioraft.runtime.disk import DiskExecutor, PendingCall, start_call

__all__ = [
    "RESERVED_PREFIX",
    "Saver",
    "SnapshotFileReader",
    "SnapshotFileWriter",
    "SnapshotReader",
    "SnapshotWriter",
    "StateMachine",
    "call_hook",
    "validate_file_name",
]

#: File names starting with this prefix are reserved for trioraft's own data inside a snapshot.
RESERVED_PREFIX = "_trioraft"

_DEFAULT_CHUNK = 1 << 20


class StateMachine(Protocol):
    """What trioraft needs from an application.

    Required methods:

    * ``apply(index, data) -> result``: apply one committed command. Called in log order,
      exactly once per index across restarts and snapshot installs, never concurrently with
      another call into the state machine: on the FSM actor, or (while that actor is idle) on
      the task that committed the entry (the raft actor, a transport reader or a proposer), so
      do not rely on the calling task or its context variables. It must be deterministic. The
      return value is handed to the proposer (``await node.propose``); for proposals forwarded
      from another node it must be CBOR-encodable (None, bool, int, float, str, bytes, lists,
      dicts). An exception here fails the node: skipping an entry would let replicas diverge.
    * ``capture() -> saver``: take a consistent, cheap, synchronous view of the state at the
      current applied index and return an ``async def saver(writer: SnapshotWriter)``.
    * ``async restore(reader)``: replace the entire state with the snapshot's content.

    Optional hooks (looked up by name; plain or ``async`` functions; called on the FSM actor in
    log order, between applies):

    * ``on_leader_start(term: int)``: this node became leader.
    * ``on_leader_stop(term: int)``: this node stopped being leader.
    * ``on_conf_committed(index: int, conf: ConfState)``: a membership change was applied.
    """

    def apply(self, index: int, data: bytes) -> Any:
        """Apply the committed command ``data`` at log ``index`` and return its result."""
        ...

    def capture(self) -> Saver:
        """Capture the state at the current applied index; return the coroutine that saves it."""
        ...

    async def restore(self, reader: SnapshotReader) -> None:
        """Replace the whole state with the snapshot readable through ``reader``."""
        ...


#: ``async def saver(writer)``: writes the captured state into a snapshot.
Saver = Callable[["SnapshotWriter"], Awaitable[None]]


async def call_hook(state_machine: object, name: str, *args: object) -> None:
    """Call the optional hook ``name`` if the state machine defines it (sync or async)."""
    hook = getattr(state_machine, name, None)
    if hook is None:
        return
    result = hook(*args)
    if inspect.isawaitable(result):
        await result


def validate_file_name(name: str, *, allow_reserved: bool = False) -> None:
    """Check a snapshot file name.

    Raises:
        ValueError: empty, contains a path separator or NUL, is ``.``/``..``, starts with a dot,
            is the store's ``meta.cbor``, or uses the reserved ``_trioraft`` prefix.
    """
    if not isinstance(name, str) or not name:
        raise ValueError("snapshot file name must be a non-empty str")
    if len(name) > 200:
        raise ValueError(f"snapshot file name too long: {name[:40]!r}...")
    if any(c in name for c in "/\\\0") or name.startswith("."):
        raise ValueError(f"invalid snapshot file name {name!r}")
    if name == "meta.cbor":
        raise ValueError("'meta.cbor' is reserved for the snapshot's metadata")
    if not allow_reserved and name.startswith(RESERVED_PREFIX):
        raise ValueError(f"snapshot file names starting with {RESERVED_PREFIX!r} are reserved")


# -- the storage objects the wrappers drive (structural, so tests can use fakes) ---------------


@runtime_checkable
class _SyncFile(Protocol):
    def write(self, data: bytes | bytearray, /) -> Any: ...
    def close(self) -> None: ...


class _Builder(Protocol):
    def open_file(self, name: str) -> Any: ...


class _Reader(Protocol):
    def read_chunk(self, name: str, offset: int, size: int) -> bytes: ...


class _FileInfo(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def size(self) -> int: ...


class _Stored(Protocol):
    @property
    def index(self) -> int: ...
    @property
    def term(self) -> int: ...
    @property
    def conf(self) -> ConfState: ...
    @property
    def user_meta(self) -> bytes: ...
    @property
    def files(self) -> tuple[Any, ...]: ...


# -- writer -----------------------------------------------------------------------------------


class SnapshotFileWriter:
    """One file being written into a snapshot. Obtain it with ``async with writer.open(name)
    as f``.

    Writes are gathered into chunks of the writer's chunk size (1 MiB by default; a write at
    least that large is a chunk by itself) and each chunk goes to the store in a worker thread
    while the saver produces the next one: :meth:`write` returns once a chunk is handed over,
    and waits only while the file's previous chunk is still being written. So producing and
    writing overlap, and memory stays bounded: per open file at most one chunk in the worker
    thread and one being gathered, each smaller than the chunk size plus the largest single
    write. A chunk handed over is never changed afterwards (a ``bytes`` object, or a read-only
    view of one, is handed over as it is; other buffers are copied, since the caller may reuse
    them).

    A failed background write is raised by the file's next :meth:`write` or :meth:`aclose`
    (and by every later one): never lost. Closing also runs in the background (it flushes and
    fsyncs the file); :meth:`SnapshotWriter.aclose_all`, which trioraft calls before it
    commits the snapshot, waits for every file's writes and close and raises any failure.
    With an executor that cannot start calls in the background (see
    :func:`trioraft.runtime.disk.start_call`) every chunk is written before :meth:`write`
    returns.
    """

    def __init__(self, name: str, raw: _SyncFile, disk: DiskExecutor, chunk_bytes: int) -> None:
        self._name = name
        self._raw = raw
        self._disk = disk
        self._chunk = chunk_bytes
        self._buf = bytearray()
        self._size = 0
        self._closed = False
        self._close_started = False
        #: the write (or close) running in the background, until its outcome is collected
        self._pending: PendingCall[Any] | None = None
        #: the first failure of a background call (raised again by every later call)
        self._failure: BaseException | None = None

    @property
    def name(self) -> str:
        """The file's name inside the snapshot."""
        return self._name

    @property
    def size(self) -> int:
        """Bytes written so far (including buffered bytes)."""
        return self._size

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data`` to the file (see the class docstring for when it waits).

        Raises:
            ValueError: the file is closed.
            StorageFailed: (or another exception of the store) this file's write failed
                earlier, in the background.
        """
        if self._closed:
            raise ValueError(f"snapshot file {self._name!r} is closed")
        if self._failure is not None:
            raise self._failure
        n = len(data) if isinstance(data, bytes | bytearray) else memoryview(data).nbytes
        # The previous chunk's write is waited for before anything of ``data`` is taken, so
        # a failure or a cancellation raised by the wait leaves the file as it was.
        if not self._buf and n >= self._chunk:
            chunk = _frozen(data)
            await self._settle()
            self._size += n
            await self._start(self._raw.write, chunk)
            return
        self._buf += data
        self._size += n
        if len(self._buf) >= self._chunk:
            await self._settle()
            # The buffer itself is handed over and a new one started: no copy.
            gathered, self._buf = self._buf, bytearray()
            await self._start(self._raw.write, gathered)

    async def _start(self, fn: Callable[..., object], *args: object) -> None:
        """Run ``fn(*args)`` (the previous call has ended): in the background if possible."""
        pending = start_call(self._disk, fn, *args)
        if pending is not None:
            self._pending = pending
            return
        # The executor cannot start it in the background: run it now. The bytes are taken
        # already, so the call runs to its end even if the caller is cancelled meanwhile (the
        # cancellation is raised at the caller's next checkpoint), and its failure is the
        # file's, raised again by every later call like a background one.
        try:
            with trio.CancelScope(shield=True):
                await self._disk(fn, *args)
        except Exception as exc:
            if self._failure is None:
                self._failure = exc
            raise

    async def _settle(self) -> None:
        """Wait for the call in the background, if any; raise the file's failure, if any."""
        await self._drain()
        if self._failure is not None:
            raise self._failure

    async def _drain(self) -> None:
        """Wait for the call in the background and keep its failure (a cancelled wait leaves
        the call pending: nothing the file uses may be released before it ends)."""
        pending = self._pending
        if pending is not None:
            try:
                await pending.wait()
            except Exception as exc:
                if self._failure is None:
                    self._failure = exc
            self._pending = None

    async def aclose(self) -> None:
        """Flush and close the file (idempotent); the close (a flush and an fsync in the
        store) may finish in the background. Durability comes with the snapshot's commit.

        Raises:
            StorageFailed: (or another exception of the store) a write of this file failed.
        """
        self._closed = True
        if self._close_started:
            return
        await self._settle()
        self._close_started = True
        if self._buf:
            gathered, self._buf = self._buf, bytearray()
            await self._start(self._write_and_close, gathered)
        else:
            await self._start(self._raw.close)

    def _write_and_close(self, data: bytearray) -> None:
        """The last write and the close in one worker-thread call (in a thread)."""
        self._raw.write(data)
        self._raw.close()

    async def _finish(self) -> None:
        """:meth:`aclose`, then wait until the file is closed.

        Raises:
            StorageFailed: (or another exception of the store) a write or the close failed.
        """
        await self.aclose()
        await self._settle()


def _frozen(data: bytes | bytearray | memoryview) -> bytes | memoryview:
    """``data`` in a form the caller cannot change any more (a copy unless it is immutable)."""
    if isinstance(data, bytes):
        return data
    if (
        isinstance(data, memoryview)
        and data.readonly
        and isinstance(data.obj, bytes)
        and data.c_contiguous
    ):
        return data if data.ndim == 1 and data.itemsize == 1 else data.cast("B")
    return bytes(data)


class SnapshotWriter:
    """Writes the named files of a snapshot being taken (handed to the state machine's saver).

    Files are written into a temporary directory; the snapshot becomes visible atomically only
    when the saver returns normally and trioraft commits it. Example::

        async def saver(writer: SnapshotWriter) -> None:
            async with writer.open("data") as f:
                for chunk in encoded_state:
                    await f.write(chunk)
            writer.user_meta = b"format=1"

    Attributes:
        user_meta: small application metadata stored in the snapshot's meta (readable through
            :attr:`SnapshotReader.user_meta` without opening any file).
    """

    def __init__(
        self,
        builder: _Builder,
        disk: DiskExecutor,
        *,
        index: int,
        term: int,
        conf: ConfState,
        chunk_bytes: int = _DEFAULT_CHUNK,
    ) -> None:
        self._builder = builder
        self._disk = disk
        self._index = index
        self._term = term
        self._conf = conf
        self._chunk = chunk_bytes
        self._allow_reserved = False
        self._names: list[str] = []
        self._created: list[SnapshotFileWriter] = []
        self.user_meta: bytes = b""

    async def _write_runtime_file(self, name: str, data: bytes) -> None:
        """Write a file the runtime owns (a reserved name) next to the user's files."""
        self._allow_reserved = True
        try:
            await self.write_file(name, data)
        finally:
            self._allow_reserved = False

    @property
    def index(self) -> int:
        """The last log index the snapshot covers."""
        return self._index

    @property
    def term(self) -> int:
        """The term of the entry at :attr:`index`."""
        return self._term

    @property
    def conf(self) -> ConfState:
        """The cluster configuration at :attr:`index`."""
        return self._conf

    @property
    def files(self) -> tuple[str, ...]:
        """Names of the files created so far, in creation order."""
        return tuple(self._names)

    async def create(self, name: str) -> SnapshotFileWriter:
        """Create file ``name`` and return its writer; call ``await f.aclose()`` when done
        (:meth:`open` does that for you).

        Raises:
            ValueError: invalid or duplicate name.
        """
        validate_file_name(name, allow_reserved=self._allow_reserved)
        if name in self._names:
            raise ValueError(f"snapshot file {name!r} already written")
        raw = await self._disk(self._builder.open_file, name)
        self._names.append(name)
        f = SnapshotFileWriter(name, raw, self._disk, self._chunk)
        self._created.append(f)
        return f

    @asynccontextmanager
    async def open(self, name: str) -> AsyncIterator[SnapshotFileWriter]:
        """``async with writer.open(name) as f: await f.write(b)``; the file is closed on exit."""
        f = await self.create(name)
        try:
            yield f
        finally:
            await f.aclose()

    async def write_file(
        self,
        name: str,
        data: bytes | bytearray | memoryview | Iterable[bytes] | AsyncIterable[bytes],
    ) -> int:
        """Write a whole file from bytes, an iterable of chunks, or an async iterable of chunks.

        Returns:
            the number of bytes written.
        """
        async with self.open(name) as f:
            if isinstance(data, bytes | bytearray | memoryview):
                await f.write(data)
            elif isinstance(data, AsyncIterable):
                async for chunk in data:
                    await f.write(chunk)
            else:
                for chunk in data:
                    await f.write(chunk)
            return f.size

    async def aclose_all(self) -> None:
        """Close every file and wait until all their writes and closes are done (internal:
        called before commit).

        Raises:
            StorageFailed: (or another exception of the store) a write or close failed.
        """
        for f in self._created:
            await f._finish()

    async def _drain_all(self) -> None:
        """Wait for every write or close still running in the background, without flushing
        or raising (internal: before the snapshot is aborted, so no thread still writes into
        its temporary directory). Shield it from cancellation."""
        for f in self._created:
            await f._drain()


# -- reader -----------------------------------------------------------------------------------


class SnapshotFileReader:
    """Sequential reader of one snapshot file (``async with reader.open(name) as f``)."""

    def __init__(self, backend: _Reader, disk: DiskExecutor, name: str, size: int) -> None:
        self._backend = backend
        self._disk = disk
        self._name = name
        self._size = size
        self._pos = 0

    @property
    def size(self) -> int:
        """Total size of the file in bytes."""
        return self._size

    async def read(self, n: int = -1) -> bytes:
        """Read up to ``n`` bytes (everything left when ``n < 0``); ``b""`` at the end."""
        left = self._size - self._pos
        if n < 0 or n > left:
            n = left
        if n <= 0:
            return b""
        data = await self._disk(self._backend.read_chunk, self._name, self._pos, n)
        self._pos += len(data)
        return data


def _map_read_only(path: str, size: int) -> mmap.mmap:
    """Worker-thread side of :meth:`SnapshotReader.map_file`."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise StorageCorrupted(path, "file is missing") from None
    except OSError as exc:
        raise StorageCorrupted(path, f"cannot open: {exc}") from exc
    try:
        actual = os.fstat(fd).st_size
        if actual != size:
            raise StorageCorrupted(path, f"size {actual}, the snapshot records {size}")
        try:
            return mmap.mmap(fd, size, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:
            raise StorageCorrupted(path, f"cannot map: {exc}") from exc
    finally:
        os.close(fd)


class SnapshotReader:
    """Read access to one stored snapshot (handed to ``StateMachine.restore``)."""

    def __init__(
        self,
        stored: _Stored,
        backend: _Reader,
        disk: DiskExecutor,
        *,
        chunk_bytes: int = _DEFAULT_CHUNK,
    ) -> None:
        self._stored = stored
        self._backend = backend
        self._disk = disk
        self._chunk = chunk_bytes
        self._sizes: dict[str, int] = {
            info.name: info.size
            for info in stored.files
            if not info.name.startswith(RESERVED_PREFIX)
        }
        self._all_sizes: dict[str, int] = {info.name: info.size for info in stored.files}

    @property
    def index(self) -> int:
        """The last log index the snapshot covers."""
        return self._stored.index

    @property
    def term(self) -> int:
        """The term of the entry at :attr:`index`."""
        return self._stored.term

    @property
    def conf(self) -> ConfState:
        """The cluster configuration at :attr:`index`."""
        return self._stored.conf

    @property
    def user_meta(self) -> bytes:
        """The ``user_meta`` the saver set."""
        return self._stored.user_meta

    @property
    def files(self) -> tuple[str, ...]:
        """Names of the application's files in the snapshot."""
        return tuple(self._sizes)

    def size(self, name: str) -> int:
        """Size in bytes of file ``name``.

        Raises:
            KeyError: no such file.
        """
        return self._sizes[name]

    def _size_of(self, name: str, internal: bool) -> int:
        sizes = self._all_sizes if internal else self._sizes
        try:
            return sizes[name]
        except KeyError:
            raise KeyError(f"snapshot {self.index} has no file {name!r}") from None

    async def read_file(self, name: str) -> bytes:
        """Read a whole file into memory (fine for small files; prefer :meth:`iter_file`).

        Raises:
            KeyError: no such file.
        """
        return await self._read(name, internal=False)

    async def read_reserved(self, name: str) -> bytes | None:
        """Read one of trioraft's own files (internal); ``None`` when absent."""
        if name not in self._all_sizes:
            return None
        return await self._read(name, internal=True)

    async def _read(self, name: str, *, internal: bool) -> bytes:
        size = self._size_of(name, internal)
        parts: list[bytes] = []
        offset = 0
        while offset < size:
            n = min(self._chunk, size - offset)
            data = await self._disk(self._backend.read_chunk, name, offset, n)
            if not data:
                break
            parts.append(data)
            offset += len(data)
        return b"".join(parts)

    def file_path(self, name: str) -> str | None:
        """The path of file ``name`` in the snapshot store, for an application that loads it
        by its own means (maps it, opens it as a database read-only) instead of copying it
        through :meth:`read_file`; ``None`` when the store is not on the real file system
        (simulated disks in tests) or the reader has no files on disk: read it then.

        The file must not be modified: it is the committed snapshot. It stays at this path
        at least until ``restore`` returns; afterwards retention may remove it once newer
        snapshots exist (descriptors and mappings opened before stay valid on POSIX, and the
        disk space is freed when the last one is closed).

        Raises:
            KeyError: no such file.
        """
        self._size_of(name, False)
        os_path: Callable[[str], str | None] | None = getattr(self._backend, "os_path", None)
        return None if os_path is None else os_path(name)

    async def map_file(self, name: str) -> mmap.mmap | bytes:
        """The whole file as a read-only buffer without copying it into the process's memory:
        a read-only ``mmap.mmap`` of the file in the store, whose pages are read from the page
        cache when first touched (they count in the process's RSS only once touched, as
        reclaimable file pages). Slicing either kind of result gives ``bytes``. When the file
        has no path (:meth:`file_path` is ``None``) it is read whole instead and returned as
        ``bytes``, as is an empty file (which cannot be mapped). The mapping may outlive the
        snapshot's removal by retention; close it (``.close()``) when the state it backs is
        replaced, or leave it to the garbage collector. As with any mapping, a file shortened
        while mapped (trioraft never shortens a committed snapshot's files; only outside
        damage could) makes touching a page past its new end kill the process with SIGBUS.

        The bytes were checked against their CRC32C when the snapshot was written or received
        and at start-up; a map, like a read, does not check them again.

        Raises:
            KeyError: no such file.
            StorageCorrupted: the file is missing or its size is not the recorded one.
        """
        size = self._size_of(name, False)
        path = self.file_path(name)
        if path is None or size == 0:
            return await self.read_file(name)
        return await self._disk(_map_read_only, path, size)

    async def iter_file(self, name: str, chunk_bytes: int | None = None) -> AsyncIterator[bytes]:
        """Yield the file's content in chunks of at most ``chunk_bytes`` (default 1 MiB).

        Raises:
            KeyError: no such file.
        """
        size = self._size_of(name, False)
        step = chunk_bytes or self._chunk
        offset = 0
        while offset < size:
            data = await self._disk(
                self._backend.read_chunk, name, offset, min(step, size - offset)
            )
            if not data:
                return
            offset += len(data)
            yield data

    @asynccontextmanager
    async def open(self, name: str) -> AsyncIterator[SnapshotFileReader]:
        """``async with reader.open(name) as f: data = await f.read(n)``.

        Raises:
            KeyError: no such file.
        """
        yield SnapshotFileReader(self._backend, self._disk, name, self._size_of(name, False))
