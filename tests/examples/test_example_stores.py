"""The KV and counter state machines of the examples: commands and snapshot formats."""

from __future__ import annotations

import random
from typing import Any

import attrs
import cbor2
import pytest

from examples.counter.store import CounterStore, encode_incr
from examples.counter.store import SnapshotFormatError as CounterFormatError
from examples.kv.store import KVStore, SnapshotFormatError, SnapshotLoader, encode_put
from trioraft.core.types import ConfState
from trioraft.runtime.disk import INLINE_DISK
from trioraft.statemachine import SnapshotReader, SnapshotWriter


async def _save(items: list[tuple[str, bytes]]) -> tuple[bytes, list[int]]:
    out = bytearray()
    sizes: list[int] = []

    async def write(chunk: bytes) -> None:
        out.extend(chunk)
        sizes.append(len(chunk))

    total = await KVStore.save(items, write)
    assert total == len(out)
    return bytes(out), sizes


def test_kv_apply_put_and_skip_garbage() -> None:
    kv = KVStore()
    kv.apply(1, encode_put("a", b"1"))
    kv.apply(2, b"")  # leader no-op
    kv.apply(3, b"\xff\xff garbage")
    kv.apply(4, cbor2.dumps(["del", "a"]))
    kv.apply(5, encode_put("b", b""))
    assert kv.get("a") == b"1"
    assert kv.get("b") == b""
    assert kv.get("c") is None
    assert kv.applied_index == 5


async def test_kv_snapshot_roundtrip_streams_in_chunks() -> None:
    seed = random.randrange(1 << 30)
    print("seed", seed)
    rng = random.Random(seed)
    kv = KVStore()
    for i in range(3000):
        kv.apply(
            i + 1, encode_put(f"key-{rng.randrange(2000)}", rng.randbytes(rng.randrange(1000)))
        )
    items = kv.capture_items()
    kv.apply(99999, encode_put("after-capture", b"x"))  # not in the captured state
    data, sizes = await _save(items)
    assert len(sizes) > 1 and max(sizes) < 300 * 1024 + 400  # chunked, bounded
    restored = KVStore()
    # Feed in odd-sized pieces to exercise record boundaries.
    pieces = [data[i : i + 777] for i in range(0, len(data), 777)]
    restored.load(pieces)
    assert restored.get("after-capture") is None
    assert dict(restored.items()) == {k: v for k, v in kv.items() if k != "after-capture"}
    # Canonical, sorted output: equal states give equal bytes.
    again, _ = await _save(list(reversed(items)))
    assert again == data


async def test_kv_snapshot_damage_is_refused_and_state_kept() -> None:
    kv = KVStore()
    kv.apply(1, encode_put("a", b"1"))
    data, _ = await _save(kv.capture_items())
    target = KVStore()
    target.apply(1, encode_put("keep", b"me"))
    for bad in (data[:-3], data[: len(data) // 2], b"\x00" + data, cbor2.dumps({"format": "x"})):
        with pytest.raises(SnapshotFormatError):
            target.load([bad])
        assert target.get("keep") == b"me"
    loader = SnapshotLoader()
    loader.feed(data)
    with pytest.raises(SnapshotFormatError):
        loader.feed(cbor2.dumps(["late", b"x"]))


async def test_kv_empty_snapshot() -> None:
    data, _ = await _save([])
    kv = KVStore()
    kv.apply(1, encode_put("a", b"1"))
    kv.load([data])
    assert len(kv) == 0


def test_counter_apply_and_snapshot() -> None:
    c = CounterStore()
    assert c.apply(1, encode_incr(5)) == 5
    assert c.apply(2, encode_incr(-2)) == 3
    assert c.apply(3, b"") == 3
    assert c.apply(4, cbor2.dumps("nope")) == 3
    assert c.apply(5, cbor2.dumps(True)) == 3  # bools are not deltas
    assert c.apply(6, b"\xff") == 3
    snap = c.snapshot_bytes()
    assert CounterStore.parse_snapshot(snap) == 3
    for bad in (b"", snap[:-1], snap + snap, cbor2.dumps({"format": "trioraft-counter"})):
        with pytest.raises(CounterFormatError):
            CounterStore.parse_snapshot(bad)
    with pytest.raises(ValueError):
        encode_incr(1 << 63)


class _MemFile:
    def __init__(self, files: dict[str, bytearray], name: str) -> None:
        self.buf = files.setdefault(name, bytearray())

    def write(self, data: bytes) -> int:
        self.buf += data
        return len(data)

    def close(self) -> None:
        pass


class _MemBuilder:
    """Stands in for the storage's SnapshotBuilder / SnapshotReader backend."""

    def __init__(self) -> None:
        self.files: dict[str, bytearray] = {}

    def open_file(self, name: str) -> _MemFile:
        return _MemFile(self.files, name)

    def read_chunk(self, name: str, offset: int, size: int) -> bytes:
        return bytes(self.files[name][offset : offset + size])


@attrs.frozen
class _Info:
    name: str
    size: int


@attrs.frozen
class _Stored:
    index: int
    term: int
    conf: ConfState
    user_meta: bytes
    files: tuple[_Info, ...]


async def _snapshot_roundtrip(sm: Any, target: Any, index: int) -> _MemBuilder:
    mem = _MemBuilder()
    saver = sm.capture()
    writer = SnapshotWriter(
        mem, INLINE_DISK, index=index, term=1, conf=ConfState(), chunk_bytes=4096
    )
    await saver(writer)
    await writer.aclose_all()
    stored = _Stored(
        index,
        1,
        ConfState(),
        writer.user_meta,
        tuple(_Info(n, len(b)) for n, b in mem.files.items()),
    )
    await target.restore(SnapshotReader(stored, mem, INLINE_DISK, chunk_bytes=1000))
    return mem


async def test_kv_capture_and_restore_through_trioraft_writer() -> None:
    kv = KVStore()
    for i in range(500):
        kv.apply(i + 1, encode_put(f"k{i}", bytes([i % 256]) * 50))
    mem_target = KVStore()
    mem = await _snapshot_roundtrip(kv, mem_target, 500)
    assert list(mem.files) == ["kv.cbor"]
    assert mem_target.applied_index == 500
    assert dict(mem_target.items()) == dict(kv.items())


async def test_kv_capture_is_consistent_while_applies_continue() -> None:
    kv = KVStore()
    kv.apply(1, encode_put("a", b"1"))
    saver = kv.capture()
    kv.apply(2, encode_put("a", b"2"))
    kv.apply(3, encode_put("b", b"3"))
    mem = _MemBuilder()
    writer = SnapshotWriter(mem, INLINE_DISK, index=1, term=1, conf=ConfState())
    await saver(writer)
    restored = KVStore()
    restored.load([bytes(mem.files["kv.cbor"])])
    assert dict(restored.items()) == {"a": b"1"}


async def test_counter_capture_and_restore_through_trioraft_writer() -> None:
    c = CounterStore()
    c.apply(1, encode_incr(41))
    target = CounterStore()
    mem = await _snapshot_roundtrip(c, target, 1)
    assert list(mem.files) == ["data"]
    assert target.value == 41
