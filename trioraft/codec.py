"""Wire and disk encoding: the single cattrs/cbor2 converter lives in
:mod:`trioraft.core.encoding` (so the pure core can encode membership changes); this module is
the runtime's entry point to it and the place where runtime frame types are registered."""

from __future__ import annotations

from trioraft.core.encoding import (
    DecodeError,
    converter,
    decode,
    decode_conf_change,
    decode_message,
    encode,
    encode_conf_change,
    encode_message,
)

__all__ = [
    "DecodeError",
    "converter",
    "decode",
    "decode_conf_change",
    "decode_message",
    "encode",
    "encode_conf_change",
    "encode_message",
]
