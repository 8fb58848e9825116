"""Head records: the last value of a sequence that must never go back, kept in a token.

A head record is a private PKCS#11 data object (CKO_DATA, CKA_TOKEN and
CKA_PRIVATE true, CKA_APPLICATION ``vault-head``) whose CKA_LABEL names the
sequence (``station-log``, ``root-policy``, ``release-signer``) and whose
CKA_VALUE is canonical JSON::

    {"generation": 12, "name": "station-log", "value": {...}}

A record is never modified in place: writing creates the next generation as
a new object and then destroys the older ones. A module that writes an
object file and dies halfway leaves the older generation intact, and a
reader always takes the highest generation that parses. Two objects of one
name and one generation with different values cannot come from vault; they
are refused rather than chosen between.

A module that stores no token data objects (NSS softoken refuses them,
CKR_ATTRIBUTE_VALUE_INVALID) gets the same record in another private object
it does keep: a generic secret key (CKO_SECRET_KEY, CKK_GENERIC_SECRET,
sensitive, never used for anything) whose CKA_LABEL names the sequence and
whose CKA_ID is ``vault-head:`` followed by the record. Readers look at both
forms on every token.

Only a logged-in user can read or write a private object, so a head is as
safe as the token's PIN: an insider with the PIN and a raw PKCS#11 tool can
still destroy or rewrite it (see docs/adr/0005-token-heads.md).

Example::

    with open_token(uri, rw=True) as token:
        head = token.head("station-log")
        token.write_head("station-log", {"size": 3, "root": "..."}, after=head)
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

import pkcs11
import pkcs11.exceptions as p11e
from pkcs11 import Attribute, KeyType, ObjectClass

from vault.errors import MechanismNotSupportedError, StateError, TokenOperationError
from vault.token._ckr import ckr_name
from vault.token._quirks import profile_for
from vault.token._session import _text

APPLICATION = "vault-head"
KEY_CARRIER_PREFIX = b"vault-head:"
MAX_HEAD = 64 * 1024

__all__ = ["APPLICATION", "Head", "read_head", "write_head"]


@dataclass(frozen=True)
class Head:
    """One head record as the token holds it."""

    name: str
    generation: int
    value: dict[str, Any]


def _encode(head: Head) -> bytes:
    return json.dumps(
        {"generation": head.generation, "name": head.name, "value": head.value},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    ).encode()


def _decode(data: bytes, name: str) -> Head | None:
    if len(data) > MAX_HEAD:
        return None
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict) or set(doc) != {"generation", "name", "value"} or doc["name"] != name:
        return None
    generation, value = doc["generation"], doc["value"]
    if not isinstance(generation, int) or isinstance(generation, bool) or generation < 1 or not isinstance(value, dict):
        return None
    return Head(name, generation, value)


def _objects(session: pkcs11.Session, name: str) -> list[pkcs11.Object]:
    data = session.get_objects(
        {Attribute.CLASS: ObjectClass.DATA, Attribute.APPLICATION: APPLICATION, Attribute.LABEL: name}
    )
    carriers = session.get_objects(
        {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.GENERIC_SECRET, Attribute.LABEL: name}
    )
    return list(data) + [c for c in carriers if _carried(c) is not None]


def _carried(obj: pkcs11.Object) -> bytes | None:
    """The record a key carrier holds in its CKA_ID, or ``None`` if it is not one."""
    try:
        raw = bytes(obj[Attribute.ID])
    except (p11e.AttributeTypeInvalid, p11e.AttributeSensitive):
        return None
    return raw[len(KEY_CARRIER_PREFIX) :] if raw.startswith(KEY_CARRIER_PREFIX) else None


def _payload(obj: pkcs11.Object) -> bytes:
    if obj[Attribute.CLASS] == ObjectClass.DATA:
        return bytes(obj[Attribute.VALUE])
    return _carried(obj) or b""


def _create(session: pkcs11.Session, name: str, data: bytes) -> pkcs11.Object:
    """Store a record: a data object, or a key carrier on a module that keeps no data objects."""
    token = session.token
    if profile_for(_text(token.manufacturer_id), _text(token.model)).token_data_objects:
        return session.create_object(
            {
                Attribute.CLASS: ObjectClass.DATA,
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.MODIFIABLE: False,
                Attribute.APPLICATION: APPLICATION,
                Attribute.LABEL: name,
                Attribute.VALUE: data,
            }
        )
    no_use = (Attribute.SIGN, Attribute.VERIFY, Attribute.ENCRYPT, Attribute.DECRYPT, Attribute.WRAP, Attribute.UNWRAP)
    return session.create_object(
        {
            Attribute.CLASS: ObjectClass.SECRET_KEY,
            Attribute.KEY_TYPE: KeyType.GENERIC_SECRET,
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.MODIFIABLE: False,
            Attribute.DERIVE: False,
            **{a: False for a in no_use},
            Attribute.LABEL: name,
            Attribute.ID: KEY_CARRIER_PREFIX + data,
            Attribute.VALUE: bytes(32),
        }
    )


def _current(session: pkcs11.Session, name: str, token_label: str) -> tuple[Head | None, list[pkcs11.Object]]:
    found: list[tuple[Head, pkcs11.Object]] = []
    objects = _objects(session, name)
    for obj in objects:
        try:
            head = _decode(_payload(obj), name)
        except p11e.ObjectHandleInvalid:  # an older generation another writer just destroyed
            continue
        if head is not None:
            found.append((head, obj))
    if not found:
        return None, objects
    top = max(h.generation for h, _ in found)
    values = {json.dumps(h.value, sort_keys=True) for h, _ in found if h.generation == top}
    if len(values) > 1:
        raise StateError(
            f"token '{token_label}' holds two different '{name}' head records of generation {top}: "
            "they were not written by vault; the token's head cannot be trusted"
        )
    return next(h for h, _ in found if h.generation == top), objects


def read_head(session: pkcs11.Session, name: str, token_label: str) -> Head | None:
    """The highest generation of the head ``name`` on the token, or ``None`` if it has none."""
    try:
        head, _ = _current(session, name, token_label)
    except p11e.PKCS11Error as e:
        raise TokenOperationError(
            f"reading the '{name}' head record on token '{token_label}' failed: the token reported {ckr_name(e)}"
        ) from e
    return head


def _check_alone(session: pkcs11.Session, name: str, head: Head, mine: pkcs11.Object, token_label: str) -> None:
    """Read back: if another writer made the same generation meanwhile, withdraw ours and refuse.

    Reading and creating are two calls, so two writers that do not share a
    lock can both build on one generation. Each reads back after its create;
    whoever finds a second record of its generation withdraws its own. At
    least one of two racing writers sees the other (the later create is
    visible to the later read-back), so at most one goes on.
    """
    rivals = []
    for obj in _objects(session, name):
        try:
            other = _decode(_payload(obj), name)
        except p11e.ObjectHandleInvalid:  # destroyed meanwhile by the writer that went on
            continue
        if other is not None and other.generation == head.generation and other.value != head.value:
            rivals.append(other)
    if rivals:
        with contextlib.suppress(p11e.PKCS11Error):
            mine.destroy()
        raise StateError(
            f"another writer advanced the '{name}' head on token '{token_label}' to generation {head.generation} "
            "at the same moment (a second state folder or copy in use?); nothing of this write counts"
        )


def write_head(
    session: pkcs11.Session, name: str, value: dict[str, Any], token_label: str, *, after: Head | None
) -> Head:
    """Write the next generation of ``name`` and destroy the older ones.

    Args:
        after: the head the caller read and built ``value`` on; if the token
            holds another one now, nothing is written (someone else advanced it).

    Raises:
        StateError: the token's head is no longer ``after``.
        MechanismNotSupportedError: the module cannot store data objects.
        TokenOperationError: the token failed.
    """
    try:
        current, objects = _current(session, name, token_label)
        if current != after:
            have = "none" if current is None else f"generation {current.generation}"
            want = "none" if after is None else f"generation {after.generation}"
            raise StateError(
                f"the '{name}' head on token '{token_label}' changed meanwhile ({have}, expected {want}); try again"
            )
        head = Head(name, (current.generation if current else 0) + 1, value)
        data = _encode(head)
        if len(data) > MAX_HEAD:
            raise StateError(f"the '{name}' head record would be {len(data)} bytes, over the {MAX_HEAD}-byte limit")
        mine = _create(session, name, data)
        _check_alone(session, name, head, mine, token_label)
    except (p11e.AttributeTypeInvalid, p11e.AttributeValueInvalid, p11e.TemplateIncomplete,
            p11e.TemplateInconsistent, p11e.FunctionNotSupported) as e:  # fmt: skip
        raise MechanismNotSupportedError(
            f"token '{token_label}' cannot store vault's head records (PKCS#11 data objects: {ckr_name(e)}); "
            "vault refuses to keep this sequence's head in a file instead"
        ) from e
    except p11e.PKCS11Error as e:
        raise TokenOperationError(
            f"writing the '{name}' head record on token '{token_label}' failed: the token reported {ckr_name(e)}"
        ) from e
    for obj in objects:  # the new generation is stored; older ones (and unreadable ones) go
        with contextlib.suppress(p11e.PKCS11Error):
            obj.destroy()
    return head
