"""The file-system seam: every byte the storage layer writes goes through a :class:`FileSystem`.

Two implementations:

* :data:`REAL_FS` (:class:`RealFileSystem`): ``os`` calls, ``fsync``/``fdatasync``, directory
  fsync, ``fcntl.flock`` locks.
* :class:`SimulatedFileSystem`: an in-memory disk for tests that knows which bytes and which
  directory entries are durable. :meth:`SimulatedFileSystem.crash` throws away everything that was
  not made durable (torn or zero-filled file tails, vanished or reverted creates and renames), and
  faults (``ENOSPC`` on write, ``EIO`` on fsync, a crash at the N-th mutating call) can be injected.

File descriptors are plain ints; errors are :class:`OSError` (the callers turn them into
:class:`~trioraft.errors.StorageFailed`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import posixpath
import random
import shutil
import threading
from collections.abc import Callable, Sequence
from typing import Literal, Protocol

import attrs

__all__ = [
    "REAL_FS",
    "Buffer",
    "FileLock",
    "FileSystem",
    "LockHeldError",
    "NoSyncFileSystem",
    "OpenMode",
    "RealFileSystem",
    "SimulatedCrash",
    "SimulatedFileSystem",
    "ensure_dir",
    "read_file",
    "write_file_durably",
]

Buffer = bytes | bytearray | memoryview
#: ``"r"`` read only; ``"r+"`` read/write an existing file; ``"w"`` create or truncate, read/write;
#: ``"a"`` create if missing, read/write, positioned at the end; ``"x"`` create, must not exist.
OpenMode = Literal["r", "r+", "w", "a", "x"]


#: ``SYNC_FILE_RANGE_WRITE`` from <fcntl.h> (Linux): start writeback of the dirty pages, no wait
_SYNC_FILE_RANGE_WRITE = 2


def _load_sync_file_range() -> Callable[[int, int, int], None] | None:
    """``sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE)`` through libc, or None
    where it does not exist (not Linux, no libc symbol). Looked up on first use: ctypes is not
    worth importing for a node that never writes a snapshot."""
    if not os.uname().sysname.startswith("Linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.sync_file_range
    except Exception:  # no _ctypes in this build, no libc, no symbol: only a hint is lost
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    fn.restype = ctypes.c_int

    def start_writeback(fd: int, offset: int, length: int) -> None:
        # A failure is only a lost hint: fsync still does (and reports) the real work.
        fn(fd, offset, length, _SYNC_FILE_RANGE_WRITE)

    return start_writeback


_POSIX_FALLOCATE: Callable[[int, int, int], None] | None = getattr(os, "posix_fallocate", None)
_sync_file_range: Callable[[int, int, int], None] | None = None
_sync_file_range_loaded = False
_F_FULLFSYNC: int | None = getattr(fcntl, "F_FULLFSYNC", None)


def _full_fsync(fd: int) -> None:
    # On macOS fsync() does not flush the drive's cache; F_FULLFSYNC does.
    if _F_FULLFSYNC is not None:
        try:
            fcntl.fcntl(fd, _F_FULLFSYNC)
            return
        except OSError:
            pass  # not supported by this file system: fall back to fsync
    os.fsync(fd)


_fdatasync: Callable[[int], None] = (
    os.fdatasync if _F_FULLFSYNC is None and hasattr(os, "fdatasync") else _full_fsync
)


#: gathered writes are issued in groups of at most this many buffers (below IOV_MAX)
_IOV_BATCH = 512


class LockHeldError(BlockingIOError):
    """The lock file is held by someone else (another process, or another opener in this one)."""


class FileLock(Protocol):
    """An exclusive lock obtained from :meth:`FileSystem.lock`."""

    def release(self) -> None:
        """Release the lock (idempotent)."""


class FileSystem(Protocol):
    """The small set of file operations the WAL and the snapshot store use.

    Writes go to the current position (``write``) or an offset (``pwrite``) and always write the
    whole buffer. Nothing is durable until ``fsync``/``fdatasync`` (file data) and ``fsync_dir``
    of the parent (creates, renames, removes). All methods raise :class:`OSError`.
    """

    def open(self, path: str, mode: OpenMode = "r") -> int:
        """Open ``path``; returns a descriptor."""

    def close(self, fd: int) -> None:
        """Close a descriptor."""

    def write(self, fd: int, data: Buffer) -> None:
        """Write all of ``data`` at the current position and advance it."""

    def writev(self, fd: int, parts: Sequence[Buffer]) -> None:
        """Write all of ``parts`` back to back at the current position (one gathered write)."""

    def pwrite(self, fd: int, data: Buffer, offset: int) -> None:
        """Write all of ``data`` at ``offset`` (the position does not move)."""

    def read(self, fd: int, n: int) -> bytes:
        """Read up to ``n`` bytes from the current position (fewer only at end of file)."""

    def pread(self, fd: int, n: int, offset: int) -> bytes:
        """Read up to ``n`` bytes at ``offset``."""

    def seek(self, fd: int, offset: int) -> None:
        """Move the position to ``offset``."""

    def fsync(self, fd: int) -> None:
        """Make the file's data and metadata durable."""

    def fdatasync(self, fd: int) -> None:
        """Make the file's data (and its size) durable."""

    def allocate(self, fd: int, offset: int, length: int) -> None:
        """Reserve disk space for ``[offset, offset + length)``: the file grows to at least
        ``offset + length`` (new bytes read as zeros) and later writes there need no block
        allocation. Raises ``OSError`` (e.g. ``ENOSPC``; ``EOPNOTSUPP`` where unsupported)."""

    def truncate(self, fd: int, size: int) -> None:
        """Cut (or zero-extend) the file to ``size`` bytes."""

    def writeback(self, fd: int, offset: int, length: int) -> None:
        """Hint: start writing this range to the disk now (the pages stay cached). Not a
        durability guarantee (that is ``fsync``); may do nothing."""

    def fsize(self, fd: int) -> int:
        """Current size of an open file."""

    def rename(self, src: str, dst: str) -> None:
        """Atomically rename ``src`` to ``dst`` (replacing a file, or an empty directory)."""

    def remove(self, path: str) -> None:
        """Remove a file."""

    def mkdir(self, path: str) -> None:
        """Create one directory (the parent must exist). Raises FileExistsError."""

    def listdir(self, path: str) -> list[str]:
        """Names in a directory, sorted."""

    def fsync_dir(self, path: str) -> None:
        """Make the directory's entries (creates, renames, removes inside it) durable."""

    def exists(self, path: str) -> bool:
        """True if ``path`` names a file or a directory."""

    def isdir(self, path: str) -> bool:
        """True if ``path`` names a directory."""

    def size(self, path: str) -> int:
        """Size in bytes of the file at ``path``."""

    def rmtree(self, path: str) -> None:
        """Remove a directory and everything in it (not durable until the parent is fsynced)."""

    def lock(self, path: str) -> FileLock:
        """Take an exclusive lock on ``path`` (created if missing). Raises LockHeldError."""


# ---------------------------------------------------------------------------------------------
# helpers over the protocol


def read_file(fs: FileSystem, path: str, chunk: int = 8 << 20) -> bytes:
    """Read a whole file through ``fs``."""
    fd = fs.open(path, "r")
    try:
        # one read of the size it has now (no join copy of a large file), then on to the end
        size = fs.fsize(fd)
        parts: list[bytes] = [fs.read(fd, size)] if size > 0 else []
        while True:
            data = fs.read(fd, chunk)
            if not data:
                break
            parts.append(data)
        return parts[0] if len(parts) == 1 else b"".join(parts)
    finally:
        fs.close(fd)


def write_file_durably(fs: FileSystem, path: str, data: Buffer) -> None:
    """Create (or replace) ``path`` with ``data`` and fsync it. The directory entry is NOT made
    durable: fsync the parent (or rename into place and fsync that) afterwards."""
    fd = fs.open(path, "w")
    try:
        fs.write(fd, data)
        fs.fsync(fd)
    finally:
        fs.close(fd)


def ensure_dir(fs: FileSystem, path: str) -> None:
    """Create ``path`` and any missing parents, fsyncing each parent after a create so the new
    directories survive a crash."""
    path = os.path.normpath(path)
    if fs.isdir(path):
        return
    parent = os.path.dirname(path) or "."
    if parent != path:
        ensure_dir(fs, parent)
    try:
        fs.mkdir(path)
    except FileExistsError:
        if not fs.isdir(path):
            raise
        return
    fs.fsync_dir(parent)


# ---------------------------------------------------------------------------------------------
# the real file system


class _RealLock:
    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)


_OPEN_FLAGS: dict[str, int] = {
    "r": os.O_RDONLY,
    "r+": os.O_RDWR,
    "w": os.O_RDWR | os.O_CREAT | os.O_TRUNC,
    "a": os.O_RDWR | os.O_CREAT,
    "x": os.O_RDWR | os.O_CREAT | os.O_EXCL,
}


class RealFileSystem:
    """The operating system's file system (``os``, ``fcntl``)."""

    def open(self, path: str, mode: OpenMode = "r") -> int:
        """See :meth:`FileSystem.open`."""
        fd = os.open(path, _OPEN_FLAGS[mode] | os.O_CLOEXEC, 0o644)
        if mode == "a":
            os.lseek(fd, 0, os.SEEK_END)
        return fd

    def close(self, fd: int) -> None:
        """See :meth:`FileSystem.close`."""
        os.close(fd)

    def write(self, fd: int, data: Buffer) -> None:
        """See :meth:`FileSystem.write`."""
        n = os.write(fd, data)
        if n < len(data):  # short writes are rare (signals, near-full disks): finish the job
            view = memoryview(data)[n:]
            while view:
                n = os.write(fd, view)
                view = view[n:]

    def writev(self, fd: int, parts: Sequence[Buffer]) -> None:
        """See :meth:`FileSystem.writev`."""
        if len(parts) > _IOV_BATCH:
            for i in range(0, len(parts), _IOV_BATCH):
                self.writev(fd, parts[i : i + _IOV_BATCH])
            return
        total = sum(len(p) for p in parts)
        n = os.writev(fd, parts)
        if n < total:  # finish a short write with the remaining bytes
            self.write(fd, memoryview(b"".join(parts))[n:])

    def pwrite(self, fd: int, data: Buffer, offset: int) -> None:
        """See :meth:`FileSystem.pwrite`."""
        view = memoryview(data)
        while view:
            n = os.pwrite(fd, view, offset)
            view = view[n:]
            offset += n

    def read(self, fd: int, n: int) -> bytes:
        """See :meth:`FileSystem.read`."""
        out = os.read(fd, n)
        if 0 < len(out) < n:
            parts = [out]
            got = len(out)
            while got < n:
                more = os.read(fd, n - got)
                if not more:
                    break
                parts.append(more)
                got += len(more)
            out = b"".join(parts)
        return out

    def pread(self, fd: int, n: int, offset: int) -> bytes:
        """See :meth:`FileSystem.pread`."""
        out = os.pread(fd, n, offset)
        if 0 < len(out) < n:
            parts = [out]
            got = len(out)
            while got < n:
                more = os.pread(fd, n - got, offset + got)
                if not more:
                    break
                parts.append(more)
                got += len(more)
            out = b"".join(parts)
        return out

    def seek(self, fd: int, offset: int) -> None:
        """See :meth:`FileSystem.seek`."""
        os.lseek(fd, offset, os.SEEK_SET)

    def fsync(self, fd: int) -> None:
        """See :meth:`FileSystem.fsync`."""
        _full_fsync(fd)

    def fdatasync(self, fd: int) -> None:
        """See :meth:`FileSystem.fdatasync`."""
        _fdatasync(fd)

    def allocate(self, fd: int, offset: int, length: int) -> None:
        """See :meth:`FileSystem.allocate` (``posix_fallocate``; ``EOPNOTSUPP`` where Python
        has none, e.g. macOS)."""
        if _POSIX_FALLOCATE is None:
            raise OSError(errno.EOPNOTSUPP, "posix_fallocate is not available on this platform")
        _POSIX_FALLOCATE(fd, offset, length)

    def truncate(self, fd: int, size: int) -> None:
        """See :meth:`FileSystem.truncate`."""
        os.ftruncate(fd, size)

    def fsize(self, fd: int) -> int:
        """See :meth:`FileSystem.fsize`."""
        return os.fstat(fd).st_size

    def writeback(self, fd: int, offset: int, length: int) -> None:
        """See :meth:`FileSystem.writeback`: on Linux ``sync_file_range(SYNC_FILE_RANGE_WRITE)``,
        which starts writeback of the dirty pages in the range without waiting for it and keeps
        them cached (a snapshot file is read again soon: streamed to followers by a leader,
        restored into the state machine by a follower); elsewhere nothing."""
        global _sync_file_range, _sync_file_range_loaded
        if not _sync_file_range_loaded:
            try:
                _sync_file_range = _load_sync_file_range()
            finally:
                _sync_file_range_loaded = True
        if _sync_file_range is not None:
            _sync_file_range(fd, offset, length)

    def rename(self, src: str, dst: str) -> None:
        """See :meth:`FileSystem.rename`."""
        os.rename(src, dst)

    def remove(self, path: str) -> None:
        """See :meth:`FileSystem.remove`."""
        os.remove(path)

    def mkdir(self, path: str) -> None:
        """See :meth:`FileSystem.mkdir`."""
        os.mkdir(path, 0o755)

    def listdir(self, path: str) -> list[str]:
        """See :meth:`FileSystem.listdir`."""
        return sorted(os.listdir(path))

    def fsync_dir(self, path: str) -> None:
        """See :meth:`FileSystem.fsync_dir`."""
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _full_fsync(fd)
        finally:
            os.close(fd)

    def exists(self, path: str) -> bool:
        """See :meth:`FileSystem.exists`."""
        return os.path.lexists(path)

    def isdir(self, path: str) -> bool:
        """See :meth:`FileSystem.isdir`."""
        return os.path.isdir(path)

    def size(self, path: str) -> int:
        """See :meth:`FileSystem.size`."""
        return os.stat(path).st_size

    def rmtree(self, path: str) -> None:
        """See :meth:`FileSystem.rmtree`."""
        shutil.rmtree(path)

    def lock(self, path: str) -> FileLock:
        """See :meth:`FileSystem.lock`. Uses ``flock``, so a second open of the same file (even in
        this process) conflicts; the holder's pid is written into the file for operators."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            with contextlib.suppress(OSError):
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            who = f" (pid {holder})" if holder else ""
            raise LockHeldError(errno.EWOULDBLOCK, f"{path} is locked{who}", path) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the pid is a courtesy for operators; the flock is what counts
        return _RealLock(fd)


#: The process-wide real file system.
REAL_FS: FileSystem = RealFileSystem()


class NoSyncFileSystem:
    """Wraps a file system and turns every fsync into a no-op.

    For benchmarks and tests that do not care about crash safety (the runtime's ``fsync=False``).
    Data written through it is NOT crash safe.
    """

    def __init__(self, inner: FileSystem) -> None:
        self._inner = inner
        self.open = inner.open
        self.close = inner.close
        self.write = inner.write
        self.writev = inner.writev
        self.pwrite = inner.pwrite
        self.read = inner.read
        self.pread = inner.pread
        self.seek = inner.seek
        self.truncate = inner.truncate
        self.allocate = inner.allocate
        self.fsize = inner.fsize
        self.rename = inner.rename
        self.remove = inner.remove
        self.mkdir = inner.mkdir
        self.listdir = inner.listdir
        self.exists = inner.exists
        self.isdir = inner.isdir
        self.size = inner.size
        self.rmtree = inner.rmtree
        self.lock = inner.lock

    def fsync(self, fd: int) -> None:
        """No-op."""

    def fdatasync(self, fd: int) -> None:
        """No-op."""

    def fsync_dir(self, path: str) -> None:
        """No-op."""

    def writeback(self, fd: int, offset: int, length: int) -> None:
        """No-op."""


# ---------------------------------------------------------------------------------------------
# the simulated file system
#
# Theory of operation. The simulated disk keeps inodes (files and directories) and two views of
# the namespace: the *base* (directory entries known durable) and an ordered list of pending
# namespace operations (link = create/mkdir, unlink = remove, rename) made since. Each pending
# operation records the directories it touches; fsync_dir(d) marks every pending operation that
# touches d durable (a rename is atomic: fsyncing either side makes all of it durable). Files keep
# their live bytes and the bytes durable at the last fsync, plus the lowest offset modified since.
#
# crash(rng) models a power cut: replay onto the base every durable pending operation and each
# non-durable one with some probability (so an un-synced create or rename may vanish or revert),
# keep what is reachable from the root, and give every surviving file its durable bytes plus,
# when it was only appended to, a random prefix of the unsynced tail that may end in zeros (the
# file size reached the disk, the data did not) and, where writeback of a range was started
# (``writeback``), random sectors of that range, which may reach the disk ahead of the bytes
# before them. A file overwritten in place gets its durable or
# its new content, or a per-512-byte-sector mix of the two.


class SimulatedCrash(BaseException):
    """Raised by a :class:`SimulatedFileSystem` at an injected crash point, and by every call
    after it until :meth:`SimulatedFileSystem.crash` "reboots" the disk.

    A ``BaseException`` so that ``except Exception`` clean-up code does not swallow it."""


@attrs.define
class _Inode:
    ino: int
    is_dir: bool
    data: bytearray = attrs.field(factory=bytearray)  # files: live bytes
    durable: bytearray = attrs.field(factory=bytearray)  # files: bytes as of the last fsync
    dirty_from: int | None = None  # lowest offset changed since the last fsync
    #: files: ranges whose writeback was started since the last fsync
    started: list[tuple[int, int]] = attrs.field(factory=list)
    entries: dict[str, int] = attrs.field(factory=dict)  # directories: live entries


@attrs.define
class _NsOp:
    kind: Literal["link", "unlink", "rename"]
    dirs: tuple[int, ...]
    args: tuple[int | str, ...]
    durable: bool = False


@attrs.define
class _Fd:
    ino: int
    path: str
    readable: bool
    writable: bool
    pos: int = 0


@attrs.define
class _Fault:
    op: str
    err: int
    match: str
    count: int
    after: int


class _SimLock:
    def __init__(self, fs: SimulatedFileSystem, path: str, generation: int) -> None:
        self._fs = fs
        self._path = path
        self._generation = generation
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._fs._unlock(self._path, self._generation)


_SECTOR = 512
_ROOT = 1


class SimulatedFileSystem:
    """An in-memory file system that loses what was not made durable when it "crashes".

    Args:
        keep_probability: on :meth:`crash`, the chance that each non-durable namespace operation
            (create, remove, rename) survives anyway.

    Test hooks:
        * :meth:`crash` — power cut; afterwards the file system holds only durable state.
        * :meth:`crash_at` — raise :class:`SimulatedCrash` at the N-th mutating call
          (see :attr:`op_count`; :attr:`trace` describes each mutating call).
        * :meth:`inject_fault` — fail matching calls with an errno (``ENOSPC`` on write,
          ``EIO`` on fsync, ...).
        * :meth:`read_bytes` / :meth:`write_bytes` / :meth:`paths` — inspect and corrupt files.
    """

    MUTATING_OPS = (
        "create",
        "write",
        "truncate",
        "fsync",
        "fsync_dir",
        "rename",
        "remove",
        "mkdir",
    )

    def __init__(self, *, keep_probability: float = 0.5) -> None:
        self._mu = threading.RLock()
        self._keep_probability = keep_probability
        self._inodes: dict[int, _Inode] = {_ROOT: _Inode(_ROOT, True)}
        self._base: dict[int, dict[str, int]] = {_ROOT: {}}
        self._pending: list[_NsOp] = []
        self._next_ino = _ROOT + 1
        self._fds: dict[int, _Fd] = {}
        self._next_fd = 3
        self._locks: dict[str, int] = {}
        self._generation = 0
        self._faults: list[_Fault] = []
        self._crash_at: int | None = None
        self._crashed = False
        #: number of mutating calls so far (see :attr:`MUTATING_OPS`)
        self.op_count = 0
        #: one line per mutating call, e.g. ``"17 write /d/wal/...wal 120 bytes"``
        self.trace: list[str] = []
        #: record :attr:`trace` lines (off by default: the WAL makes many calls)
        self.tracing = False

    # -- test hooks ----------------------------------------------------------------------------

    def crash_at(self, n: int | None) -> None:
        """Raise :class:`SimulatedCrash` instead of performing mutating call number ``n``
        (0-based, counted by :attr:`op_count`); ``None`` disarms."""
        with self._mu:
            self._crash_at = n

    def inject_fault(
        self, op: str, err: int, *, match: str = "", count: int = 1, after: int = 0
    ) -> None:
        """Make the next ``count`` calls of kind ``op`` whose path contains ``match`` raise
        ``OSError(err)``, after letting ``after`` of them succeed.

        ``op`` is one of ``"write"`` (write/pwrite), ``"fsync"`` (fsync/fdatasync/fsync_dir),
        ``"open"``, ``"read"``, ``"rename"``, ``"remove"``, ``"mkdir"``, ``"truncate"``,
        ``"allocate"``.
        A failed write writes nothing; a failed fsync leaves the data not durable.
        """
        with self._mu:
            self._faults.append(_Fault(op, err, match, count, after))

    def clear_faults(self) -> None:
        """Remove all injected faults and the crash point."""
        with self._mu:
            self._faults.clear()
            self._crash_at = None

    @property
    def crashed(self) -> bool:
        """True after an injected crash point fired (until :meth:`crash`)."""
        return self._crashed

    def crash(self, rng: random.Random | None = None, *, lose_everything: bool = False) -> None:
        """Power cut and reboot: keep durable state, and a random part of the rest.

        Args:
            rng: the source of the random choices (seed it and print the seed in tests);
                ``None`` means "keep nothing that was not durable".
            lose_everything: force the most pessimistic outcome (same as ``rng=None``).
        """
        with self._mu:
            pessimistic = lose_everything or rng is None
            ns = {d: dict(e) for d, e in self._base.items()}
            for op in self._pending:
                keep = op.durable or (
                    not pessimistic and rng is not None and rng.random() < self._keep_probability
                )
                if keep:
                    self._apply(ns, op)
            reachable: set[int] = set()
            stack = [_ROOT]
            while stack:
                ino = stack.pop()
                if ino in reachable:
                    continue
                reachable.add(ino)
                for child in ns.get(ino, {}).values():
                    stack.append(child)
            inodes: dict[int, _Inode] = {}
            for ino in sorted(reachable):
                node = self._inodes[ino]
                if node.is_dir:
                    node.entries = dict(ns.get(ino, {}))
                else:
                    content = self._survivor(node, None if pessimistic else rng)
                    node.data = bytearray(content)
                    node.durable = bytearray(content)
                    node.dirty_from = None
                    node.started = []
                inodes[ino] = node
            self._inodes = inodes
            self._base = {ino: dict(n.entries) for ino, n in inodes.items() if n.is_dir}
            self._pending = []
            self._fds.clear()
            self._locks.clear()
            self._generation += 1
            self._crashed = False
            self._crash_at = None
            self._faults.clear()

    def read_bytes(self, path: str) -> bytes:
        """The live content of a file."""
        with self._mu:
            return bytes(self._file(path).data)

    def durable_bytes(self, path: str) -> bytes:
        """The content of a file as of its last fsync."""
        with self._mu:
            return bytes(self._file(path).durable)

    def write_bytes(self, path: str, data: bytes) -> None:
        """Replace a file's content, durably, bypassing fault injection (for corruption tests).
        The file must exist."""
        with self._mu:
            node = self._file(path)
            node.data = bytearray(data)
            node.durable = bytearray(data)
            node.dirty_from = None
            node.started = []

    def paths(self, root: str = "/") -> list[str]:
        """Every file and directory path under ``root`` (live view), sorted."""
        with self._mu:
            out: list[str] = []

            def walk(ino: int, prefix: str) -> None:
                for name, child in sorted(self._inodes[ino].entries.items()):
                    p = posixpath.join(prefix, name)
                    out.append(p)
                    if self._inodes[child].is_dir:
                        walk(child, p)

            start = self._norm(root)
            walk(self._lookup(start), start)
            return out

    # -- FileSystem ----------------------------------------------------------------------------

    def open(self, path: str, mode: OpenMode = "r") -> int:
        """See :meth:`FileSystem.open`."""
        with self._mu:
            path = self._norm(path)
            self._check("open", path)
            parent, name = self._parent(path)
            ino = self._inodes[parent].entries.get(name)
            if ino is None:
                if mode in ("r", "r+"):
                    raise FileNotFoundError(errno.ENOENT, "no such file", path)
                self._mutate("create", path)
                ino = self._new_inode(False)
                self._ns(_NsOp("link", (parent,), (parent, name, ino)))
            else:
                if mode == "x":
                    raise FileExistsError(errno.EEXIST, "file exists", path)
                if self._inodes[ino].is_dir:
                    raise IsADirectoryError(errno.EISDIR, "is a directory", path)
                if mode == "w" and self._inodes[ino].data:
                    self._mutate("truncate", path)
                    self._set_size(self._inodes[ino], 0)
            node = self._inodes[ino]
            fd = self._next_fd
            self._next_fd += 1
            pos = len(node.data) if mode == "a" else 0
            self._fds[fd] = _Fd(ino, path, True, mode != "r", pos)
            return fd

    def close(self, fd: int) -> None:
        """See :meth:`FileSystem.close`."""
        with self._mu:
            self._check_alive()
            if self._fds.pop(fd, None) is None:
                raise OSError(errno.EBADF, "bad file descriptor")

    def write(self, fd: int, data: Buffer) -> None:
        """See :meth:`FileSystem.write`."""
        with self._mu:
            f = self._fd(fd, write=True)
            self._check("write", f.path)
            self._mutate("write", f"{f.path} @{f.pos} {len(data)} bytes")
            self._put(self._inodes[f.ino], data, f.pos)
            f.pos += len(data)

    def writev(self, fd: int, parts: Sequence[Buffer]) -> None:
        """See :meth:`FileSystem.writev` (one mutating call, like the real one)."""
        self.write(fd, b"".join(parts))

    def pwrite(self, fd: int, data: Buffer, offset: int) -> None:
        """See :meth:`FileSystem.pwrite`."""
        with self._mu:
            f = self._fd(fd, write=True)
            self._check("write", f.path)
            self._mutate("write", f"{f.path} @{offset} {len(data)} bytes")
            self._put(self._inodes[f.ino], data, offset)

    def read(self, fd: int, n: int) -> bytes:
        """See :meth:`FileSystem.read`."""
        with self._mu:
            f = self._fd(fd)
            self._check("read", f.path)
            node = self._inodes[f.ino]
            out = bytes(node.data[f.pos : f.pos + n])
            f.pos += len(out)
            return out

    def pread(self, fd: int, n: int, offset: int) -> bytes:
        """See :meth:`FileSystem.pread`."""
        with self._mu:
            f = self._fd(fd)
            self._check("read", f.path)
            return bytes(self._inodes[f.ino].data[offset : offset + n])

    def seek(self, fd: int, offset: int) -> None:
        """See :meth:`FileSystem.seek`."""
        with self._mu:
            self._fd(fd).pos = offset

    def fsync(self, fd: int) -> None:
        """See :meth:`FileSystem.fsync`."""
        with self._mu:
            f = self._fd(fd)
            self._check("fsync", f.path)
            self._mutate("fsync", f.path)
            node = self._inodes[f.ino]
            if node.dirty_from is not None:
                start = min(node.dirty_from, len(node.durable))
                del node.durable[start:]
                node.durable += node.data[start:]
                node.dirty_from = None
            node.started = []

    def fdatasync(self, fd: int) -> None:
        """See :meth:`FileSystem.fdatasync` (same as fsync here)."""
        self.fsync(fd)

    def allocate(self, fd: int, offset: int, length: int) -> None:
        """See :meth:`FileSystem.allocate`: the file grows with zeros, durable only after an
        fsync (a crash before it may keep any prefix of the growth)."""
        with self._mu:
            f = self._fd(fd, write=True)
            self._check("allocate", f.path)
            self._mutate("allocate", f"{f.path} @{offset} {length} bytes")
            node = self._inodes[f.ino]
            grow = offset + length - len(node.data)
            if grow > 0:
                self._put(node, bytes(grow), len(node.data))

    def truncate(self, fd: int, size: int) -> None:
        """See :meth:`FileSystem.truncate`."""
        with self._mu:
            f = self._fd(fd, write=True)
            self._check("truncate", f.path)
            self._mutate("truncate", f"{f.path} to {size}")
            self._set_size(self._inodes[f.ino], size)

    def fsize(self, fd: int) -> int:
        """See :meth:`FileSystem.fsize`."""
        with self._mu:
            return len(self._inodes[self._fd(fd).ino].data)

    def writeback(self, fd: int, offset: int, length: int) -> None:
        """See :meth:`FileSystem.writeback`: nothing becomes durable (only fsync does that), but
        a crash may now keep sectors of the range while losing bytes before it (the disk got
        them first)."""
        with self._mu:
            node = self._inodes[self._fd(fd).ino]
            if node.dirty_from is not None and length > 0:
                node.started.append((offset, offset + length))

    def rename(self, src: str, dst: str) -> None:
        """See :meth:`FileSystem.rename`."""
        with self._mu:
            src, dst = self._norm(src), self._norm(dst)
            self._check("rename", src)
            sparent, sname = self._parent(src)
            ino = self._inodes[sparent].entries.get(sname)
            if ino is None:
                raise FileNotFoundError(errno.ENOENT, "no such file", src)
            dparent, dname = self._parent(dst)
            existing = self._inodes[dparent].entries.get(dname)
            if existing is not None and existing != ino:
                old = self._inodes[existing]
                if old.is_dir and old.entries:
                    raise OSError(errno.ENOTEMPTY, "directory not empty", dst)
                if old.is_dir != self._inodes[ino].is_dir:
                    raise OSError(errno.EISDIR if old.is_dir else errno.ENOTDIR, "type", dst)
            if self._inodes[ino].is_dir and self._is_ancestor(ino, dparent):
                raise OSError(errno.EINVAL, "cannot move a directory into itself", dst)
            self._mutate("rename", f"{src} -> {dst}")
            self._ns(_NsOp("rename", (sparent, dparent), (sparent, sname, dparent, dname, ino)))

    def remove(self, path: str) -> None:
        """See :meth:`FileSystem.remove`."""
        with self._mu:
            path = self._norm(path)
            self._check("remove", path)
            parent, name = self._parent(path)
            ino = self._inodes[parent].entries.get(name)
            if ino is None:
                raise FileNotFoundError(errno.ENOENT, "no such file", path)
            if self._inodes[ino].is_dir:
                raise IsADirectoryError(errno.EISDIR, "is a directory", path)
            self._mutate("remove", path)
            self._ns(_NsOp("unlink", (parent,), (parent, name, ino)))

    def mkdir(self, path: str) -> None:
        """See :meth:`FileSystem.mkdir`."""
        with self._mu:
            path = self._norm(path)
            self._check("mkdir", path)
            parent, name = self._parent(path)
            if name in self._inodes[parent].entries:
                raise FileExistsError(errno.EEXIST, "file exists", path)
            self._mutate("mkdir", path)
            ino = self._new_inode(True)
            self._ns(_NsOp("link", (parent,), (parent, name, ino)))

    def listdir(self, path: str) -> list[str]:
        """See :meth:`FileSystem.listdir`."""
        with self._mu:
            self._check_alive()
            node = self._inodes[self._lookup(self._norm(path))]
            if not node.is_dir:
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", path)
            return sorted(node.entries)

    def fsync_dir(self, path: str) -> None:
        """See :meth:`FileSystem.fsync_dir`."""
        with self._mu:
            path = self._norm(path)
            self._check("fsync", path)
            ino = self._lookup(path)
            if not self._inodes[ino].is_dir:
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", path)
            self._mutate("fsync_dir", path)
            for op in self._pending:
                if ino in op.dirs:
                    op.durable = True
            # fold the durable prefix into the base so the pending list stays short
            k = 0
            while k < len(self._pending) and self._pending[k].durable:
                self._apply(self._base, self._pending[k])
                k += 1
            del self._pending[:k]

    def exists(self, path: str) -> bool:
        """See :meth:`FileSystem.exists`."""
        with self._mu:
            self._check_alive()
            try:
                self._lookup(self._norm(path))
            except OSError:
                return False
            return True

    def isdir(self, path: str) -> bool:
        """See :meth:`FileSystem.isdir`."""
        with self._mu:
            self._check_alive()
            try:
                return self._inodes[self._lookup(self._norm(path))].is_dir
            except OSError:
                return False

    def size(self, path: str) -> int:
        """See :meth:`FileSystem.size`."""
        with self._mu:
            self._check_alive()
            return len(self._file(path).data)

    def rmtree(self, path: str) -> None:
        """See :meth:`FileSystem.rmtree`."""
        with self._mu:
            path = self._norm(path)
            ino = self._lookup(path)
            if not self._inodes[ino].is_dir:
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", path)
            for name in sorted(self._inodes[ino].entries):
                child = posixpath.join(path, name)
                if self._inodes[self._inodes[ino].entries[name]].is_dir:
                    self.rmtree(child)
                else:
                    self.remove(child)
            self._check("remove", path)
            parent, name = self._parent(path)
            self._mutate("remove", path + "/")
            self._ns(_NsOp("unlink", (parent,), (parent, name, ino)))

    def lock(self, path: str) -> FileLock:
        """See :meth:`FileSystem.lock`. Locks are dropped by :meth:`crash`."""
        with self._mu:
            path = self._norm(path)
            if path in self._locks:
                raise LockHeldError(errno.EWOULDBLOCK, f"{path} is locked", path)
            fd = self.open(path, "a")
            self.close(fd)
            self._locks[path] = self._generation
            return _SimLock(self, path, self._generation)

    def _unlock(self, path: str, generation: int) -> None:
        with self._mu:
            if self._locks.get(path) == generation:
                del self._locks[path]

    # -- internals -----------------------------------------------------------------------------

    @staticmethod
    def _norm(path: str) -> str:
        return posixpath.normpath(posixpath.join("/", path))

    def _check_alive(self) -> None:
        if self._crashed:
            raise SimulatedCrash("the simulated machine has crashed")

    def _check(self, op: str, path: str) -> None:
        self._check_alive()
        for fault in self._faults:
            if fault.op == op and fault.match in path and fault.count > 0:
                if fault.after > 0:
                    fault.after -= 1
                    continue
                fault.count -= 1
                raise OSError(fault.err, os.strerror(fault.err), path)

    def _mutate(self, kind: str, what: str) -> None:
        n = self.op_count
        if self._crash_at is not None and n >= self._crash_at:
            self._crashed = True
            if self.tracing:
                self.trace.append(f"{n} CRASH before {kind} {what}")
            raise SimulatedCrash(f"crash injected before call {n}: {kind} {what}")
        self.op_count = n + 1
        if self.tracing:
            self.trace.append(f"{n} {kind} {what}")

    def _new_inode(self, is_dir: bool) -> int:
        ino = self._next_ino
        self._next_ino += 1
        self._inodes[ino] = _Inode(ino, is_dir)
        return ino

    def _ns(self, op: _NsOp) -> None:
        self._pending.append(op)
        live = {d: self._inodes[d].entries for d in op.dirs}
        self._apply(live, op)

    @staticmethod
    def _apply(ns: dict[int, dict[str, int]], op: _NsOp) -> None:
        if op.kind == "link":
            d, name, ino = op.args
            assert isinstance(d, int) and isinstance(name, str) and isinstance(ino, int)
            ns.setdefault(d, {})[name] = ino
        elif op.kind == "unlink":
            d, name, ino = op.args
            assert isinstance(d, int) and isinstance(name, str)
            entries = ns.setdefault(d, {})
            if entries.get(name) == ino:
                del entries[name]
        else:
            sd, sname, dd, dname, ino = op.args
            assert isinstance(sd, int) and isinstance(dd, int)
            assert isinstance(sname, str) and isinstance(dname, str) and isinstance(ino, int)
            src = ns.setdefault(sd, {})
            if src.get(sname) == ino:
                del src[sname]
            ns.setdefault(dd, {})[dname] = ino

    def _survivor(self, node: _Inode, rng: random.Random | None) -> bytes:
        durable = bytes(node.durable)
        if node.dirty_from is None or rng is None:
            return durable
        live = bytes(node.data)
        if node.dirty_from >= len(durable) and live.startswith(durable):
            # appended only: a prefix of the new bytes reached the disk, the end maybe as zeros
            extra = live[len(durable) :]
            roll = rng.random()
            if roll < 0.2:
                kept = 0
            elif roll < 0.4:
                kept = len(extra)
            else:
                kept = rng.randint(0, len(extra))
            real = kept if rng.random() < 0.5 else rng.randint(0, kept)
            torn = durable + extra[:real] + bytes(kept - real)
            if node.started and rng.random() < 0.5:
                torn = _with_started(torn, live, node.started, len(durable), rng)
            return torn
        roll = rng.random()
        if roll < 0.3:
            return durable
        if roll < 0.6:
            return live
        size = rng.choice((len(durable), len(live)))
        out = bytearray(size)
        for start in range(0, size, _SECTOR):
            src = live if rng.random() < 0.5 else durable
            chunk = src[start : min(start + _SECTOR, size)]
            out[start : start + len(chunk)] = chunk
        return bytes(out)

    def _lookup(self, path: str) -> int:
        ino = _ROOT
        for part in path.split("/"):
            if not part:
                continue
            node = self._inodes[ino]
            if not node.is_dir:
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", path)
            child = node.entries.get(part)
            if child is None:
                raise FileNotFoundError(errno.ENOENT, "no such file or directory", path)
            ino = child
        return ino

    def _parent(self, path: str) -> tuple[int, str]:
        parent_path, name = posixpath.split(path)
        if not name:
            raise OSError(errno.EINVAL, "invalid path", path)
        parent = self._lookup(parent_path)
        if not self._inodes[parent].is_dir:
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", parent_path)
        return parent, name

    def _file(self, path: str) -> _Inode:
        node = self._inodes[self._lookup(self._norm(path))]
        if node.is_dir:
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        return node

    def _fd(self, fd: int, *, write: bool = False) -> _Fd:
        self._check_alive()
        f = self._fds.get(fd)
        if f is None:
            raise OSError(errno.EBADF, "bad file descriptor")
        if write and not f.writable:
            raise OSError(errno.EBADF, "file not open for writing", f.path)
        return f

    def _is_ancestor(self, ino: int, of: int) -> bool:
        """True if directory ``ino`` is ``of`` or one of its ancestors."""
        if ino == of:
            return True
        for d, node in self._inodes.items():
            if node.is_dir and of in node.entries.values():
                return self._is_ancestor(ino, d)
        return False

    @staticmethod
    def _mark(node: _Inode, offset: int) -> None:
        if node.dirty_from is None or offset < node.dirty_from:
            node.dirty_from = offset

    def _put(self, node: _Inode, data: Buffer, offset: int) -> None:
        end = offset + len(data)
        if offset > len(node.data):
            self._mark(node, len(node.data))
            node.data.extend(bytes(offset - len(node.data)))
        self._mark(node, offset)
        node.data[offset:end] = data

    def _set_size(self, node: _Inode, size: int) -> None:
        self._mark(node, min(size, len(node.data)))
        if size < len(node.data):
            del node.data[size:]
        else:
            node.data.extend(bytes(size - len(node.data)))


def _with_started(
    content: bytes, live: bytes, started: list[tuple[int, int]], floor: int, rng: random.Random
) -> bytes:
    """A crashed appended file's surviving ``content`` plus, sector by sector, parts of the
    ranges whose writeback was started: those may have reached the disk ahead of bytes before
    them (with the file size, or not). Nothing below ``floor`` (the durable part) changes."""
    out = bytearray(content)
    for lo, hi in started:
        lo, hi = max(lo, floor), min(hi, len(live))
        if lo >= hi:
            continue
        if len(out) < hi and rng.random() < 0.5:
            out.extend(bytes(hi - len(out)))  # the new size reached the disk too
        start = lo
        while start < min(hi, len(out)):
            end = min(hi, len(out), (start // _SECTOR + 1) * _SECTOR)
            if rng.random() < 0.5:
                out[start:end] = live[start:end]
            start = end
    return bytes(out)
