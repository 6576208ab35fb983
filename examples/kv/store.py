"""The key-value state machine of the KV example.

Commands are CBOR arrays ``["put", key, value]`` (key: text, value: bytes), or
``["puts", [[key, value], ...]]`` for several PUTs that the HTTP layer grouped into one entry
(applied in order, all or none when malformed). The snapshot is one
file, ``kv.cbor``: a header record, one ``[key, value]`` record per key in key order, and a
trailer record with the key count, streamed through the snapshot writer in chunks. Nothing is
pickled, and a damaged or truncated file is refused rather than half-loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

import trio

from examples.common.records import RecordDecoder, RecordFormatError, encode_record, write_records
from trioraft.statemachine import Saver, SnapshotReader, SnapshotWriter

__all__ = ["SNAPSHOT_FILE", "KVStore", "SnapshotFormatError", "encode_put", "encode_puts"]

logger = logging.getLogger(__name__)

SNAPSHOT_FILE = "kv.cbor"
_FORMAT = "trioraft-kv"
_VERSION = 1


class SnapshotFormatError(ValueError):
    """A KV snapshot file is not in the expected format (wrong header, truncated, bad record)."""


def encode_put(key: str, value: bytes) -> bytes:
    """Encode the command that sets ``key`` to ``value``."""
    return encode_record(["put", key, value])


def encode_puts(pairs: list[tuple[str, bytes]]) -> bytes:
    """Encode one command that sets every ``(key, value)`` of ``pairs``, in order (a single pair
    is encoded as a plain ``put``)."""
    if len(pairs) == 1:
        return encode_put(*pairs[0])
    return encode_record(["puts", [[key, value] for key, value in pairs]])


def _is_pair(obj: Any) -> bool:
    return (
        isinstance(obj, list)
        and len(obj) == 2
        and isinstance(obj[0], str)
        and isinstance(obj[1], bytes)
    )


class KVStore:
    """A dict of text keys to byte values, driven by committed Raft entries.

    Only the FSM actor mutates it (``apply``, ``restore``); readers see the state after the last
    applied entry.
    """

    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}
        self.applied_index = 0

    # -- reads -------------------------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        """The value of ``key``, or ``None`` when absent."""
        return self._data.get(key)

    def __len__(self) -> int:
        return len(self._data)

    def items(self) -> Iterator[tuple[str, bytes]]:
        """All pairs in key order (a copy of the keys is taken first)."""
        for key in sorted(self._data):
            yield key, self._data[key]

    # -- state machine -----------------------------------------------------------------------
    def apply(self, index: int, data: bytes) -> None:
        """Apply one committed command; malformed commands are logged and skipped (every replica
        skips them identically, so replicas stay equal)."""
        self.applied_index = index
        if not data:
            return
        decoder = RecordDecoder()
        try:
            records = list(decoder.feed(data))
            decoder.close()
        except RecordFormatError as exc:
            logger.error("kv: skipping malformed entry at index %d: %s", index, exc)
            return
        command = records[0] if len(records) == 1 else None
        if isinstance(command, list) and len(command) == 3 and command[0] == "put":
            if _is_pair(command[1:]):
                self._data[command[1]] = command[2]
                return
        elif isinstance(command, list) and len(command) == 2 and command[0] == "puts":
            pairs = command[1]
            if isinstance(pairs, list) and all(_is_pair(p) for p in pairs):
                state = self._data
                for key, value in pairs:
                    state[key] = value
                return
        logger.error("kv: skipping unknown command at index %d", index)

    def capture_items(self) -> list[tuple[str, bytes]]:
        """A consistent copy of the state, cheap enough to take between two applies.

        Copies references only (values are immutable ``bytes``), then sorts outside the apply
        path in :meth:`snapshot_records`.
        """
        return list(self._data.items())

    @staticmethod
    def snapshot_records(items: list[tuple[str, bytes]]) -> Iterator[Any]:
        """The records of a snapshot file for a captured state."""
        items.sort()
        yield {"format": _FORMAT, "version": _VERSION}
        for key, value in items:
            yield [key, value]
        yield {"count": len(items)}

    @staticmethod
    async def save(items: list[tuple[str, bytes]], write: Callable[[bytes], Awaitable[Any]]) -> int:
        """Stream a captured state to ``write``; returns the bytes written."""
        return await write_records(KVStore.snapshot_records(items), write)

    def load(self, chunks: Iterable[bytes]) -> None:
        """Replace the state with the snapshot file given as byte chunks.

        Raises:
            SnapshotFormatError: the file is not a complete KV snapshot; the state is unchanged.
        """
        loader = SnapshotLoader()
        for chunk in chunks:
            loader.feed(chunk)
        self.replace(loader.finish())

    def replace(self, data: dict[str, bytes]) -> None:
        """Install a fully loaded state (used after a snapshot has been read)."""
        self._data = data

    # -- the trioraft StateMachine protocol ---------------------------------------------------
    def capture(self) -> Saver:
        """Copy the state's references now (between two applies); the returned saver sorts and
        streams the copy while applies go on."""
        items = self.capture_items()

        async def saver(writer: SnapshotWriter) -> None:
            # Sorting a large state is CPU work: keep it off the event loop.
            await trio.to_thread.run_sync(items.sort)
            async with writer.open(SNAPSHOT_FILE) as f:
                await KVStore.save(items, f.write)
            writer.user_meta = f"{_FORMAT}/{_VERSION} keys={len(items)}".encode()

        return saver

    async def restore(self, reader: SnapshotReader) -> None:
        """Replace the state with the snapshot's, loaded chunk by chunk.

        Raises:
            SnapshotFormatError: the snapshot is not a complete KV snapshot (state unchanged).
        """
        loader = SnapshotLoader()
        async for chunk in reader.iter_file(SNAPSHOT_FILE):
            loader.feed(chunk)
        self.replace(loader.finish())
        self.applied_index = reader.index
        logger.info("kv: restored %d keys from snapshot at index %d", len(self), reader.index)


class SnapshotLoader:
    """Incrementally parses a ``kv.cbor`` file; memory grows with the state, not the file."""

    def __init__(self) -> None:
        self._decoder = RecordDecoder()
        self._data: dict[str, bytes] = {}
        self._header = False
        self._count: int | None = None

    def feed(self, chunk: bytes) -> None:
        """Consume a chunk of the file.

        Raises:
            SnapshotFormatError: on a bad record.
        """
        try:
            for record in self._decoder.feed(chunk):
                self._record(record)
        except RecordFormatError as exc:
            raise SnapshotFormatError(str(exc)) from None

    def _record(self, record: Any) -> None:
        if not self._header:
            if not (
                isinstance(record, dict)
                and record.get("format") == _FORMAT
                and record.get("version") == _VERSION
            ):
                raise SnapshotFormatError("not a trioraft-kv v1 snapshot")
            self._header = True
            return
        if self._count is not None:
            raise SnapshotFormatError("data after the trailer")
        if isinstance(record, list) and len(record) == 2:
            key, value = record
            if isinstance(key, str) and isinstance(value, bytes):
                self._data[key] = value
                return
        if isinstance(record, dict) and isinstance(record.get("count"), int):
            self._count = record["count"]
            return
        raise SnapshotFormatError("unexpected record in snapshot")

    def finish(self) -> dict[str, bytes]:
        """Check completeness and return the loaded state.

        Raises:
            SnapshotFormatError: when the file was truncated or the count does not match.
        """
        try:
            self._decoder.close()
        except RecordFormatError as exc:
            raise SnapshotFormatError(str(exc)) from None
        if not self._header or self._count is None:
            raise SnapshotFormatError("truncated snapshot (no header or trailer)")
        if self._count != len(self._data):
            raise SnapshotFormatError(
                f"snapshot announces {self._count} keys but holds {len(self._data)}"
            )
        return self._data
