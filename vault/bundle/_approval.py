"""Verify, inspect and approve a bundle against the trust policy.

Approvers sign the statement's bytes with their own tokens; the release
signer signs last, and only once the approvers' threshold is met
(:mod:`vault.bundle._promotion`). Every command verifies the whole bundle
first: the header against the statement, every image's ciphertext against
its digest, and every signature present, so a statement that changed since
someone approved it is refused, never signed.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from vault import container
from vault.crypto import Signer
from vault.errors import FormatError, PolicyError, SignatureError
from vault.formats import Envelope, Statement, add_signature
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


def with_signature(view: BundleView, key: Signer, policy: TrustPolicy) -> BundleView:
    """Add ``key``'s signature to the verified bundle; only the envelope changes, so nothing is hashed again."""
    signed = add_signature(view.envelope, key)
    container.replace_envelope(view.path, signed.to_json())
    return dataclasses.replace(
        view, envelope=signed, approvals=approvals_of(signed, policy), size=view.path.stat().st_size
    )


def refuse_expired(release: Release, now: datetime) -> None:
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
    refuse_expired(view.release, now)
    return with_signature(view, key, policy)
