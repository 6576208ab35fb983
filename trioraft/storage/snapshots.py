"""The snapshot store: atomic, checksummed snapshot directories.

Layout (normally ``<data>/snap/``)::

    00000000000000001000-00000000000000000003/   one snapshot: <index:020d>-<term:020d>
        meta.cbor                                index, term, configuration, file list with
                                                 sizes and CRC32C, user metadata (own CRC)
        <user files>
    00000000000000000500-00000000000000000002.broken/   failed verification (kept for operators)
    tmp/<index>-<term>.<random>/                 builders at work (removed when the store opens)

Theory of operation. A :class:`SnapshotBuilder` streams named files into its own directory under
``tmp/`` (buffered writes, CRC32C computed on the way). :meth:`SnapshotBuilder.commit` fsyncs
every file, writes ``meta.cbor`` and fsyncs it, fsyncs the builder's directory, renames it into
place and fsyncs ``snap/``: the snapshot is either wholly there or not at all. Only after that may
the WAL record the snapshot's marker (contract 2). Deleting a snapshot renames it back into
``tmp/`` first (atomic), so a crash mid-delete never leaves a half snapshot under a valid name.
Readers verify sizes and CRCs; :meth:`SnapshotStore.newest` renames a snapshot that fails to
``<name>.broken`` and falls back to the next older one. Retention keeps the ``retention`` newest
and never deletes a pinned snapshot (one being streamed to a follower).
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
import re
import secrets
import threading
from collections.abc import Callable, Iterator, Set
from types import TracebackType
from typing import Final

import attrs
import crc32c

from trioraft.core.encoding import DecodeError, decode, encode
from trioraft.core.types import ConfState, SnapshotMeta
from trioraft.errors import StorageCorrupted, StorageFailed
from trioraft.storage.fs import (
    REAL_FS,
    Buffer,
    FileSystem,
    RealFileSystem,
    ensure_dir,
    read_file,
    write_file_durably,
)

__all__ = [
    "META_NAME",
    "SnapshotBuilder",
    "SnapshotFileInfo",
    "SnapshotFileReader",
    "SnapshotFileWriter",
    "SnapshotManifest",
    "SnapshotReader",
    "SnapshotStore",
    "StoredSnapshot",
    "snapshot_dir_name",
]

log = logging.getLogger(__name__)

META_NAME: Final = "meta.cbor"
TMP_NAME: Final = "tmp"
SNAPSHOT_FORMAT_VERSION: Final = 1
#: writes smaller than this are gathered before they reach the file system
WRITE_BUFFER_BYTES: Final = 1 << 20
#: chunk size when reading a file back to check its CRC
VERIFY_CHUNK_BYTES: Final = 8 << 20
#: start writeback of a file being written every this many bytes (see FileSystem.writeback):
#: the disk works while the caller produces more data and the final fsync has less left to do.
#: The pages stay cached: the file is read again soon (streamed to followers, or restored).
FLUSH_AFTER_BYTES: Final = 8 << 20
_DIR_RE = re.compile(r"^(\d{20})-(\d{20})$")


def snapshot_dir_name(index: int, term: int) -> str:
    """Directory name of the snapshot at ``index``/``term``."""
    return f"{index:020d}-{term:020d}"


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name or len(name) > 255:
        raise ValueError(f"invalid snapshot file name {name!r}")
    if "/" in name or "\\" in name or "\0" in name or name.startswith("."):
        raise ValueError(f"invalid snapshot file name {name!r}")
    if name == META_NAME:
        raise ValueError(f"{META_NAME!r} is reserved for the snapshot's metadata")


@attrs.frozen
class SnapshotFileInfo:
    """One file of a snapshot."""

    name: str
    size: int
    crc32c: int


@attrs.frozen
class SnapshotManifest:
    """What ``meta.cbor`` describes (inside an envelope carrying its own CRC32C)."""

    format: int
    index: int
    term: int
    conf: ConfState
    files: tuple[SnapshotFileInfo, ...]
    user_meta: bytes


@attrs.frozen
class _MetaEnvelope:
    manifest: bytes
    crc32c: int


@attrs.frozen
class StoredSnapshot:
    """A snapshot durably committed in a store.

    Attributes:
        index, term: the last log entry the snapshot covers.
        conf: the configuration at ``index`` (voters, learners, joint parts).
        files: the snapshot's files with their sizes and CRC32C.
        user_meta: opaque bytes given to :meth:`SnapshotBuilder.commit`.
        path: the snapshot's directory.
    """

    index: int
    term: int
    conf: ConfState
    files: tuple[SnapshotFileInfo, ...]
    user_meta: bytes
    path: str

    @property
    def raft_meta(self) -> SnapshotMeta:
        """The core's view: index, term and configuration."""
        return SnapshotMeta(self.index, self.term, self.conf)

    @property
    def total_bytes(self) -> int:
        """Sum of the file sizes."""
        return sum(f.size for f in self.files)

    def file(self, name: str) -> SnapshotFileInfo:
        """The named file's info. Raises KeyError."""
        for f in self.files:
            if f.name == name:
                return f
        raise KeyError(f"snapshot {self.index}/{self.term} has no file {name!r}")


# ---------------------------------------------------------------------------------------------
# the store


class SnapshotStore:
    """Snapshots in one directory (normally ``<data>/snap``). Synchronous and thread-safe.

    Args:
        directory: the store's directory (created with its parents if missing).
        fs: the file system.
        retention: how many of the newest snapshots :meth:`apply_retention` keeps (>= 1).

    Raises:
        StorageFailed: the directory cannot be created or cleaned.
    """

    def __init__(self, directory: str, *, fs: FileSystem = REAL_FS, retention: int = 2) -> None:
        if retention < 1:
            raise ValueError("retention must be at least 1")
        self._fs = fs
        self._dir = os.path.abspath(directory)
        self._tmp = os.path.join(self._dir, TMP_NAME)
        self._retention = retention
        self._mu = threading.RLock()
        self._pins: dict[str, int] = {}
        #: tells which snapshots (index, term) a restart could start from (the WAL's markers);
        #: set by :func:`~trioraft.storage.recovery.recover`, used by :meth:`apply_retention`
        self.referenced: Callable[[], Set[tuple[int, int]]] | None = None
        try:
            ensure_dir(fs, self._dir)
            ensure_dir(fs, self._tmp)
            stale = fs.listdir(self._tmp)
            for name in stale:
                path = os.path.join(self._tmp, name)
                if fs.isdir(path):
                    fs.rmtree(path)
                else:
                    fs.remove(path)
            if stale:
                fs.fsync_dir(self._tmp)
                log.info("snapshot store %s: removed stale temporary %s", self._dir, stale)
        except OSError as exc:
            raise StorageFailed(f"cannot open snapshot store {self._dir}: {exc}") from exc

    @property
    def directory(self) -> str:
        """The store's directory (absolute)."""
        return self._dir

    @property
    def retention(self) -> int:
        """How many snapshots :meth:`apply_retention` keeps."""
        return self._retention

    @property
    def fs(self) -> FileSystem:
        """The file system the store uses."""
        return self._fs

    def begin(self, index: int, term: int, conf: ConfState) -> SnapshotBuilder:
        """Start writing the snapshot at ``index``/``term`` in a fresh temporary directory.

        Raises:
            StorageFailed: the temporary directory cannot be created.
        """
        if index < 0 or term < 0:
            raise ValueError("snapshot index and term must be >= 0")
        name = f"{snapshot_dir_name(index, term)}.{secrets.token_hex(6)}"
        path = os.path.join(self._tmp, name)
        try:
            self._fs.mkdir(path)
        except OSError as exc:
            raise StorageFailed(f"cannot create snapshot temp dir {path}: {exc}") from exc
        return SnapshotBuilder(self, index, term, conf, path)

    def list(self) -> list[StoredSnapshot]:
        """Snapshots with readable metadata, newest first (files are not verified)."""
        return [s for _, s in self._scan() if isinstance(s, StoredSnapshot)]

    def newest(
        self,
        max_index: int | None = None,
        verify: bool = True,
        accept: Callable[[int, int], bool] | None = None,
    ) -> StoredSnapshot | None:
        """The newest valid snapshot at or below ``max_index`` (and, with ``accept``, for whose
        ``(index, term)`` it returns True; others are skipped untouched).

        A snapshot whose metadata is missing or damaged, or (with ``verify``) whose files fail
        their size or CRC check, is renamed ``<dir>.broken`` (logged with its path) and the next
        older one is tried.
        """
        for (index, term), item in self._scan():
            if max_index is not None and index > max_index:
                continue
            if accept is not None and not accept(index, term):
                continue
            if isinstance(item, StorageCorrupted):
                self._quarantine(os.path.join(self._dir, snapshot_dir_name(index, term)), item)
                continue
            if verify:
                try:
                    self.verify(item)
                except StorageCorrupted as exc:
                    self._quarantine(item.path, exc)
                    continue
            return item
        return None

    def get(self, index: int) -> StoredSnapshot | None:
        """The snapshot at ``index`` (metadata only), or ``None``."""
        for s in self.list():
            if s.index == index:
                return s
        return None

    def open_reader(self, index: int) -> SnapshotReader:
        """A reader for the snapshot at ``index``.

        Raises:
            KeyError: no snapshot at that index.
        """
        s = self.get(index)
        if s is None:
            raise KeyError(f"no snapshot at index {index} in {self._dir}")
        return SnapshotReader(self._fs, s)

    @contextlib.contextmanager
    def pin(self, index: int) -> Iterator[StoredSnapshot]:
        """Keep the snapshot at ``index`` from being deleted by retention while the block runs
        (reference counted; used while streaming it to a follower).

        Raises:
            KeyError: no snapshot at that index.
        """
        with self._mu:
            s = self.get(index)
            if s is None:
                raise KeyError(f"no snapshot at index {index} in {self._dir}")
            key = os.path.basename(s.path)
            self._pins[key] = self._pins.get(key, 0) + 1
        try:
            yield s
        finally:
            with self._mu:
                left = self._pins[key] - 1
                if left:
                    self._pins[key] = left
                else:
                    del self._pins[key]

    def pinned(self) -> dict[int, int]:
        """Pinned snapshot indexes and their pin counts."""
        with self._mu:
            return {int(k[:20]): n for k, n in self._pins.items()}

    def apply_retention(self) -> builtins.list[int]:
        """Delete all but the ``retention`` newest snapshots, except pinned ones.

        With :attr:`referenced` set, only snapshots a restart could start from (those with a WAL
        marker) count: a snapshot stored but not yet marked (a received install whose marker is
        still being written) neither takes a place nor loses one, so the newest usable snapshot
        is never deleted for it. Unmarked snapshots older than every kept marked one are useless
        to a restart and deleted.

        Returns:
            The deleted snapshots' indexes.

        Raises:
            StorageFailed: a delete failed.
        """
        with self._mu:
            # Markers first: one written after this read leaves its snapshot looking unmarked,
            # which only ever keeps it.
            marked = self.referenced() if self.referenced is not None else None
            snaps = self.list()
            if marked is None:
                doomed = snaps[self._retention :]
            else:
                usable = [s for s in snaps if (s.index, s.term) in marked]
                kept = usable[: self._retention]
                doomed = usable[self._retention :]
                if kept:
                    floor = kept[-1].index
                    doomed += [
                        s for s in snaps if (s.index, s.term) not in marked and s.index < floor
                    ]
            deleted: builtins.list[int] = []
            for s in doomed:
                if os.path.basename(s.path) in self._pins:
                    log.debug("snapshot %s is pinned; retention keeps it", s.path)
                    continue
                self.delete(s)
                deleted.append(s.index)
            return deleted

    def delete(self, snapshot: StoredSnapshot) -> None:
        """Delete one snapshot now (pins are NOT checked): moved into ``tmp/`` atomically, the
        store directory fsynced, then the files removed.

        Raises:
            StorageFailed: the move failed.
        """
        fs = self._fs
        name = os.path.basename(snapshot.path)
        graveyard = os.path.join(self._tmp, f"{name}.deleted-{secrets.token_hex(4)}")
        with self._mu:
            try:
                fs.rename(snapshot.path, graveyard)
                fs.fsync_dir(self._dir)
            except OSError as exc:
                raise StorageFailed(f"cannot delete snapshot {snapshot.path}: {exc}") from exc
            try:
                fs.rmtree(graveyard)
            except OSError as exc:  # the store removes leftovers in tmp/ when it next opens
                log.warning("snapshot store: removing %s failed: %s", graveyard, exc)
        log.info("snapshot store: deleted snapshot %s", snapshot.path)

    def verify(self, snapshot: StoredSnapshot) -> None:
        """Check every file's presence, size and CRC32C.

        Raises:
            StorageCorrupted: naming the file at fault.
        """
        _verify(self._fs, snapshot)

    # -- internals -----------------------------------------------------------------------------

    def _scan(self) -> builtins.list[tuple[tuple[int, int], StoredSnapshot | StorageCorrupted]]:
        fs = self._fs
        try:
            names = fs.listdir(self._dir)
        except OSError as exc:
            raise StorageFailed(f"cannot list snapshot store {self._dir}: {exc}") from exc
        out: builtins.list[tuple[tuple[int, int], StoredSnapshot | StorageCorrupted]] = []
        for name in names:
            m = _DIR_RE.match(name)
            if not m:
                continue
            key = (int(m.group(1)), int(m.group(2)))
            path = os.path.join(self._dir, name)
            try:
                out.append((key, load_snapshot(fs, path)))
            except StorageCorrupted as exc:
                out.append((key, exc))
        out.sort(key=lambda kv: kv[0], reverse=True)
        return out

    def _quarantine(self, path: str, why: StorageCorrupted) -> None:
        fs = self._fs
        with self._mu:
            target = path + ".broken"
            n = 1
            while fs.exists(target):
                target = f"{path}.broken.{n}"
                n += 1
            try:
                fs.rename(path, target)
                fs.fsync_dir(self._dir)
            except OSError as exc:
                raise StorageFailed(f"cannot set aside damaged snapshot {path}: {exc}") from exc
        log.error("snapshot %s is damaged (%s); renamed to %s", path, why, target)


def load_snapshot(fs: FileSystem, path: str) -> StoredSnapshot:
    """Read a snapshot directory's metadata.

    Raises:
        StorageCorrupted: ``meta.cbor`` is missing, damaged, or disagrees with the directory name.
    """
    meta_path = os.path.join(path, META_NAME)
    try:
        raw = read_file(fs, meta_path)
    except FileNotFoundError:
        raise StorageCorrupted(path, f"{META_NAME} is missing") from None
    except OSError as exc:
        raise StorageCorrupted(meta_path, f"cannot read: {exc}") from exc
    try:
        env: _MetaEnvelope = decode(raw, _MetaEnvelope)
        if crc32c.crc32c(env.manifest) != env.crc32c:
            raise StorageCorrupted(meta_path, "CRC mismatch", 0)
        man: SnapshotManifest = decode(env.manifest, SnapshotManifest)
    except DecodeError as exc:
        raise StorageCorrupted(meta_path, f"undecodable: {exc}") from exc
    m = _DIR_RE.match(os.path.basename(path))
    if m is None or (int(m.group(1)), int(m.group(2))) != (man.index, man.term):
        raise StorageCorrupted(
            meta_path, f"describes snapshot {man.index}/{man.term}, not its directory's"
        )
    names = [f.name for f in man.files]
    if len(set(names)) != len(names):
        raise StorageCorrupted(meta_path, "lists a file twice")
    return StoredSnapshot(man.index, man.term, man.conf, man.files, man.user_meta, path)


def _verify(fs: FileSystem, snapshot: StoredSnapshot) -> None:
    for info in snapshot.files:
        path = os.path.join(snapshot.path, info.name)
        try:
            fd = fs.open(path, "r")
        except FileNotFoundError:
            raise StorageCorrupted(path, "file is missing") from None
        except OSError as exc:
            raise StorageCorrupted(path, f"cannot open: {exc}") from exc
        try:
            crc = 0
            size = 0
            while True:
                chunk = fs.read(fd, VERIFY_CHUNK_BYTES)
                if not chunk:
                    break
                crc = crc32c.crc32c(chunk, crc)
                size += len(chunk)
        except OSError as exc:
            raise StorageCorrupted(path, f"read failed: {exc}", size) from exc
        finally:
            fs.close(fd)
        if size != info.size:
            raise StorageCorrupted(path, f"size is {size}, expected {info.size}")
        if crc != info.crc32c:
            raise StorageCorrupted(path, f"CRC32C mismatch ({crc:#010x} != {info.crc32c:#010x})")


# ---------------------------------------------------------------------------------------------
# writing


@attrs.define
class _FileState:
    path: str
    fd: int | None
    size: int = 0
    #: bytes handed to the file system / offset up to which writeback was started
    written: int = 0
    flushed: int = 0
    crc: int = 0
    #: length of the prefix ``crc`` covers; ``None`` = must be recomputed from the file
    crc_len: int | None = 0
    writer: SnapshotFileWriter | None = None


class SnapshotFileWriter:
    """A file being written into a snapshot (from :meth:`SnapshotBuilder.open_file`).

    Small writes are gathered into 1 MiB writes; large ones go straight to the file. The CRC32C is
    computed as data arrives. ``close()`` flushes and fsyncs the file.
    """

    def __init__(self, builder: SnapshotBuilder, name: str, state: _FileState) -> None:
        self._builder = builder
        self._name = name
        self._state = state
        self._buf = bytearray()
        self._closed = False

    @property
    def name(self) -> str:
        """The file's name inside the snapshot."""
        return self._name

    @property
    def size(self) -> int:
        """Bytes written so far (buffered ones included)."""
        return self._state.size

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    def writable(self) -> bool:
        """Always True while open (file-object protocol)."""
        return not self._closed

    def write(self, data: Buffer) -> int:
        """Append ``data``. Returns ``len(data)``.

        Raises:
            ValueError: the file is closed.
            StorageFailed: the write failed (the builder is then unusable).
        """
        if self._closed:
            raise ValueError(f"snapshot file {self._name!r} is closed")
        st = self._state
        n = len(data)
        if not n:
            return 0
        st.crc = crc32c.crc32c(data, st.crc)
        st.size += n
        if st.crc_len is not None:
            st.crc_len += n
        if not self._buf and n >= WRITE_BUFFER_BYTES:
            self._builder._write(st, data)
            return n
        self._buf += data
        if len(self._buf) >= WRITE_BUFFER_BYTES:
            self._flush()
        return n

    def flush(self) -> None:
        """Hand buffered bytes to the file system (not an fsync)."""
        if not self._closed:
            self._flush()

    def _flush(self) -> None:
        if self._buf:
            self._builder._write(self._state, self._buf)
            self._buf = bytearray()

    def close(self) -> None:
        """Flush, fsync and close the file (idempotent).

        Raises:
            StorageFailed: the flush or fsync failed.
        """
        if self._closed:
            return
        self._flush()
        self._closed = True
        self._builder._finish(self._state)

    def __enter__(self) -> SnapshotFileWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self._closed = True
            self._buf = bytearray()


class SnapshotBuilder:
    """Writes one snapshot into a temporary directory; :meth:`commit` installs it atomically,
    :meth:`abort` (or leaving a ``with`` block by an exception, or without committing) removes
    it. Obtain one from :meth:`SnapshotStore.begin`.

    Attributes:
        index, term, conf: the snapshot's Raft metadata.
        path: the temporary directory.
    """

    def __init__(
        self, store: SnapshotStore, index: int, term: int, conf: ConfState, path: str
    ) -> None:
        self._store = store
        self._fs = store.fs
        self.index = index
        self.term = term
        self.conf = conf
        self.path = path
        self._files: dict[str, _FileState] = {}
        self._done = False
        self._mu = threading.Lock()

    def open_file(self, name: str) -> SnapshotFileWriter:
        """Create the file ``name`` and return a streaming writer for it.

        Raises:
            ValueError: bad name, or a file of that name already exists in this snapshot.
            StorageFailed: the file cannot be created.
        """
        _check_name(name)
        with self._mu:
            self._check_open()
            if name in self._files:
                raise ValueError(f"snapshot file {name!r} already exists")
            state = self._create(name)
            writer = SnapshotFileWriter(self, name, state)
            state.writer = writer
            return writer

    def write_at(
        self,
        name: str,
        offset: int,
        data: bytes | bytearray | memoryview,
        prefix_crc: int | None = None,
    ) -> None:
        """Write ``data`` at ``offset`` of file ``name`` (created if missing) and cut the file
        at ``offset + len(data)``: a receiver resuming after a reconnect rewrites from the last
        acknowledged offset. ``data`` is not kept after the call. ``prefix_crc``, when given,
        must be the CRC32C of the whole file after the write (bytes ``0 .. offset+len(data)``):
        a receiver that keeps a running CRC spares the builder computing it again.

        Raises:
            ValueError: bad name, negative offset, an offset past the end of the file, or the
                file is open through :meth:`open_file`.
            StorageFailed: the write failed.
        """
        _check_name(name)
        if offset < 0:
            raise ValueError("offset must be >= 0")
        with self._mu:
            self._check_open()
            st = self._files.get(name)
            size = 0 if st is None else st.size
            if offset > size:
                raise ValueError(
                    f"write at offset {offset} of {name!r} would leave a hole (size {size})"
                )
            if st is None:
                st = self._create(name)
            if st.writer is not None and not st.writer.closed:
                raise ValueError(f"snapshot file {name!r} is open for streaming")
            if st.fd is None:
                st.fd = self._reopen(st)
            fs = self._fs
            end = offset + len(data)
            try:
                if data:
                    fs.pwrite(st.fd, data, offset)
                if st.size > end:
                    fs.truncate(st.fd, end)
            except OSError as exc:
                raise StorageFailed(f"writing {st.path} failed: {exc}") from exc
            st.written = end
            st.flushed = min(st.flushed, end)
            self._maybe_writeback(st)
            if prefix_crc is not None:
                st.crc = prefix_crc
                st.crc_len = end
            elif st.crc_len is not None and offset == st.crc_len:
                st.crc = crc32c.crc32c(data, st.crc)
                st.crc_len = end
            else:
                st.crc_len = None
            st.size = end

    def size_of(self, name: str) -> int:
        """Bytes written so far to ``name`` (0 if it does not exist yet)."""
        with self._mu:
            st = self._files.get(name)
            return 0 if st is None else st.size

    def files(self) -> list[str]:
        """Names of the files written so far."""
        with self._mu:
            return sorted(self._files)

    def commit(self, user_meta: bytes = b"") -> StoredSnapshot:
        """Install the snapshot: fsync every file, write and fsync ``meta.cbor``, fsync the
        directory, rename it into place, fsync the store directory.

        If a valid snapshot with the same index and term is already installed, this one is
        discarded and the existing one returned.

        Raises:
            StorageFailed: an I/O error (the temporary directory is removed).
            ValueError: the builder was already committed or aborted.
        """
        fs = self._fs
        store = self._store
        with self._mu:
            self._check_open()
            self._done = True
        try:
            infos: list[SnapshotFileInfo] = []
            for name in sorted(self._files):
                st = self._files[name]
                if st.writer is not None and not st.writer.closed:
                    st.writer.close()
                self._finish(st)
                if st.crc_len is None:
                    st.crc = _file_crc(fs, st.path)
                    st.crc_len = st.size
                infos.append(SnapshotFileInfo(name, st.size, st.crc))
            manifest = encode(
                SnapshotManifest(
                    SNAPSHOT_FORMAT_VERSION,
                    self.index,
                    self.term,
                    self.conf,
                    tuple(infos),
                    bytes(user_meta),
                )
            )
            envelope = encode(_MetaEnvelope(manifest, crc32c.crc32c(manifest)))
            write_file_durably(fs, os.path.join(self.path, META_NAME), envelope)
            fs.fsync_dir(self.path)
            final = os.path.join(store.directory, snapshot_dir_name(self.index, self.term))
            if fs.exists(final):
                try:
                    existing = load_snapshot(fs, final)
                except StorageCorrupted as exc:
                    store._quarantine(final, exc)
                else:
                    log.info("snapshot %s already installed; discarding the duplicate", final)
                    self._remove_tmp()
                    return existing
            fs.rename(self.path, final)
            fs.fsync_dir(store.directory)
        except OSError as exc:
            self._remove_tmp()
            raise StorageFailed(f"committing snapshot {self.index}/{self.term}: {exc}") from exc
        except BaseException:
            self._remove_tmp()
            raise
        stored = StoredSnapshot(
            self.index, self.term, self.conf, tuple(infos), bytes(user_meta), final
        )
        log.info(
            "snapshot %d/%d committed: %d files, %d bytes, %s",
            self.index,
            self.term,
            len(infos),
            stored.total_bytes,
            final,
        )
        return stored

    def abort(self) -> None:
        """Discard everything written (idempotent; a no-op after :meth:`commit`)."""
        with self._mu:
            if self._done:
                return
            self._done = True
        self._remove_tmp()
        log.info("snapshot %d/%d aborted", self.index, self.term)

    def __enter__(self) -> SnapshotBuilder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()

    # -- internals -----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._done:
            raise ValueError(f"snapshot builder {self.path} is already committed or aborted")

    def _create(self, name: str) -> _FileState:
        path = os.path.join(self.path, name)
        try:
            fd = self._fs.open(path, "x")
        except OSError as exc:
            raise StorageFailed(f"cannot create {path}: {exc}") from exc
        st = _FileState(path, fd)
        self._files[name] = st
        return st

    def _reopen(self, st: _FileState) -> int:
        try:
            return self._fs.open(st.path, "r+")
        except OSError as exc:
            raise StorageFailed(f"cannot reopen {st.path}: {exc}") from exc

    def _write(self, st: _FileState, data: Buffer) -> None:
        if st.fd is None:
            st.fd = self._reopen(st)
        try:
            self._fs.write(st.fd, data)
        except OSError as exc:
            raise StorageFailed(f"writing {st.path} failed: {exc}") from exc
        st.written += len(data)
        self._maybe_writeback(st)

    def _maybe_writeback(self, st: _FileState) -> None:
        if st.fd is not None and st.written - st.flushed >= FLUSH_AFTER_BYTES:
            self._fs.writeback(st.fd, st.flushed, st.written - st.flushed)
            st.flushed = st.written

    def _finish(self, st: _FileState) -> None:
        """fsync and close a file (no-op if already closed)."""
        if st.fd is None:
            return
        fd, st.fd = st.fd, None
        try:
            self._fs.fsync(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                self._fs.close(fd)
            raise StorageFailed(f"fsync of {st.path} failed: {exc}") from exc
        try:
            self._fs.close(fd)
        except OSError as exc:
            raise StorageFailed(f"closing {st.path} failed: {exc}") from exc

    def _remove_tmp(self) -> None:
        fs = self._fs
        for st in self._files.values():
            if st.fd is not None:
                fd, st.fd = st.fd, None
                with contextlib.suppress(OSError):
                    fs.close(fd)
        try:
            if fs.exists(self.path):
                fs.rmtree(self.path)
        except OSError as exc:  # tmp/ is emptied when the store next opens
            log.warning("removing snapshot temp dir %s failed: %s", self.path, exc)


def _file_crc(fs: FileSystem, path: str) -> int:
    fd = fs.open(path, "r")
    try:
        crc = 0
        while True:
            chunk = fs.read(fd, VERIFY_CHUNK_BYTES)
            if not chunk:
                return crc
            crc = crc32c.crc32c(chunk, crc)
    finally:
        fs.close(fd)


# ---------------------------------------------------------------------------------------------
# reading


class SnapshotFileReader:
    """A snapshot file opened for sequential reading (from :meth:`SnapshotReader.open`).

    Reading to the end checks the size and CRC32C and raises
    :class:`~trioraft.errors.StorageCorrupted` on a mismatch.
    """

    def __init__(self, fs: FileSystem, path: str, info: SnapshotFileInfo) -> None:
        self._fs = fs
        self._path = path
        self._info = info
        try:
            self._fd: int | None = fs.open(path, "r")
        except FileNotFoundError:
            raise StorageCorrupted(path, "file is missing") from None
        except OSError as exc:
            raise StorageCorrupted(path, f"cannot open: {exc}") from exc
        self._pos = 0
        self._crc = 0
        self._checked = False

    @property
    def name(self) -> str:
        """The file's name inside the snapshot."""
        return self._info.name

    @property
    def size(self) -> int:
        """The file's size according to the snapshot's metadata."""
        return self._info.size

    def readable(self) -> bool:
        """True while open (file-object protocol)."""
        return self._fd is not None

    def read(self, n: int = -1) -> bytes:
        """Read up to ``n`` bytes (all remaining if ``n < 0``); ``b""`` at the end.

        Raises:
            StorageCorrupted: the file's size or CRC does not match (detected at the end).
            ValueError: the reader is closed.
        """
        if self._fd is None:
            raise ValueError(f"snapshot file {self._info.name!r} is closed")
        if n == 0:
            return b""  # not the end of the file: an empty read must not trigger the checks
        if n < 0:
            parts = []
            while chunk := self.read(VERIFY_CHUNK_BYTES):
                parts.append(chunk)
            return b"".join(parts)
        try:
            data = self._fs.read(self._fd, n)
        except OSError as exc:
            raise StorageCorrupted(self._path, f"read failed: {exc}", self._pos) from exc
        self._crc = crc32c.crc32c(data, self._crc)
        self._pos += len(data)
        if self._pos > self._info.size:
            raise StorageCorrupted(self._path, f"longer than the expected {self._info.size} bytes")
        if (not data or self._pos == self._info.size) and not self._checked:
            self._checked = True
            if self._pos != self._info.size:
                raise StorageCorrupted(
                    self._path, f"ends at {self._pos} bytes, expected {self._info.size}"
                )
            if self._crc != self._info.crc32c:
                raise StorageCorrupted(self._path, "CRC32C mismatch")
        return data

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                self._fs.close(fd)

    def __enter__(self) -> SnapshotFileReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SnapshotReader:
    """Reads the files of a stored snapshot (from :meth:`SnapshotStore.open_reader`).

    Attributes:
        meta: the snapshot being read.
    """

    def __init__(self, fs: FileSystem, meta: StoredSnapshot) -> None:
        self._fs = fs
        self.meta = meta

    @property
    def files(self) -> tuple[SnapshotFileInfo, ...]:
        """The snapshot's files."""
        return self.meta.files

    def open(self, name: str) -> SnapshotFileReader:
        """Open one file as a stream; reading it to the end verifies it.

        Raises:
            KeyError: no such file in the snapshot.
            StorageCorrupted: the file is missing.
        """
        info = self.meta.file(name)
        return SnapshotFileReader(self._fs, os.path.join(self.meta.path, name), info)

    def read_chunk(self, name: str, offset: int, size: int) -> bytes:
        """Read up to ``size`` bytes of ``name`` at ``offset`` (fewer only at the end).

        Raises:
            KeyError: no such file in the snapshot.
            StorageCorrupted: the file is missing or unreadable.
        """
        info = self.meta.file(name)
        path = os.path.join(self.meta.path, name)
        try:
            fd = self._fs.open(path, "r")
        except FileNotFoundError:
            raise StorageCorrupted(path, "file is missing") from None
        except OSError as exc:
            raise StorageCorrupted(path, f"cannot open: {exc}") from exc
        try:
            return self._fs.pread(fd, max(0, min(size, info.size - offset)), offset)
        except OSError as exc:
            raise StorageCorrupted(path, f"read failed: {exc}", offset) from exc
        finally:
            self._fs.close(fd)

    def os_path(self, name: str) -> str | None:
        """The path of file ``name`` on the operating system's file system, for a caller that
        opens, maps or sends the file by its own means; ``None`` when the store is not on the
        real file system (a simulated one in tests: use :meth:`read_chunk`). A committed
        snapshot's files are never written again, only removed by retention (which leaves
        descriptors and mappings already open valid on POSIX); pin the snapshot
        (:meth:`SnapshotStore.pin`) to keep the path itself valid.

        Raises:
            KeyError: no such file in the snapshot.
        """
        self.meta.file(name)
        if not isinstance(self._fs, RealFileSystem):
            return None
        return os.path.join(self.meta.path, name)

    def verify(self) -> None:
        """Check every file's size and CRC32C.

        Raises:
            StorageCorrupted: naming the file at fault.
        """
        _verify(self._fs, self.meta)

    def close(self) -> None:
        """Nothing to release (files are opened per call); for symmetry."""
