"""DSSE v1 envelopes: sign the PAE of a payload, verify an m-of-n threshold.

An envelope carries a payload, its type and any number of signatures. Each
signature is over the Pre-Authentication Encoding (PAE) of the type and the
payload bytes exactly as received, so nothing is parsed before it is verified.
A threshold counts *distinct trusted keys*: one key signing twice counts once,
a signature by a trusted key that does not verify is a forgery and raises, and
signatures by keys nobody trusts are reported but never counted.

Key ids are vault key ids (hex SHA-256 of the SubjectPublicKeyInfo DER, see
:func:`vault.crypto.key_id`); an envelope whose ``keyid`` is anything else is
refused as malformed. ``payload`` and ``sig`` are standard base64 with padding.

Example:
    >>> from cryptography.hazmat.primitives.asymmetric import ec
    >>> from vault.crypto import key_id
    >>> class SoftSigner:
    ...     def __init__(self):
    ...         self._key = ec.generate_private_key(ec.SECP256R1())
    ...         self.public_key = self._key.public_key()
    ...         self.key_id = key_id(self.public_key)
    ...     def sign(self, data):
    ...         from cryptography.hazmat.primitives import hashes
    ...         return self._key.sign(data, ec.ECDSA(hashes.SHA256()))
    >>> alice, bob = SoftSigner(), SoftSigner()
    >>> envelope = sign_envelope("text/plain", b"hello", [alice])
    >>> envelope = add_signature(Envelope.from_json(envelope.to_json()), bob)
    >>> trusted = {s.key_id: s.public_key for s in (alice, bob)}
    >>> verify_envelope(envelope, trusted, 2, what="greeting").met
    True
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from vault.crypto import Signer, curve_of, key_id, verify_signature
from vault.errors import FormatError, InputError, SignatureError, ThresholdError
from vault.formats._json import canonical_json, check_fields, parse_json, quote

__all__ = [
    "MAX_ENVELOPE_SIZE",
    "MAX_SIGNATURES",
    "MAX_SIGNATURE_SIZE",
    "Envelope",
    "Signature",
    "VerificationResult",
    "add_signature",
    "inspect_signatures",
    "pae",
    "sign_envelope",
    "verify_envelope",
]

MAX_ENVELOPE_SIZE = 16 * 1024 * 1024
"""Default cap on a serialized envelope, in bytes, checked before parsing."""

MAX_SIGNATURES = 64
"""Default cap on the number of signatures one envelope may carry."""

MAX_SIGNATURE_SIZE = 8192
"""Largest signature accepted, in bytes (room for post-quantum schemes)."""

_MAX_PAYLOAD_TYPE = 256
_KEYID = re.compile(r"[0-9a-f]{64}")
_PAYLOAD_TYPE = re.compile(r"[\x21-\x7e]+")
_ENVELOPE_FIELDS = frozenset({"payload", "payloadType", "signatures"})
_SIGNATURE_FIELDS = frozenset({"keyid", "sig"})


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 Pre-Authentication Encoding of ``payload_type`` and ``payload``.

    ``"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body``, where LEN is the
    ASCII decimal byte length and ``type`` is UTF-8.

    Example:
        >>> pae("t", b"ab")
        b'DSSEv1 1 t 2 ab'
    """
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def short_id(keyid: str) -> str:
    """The first 16 hex digits of a key id, as shown to people."""
    return keyid[:16]


@dataclass(frozen=True)
class Signature:
    """One DSSE signature: a vault key id and a DER ECDSA signature over the PAE."""

    keyid: str
    sig: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.keyid, str) or not _KEYID.fullmatch(self.keyid):
            shown = quote(self.keyid) if isinstance(self.keyid, str) else type(self.keyid).__name__
            raise FormatError(f"signature keyid {shown} is not a 64-digit lower-case hex key id")
        if not isinstance(self.sig, bytes):
            raise FormatError(f"signature by {short_id(self.keyid)}: sig must be bytes")
        if not 0 < len(self.sig) <= MAX_SIGNATURE_SIZE:
            raise FormatError(
                f"signature by {short_id(self.keyid)}: {len(self.sig)} bytes is outside 1..{MAX_SIGNATURE_SIZE}"
            )


@dataclass(frozen=True)
class Envelope:
    """A DSSE v1 envelope: a typed payload and the signatures over its PAE."""

    payload_type: str
    payload: bytes
    signatures: tuple[Signature, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.payload_type, str) or not _PAYLOAD_TYPE.fullmatch(self.payload_type):
            raise FormatError("envelope payloadType must be printable ASCII without spaces")
        if len(self.payload_type) > _MAX_PAYLOAD_TYPE:
            raise FormatError(f"envelope payloadType is longer than {_MAX_PAYLOAD_TYPE} characters")
        if not isinstance(self.payload, bytes):
            raise FormatError("envelope payload must be bytes")
        object.__setattr__(self, "signatures", tuple(self.signatures))
        for signature in self.signatures:
            if not isinstance(signature, Signature):
                raise FormatError(f"envelope signatures must be Signature objects, not {type(signature).__name__}")

    @property
    def pae(self) -> bytes:
        """The bytes every signature in this envelope signs."""
        return pae(self.payload_type, self.payload)

    @property
    def keyids(self) -> tuple[str, ...]:
        """The key id of every signature, in order, repeats included."""
        return tuple(s.keyid for s in self.signatures)

    def to_json(self) -> bytes:
        """The standard DSSE JSON, with sorted keys and no spaces."""
        return canonical_json(
            {
                "payload": _b64encode(self.payload),
                "payloadType": self.payload_type,
                "signatures": [{"keyid": s.keyid, "sig": _b64encode(s.sig)} for s in self.signatures],
            }
        )

    @classmethod
    def from_json(
        cls,
        data: bytes,
        *,
        max_size: int = MAX_ENVELOPE_SIZE,
        max_signatures: int = MAX_SIGNATURES,
        what: str = "envelope",
    ) -> Envelope:
        """Parse DSSE JSON strictly; nothing is verified here.

        Args:
            data: the serialized envelope.
            max_size: refuse input longer than this many bytes, before parsing.
            max_signatures: refuse an envelope with more signatures than this.
            what: names the document in error messages.

        Raises:
            FormatError: oversized, not JSON, duplicate or unknown or missing
                fields, wrong types, bad base64, bad key ids, or too many
                signatures.
        """
        document = parse_json(data, max_size=max_size, what=what)
        fields = check_fields(document, _ENVELOPE_FIELDS, what=what)
        payload_type = _string(fields["payloadType"], what=f"{what} payloadType")
        payload = _b64decode(fields["payload"], what=f"{what} payload")
        raw_signatures = fields["signatures"]
        if not isinstance(raw_signatures, list):
            raise FormatError(f"{what}: signatures must be a list")
        if len(raw_signatures) > max_signatures:
            raise FormatError(f"{what}: {len(raw_signatures)} signatures is more than the limit of {max_signatures}")
        signatures = []
        for index, item in enumerate(raw_signatures):
            where = f"{what} signature {index + 1}"
            entry = check_fields(item, _SIGNATURE_FIELDS, what=where)
            keyid = _string(entry["keyid"], what=f"{where} keyid")
            sig = _b64decode(entry["sig"], what=f"{where} sig")
            try:
                signatures.append(Signature(keyid, sig))
            except FormatError as e:
                raise FormatError(f"{what}: {e}") from e
        try:
            return cls(payload_type, payload, tuple(signatures))
        except FormatError as e:
            raise FormatError(f"{what}: {e}") from e


@dataclass(frozen=True)
class VerificationResult:
    """Which trusted keys signed an envelope, measured against a threshold.

    Attributes:
        threshold: how many distinct trusted keys must sign.
        valid: trusted key ids with a verifying signature, each once, in
            envelope order.
        unknown: key ids that signed but are not trusted (never counted).
        missing: trusted key ids that did not sign, sorted.
        invalid: trusted key ids whose signature does not verify; only
            :func:`inspect_signatures` can return any, since
            :func:`verify_envelope` raises instead.
    """

    threshold: int
    valid: tuple[str, ...]
    unknown: tuple[str, ...]
    missing: tuple[str, ...]
    invalid: tuple[str, ...] = ()

    @property
    def met(self) -> bool:
        """Whether enough distinct trusted keys signed and none was forged."""
        return len(self.valid) >= self.threshold and not self.invalid

    def summary(self) -> str:
        """One line for people: ``1 of 2 required signatures (missing 1; unsigned: ab12…)``."""
        count = f"{len(self.valid)} of {self.threshold} required signatures"
        notes = []
        if len(self.valid) < self.threshold:
            notes.append(f"missing {self.threshold - len(self.valid)}")
        if self.missing and len(self.valid) < self.threshold:
            notes.append("unsigned: " + ", ".join(short_id(k) for k in self.missing))
        if self.invalid:
            notes.append("invalid: " + ", ".join(short_id(k) for k in self.invalid))
        if self.unknown:
            notes.append("unknown: " + ", ".join(short_id(k) for k in self.unknown))
        return count + (f" ({'; '.join(notes)})" if notes else "")


def sign_envelope(payload_type: str, payload: bytes, signers: Iterable[Signer]) -> Envelope:
    """An envelope of ``payload`` signed by each of ``signers`` in turn.

    Raises:
        InputError: two signers share a key id, or a signer's signature does
            not verify under its own public key.
    """
    envelope = Envelope(payload_type, payload)
    for signer in signers:
        envelope = add_signature(envelope, signer)
    return envelope


def add_signature(envelope: Envelope, signer: Signer) -> Envelope:
    """``envelope`` with one more signature, by ``signer``, over its PAE.

    The new signature is checked against the signer's public key before it
    is added, so a faulty token or a signer whose key id lies is caught here.

    Raises:
        InputError: the signer's key already signed, its key id is not the id
            of its public key, or its signature does not verify.
    """
    keyid = signer.key_id
    if keyid != key_id(signer.public_key):
        raise InputError(f"signer claims key id {short_id(keyid)} but its public key has another id")
    if keyid in envelope.keyids:
        raise InputError(f"key {short_id(keyid)} has already signed this envelope")
    message = envelope.pae
    sig = signer.sign(message)
    try:
        verify_signature(signer.public_key, message, sig)
    except SignatureError as e:
        raise InputError(f"key {short_id(keyid)} made a signature that does not verify") from e
    return Envelope(envelope.payload_type, envelope.payload, (*envelope.signatures, Signature(keyid, sig)))


def verify_envelope(
    envelope: Envelope,
    trusted: Mapping[str, ec.EllipticCurvePublicKey],
    threshold: int,
    *,
    what: str,
) -> VerificationResult:
    """Check that at least ``threshold`` distinct trusted keys signed ``envelope``.

    Every signature by a trusted key must verify over the PAE of the payload
    bytes as received; each trusted key counts once however often it signed.

    Args:
        envelope: the envelope as parsed, not yet trusted.
        trusted: key id to public key; each id must be that key's vault id.
        threshold: distinct trusted keys needed, at least 1.
        what: names the document in error messages ("release statement").

    Returns:
        The result, with :attr:`VerificationResult.met` true.

    Raises:
        InputError: ``trusted`` or ``threshold`` is malformed.
        SignatureError: a signature under a trusted key id does not verify.
        ThresholdError: fewer than ``threshold`` distinct trusted keys signed.
    """
    result = _check(envelope, trusted, threshold, what=what)
    if result.invalid:
        raise SignatureError(
            f"{what}: signature by trusted key {short_id(result.invalid[0])} does not verify (forged or altered)"
        )
    if not result.met:
        raise ThresholdError(f"{what}: {result.summary()}")
    return result


def inspect_signatures(
    envelope: Envelope,
    trusted: Mapping[str, ec.EllipticCurvePublicKey],
    *,
    threshold: int = 1,
    what: str = "envelope",
) -> VerificationResult:
    """Which trusted keys have validly signed, for a display; never raises on bad signatures.

    A signature that does not verify is listed in ``invalid`` and never in
    ``valid``. Use :func:`verify_envelope` to decide anything.

    Raises:
        InputError: ``trusted`` or ``threshold`` is malformed.
    """
    return _check(envelope, trusted, threshold, what=what)


def _check(
    envelope: Envelope,
    trusted: Mapping[str, ec.EllipticCurvePublicKey],
    threshold: int,
    *,
    what: str,
) -> VerificationResult:
    if not isinstance(envelope, Envelope):
        raise InputError(f"{what}: expected an Envelope, got {type(envelope).__name__}")
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
        raise InputError(f"{what}: threshold must be a whole number of at least 1, not {threshold!r}")
    _check_trusted(trusted, what=what)
    message = envelope.pae
    valid: list[str] = []
    invalid: list[str] = []
    unknown: list[str] = []
    for signature in envelope.signatures:
        keyid = signature.keyid
        public_key = trusted.get(keyid)
        if public_key is None:
            if keyid not in unknown:
                unknown.append(keyid)
            continue
        try:
            verify_signature(public_key, message, signature.sig)
        except SignatureError:
            if keyid not in invalid:
                invalid.append(keyid)
            continue
        if keyid not in valid:
            valid.append(keyid)
    # A key with one good and one bad signature is still a key someone forged under.
    valid = [k for k in valid if k not in invalid]
    signed = set(valid) | set(invalid)
    missing = sorted(k for k in trusted if k not in signed)
    return VerificationResult(threshold, tuple(valid), tuple(unknown), tuple(missing), tuple(invalid))


def _check_trusted(trusted: Mapping[str, ec.EllipticCurvePublicKey], *, what: str) -> None:
    for keyid, public_key in trusted.items():
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise InputError(f"{what}: trusted key {quote(str(keyid))} is not an EC public key")
        curve_of(public_key)
        if keyid != key_id(public_key):
            raise InputError(f"{what}: trusted key id {quote(str(keyid))} is not the id of its public key")


def _string(value: Any, *, what: str) -> str:
    if not isinstance(value, str):
        raise FormatError(f"{what} must be a string")
    return value


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(value: Any, *, what: str) -> bytes:
    """Standard, padded, canonical base64 only: one spelling per byte string."""
    if not isinstance(value, str):
        raise FormatError(f"{what} must be a base64 string")
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise FormatError(f"{what} is not valid standard base64") from e
    if _b64encode(decoded) != value:
        raise FormatError(f"{what} is not canonical standard base64")
    return decoded
