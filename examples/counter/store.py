"""The counter state machine of SOFAJRaft's counter example, on trioraft.

Commands are CBOR integers (the delta to add). The snapshot is one file, ``data`` (the name
SOFAJRaft's counter uses), holding one CBOR record with the value.
"""

from __future__ import annotations

import logging
from typing import Any

from examples.common.records import RecordDecoder, RecordFormatError, encode_record
from trioraft.statemachine import Saver, SnapshotReader, SnapshotWriter

__all__ = ["SNAPSHOT_FILE", "CounterStore", "SnapshotFormatError", "encode_incr"]

logger = logging.getLogger(__name__)

SNAPSHOT_FILE = "data"
_FORMAT = "trioraft-counter"
_VERSION = 1
#: Deltas are bounded so that a command stays a small fixed-size CBOR integer.
MAX_DELTA = 1 << 62


class SnapshotFormatError(ValueError):
    """A counter snapshot file is not in the expected format."""


def encode_incr(delta: int) -> bytes:
    """Encode the command that adds ``delta`` to the counter.

    Raises:
        ValueError: when ``|delta|`` exceeds :data:`MAX_DELTA`.
    """
    if abs(delta) > MAX_DELTA:
        raise ValueError(f"delta out of range (|delta| <= {MAX_DELTA})")
    return encode_record(delta)


class CounterStore:
    """An integer counter driven by committed Raft entries."""

    def __init__(self) -> None:
        self.value = 0
        self.applied_index = 0

    def apply(self, index: int, data: bytes) -> int:
        """Apply one command and return the new value (malformed commands change nothing)."""
        self.applied_index = index
        if not data:
            return self.value
        try:
            records = list(_decode_all(data))
        except RecordFormatError as exc:
            logger.error("counter: skipping malformed entry at index %d: %s", index, exc)
            return self.value
        if len(records) == 1 and type(records[0]) is int and abs(records[0]) <= MAX_DELTA:
            self.value += records[0]
        else:
            logger.error("counter: skipping unknown command at index %d", index)
        return self.value

    def snapshot_bytes(self, value: int | None = None) -> bytes:
        """The snapshot file content for ``value`` (default: the current value)."""
        v = self.value if value is None else value
        return encode_record({"format": _FORMAT, "version": _VERSION, "value": v})

    def capture(self) -> Saver:
        """Capture the value now; the saver writes it as the snapshot's ``data`` file."""
        content = self.snapshot_bytes()

        async def saver(writer: SnapshotWriter) -> None:
            await writer.write_file(SNAPSHOT_FILE, content)

        return saver

    async def restore(self, reader: SnapshotReader) -> None:
        """Load the value from a snapshot.

        Raises:
            SnapshotFormatError: the snapshot's ``data`` file is not a counter snapshot.
        """
        self.value = self.parse_snapshot(await reader.read_file(SNAPSHOT_FILE))
        self.applied_index = reader.index
        logger.info(
            "counter: restored value %d from snapshot at index %d", self.value, reader.index
        )

    @staticmethod
    def parse_snapshot(data: bytes) -> int:
        """The value held by a snapshot file.

        Raises:
            SnapshotFormatError: when the file is not a complete counter snapshot.
        """
        try:
            records = list(_decode_all(data))
        except RecordFormatError as exc:
            raise SnapshotFormatError(str(exc)) from None
        if len(records) != 1:
            raise SnapshotFormatError("expected exactly one record")
        rec: Any = records[0]
        if not (
            isinstance(rec, dict)
            and rec.get("format") == _FORMAT
            and rec.get("version") == _VERSION
            and type(rec.get("value")) is int
        ):
            raise SnapshotFormatError("not a trioraft-counter v1 snapshot")
        return int(rec["value"])


def _decode_all(data: bytes) -> list[Any]:
    decoder = RecordDecoder()
    records = list(decoder.feed(data))
    decoder.close()
    return records
