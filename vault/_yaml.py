"""Strict YAML for documents people write and review: ceremony scripts, release descriptions, trust policies.

PyYAML parses; this module only walks the nodes it composes, against a small declarative schema, so every
problem can name the field and the line it is on. It refuses, with one line of the form
``{source}:{line}: {field.path}: {what is wrong}``:

- an unknown field (suggesting the closest known one), a missing required field, a wrong type, a value out
  of range, a duplicate key (PyYAML itself would silently keep the last one);
- a second document or anything else after the first ("trailing garbage"), an empty document;
- anchors, aliases and explicit tags (no billion laughs, no ``!!python/object``), nesting deeper than
  :data:`MAX_DEPTH`;
- input larger than a cap (checked before parsing), input that is not UTF-8, and YAML syntax errors.

Scalars are read by the schema, not by YAML 1.1's implicit typing: under :class:`Str`, ``version: 1.10`` is
``'1.10'`` and ``country: NO`` is ``'NO'``; an :class:`Int` must be written as a plain decimal number and a
:class:`Bool` as ``true`` or ``false``. A plain ``null``, ``~`` or empty value is never accepted: leave an
optional field out instead.

Example:
    >>> from dataclasses import dataclass
    >>> schema = Record({
    ...     "name": Field(Str(pattern=r"[a-z][a-z0-9-]*")),
    ...     "threshold": Field(Int(min=1)),
    ...     "officers": Field(List(Str(), min_len=1)),
    ...     "rehearsal": Field(Bool(), required=False, default=False),
    ... })
    >>> load_yaml("name: root\\nthreshold: 2\\nofficers: [ana, bo, cy]\\n", schema, source="root.yaml")
    {'name': 'root', 'threshold': 2, 'officers': ['ana', 'bo', 'cy'], 'rehearsal': False}
    >>> load_yaml("name: root\\nthresold: 2\\n", schema, source="root.yaml")
    Traceback (most recent call last):
    ...
    vault.errors.ScriptError: root.yaml:2: unknown field 'thresold' (did you mean 'threshold'?)

    A :class:`Record` can build a (frozen) dataclass instead of a dict; a ``-`` in a field name becomes
    ``_`` in the attribute name:

    >>> @dataclass(frozen=True)
    ... class Window:
    ...     not_before: datetime.date
    ...     days: int
    >>> window = Record({"not-before": Field(Date()), "days": Field(Int(min=1, max=365))}, cls=Window)
    >>> load_yaml("not-before: 2025-01-31\\ndays: 30\\n", window, source="w.yaml")
    Window(not_before=datetime.date(2025, 1, 31), days=30)
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import difflib
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import yaml  # type: ignore[import-untyped]

from vault.errors import ScriptError

__all__ = [
    "MAX_BYTES",
    "MAX_DEPTH",
    "Bool",
    "Checked",
    "Date",
    "DateTime",
    "Enum",
    "Field",
    "Free",
    "Hex",
    "Int",
    "Invalid",
    "Kind",
    "List",
    "Located",
    "Map",
    "Record",
    "Str",
    "Tagged",
    "load_yaml",
]

MAX_BYTES = 1024 * 1024
"""Default cap on the size of a document, checked before it is decoded or parsed."""

MAX_DEPTH = 64
"""Deepest nesting of lists and mappings accepted (keeps the parser's recursion bounded)."""

_NULL_TAG = "tag:yaml.org,2002:null"


class _Problem(Exception):
    """What is wrong, where; :func:`load_yaml` turns it into a :class:`ScriptError` naming the source."""

    def __init__(self, line: int | None, path: str, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.path = path
        self.message = message

    def describe(self, source: str) -> str:
        where = source if self.line is None else f"{source}:{self.line}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


# --- helpers on nodes -------------------------------------------------------


def _line(node: Any) -> int:
    return int(node.start_mark.line) + 1


def _join(path: str, key: str) -> str:
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", key):
        return f"{path}.{key}" if path else key
    return f"{path}[{key!r}]"


def _is_null(node: Any) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.style is None and node.tag == _NULL_TAG


def _describe(node: Any) -> str:
    """How a node reads in an error: ``'two'``, ``a mapping``, ``an empty value``."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    value: str = node.value
    if _is_null(node):
        return "an empty value" if value == "" else "null"
    shown = repr(value if len(value) <= 40 else value[:37] + "...")
    return shown if node.style is None else f"the quoted string {shown}"


def _scalar_text(node: Any, path: str, expected: str) -> str:
    """The text of a scalar node, refusing collections and plain nulls."""
    if not isinstance(node, yaml.ScalarNode) or _is_null(node):
        raise _Problem(_line(node), path, f"expected {expected}, got {_describe(node)}")
    text: str = node.value
    return text


def _plain_text(node: Any, path: str, expected: str) -> str:
    """Like :func:`_scalar_text`, but refuses quoted and block scalars too (numbers and booleans)."""
    if not isinstance(node, yaml.ScalarNode) or node.style is not None or _is_null(node):
        raise _Problem(_line(node), path, f"expected {expected}, got {_describe(node)}")
    text: str = node.value
    return text


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _entries(node: Any, path: str) -> Iterator[tuple[str, Any, Any]]:
    """Key text, key node and value node of each entry of a mapping node; refuses odd and repeated keys."""
    first_seen: dict[str, int] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or _is_null(key_node):
            raise _Problem(_line(key_node), path, f"keys must be plain text, got {_describe(key_node)}")
        key: str = key_node.value
        if key in first_seen:
            raise _Problem(_line(key_node), path, f"duplicate key {key!r} (first at line {first_seen[key]})")
        first_seen[key] = _line(key_node)
        yield key, key_node, value_node


# --- the schema -------------------------------------------------------------


class Kind(ABC):
    """What one value must be; each kind turns a composed PyYAML node into plain Python or refuses it."""

    @abstractmethod
    def load(self, node: Any, path: str) -> Any:
        """Return the value of ``node`` (at the dotted ``path``), or raise the problem with it."""


@dataclasses.dataclass(frozen=True)
class Str(Kind):
    """Text. Empty text is refused unless ``min_len=0``; ``pattern`` must match the whole of it."""

    pattern: str | None = None
    min_len: int = 1
    max_len: int = 4096

    def load(self, node: Any, path: str) -> str:
        text = _scalar_text(node, path, "a string")
        if len(text) < self.min_len:
            what = "must not be empty" if self.min_len == 1 else f"must be at least {self.min_len} characters"
            raise _Problem(_line(node), path, what)
        if len(text) > self.max_len:
            raise _Problem(_line(node), path, f"is {len(text)} characters long, at most {self.max_len} allowed")
        if self.pattern is not None and not re.fullmatch(self.pattern, text):
            raise _Problem(_line(node), path, f"{text!r} does not match the pattern {self.pattern!r}")
        return text


@dataclasses.dataclass(frozen=True)
class Int(Kind):
    """An integer written as a plain decimal number (no quotes, no leading zeros, no ``0x``)."""

    min: int | None = None
    max: int | None = None

    def load(self, node: Any, path: str) -> int:
        text = _plain_text(node, path, "an integer")
        if not re.fullmatch(r"[-+]?(0|[1-9][0-9]{0,99})", text):
            raise _Problem(_line(node), path, f"expected an integer, got {_describe(node)}")
        number = int(text)
        if self.min is not None and number < self.min:
            raise _Problem(_line(node), path, f"must be at least {self.min}, got {number}")
        if self.max is not None and number > self.max:
            raise _Problem(_line(node), path, f"must be at most {self.max}, got {number}")
        return number


@dataclasses.dataclass(frozen=True)
class Bool(Kind):
    """``true`` or ``false``, unquoted (``yes``, ``on`` and the like are refused)."""

    def load(self, node: Any, path: str) -> bool:
        text = _plain_text(node, path, "true or false")
        if text not in ("true", "false"):
            raise _Problem(_line(node), path, f"expected true or false, got {_describe(node)}")
        return text == "true"


@dataclasses.dataclass(frozen=True, init=False)
class Enum(Kind):
    """One of a fixed set of strings."""

    values: tuple[str, ...]

    def __init__(self, values: Iterable[str]) -> None:
        object.__setattr__(self, "values", tuple(values))

    def load(self, node: Any, path: str) -> str:
        choices = ", ".join(repr(v) for v in self.values)
        text = _scalar_text(node, path, f"one of {choices}")
        if text not in self.values:
            raise _Problem(_line(node), path, f"expected one of {choices}, got {text!r}{_suggest(text, self.values)}")
        return text


@dataclasses.dataclass(frozen=True)
class Hex(Kind):
    """Hexadecimal text of ``length`` digits (any length with an even count if ``None``); returned in lowercase."""

    length: int | None = None

    def load(self, node: Any, path: str) -> str:
        what = "hex digits" if self.length is None else f"{self.length} hex digits"
        text = _scalar_text(node, path, what)
        if not re.fullmatch(r"[0-9a-fA-F]+", text):
            raise _Problem(_line(node), path, f"expected {what}, got {_describe(node)}")
        if self.length is not None and len(text) != self.length:
            raise _Problem(_line(node), path, f"expected {what}, got {len(text)}")
        if self.length is None and len(text) % 2:
            raise _Problem(_line(node), path, f"expected an even number of hex digits, got {len(text)}")
        return text.lower()


@dataclasses.dataclass(frozen=True)
class Date(Kind):
    """A calendar date, ``YYYY-MM-DD``, as a :class:`datetime.date`."""

    def load(self, node: Any, path: str) -> datetime.date:
        text = _scalar_text(node, path, "a date (YYYY-MM-DD)")
        if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text):
            raise _Problem(_line(node), path, f"expected a date (YYYY-MM-DD), got {_describe(node)}")
        try:
            return datetime.date.fromisoformat(text)
        except ValueError as e:
            raise _Problem(_line(node), path, f"{text!r} is not a valid date ({e})") from e


@dataclasses.dataclass(frozen=True)
class DateTime(Kind):
    """An ISO 8601 date and time with a timezone (``Z`` or an offset), as an aware :class:`datetime.datetime`.

    A time without a timezone is refused, unless ``assume_utc`` says that such times are in UTC.
    """

    assume_utc: bool = False

    def load(self, node: Any, path: str) -> datetime.datetime:
        expected = "a date and time (YYYY-MM-DDTHH:MM:SSZ)"
        text = _scalar_text(node, path, expected)
        if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}\S*( ?\S+)?", text):
            raise _Problem(_line(node), path, f"expected {expected}, got {_describe(node)}")
        try:
            moment = datetime.datetime.fromisoformat(text)
        except ValueError as e:
            raise _Problem(_line(node), path, f"{text!r} is not a valid date and time ({e})") from e
        if moment.tzinfo is None:
            if not self.assume_utc:
                raise _Problem(_line(node), path, f"{text!r} has no timezone (add 'Z' or an offset such as '+00:00')")
            moment = moment.replace(tzinfo=datetime.UTC)
        return moment


def _check_count(node: Any, path: str, noun: str, min_len: int, max_len: int | None) -> None:
    count = len(node.value)
    if count < min_len:
        raise _Problem(_line(node), path, f"has {count} {noun}, at least {min_len} needed")
    if max_len is not None and count > max_len:
        raise _Problem(_line(node), path, f"has {count} {noun}, at most {max_len} allowed")


@dataclasses.dataclass(frozen=True)
class List(Kind):
    """A list whose items are all of one kind."""

    item: Kind
    min_len: int = 0
    max_len: int | None = None

    def load(self, node: Any, path: str) -> list[Any]:
        if not isinstance(node, yaml.SequenceNode):
            raise _Problem(_line(node), path, f"expected a list, got {_describe(node)}")
        _check_count(node, path, "items", self.min_len, self.max_len)
        return [self.item.load(child, f"{path}[{i}]") for i, child in enumerate(node.value)]


@dataclasses.dataclass(frozen=True)
class Map(Kind):
    """A mapping with free-form keys (of kind ``key``, text by default) and values all of one kind."""

    value: Kind
    key: Kind = Str()
    min_len: int = 0
    max_len: int | None = None

    def load(self, node: Any, path: str) -> dict[Any, Any]:
        if not isinstance(node, yaml.MappingNode):
            raise _Problem(_line(node), path, f"expected a mapping, got {_describe(node)}")
        _check_count(node, path, "entries", self.min_len, self.max_len)
        result: dict[Any, Any] = {}
        for text, key_node, value_node in _entries(node, path):
            key = self.key.load(key_node, _join(path, text))
            if key in result:
                raise _Problem(_line(key_node), path, f"duplicate key {text!r} (the same as another key)")
            result[key] = self.value.load(value_node, _join(path, text))
        return result


class Located(dict[str, Any]):
    """A free-form mapping as written, with ``lines``: the line of each value by its path inside it."""

    lines: dict[str, int]


@dataclasses.dataclass(frozen=True)
class Free(Kind):
    """A free-form mapping for a plug-in to check itself (a device adapter's options), as a :class:`Located`.

    Values are text, plain integers and decimal numbers, ``true``/``false``, lists and mappings;
    the plug-in names a bad value by its path (``steps.program.run[2]``) and ``lines`` gives its line.
    """

    max_entries: int = 1024

    def load(self, node: Any, path: str) -> Located:
        if not isinstance(node, yaml.MappingNode):
            raise _Problem(_line(node), path, f"expected a mapping, got {_describe(node)}")
        lines: dict[str, int] = {}

        def value(item: Any, inner: str, line: int | None = None) -> Any:
            if len(lines) >= self.max_entries:
                raise _Problem(_line(item), path, f"more than {self.max_entries} values")
            lines[inner] = line or _line(item)  # a mapping's entry is where its key is
            shown = f"{path}.{inner}" if path and inner else path or inner
            if isinstance(item, yaml.MappingNode):
                return {key: value(child, _join(inner, key), _line(k)) for key, k, child in _entries(item, shown)}
            if isinstance(item, yaml.SequenceNode):
                return [value(child, f"{inner}[{i}]") for i, child in enumerate(item.value)]
            text = _scalar_text(item, shown, "a value")
            if item.style is None and text in ("true", "false"):
                return text == "true"
            if item.style is None and re.fullmatch(r"[-+]?(0|[1-9][0-9]{0,17})", text):
                return int(text)
            if item.style is None and re.fullmatch(r"[-+]?(0|[1-9][0-9]{0,17})\.[0-9]{1,9}", text):
                return float(text)
            return text

        result = Located(value(node, ""))
        result.lines = lines
        return result
class Invalid(Exception):
    """Raised by a :class:`Checked` kind's check: what is wrong, and where inside the value (``efuses.DIS_X``)."""

    def __init__(self, message: str, at: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.at = at


def _node_at(node: Any, at: str) -> Any:
    """The node at the relative path ``at`` (``keys[0].block``), or the deepest one found on the way."""
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", at):
        if isinstance(node, yaml.SequenceNode) and part.startswith("["):
            index = int(part[1:-1])
            if index >= len(node.value):
                break
            node = node.value[index]
        elif isinstance(node, yaml.MappingNode):
            found = [(k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == part]
            if not found:
                break
            key, value = found[0]
            node = value if isinstance(value, yaml.MappingNode | yaml.SequenceNode) else key
        else:
            break
    return node


@dataclasses.dataclass(frozen=True)
class Checked(Kind):
    """``inner``, then ``check`` on its value, for rules the schema cannot say (a name a plug-in must know).

    ``check`` raises :class:`Invalid` naming the place inside the value; the error names its line.
    """

    inner: Kind
    check: Callable[[Any], None]

    def load(self, node: Any, path: str) -> Any:
        value = self.inner.load(node, path)
        try:
            self.check(value)
        except Invalid as e:
            where = f"{path}.{e.at}" if path and e.at and not e.at.startswith("[") else f"{path}{e.at}"
            raise _Problem(_line(_node_at(node, e.at)), where, e.message) from e
        return value


@dataclasses.dataclass(frozen=True)
class Field:
    """One field of a :class:`Record`: its kind, and whether it may be left out (and then its default)."""

    kind: Kind
    required: bool = True
    default: Any = None

    def __post_init__(self) -> None:
        if self.required and self.default is not None:
            raise TypeError("a required field cannot have a default; pass required=False")


@dataclasses.dataclass(frozen=True)
class Record(Kind):
    """A mapping with a fixed set of fields; a dict, or an instance of ``cls`` (a dataclass) if given.

    With ``cls``, the fields map to ``cls``'s init parameters with ``-`` replaced by ``_``.
    """

    fields: Mapping[str, Field]
    cls: type | None = None

    def __post_init__(self) -> None:
        if self.cls is not None:
            wanted = {name.replace("-", "_") for name in self.fields}
            have = {f.name for f in dataclasses.fields(self.cls) if f.init}
            if wanted != have:
                raise TypeError(f"fields {sorted(wanted)} do not match {self.cls.__name__}'s {sorted(have)}")

    def load(self, node: Any, path: str) -> Any:
        if not isinstance(node, yaml.MappingNode):
            raise _Problem(_line(node), path, f"expected a mapping, got {_describe(node)}")
        found: dict[str, Any] = {}
        for key, key_node, value_node in _entries(node, path):
            field = self.fields.get(key)
            if field is None:
                raise _Problem(_line(key_node), path, f"unknown field {key!r}{_suggest(key, self.fields)}")
            found[key] = field.kind.load(value_node, _join(path, key))
        missing = [name for name, field in self.fields.items() if field.required and name not in found]
        if missing:
            names = ", ".join(repr(name) for name in missing)
            plural = "s" if len(missing) > 1 else ""
            raise _Problem(_line(node), path, f"missing required field{plural} {names}")
        values = {
            name: found[name] if name in found else copy.deepcopy(field.default) for name, field in self.fields.items()
        }
        if self.cls is None:
            return values
        return self.cls(**{name.replace("-", "_"): value for name, value in values.items()})


@dataclasses.dataclass(frozen=True)
class Tagged(Kind):
    """A mapping whose ``tag`` field chooses its :class:`Record`, e.g. ``ceremony: root``.

    Each record must itself declare the ``tag`` field (usually as an :class:`Enum` of one value).
    """

    tag: str
    choices: Mapping[str, Record]

    def load(self, node: Any, path: str) -> Any:
        if not isinstance(node, yaml.MappingNode):
            raise _Problem(_line(node), path, f"expected a mapping, got {_describe(node)}")
        for key, _, value_node in _entries(node, path):
            if key != self.tag:
                continue
            value = _scalar_text(value_node, _join(path, key), "a name")
            record = self.choices.get(value)
            if record is None:
                known = ", ".join(sorted(self.choices))
                raise _Problem(
                    _line(value_node),
                    _join(path, key),
                    f"unknown value {value!r}{_suggest(value, self.choices)} (one of: {known})",
                )
            return record.load(node, path)
        raise _Problem(_line(node), path, f"missing required field {self.tag!r}")


# --- parsing ----------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):  # type: ignore[misc]
    """PyYAML's safe composer, refusing anchors, aliases, explicit tags and deep nesting as it goes."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        line = int(event.start_mark.line) + 1
        if isinstance(event, yaml.AliasEvent):
            raise _Problem(line, "", f"aliases are not allowed ('*{event.anchor}')")
        if event.anchor is not None:
            raise _Problem(line, "", f"anchors are not allowed ('&{event.anchor}')")
        if event.tag is not None:
            raise _Problem(line, "", f"explicit tags are not allowed ({event.tag!r})")
        if self._depth >= MAX_DEPTH:
            raise _Problem(line, "", f"nested more than {MAX_DEPTH} levels deep")
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _decode(text: str | bytes, max_bytes: int) -> str:
    if isinstance(text, str):
        if len(text) > max_bytes:  # every character is at least one byte
            raise _Problem(None, "", f"larger than the limit of {max_bytes} bytes")
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise _Problem(text.count("\n", 0, e.start) + 1, "", "not valid Unicode text") from e
    else:
        data = text
    if len(data) > max_bytes:
        raise _Problem(None, "", f"{len(data)} bytes, larger than the limit of {max_bytes} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise _Problem(line, "", f"not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})") from e


def _compose(text: str) -> Any:
    """The single document's root node."""
    try:
        loader = _StrictLoader(text)
        try:
            loader.get_event()  # the stream start
            if loader.check_event(yaml.StreamEndEvent):
                raise _Problem(None, "", "empty document")
            root = loader.compose_document()
            try:
                after = None if loader.check_event(yaml.StreamEndEvent) else loader.peek_event().start_mark
            except yaml.MarkedYAMLError as e:  # not even the start of another document
                after = e.problem_mark
            if after is not None:
                raise _Problem(
                    int(after.line) + 1, "", "trailing content after the document (only one document is allowed)"
                )
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        what = f"{e.problem} ({e.context})" if e.context else str(e.problem)
        raise _Problem(None if mark is None else int(mark.line) + 1, "", f"invalid YAML: {what}") from e
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, e.position) + 1
        raise _Problem(line, "", f"invalid YAML: character {e.character:#06x} is not allowed") from e
    if isinstance(root, yaml.ScalarNode) and root.style is None and root.value == "":
        raise _Problem(None, "", "empty document")
    return root


def load_yaml(text: str | bytes, schema: Kind, *, source: str, max_bytes: int = MAX_BYTES) -> Any:
    """Parse one YAML document and check it against ``schema``.

    Args:
        text: The document, as text or as UTF-8 bytes.
        schema: What the document must be, usually a :class:`Record`.
        source: Where the document came from (a path), for error messages.
        max_bytes: Refuse larger documents before parsing them.

    Returns:
        Plain Python values (dicts, lists, str, int, bool, dates) or the dataclasses the schema names.

    Raises:
        ScriptError: The document is too large, not UTF-8, not valid YAML, uses anchors, aliases or tags, or
            does not match the schema. The message is one line naming the source, line and field.
    """
    try:
        return schema.load(_compose(_decode(text, max_bytes)), "")
    except _Problem as e:
        raise ScriptError(e.describe(source)) from e
