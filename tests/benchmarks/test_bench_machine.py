"""The benchmark node's state machine restores exactly what it saved, whatever the read size."""

from __future__ import annotations

import random
import struct
from collections.abc import AsyncIterator

import pytest

from benchmarks.trioraft_node import _HDR, STATE_FILE, BenchMachine, encode_puts


class FakeReader:
    """Serves one state file in pieces of ``step`` bytes."""

    def __init__(self, blob: bytes, step: int) -> None:
        self.blob = blob
        self.step = step
        self.files = (STATE_FILE,)
        self.index = 5

    async def iter_file(self, name: str, chunk_bytes: int | None = None) -> AsyncIterator[bytes]:
        assert name == STATE_FILE
        for i in range(0, len(self.blob), self.step):
            yield self.blob[i : i + self.step]


@pytest.mark.parametrize("step", [1, 2, 5, 6, 7, 64, 1000, 1 << 20])
async def test_restore_rebuilds_the_dict_for_any_piece_size(step: int) -> None:
    seed = random.randrange(1 << 30)
    print("seed", seed)
    rng = random.Random(seed)
    source = BenchMachine()
    for i in range(40):
        pairs = [
            (b"k%d" % rng.randrange(100), rng.randbytes(rng.choice([0, 1, 5, 300, 3000])))
            for _ in range(rng.randrange(1, 4))
        ]
        source.apply(i + 1, encode_puts(pairs))
    blob = b"".join(source.data.values())
    restored = BenchMachine()
    await restored.restore(FakeReader(blob, step))  # type: ignore[arg-type]
    assert restored.data == source.data
    assert restored.value_bytes == source.value_bytes
    assert restored.applied == 5


async def test_a_truncated_state_file_is_refused() -> None:
    rec = _HDR.pack(1, 3) + b"kabc"
    with pytest.raises(ValueError, match="truncated"):
        await BenchMachine().restore(FakeReader(rec + rec[:4], 3))  # type: ignore[arg-type]
    assert struct.calcsize("<HI") == _HDR.size
