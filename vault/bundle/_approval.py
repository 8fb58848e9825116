"""Verify, inspect, approve and promote a bundle against the trust policy.

Approvers sign the statement's bytes with their own tokens; the release
signer signs last, and only once the approvers' threshold is met. Every
command verifies the whole bundle first: the header against the statement,
every image's ciphertext against its digest, and every signature present, so
a statement that changed since someone approved it is refused, never signed.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from vault import container
from vault.bundle._log import LogEntry, append_promotion, last_counter, release_signer_ids, verify_log
from vault.crypto import Signer
from vault.errors import FormatError, PolicyError, SignatureError, ThresholdError
from vault.formats import Envelope, Statement, add_signature, verify_envelope
from vault.policy import TrustPolicy
from vault.release import MAX_ENVELOPE_SIZE, Approvals, Release, approvals_of, check_allocation, parse_release


@dataclass(frozen=True)
class BundleView:
    """A verified bundle, for a reviewer and for the commands that sign it."""

    path: Path
    release: Release
    approvals: Approvals
    envelope: Envelope
    header: container.Header
    size: int


def verify_bundle(path: Path, policy: TrustPolicy) -> BundleView:
    """Check everything that can be checked without a station's key.

    Raises:
        FormatError: not a bundle, truncated, or its parts do not match the statement.
        SignatureError: a signature present does not verify (the statement changed since).
        PolicyError: an allocated station is unknown or not a recipient with its key.
    """
    with container.BundleReader(path) as reader:
        envelope = Envelope.from_json(reader.envelope_bytes, max_size=MAX_ENVELOPE_SIZE, what="release envelope")
        statement = Statement.from_bytes(envelope.payload, what="release statement")
        release = parse_release(statement)
        if hashlib.sha256(reader.header_bytes).hexdigest() != release.header_sha256:
            raise FormatError(f"{path}: the header is not the one the release statement describes")
        header = reader.header
        if header.bundle_id != release.bundle_id:
            raise FormatError(f"{path}: the header's bundle id is not the statement's")
        listed = {image.name: image for image in release.images}
        if [e.name for e in header.images] != [i.name for i in release.images]:
            raise FormatError(f"{path}: the header's images are not the statement's")
        for entry in header.images:
            image = listed[entry.name]
            if entry.ciphertext_sha256 != image.ciphertext_sha256 or entry.plaintext_length != image.length:
                raise FormatError(f"{path}: image {entry.name}: the header does not match the statement")
            if reader.ciphertext_digest(entry.name) != entry.ciphertext_sha256:
                raise FormatError(f"{path}: image {entry.name}: its encrypted bytes were changed")
        size = path.stat().st_size
    check_allocation(release, policy)
    approvals = approvals_of(envelope, policy)
    if approvals.invalid:
        raise SignatureError(
            f"{path}: the signature of key {approvals.invalid[0][:16]} does not verify: "
            "the statement changed after it was signed"
        )
    signer = policy.release_signer
    if signer and signer.key_id in envelope.keyids and not approvals.promoted:
        raise SignatureError(f"{path}: the release signer's signature does not verify")
    unknown = [k for k in envelope.keyids if k not in _known(policy)]
    if unknown:
        raise PolicyError(
            f"{path}: signed by key {unknown[0][:16]}, which holds no role in trust policy v{policy.version}"
        )
    return BundleView(path, release, approvals, envelope, header, size)


def _with_signature(view: BundleView, key: Signer, policy: TrustPolicy) -> BundleView:
    """Add ``key``'s signature to the verified bundle; only the envelope changes, so nothing is hashed again."""
    signed = add_signature(view.envelope, key)
    container.replace_envelope(view.path, signed.to_json())
    return dataclasses.replace(
        view, envelope=signed, approvals=approvals_of(signed, policy), size=view.path.stat().st_size
    )


def _refuse_expired(release: Release, now: datetime) -> None:
    """Approving or promoting ahead of ``not_before`` is fine; after ``expires`` it is not."""
    if now >= release.expires:
        raise PolicyError(
            f"release {release.product} {release.version} expired at {release.expires:%Y-%m-%dT%H:%M:%SZ}"
        )


def _known(policy: TrustPolicy) -> set[str]:
    known = {key.key_id for key in policy.approvers.values()}
    if policy.release_signer:
        known.add(policy.release_signer.key_id)
    return known


def approve_bundle(path: Path, key: Signer, policy: TrustPolicy, *, now: datetime) -> BundleView:
    """Add ``key``'s approval (an approver's token key) to the bundle at ``path``.

    Raises:
        PolicyError: the key is not an approver (or revoked), or the release is expired.
        InputError: this key already approved.
        VaultError: the bundle does not verify (see :func:`verify_bundle`).
    """
    view = verify_bundle(path, policy)
    holder = next((h for h, k in policy.approvers.items() if k.key_id == key.key_id), None)
    if holder is None:
        revoked = policy.revocation(key.key_id)
        why = f"revoked in v{revoked.version}: {revoked.reason}" if revoked else "not an approver"
        raise PolicyError(f"key {key.key_id[:16]} is {why} in trust policy v{policy.version}")
    if key.key_id in view.envelope.keyids:
        raise PolicyError(f"{holder} has already approved this release; an approver counts once")
    if view.approvals.promoted:
        raise PolicyError("this release is already promoted")
    _refuse_expired(view.release, now)
    return _with_signature(view, key, policy)


def promote_bundle(
    path: Path, key: Signer, policy: TrustPolicy, log: Path, *, now: datetime
) -> tuple[BundleView, LogEntry]:
    """Sign the bundle as the release signer, once the approvers' threshold is met, and log it.

    Raises:
        PolicyError: not the release signer; expired; a security counter below the last promoted.
        ThresholdError: too few approvals (says how many are missing).
        VaultError: the bundle or the promotion log does not verify.
    """
    view = verify_bundle(path, policy)
    signer = policy.release_signer
    if signer is None or key.key_id != signer.key_id:
        raise PolicyError(f"key {key.key_id[:16]} is not the release signer of trust policy v{policy.version}")
    if view.approvals.promoted:
        raise PolicyError("this release is already promoted")
    if view.approvals.missing:
        present = ", ".join(view.approvals.approvers) or "none"
        raise ThresholdError(
            f"{view.approvals.threshold} approvals are needed, {len(view.approvals.approvers)} present ({present}): "
            f"{view.approvals.missing} more missing"
        )
    verify_envelope(view.envelope, policy.trusted(policy.approvers), policy.approvers_threshold, what="approvals")
    _refuse_expired(view.release, now)
    report = verify_log(log, release_signer_ids(policy))
    last = last_counter(report, view.release.product)
    if last is not None and view.release.security_counter < last:
        raise PolicyError(
            f"security counter {view.release.security_counter} is lower than {last}, "
            f"the last promoted for {view.release.product} (rollback)"
        )
    if any(e.bundle_id == view.release.bundle_id for e in report.entries):
        raise PolicyError(f"bundle {view.release.bundle_id} is already in the promotion log")
    promoted = _with_signature(view, key, policy)
    entry = append_promotion(log, report, view.release, view.approvals.approvers, key, now)
    return promoted, entry
