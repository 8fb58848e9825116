"""Strict JSON in, canonical JSON out: the two helpers every format shares.

Parsing caps the size before reading a byte, accepts only UTF-8, and refuses
duplicate object keys, ``NaN``/``Infinity`` and floats (so every number has
one spelling). Writing sorts keys and uses compact separators, so the same
object always gives the same bytes.

Example:
    >>> canonical_json({"b": 1, "a": [True, None, "é"]})
    b'{"a":[true,null,"\\xc3\\xa9"],"b":1}'
    >>> parse_json(b'{"a": 1}', max_size=100, what="example")
    {'a': 1}
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

from vault.errors import FormatError

__all__ = ["MAX_DEPTH", "canonical_json", "check_fields", "check_json_value", "check_text", "parse_json", "quote"]

MAX_DEPTH = 64
"""Deepest nesting of arrays and objects any vault document may use."""


class _DuplicateKeyError(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKeyError(key)
        result[key] = value
    return result


def _refuse_float(text: str) -> NoReturn:
    raise ValueError(f"number {text[:20]} is not an integer")


def _refuse_constant(text: str) -> NoReturn:
    raise ValueError(f"{text} is not valid JSON")


def parse_json(data: bytes, *, max_size: int, what: str) -> Any:
    """Parse ``data`` as one strict JSON value, refusing anything ambiguous.

    Args:
        data: the raw bytes; their length is checked before anything else.
        max_size: the largest input accepted, in bytes.
        what: names the document in error messages ("envelope").

    Raises:
        FormatError: too large, not UTF-8, not JSON, a duplicate key, a float
            or non-finite number, or nested deeper than :data:`MAX_DEPTH`.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise FormatError(f"{what}: expected bytes, got {type(data).__name__}")
    if len(data) > max_size:
        raise FormatError(f"{what}: {len(data)} bytes is more than the {max_size}-byte limit")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"{what}: not UTF-8 (byte {e.start})") from e
    try:
        value = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_float=_refuse_float,
            parse_constant=_refuse_constant,
        )
    except _DuplicateKeyError as e:
        raise FormatError(f"{what}: duplicate JSON key {quote(e.key)}") from e
    except json.JSONDecodeError as e:
        raise FormatError(f"{what}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from e
    except ValueError as e:
        raise FormatError(f"{what}: not valid JSON ({e})") from e
    except RecursionError as e:
        raise FormatError(f"{what}: JSON nested too deeply") from e
    check_json_value(value, what=what)
    return value


def check_json_value(value: Any, *, what: str, depth: int = 0) -> None:
    """Check that ``value`` holds only what canonical JSON can spell one way.

    Allowed: objects with string keys, arrays, strings (valid Unicode),
    integers, booleans and null, nested at most :data:`MAX_DEPTH` deep.

    Raises:
        FormatError: anything else.
    """
    if depth > MAX_DEPTH:
        raise FormatError(f"{what}: JSON nested more than {MAX_DEPTH} levels deep")
    if value is None or isinstance(value, bool | int):
        return
    if isinstance(value, str):
        check_text(value, what=what)
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise FormatError(f"{what}: object key {key!r} is not a string")
            check_text(key, what=what)
            check_json_value(item, what=what, depth=depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            check_json_value(item, what=what, depth=depth + 1)
    elif isinstance(value, float):
        raise FormatError(f"{what}: number {value!r} is not an integer")
    else:
        raise FormatError(f"{what}: a {type(value).__name__} cannot be written as JSON")


def check_text(value: str, *, what: str) -> None:
    """Refuse a string that is not valid Unicode (a lone surrogate)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise FormatError(f"{what}: string holds an unpaired surrogate") from e


def canonical_json(value: Any) -> bytes:
    """``value`` as UTF-8 JSON with sorted keys and no spaces."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def check_fields(value: Any, allowed: frozenset[str], *, what: str) -> dict[str, Any]:
    """``value`` if it is a JSON object with exactly the fields ``allowed``.

    Raises:
        FormatError: not an object, or a field is unknown or missing.
    """
    if not isinstance(value, dict):
        raise FormatError(f"{what}: expected a JSON object")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise FormatError(f"{what}: unknown field {quote(unknown[0])}")
    missing = sorted(allowed - set(value))
    if missing:
        raise FormatError(f"{what}: missing field {quote(missing[0])}")
    return value


def quote(text: str, limit: int = 40) -> str:
    """``text`` as a short, printable, quoted string for a one-line message."""
    shown = text if len(text) <= limit else text[:limit] + "…"
    return repr(shown)
