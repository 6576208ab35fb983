"""Torn-tail sweep: cut the WAL at every byte offset of its last frames, or zero everything
from that offset on (the file keeps its size), and reopen: the WAL must hold exactly the
complete saves before the cut, keep the damaged original as ``.broken`` when it repaired
something, and go on appending after the repair."""

from __future__ import annotations

import os

import pytest
from storage_helpers import ents

from trioraft.core.types import Entry, HardState
from trioraft.storage.fs import REAL_FS, FileSystem, SimulatedFileSystem, read_file
from trioraft.storage.records import FRAME_HEADER
from trioraft.storage.wal import WAL, segment_name

D = "/wal"


def _build(
    fs: FileSystem, d: str, big: bool
) -> tuple[bytes, list[tuple[int, list[Entry], HardState]]]:
    """Write a WAL; return the segment bytes up to its last frame (without the space reserved
    after it) and, per save, (frame end, entries, hard state)."""
    wal, _ = WAL.open(d, fs=fs)
    saves: list[tuple[list[Entry], HardState | None]] = [
        (ents(1, 3), HardState(1, 1, 0)),
        (ents(4, 4), HardState(1, 1, 3)),
        ([], HardState(2, 0, 3)),
        (ents(5, 5, term=2, tag=b"x" * (1500 if big else 300)), None),  # crosses sectors
        (ents(3, 6, term=2), HardState(2, 0, 5)),  # suffix replacement in the tail
        ([], HardState(2, 2, 6)),
    ]
    log: list[Entry] = []
    hs = HardState()
    expected: list[tuple[int, list[Entry], HardState]] = []
    path = os.path.join(d, segment_name(0, 1))
    for batch, h in saves:
        wal.save(batch, h)
        if batch:
            log = [e for e in log if e.index < batch[0].index] + batch
        if h is not None:
            hs = h
        expected.append((0, list(log), hs))
    wal.close()
    data = read_file(fs, path)
    starts = _frame_starts(data)
    # every save wrote one frame, after the header and the empty marker
    assert len(starts) == 2 + len(saves) + 1  # + the zero header of the reserved space
    ends = starts[3:]
    expected = [(end, lg, h) for end, (_, lg, h) in zip(ends, expected, strict=True)]
    return data[: ends[-1]], expected


def _frame_starts(data: bytes) -> list[int]:
    """Where each frame starts (and where the zeros after the last one start, if any)."""
    out = []
    off = 0
    while off + 8 <= len(data):
        n, crc = FRAME_HEADER.unpack_from(data, off)
        out.append(off)
        if n == crc == 0:
            break
        off += 8 + n
    return out


def _expect(
    expected: list[tuple[int, list[Entry], HardState]], cut: int
) -> tuple[list[Entry], HardState]:
    log: list[Entry] = []
    hs = HardState()
    for end, lg, h in expected:
        if end <= cut:
            log, hs = lg, h
    return log, hs


def _sweep(
    fs: FileSystem,
    d: str,
    data: bytes,
    expected: list[tuple[int, list[Entry], HardState]],
    cuts: range,
    put: object,
) -> int:
    path = os.path.join(d, segment_name(0, 1))
    boundaries = {end for end, _, _ in expected} | set(_frame_starts(data))
    checked = 0
    for cut in cuts:
        for zeroed in (False, True):
            content = data[:cut] + (bytes(len(data) - cut) if zeroed else b"")
            put(path, content)  # type: ignore[operator]
            if fs.exists(path + ".broken"):
                fs.remove(path + ".broken")
            wal, c = WAL.open(d, fs=fs)
            log, hs = _expect(expected, cut)
            assert (c.entries, c.hard_state) == (log, hs), f"cut {cut} zeroed {zeroed}"
            repaired = fs.exists(path + ".broken")
            assert repaired == (cut not in boundaries), f"cut {cut} zeroed {zeroed}"
            if repaired:
                assert read_file(fs, path + ".broken") == content
            if cut % 97 == 0:  # the repaired WAL keeps working
                nxt = (log[-1].index + 1) if log else 1
                wal.save(ents(nxt, nxt, term=9), HardState(9, 0, 0))
                wal.close()
                wal, c = WAL.open(d, fs=fs)
                assert c.entries == log + ents(nxt, nxt, term=9)
            wal.close()
            checked += 1
    return checked


def test_torn_tail_sweep_last_frames_simulated() -> None:
    fs = SimulatedFileSystem()
    data, expected = _build(fs, D, big=False)
    first_cut = expected[2][0]  # every byte of the last four frames
    n = _sweep(fs, D, data, expected, range(first_cut, len(data) + 1), fs.write_bytes)
    assert n == 2 * (len(data) + 1 - first_cut)


def test_torn_tail_sweep_last_frame_real_files(tmp_path: object) -> None:
    d = os.path.join(str(tmp_path), "wal")
    data, expected = _build(REAL_FS, d, big=False)

    def put(path: str, content: bytes) -> None:
        with open(path, "wb") as f:
            f.write(content)

    first_cut = expected[-2][0]  # the last frame, every third byte (real fsyncs are slow)
    cuts = range(first_cut, len(data) + 1, 3)
    assert _sweep(REAL_FS, d, data, expected, cuts, put) == 2 * len(cuts) > 0


@pytest.mark.slow
def test_torn_tail_sweep_every_offset_with_a_big_frame() -> None:
    fs = SimulatedFileSystem()
    data, expected = _build(fs, D, big=True)
    first_cut = _frame_starts(data)[2]  # after the header and the empty marker
    cuts = range(first_cut, len(data) + 1)
    assert _sweep(fs, D, data, expected, cuts, fs.write_bytes) == 2 * len(cuts) > 0
