"""Detached approvals: an approver's signature over a release statement, in a small file of its own.

Approvers need not pass a bundle of many GiB from hand to hand: each one
inspects the bundle (or the statement ``vault bundle inspect
--export-statement`` wrote), signs the statement into an approval file, and
gives that to the release manager, who merges them all at once with
:func:`add_approvals` (``vault bundle add-approvals``). The signature is the
one ``approve`` would add to the bundle: ECDSA over the DSSE PAE of the
statement's bytes, so a merged approval is indistinguishable from one made
in place. The file (canonical JSON, at most 64 KiB)::

    {"_type": "https://vault.dev/release-approval/v1",
     "approver": "approver-1", "bundle_id": "<32 hex>",
     "product": "example-sensor", "version": "1.4.0",
     "statement_sha256": "<hex of the statement's bytes>",
     "payload_type": "application/vnd.in-toto+json",
     "keyid": "<the approver's key id>", "sig": "<base64 DER ECDSA>"}

Only ``payload_type``, ``keyid`` and ``sig`` are trusted, and only after the
signature verifies over the bundle's own statement; the other fields say
what the approver meant to approve, so that an approval of another release
is refused with a line that says which.

Example::

    merged = add_approvals(Path("release.vbundle"), [Path("erin.json"), Path("farid.json")],
                           policy, now=datetime.now(UTC))
    print(merged.added, merged.view.approvals.missing)
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from vault import container
from vault._files import write_new
from vault.bundle._approval import (
    ApprovalRequest,
    BundleView,
    holder_of,
    read_capped,
    refuse_changed,
    refuse_expired,
    verify_bundle,
)
from vault.crypto import verify_signature
from vault.errors import FormatError, InputError, PolicyError, SignatureError
from vault.formats import Envelope, Signature, canonical_json, pae, parse_json
from vault.formats._json import check_fields, quote
from vault.policy import TrustPolicy
from vault.release import approvals_of

__all__ = ["APPROVAL_TYPE", "DetachedApproval", "Merged", "add_approvals", "read_approval", "write_approval"]

APPROVAL_TYPE = "https://vault.dev/release-approval/v1"
MAX_APPROVAL_SIZE = 64 * 1024
_FIELDS = frozenset(
    {"_type", "approver", "bundle_id", "product", "version", "statement_sha256", "payload_type", "keyid", "sig"}
)


@dataclass(frozen=True)
class DetachedApproval:
    """One approver's signature over one release statement, and what it says it approves."""

    approver: str
    bundle_id: str
    product: str
    version: str
    statement_sha256: str
    payload_type: str
    signature: Signature

    def to_json(self) -> bytes:
        """The approval file's bytes (canonical JSON)."""
        return canonical_json(
            {
                "_type": APPROVAL_TYPE,
                "approver": self.approver,
                "bundle_id": self.bundle_id,
                "product": self.product,
                "version": self.version,
                "statement_sha256": self.statement_sha256,
                "payload_type": self.payload_type,
                "keyid": self.signature.keyid,
                "sig": base64.b64encode(self.signature.sig).decode("ascii"),
            }
        )

    @classmethod
    def from_json(cls, data: bytes, *, what: str) -> DetachedApproval:
        """Parse an approval file strictly; nothing is verified here.

        Raises:
            FormatError: not an approval file, or a field is missing, unknown or malformed.
        """
        document = parse_json(data, max_size=MAX_APPROVAL_SIZE, what=what)
        if not isinstance(document, dict) or document.get("_type") != APPROVAL_TYPE:
            raise FormatError(f"{what} is not a vault release approval (made by 'vault bundle approve --detached')")
        d = check_fields(document, _FIELDS, what=what)
        text = {k: _text(d[k], k, what) for k in _FIELDS - {"_type"}}
        try:
            sig = base64.b64decode(text["sig"], validate=True)
        except (binascii.Error, ValueError) as e:
            raise FormatError(f"{what}: sig is not base64") from e
        try:
            signature = Signature(text["keyid"], sig)
        except FormatError as e:
            raise FormatError(f"{what}: {e}") from e
        return cls(
            approver=text["approver"],
            bundle_id=text["bundle_id"],
            product=text["product"],
            version=text["version"],
            statement_sha256=text["statement_sha256"],
            payload_type=text["payload_type"],
            signature=signature,
        )


@dataclass(frozen=True)
class Merged:
    """What :func:`add_approvals` did: the bundle now, and whose approvals were added (policy names)."""

    view: BundleView
    added: tuple[str, ...]


def write_approval(request: ApprovalRequest, signature: Signature, out: Path, *, overwrite: bool = False) -> Path:
    """Write the approval file for ``signature`` (made over ``request``'s statement) to ``out``, atomically.

    Raises:
        InputError: ``out`` exists (unless ``overwrite``) or cannot be written.
    """
    r = request.release
    approval = DetachedApproval(
        request.holder, r.bundle_id, r.product, r.version, r.statement_sha256, request.envelope.payload_type, signature
    )
    return write_new(out, approval.to_json(), overwrite=overwrite)


def read_approval(path: Path) -> DetachedApproval:
    """Read an approval file (at most 64 KiB are read).

    Raises:
        InputError: it cannot be read or is too large.
        FormatError: it is not an approval file.
    """
    return DetachedApproval.from_json(read_capped(path, MAX_APPROVAL_SIZE, "an approval file"), what=f"{path}")


def add_approvals(path: Path, approvals: Sequence[Path], policy: TrustPolicy, *, now: datetime) -> Merged:
    """Merge detached approvals into the bundle at ``path``: all of them, or none.

    Each must be over this bundle's statement, by an approver of ``policy``
    whose signature verifies, and not by one who approved already (in the
    bundle or in another of the files). The bundle is verified whole first
    and rewritten once, atomically.

    Raises:
        InputError: no file given; one cannot be read.
        FormatError: a file is not an approval.
        PolicyError: another statement, not an approver (or revoked), an approver twice,
            a promoted or expired release.
        SignatureError: a signature does not verify over this bundle's statement.
        VaultError: the bundle does not verify.
    """
    if not approvals:
        raise InputError("name at least one approval file to add")
    view = verify_bundle(path, policy)
    r = view.release
    if view.approvals.promoted:
        raise PolicyError(f"release {r.product} {r.version} is already promoted: approvals can no longer be added")
    refuse_expired(r, now)
    envelope = view.envelope
    signed_by: dict[str, Path] = {}
    new: list[Signature] = []
    names: list[str] = []
    message = pae(envelope.payload_type, envelope.payload)
    for file in approvals:
        a = read_approval(file)
        if a.statement_sha256 != r.statement_sha256 or a.payload_type != envelope.payload_type:
            about = "this bundle" if a.bundle_id == r.bundle_id else f"bundle {a.bundle_id}"
            raise PolicyError(
                f"{file}: approves another statement ({a.product} {a.version}, {about}, statement "
                f"{a.statement_sha256[:16]}...), not this bundle's ({r.product} {r.version}, statement "
                f"{r.statement_sha256[:16]}...); nothing was added"
            )
        keyid = a.signature.keyid
        holder = holder_of(keyid, policy)
        if holder is None:
            revoked = policy.revocation(keyid)
            why = f"was revoked in v{revoked.version} ({revoked.reason})" if revoked else "is not an approver's"
            raise PolicyError(
                f"{file}: signed by key {keyid[:16]}, which {why} in trust policy v{policy.version}; nothing was added"
            )
        try:
            verify_signature(policy.approvers[holder].public_key, message, a.signature.sig)
        except SignatureError as e:
            raise SignatureError(
                f"{file}: the signature of {holder} does not verify over this bundle's statement "
                "(altered, or made over other bytes); nothing was added"
            ) from e
        if keyid in envelope.keyids:
            raise PolicyError(f"{file}: {holder} has already approved this bundle; an approver counts once")
        if keyid in signed_by:
            raise PolicyError(
                f"{file}: {holder} approved twice ({signed_by[keyid]} and {file}); an approver counts once; "
                "nothing was added"
            )
        signed_by[keyid] = file
        new.append(a.signature)
        names.append(holder)
    merged = Envelope(envelope.payload_type, envelope.payload, (*envelope.signatures, *new))
    refuse_changed(view)
    container.replace_envelope(path, merged.to_json())
    after = dataclasses.replace(view, envelope=merged, approvals=approvals_of(merged, policy), size=path.stat().st_size)
    return Merged(after, tuple(names))


def _text(value: Any, field: str, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 4096:
        raise FormatError(f"{what}: {field} must be non-empty text")
    if field == "statement_sha256" and (len(value) != 64 or any(c not in "0123456789abcdef" for c in value)):
        raise FormatError(f"{what}: statement_sha256 {quote(value)} is not a lower-case hex SHA-256")
    return value
