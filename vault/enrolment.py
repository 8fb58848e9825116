"""Station enrolment requests: what a factory station hands the security officers.

A station's token holds three keys it made itself: the **signing** key
(per-serial manifests, log checkpoints), the **issuing CA** key (device
certificates) and the **decryption** key (ECDH only: it unwraps bundle data
keys and cannot sign anything). The request carries all three public keys to
the enrolment ceremony, with proof that the station holds each one:

- the signing and issuing CA keys each sign a PKCS#10 request for
  themselves (:func:`vault.pki.build_csr`);
- the decryption key cannot sign, so it is vouched for by the station signing
  key instead: the request is a DSSE envelope (payload type in-toto) signed by
  the signing key, whose signature covers the decryption key with everything
  else. One signature, by the key whose CSR is inside, is the whole request's
  proof of origin.

The envelope's in-toto Statement has predicate type :data:`PREDICATE_TYPE`,
one subject per key (``signing``, ``issuing-ca``, ``decryption``, each with
the SHA-256 of the key's SubjectPublicKeyInfo DER, which is its vault key id)
and the predicate::

    {"station_id": "line-3", "name": "Line 3" | null, "created": "2025-01-02T03:04:05Z",
     "signing_csr": base64 DER, "issuing_ca_csr": base64 DER, "decryption_key": base64 SPKI DER}

The request is self-certifying, like a CSR: the key that must have signed it
is inside it. :func:`open_enrolment_request` therefore reads the signing CSR
from the unverified payload first (strict, size-capped JSON, nothing else
read), checks the envelope signature under that CSR's key over the payload
bytes as received, and only then parses and checks the rest. A defect in the
payload that keeps the signing key from being read means the signature
cannot be checked, and is refused as a :class:`~vault.errors.SignatureError`
like any other alteration of the signed bytes.

A valid request proves possession of the keys, not who made it: the
officers compare :attr:`EnrolmentRequest.digest` (the SHA-256 of the request
file) with the one the station showed when it wrote the request.

This is a bottom-layer module: it needs only ``cryptography`` and vault's
crypto, pki, formats and errors modules, never the token layer or the CLI.

Example:
    >>> from datetime import UTC, datetime
    >>> from cryptography.hazmat.primitives.asymmetric import ec
    >>> from vault.crypto import CURVES, key_id
    >>> class SoftSigner:
    ...     def __init__(self) -> None:
    ...         self._key = ec.generate_private_key(ec.SECP256R1())
    ...         self.public_key = self._key.public_key()
    ...         self.key_id = key_id(self.public_key)
    ...     def sign(self, data: bytes) -> bytes:
    ...         return self._key.sign(data, ec.ECDSA(CURVES["P-256"].hash()))
    >>> signing, issuing_ca = SoftSigner(), SoftSigner()
    >>> decryption = ec.generate_private_key(ec.SECP256R1()).public_key()
    >>> data = build_enrolment_request(
    ...     "line-3", signing=signing, issuing_ca=issuing_ca, decryption_public_key=decryption,
    ...     name="Line 3", now=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
    ... )
    >>> request = open_enrolment_request(data)
    >>> request.station_id, request.created.isoformat()
    ('line-3', '2025-01-02T03:04:05+00:00')
    >>> request.signing_key_id == signing.key_id, request.decryption_key_id == key_id(decryption)
    (True, True)
    >>> request.signing_csr.subject.rfc4514_string()
    'CN=station line-3 signing'
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from vault.crypto import CURVES, Signer, curve_of, key_id, spki_der
from vault.errors import CertificateError, FormatError, InputError, SignatureError, ThresholdError
from vault.formats import Envelope, Statement, Subject, open_statement, parse_json, sign_statement
from vault.formats._json import check_fields, quote
from vault.pki import build_csr, check_csr

__all__ = [
    "MAX_REQUEST_SIZE",
    "PREDICATE_TYPE",
    "STATION_ID_PATTERN",
    "EnrolmentRequest",
    "build_enrolment_request",
    "check_station_id",
    "check_station_name",
    "open_enrolment_request",
]

PREDICATE_TYPE = "https://vault.dev/station-enrolment/v1"
"""The in-toto predicate type of a station enrolment request."""

MAX_REQUEST_SIZE = 64 * 1024
"""Default cap on a serialized request, in bytes, checked before parsing (a P-384 request is about 3 KB)."""

STATION_ID_PATTERN = r"[a-z][a-z0-9-]{0,31}"
"""A station id: a lower-case letter, then up to 31 lower-case letters, digits and hyphens."""

_STATION_ID = re.compile(STATION_ID_PATTERN)
_MAX_NAME = 128
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_WHAT = "station enrolment request"
_PREDICATE_FIELDS = frozenset({"station_id", "name", "created", "signing_csr", "issuing_ca_csr", "decryption_key"})
_ROLES = ("signing", "issuing-ca", "decryption")  # subject names, in the order they are written
_ROLE_WORDS = {"signing": "signing", "issuing-ca": "issuing CA", "decryption": "decryption"}


@dataclass(frozen=True)
class EnrolmentRequest:
    """An opened, fully checked station enrolment request.

    Attributes:
        station_id: the station's id (:data:`STATION_ID_PATTERN`).
        name: the station's name for people, if it gave one.
        created: when the station made the request (UTC, whole seconds).
        signing_csr: the signing key's self-signed PKCS#10 request.
        issuing_ca_csr: the issuing CA key's self-signed PKCS#10 request.
        signing_public_key: the key that signs the station's manifests (and signed this request).
        issuing_ca_public_key: the key that signs the station's device certificates.
        decryption_public_key: the ECDH key bundles are encrypted to.
        digest: hex SHA-256 of the request bytes, for the officers to compare
            with what the station showed.
    """

    station_id: str
    name: str | None
    created: datetime
    signing_csr: x509.CertificateSigningRequest
    issuing_ca_csr: x509.CertificateSigningRequest
    signing_public_key: ec.EllipticCurvePublicKey
    issuing_ca_public_key: ec.EllipticCurvePublicKey
    decryption_public_key: ec.EllipticCurvePublicKey
    digest: str

    @property
    def signing_key_id(self) -> str:
        """The vault key id of the signing key."""
        return key_id(self.signing_public_key)

    @property
    def issuing_ca_key_id(self) -> str:
        """The vault key id of the issuing CA key."""
        return key_id(self.issuing_ca_public_key)

    @property
    def decryption_key_id(self) -> str:
        """The vault key id of the decryption key."""
        return key_id(self.decryption_public_key)


def check_station_id(station_id: str) -> None:
    """Refuse a station id that does not match :data:`STATION_ID_PATTERN`.

    Raises:
        FormatError: it does not.
    """
    if not isinstance(station_id, str) or not _STATION_ID.fullmatch(station_id):
        shown = quote(station_id) if isinstance(station_id, str) else type(station_id).__name__
        raise FormatError(
            f"station id {shown} must be a lower-case letter followed by at most 31 "
            "lower-case letters, digits and hyphens"
        )


def check_station_name(name: str | None) -> None:
    """Refuse a station name that is empty, longer than 128 characters or holds control characters.

    Raises:
        FormatError: it does.
    """
    if name is None:
        return
    if not isinstance(name, str) or not 1 <= len(name) <= _MAX_NAME or _CONTROL.search(name):
        shown = quote(name) if isinstance(name, str) else type(name).__name__
        raise FormatError(f"station name {shown} must be 1 to {_MAX_NAME} characters without control characters")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as e:
        raise FormatError("station name holds an unpaired surrogate") from e


def build_enrolment_request(
    station_id: str,
    *,
    signing: Signer,
    issuing_ca: Signer,
    decryption_public_key: ec.EllipticCurvePublicKey,
    name: str | None = None,
    now: datetime,
) -> bytes:
    """A station's enrolment request, signed by its signing key, as DSSE JSON bytes.

    The signing and issuing CA keys each sign a CSR for themselves (CNs
    ``station <id> signing`` and ``station <id> issuing CA``); the decryption
    key, which cannot sign, is vouched for by the signing key's signature
    over the whole envelope. The request is opened with
    :func:`open_enrolment_request` before it is returned, so what this
    function returns always opens.

    Args:
        station_id: the station's id (:data:`STATION_ID_PATTERN`).
        signing: the station signing key (usually a token key).
        issuing_ca: the station issuing CA key (usually a token key).
        decryption_public_key: the public half of the station's ECDH key.
        name: a name for people ("Line 3, building B").
        now: the time to record as ``created``; must carry a time zone.

    Raises:
        FormatError: the station id or name is not allowed.
        InputError: ``now`` has no time zone.
        CertificateError: a key is not on a supported curve, or two roles share a key.
        SignatureError: a signer made a signature that does not verify.
    """
    check_station_id(station_id)
    check_station_name(name)
    if now.tzinfo is None:
        raise InputError("the enrolment request time must carry a time zone")
    keys = {"signing": signing.public_key, "issuing-ca": issuing_ca.public_key, "decryption": decryption_public_key}
    for role, public_key in keys.items():
        _check_curve(public_key, f"the station {_ROLE_WORDS[role]} key")
    _check_distinct(keys, "")
    signing_csr = build_csr(signing, f"station {station_id} signing")
    issuing_ca_csr = build_csr(issuing_ca, f"station {station_id} issuing CA")
    predicate = {
        "station_id": station_id,
        "name": name,
        "created": now.astimezone(UTC).strftime(_TIME_FORMAT),
        "signing_csr": _b64encode(signing_csr.public_bytes(serialization.Encoding.DER)),
        "issuing_ca_csr": _b64encode(issuing_ca_csr.public_bytes(serialization.Encoding.DER)),
        "decryption_key": _b64encode(spki_der(decryption_public_key)),
    }
    subjects = tuple(Subject(role, {"sha256": key_id(keys[role])}) for role in _ROLES)
    statement = Statement(subjects, PREDICATE_TYPE, predicate)
    data = sign_statement(statement, [signing]).to_json()
    open_enrolment_request(data)
    return data


def open_enrolment_request(data: bytes, *, max_size: int = MAX_REQUEST_SIZE) -> EnrolmentRequest:
    """Check a station enrolment request and return what it says.

    The size is checked before anything is parsed; the envelope must carry
    exactly one signature, made by the key of the request's own signing CSR
    over the payload as received; then the statement, its predicate (exactly
    the known fields), both CSRs' self-signatures, the decryption key and the
    subjects' key digests are checked, and the three keys must differ.

    Args:
        data: the request file's bytes.
        max_size: refuse input longer than this many bytes.

    Raises:
        FormatError: oversized, not a DSSE envelope of an in-toto statement of
            :data:`PREDICATE_TYPE`, unknown or missing or malformed fields, or
            subjects that do not name the request's keys.
        SignatureError: unsigned, not signed by the signing CSR's key, or the
            signed bytes were altered.
        CertificateError: a CSR's self-signature or algorithm is wrong, a key
            is on an unsupported curve, or two roles share a key.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise FormatError(f"{_WHAT}: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_size:
        raise FormatError(f"{_WHAT}: {len(data)} bytes is more than the {max_size}-byte limit")
    envelope = Envelope.from_json(data, max_size=max_size, what=_WHAT)
    if not envelope.signatures:
        raise SignatureError(f"{_WHAT} is not signed")
    if len(envelope.signatures) > 1:
        raise FormatError(
            f"{_WHAT} carries {len(envelope.signatures)} signatures; it must carry one, by its station signing key"
        )

    signing_key = _claimed_signing_key(envelope, max_size)
    signing_id = key_id(signing_key)
    try:
        statement, _ = open_statement(
            envelope, {signing_id: signing_key}, 1, what=_WHAT, predicate_type=PREDICATE_TYPE, max_size=max_size
        )
    except ThresholdError as e:
        raise SignatureError(
            f"{_WHAT} is signed by key {envelope.signatures[0].keyid[:16]}, "
            f"not by the key of its own signing CSR ({signing_id[:16]})"
        ) from e

    fields = check_fields(statement.predicate, _PREDICATE_FIELDS, what=f"{_WHAT} predicate")
    station_id = _text(fields["station_id"], "station_id")
    try:
        check_station_id(station_id)
        check_station_name(fields["name"])
    except FormatError as e:
        raise FormatError(f"{_WHAT}: {e}") from e
    name: str | None = fields["name"]
    created = _time(fields["created"])

    signing_csr = _csr(fields["signing_csr"], "signing_csr")  # the same bytes the signing key was read from
    issuing_ca_csr = _csr(fields["issuing_ca_csr"], "issuing_ca_csr")
    check_csr(signing_csr)
    issuing_ca_key = check_csr(issuing_ca_csr)
    _check_subject(signing_csr, f"station {station_id} signing", "signing_csr")
    _check_subject(issuing_ca_csr, f"station {station_id} issuing CA", "issuing_ca_csr")
    decryption_key = _decryption_key(fields["decryption_key"])

    keys = {"signing": signing_key, "issuing-ca": issuing_ca_key, "decryption": decryption_key}
    for role, public_key in keys.items():
        _check_curve(public_key, f"{_WHAT}: the station {_ROLE_WORDS[role]} key")
    _check_distinct(keys, f"{_WHAT}: ")
    _check_subjects(statement.subjects, keys)

    return EnrolmentRequest(
        station_id=station_id,
        name=name,
        created=created,
        signing_csr=signing_csr,
        issuing_ca_csr=issuing_ca_csr,
        signing_public_key=signing_key,
        issuing_ca_public_key=issuing_ca_key,
        decryption_public_key=decryption_key,
        digest=hashlib.sha256(data).hexdigest(),
    )


# --- reading the parts ---------------------------------------------------------


def _claimed_signing_key(envelope: Envelope, max_size: int) -> ec.EllipticCurvePublicKey:
    """The key of the signing CSR in the not yet verified payload: the key the signature must verify under.

    Only what is needed to find that key is read. Anything that stops it
    being read stops the signature being checked, and is refused as such.
    """
    try:
        document = parse_json(envelope.payload, max_size=max_size, what="its payload")
        predicate = document.get("predicate") if isinstance(document, dict) else None
        encoded = predicate.get("signing_csr") if isinstance(predicate, dict) else None
        if not isinstance(encoded, str):
            raise FormatError("its payload has no signing CSR")
        csr = x509.load_der_x509_csr(_b64decode(encoded, "signing_csr"))
        public_key = csr.public_key()
    except FormatError as e:
        reason = str(e).removeprefix(f"{_WHAT}: ")
        raise SignatureError(f"{_WHAT}: altered or damaged, its signature cannot be checked ({reason})") from e
    except (ValueError, UnsupportedAlgorithm) as e:
        raise SignatureError(
            f"{_WHAT}: altered or damaged, its signature cannot be checked (the signing CSR does not parse)"
        ) from e
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise CertificateError(f"{_WHAT}: the signing CSR is not for an EC key (supported curves: {', '.join(CURVES)})")
    _check_curve(public_key, f"{_WHAT}: the station signing key")
    return public_key


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise FormatError(f"{_WHAT}: predicate field '{field}' must be a string")
    return value


def _time(value: Any) -> datetime:
    text = _text(value, "created")
    if not _TIME.fullmatch(text):
        raise FormatError(f"{_WHAT}: created {quote(text)} is not a UTC time like 2025-01-02T03:04:05Z")
    try:
        return datetime.strptime(text, _TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError as e:
        raise FormatError(f"{_WHAT}: created {quote(text)} is not a real date and time") from e


def _csr(value: Any, field: str) -> x509.CertificateSigningRequest:
    der = _b64decode(_text(value, field), field)
    try:
        return x509.load_der_x509_csr(der)
    except ValueError as e:
        raise FormatError(f"{_WHAT}: {field} is not a DER PKCS#10 certificate request") from e


def _decryption_key(value: Any) -> ec.EllipticCurvePublicKey:
    der = _b64decode(_text(value, "decryption_key"), "decryption_key")
    try:
        public_key = serialization.load_der_public_key(der)
    except (ValueError, UnsupportedAlgorithm) as e:
        raise FormatError(f"{_WHAT}: decryption_key is not a DER SubjectPublicKeyInfo") from e
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise CertificateError(f"{_WHAT}: the decryption key is not an EC key (supported curves: {', '.join(CURVES)})")
    _check_curve(public_key, f"{_WHAT}: the station decryption key")
    if spki_der(public_key) != der:
        raise FormatError(f"{_WHAT}: decryption_key is not written the one DER way (uncompressed named-curve point)")
    return public_key


def _check_subject(csr: x509.CertificateSigningRequest, common_name: str, field: str) -> None:
    expected = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    if csr.subject != expected:
        raise CertificateError(
            f"{_WHAT}: {field} is for {quote(csr.subject.rfc4514_string(), 80)}, expected 'CN={common_name}'"
        )


def _check_subjects(subjects: tuple[Subject, ...], keys: dict[str, ec.EllipticCurvePublicKey]) -> None:
    names = [subject.name for subject in subjects]
    if sorted(names) != sorted(_ROLES):
        raise FormatError(f"{_WHAT}: its subjects must be exactly {', '.join(_ROLES)}, not {', '.join(names)}")
    for subject in subjects:
        expected = key_id(keys[subject.name])
        if dict(subject.digest) != {"sha256": expected}:
            raise FormatError(
                f"{_WHAT}: subject '{subject.name}' does not name the request's "
                f"{_ROLE_WORDS[subject.name]} key {expected[:16]} (its sha256 digest must be that key id)"
            )


def _check_curve(public_key: ec.EllipticCurvePublicKey, whose: str) -> None:
    try:
        curve_of(public_key)
    except InputError as e:
        raise CertificateError(
            f"{whose} is on unsupported curve '{public_key.curve.name}' (supported: {', '.join(CURVES)})"
        ) from e


def _check_distinct(keys: dict[str, ec.EllipticCurvePublicKey], prefix: str) -> None:
    seen: dict[bytes, str] = {}
    for role, public_key in keys.items():
        der = spki_der(public_key)
        if der in seen:
            raise CertificateError(
                f"{prefix}the station {_ROLE_WORDS[seen[der]]} and {_ROLE_WORDS[role]} keys are the same key "
                f"({key_id(public_key)[:16]}); each role needs its own key"
            )
        seen[der] = role


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(value: str, field: str) -> bytes:
    """Standard, padded, canonical base64 only, so each value has one spelling."""
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise FormatError(f"{_WHAT}: {field} is not valid standard base64") from e
    if _b64encode(decoded) != value:
        raise FormatError(f"{_WHAT}: {field} is not canonical standard base64")
    return decoded
