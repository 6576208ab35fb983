"""The write-ahead log: segmented, CRC32C-chained, group-committed.

Layout (one directory, normally ``<data>/wal/``)::

    LOCK                                   flock'ed while a WAL object has the directory open
    0000000000000002.wal.prepare           the next segment being zero-filled (not yet in use)
    0000000000000000-0000000000000001.wal  segment: <seq:016x>-<first index:016x>.wal
    0000000000000001-00000000000a1b2c.wal
    0000000000000001-00000000000a1b2c.wal.broken   original of a repaired torn tail (kept)

Each segment is a sequence of CRC-chained frames (see :mod:`trioraft.storage.records`): a
:class:`~trioraft.storage.records.SegmentHeader` carrying the hard state current when the segment
was started, then one frame per write: a :class:`~trioraft.storage.records.SaveRecord` per
:meth:`WAL.save` (entries and hard state together) or a snapshot marker. A brand-new WAL starts
with the empty marker ``(index 0, term 0)``.

Theory of operation.

* Writing. :meth:`WAL.save` encodes the whole batch as one frame, issues one (gathered) write
  and one ``fdatasync`` and returns only then (group commit: the caller merges many Readys into
  one call). When the current segment has reached ``segment_bytes`` a new one is started first:
  its header written and synced, then the directory fsynced, so no acknowledged record can sit in
  a file whose directory entry may vanish. Any failed write or fsync puts the WAL into a failed
  state: the call raises :class:`~trioraft.errors.StorageFailed` and so does every later write
  (after a failed fsync the page cache can no longer be trusted). Space is reserved ahead of small
  writes (:meth:`WAL._reserve`), so a small synced append overwrites blocks the file already has.
* Pre-zeroed segments (on by default on the real file system). An ``fdatasync`` after
  overwriting blocks that were already written and synced has no block allocation, extent
  conversion or size change to journal: on ext4 it is about 45% faster for a 266 KB append and a
  third faster for a 300-byte one (blocks merely reserved with ``posix_fallocate`` gain nothing
  for large writes: converting the unwritten extents costs as much). So a segment is zero-filled
  and synced under the name ``<seq>.wal.prepare`` before use; starting it writes its header over
  the zeros, syncs, renames the file to its segment name and fsyncs the directory. A segment
  name therefore always holds a valid header, and zeros (a clean end) after its last frame. The
  next segment is zero-filled by a thread of the WAL from the current segment's first append
  on, at a bounded rate (:data:`PREPARE_BYTES_PER_S`): zeros are extra disk writes, and on a
  disk with a write budget (a cloud VM's) every byte written costs later writers bandwidth, so
  the zero-fill may only take a bounded share. A cut stops the thread and takes the file as far
  as it got (synced); a WAL written faster than the rate appends past the zeros as into a plain
  file (like etcd's file pipeline; PostgreSQL zero-fills its WAL segments for the same reason).
  Without a thread (``background=False``, the default off the real file system) a segment is
  zero-filled when started. A new WAL's first segment is zero-filled by :meth:`WAL.open`
  itself, up to :data:`FIRST_SEGMENT_ZEROED_BYTES` (the whole default 64 MiB segment: opening a
  fresh WAL takes about 70 ms more on a VM disk, once per node's life; a larger segment's rest
  grows as before). A failed zero-fill (a full disk) is logged and the segment started as a
  plain file; stale ``.prepare`` files are removed on open. Replay reads a segment only up to
  its trailing whole megabytes of zeros (checked, not kept in memory), so opening a WAL does
  not cost a segment's size in memory.
  The encoding of a large batch is a few passes over the entries that run from the CPU cache
  while the batch is fresh, so everything touching the entries, and the writer's bookkeeping,
  happens before the fdatasync, not after its sleep (a failed fdatasync puts the bookkeeping
  back).
* Replay. The WAL is a log of operations, so its state is obtained by applying every record in
  order: entries replace any suffix from their first index, hard states overwrite, a snapshot
  marker with ``reset`` drops entries past its index (the follower's log was replaced) once the
  durable commit index has reached it (below that, the install's hard state never became durable
  and the node restarts as it was before the install). Opening "at" snapshot marker S applies the
  whole log but materializes only entries above S.
* Markers and the log reset. :meth:`WAL.save_snapshot_marker` decides ``reset`` itself: the
  snapshot replaced the log iff the log does not hold an entry at the snapshot's index with the
  snapshot's term. This keeps stale entries of an older term out of a follower's log after an
  install (they would make its log look less up to date than it is in elections).
* Damage. Reading a segment stops at the first frame that is short, runs past the end of the
  file, has a bad CRC, or has a zero length; zeros after the last frame are a clean end. Every
  write is one frame, so only the last frame can be torn, and what a crash loses reads back as
  zeros or a short file: in the last segment a bad frame is a torn write when it runs past the
  end of the file, has a zeroed header, or ends in zeros through the end of the file or has an
  all-zero part within one 512-byte sector, and no valid frame follows it. The file is then
  copied to ``<name>.broken``, truncated to the last good frame and fsynced. Anything else (or
  any damage in an earlier segment) raises :class:`~trioraft.errors.StorageCorrupted` with the
  file and offset.
* Release. :meth:`WAL.release_to` deletes whole segments whose entries are all below the given
  index, oldest first, never the segment holding the newest snapshot marker the durable commit
  index has reached (so a restart can always find its marker and the hard state behind it).
"""

from __future__ import annotations

import bisect
import contextlib
import io
import itertools
import logging
import os
import re
import threading
import time
from collections.abc import Sequence
from typing import Final, NoReturn

import attrs
import cbor2

from trioraft.core.encoding import DecodeError
from trioraft.core.types import Entry, HardState, SnapshotMeta
from trioraft.errors import StorageCorrupted, StorageFailed
from trioraft.storage.fs import (
    REAL_FS,
    FileLock,
    FileSystem,
    LockHeldError,
    ensure_dir,
    read_file,
    write_file_durably,
)
from trioraft.storage.records import (
    FRAME_HEADER,
    MAX_RECORD_BYTES,
    SaveRecord,
    SegmentHeader,
    SnapshotRecord,
    WalRecord,
    check_entries,
    decode_record,
    encode_record_parts,
    entry_columns,
    first_term,
    frame_crc,
    frame_parts,
    make_save_record,
    pack_sizes,
    save_head_parts,
    save_one_parts,
    terms_array,
    unpack_entries,
)

__all__ = ["DEFAULT_SEGMENT_BYTES", "WAL", "WalContents", "segment_name"]

log = logging.getLogger(__name__)

DEFAULT_SEGMENT_BYTES: Final = 64 << 20
LOCK_NAME: Final = "LOCK"
_SEGMENT_RE = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.wal$")
_SECTOR = 512
#: the least a segment is grown by ahead of its writes (see :meth:`WAL._reserve`)
_ALLOCATE_AHEAD: Final = 1 << 20
#: only writes smaller than this reserve space ahead (see :meth:`WAL._reserve`)
_RESERVE_FOR_WRITES_BELOW: Final = 4096
_EMPTY_MARKER = SnapshotMeta(0, 0)
_PREPARE_RE = re.compile(r"^[0-9a-f]{16}\.wal\.prepare$")
#: zeros are written in pieces of this size (and a cancelled preparation stops between pieces)
_ZERO_CHUNK: Final = 1 << 20
_ZEROS = bytes(_ZERO_CHUNK)
#: a zero-fill syncs what it wrote each time it has written this much more
_ZERO_SYNC_EVERY: Final = 4 << 20
#: how fast the background thread zero-fills the next segment (bytes per second): a bounded
#: share of the disk's bandwidth, so the doubled WAL writes never crowd out other writers
PREPARE_BYTES_PER_S: Final = 16 << 20
#: how much of a new WAL's first segment :meth:`WAL.open` zero-fills (it waits for that)
FIRST_SEGMENT_ZEROED_BYTES: Final = 64 << 20


def segment_name(seq: int, first_index: int) -> str:
    """File name of a segment."""
    return f"{seq:016x}-{first_index:016x}.wal"


def prepare_name(seq: int) -> str:
    """File name of segment ``seq`` while it is being zero-filled (not yet part of the WAL)."""
    return f"{seq:016x}.wal.prepare"


def _default_prezero(fs: FileSystem) -> bool:
    """Pre-zeroing is on by default for the real file system (it is about real disks' fsync
    costs) and off for any other (a simulated disk would hold every segment's zeros in
    memory)."""
    return fs is REAL_FS


def _zero_fill(
    fs: FileSystem,
    path: str,
    length: int,
    stop: threading.Event | None = None,
    rate: float | None = None,
) -> tuple[int, int]:
    """Create ``path`` and zero-fill it to ``length`` bytes, written and fdatasync'ed; returns
    its open descriptor and how many bytes were zero-filled.

    ``stop`` ends the work early: what was written so far is synced and returned (the caller
    may use the file as far as it is zeroed). ``rate`` bounds the bytes written per second
    (the background preparation spends only a bounded share of the disk's bandwidth). On
    failure the file is closed and removed and the error raised."""
    fd = fs.open(path, "w")
    try:
        done = synced = 0
        began = time.monotonic()
        while done < length and not (stop is not None and stop.is_set()):
            n = min(_ZERO_CHUNK, length - done)
            fs.write(fd, _ZEROS if n == _ZERO_CHUNK else _ZEROS[:n])
            done += n
            if done - synced >= _ZERO_SYNC_EVERY:
                # synced as it goes, so a segment taken early waits for little more than a piece
                fs.fdatasync(fd)
                synced = done
            if rate is not None and stop is not None:
                ahead = began + done / rate - time.monotonic()
                if ahead > 0:
                    stop.wait(ahead)
        if done > synced:
            fs.fdatasync(fd)
    except BaseException:
        try:
            fs.close(fd)
            fs.remove(path)
        except OSError:
            pass
        raise
    return fd, done


class _Prepared:
    """The file for segment ``seq``, zero-filled by a background thread at a bounded rate.

    The thread only writes ``<seq>.wal.prepare``, a name the WAL never reads; the WAL takes the
    file over (:meth:`take`, as far as it is zeroed) when it starts segment ``seq``, or drops
    it (:meth:`discard`)."""

    def __init__(
        self, fs: FileSystem, directory: str, seq: int, length: int, rate: float | None
    ) -> None:
        self.fs = fs
        self.seq = seq
        self.path = os.path.join(directory, prepare_name(seq))
        self.length = length
        self.rate = rate
        self.fd = -1
        self.zeroed = 0
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=self._run, name=f"trioraft-wal-prepare-{seq}", daemon=True
        )

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        try:
            self.fd, self.zeroed = _zero_fill(self.fs, self.path, self.length, self.stop, self.rate)
        except BaseException as exc:  # reported by take(); a thread has no one to raise to
            self.error = exc

    def take(self) -> tuple[int, int] | None:
        """Stop the zero-fill (what is written gets synced) and hand over the file: its
        descriptor and how far it is zeroed; ``None`` if it failed (logged) or holds no zeros
        yet (removed)."""
        self.stop.set()
        self.thread.join()
        if self.error is not None:
            log.warning(
                "WAL %s: preparing segment %d failed (%s); starting it without zeros",
                os.path.dirname(self.path),
                self.seq,
                self.error,
            )
            return None
        if self.zeroed == 0:
            self.discard()
            return None
        fd, self.fd = self.fd, -1
        return fd, self.zeroed

    def discard(self) -> None:
        """Stop the zero-fill, wait for the thread, close and remove the file."""
        self.stop.set()
        if self.thread.ident is not None:
            self.thread.join()
        fd, self.fd = self.fd, -1
        try:
            if fd >= 0:
                self.fs.close(fd)
            if self.error is None and self.fs.exists(self.path):
                self.fs.remove(self.path)
        except OSError as exc:
            log.warning("WAL: dropping %s failed: %s", self.path, exc)


@attrs.frozen
class WalContents:
    """What :meth:`WAL.open` read back.

    Attributes:
        hard_state: the newest hard state (``HardState()`` if none was ever saved).
        entries: the entries after ``snapshot`` (consecutive, starting at its index + 1).
        snapshot: the marker reading started from; ``None`` for the empty (index 0) marker.
    """

    hard_state: HardState
    entries: list[Entry]
    snapshot: SnapshotMeta | None


#: (last index, run count kept, runs removed: starts, terms) before :meth:`WAL._note_entries`
_EntriesUndo = tuple[int, int, list[int], list[int]]


@attrs.define
class _Segment:
    seq: int
    first_index: int
    path: str


@attrs.define
class _Damage:
    offset: int
    detail: str
    torn: bool


@attrs.define
class _Scan:
    """Everything read from the segments: ``records`` are (segment position, offset, record)."""

    records: list[tuple[int, int, WalRecord]] = attrs.field(factory=list)
    tail_offset: int = 0
    tail_crc: int = 0


class WAL:
    """A write-ahead log in one directory. Open with :meth:`WAL.open`; synchronous and
    thread-safe (one writer at a time)."""

    def __init__(
        self,
        *,
        fs: FileSystem,
        directory: str,
        lock: FileLock,
        segment_bytes: int,
        prezero: bool = False,
        background: bool = False,
        prepare_rate: float | None = PREPARE_BYTES_PER_S,
    ) -> None:
        """Internal: use :meth:`WAL.open`."""
        self._prepare_rate = prepare_rate
        self._fs = fs
        self._dir = directory
        self._lock: FileLock | None = lock
        self._segment_bytes = segment_bytes
        self._prezero = prezero
        self._background = background and prezero
        #: the next segment being zero-filled in the background (see :meth:`_roll_check`)
        self._prepared: _Prepared | None = None
        #: the offset at which :meth:`_append` next looks at rolling or preparing
        self._next_check = segment_bytes
        self._mu = threading.Lock()
        self._segments: list[_Segment] = []
        self._fd: int | None = None
        self._offset = 0
        #: where the current segment's reserved space ends (past ``_offset`` it reads as zeros)
        self._allocated = 0
        self._allocate_ok = True
        self._crc = 0
        self._failed: BaseException | None = None
        self._closed = False
        self._hs = HardState()
        #: (marker, segment seq) in write order
        self._markers: list[tuple[SnapshotMeta, int]] = []
        # the log as the writer knows it: entries (base_index, last_index], terms in runs
        self._base_index = 0
        self._base_term = 0
        self._last_index = 0
        self._run_starts: list[int] = []
        self._run_terms: list[int] = []

    # -- opening -----------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        directory: str,
        *,
        fs: FileSystem = REAL_FS,
        at: SnapshotMeta | None = None,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        prezero: bool | None = None,
        background: bool | None = None,
        prepare_rate: float | None = PREPARE_BYTES_PER_S,
    ) -> tuple[WAL, WalContents]:
        """Open (creating if empty) the WAL in ``directory`` and read it back.

        Args:
            directory: the WAL directory (created with its parents if missing).
            fs: the file system.
            at: the snapshot to start reading from: the marker with the same index and term, or
                else the newest marker at or below its index. ``None`` reads from the empty
                (index 0) marker, i.e. the whole log of a WAL that was never released.
            segment_bytes: size at which a new segment is started.
            prezero: start every segment zero-filled to ``segment_bytes`` and synced, so appends
                overwrite written blocks (a cheaper ``fdatasync``; see the module docstring).
                ``None``: on for the real file system, off for any other.
            background: zero-fill the next segment on a thread of the WAL while the current one
                fills up (``None``: on for the real file system); otherwise segments are zero-filled
                when started, inline. The first segment of a new WAL is always zero-filled inline.
            prepare_rate: bytes per second the background zero-fill writes at most (``None``:
                as fast as the disk takes them). A segment started before its file is wholly
                zero-filled uses it as far as it got, and grows past that as a plain file.

        Returns:
            The open WAL (holding the directory lock until :meth:`close`) and its contents.

        Raises:
            StorageFailed: the directory is locked by another opener, or an I/O error.
            StorageCorrupted: damage before the tail (names the file and offset), a missing
                segment, or no marker at or below ``at``.
        """
        wal, scan = cls._open_scan(
            directory,
            fs=fs,
            segment_bytes=segment_bytes,
            prezero=prezero,
            background=background,
            prepare_rate=prepare_rate,
        )
        try:
            contents = wal._replay(scan, at)
        except BaseException:
            wal.close()
            raise
        return wal, contents

    @classmethod
    def _open_scan(
        cls,
        directory: str,
        *,
        fs: FileSystem,
        segment_bytes: int,
        prezero: bool | None = None,
        background: bool | None = None,
        prepare_rate: float | None = PREPARE_BYTES_PER_S,
    ) -> tuple[WAL, _Scan]:
        if segment_bytes <= 0:
            raise ValueError("segment_bytes must be positive")
        directory = os.path.abspath(directory)
        try:
            ensure_dir(fs, directory)
            lock = fs.lock(os.path.join(directory, LOCK_NAME))
        except LockHeldError as exc:
            raise StorageFailed(
                f"WAL directory {directory} is already in use: {exc.strerror} "
                "(another trioraft node or WAL object has it open)"
            ) from exc
        except OSError as exc:
            raise StorageFailed(f"cannot open WAL directory {directory}: {exc}") from exc
        wal = cls(
            fs=fs,
            directory=directory,
            lock=lock,
            segment_bytes=segment_bytes,
            prezero=_default_prezero(fs) if prezero is None else prezero,
            background=fs is REAL_FS if background is None else background,
            prepare_rate=prepare_rate,
        )
        try:
            scan = wal._scan()
        except BaseException:
            wal.close()
            raise
        return wal, scan

    def _scan(self) -> _Scan:
        fs = self._fs
        try:
            self._remove_stale_prepares()
            segments = self._list_segments()
            scan = _Scan()
            prev_crc = 0
            i = 0
            while i < len(segments):
                seg = segments[i]
                last = i == len(segments) - 1
                data, size = _read_segment(fs, seg.path)
                records, end, crc, damage = _parse(data)
                if damage is not None and len(data) < size:
                    # The damage may lie in the part not read: judge it on the whole file.
                    data = read_file(fs, seg.path)
                    records, end, crc, damage = _parse(data)
                if not records and last and (damage is None or damage.torn):
                    # nothing valid at all: an interrupted segment start; set it aside
                    self._set_aside(seg, data, damage or _Damage(0, "empty segment", True))
                    segments.pop()
                    break
                problem = _check_header(records, seg, prev_crc, i > 0)
                if problem is not None:
                    raise StorageCorrupted(seg.path, problem, 0)
                if damage is not None:
                    if not last or not damage.torn:
                        raise StorageCorrupted(seg.path, damage.detail, damage.offset)
                    self._repair(seg, data, end, damage)
                for off, rec in records:
                    scan.records.append((i, off, rec))
                prev_crc = crc
                scan.tail_offset = end
                scan.tail_crc = crc
                i += 1
            self._segments = segments
            if not segments:
                scan = _Scan()
                for off, rec in self._create_first():
                    scan.records.append((0, off, rec))
                scan.tail_offset = self._offset
                scan.tail_crc = self._crc
            else:
                tail = segments[-1]
                self._fd = fs.open(tail.path, "r+")
                fs.seek(self._fd, scan.tail_offset)
                self._offset = scan.tail_offset
                self._allocated = fs.fsize(self._fd)
                self._crc = scan.tail_crc
                self._segment_opened()
        except OSError as exc:
            raise StorageFailed(f"cannot read WAL in {self._dir}: {exc}") from exc
        for pos, _off, rec in scan.records:
            if isinstance(rec, SnapshotRecord):
                self._markers.append((rec.meta, self._segments[pos].seq))
        return scan

    def _remove_stale_prepares(self) -> None:
        """Remove segment files whose preparation a crash or a close interrupted: they were
        never part of the WAL (a segment gets its name only once prepared)."""
        for name in self._fs.listdir(self._dir):
            if _PREPARE_RE.match(name):
                log.info("WAL %s: removing stale %s", self._dir, name)
                self._fs.remove(os.path.join(self._dir, name))

    def _list_segments(self) -> list[_Segment]:
        found: list[_Segment] = []
        for name in self._fs.listdir(self._dir):
            m = _SEGMENT_RE.match(name)
            if m:
                found.append(
                    _Segment(
                        int(m.group(1), 16), int(m.group(2), 16), os.path.join(self._dir, name)
                    )
                )
        found.sort(key=lambda s: s.seq)
        for a, b in itertools.pairwise(found):
            if b.seq == a.seq:
                raise StorageCorrupted(b.path, f"two segments with sequence number {a.seq}")
            if b.seq != a.seq + 1:
                raise StorageCorrupted(
                    b.path, f"WAL segment with sequence number {a.seq + 1} is missing"
                )
        return found

    def _set_aside(self, seg: _Segment, data: bytes, damage: _Damage) -> None:
        broken = seg.path + ".broken"
        fs = self._fs
        if fs.exists(broken):
            fs.remove(broken)
        fs.rename(seg.path, broken)
        fs.fsync_dir(self._dir)
        log.warning(
            "WAL %s: no complete record (%s at offset %d, %d bytes); an interrupted segment "
            "start, moved aside to %s",
            seg.path,
            damage.detail,
            damage.offset,
            len(data),
            broken,
        )

    def _repair(self, seg: _Segment, data: bytes, end: int, damage: _Damage) -> None:
        fs = self._fs
        broken = seg.path + ".broken"
        if fs.exists(broken):
            fs.remove(broken)
        write_file_durably(fs, broken, data)
        fs.fsync_dir(self._dir)
        fd = fs.open(seg.path, "r+")
        try:
            fs.truncate(fd, end)
            fs.fsync(fd)
        finally:
            fs.close(fd)
        log.warning(
            "WAL %s: torn tail repaired (%s at offset %d); truncated from %d to %d bytes, "
            "original kept as %s",
            seg.path,
            damage.detail,
            damage.offset,
            len(data),
            end,
            broken,
        )

    def _create_first(self) -> list[tuple[int, WalRecord]]:
        """Create segment 0: its header, then the empty snapshot marker (two writes, one
        fdatasync, then the directory fsync), zero-filled first when the WAL pre-zeroes (see
        :meth:`_start_segment`). Returns the records with their offsets."""
        seg = _Segment(0, 1, os.path.join(self._dir, segment_name(0, 1)))
        records: list[WalRecord] = [
            SegmentHeader(seq=0, first_index=1, prev_crc=0, hard_state=HardState()),
            SnapshotRecord(_EMPTY_MARKER),
        ]
        frames: list[list[bytes]] = []
        out: list[tuple[int, WalRecord]] = []
        crc = 0
        offset = 0
        for rec in records:
            parts, crc, size = _frame(rec, crc)
            frames.append(parts)
            out.append((offset, rec))
            offset += size
        # A new WAL's first segment is zero-filled while the caller waits (once per WAL), up
        # to a bound: the rest of a very large first segment grows as an unzeroed segment.
        length = min(self._segment_bytes, FIRST_SEGMENT_ZEROED_BYTES)
        taken = self._prepare_inline(0, length) if self._prezero else None
        prepared, zeroed = (None, 0) if taken is None else taken
        self._fd = self._start_segment(seg, frames, prepared)
        self._segments = [seg]
        self._offset = offset
        self._allocated = max(offset, zeroed)
        self._crc = crc
        self._segment_opened()
        log.info("WAL %s: created%s", self._dir, " (pre-zeroed)" if prepared is not None else "")
        return out

    def _start_segment(self, seg: _Segment, frames: list[list[bytes]], prepared: int | None) -> int:
        """Write the first frames of ``seg`` (one write each), fdatasync, and make its name
        durable; returns the open descriptor, positioned after the frames.

        ``prepared`` is the descriptor of ``prepare_name(seg.seq)``, already zero-filled and
        synced: the frames overwrite its start and only then, synced, the file takes the
        segment's name. So a segment name always holds a valid header, with zeros (a clean end)
        after the frames. Without one, the segment is created as a plain file.

        Raises:
            OSError: from the file system (the descriptor is closed).
        """
        fs = self._fs
        if prepared is None:
            fd = fs.open(seg.path, "w")
        else:
            fd = prepared
        try:
            if prepared is not None:
                fs.seek(fd, 0)
            for parts in frames:
                fs.writev(fd, parts)
            fs.fdatasync(fd)
            if prepared is not None:
                fs.rename(os.path.join(self._dir, prepare_name(seg.seq)), seg.path)
            fs.fsync_dir(self._dir)
        except BaseException:
            with contextlib.suppress(OSError):
                fs.close(fd)
            raise
        return fd

    def _prepare_inline(self, seq: int, length: int) -> tuple[int, int] | None:
        """Zero-fill segment ``seq`` now (see :meth:`_start_segment`): its descriptor and how
        far it is zeroed, like :meth:`_Prepared.take`; ``None`` if that failed (logged: a full
        disk costs speed here, the appends themselves then fail loudly)."""
        path = os.path.join(self._dir, prepare_name(seq))
        try:
            return _zero_fill(self._fs, path, length)
        except OSError as exc:
            log.warning(
                "WAL %s: cannot zero-fill segment %d ahead of use (%s); starting it without zeros",
                self._dir,
                seq,
                exc,
            )
            return None

    def _segment_opened(self) -> None:
        """A segment was opened for appending: decide when :meth:`_append` looks again."""
        if self._background and self._prepared is None:
            # the next segment is prepared from the first append on: at a bounded rate it
            # needs the time it takes to fill this one
            self._next_check = 0
        else:
            self._next_check = self._segment_bytes

    def _replay(self, scan: _Scan, at: SnapshotMeta | None) -> WalContents:
        """Apply every record in order; keep the entries above the chosen marker."""
        start = self._choose_start(scan, at)
        base = start.index
        ents: list[Entry] = []
        hs = _final_hard_state(scan)
        # A reset marker above the durable commit index is an install whose hard state never
        # became durable: the node restarts as before the install, so it drops nothing.
        commit = hs.commit
        # Entries an install replaced (see below), as [first, last, segment, offset]: stale
        # unless a later save rewrote them.
        replaced: list[list[int]] = []
        commit_then = 0  # the durable commit index as of the record being replayed
        for pos, off, rec in scan.records:
            if isinstance(rec, SaveRecord):
                first = rec.first_index
                last = first + rec.count - 1
                if rec.count and last > base:
                    lo = max(first, base + 1)
                    cut = lo - base - 1
                    if cut > len(ents):
                        raise StorageCorrupted(
                            self._segments[pos].path,
                            f"entries {base + len(ents) + 1}..{lo - 1} are missing (reading "
                            f"from snapshot marker {base}/{start.term})",
                            off,
                        )
                    del ents[cut:]
                    ents.extend(unpack_entries(rec, lo - first))
                    for r in replaced:
                        r[1] = min(r[1], lo - 1)
                if rec.hard_state is not None:
                    commit_then = rec.hard_state.commit
            elif isinstance(rec, SegmentHeader):
                commit_then = rec.hard_state.commit
            elif isinstance(rec, SnapshotRecord) and rec.reset and rec.meta.index <= commit:
                # The install replaced the log up to its index: entries of ours above the commit
                # index of that time and up to the snapshot's index may never have been
                # committed. Reading from an older start, they would be taken as the log.
                if rec.meta.index > base and rec.meta.index > commit_then:
                    replaced.append([max(base, commit_then) + 1, rec.meta.index, pos, off])
                del ents[max(0, rec.meta.index - base) :]
        for first_stale, last_stale, pos, off in replaced:
            if first_stale <= min(last_stale, base + len(ents)):
                raise StorageCorrupted(
                    self._segments[pos].path,
                    f"reading from snapshot marker {base}/{start.term}, entries {first_stale}.."
                    f"{last_stale} predate the snapshot installed here, which replaced them: "
                    "the log needs that snapshot (or a later one) as its start",
                    off,
                )
        self._hs = hs
        self._base_index = base
        self._base_term = start.term
        self._last_index = base + len(ents)
        self._run_starts = []
        self._run_terms = []
        for e in ents:
            if not self._run_terms or self._run_terms[-1] != e.term:
                self._run_starts.append(e.index)
                self._run_terms.append(e.term)
        log.info(
            "WAL %s: opened at snapshot %d/%d: %d entries (last %d), hard state term %d vote %d "
            "commit %d",
            self._dir,
            start.index,
            start.term,
            len(ents),
            self._last_index,
            hs.term,
            hs.vote,
            hs.commit,
        )
        return WalContents(hs, ents, start if start.index > 0 else None)

    def _choose_start(self, scan: _Scan, at: SnapshotMeta | None) -> SnapshotMeta:
        target = at if at is not None else _EMPTY_MARKER
        exact: SnapshotMeta | None = None
        best: SnapshotMeta | None = None
        for _pos, _off, rec in scan.records:
            if isinstance(rec, SnapshotRecord):
                m = rec.meta
                if m.index == target.index and m.term == target.term:
                    exact = m
                if m.index <= target.index and (best is None or m.index >= best.index):
                    best = m
        chosen = exact or best
        if chosen is None:
            oldest = self._segments[0].path if self._segments else self._dir
            raise StorageCorrupted(
                oldest,
                f"the WAL holds no snapshot marker at or below index {target.index} (its older "
                "segments were released; open it at a snapshot it references)",
            )
        if at is not None and (chosen.index, chosen.term) != (at.index, at.term):
            log.warning(
                "WAL %s: no marker for snapshot %d/%d; reading from marker %d/%d",
                self._dir,
                at.index,
                at.term,
                chosen.index,
                chosen.term,
            )
        return chosen

    # -- writing -----------------------------------------------------------------------------

    def save(self, entries: Sequence[Entry], hard_state: HardState | None) -> None:
        """Durably append ``entries`` and record ``hard_state``: one write, one fdatasync.

        Entries must be consecutive and start at most one past the last index; starting at or
        below the last index replaces the log from there on. Returns once durable.

        Raises:
            StorageFailed: a write or fsync failed (now or earlier); the WAL refuses all further
                writes.
            ValueError: entries are not consecutive or leave a gap (nothing is written).
        """
        with self._mu:
            self._check_writable()
            if hard_state is not None and hard_state == self._hs:
                hard_state = None
            if entries:
                first = entries[0].index
                last = entries[-1].index
                if last - first != len(entries) - 1:
                    raise ValueError(f"entries {first}..{last} are not consecutive")
                if first > self._last_index + 1:
                    raise ValueError(
                        f"entries start at {first}, leaving a gap after {self._last_index}"
                    )
                if first <= 0:
                    raise ValueError("entry indexes start at 1")
            elif hard_state is None:
                return
            n = len(entries)
            if n > 1:
                # the hot path: the columns go straight into the frame, no record object
                first = entries[0].index
                datas, terms, kinds = entry_columns(entries)
                data = b"".join(datas)
                sizes = pack_sizes(datas)
                # Drop the list now, while the entries' data objects are in the cache: freeing it
                # touches every one of them, which after the fdatasync would be a cache miss each.
                del datas
                pre, post = save_head_parts(first, n, terms, kinds, 4 * n, hard_state, len(data))
                payload = [pre, sizes, post, data]
                del pre, sizes, post, data  # the payload list holds the only references
                self._append(payload, (first, n, terms), hard_state)
            elif n == 1:
                first = entries[0].index
                parts, terms = save_one_parts(entries[0], hard_state)
                self._append(parts, (first, 1, terms), hard_state)
            else:
                rec = make_save_record(entries, hard_state)
                self._append(
                    encode_record_parts(rec),
                    (rec.first_index, 1, rec.terms) if n else None,
                    hard_state,
                )

    def save_snapshot_marker(self, meta: SnapshotMeta) -> None:
        """Record that the snapshot ``meta`` is durably in the snapshot store (call only after
        the store's commit returned). Durable on return.

        If the log does not hold an entry at ``meta.index`` with ``meta.term`` (a follower
        installing a snapshot), the log is reset: entries above the snapshot are dropped.

        Raises:
            StorageFailed: as for :meth:`save`.
        """
        with self._mu:
            self._check_writable()
            reset = self._replaces_log(meta)
            self._write(SnapshotRecord(meta, reset))
            self._markers.append((meta, self._segments[-1].seq))
            if reset:
                self._base_index = meta.index
                self._base_term = meta.term
                self._last_index = meta.index
                self._run_starts.clear()
                self._run_terms.clear()
            log.info(
                "WAL %s: snapshot marker %d/%d recorded%s",
                self._dir,
                meta.index,
                meta.term,
                " (log reset)" if reset else "",
            )

    def release_to(self, index: int) -> None:
        """Delete segments whose entries all lie below ``index`` (oldest first).

        Never deletes the segment holding the newest snapshot marker at or below the durable
        commit index, nor anything after it, nor the current segment.

        Raises:
            StorageFailed: as for :meth:`save`.
        """
        with self._mu:
            self._check_writable()
            usable = [(m, seq) for m, seq in self._markers if m.index <= self._hs.commit]
            if not usable:
                return
            newest = max(m.index for m, _ in usable)
            keep_seq = min(seq for m, seq in usable if m.index == newest)
            limit = min(index, newest)
            removed: list[str] = []
            try:
                while len(self._segments) > 1:
                    seg, nxt = self._segments[0], self._segments[1]
                    if seg.seq >= keep_seq or nxt.first_index > limit:
                        break
                    self._fs.remove(seg.path)
                    # one directory fsync per segment keeps the survivors a contiguous run
                    self._fs.fsync_dir(self._dir)
                    self._segments.pop(0)
                    removed.append(os.path.basename(seg.path))
            except OSError as exc:
                self._fail(exc, "releasing segments")
            if removed:
                first_seq = self._segments[0].seq
                self._markers = [(m, s) for m, s in self._markers if s >= first_seq]
                log.info("WAL %s: released %s (up to index %d)", self._dir, removed, limit)

    def snapshot_markers(self) -> list[SnapshotMeta]:
        """The snapshot markers still in the WAL (index > 0), in the order they were written."""
        with self._mu:
            return [m for m, _ in self._markers if m.index > 0]

    def usable_snapshot_markers(self) -> list[SnapshotMeta]:
        """The markers a restart could start from: those at or below the durable commit index
        (an install's marker is written before the hard state that commits it). Consistent
        with durability: a save in progress (its fsync included) finishes first."""
        with self._mu:
            commit = self._hs.commit
            return [m for m, _ in self._markers if 0 < m.index <= commit]

    def close(self) -> None:
        """Close the current segment and release the directory lock (idempotent)."""
        with self._mu:
            if self._closed:
                return
            self._closed = True
            fd, self._fd = self._fd, None
            lock, self._lock = self._lock, None
            prep, self._prepared = self._prepared, None
            try:
                if prep is not None:
                    prep.discard()
                if fd is not None:
                    self._fs.close(fd)
            except OSError as exc:
                log.warning("WAL %s: close failed: %s", self._dir, exc)
            finally:
                if lock is not None:
                    lock.release()

    def __enter__(self) -> WAL:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- introspection -------------------------------------------------------------------------

    @property
    def directory(self) -> str:
        """The WAL directory (absolute)."""
        return self._dir

    @property
    def last_index(self) -> int:
        """Index of the last durable entry (or of the snapshot the log starts after)."""
        return self._last_index

    @property
    def hard_state(self) -> HardState:
        """The last durable hard state."""
        return self._hs

    @property
    def failed(self) -> bool:
        """True once a write or fsync failed (the WAL refuses further writes)."""
        return self._failed is not None

    def segment_paths(self) -> list[str]:
        """Paths of the live segments, oldest first."""
        with self._mu:
            return [s.path for s in self._segments]

    # -- internals -----------------------------------------------------------------------------

    def _check_writable(self) -> None:
        if self._closed:
            raise StorageFailed(f"WAL {self._dir} is closed")
        if self._failed is not None:
            raise StorageFailed(
                f"WAL {self._dir} failed earlier ({self._failed}); it refuses further writes"
            )

    def _fail(self, exc: OSError, what: str) -> NoReturn:
        self._failed = exc
        log.error("WAL %s: %s failed: %s; refusing further writes", self._dir, what, exc)
        raise StorageFailed(f"WAL {self._dir}: {what} failed: {exc}") from exc

    def _write(self, rec: WalRecord) -> None:
        """Append one record as a frame and fdatasync."""
        self._append(encode_record_parts(rec))

    def _append(
        self,
        payload: list[bytes],
        entries: tuple[int, int, bytes] | None = None,
        hard_state: HardState | None = None,
    ) -> None:
        """Append one frame whose payload is the concatenation of ``payload`` (the list is
        emptied) and fdatasync, starting a new segment first when this one is full; record the
        ``entries`` it holds (first index, count, terms column) and its ``hard_state``.

        The writer's state is updated (and the payload freed) between the write and the
        fdatasync, not after it: the objects involved are in the cache then, while after the
        fdatasync's sleep every one is a cache miss. A failed fdatasync puts the state back
        (``last_index`` and ``hard_state`` stay the durable ones).

        Raises:
            StorageFailed: the write or the fdatasync failed (the WAL now refuses writes).
            ValueError: the payload exceeds :data:`MAX_RECORD_BYTES` (nothing is written: replay
                would read such a frame as damage).
        """
        length = 0
        for p in payload:
            length += len(p)
        if length > MAX_RECORD_BYTES:
            raise ValueError(f"a record of {length} bytes exceeds the WAL's record limit")
        if self._offset >= self._next_check:
            self._roll_check()
        header, crc = frame_parts(payload, self._crc)
        size = FRAME_HEADER.size + length
        fd = self._fd
        assert fd is not None
        if (
            size < _RESERVE_FOR_WRITES_BELOW
            and self._offset + size > self._allocated
            and self._allocate_ok
        ):
            self._reserve(fd, self._offset + size)
        payload.insert(0, header)
        try:
            self._fs.writev(fd, payload)
        except OSError as exc:
            self._fail(exc, "append")
        payload.clear()
        self._offset += size
        self._crc = crc
        undo = None if entries is None else self._note_entries(*entries)
        old_hs = self._hs
        if hard_state is not None:
            self._hs = hard_state
        try:
            self._fs.fdatasync(fd)
        except OSError as exc:
            if undo is not None:
                self._undo_entries(undo)
            self._hs = old_hs
            self._fail(exc, "append")

    def _reserve(self, fd: int, need: int) -> None:
        """Grow the segment ahead of its writes (zeros, allocated on disk) so small appends
        overwrite allocated blocks instead of extending the file: their ``fdatasync`` then has
        no size change to journal, which on ext4 makes a synced append of a few hundred bytes
        about a fifth faster. Only writes below :data:`_RESERVE_FOR_WRITES_BELOW` reserve
        (measured: from about one block up, each write reaches new blocks whose conversion
        from "allocated" to "written" costs as much as growing the file, and more for large
        writes). At least :data:`_ALLOCATE_AHEAD` at a time, never past the segment's roll
        point. Replay reads the zeros after the last frame as a clean end, and a torn write
        into them as a torn tail. Failing to reserve only costs speed: it is logged once and
        the WAL appends as before (a full disk then fails the write itself, loudly)."""
        start = max(self._allocated, self._offset)
        end = min(max(need, self._segment_bytes), need + _ALLOCATE_AHEAD)
        try:
            self._fs.allocate(fd, start, end - start)
        except OSError as exc:
            self._allocate_ok = False
            log.warning(
                "WAL %s: cannot reserve segment space (%s); appending without it", self._dir, exc
            )
            return
        self._allocated = end

    def _roll_check(self) -> None:
        """The current segment is full (start the next one), or has just been opened (start
        zero-filling the next one in the background, so it is ready when this one is full)."""
        if self._offset >= self._segment_bytes:
            self._cut()
            return
        self._next_check = self._segment_bytes
        prep = _Prepared(
            self._fs,
            self._dir,
            self._segments[-1].seq + 1,
            self._segment_bytes,
            self._prepare_rate,
        )
        try:
            prep.start()
        except RuntimeError as exc:  # cannot start a thread: only costs speed
            log.warning("WAL %s: cannot start preparing the next segment: %s", self._dir, exc)
            return
        self._prepared = prep

    def _cut(self) -> None:
        """Start a new segment: header and current hard state synced, then the directory; into
        the zero-filled file prepared for it when there is one (as far as the background
        thread got: a writer faster than the zero-fill rate appends past the zeros), else as a
        plain file."""
        fs = self._fs
        prev = self._segments[-1]
        seq = prev.seq + 1
        first = self._last_index + 1
        seg = _Segment(seq, first, os.path.join(self._dir, segment_name(seq, first)))
        header = SegmentHeader(seq=seq, first_index=first, prev_crc=self._crc, hard_state=self._hs)
        parts, crc, size = _frame(header, 0)
        taken: tuple[int, int] | None = None
        prep, self._prepared = self._prepared, None
        if prep is not None:
            taken = prep.take()
        elif self._prezero and not self._background:
            taken = self._prepare_inline(seq, self._segment_bytes)
        prepared, zeroed = (None, 0) if taken is None else taken
        try:
            fd = self._start_segment(seg, [parts], prepared)
        except OSError as exc:
            self._fail(exc, f"starting segment {seg.path}")
        old = self._fd
        self._fd = fd
        self._segments.append(seg)
        self._offset = size
        self._allocated = max(size, zeroed)
        self._crc = crc
        self._segment_opened()
        if old is not None:
            try:
                fs.close(old)
            except OSError as exc:  # the old segment is fully synced already
                log.warning("WAL %s: closing %s failed: %s", self._dir, prev.path, exc)
        log.debug(
            "WAL %s: started segment %s%s",
            self._dir,
            seg.path,
            " (pre-zeroed)" if prepared is not None else "",
        )

    def _note_entries(self, first: int, count: int, terms: bytes) -> _EntriesUndo:
        """Record entries ``first..first+count-1`` (terms column ``terms``) as written; returns
        what :meth:`_undo_entries` needs to take that back."""
        undo: _EntriesUndo = (self._last_index, len(self._run_starts), [], [])
        if first <= self._base_index:
            k = 0
        else:
            k = bisect.bisect_left(self._run_starts, first)
        if k < len(self._run_starts):
            undo = (self._last_index, k, self._run_starts[k:], self._run_terms[k:])
            del self._run_starts[k:]
            del self._run_terms[k:]
        if len(terms) == 8:
            self._add_run(first, first_term(terms))
        else:
            for i, t in enumerate(terms_array(terms, count)):
                self._add_run(first + i, t)
        self._last_index = first + count - 1
        return undo

    def _undo_entries(self, undo: _EntriesUndo) -> None:
        last, k, starts, terms = undo
        del self._run_starts[k:]
        del self._run_terms[k:]
        self._run_starts += starts
        self._run_terms += terms
        self._last_index = last

    def _add_run(self, index: int, term: int) -> None:
        if index <= self._base_index:
            return
        if not self._run_terms or self._run_terms[-1] != term:
            self._run_starts.append(index)
            self._run_terms.append(term)

    def _term_at(self, index: int) -> int | None:
        if index == self._base_index:
            return self._base_term
        if index < self._base_index or index > self._last_index:
            return None
        k = bisect.bisect_right(self._run_starts, index) - 1
        return self._run_terms[k] if k >= 0 else None

    def _replaces_log(self, meta: SnapshotMeta) -> bool:
        if meta.index < self._base_index:
            log.warning(
                "WAL %s: snapshot marker %d/%d is older than the log's base %d",
                self._dir,
                meta.index,
                meta.term,
                self._base_index,
            )
            return False
        return self._term_at(meta.index) != meta.term


# ---------------------------------------------------------------------------------------------
# framing helpers


def _final_hard_state(scan: _Scan) -> HardState:
    hs = HardState()
    for _pos, _off, rec in scan.records:
        if not isinstance(rec, SnapshotRecord) and rec.hard_state is not None:
            hs = rec.hard_state
    return hs


def _frame(rec: WalRecord, crc: int) -> tuple[list[bytes], int, int]:
    """Frame one record after chained CRC ``crc``: (buffers to write, new CRC, total bytes)."""
    parts = encode_record_parts(rec)
    header, crc = frame_parts(parts, crc)
    size = len(header)
    for p in parts:
        size += len(p)
    return [header, *parts], crc, size


def _check_header(
    records: list[tuple[int, WalRecord]], seg: _Segment, prev_crc: int, has_prev: bool
) -> str | None:
    if not records:
        return "segment has no header"
    head = records[0][1]
    if not isinstance(head, SegmentHeader):
        return "segment does not start with a header record"
    if head.seq != seg.seq or head.first_index != seg.first_index:
        return (
            f"segment header says seq {head.seq} first index {head.first_index}, "
            "which does not match the file name"
        )
    if has_prev and head.prev_crc != prev_crc:
        return "segment header's CRC link does not match the previous segment"
    for off, rec in records[1:]:
        if isinstance(rec, SegmentHeader):
            return f"unexpected segment header at offset {off}"
    return None


def _read_segment(fs: FileSystem, path: str) -> tuple[bytes, int]:
    """A segment's bytes up to where only whole zero pieces (aligned :data:`_ZERO_CHUNK`
    pieces) follow, and the file's size.

    A pre-zeroed segment is mostly zeros after its last frame: replay must know they are zeros
    (a clean end) but need not hold them, which for a 64 MiB segment of a few records would
    cost 64 MiB of memory at every start. The zero pieces are checked from the end backwards,
    one piece in memory at a time. The prefix returned is what :func:`_parse` reads; if it
    finds damage there, the caller parses the whole file instead (a frame may run into the
    pieces left out, say one whose entry data ends in a megabyte of zeros), so the verdict on a
    segment is always the one the whole file gives.
    """
    fd = fs.open(path, "r")
    try:
        size = fs.fsize(fd)
        end = size
        while end > 0:
            start = (end - 1) // _ZERO_CHUNK * _ZERO_CHUNK
            if not _all_zero(fs.pread(fd, end - start, start), 0, end - start):
                break
            end = start
        fs.seek(fd, 0)
        return (fs.read(fd, end) if end else b""), size
    finally:
        fs.close(fd)


def _parse(buf: bytes) -> tuple[list[tuple[int, WalRecord]], int, int, _Damage | None]:
    """Split a segment into records.

    Returns (records with their offsets, end of the last good frame, chained CRC there, damage or
    ``None``). Zeros after the last frame are a clean end (nothing was written there yet).
    """
    out: list[tuple[int, WalRecord]] = []
    view = memoryview(buf)
    n = len(buf)
    off = 0
    crc = 0
    unpack = FRAME_HEADER.unpack_from
    hsize = FRAME_HEADER.size
    while off < n:
        if n - off < hsize:
            if _all_zero(buf, off, n):
                break
            return out, off, crc, _Damage(off, "incomplete frame header", True)
        length, stored = unpack(buf, off)
        if length == 0:
            if stored == 0 and _all_zero(buf, off, n):
                break
            # The start of the last write was lost while later parts of it were not, unless
            # no lost sector explains the zeros (nothing frames zero bytes: corruption) or
            # something was written after it (then the frame was damaged later).
            if not _header_piece_zeroed(buf, off):
                return out, off, crc, _Damage(off, "zero-length frame", False)
            damage = _torn_unless_written_after(buf, off, crc, "zero-length frame", True)
            return out, off, crc, damage
        if length > MAX_RECORD_BYTES:
            return out, off, crc, _Damage(off, f"implausible frame length {length}", False)
        end = off + hsize + length
        if end > n:
            detail = f"frame of {length} bytes runs past the end of the file ({n} bytes)"
            suspect = _header_piece_zeroed(buf, off)
            return out, off, crc, _torn_unless_written_after(buf, off, crc, detail, suspect)
        actual = frame_crc(view[off : off + 4], view[off + hsize : end], crc)
        if actual != stored:
            return out, off, crc, _classify(buf, off, end, stored, crc)
        try:
            rec = decode_record(buf[off + hsize : end])
        except DecodeError as exc:
            return out, off, crc, _Damage(off, f"undecodable record: {exc}", False)
        if isinstance(rec, SaveRecord):
            problem = check_entries(rec)
            if problem is not None:
                return out, off, crc, _Damage(off, problem, False)
        out.append((off, rec))
        crc = actual
        off = end
    return out, off, crc, None


def _all_zero(buf: bytes, start: int, end: int) -> bool:
    # A pre-zeroed segment ends in up to its whole length of zeros: compare them a piece at a
    # time (memcmp speed, a bounded copy) rather than ``strip``, which walks them byte by byte.
    while start < end:
        stop = min(end, start + _ZERO_CHUNK)
        if buf[start:stop] != (_ZEROS if stop - start == _ZERO_CHUNK else bytes(stop - start)):
            return False
        start = stop
    return True


def _classify(buf: bytes, off: int, end: int, stored: int, prev_crc: int) -> _Damage:
    """A frame at ``off`` (ending at ``end``, inside the file) failed its CRC: torn write of the
    last frame, or corruption?

    Every write is one frame, so only the last frame can be torn, and what a torn write loses
    reads back as zeros (the file was extended but the data not written, or the sector kept its
    old zero content). So: a valid frame chained from this one's stored CRC after it means the
    frame was once whole (corruption); otherwise the frame is torn if it ends in zeros that run
    to the end of the file, or if a piece of it lying in one 512-byte sector is all zeros (a
    later sector of the write reached the disk, an earlier one did not) — and nothing shows a
    later write (see :func:`_torn_unless_written_after`); anything else is corruption.
    """
    n = len(buf)
    hsize = FRAME_HEADER.size
    if end + hsize <= n:
        nlen, nstored = FRAME_HEADER.unpack_from(buf, end)
        nend = end + hsize + nlen
        if 0 < nlen <= MAX_RECORD_BYTES and nend <= n:
            view = memoryview(buf)
            if frame_crc(view[end : end + 4], view[end + hsize : nend], stored) == nstored:
                return _Damage(off, "CRC mismatch (a valid record follows)", False)
    header_lost = _header_piece_zeroed(buf, off)
    nonzero_end = len(buf.rstrip(b"\0"))
    if nonzero_end > end and not header_lost:
        # The length is as written, and a torn write is the last one: bytes after the frame
        # mean it was damaged later.
        return _Damage(off, f"CRC mismatch (data follows the frame, up to {nonzero_end})", False)
    if nonzero_end < end:
        detail = f"CRC mismatch (zero-filled from {max(nonzero_end, off)})"
        return _torn_unless_written_after(buf, off, prev_crc, detail, header_lost)
    piece_start = off
    while piece_start < end:
        piece_end = min(end, (piece_start // _SECTOR + 1) * _SECTOR)
        if _all_zero(buf, piece_start, piece_end):
            detail = f"CRC mismatch (zeroed bytes at {piece_start})"
            return _torn_unless_written_after(buf, off, prev_crc, detail, header_lost)
        piece_start = piece_end
    return _Damage(off, "CRC mismatch", False)


def _header_piece_zeroed(buf: bytes, off: int) -> bool:
    """Whether the frame header at ``off`` may have lost a sector: a part of it lying in one
    512-byte sector reads as zeros, and so does the rest of that sector (the write began at
    ``off``, so a sector it lost reads as zeros from the header on). Then its length field may
    read short or zero through no fault but a torn write."""
    n = len(buf)
    end = off + FRAME_HEADER.size
    cut = (off // _SECTOR + 1) * _SECTOR
    if cut >= end:
        return _all_zero(buf, off, min(n, cut))
    return _all_zero(buf, off, cut) or _all_zero(buf, cut, min(n, cut + _SECTOR))


#: where a frame's payload may start: a CBOR map head, then a text key's head (every record is a
#: map keyed by text); the frame header is the 8 bytes before it
_PAYLOAD_START: Final = re.compile(rb"[\xa0-\xbb][\x60-\x7b]")
#: how many places the search for later frames tries before it gives up and lets the torn
#: verdict stand (a torn tail of ordinary size has far fewer; this bounds a huge one to well
#: under a second)
_EVIDENCE_CANDIDATES: Final = 100_000
#: and how many bytes it may checksum (a real tail after the damage is checksummed once)
_EVIDENCE_CRC_BYTES: Final = 512 << 20


def _torn_unless_written_after(
    buf: bytes, off: int, prev_crc: int, detail: str, length_suspect: bool
) -> _Damage:
    """The verdict for a damaged frame at ``off`` that looks like a torn last write: torn,
    unless something shows that records were written after it (then it is corruption).

    Why: every write appends one frame, so a torn frame is the last thing ever written and
    nothing intact can follow it. A damaged length field (or a lost sector over a frame header)
    in the middle of the last segment looks torn at first sight, and repairing it would cut away
    every acknowledged record after it. Evidence of a later write:

    * with a length field that no lost sector explains (``length_suspect`` False): the frame's
      record is intact and only its length is wrong, i.e. the record (a CBOR map) decodes from
      the payload start and checksums, with the length it really has, to the stored CRC (a bit
      flip in the length field);
    * the written data after the frame ends with a run of at least two frames, each chained to
      the one before by its CRC and the last ending where the written data ends (frames
      embedded in a torn record's own data do not end there, and random data practically never
      passes the header checks, let alone the checksums).

    One lone intact frame after a frame whose header was lost cannot be told from data, and the
    search gives up on a huge torn frame after :data:`_EVIDENCE_CANDIDATES` places: the torn
    verdict stands (the repair keeps a ``.broken`` copy).
    """
    hsize = FRAME_HEADER.size
    view = memoryview(buf)
    nonzero_end = len(buf.rstrip(b"\0"))
    if not length_suspect:
        size = _record_size(view, off + hsize, nonzero_end)
        _length, stored = FRAME_HEADER.unpack_from(buf, off)
        if size is not None and stored:
            payload = view[off + hsize : off + hsize + size]
            if frame_crc(size.to_bytes(4, "little"), payload, prev_crc) == stored:
                return _Damage(
                    off, f"{detail}; the record is intact, its length field is not", False
                )
        return _Damage(off, detail, True)
    budget = [_EVIDENCE_CRC_BYTES]
    walked: set[int] = set()  # frames some walk verified: a walk through them ended no better
    for tried, m in enumerate(_PAYLOAD_START.finditer(buf, off + 1 + hsize, nonzero_end), 1):
        p = m.start() - hsize
        if p in walked:
            continue
        if _chained_tail(buf, view, p, budget, walked) is not None:
            return _Damage(off, f"{detail}; valid records follow at {p}", False)
        if tried >= _EVIDENCE_CANDIDATES or budget[0] < 0:
            log.warning("WAL: gave up looking for records after the damage at %d", off)
            break
    return _Damage(off, detail, True)


def _chained_tail(
    buf: bytes, view: memoryview, p: int, budget: list[int], walked: set[int]
) -> int | None:
    """If frames starting at ``p`` run, each chained by CRC to the one before, to where the
    written data ends (the rest of the file is zeros), with at least two of them: the end of
    the last one; else None. The first frame's own chain seed is unknown (the frame before it
    is the damaged one), so it is vouched for by the second. Checksummed bytes are taken from
    ``budget[0]``; frames verified are added to ``walked``, and a walk that reaches one of an
    earlier (failed) walk stops, since it would end the same way (so the search stays linear
    in the data, however many chained frames a record's data holds)."""
    unpack = FRAME_HEADER.unpack_from
    hsize = FRAME_HEADER.size
    n = len(buf)
    length: int
    crc: int
    length, crc = unpack(buf, p)
    at = p + hsize + length
    if length == 0 or at > n:
        return None
    frames = 1
    while True:
        if at + hsize > n or _all_zero(buf, at, min(n, at + hsize)):
            # the written data ends here if all that follows is zeros
            if frames >= 2 and _all_zero(buf, at, n):
                return at
            if at + hsize > n:
                return None
        if at in walked:
            return None
        nlen: int
        ncrc: int
        nlen, ncrc = unpack(buf, at)
        start = at + hsize
        if nlen == 0 or start + nlen > n or not 0xA0 <= buf[start] <= 0xBB:
            return None
        budget[0] -= nlen
        if budget[0] < 0:
            return None
        if frame_crc(view[at : at + 4], view[start : start + nlen], crc) != ncrc:
            return None
        walked.add(at)
        crc = ncrc
        at = start + nlen
        frames += 1


def _record_size(view: memoryview, start: int, end: int) -> int | None:
    """The length of the CBOR map starting at ``start`` (a record's payload), or None if no
    whole map decodes there."""
    if start >= end or not 0xA0 <= view[start] <= 0xBB:
        return None
    stream = io.BytesIO(view[start:end])
    try:
        item = cbor2.CBORDecoder(stream).decode()
    except Exception:  # any garbage: no evidence either way
        return None
    return stream.tell() if isinstance(item, dict) else None
