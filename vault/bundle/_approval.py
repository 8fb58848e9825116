"""Verify, inspect and approve a bundle against the trust policy.

Approvers sign the statement's bytes with their own tokens; the release
signer signs last, and only once the approvers' threshold is met
(:mod:`vault.bundle._promotion`). Every command verifies the whole bundle
first: the header against the statement, every image's ciphertext against
its digest, and every signature present, so a statement that changed since
someone approved it is refused, never signed.

An approver can sign the bundle itself (its envelope is rewritten) or write
a detached approval (:mod:`vault.bundle._detached`) from the bundle or from
the statement ``vault bundle inspect --export-statement`` wrote; the release
manager merges those. Approving is two steps, so that a person sees what
they sign before they sign it: :func:`prepare_approval` verifies and checks
everything and returns what will be signed; :func:`approve_in_place` or
:func:`approve_detached` signs it.

Example::

    request = prepare_approval(Path("release.vbundle"), key.key_id, policy, now=now,
                               expect_statement="3f2a...")
    show(request.release)                      # the approver reads it, then confirms
    approve_in_place(request, key, policy)     # or approve_detached(request, key)
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from vault import container
from vault.crypto import Signer
from vault.errors import FormatError, InputError, PolicyError, SignatureError
from vault.formats import Envelope, Signature, Statement, add_signature
from vault.policy import TrustPolicy
from vault.release import MAX_ENVELOPE_SIZE, Approvals, Release, approvals_of, check_allocation, parse_release

_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class BundleView:
    """A verified bundle, for a reviewer and for the commands that sign it."""

    path: Path
    release: Release
    approvals: Approvals
    envelope: Envelope
    header: container.Header
    size: int


@dataclass(frozen=True)
class StatementView:
    """A verified release statement exported from a bundle (``inspect --export-statement``).

    Its signatures are checked; the images' encrypted bytes are not (they are
    not in the file): the statement binds them by digest, and merging an
    approval into the bundle verifies the whole bundle.
    """

    path: Path
    release: Release
    approvals: Approvals
    envelope: Envelope


@dataclass(frozen=True)
class ApprovalRequest:
    """What an approver is about to sign, verified: the release, who signs, and where it came from.

    ``view`` is the bundle when the approval goes into it, or when a
    detached approval is made from it; it is ``None`` for an exported
    statement (only a detached approval can be made from that).
    """

    source: Path
    release: Release
    approvals: Approvals
    envelope: Envelope
    holder: str
    view: BundleView | None


def verify_bundle(path: Path, policy: TrustPolicy) -> BundleView:
    """Check everything that can be checked without a station's key.

    Raises:
        FormatError: not a bundle, truncated, or its parts do not match the statement.
        SignatureError: a signature present does not verify (the statement changed since).
        PolicyError: an allocated station is unknown or not a recipient with its key.
    """
    with container.BundleReader(path) as reader:
        envelope, release = _open(reader.envelope_bytes, path)
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
    approvals = _check_signatures(envelope, release, policy, path)
    return BundleView(path, release, approvals, envelope, header, size)


def verify_statement_file(path: Path, policy: TrustPolicy) -> StatementView:
    """Read and check a statement ``vault bundle inspect --export-statement`` wrote.

    Raises:
        InputError: the file cannot be read, or is larger than an envelope can be.
        FormatError: not a release statement.
        SignatureError, PolicyError: as :func:`verify_bundle`.
    """
    data = read_capped(path, MAX_ENVELOPE_SIZE, "a release statement")
    envelope, release = _open(data, path)
    return StatementView(path, release, _check_signatures(envelope, release, policy, path), envelope)


def export_statement(view: BundleView, out: Path, *, overwrite: bool = False) -> Path:
    """Write the bundle's envelope (the statement and the signatures so far) to ``out``, atomically.

    Raises:
        InputError: ``out`` exists (unless ``overwrite``) or cannot be written.
    """
    from vault._files import write_new

    return write_new(out, view.envelope.to_json(), overwrite=overwrite)


def is_bundle(path: Path) -> bool:
    """Whether ``path`` starts like a bundle (else it is taken for an exported statement)."""
    try:
        with path.open("rb") as f:
            return f.read(len(container.MAGIC)) == container.MAGIC
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from e


def read_capped(path: Path, cap: int, what: str) -> bytes:
    """At most ``cap`` bytes of ``path``, from any kind of file; more is refused without reading it all.

    Raises:
        InputError: it cannot be read, or holds more than ``cap`` bytes.
    """
    try:
        with path.open("rb") as f:
            data = f.read(cap + 1)
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from e
    if len(data) > cap:
        size = f"{cap // 2**20} MiB" if cap >= 2**20 else f"{cap // 1024} KiB"
        raise InputError(f"{path} is larger than {what} can be ({size})")
    return data


def _open(envelope_bytes: bytes, where: Path) -> tuple[Envelope, Release]:
    envelope = Envelope.from_json(envelope_bytes, max_size=MAX_ENVELOPE_SIZE, what=f"{where}: release envelope")
    statement = Statement.from_bytes(envelope.payload, what=f"{where}: release statement")
    release = parse_release(statement)
    if hashlib.sha256(envelope.payload).hexdigest() != release.statement_sha256:
        # the digest people read (inspect, approve) must be the digest of the bytes they sign
        raise FormatError(f"{where}: the release statement is not in canonical form; vault did not write it")
    return envelope, release


def _check_signatures(envelope: Envelope, release: Release, policy: TrustPolicy, where: Path) -> Approvals:
    check_allocation(release, policy)
    approvals = approvals_of(envelope, policy)
    if approvals.invalid:
        holder = holder_of(approvals.invalid[0], policy) or f"key {approvals.invalid[0][:16]}"
        raise SignatureError(
            f"{where}: the signature of {holder} does not verify: the statement changed after it was signed"
        )
    signer = policy.release_signer
    if signer and signer.key_id in envelope.keyids and not approvals.promoted:
        raise SignatureError(f"{where}: the release signer's signature does not verify")
    unknown = [k for k in envelope.keyids if k not in _known(policy)]
    if unknown:
        raise PolicyError(
            f"{where}: signed by key {unknown[0][:16]}, which holds no role in trust policy v{policy.version}"
        )
    return approvals


def holder_of(key_id: str, policy: TrustPolicy) -> str | None:
    """The approver (by the name the policy gives them) whose key this is."""
    return next((h for h, k in policy.approvers.items() if k.key_id == key_id), None)


def approver_holder(key_id: str, policy: TrustPolicy) -> str:
    """The approver whose key this is; anyone else is refused.

    Raises:
        PolicyError: the key is not an approver's in ``policy`` (or was revoked).
    """
    holder = holder_of(key_id, policy)
    if holder is None:
        revoked = policy.revocation(key_id)
        why = f"revoked in v{revoked.version}: {revoked.reason}" if revoked else "not an approver"
        raise PolicyError(f"key {key_id[:16]} is {why} in trust policy v{policy.version}")
    return holder


def approval_count(approvals: Approvals) -> str:
    """``3 approvals, 2 required`` (never "3 of 2"), and whether it is enough."""
    n = len(approvals.approvers)
    text = f"{n} approval{'' if n == 1 else 's'}, {approvals.threshold} required"
    if approvals.missing:
        return f"{text}: {approvals.missing} more needed"
    return f"{text}: enough to promote"


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


def prepare_approval(
    path: Path,
    key_id: str,
    policy: TrustPolicy,
    *,
    now: datetime,
    expect_statement: str | None = None,
    detached: bool = False,
) -> ApprovalRequest:
    """Verify what ``path`` holds and check that ``key_id``'s approver may sign it; sign nothing yet.

    Args:
        path: a bundle, or a statement exported by ``vault bundle inspect --export-statement``.
        key_id: the approver's key id (of the key in their token).
        policy: the verified current trust policy.
        now: the reference time.
        expect_statement: the statement digest (hex) the approver inspected; another one is refused.
        detached: the approval will go to a file of its own, not into the bundle.

    Raises:
        PolicyError: not an approver (or revoked), already approved, already promoted, expired,
            or not the statement the approver expected.
        InputError: a statement file given for an approval that is not detached.
        VaultError: the bundle or the statement does not verify.
    """
    if is_bundle(path):
        view: BundleView | None = verify_bundle(path, policy)
        assert view is not None
        release, approvals, envelope = view.release, view.approvals, view.envelope
    else:
        if not detached:
            raise InputError(
                f"{path} is not a bundle (an exported statement?): an approval of a statement is written "
                "to a file of its own: add --detached -o APPROVAL.json"
            )
        view = None
        exported = verify_statement_file(path, policy)
        release, approvals, envelope = exported.release, exported.approvals, exported.envelope
    if expect_statement is not None:
        check_expected(release, expect_statement)
    holder = approver_holder(key_id, policy)
    if key_id in envelope.keyids:
        raise PolicyError(f"{holder} has already approved this release; an approver counts once")
    if approvals.promoted:
        raise PolicyError(f"release {release.product} {release.version} is already promoted")
    refuse_expired(release, now)
    return ApprovalRequest(path, release, approvals, envelope, holder, view)


def check_expected(release: Release, expected: str) -> None:
    """Refuse a statement whose digest is not the one the approver inspected.

    Raises:
        InputError: ``expected`` is not a 64-digit hex SHA-256.
        PolicyError: the statement is another one.
    """
    wanted = expected.strip().lower()
    if _HEX64.fullmatch(wanted) is None:
        raise InputError(f"--expect-statement must be the 64 hex digits inspect shows as 'statement', not '{expected}'")
    if wanted != release.statement_sha256:
        raise PolicyError(
            f"the statement of {release.product} {release.version} is {release.statement_sha256[:16]}..., "
            f"not {wanted[:16]}..., the one you expected: this is not the release you inspected; nothing was signed"
        )


def approve_in_place(request: ApprovalRequest, key: Signer, policy: TrustPolicy) -> BundleView:
    """Add the approver's signature to the bundle ``request`` was prepared from (its envelope is rewritten).

    Raises:
        InputError: the request holds no bundle, or the bundle changed since it was verified
            (someone else approved meanwhile: run the approval again).
    """
    view = request.view
    if view is None:
        raise InputError(f"{request.source} is not a bundle: only a detached approval can be made from it")
    if key.key_id != _signer_of(request, policy):
        raise InputError("the key given is not the key the approval was prepared for")
    refuse_changed(view)
    return with_signature(view, key, policy)


def refuse_changed(view: BundleView) -> None:
    """Refuse a bundle whose envelope changed since ``view`` verified it (its rewrite would drop a signature).

    Raises:
        InputError: it changed (someone approved or promoted it meanwhile).
    """
    with container.BundleReader(view.path) as reader:
        current = reader.envelope_bytes
    if current != view.envelope.to_json() and Envelope.from_json(current) != view.envelope:
        raise InputError(
            f"{view.path} changed since it was verified (an approval was added meanwhile); "
            "nothing was written: run the command again"
        )


def approve_detached(request: ApprovalRequest, key: Signer) -> Signature:
    """The approver's signature over the statement's bytes, the same one it would add to the bundle.

    Raises:
        InputError: the token's signature does not verify under the key's public key.
    """
    signed = add_signature(Envelope(request.envelope.payload_type, request.envelope.payload), key)
    return signed.signatures[0]


def _signer_of(request: ApprovalRequest, policy: TrustPolicy) -> str:
    return policy.approvers[request.holder].key_id


def approve_bundle(path: Path, key: Signer, policy: TrustPolicy, *, now: datetime) -> BundleView:
    """Add ``key``'s approval (an approver's token key) to the bundle at ``path``, without asking anyone.

    Raises:
        PolicyError: the key is not an approver (or revoked), or the release is expired.
        VaultError: the bundle does not verify (see :func:`verify_bundle`).
    """
    return approve_in_place(prepare_approval(path, key.key_id, policy, now=now), key, policy)
