"""The release statement: what a bundle holds, for whom, how many, until when, and who approved it.

A release statement is an in-toto Statement v1 (predicate type
:data:`RELEASE_PREDICATE`) in the bundle's DSSE envelope. Its subjects are
the images (name and plaintext SHA-256); its predicate::

    {"bundle_id": "<32 hex>", "header_sha256": "<hex of the container header bytes>",
     "product": "sensor-fw", "version": "1.4.0", "security_counter": 7,
     "not_before": "...Z", "expires": "...Z",
     "production": {"total": 1000, "allocation": {"station-1": 600, "station-2": 400}},
     "images": [{"name", "sha256", "length", "ciphertext_sha256", "target": {...}}],
     "recipients": {"station-1": "<decryption key id>", ...},
     "provenance": {"<image name>": {... the offline Sigstore verification result ...}},
     "policy": {"version": 3, "sha256": "<hex of the policy file>"},
     "lock_profiles": {"production": {"chip": "esp32s3", "efuses": {...}, "keys": [...]}},  (optional)
     "secrets": {"recipient": "<key id>", "items": [{"name", "kind", "target"}]},           (optional)
     "built": "...Z"}

The header digest binds the statement to the container's header, and so to
the wrapped data keys and every image's ciphertext digest; each image's
chunks are authenticated under the data key. Approvers sign the statement
with their own keys; the release signer signs it last, at promotion. All of
them sign the same bytes, the envelope's payload.

This module is the bottom layer the station library shares: bytes in, a
checked :class:`Release` out, the reference time passed in.

Example:
    >>> import datetime
    >>> def example(envelope: bytes, header: bytes, policy) -> int:
    ...     release, approvals = open_release(envelope, header, policy, now=datetime.datetime.now(datetime.UTC))
    ...     return release.allocation["station-1"]
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from vault.device_secrets import SecretSpec, parse_release_secrets
from vault.errors import FormatError, PolicyError, SignatureError, ThresholdError, ValidityError
from vault.formats import Envelope, Statement, VerificationResult, inspect_signatures, open_statement
from vault.formats._json import check_fields, quote
from vault.policy import TrustPolicy, parse_time

__all__ = [
    "MAX_ENVELOPE_SIZE",
    "RELEASE_PREDICATE",
    "Approvals",
    "Release",
    "ReleaseImage",
    "approvals_of",
    "open_release",
    "parse_release",
]

RELEASE_PREDICATE = "https://vault.dev/release/v1"
MAX_ENVELOPE_SIZE = 16 * 1024 * 1024
_FIELDS = frozenset(
    {
        "bundle_id",
        "header_sha256",
        "product",
        "version",
        "security_counter",
        "not_before",
        "expires",
        "production",
        "images",
        "recipients",
        "provenance",
        "policy",
        "built",
    }
)
_OPTIONAL = frozenset({"lock_profiles", "secrets"})  # absent from releases built before them (or without them)
_IMAGE_FIELDS = frozenset({"name", "sha256", "length", "ciphertext_sha256", "target"})


@dataclass(frozen=True)
class ReleaseImage:
    """One image as the statement lists it."""

    name: str
    sha256: str
    length: int
    ciphertext_sha256: str
    target: Mapping[str, Any]


@dataclass(frozen=True)
class Release:
    """A parsed release statement."""

    bundle_id: str
    header_sha256: str
    product: str
    version: str
    security_counter: int
    not_before: datetime
    expires: datetime
    total: int
    allocation: Mapping[str, int]
    images: tuple[ReleaseImage, ...]
    recipients: Mapping[str, str]
    provenance: Mapping[str, Any]
    policy_version: int
    statement: Statement = field(repr=False)
    statement_sha256: str = ""
    lock_profiles: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """The eFuses (or other locks) the release asks devices to burn, by profile name; checked at build."""
    secrets: tuple[SecretSpec, ...] = ()
    """The per-device secrets each unit gets (:mod:`vault.device_secrets`), in the order installed."""
    secrets_recipient: str | None = None
    """The key id the secrets are sealed to: the trust policy's secrets recipient when the release was built."""

    def image(self, name: str) -> ReleaseImage:
        """The image called ``name``."""
        for image in self.images:
            if image.name == name:
                return image
        raise FormatError(f"the release has no image {quote(name)}")

    def check_window(self, now: datetime) -> None:
        """Refuse use before ``not_before`` or from ``expires`` on.

        Raises:
            ValidityError: outside the validity window.
        """
        if now < self.not_before:
            raise ValidityError(
                f"release {self.product} {self.version} is not valid before {self.not_before:%Y-%m-%dT%H:%M:%SZ}"
            )
        if now >= self.expires:
            raise ValidityError(f"release {self.product} {self.version} expired at {self.expires:%Y-%m-%dT%H:%M:%SZ}")


@dataclass(frozen=True)
class Approvals:
    """Who signed, by role: for a display, beside the raising checks."""

    approvers: tuple[str, ...]  # approver ids whose signatures verify
    missing: int  # approvals still needed to meet the threshold
    invalid: tuple[str, ...]  # key ids of approvers whose signature does not verify
    promoted: bool  # the release signer has signed
    threshold: int


def parse_release(statement: Statement) -> Release:
    """Read a release statement's predicate (the signatures are checked elsewhere).

    Raises:
        FormatError: a field is missing, unknown or malformed.
    """
    if statement.predicate_type != RELEASE_PREDICATE:
        raise FormatError(f"not a release statement (predicate type {quote(statement.predicate_type, 80)})")
    optional = _OPTIONAL & set(statement.predicate) if isinstance(statement.predicate, dict) else set()
    p = check_fields(statement.predicate, _FIELDS | optional, what="release statement")
    production = check_fields(p["production"], frozenset({"total", "allocation"}), what="release production")
    policy = check_fields(p["policy"], frozenset({"version", "sha256"}), what="release policy")
    images = []
    for i, raw in enumerate(_list(p["images"], "images")):
        entry = check_fields(raw, _IMAGE_FIELDS, what=f"release images[{i}]")
        images.append(
            ReleaseImage(
                name=_text(entry["name"], f"images[{i}].name"),
                sha256=_hex(entry["sha256"], f"images[{i}].sha256"),
                length=_count(entry["length"], f"images[{i}].length"),
                ciphertext_sha256=_hex(entry["ciphertext_sha256"], f"images[{i}].ciphertext_sha256"),
                target=_mapping(entry["target"], f"images[{i}].target"),
            )
        )
    subjects = {s.name: s.digest.get("sha256") for s in statement.subjects}
    if subjects != {image.name: image.sha256 for image in images}:
        raise FormatError("release statement: its subjects are not its images")
    allocation = {
        str(k): _count(v, f"allocation.{k}") for k, v in _mapping(production["allocation"], "allocation").items()
    }
    recipient, secrets = parse_release_secrets(p["secrets"]) if "secrets" in p else (None, ())
    return Release(
        bundle_id=_text(p["bundle_id"], "bundle_id"),
        header_sha256=_hex(p["header_sha256"], "header_sha256"),
        product=_text(p["product"], "product"),
        version=_text(p["version"], "version"),
        security_counter=_count(p["security_counter"], "security_counter"),
        not_before=parse_time(p["not_before"], what="release not_before"),
        expires=parse_time(p["expires"], what="release expires"),
        total=_count(production["total"], "production.total"),
        allocation=allocation,
        images=tuple(images),
        recipients={str(k): _hex(v, f"recipients.{k}") for k, v in _mapping(p["recipients"], "recipients").items()},
        provenance=_mapping(p["provenance"], "provenance"),
        policy_version=_count(policy["version"], "policy.version"),
        statement=statement,
        statement_sha256=hashlib.sha256(statement.to_bytes()).hexdigest(),
        lock_profiles={
            str(k): _mapping(v, f"lock_profiles.{k}")
            for k, v in _mapping(p.get("lock_profiles", {}), "lock_profiles").items()
        },
        secrets=secrets,
        secrets_recipient=recipient,
    )


def approvals_of(envelope: Envelope, policy: TrustPolicy) -> Approvals:
    """Which approvers (and whether the release signer) validly signed, never raising on a bad signature."""
    by_key = {key.key_id: holder for holder, key in policy.approvers.items()}
    result: VerificationResult = inspect_signatures(
        envelope, policy.trusted(policy.approvers), what="release approvals"
    )
    promoted = False
    if policy.release_signer is not None:
        signer = {policy.release_signer.key_id: policy.release_signer.public_key}
        promoted = bool(inspect_signatures(envelope, signer, what="release signature").valid)
    valid = tuple(sorted(by_key[k] for k in result.valid))
    return Approvals(
        approvers=valid,
        missing=max(0, policy.approvers_threshold - len(valid)),
        invalid=tuple(result.invalid),
        promoted=promoted,
        threshold=policy.approvers_threshold,
    )


def open_release(
    envelope_bytes: bytes,
    header_bytes: bytes,
    policy: TrustPolicy,
    *,
    now: datetime,
    require_promoted: bool = True,
    check_window: bool = True,
    station: str | None = None,
    check_stations: bool = True,
) -> tuple[Release, Approvals]:
    """Verify a bundle's release statement against the trust policy, then parse it.

    Checks the approvers' threshold (each approver once, revoked or unknown
    keys not counted), the release signer's signature when
    ``require_promoted``, the header digest, that every allocated station is
    enrolled and a recipient, that the allocation fits the total, and the
    validity window unless ``check_window`` is false (an auditor checks
    evidence against a release after it expired, and compares each
    manifest's time with the window itself). A station passes its own id as
    ``station``: only its own enrolment and recipient key are checked then,
    so a station revoked or re-enrolled since the release was signed does
    not stop the others from loading their allocations. An auditor passes
    ``check_stations=False``: no station's enrolment is checked then (the
    audit is after the fact, and checks each export against the policy's
    keys itself), only that the allocation fits the total.

    Raises:
        SignatureError: a signature by an approver or the release signer does not verify.
        ThresholdError: too few approvals, or not promoted.
        FormatError: the statement or the header digest is wrong.
        PolicyError: an unknown station, an over-allocation, outside the validity window.
    """
    envelope = Envelope.from_json(envelope_bytes, max_size=MAX_ENVELOPE_SIZE, what="release envelope")
    trusted = policy.trusted(policy.approvers)
    names = {key.key_id: holder for holder, key in policy.approvers.items()}
    found = inspect_signatures(envelope, trusted, threshold=policy.approvers_threshold, what="release approvals")
    if found.invalid:
        raise SignatureError(
            f"release approvals: the signature of {names[found.invalid[0]]} does not verify (forged or altered)"
        )
    if require_promoted:
        if policy.release_signer is None:
            raise PolicyError(f"trust policy v{policy.version} names no release signer")
        signer = {policy.release_signer.key_id: policy.release_signer.public_key}
        promotion = inspect_signatures(envelope, signer, what="release signature")
        if promotion.invalid:
            raise SignatureError(
                "release signature: the release signer's signature does not verify (forged or altered)"
            )
        if not promotion.valid:
            raise ThresholdError(
                "the release was never promoted: the release signer "
                f"(key {policy.release_signer.key_id[:16]} in trust policy v{policy.version}) has not signed it; "
                f"release approvals: {_approval_line(found, names)}"
            )
    if not found.met:
        raise ThresholdError(f"release approvals: {_approval_line(found, names)}")
    statement, _ = open_statement(
        envelope, trusted, policy.approvers_threshold, what="release approvals", predicate_type=RELEASE_PREDICATE
    )
    release = parse_release(statement)
    if hashlib.sha256(header_bytes).hexdigest() != release.header_sha256:
        raise FormatError("the bundle's header is not the one the release statement was signed over")
    check_allocation(release, policy, station=station, check_stations=check_stations)
    if check_window:
        release.check_window(now)
    return release, approvals_of(envelope, policy)


def _approval_line(found: VerificationResult, names: Mapping[str, str]) -> str:
    """``1 of 2 required, by approver-1; not yet: approver-2, approver-3``: approvers by their policy names."""
    valid = sorted(names[k] for k in found.valid)
    if len(valid) < found.threshold:
        line = f"{len(valid)} of {found.threshold} required"
    else:
        line = f"{len(valid)} approval{'' if len(valid) == 1 else 's'}, {found.threshold} required"
    line += f", by {', '.join(valid)}" if valid else ", none yet"
    pending = sorted(names[k] for k in found.missing)
    if pending and len(valid) < found.threshold:
        line += f"; not yet: {', '.join(pending)}"
    if found.unknown:
        line += f"; {len(found.unknown)} signature(s) by keys that are not approvers, not counted"
    return line


def check_allocation(
    release: Release, policy: TrustPolicy, *, station: str | None = None, check_stations: bool = True
) -> None:
    """Every allocated station (or only ``station``, or none without ``check_stations``) is enrolled and a
    recipient with its current key; the counts fit the total.

    Raises:
        PolicyError: the first problem found.
    """
    allocated = sum(release.allocation.values())
    if allocated > release.total:
        raise PolicyError(f"the allocation ({allocated} units) is larger than the production count ({release.total})")
    checked = list(release.allocation) if station is None else [s for s in release.allocation if s == station]
    if not check_stations:
        checked = []
    for station_id in checked:
        enrolled = policy.stations.get(station_id)
        if enrolled is None:
            raise PolicyError(f"station '{station_id}' is not enrolled in trust policy v{policy.version}")
        if release.recipients.get(station_id) != enrolled.decryption.key_id:
            raise PolicyError(f"station '{station_id}' is not a recipient with its enrolled decryption key")


def _list(value: object, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise FormatError(f"release statement: {what} must be a list")
    return value


def _mapping(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise FormatError(f"release statement: {what} must be an object")
    return value


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise FormatError(f"release statement: {what} must be non-empty text")
    return value


def _count(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise FormatError(f"release statement: {what} must be a whole number")
    return value


def _hex(value: object, what: str) -> str:
    if not isinstance(value, str) or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise FormatError(f"release statement: {what} must be a lower-case hex SHA-256")
    return value
