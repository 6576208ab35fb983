"""The `trioraft` command's read-only storage tools and status table."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from trioraft import cli
from trioraft.codec import encode_conf_change
from trioraft.core.types import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeType,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    SnapshotMeta,
)
from trioraft.storage.records import FRAME_HEADER
from trioraft.storage.wal import WAL


def _make_wal(directory: Path) -> None:
    wal, _ = WAL.open(str(directory / "wal"), segment_bytes=400)
    cc = ConfChange(changes=(ConfChangeSingle(ConfChangeType.ADD_VOTER, 2),))
    wal.save(
        [
            Entry(1, 1, EntryKind.CONF_CHANGE, encode_conf_change(cc)),
            Entry(1, 2),
            Entry(1, 3, data=b"hello world" * 5),
        ],
        HardState(1, 1, 2),
    )
    for i in range(4, 30):
        wal.save([Entry(2, i, data=b"x%d" % i)], HardState(2, 1, i - 1))
    wal.save_snapshot_marker(SnapshotMeta(20, 2, ConfState(voters=frozenset({1, 2}))))
    wal.close()


def test_wal_dump_prints_every_record_and_modifies_nothing(tmp_path: Path) -> None:
    _make_wal(tmp_path)
    before = {p.name: p.read_bytes() for p in (tmp_path / "wal").iterdir()}
    out = io.StringIO()
    assert cli.wal_dump(str(tmp_path / "wal"), out) == 0
    text = out.getvalue()
    assert "conf-change add_voter(2)" in text
    assert "no-op" in text
    assert "b'hello worldhello" in text
    assert "snapshot-marker index=20 term=2 voters=1,2" in text
    assert "summary: 29 entries written (1..29)" in text
    assert {p.name: p.read_bytes() for p in (tmp_path / "wal").iterdir()} == before
    # The data dir form works too, through main().
    assert cli.main(["wal", "dump", str(tmp_path)]) == 0


def test_wal_dump_reports_damage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _make_wal(tmp_path)
    segments = sorted((tmp_path / "wal").glob("*.wal"))
    middle = segments[len(segments) // 2]
    raw = bytearray(middle.read_bytes())
    raw[150] ^= 0x55
    middle.write_bytes(bytes(raw))
    assert cli.main(["wal", "dump", str(tmp_path)]) == 1
    assert "DAMAGE" in capsys.readouterr().out


def _frames_end(data: bytes) -> int:
    off = 0
    while off + 8 <= len(data):
        length, crc = FRAME_HEADER.unpack_from(data, off)
        if length == crc == 0:
            break
        off += 8 + length
    return off


def test_wal_dump_torn_tail_is_not_damage(tmp_path: Path) -> None:
    _make_wal(tmp_path)
    last = sorted((tmp_path / "wal").glob("*.wal"))[-1]
    data = last.read_bytes()
    end = _frames_end(data)
    # a frame header cut short by a crash, written into the space reserved after the frames
    last.write_bytes(data[:end] + b"\x50\x00\x00\x00\x01\x02" + data[end + 6 :])
    out = io.StringIO()
    assert cli.wal_dump(str(tmp_path / "wal"), out) == 0
    assert "torn tail" in out.getvalue()
    # ... and so is the end of a write whose first sector never reached the disk
    last.write_bytes(data[:end] + bytes(8) + b"\x01\x02" + data[end + 10 :])
    out = io.StringIO()
    assert cli.wal_dump(str(tmp_path / "wal"), out) == 0
    assert "torn tail: zero-length frame" in out.getvalue()


def test_wal_dump_reports_reserved_space_as_a_clean_end(tmp_path: Path) -> None:
    wal, _ = WAL.open(str(tmp_path / "wal"))
    wal.save([Entry(1, 1, data=b"x")], HardState(1, 1, 0))
    wal.close()
    out = io.StringIO()
    assert cli.wal_dump(str(tmp_path / "wal"), out) == 0
    text = out.getvalue()
    assert "reserved bytes)" in text
    assert "torn" not in text and "DAMAGE" not in text


def test_wal_dump_missing_dir(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert cli.wal_dump(str(tmp_path / "empty"), io.StringIO()) == 2
    with pytest.raises(SystemExit):
        cli.main(["wal", "dump", str(tmp_path / "nope")])


def test_status_table_marks_unreachable_nodes() -> None:
    port = cli.free_ports(1)[0]
    table, failed = cli.status_table([f"127.0.0.1:{port}"], timeout=1)
    assert failed == 1
    assert "unreachable" in table
    assert table.splitlines()[0].split()[:3] == ["ENDPOINT", "ID", "ROLE"]


def _make_snapshots(directory: Path) -> list[Path]:
    from trioraft.storage.snapshots import SnapshotStore

    store = SnapshotStore(str(directory / "snap"), retention=5)
    paths = []
    for index in (10, 20):
        builder = store.begin(index, 2, ConfState(voters=frozenset({1, 2, 3})))
        f = builder.open_file("kv.cbor")
        f.write(b"payload-%d-" % index * 100)
        f.close()
        paths.append(Path(builder.commit(b"user-meta").path))
    return paths


def test_snapshot_list_inspect_verify(tmp_path: Path) -> None:
    paths = _make_snapshots(tmp_path)
    out = io.StringIO()
    assert cli.snapshot_list(str(tmp_path / "snap"), out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].split()[:3] == ["INDEX", "TERM", "FILES"]
    assert lines[1].split()[:2] == ["20", "2"]  # newest first
    assert lines[2].split()[:2] == ["10", "2"]
    out = io.StringIO()
    assert cli.snapshot_inspect(str(tmp_path / "snap"), None, out) == 0
    text = out.getvalue()
    assert "index      20" in text and "kv.cbor" in text and "checksums  ok" in text
    assert "b'user-meta'" in text
    out = io.StringIO()
    assert cli.snapshot_inspect(str(tmp_path / "snap"), 10, out) == 0
    assert "index      10" in out.getvalue()
    assert cli.snapshot_inspect(str(tmp_path / "snap"), 15, io.StringIO()) == 2
    out = io.StringIO()
    assert cli.snapshot_verify(str(tmp_path / "snap"), out) == 0
    assert out.getvalue().count("ok ") == 2
    # Through main() with the data dir.
    assert cli.main(["snapshot", "verify", str(tmp_path)]) == 0
    assert all(p.exists() for p in paths)


def test_snapshot_verify_detects_a_flipped_byte_and_a_bad_meta(tmp_path: Path) -> None:
    older, newer = _make_snapshots(tmp_path)
    data = newer / "kv.cbor"
    raw = bytearray(data.read_bytes())
    raw[7] ^= 1
    data.write_bytes(bytes(raw))
    out = io.StringIO()
    assert cli.snapshot_verify(str(tmp_path / "snap"), out) == 1
    text = out.getvalue()
    assert "DAMAGED" in text and "kv.cbor" in text and "CRC32C mismatch" in text
    assert f"ok       {older}" in text
    assert cli.snapshot_inspect(str(tmp_path / "snap"), None, io.StringIO()) == 1
    (older / "meta.cbor").write_bytes(b"garbage")
    out = io.StringIO()
    assert cli.snapshot_verify(str(tmp_path / "snap"), out) == 1
    assert "2 of 2 snapshot(s) damaged" in out.getvalue()
    # Nothing was renamed or removed: the tools only read.
    assert older.exists() and newer.exists()


def test_snapshot_tools_on_empty_and_missing_dirs(tmp_path: Path) -> None:
    (tmp_path / "snap").mkdir()
    out = io.StringIO()
    assert cli.snapshot_verify(str(tmp_path / "snap"), out) == 0
    assert "no snapshots" in out.getvalue()
    assert cli.snapshot_list(str(tmp_path / "snap"), io.StringIO()) == 0
    assert cli.snapshot_inspect(str(tmp_path / "snap"), None, io.StringIO()) == 2
    assert cli.snapshot_verify(str(tmp_path / "nope" / "snap"), io.StringIO()) == 2


def test_status_of_a_malformed_url_is_an_unreachable_row_not_a_traceback() -> None:
    result = cli.http_request("GET", "http://[::1")
    assert result.status == 0 and result.error
    table, failed = cli.status_table(["http://[::1"], timeout=1)
    assert failed == 1 and "unreachable" in table


def test_wal_dump_goes_on_past_a_segment_that_vanished_or_cannot_be_read(tmp_path: Path) -> None:
    # A running node may release a segment between the listing and the read.
    _make_wal(tmp_path)
    wal_dir = tmp_path / "wal"
    (wal_dir / "0000000000000099-0000000000000400.wal").symlink_to(tmp_path / "nowhere")
    out = io.StringIO()
    assert cli.wal_dump(str(wal_dir), out) == 0
    assert "removed meanwhile" in out.getvalue()
    (wal_dir / "0000000000000099-0000000000000400.wal").unlink()
    (wal_dir / "0000000000000099-0000000000000400.wal").mkdir()
    out = io.StringIO()
    assert cli.wal_dump(str(wal_dir), out) == 1
    assert "cannot read" in out.getvalue()


def test_snapshot_verify_skips_a_snapshot_deleted_while_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A running node's retention may delete a snapshot after the tool listed it.
    import shutil

    from trioraft.storage.snapshots import SnapshotReader

    paths = _make_snapshots(tmp_path)
    real_verify = SnapshotReader.verify

    def verify_after_deletion(self: SnapshotReader) -> None:
        shutil.rmtree(paths[0], ignore_errors=True)
        real_verify(self)

    monkeypatch.setattr(SnapshotReader, "verify", verify_after_deletion)
    out = io.StringIO()
    assert cli.snapshot_verify(str(tmp_path / "snap"), out) == 0
    assert "removed meanwhile" in out.getvalue()
