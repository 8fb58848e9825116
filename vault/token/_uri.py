"""RFC 7512 PKCS#11 URIs: parse, print, and nothing more.

The grammar is the RFC's: path attributes separated by ``;`` select the
library, slot, token and object; query attributes after ``?`` separated by
``&`` say how to reach them (module, PIN). Values are percent-decoded as the
RFC says; ``id`` is raw bytes, every other value is UTF-8 text.

vault refuses what it does not understand instead of ignoring it: an
unknown or repeated attribute, a bad percent-escape, a character the RFC does
not allow unescaped. Ignoring an attribute could make a URI match a key its
author did not mean.
"""

from __future__ import annotations

import dataclasses
import string
from dataclasses import dataclass

from vault.errors import UriError

MAX_URI_LENGTH = 4096

_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
_RES_AVAIL = frozenset(":[]@!$'()*+,=")
_PATH_CHARS = _UNRESERVED | _RES_AVAIL | {"&"}
_QUERY_CHARS = _UNRESERVED | _RES_AVAIL | {"/", "?", "|"}

# Attribute name in the URI -> field name on Pkcs11Uri.
_PATH_ATTRS = {
    "token": "token",
    "manufacturer": "manufacturer",
    "serial": "serial",
    "model": "model",
    "library-manufacturer": "library_manufacturer",
    "library-description": "library_description",
    "library-version": "library_version",
    "object": "object",
    "type": "type",
    "id": "id",
    "slot-description": "slot_description",
    "slot-manufacturer": "slot_manufacturer",
    "slot-id": "slot_id",
}
_QUERY_ATTRS = {
    "pin-source": "pin_source",
    "pin-value": "pin_value",
    "module-name": "module_name",
    "module-path": "module_path",
}
OBJECT_TYPES = ("public", "private", "cert", "secret-key", "data")


@dataclass(frozen=True)
class Pkcs11Uri:
    """A parsed PKCS#11 URI. Absent attributes are ``None``.

    ``str()`` prints the URI back in RFC 7512 form with any ``pin-value``
    replaced, so a URI can be shown or logged without showing a PIN.
    """

    token: str | None = None
    manufacturer: str | None = None
    serial: str | None = None
    model: str | None = None
    library_manufacturer: str | None = None
    library_description: str | None = None
    library_version: str | None = None
    object: str | None = None
    type: str | None = None
    id: bytes | None = None
    slot_description: str | None = None
    slot_manufacturer: str | None = None
    slot_id: int | None = None
    pin_source: str | None = None
    pin_value: str | None = dataclasses.field(default=None, repr=False)
    module_name: str | None = None
    module_path: str | None = None

    def with_object(self, label: str) -> Pkcs11Uri:
        """This URI naming object ``label`` (and no ``id``/``type``) instead."""
        return dataclasses.replace(self, object=label, id=None, type=None)

    def token_only(self) -> Pkcs11Uri:
        """This URI with the object selectors removed."""
        return dataclasses.replace(self, object=None, id=None, type=None)

    def __str__(self) -> str:
        return format_uri(self, redact_pin=True)


def parse_uri(text: str) -> Pkcs11Uri:
    """Parse an RFC 7512 PKCS#11 URI.

    Args:
        text: the URI, starting with ``pkcs11:``.

    Returns:
        The parsed URI.

    Raises:
        UriError: the URI is malformed, too long, or has an attribute that
            is unknown, repeated, or has an invalid value.

    Example:
        >>> uri = parse_uri("pkcs11:token=vault-root;object=root%20key")
        >>> uri.token, uri.object
        ('vault-root', 'root key')
    """
    if len(text) > MAX_URI_LENGTH:
        raise UriError(f"PKCS#11 URI is longer than {MAX_URI_LENGTH} characters")
    scheme, colon, rest = text.partition(":")
    if not colon or scheme.lower() != "pkcs11":
        raise UriError(f"not a PKCS#11 URI (must start with 'pkcs11:'): {_shorten(text)}")
    if "#" in rest:
        raise UriError("PKCS#11 URIs have no fragment: '#' must be written %23")
    path, _, query = rest.partition("?")
    values: dict[str, object] = {}
    _parse_part(path, ";", _PATH_ATTRS, _PATH_CHARS, "path", values)
    _parse_part(query, "&", _QUERY_ATTRS, _QUERY_CHARS, "query", values)
    if "pin_value" in values and "pin_source" in values:
        raise UriError("the URI gives both pin-source and pin-value; give one")
    return Pkcs11Uri(**values)  # type: ignore[arg-type]


def _parse_part(
    part: str,
    separator: str,
    known: dict[str, str],
    allowed: frozenset[str],
    where: str,
    values: dict[str, object],
) -> None:
    if part == "":
        return
    other = _QUERY_ATTRS if known is _PATH_ATTRS else _PATH_ATTRS
    for item in part.split(separator):
        name, eq, raw = item.partition("=")
        if not eq or not name:
            raise UriError(f"malformed {where} attribute {_shorten(item)!r}: expected name=value")
        if name not in known:
            if name in other:
                raise UriError(f"attribute '{_shorten(name)}' belongs in the URI's {_other(where)}, not its {where}")
            raise UriError(f"unknown PKCS#11 URI attribute '{_shorten(name)}'")
        field = known[name]
        if field in values:
            raise UriError(f"attribute '{_shorten(name)}' appears twice in the URI")
        raw_bytes = _percent_decode(raw, allowed, name)
        values[field] = _convert(name, raw_bytes)


def _other(where: str) -> str:
    return "query" if where == "path" else "path"


def _percent_decode(raw: str, allowed: frozenset[str], name: str) -> bytes:
    out = bytearray()
    i = 0
    while i < len(raw):
        ch = raw[i]
        if ch == "%":
            pair = raw[i + 1 : i + 3]
            if len(pair) != 2 or any(c not in string.hexdigits for c in pair):
                raise UriError(f"bad percent-escape '%{_shorten(pair)}' in attribute '{name}'")
            out.append(int(pair, 16))
            i += 3
            continue
        if ch not in allowed:
            raise UriError(f"character {ch!r} in attribute '{name}' must be percent-encoded")
        out += ch.encode("ascii")
        i += 1
    return bytes(out)


def _convert(name: str, raw: bytes) -> object:
    if name == "id":
        return raw
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UriError(f"attribute '{name}' is not valid UTF-8 after percent-decoding") from e
    if name == "type" and text not in OBJECT_TYPES:
        raise UriError(f"type={text!r} is not one of {', '.join(OBJECT_TYPES)}")
    if name == "slot-id":
        if not text.isdigit():
            raise UriError(f"slot-id={text!r} is not a decimal number")
        return int(text)
    if name == "library-version" and not _is_version(text):
        raise UriError(f"library-version={text!r} is not of the form M or M.N")
    return text


def _is_version(text: str) -> bool:
    major, dot, minor = text.partition(".")
    return major.isdigit() and (not dot or minor.isdigit())


def _percent_encode(value: bytes, allowed: frozenset[str], *, encode_all: bool = False) -> str:
    out = []
    for b in value:
        ch = chr(b)
        if not encode_all and b < 0x80 and ch in allowed:
            out.append(ch)
        else:
            out.append(f"%{b:02X}")
    return "".join(out)


def format_uri(uri: Pkcs11Uri, *, redact_pin: bool = True) -> str:
    """Print ``uri`` in RFC 7512 form; ``pin-value`` is redacted unless asked.

    Example:
        >>> format_uri(Pkcs11Uri(token="a b", id=b"\\x01", pin_value="1234"))
        'pkcs11:token=a%20b;id=%01?pin-value=REDACTED'
    """
    path = []
    for name, field in _PATH_ATTRS.items():
        value = getattr(uri, field)
        if value is None:
            continue
        if isinstance(value, bytes):
            path.append(f"{name}={_percent_encode(value, _PATH_CHARS, encode_all=True)}")
        else:
            path.append(f"{name}={_percent_encode(str(value).encode(), _PATH_CHARS)}")
    query = []
    for name, field in _QUERY_ATTRS.items():
        value = getattr(uri, field)
        if value is None:
            continue
        if field == "pin_value" and redact_pin:
            query.append(f"{name}=REDACTED")
        else:
            query.append(f"{name}={_percent_encode(value.encode(), _QUERY_CHARS)}")
    text = "pkcs11:" + ";".join(path)
    if query:
        text += "?" + "&".join(query)
    return text


def _shorten(text: str, limit: int = 60) -> str:
    """``text`` cut to ``limit`` and made one printable line (control characters as escapes)."""
    cut = text if len(text) <= limit else text[:limit] + "..."
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in cut)
