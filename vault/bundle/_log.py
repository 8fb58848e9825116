"""The promotion log: one signed, hash-chained line per promoted release.

Each line is canonical JSON::

    {"index": 0, "time": "...Z", "product": "...", "version": "...", "security_counter": 7,
     "bundle_id": "...", "statement_sha256": "...", "header_sha256": "...",
     "approvers": ["approver-1", "approver-3"], "signer_spki": "<b64>",
     "prev": "<hash of the line before, or the genesis hash>", "hash": "<SHA-256 of the fields above>",
     "signature": "<b64 DER ECDSA by the release signer over the hash>"}

Removing, inserting, reordering or editing a line breaks the chain or a
signature. ``vault bundle log verify`` checks the whole file; promotion
checks it before appending, so a tampered log stops promotions. A log cut
back to an earlier entry, emptied or swapped for another still chains: the
release signer's token holds the log's head, and both commands check the
log against it (:mod:`vault.bundle._promotion`).
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from vault.crypto import Signer, key_id, load_spki, spki_der, verify_signature
from vault.errors import FormatError, InputError, PolicyError, SignatureError
from vault.formats import canonical_json, parse_json
from vault.formats._json import check_fields
from vault.policy import TrustPolicy, format_time
from vault.release import Release

GENESIS = hashlib.sha256(b"vault-promotion-log-v1").hexdigest()
MAX_LINE = 64 * 1024
MAX_LOG = 256 * 1024 * 1024
_BODY = frozenset(
    {
        "index",
        "time",
        "product",
        "version",
        "security_counter",
        "bundle_id",
        "statement_sha256",
        "header_sha256",
        "approvers",
        "signer_spki",
        "prev",
    }
)
_FIELDS = _BODY | {"hash", "signature"}


@dataclass(frozen=True)
class LogEntry:
    """One verified promotion."""

    index: int
    time: str
    product: str
    version: str
    security_counter: int
    bundle_id: str
    statement_sha256: str
    approvers: tuple[str, ...]
    signer_key_id: str
    hash: str


@dataclass(frozen=True)
class LogReport:
    """What a verified log holds."""

    entries: tuple[LogEntry, ...]
    head: str


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    try:
        if path.stat().st_size > MAX_LOG:
            raise FormatError(f"{path}: the promotion log is larger than {MAX_LOG // (1024 * 1024)} MiB")
        with path.open("rb") as f:
            for number, line in enumerate(f, 1):
                if len(line) > MAX_LINE:
                    raise FormatError(f"{path}:{number}: line longer than {MAX_LINE} bytes")
                if not line.endswith(b"\n"):
                    raise FormatError(f"{path}:{number}: the last line is cut short (no newline)")
                yield number, line[:-1]
    except OSError as e:
        raise InputError(f"cannot read the promotion log {path}: {e.strerror}") from e


def verify_log(path: Path, signer_key_ids: Sequence[str]) -> LogReport:
    """Check every line's chain, hash and signature; signers must be among ``signer_key_ids``.

    Pass the current release signer's key id and those of earlier release
    signers (revoked ones keep their past promotions valid).

    Raises:
        FormatError: a malformed line.
        SignatureError: a line's hash or signature does not verify, or the chain is broken.
        PolicyError: a line signed by a key that was never the release signer.
    """
    if not path.exists():
        return LogReport((), GENESIS)
    entries: list[LogEntry] = []
    head = GENESIS
    for number, line in _lines(path):
        where = f"{path}:{number}"
        doc = check_fields(parse_json(line, max_size=MAX_LINE, what=where), _FIELDS, what=where)
        body = {k: doc[k] for k in _BODY}
        if doc["index"] != len(entries):
            raise SignatureError(
                f"{where}: entry {doc['index']!r} where entry {len(entries)} belongs (removed or moved)"
            )
        if doc["prev"] != head:
            raise SignatureError(f"{where}: does not follow the entry before it (removed, inserted or rewritten)")
        digest = hashlib.sha256(canonical_json(body)).hexdigest()
        if doc["hash"] != digest:
            raise SignatureError(f"{where}: the entry was altered (its hash does not match)")
        public = _public_key(doc["signer_spki"], where)
        if key_id(public) not in signer_key_ids:
            raise PolicyError(f"{where}: signed by key {key_id(public)[:16]}, which is not a release signer")
        try:
            verify_signature(public, bytes.fromhex(digest), base64.b64decode(str(doc["signature"]), validate=True))
        except (SignatureError, ValueError) as e:
            raise SignatureError(f"{where}: the release signer's signature does not verify") from e
        entries.append(
            LogEntry(
                index=doc["index"],
                time=str(doc["time"]),
                product=str(doc["product"]),
                version=str(doc["version"]),
                security_counter=int(doc["security_counter"]),
                bundle_id=str(doc["bundle_id"]),
                statement_sha256=str(doc["statement_sha256"]),
                approvers=tuple(str(a) for a in doc["approvers"]),
                signer_key_id=key_id(public),
                hash=digest,
            )
        )
        head = digest
    return LogReport(tuple(entries), head)


def release_signer_ids(policy: TrustPolicy) -> list[str]:
    """The key ids that may have signed promotions: the current release signer and revoked ones."""
    ids = [r.key_id for r in policy.revoked if r.role == "release-signer"]
    if policy.release_signer is not None:
        ids.append(policy.release_signer.key_id)
    return ids


def last_counter(report: LogReport, product: str) -> int | None:
    """The highest security counter promoted for ``product``, if any."""
    counters = [e.security_counter for e in report.entries if e.product == product]
    return max(counters) if counters else None


def append_promotion(
    path: Path, report: LogReport, release: Release, approvers: Sequence[str], signer: Signer, now: datetime
) -> LogEntry:
    """Append a promotion signed by ``signer`` after the verified ``report``; fsynced before returning."""
    body: dict[str, Any] = {
        "index": len(report.entries),
        "time": format_time(now),
        "product": release.product,
        "version": release.version,
        "security_counter": release.security_counter,
        "bundle_id": release.bundle_id,
        "statement_sha256": release.statement_sha256,
        "header_sha256": release.header_sha256,
        "approvers": sorted(approvers),
        "signer_spki": base64.b64encode(spki_der(signer.public_key)).decode(),
        "prev": report.head,
    }
    digest = hashlib.sha256(canonical_json(body)).hexdigest()
    signature = signer.sign(bytes.fromhex(digest))
    line = canonical_json({**body, "hash": digest, "signature": base64.b64encode(signature).decode()}) + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    return LogEntry(
        index=body["index"],
        time=body["time"],
        product=release.product,
        version=release.version,
        security_counter=release.security_counter,
        bundle_id=release.bundle_id,
        statement_sha256=release.statement_sha256,
        approvers=tuple(body["approvers"]),
        signer_key_id=signer.key_id,
        hash=digest,
    )


def _public_key(value: object, where: str) -> ec.EllipticCurvePublicKey:
    try:
        der = base64.b64decode(str(value), validate=True)
    except ValueError as e:
        raise FormatError(f"{where}: signer_spki is not base64") from e
    return load_spki(der, what=f"{where}: signer_spki")
