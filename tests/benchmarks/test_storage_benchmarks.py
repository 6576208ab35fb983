"""The storage benchmarks still run and report what their documentation promises (tiny sizes;
these are not timed assertions)."""

from __future__ import annotations

from pathlib import Path

from benchmarks import wal_append


def test_wal_append_reports_every_batch_size_with_its_baselines(tmp_path: Path) -> None:
    res = wal_append.run(quick=True, work=str(tmp_path), entry_bytes=64, saves=4, rounds=1)
    for batch in wal_append.BATCH_SIZES:
        key = f"batch_{batch}"
        assert res[f"{key}_saves"] == 4
        # the captured bytes hold every entry's payload at least once
        assert res[f"{key}_bytes"] >= 4 * batch * 64
        for name in ("ratio", "noise_ratio", "wal_us_per_save", "raw_us_per_save"):
            assert res[f"{key}_{name}"] > 0
        assert res[f"{key}_wal_cpu_us_per_save"] >= 0
    table = wal_append._table(res)
    assert table.count("\n") == len(wal_append.BATCH_SIZES) + 1
