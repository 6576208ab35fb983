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
    # The counterpart: the last save's first sector never written (from its header to the
    # sector's end), the rest of it written, or then cut short; torn writes, repaired.
    for cut in (None, 20):
        fs = SimulatedFileSystem()
        path = _segment(fs, 6, tag=b"x" * 700)
        start = _frames(fs.read_bytes(path))[-1]
        sector_end = (start // 512 + 1) * 512
        _damage(fs, path, start, bytes(sector_end - start))
        if cut is not None:
            fs.write_bytes(path, fs.read_bytes(path)[: sector_end + cut])
        wal, contents = WAL.open(D, fs=fs, segment_bytes=1 << 20)
        wal.close()
        assert [e.index for e in contents.entries] == [1, 2, 3, 4, 5]
        assert fs.exists(path + ".broken")


@pytest.mark.parametrize("after", [0, 1], ids=["last-frame", "one-frame-after"])
def test_a_zeroed_length_field_no_lost_sector_explains_is_refused(after: int) -> None:
    # Zeros in the length field alone (the rest of its sector written) are no torn write, even
    # with no (or one) frame after it to show a later write.
    fs = SimulatedFileSystem()
    path = _segment(fs, 6)
    start = _frames(fs.read_bytes(path))[-1 - after]
    if start // 512 != (start + 7) // 512:  # keep the header inside one sector
        start = _frames(fs.read_bytes(path))[-2 - after]
    _damage(fs, path, start, bytes(4))
    _refused(fs, path)


def test_a_zeroed_header_inside_a_written_sector_is_refused() -> None:
    fs = SimulatedFileSystem()
    path = _segment(fs, 6)
    start = _frames(fs.read_bytes(path))[-1]
    _damage(fs, path, start, bytes(8))
    _refused(fs, path)


@pytest.mark.parametrize("data_tail", [b"end", b"end\0\0\0\0"], ids=["plain", "zeros-at-end"])
def test_lost_header_with_later_frames_is_refused_even_if_their_data_ends_in_zeros(
    data_tail: bytes,
) -> None:
    fs = SimulatedFileSystem()
    wal, _ = WAL.open(D, fs=fs, segment_bytes=1 << 20)
    for i in range(1, 5):
        data = b"payload-%d" % i + (data_tail if i == 4 else b"")
        wal.save([Entry(1, i, EntryKind.NORMAL, data)], HardState(1, 0, i - 1))
    wal.close()
    path = os.path.join(D, segment_name(0, 1))
    start = _frames(fs.read_bytes(path))[-3]  # entry 2's save; 3 and 4 follow, acknowledged
    _damage(fs, path, start, bytes(8))
    _refused(fs, path)


def _torn_last_frame_cases() -> list[tuple[int, str, int]]:
    # the last frame's header at offsets 500..511 and 0..3 of a sector (``pad`` 457..472 puts
    # it there), so across every way it can straddle a sector boundary; a lost single sector,
    # prefix or suffix of its sectors
    return [
        (pad, how, k)
        for pad in range(457, 473)
        for how, k in (("single", 0), ("single", 1), ("prefix", 1), ("suffix", 1), ("suffix", 2))
    ]


@pytest.mark.parametrize(("pad", "how", "k"), _torn_last_frame_cases())
def test_a_last_frame_torn_by_lost_sectors_is_repaired_wherever_its_header_lies(
    pad: int, how: str, k: int
) -> None:
    fs = SimulatedFileSystem()
    wal, _ = WAL.open(D, fs=fs, segment_bytes=1 << 20)
    wal.save([Entry(1, 1, EntryKind.NORMAL, b"a" * pad)], HardState(1, 0, 0))
    wal.save([Entry(1, 2, EntryKind.NORMAL, b"b" * 100)], HardState(1, 0, 1))
    last = bytes((i * 7 + 3) % 251 for i in range(1500))
    wal.save([Entry(1, 3, EntryKind.NORMAL, last)], HardState(1, 0, 2))
    wal.close()
    path = os.path.join(D, segment_name(0, 1))
    data = bytearray(fs.read_bytes(path))
    start = _frames(bytes(data))[-1]
    end = len(bytes(data).rstrip(b"\0"))
    sectors = list(range(start // 512, (end - 1) // 512 + 1))
    lost = {"single": [sectors[k]], "prefix": sectors[:k], "suffix": sectors[-k:]}[how]
    for s in lost:
        a, z = max(s * 512, start), min((s + 1) * 512, end)
        data[a:z] = bytes(z - a)
    fs.write_bytes(path, bytes(data))
    wal, contents = WAL.open(D, fs=fs, segment_bytes=1 << 20)
    wal.close()
    assert [e.index for e in contents.entries] == [1, 2]


def test_frames_embedded_in_a_torn_records_data_do_not_count_as_later_writes() -> None:
    # An entry holding a copy of a WAL file (two chained frames), torn by a crash: still torn.
    fs = SimulatedFileSystem()
    other, _ = WAL.open("/other", fs=fs, segment_bytes=1 << 20)
    other.close()
    blob = fs.read_bytes(os.path.join("/other", segment_name(0, 1))).rstrip(b"\0")
    wal, _ = WAL.open(D, fs=fs, segment_bytes=1 << 20)
    wal.save(_ents(1), HardState(1, 0, 0))
    wal.save([Entry(1, 2, EntryKind.NORMAL, b"file:" + blob + b"x" * 4000)], HardState(1, 0, 1))
    wal.close()
    path = os.path.join(D, segment_name(0, 1))
    data = fs.read_bytes(path).rstrip(b"\0")
    fs.write_bytes(path, data[: len(data) - 1000])
    wal, contents = WAL.open(D, fs=fs, segment_bytes=1 << 20)
    wal.close()
    assert [e.index for e in contents.entries] == [1]
