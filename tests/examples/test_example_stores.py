"""The KV and counter state machines of the examples: commands and snapshot formats."""

from __future__ import annotations

import random

import cbor2
import pytest

from examples.counter.store import CounterStore, encode_incr
from examples.counter.store import SnapshotFormatError as CounterFormatError
from examples.kv.store import KVStore, SnapshotFormatError, SnapshotLoader, encode_put


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
