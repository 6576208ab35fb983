"""The benchmark node's state machine restores exactly what it saved, whatever the read size."""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from benchmarks.trioraft_node import (
    INDEX_FILE,
    KEYS_FILE,
    VALUES_FILE,
    BenchMachine,
    _SortedKeys,
    encode_puts,
)
from trioraft.core.types import ConfState
from trioraft.runtime.disk import INLINE_DISK
from trioraft.statemachine import SnapshotReader
from trioraft.storage.snapshots import SnapshotStore


class FakeWriter:
    """Collects what a saver writes, file by file."""

    def __init__(self) -> None:
        self.files: dict[str, bytearray] = {}
        self.user_meta = b""

    def open(self, name: str) -> FakeWriter._File:
        return FakeWriter._File(self.files.setdefault(name, bytearray()))

    class _File:
        def __init__(self, buf: bytearray) -> None:
            self.buf = buf

        async def __aenter__(self) -> FakeWriter._File:
            return self

        async def __aexit__(self, *exc: object) -> None:
            return None

        async def write(self, data: bytes) -> None:
            self.buf += data


class FakeReader:
    """Serves the saved files in pieces of ``step`` bytes."""

    def __init__(self, files: dict[str, bytes], step: int) -> None:
        self.blobs = files
        self.step = step
        self.files = tuple(files)
        self.index = 5
        self.term = 2

    def size(self, name: str) -> int:
        return len(self.blobs[name])

    async def iter_file(self, name: str, chunk_bytes: int | None = None) -> AsyncIterator[bytes]:
        blob = self.blobs[name]
        for i in range(0, len(blob), self.step):
            yield blob[i : i + self.step]

    async def map_file(self, name: str) -> bytes:
        # as SnapshotReader.map_file does for a store without paths: the whole file
        return self.blobs[name]

    @asynccontextmanager
    async def open(self, name: str) -> AsyncIterator[FakeReader._File]:
        yield FakeReader._File(self.blobs[name], self.step)

    class _File:
        """Returns at most ``step`` bytes per read (a short read, like a huge ``pread``)."""

        def __init__(self, blob: bytes, step: int) -> None:
            self.blob = blob
            self.step = step
            self.pos = 0
            self.size = len(blob)

        async def read(self, n: int = -1) -> bytes:
            left = self.size - self.pos
            n = left if n < 0 else min(n, left)
            data = self.blob[self.pos : self.pos + min(n, self.step)]
            self.pos += len(data)
            return data


def _machine(seed: int) -> BenchMachine:
    rng = random.Random(seed)
    m = BenchMachine()
    for i in range(40):
        pairs = [
            (b"k%d" % rng.randrange(100), rng.randbytes(rng.choice([0, 1, 5, 300, 3000])))
            for _ in range(rng.randrange(1, 4))
        ]
        m.apply(i + 1, encode_puts(pairs))
    return m


async def _saved(m: BenchMachine) -> dict[str, bytes]:
    writer = FakeWriter()
    await m.capture()(writer)  # type: ignore[arg-type]
    return {name: bytes(buf) for name, buf in writer.files.items()}


def _state(m: BenchMachine) -> dict[bytes, bytes]:
    items = list(m.items())
    assert len(items) == m.key_count
    state = {k: bytes(v) for k, v in items}
    assert len(state) == len(items), "a key in both layers"
    assert m.value_bytes == sum(map(len, state.values()))
    return state


def _seed() -> int:
    seed = int(os.environ.get("TRIORAFT_SEED", random.randrange(1 << 30)))
    print("seed", seed, "(replay: TRIORAFT_SEED=<seed>)")
    return seed


@pytest.mark.parametrize("step", [1, 2, 5, 6, 7, 64, 1000, 1 << 20])
async def test_restore_rebuilds_the_state_for_any_read_size(step: int) -> None:
    source = _machine(_seed())
    restored = BenchMachine(map_values=False)  # every file read, in pieces of ``step``
    await restored.restore(FakeReader(await _saved(source), step))  # type: ignore[arg-type]
    assert _state(restored) == _state(source)
    assert restored.value_bytes == source.value_bytes
    assert restored.applied == 5
    for key, value in source.items():
        assert restored.get(key) == value
    assert restored.get(b"absent") is None


async def test_a_restored_state_takes_puts_and_snapshots_again() -> None:
    """Puts after a restore (of loaded keys and new ones) read back, keep the byte count, and
    a snapshot of the mixed state restores to the same state; so does one of the untouched
    restored state, and one after every loaded key was overwritten."""
    rng = random.Random(_seed())
    source = _machine(rng.randrange(1 << 30))
    restored = BenchMachine()
    await restored.restore(FakeReader(await _saved(source), 1 << 20))  # type: ignore[arg-type]
    again = BenchMachine()
    await again.restore(FakeReader(await _saved(restored), 3))  # type: ignore[arg-type]
    assert _state(again) == _state(source)
    model = _state(source)
    loaded = list(model)
    for i in range(30):
        pairs = [
            (rng.choice([rng.choice(loaded), b"new%d" % rng.randrange(20)]), rng.randbytes(i))
            for _ in range(rng.randrange(1, 4))
        ]
        restored.apply(100 + i, encode_puts(pairs))
        model.update(pairs)
        assert _state(restored) == model
        for key, value in model.items():
            assert restored.get(key) == value
        copy = BenchMachine()
        await copy.restore(FakeReader(await _saved(restored), 5))  # type: ignore[arg-type]
        assert _state(copy) == model
    restored.apply(200, encode_puts([(k, b"last") for k in loaded]))
    model.update((k, b"last") for k in loaded)
    assert _state(restored) == model
    copy = BenchMachine()
    await copy.restore(FakeReader(await _saved(restored), 5))  # type: ignore[arg-type]
    assert _state(copy) == model


async def test_an_empty_state_round_trips() -> None:
    restored = BenchMachine()
    await restored.restore(FakeReader(await _saved(BenchMachine()), 7))  # type: ignore[arg-type]
    assert _state(restored) == {} and restored.value_bytes == 0 and restored.key_count == 0


@pytest.mark.parametrize("which", [INDEX_FILE, KEYS_FILE, VALUES_FILE])
async def test_a_truncated_state_file_is_refused(which: str) -> None:
    files = await _saved(_machine(1))
    files[which] = files[which][:-3]
    with pytest.raises(ValueError, match=r"truncated|do not hold|the index says"):
        await BenchMachine().restore(FakeReader(files, 5))  # type: ignore[arg-type]


@pytest.mark.parametrize("map_values", [True, False])
async def test_a_restore_maps_the_values_file_from_a_real_store(
    tmp_path: Path, map_values: bool
) -> None:
    """By default a restore maps ``values.bin`` from the snapshot store (read-only, through
    ``SnapshotReader.map_file``) and gives the same state as reading it; the mapping stays
    valid after retention removes the file, and a snapshot of the mapped state restores the
    same state."""
    source = _machine(3)
    files = await _saved(source)
    store = SnapshotStore(str(tmp_path / "snap"))
    builder = store.begin(9, 2, ConfState(voters=(1,)))
    for name, data in files.items():
        f = builder.open_file(name)
        f.write(data)
        f.close()
    stored = builder.commit()
    reader = SnapshotReader(stored, store.open_reader(9), INLINE_DISK)
    restored = BenchMachine(map_values=map_values)
    await restored.restore(reader)
    assert restored.values_mapped is map_values
    assert _state(restored) == _state(source) and restored.applied == 9
    path = reader.file_path(VALUES_FILE)
    assert path is not None
    os.remove(path)  # retention removing the snapshot keeps a mapping valid
    assert _state(restored) == _state(source)
    again = BenchMachine()
    await again.restore(FakeReader(await _saved(restored), 7))  # type: ignore[arg-type]
    assert _state(again) == _state(source)


@pytest.mark.parametrize("count", [1, 4096, 2 * 4096 + 5])
async def test_keys_of_one_width_restore_through_the_block_cut(count: int) -> None:
    """Keys all of one width are cut in blocks of 4096 (plus a remainder); the state comes
    back the same, and a keys file of the wrong length is refused."""
    source = BenchMachine()
    pairs = [(b"k%06d" % i, b"v%d" % (i * 7)) for i in range(count)]
    source.apply(1, encode_puts(pairs))
    files = await _saved(source)
    restored = BenchMachine()
    await restored.restore(FakeReader(files, 1 << 20))  # type: ignore[arg-type]
    assert _state(restored) == dict(pairs)
    for key, value in pairs[:: max(1, count // 50)]:
        assert restored.get(key) == value
    files[KEYS_FILE] = files[KEYS_FILE][:-1]
    with pytest.raises(ValueError, match="the index says"):
        await BenchMachine().restore(FakeReader(files, 1 << 20))  # type: ignore[arg-type]


@pytest.mark.parametrize("width", ["one", "mixed"])
async def test_ascending_keys_restore_into_a_sorted_index_that_takes_puts(width: str) -> None:
    """Keys saved in strictly ascending order (of one width or not) restore into the sorted
    key index, not a dict; reads, puts of loaded and new keys, absent keys, and snapshots of
    the partly and wholly overwritten state behave as with the dict (checked against a
    model); keys out of order, or repeated, take the dict (the repeat is refused)."""
    rng = random.Random(_seed())
    if width == "one":
        keys = [b"k%05d" % i for i in range(0, 3000, 3)]
    else:
        keys = sorted({b"k%d" % rng.randrange(10**6) for _ in range(700)})
    source = BenchMachine()
    pairs = [(k, rng.randbytes(rng.choice([0, 1, 9, 300]))) for k in keys]
    source.apply(1, encode_puts(pairs))
    files = await _saved(source)
    restored = BenchMachine()
    await restored.restore(FakeReader(files, 1 << 20))  # type: ignore[arg-type]
    assert isinstance(restored._base, _SortedKeys)
    model = dict(pairs)
    assert _state(restored) == model
    assert restored.get(b"k") is None and restored.get(b"z") is None and restored.get(b"") is None
    for i in range(40):
        batch = [
            (rng.choice([rng.choice(keys), b"k%05dx" % rng.randrange(3000)]), rng.randbytes(i))
            for _ in range(rng.randrange(1, 6))
        ]
        restored.apply(10 + i, encode_puts(batch))
        model.update(batch)
        if i % 8 == 0:
            assert _state(restored) == model
            for key in rng.sample(keys, 50):
                assert restored.get(key) == model[key]
            copy = BenchMachine()
            await copy.restore(FakeReader(await _saved(restored), 7))  # type: ignore[arg-type]
            assert _state(copy) == model
    restored.apply(100, encode_puts([(k, b"last") for k in keys]))
    model.update((k, b"last") for k in keys)
    assert not restored._base  # nothing loaded is live any more
    assert _state(restored) == model
    copy = BenchMachine()
    await copy.restore(FakeReader(await _saved(restored), 5))  # type: ignore[arg-type]
    assert _state(copy) == model

    # out of order: the dict; a repeated key: refused
    shuffled = BenchMachine()
    shuffled.apply(1, encode_puts([(b"b", b"1"), (b"a", b"2"), (b"c", b"3")]))
    restored = BenchMachine()
    await restored.restore(FakeReader(await _saved(shuffled), 3))  # type: ignore[arg-type]
    assert isinstance(restored._base, dict)
    assert _state(restored) == {b"b": b"1", b"a": b"2", b"c": b"3"}
    files = await _saved(shuffled)
    files[KEYS_FILE] = b"aac"  # keys "a", "a", "c": not strictly ascending, and a repeat
    with pytest.raises(ValueError, match="duplicate"):
        await BenchMachine().restore(FakeReader(files, 3))  # type: ignore[arg-type]


def test_the_sorted_index_pops_only_live_keys() -> None:
    index = _SortedKeys([b"a", b"c", b"e"])
    assert len(index) == 3 and list(index.items()) == [(b"a", 0), (b"c", 1), (b"e", 2)]
    assert index.get(b"b") is None and index.get(b"f") is None and index.get(b"c") == 1
    assert index.pop(b"c") == 1 and index.pop(b"c", -1) == -1 and index.get(b"c") is None
    assert list(index) == [b"a", b"e"] and list(index.values()) == [0, 2] and len(index) == 2
    assert index.pop(b"a") == 0 and index.pop(b"e") == 2 and not index and list(index) == []
