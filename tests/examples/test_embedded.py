"""examples/counter/embedded.py (the tutorial) runs as a test: three nodes over loopback TCP."""

from __future__ import annotations

from pathlib import Path

from examples.counter.embedded import tour


async def test_embedded_counter_tutorial(tmp_path: Path) -> None:
    assert await tour(tmp_path, increments=5) == 3 * 5 + 100
