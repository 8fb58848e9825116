"""Per-device secrets: what a release declares, how a station seals each one, how the device maker opens it.

A release may declare secrets every unit gets (a pre-shared key for the
backend, a data-at-rest key, a key-encryption key). The station draws each
from its token's random generator, seals it at once with HPKE (RFC 9180,
:mod:`vault.hpke`) to the device maker's *secrets recipient* (a key enrolled
in the trust policy), hands the plaintext to the device adapter to install
and keeps only the sealed blob. Only the recipient's token opens it; see
``docs/adr/0012-device-secrets.md``.

The release statement's optional ``secrets`` field::

    {"recipient": "<key id of the policy's secrets recipient>",
     "items": [{"name": "backend-psk", "kind": "psk-256", "target": "nvs:psk"}]}

A manifest's optional ``secrets`` field (one entry per declared secret)::

    [{"name": "backend-psk", "kind": "psk-256", "sealed_sha256": "<hex>",
      "recipient": "<key id>", "installed": true}]

``installed`` is false when the unit stopped before the secret reached the
device (the sealed secret exists, but no device holds it). The sealed blobs
travel beside the manifests in the evidence export, in a record per manifest::

    {"type": "secrets", "sequence": 41, "sealed": {"backend-psk": "<base64 enc || ciphertext>"}}

Sealing binds the secret to its unit: the HPKE ``info`` is
:func:`binding` of the release's bundle id, the station, the device's
hardware id and serial, and the secret's name and kind, so a sealed blob
moved to another device, secret or release does not open.

Example:
    >>> from cryptography.hazmat.primitives.asymmetric import ec
    >>> from vault.hpke import SoftwareDecapsulator
    >>> backend = SoftwareDecapsulator(ec.generate_private_key(ec.SECP256R1()))
    >>> spec = SecretSpec("backend-psk", "psk-256", "nvs:psk")
    >>> bound = binding("11" * 16, "station-1", "a1b2", "SN-1", spec)
    >>> blob = seal_secret(backend.public_key, b"k" * 32, bound)
    >>> open_secret(blob, backend, bound) == b"k" * 32
    True
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from vault import hpke
from vault.errors import FormatError
from vault.formats._json import canonical_json, check_fields, quote

__all__ = [
    "KINDS",
    "MAX_SECRETS",
    "NAME_PATTERN",
    "TARGET_PATTERN",
    "SealedRecord",
    "SecretSpec",
    "binding",
    "check_spec",
    "open_secret",
    "parse_release_secrets",
    "parse_sealed_records",
    "seal_secret",
]

KINDS: Mapping[str, int] = {"psk-256": 32, "aes-256": 32, "kek-aes-256": 32}
"""The secret kinds vault knows, with their length in bytes: a pre-shared key, a data-at-rest AES key, a KEK."""

MAX_SECRETS = 16
"""Secrets one release declares at most."""

NAME_PATTERN = r"[a-z0-9][a-z0-9_.-]{0,63}"
TARGET_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.:/@-]{0,127}"
_NAME = re.compile(NAME_PATTERN)
_TARGET = re.compile(TARGET_PATTERN)
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SPEC_FIELDS = frozenset({"name", "kind", "target"})
_RELEASE_FIELDS = frozenset({"recipient", "items"})
_RECORD_FIELDS = frozenset({"name", "kind", "sealed_sha256", "recipient", "installed"})
_INFO_LABEL = b"vault-device-secret-v1\x00"
_MAX_SEALED = 256  # bytes of one sealed secret: a 65-byte enc, the secret, a 16-byte tag


@dataclass(frozen=True)
class SecretSpec:
    """One secret a release declares: its name, kind (:data:`KINDS`) and where the adapter installs it."""

    name: str
    kind: str
    target: str

    @property
    def length(self) -> int:
        """Bytes of the secret."""
        return KINDS[self.kind]

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "kind": self.kind, "target": self.target}


@dataclass(frozen=True)
class SealedRecord:
    """What a manifest records of one secret: never the secret, only the sealed blob's digest."""

    name: str
    kind: str
    sealed_sha256: str
    recipient: str
    installed: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "sealed_sha256": self.sealed_sha256,
            "recipient": self.recipient,
            "installed": self.installed,
        }


def binding(bundle_id: str, station_id: str, hardware_id: str, serial: str, spec: SecretSpec) -> bytes:
    """The HPKE ``info`` a unit's secret is sealed under: it opens only for this release, device and secret."""
    return _INFO_LABEL + canonical_json(
        {
            "bundle_id": bundle_id,
            "station_id": station_id,
            "hardware_id": hardware_id,
            "serial": serial,
            "name": spec.name,
            "kind": spec.kind,
        }
    )


def seal_secret(recipient: ec.EllipticCurvePublicKey, secret: bytes, info: bytes) -> bytes:
    """``secret`` sealed to the secrets recipient under ``info`` (:func:`binding`): ``enc || ciphertext``."""
    return hpke.seal(recipient, secret, info=info).to_bytes()


def open_secret(sealed: bytes, recipient: hpke.Decapsulator, info: bytes) -> bytes:
    """Open a sealed secret with the recipient's key (in its token).

    Raises:
        DecryptionError: sealed to another key, for another unit or secret, or altered.
    """
    if len(sealed) > _MAX_SEALED:
        raise FormatError(f"a sealed secret of {len(sealed)} bytes is larger than any vault seals")
    return hpke.open_sealed(sealed, recipient, info=info)


def _name_and_kind(name: object, kind: object, what: str) -> tuple[str, str]:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise FormatError(f"{what}.name: a secret's name is lower-case letters, digits, '_', '.', '-' (at most 64)")
    if not isinstance(kind, str) or kind not in KINDS:
        shown = quote(kind) if isinstance(kind, str) else repr(kind)
        raise FormatError(f"{what}.kind: {shown} is not a secret kind vault knows ({', '.join(KINDS)})")
    return name, kind


def check_spec(name: object, kind: object, target: object, *, what: str) -> SecretSpec:
    """A secret declaration, checked: a known kind, a plain name and a target the adapter reads.

    Raises:
        FormatError: one line naming the field.
    """
    name, kind = _name_and_kind(name, kind, what)
    if not isinstance(target, str) or not _TARGET.fullmatch(target):
        raise FormatError(f"{what}.target: a target is text such as 'nvs:psk' (letters, digits, _.:/@-)")
    return SecretSpec(name, kind, target)


def parse_release_secrets(value: object) -> tuple[str, tuple[SecretSpec, ...]]:
    """The ``secrets`` field of a release statement: the recipient's key id and the declared secrets.

    Raises:
        FormatError: a field is missing, unknown or malformed, or a name repeats.
    """
    p = check_fields(value, _RELEASE_FIELDS, what="release secrets")
    recipient = p["recipient"]
    if not isinstance(recipient, str) or not _SHA256.fullmatch(recipient):
        raise FormatError("release secrets: recipient must be a key id (lower-case hex SHA-256)")
    items = p["items"]
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_SECRETS:
        raise FormatError(f"release secrets: items must be a list of 1 to {MAX_SECRETS}")
    specs = []
    for i, raw in enumerate(items):
        entry = check_fields(raw, _SPEC_FIELDS, what=f"release secrets.items[{i}]")
        specs.append(check_spec(entry["name"], entry["kind"], entry["target"], what=f"secrets[{i}]"))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise FormatError("release secrets: a secret's name appears twice")
    return recipient, tuple(specs)


def parse_sealed_records(value: object) -> tuple[SealedRecord, ...]:
    """A manifest's ``secrets`` field.

    Raises:
        FormatError: a field is missing, unknown or malformed.
    """
    if not isinstance(value, list) or len(value) > MAX_SECRETS:
        raise FormatError(f"manifest: secrets must be a list of at most {MAX_SECRETS}")
    records = []
    for i, raw in enumerate(value):
        entry = check_fields(raw, _RECORD_FIELDS, what=f"manifest secrets[{i}]")
        name, kind = _name_and_kind(entry["name"], entry["kind"], f"manifest secrets[{i}]")
        for field in ("sealed_sha256", "recipient"):
            if not isinstance(entry[field], str) or not _SHA256.fullmatch(entry[field]):
                raise FormatError(f"manifest: secrets[{i}].{field} must be a lower-case hex SHA-256")
        if not isinstance(entry["installed"], bool):
            raise FormatError(f"manifest: secrets[{i}].installed must be true or false")
        records.append(SealedRecord(name, kind, entry["sealed_sha256"], entry["recipient"], entry["installed"]))
    return tuple(records)
