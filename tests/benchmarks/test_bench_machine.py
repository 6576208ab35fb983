"""The benchmark node's state machine restores exactly what it saved, whatever the read size."""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator

import pytest

from benchmarks.trioraft_node import INDEX_FILE, VALUES_FILE, BenchMachine, encode_puts


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

    async def iter_file(self, name: str, chunk_bytes: int | None = None) -> AsyncIterator[bytes]:
        blob = self.blobs[name]
        for i in range(0, len(blob), self.step):
            yield blob[i : i + self.step]


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


@pytest.mark.parametrize("step", [1, 2, 5, 6, 7, 64, 1000, 1 << 20])
async def test_restore_rebuilds_the_dict_for_any_piece_size(step: int) -> None:
    seed = int(os.environ.get("TRIORAFT_SEED", random.randrange(1 << 30)))
    print("seed", seed, "(replay: TRIORAFT_SEED=<seed>)")
    source = _machine(seed)
    restored = BenchMachine()
    await restored.restore(FakeReader(await _saved(source), step))  # type: ignore[arg-type]
    assert restored.data == source.data
    assert restored.value_bytes == source.value_bytes
    assert restored.applied == 5
    assert restored.get(next(iter(source.data))) == bytes(next(iter(source.data.values())))


async def test_an_empty_state_round_trips() -> None:
    restored = BenchMachine()
    await restored.restore(FakeReader(await _saved(BenchMachine()), 7))  # type: ignore[arg-type]
    assert restored.data == {} and restored.value_bytes == 0


@pytest.mark.parametrize("which", [INDEX_FILE, VALUES_FILE])
async def test_a_truncated_state_file_is_refused(which: str) -> None:
    files = await _saved(_machine(1))
    files[which] = files[which][:-3]
    with pytest.raises(ValueError, match=r"truncated|do not hold"):
        await BenchMachine().restore(FakeReader(files, 5))  # type: ignore[arg-type]
