"""Damage in the middle of the last WAL segment that looks like a torn tail at first sight (a
flipped or zeroed length field, a lost sector over a frame header) must be refused as corruption,
never repaired: the repair would cut away every acknowledged record after it."""

from __future__ import annotations

import os

import pytest

from trioraft.core.types import Entry, EntryKind, HardState
from trioraft.errors import StorageCorrupted
from trioraft.storage.fs import SimulatedFileSystem
from trioraft.storage.records import FRAME_HEADER
from trioraft.storage.wal import WAL, segment_name

D = "/data/wal"


def _ents(i: int, tag: bytes = b"payload" * 5) -> list[Entry]:
    return [Entry(1, i, EntryKind.NORMAL, b"%s-%d" % (tag, i))]


def _frames(data: bytes) -> list[int]:
    """Offsets of the frames in a segment."""
    out, off = [], 0
    while off + FRAME_HEADER.size <= len(data):
        n, _ = FRAME_HEADER.unpack_from(data, off)
        if n == 0:
            break
        out.append(off)
        off += FRAME_HEADER.size + n
    return out


def _segment(fs: SimulatedFileSystem, saves: int, tag: bytes = b"payload" * 5) -> str:
    wal, _ = WAL.open(D, fs=fs, segment_bytes=1 << 20)
    for i in range(1, saves + 1):
        wal.save(_ents(i, tag), HardState(1, 0, i - 1))
    wal.close()
    return os.path.join(D, segment_name(0, 1))


def _damage(fs: SimulatedFileSystem, path: str, start: int, new: bytes) -> None:
    data = bytearray(fs.read_bytes(path))
    data[start : start + len(new)] = new
    fs.write_bytes(path, bytes(data))


def _refused(fs: SimulatedFileSystem, path: str) -> None:
    with pytest.raises(StorageCorrupted) as info:
        WAL.open(D, fs=fs, segment_bytes=1 << 20)
    assert info.value.path == path
    assert not fs.exists(path + ".broken")  # nothing was repaired


@pytest.mark.parametrize("reserved_zeros", [0, 1 << 16], ids=["plain", "reserved-zeros"])
@pytest.mark.parametrize("flip", [0x01, 0x02, 0x04, 0x80])
def test_flipped_length_bit_mid_segment_is_refused(reserved_zeros: int, flip: int) -> None:
    fs = SimulatedFileSystem()
    path = _segment(fs, 6)
    if reserved_zeros:
        fs.write_bytes(path, fs.read_bytes(path) + bytes(reserved_zeros))
    start = _frames(fs.read_bytes(path))[3]  # entry 2's save; entries 3..6 follow, acknowledged
    _damage(fs, path, start + 1, bytes([fs.read_bytes(path)[start + 1] ^ flip]))
    _refused(fs, path)


def test_zeroed_length_mid_segment_is_refused() -> None:
    fs = SimulatedFileSystem()
    path = _segment(fs, 6)
    start = _frames(fs.read_bytes(path))[3]
    _damage(fs, path, start, bytes(4))
    _refused(fs, path)


def test_lost_sector_over_a_frame_header_mid_segment_is_refused() -> None:
    fs = SimulatedFileSystem()
    path = _segment(fs, 20, tag=b"x" * 300)
    assert any(1024 <= s < 1536 - 8 for s in _frames(fs.read_bytes(path)))
    _damage(fs, path, 1024, bytes(512))
    _refused(fs, path)


def test_flipped_length_of_the_last_segments_header_is_refused() -> None:
    # Not "an interrupted segment start" to be set aside: acknowledged saves follow it.
    fs = SimulatedFileSystem()
    wal, _ = WAL.open(D, fs=fs, segment_bytes=2000)
    for i in range(1, 41):
        wal.save(_ents(i), HardState(1, 0, i))
    last = wal.segment_paths()[-1]
    wal.close()
    assert len(_frames(fs.read_bytes(last))) >= 3
    _damage(fs, last, 1, bytes([fs.read_bytes(last)[1] ^ 0x10]))
    with pytest.raises(StorageCorrupted) as info:
        WAL.open(D, fs=fs, segment_bytes=2000)
    assert info.value.path == last
    assert fs.exists(last)


def test_a_torn_last_frame_is_still_repaired() -> None:
    # The counterpart: the last save's header lost (its sector never written) while its record
    # was, and then its record cut short; both are torn writes and repaired.
    for cut in (None, 20):
        fs = SimulatedFileSystem()
        path = _segment(fs, 6)
        start = _frames(fs.read_bytes(path))[-1]
        _damage(fs, path, start, bytes(8))
        if cut is not None:
            fs.write_bytes(path, fs.read_bytes(path)[: start + cut])
        wal, contents = WAL.open(D, fs=fs, segment_bytes=1 << 20)
        wal.close()
        assert [e.index for e in contents.entries] == [1, 2, 3, 4, 5]
        assert fs.exists(path + ".broken")
