"""The trust policy: which keys hold which role, signed by the root, versioned.

A trust policy is a DSSE envelope holding an in-toto Statement v1 with
predicate type :data:`POLICY_PREDICATE`. Its one subject is the root
certificate. The predicate names the root, the officers (threshold and
signing keys), the release approvers (threshold and certified keys), the
release signer, the enrolled stations (signing, decryption and issuing CA
keys, each certified by the root), the auditor's decryption key, the
auditors' cosigning keys and their threshold (``cosigners``, optional: a
policy from before they existed has none), the keys revoked so far and the
public records of the custody share sets.

This module is the bottom layer every verifier shares (the station library,
bundle promotion, the audit): bytes in, a checked :class:`TrustPolicy` out,
the reference time passed in. :func:`load_policy` checks, in order:

1. the envelope is signed by the pinned root key (the trust anchor);
2. the statement is a trust policy and its subject is the pinned root certificate;
3. the predicate has exactly the known fields, with the right types;
4. the officers' threshold of the policy's own officer keys also signed;
5. every role certificate is issued by the root and certifies the key named;
6. no key is both in a role and revoked;
7. the version is not below the highest one the caller has seen (rollback);
8. it has not expired at ``now`` (freeze), unless the caller allows it.

Example:
    >>> import datetime
    >>> from pathlib import Path
    >>> def example(policy_file: Path, root_pem: Path) -> int:
    ...     from cryptography import x509
    ...     root = x509.load_pem_x509_certificate(root_pem.read_bytes())
    ...     policy = load_policy(policy_file.read_bytes(), root, now=datetime.datetime.now(datetime.UTC))
    ...     return policy.approvers_threshold
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from vault.crypto import certificate_key, key_id, load_spki, spki_der
from vault.errors import (
    FormatError,
    PolicyError,
    RollbackError,
    SignatureError,
    ThresholdError,
    ValidityError,
    VaultError,
)
from vault.formats import Envelope, Statement, Subject, open_statement, verify_envelope
from vault.formats._json import check_fields, quote
from vault.pki import verify_issued_by

__all__ = [
    "MAX_POLICY_SIZE",
    "POLICY_PREDICATE",
    "ROLES",
    "Revocation",
    "RoleKey",
    "Station",
    "TrustPolicy",
    "embedded_root_certificate",
    "format_time",
    "key_entry",
    "load_policy",
    "parse_time",
    "policy_statement",
]

POLICY_PREDICATE = "https://vault.dev/trust-policy/v1"
MAX_POLICY_SIZE = 4 * 1024 * 1024
ROLES = ("officer", "approver", "release-signer", "station", "auditor", "cosigner")

_PREDICATE_FIELDS = frozenset(
    {
        "version",
        "issued",
        "expires",
        "rehearsal",
        "root",
        "officers",
        "approvers",
        "release_signer",
        "stations",
        "auditor",
        "revoked",
        "custody",
    }
)
_OPTIONAL_FIELDS = frozenset({"cosigners"})
_GROUP_FIELDS = frozenset({"threshold", "keys"})
_CERTIFIED_FIELDS = frozenset({"key_id", "certificate"})
_OFFICER_FIELDS = frozenset({"key_id", "spki"})
_ROOT_FIELDS = frozenset({"key_id", "certificate"})
_STATION_FIELDS = frozenset({"name", "signing", "decryption", "issuing_ca"})
_REVOKED_FIELDS = frozenset({"key_id", "role", "holder", "reason", "version"})
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_MAX_MEMBERS = 1024


def format_time(when: datetime) -> str:
    """``when`` as the UTC ``YYYY-MM-DDTHH:MM:SSZ`` string policies use."""
    return when.astimezone(UTC).strftime(_TIME_FORMAT)


def parse_time(value: object, *, what: str) -> datetime:
    """Read a ``YYYY-MM-DDTHH:MM:SSZ`` string.

    Raises:
        FormatError: not a string in that form.
    """
    if not isinstance(value, str):
        raise FormatError(f"{what}: expected a UTC time string")
    try:
        return datetime.strptime(value, _TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError as e:
        raise FormatError(f"{what}: {quote(value)} is not a UTC time like 2026-01-31T12:00:00Z") from e


@dataclass(frozen=True)
class RoleKey:
    """A public key holding a role; ``certificate`` is the root's certificate for it (officers have none)."""

    key_id: str
    public_key: ec.EllipticCurvePublicKey
    certificate: x509.Certificate | None = None


@dataclass(frozen=True)
class Station:
    """An enrolled station's three keys."""

    id: str
    name: str
    signing: RoleKey
    decryption: RoleKey
    issuing_ca: RoleKey

    def keys(self) -> tuple[RoleKey, ...]:
        """The signing, decryption and issuing CA keys."""
        return (self.signing, self.decryption, self.issuing_ca)


@dataclass(frozen=True)
class Revocation:
    """A key taken out of service: verifiers refuse anything it signs from then on."""

    key_id: str
    role: str
    holder: str
    reason: str
    version: int  # the policy version that revoked it


@dataclass(frozen=True)
class TrustPolicy:
    """A verified trust policy."""

    version: int
    issued: datetime
    expires: datetime
    rehearsal: bool
    root: RoleKey
    officers_threshold: int
    officers: Mapping[str, RoleKey]
    approvers_threshold: int
    approvers: Mapping[str, RoleKey]
    release_signer: RoleKey | None
    stations: Mapping[str, Station]
    auditor: RoleKey | None
    revoked: tuple[Revocation, ...]
    custody: Mapping[str, Any]
    predicate: Mapping[str, Any] = field(repr=False)
    digest: str = ""  # SHA-256 hex of the envelope bytes as received
    cosigners_threshold: int = 0
    cosigners: Mapping[str, RoleKey] = field(default_factory=dict)
    """The auditors' cosigning keys (C2SP tlog-cosignatures on station checkpoints), by holder id."""

    def revocation(self, key: str) -> Revocation | None:
        """The revocation of the key with id ``key``, if it was revoked."""
        return next((r for r in self.revoked if r.key_id == key), None)

    def trusted(self, keys: Mapping[str, RoleKey]) -> dict[str, ec.EllipticCurvePublicKey]:
        """``{key id: public key}`` of a role's keys, for :func:`vault.formats.verify_envelope`."""
        return {k.key_id: k.public_key for k in keys.values()}

    def check_current(self, now: datetime) -> None:
        """Refuse a policy that has expired at ``now``.

        Raises:
            PolicyError: it expired.
        """
        if now >= self.expires:
            raise ValidityError(f"trust policy v{self.version} expired at {format_time(self.expires)}")


def key_entry(public_key: ec.EllipticCurvePublicKey, certificate: x509.Certificate | None = None) -> dict[str, str]:
    """The policy's JSON for one key: a certificate when it has one, else its SPKI."""
    entry = {"key_id": key_id(public_key)}
    if certificate is None:
        entry["spki"] = base64.b64encode(spki_der(public_key)).decode()
    else:
        entry["certificate"] = base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode()
    return entry


def policy_statement(predicate: Mapping[str, Any], root_certificate: x509.Certificate) -> Statement:
    """The statement for ``predicate``, whose subject is the root certificate."""
    der = root_certificate.public_bytes(serialization.Encoding.DER)
    return Statement(
        subjects=(Subject(name="root-ca", digest={"sha256": hashlib.sha256(der).hexdigest()}),),
        predicate_type=POLICY_PREDICATE,
        predicate=dict(predicate),
    )


def load_policy(
    data: bytes,
    root_certificate: x509.Certificate,
    *,
    now: datetime,
    highest_seen: int = 0,
    allow_expired: bool = False,
) -> TrustPolicy:
    """Verify a trust policy against the pinned root certificate; see the module docstring.

    Args:
        data: the policy file's bytes.
        root_certificate: the root certificate the caller pins (from the root ceremony).
        now: the reference time.
        highest_seen: the highest policy version this verifier accepted before.
        allow_expired: accept an expired policy (only ceremonies that renew it do).

    Raises:
        FormatError: not a trust policy, or a field is malformed.
        SignatureError, ThresholdError: the root or the officers' quorum did not sign.
        PolicyError: rollback, expiry, a role key the root did not certify, a revoked key in a role.
    """
    root_public = certificate_key(root_certificate, what="the pinned root certificate")
    root_id = key_id(root_public)
    envelope = Envelope.from_json(data, max_size=MAX_POLICY_SIZE)
    if root_id not in envelope.keyids:
        signers = ", ".join(k[:16] for k in dict.fromkeys(envelope.keyids)) or "no key"
        raise ThresholdError(
            f"trust policy: not signed by the pinned root (key {root_id[:16]}); it is signed by {signers}: "
            "pin the root certificate of the root ceremony that made this policy"
        )
    statement, _ = open_statement(
        envelope, {root_id: root_public}, 1, what="trust policy", predicate_type=POLICY_PREDICATE
    )
    root_der = root_certificate.public_bytes(serialization.Encoding.DER)
    expected_subject = Subject(name="root-ca", digest={"sha256": hashlib.sha256(root_der).hexdigest()})
    if statement.subjects != (expected_subject,):
        raise PolicyError("trust policy: its subject is not the pinned root certificate")

    present = _OPTIONAL_FIELDS & set(statement.predicate) if isinstance(statement.predicate, dict) else set()
    p = check_fields(statement.predicate, _PREDICATE_FIELDS | present, what="trust policy")
    root_entry = check_fields(p["root"], _ROOT_FIELDS, what="trust policy root")
    if root_entry["key_id"] != root_id or _b64(root_entry["certificate"], "root certificate") != root_der:
        raise PolicyError("trust policy: its root is not the pinned root certificate")
    root = RoleKey(root_id, root_public, root_certificate)

    officers_threshold, officers = _group(p["officers"], "officers", lambda e, w: _officer_key(e, w))
    approvers_threshold, approvers = _group(p["approvers"], "approvers", lambda e, w: _certified(e, root, w))
    cosigners_threshold, cosigners = 0, dict[str, RoleKey]()
    if "cosigners" in p:
        cosigners_threshold, cosigners = _group(p["cosigners"], "cosigners", lambda e, w: _certified(e, root, w))
        if cosigners_threshold > len(cosigners):
            raise PolicyError(
                f"trust policy: cosigner threshold {cosigners_threshold} exceeds the {len(cosigners)} cosigners"
            )
    if officers_threshold > len(officers):
        raise PolicyError(f"trust policy: officer threshold {officers_threshold} exceeds the {len(officers)} officers")
    verify_envelope(
        envelope,
        {k.key_id: k.public_key for k in officers.values()},
        officers_threshold,
        what="trust policy officer signatures",
    )

    policy = TrustPolicy(
        version=_int(p["version"], "version", 1),
        issued=parse_time(p["issued"], what="trust policy issued"),
        expires=parse_time(p["expires"], what="trust policy expires"),
        rehearsal=_bool(p["rehearsal"], "rehearsal"),
        root=root,
        officers_threshold=officers_threshold,
        officers=officers,
        approvers_threshold=approvers_threshold,
        approvers=approvers,
        release_signer=None if p["release_signer"] is None else _certified(p["release_signer"], root, "release signer"),
        stations=_stations(p["stations"], root),
        auditor=None if p["auditor"] is None else _certified(p["auditor"], root, "auditor"),
        revoked=_revocations(p["revoked"]),
        custody=_object(p["custody"], "custody"),
        predicate=p,
        digest=hashlib.sha256(data).hexdigest(),
        cosigners_threshold=cosigners_threshold,
        cosigners=cosigners,
    )
    _check_not_revoked(policy)
    if policy.version < highest_seen:
        raise RollbackError(f"trust policy v{policy.version} is older than v{highest_seen} seen before (rollback)")
    if not allow_expired:
        policy.check_current(now)
    return policy


# --- parts ---------------------------------------------------------------------


def _b64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise FormatError(f"trust policy: {what} is not base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError as e:
        raise FormatError(f"trust policy: {what} is not valid base64") from e


def _int(value: object, what: str, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise FormatError(f"trust policy: {what} must be an integer of at least {low}")
    return value


def _bool(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise FormatError(f"trust policy: {what} must be true or false")
    return value


def _object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise FormatError(f"trust policy: {what} must be an object")
    if len(value) > _MAX_MEMBERS:
        raise FormatError(f"trust policy: {what} has more than {_MAX_MEMBERS} entries")
    return value


def _checked_key_id(entry: Mapping[str, Any], public: ec.EllipticCurvePublicKey, what: str) -> str:
    if entry["key_id"] != key_id(public):
        raise PolicyError(f"trust policy: {what}'s key id does not match its key")
    return key_id(public)


def _officer_key(value: object, what: str) -> RoleKey:
    entry = check_fields(value, _OFFICER_FIELDS, what=f"trust policy {what}")
    public = load_spki(_b64(entry["spki"], f"{what} key"), what=f"trust policy: {what} key")
    return RoleKey(_checked_key_id(entry, public, what), public)


def _certified(value: object, root: RoleKey, what: str) -> RoleKey:
    entry = check_fields(value, _CERTIFIED_FIELDS, what=f"trust policy {what}")
    try:
        certificate = x509.load_der_x509_certificate(_b64(entry["certificate"], f"{what} certificate"))
    except ValueError as e:
        raise FormatError(f"trust policy: {what} certificate does not parse") from e
    public = certificate_key(certificate, what=f"trust policy: {what} certificate")
    try:
        verify_issued_by(certificate, root.public_key)
    except (SignatureError, VaultError) as e:
        raise PolicyError(f"trust policy: {what} certificate is not issued by the root ({e})") from e
    return RoleKey(_checked_key_id(entry, public, what), public, certificate)


def _group(value: object, what: str, parse: Any) -> tuple[int, dict[str, RoleKey]]:
    group = check_fields(value, _GROUP_FIELDS, what=f"trust policy {what}")
    threshold = _int(group["threshold"], f"{what} threshold", 1)
    keys = {str(k): parse(v, f"{what[:-1]} {k}") for k, v in _object(group["keys"], f"{what} keys").items()}
    return threshold, keys


def _stations(value: object, root: RoleKey) -> dict[str, Station]:
    stations = {}
    for station_id, raw in _object(value, "stations").items():
        entry = check_fields(raw, _STATION_FIELDS, what=f"trust policy station {station_id}")
        if not isinstance(entry["name"], str):
            raise FormatError(f"trust policy: station {station_id} name must be text")
        stations[station_id] = Station(
            id=station_id,
            name=entry["name"],
            signing=_certified(entry["signing"], root, f"station {station_id} signing key"),
            decryption=_certified(entry["decryption"], root, f"station {station_id} decryption key"),
            issuing_ca=_certified(entry["issuing_ca"], root, f"station {station_id} issuing CA"),
        )
    return stations


def _revocations(value: object) -> tuple[Revocation, ...]:
    if not isinstance(value, list) or len(value) > 64 * _MAX_MEMBERS:
        raise FormatError("trust policy: revoked must be a list")
    revoked = []
    for i, raw in enumerate(value):
        entry = check_fields(raw, _REVOKED_FIELDS, what=f"trust policy revoked[{i}]")
        for name in ("key_id", "role", "holder", "reason"):
            if not isinstance(entry[name], str):
                raise FormatError(f"trust policy: revoked[{i}].{name} must be text")
        if entry["role"] not in ROLES:
            raise FormatError(f"trust policy: revoked[{i}].role {quote(entry['role'])} is not a role")
        revoked.append(
            Revocation(
                key_id=entry["key_id"],
                role=entry["role"],
                holder=entry["holder"],
                reason=entry["reason"],
                version=_int(entry["version"], f"revoked[{i}].version", 1),
            )
        )
    return tuple(revoked)


def _check_not_revoked(policy: TrustPolicy) -> None:
    in_roles: list[tuple[str, RoleKey]] = [(f"officer {k}", v) for k, v in policy.officers.items()]
    in_roles += [(f"approver {k}", v) for k, v in policy.approvers.items()]
    in_roles += [(f"cosigner {k}", v) for k, v in policy.cosigners.items()]
    in_roles += [(f"station {s.id}", key) for s in policy.stations.values() for key in s.keys()]
    if policy.release_signer:
        in_roles.append(("release signer", policy.release_signer))
    if policy.auditor:
        in_roles.append(("auditor", policy.auditor))
    if policy.revocation(policy.root.key_id):
        raise PolicyError("trust policy: the root key itself is listed as revoked")
    for holder, key in in_roles:
        if policy.revocation(key.key_id):
            raise PolicyError(f"trust policy: {holder} holds key {key.key_id[:16]} which is revoked")


def embedded_root_certificate(data: bytes) -> x509.Certificate:
    """The root certificate a policy file names for itself, read without verifying anything.

    For showing a policy when the caller has no root to pin: verify the file
    against this certificate with :func:`load_policy`, and say that the root
    was not pinned. Never a trust anchor.

    Raises:
        FormatError: not a trust policy, or its root entry is malformed.
    """
    envelope = Envelope.from_json(data, max_size=MAX_POLICY_SIZE)
    statement = Statement.from_bytes(envelope.payload, max_size=MAX_POLICY_SIZE, what="trust policy")
    if statement.predicate_type != POLICY_PREDICATE:
        raise FormatError(f"trust policy: predicate type is {quote(statement.predicate_type, 80)}, not a trust policy")
    p = statement.predicate
    if not isinstance(p.get("root"), dict):
        raise FormatError("trust policy: it names no root")
    entry = check_fields(p["root"], _ROOT_FIELDS, what="trust policy root")
    try:
        return x509.load_der_x509_certificate(_b64(entry["certificate"], "root certificate"))
    except ValueError as e:
        raise FormatError("trust policy: its root certificate does not parse") from e
