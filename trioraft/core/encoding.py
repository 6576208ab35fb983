"""The one cattrs converter (CBOR through cbor2) used on the wire and on disk.

Pure: no I/O. Decoding is strict: unknown keys, missing fields and wrong types raise
:class:`DecodeError`. Message unions are tagged by a ``"type"`` field holding the class name.
The runtime registers its own frame types on the same converter (see :mod:`trioraft.codec`).
"""

from __future__ import annotations

import enum
import io
from typing import Any, TypeVar

import cbor2
from cattrs.errors import BaseValidationError, ClassValidationError
from cattrs.preconf.cbor2 import Cbor2Converter, make_converter
from cattrs.strategies import configure_tagged_union

from trioraft.core.messages import Message
from trioraft.core.types import ConfChange

__all__ = [
    "DecodeError",
    "converter",
    "decode",
    "decode_conf_change",
    "encode",
    "encode_conf_change",
    "loads",
    "structure",
]

T = TypeVar("T")


class DecodeError(ValueError):
    """Bytes that are not a valid encoding of the expected type."""


converter: Cbor2Converter = make_converter(forbid_extra_keys=True, detailed_validation=True)

# Strictness: cattrs' default structuring of scalars converts (int("3") works, True is an int);
# a decoder of untrusted bytes must instead insist on the exact CBOR type. Registered by exact
# type (not singledispatch) so IntEnum fields keep their own validating hook.


def _strict(expected: type) -> Any:
    def hook(value: Any, _: Any) -> Any:
        if type(value) is not expected:
            raise DecodeError(f"expected {expected.__name__}, got {type(value).__name__}")
        return value

    return hook


def _strict_int_enum(value: Any, cls: type[enum.IntEnum]) -> enum.IntEnum:
    if type(value) is not int:
        raise DecodeError(f"expected {cls.__name__} (int), got {type(value).__name__}")
    return cls(value)


for _t in (int, bytes, str, bool):
    converter.register_structure_hook(_t, _strict(_t))
# More specific than ``int`` in the MRO, so enum fields validate their members.
converter.register_structure_hook(enum.IntEnum, _strict_int_enum)

configure_tagged_union(Message, converter, tag_name="type")


def encode(obj: Any, unstructure_as: Any = None) -> bytes:
    """Encode an attrs object (or a union member, with ``unstructure_as`` the union) to CBOR."""
    return cbor2.dumps(converter.unstructure(obj, unstructure_as=unstructure_as))


def decode(data: bytes, cls: Any) -> Any:
    """Decode CBOR bytes into ``cls`` (a class or a union).

    Raises:
        DecodeError: the bytes are not valid CBOR or do not match ``cls``.
    """
    return structure(loads(data), cls)


def loads(data: bytes | bytearray | memoryview) -> Any:
    """Parse ``data`` as exactly one CBOR value, without structuring it.

    ``cbor2.loads`` stops after the first value and ignores whatever follows it, so bytes
    appended to a valid encoding would pass unnoticed; here the value must span all of ``data``.

    Raises:
        DecodeError: the bytes are not valid CBOR, or bytes follow the first value.
    """
    fp = io.BytesIO(data)
    try:
        raw = cbor2.load(fp)
    except Exception as exc:  # cbor2 raises a variety of errors on garbage
        raise DecodeError(f"invalid CBOR: {exc}") from exc
    # The decoder reads ahead but seeks back to the end of the value before returning.
    if fp.read(1):
        end = fp.tell() - 1
        extra = fp.seek(0, io.SEEK_END) - end
        raise DecodeError(f"invalid CBOR: {extra} trailing byte(s) after the value at offset {end}")
    return raw


def structure(raw: Any, cls: Any) -> Any:
    """Structure already-parsed CBOR data into ``cls`` with the same strict rules as
    :func:`decode` (for callers that inspect the parsed data first).

    Raises:
        DecodeError: ``raw`` does not match ``cls``.
    """
    try:
        return converter.structure(raw, cls)
    except (
        AttributeError,  # a list or scalar where a map was expected
        BaseValidationError,
        ClassValidationError,
        KeyError,
        TypeError,
        ValueError,
    ) as exc:
        name = getattr(cls, "__name__", "message")
        detail = "; ".join(_leaf_errors(exc)) or _text(exc)
        raise DecodeError(f"invalid {name}: {detail}") from exc


def _leaf_errors(exc: BaseException) -> list[str]:
    if isinstance(exc, BaseExceptionGroup):
        out: list[str] = []
        for sub in exc.exceptions:
            out.extend(_leaf_errors(sub))
        return out
    return [f"{type(exc).__name__}: {_text(exc)}"]


def _text(exc: BaseException) -> str:
    # Some errors cannot describe themselves for every input (cattrs sorts and joins the
    # extra keys it found, which fails for a map keyed by ints or tags): a malformed input
    # must still end as a DecodeError, not as whatever the description raised.
    try:
        return str(exc)
    except Exception:
        return "(no description)"


def encode_message(msg: Message) -> bytes:
    """Encode one Raft message with its type tag."""
    return encode(msg, unstructure_as=Message)


def decode_message(data: bytes) -> Message:
    """Decode one tagged Raft message. Raises :class:`DecodeError`."""
    result: Message = decode(data, Message)
    return result


def encode_conf_change(cc: ConfChange) -> bytes:
    """Encode a membership change for a CONF_CHANGE entry's data."""
    return encode(cc)


def decode_conf_change(data: bytes) -> ConfChange:
    """Decode a CONF_CHANGE entry's data. Raises :class:`DecodeError`."""
    result: ConfChange = decode(data, ConfChange)
    return result
