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

An append writes the whole line or nothing: a short write goes on with the
rest, and a failed one (a full disk) cuts the log back before the error is
raised. Only a power cut during the append can leave a last line without
its newline; :func:`verify_log` refuses it unless asked to report it
(``allow_torn``), so that promotion can remove it when the release signer's
token shows it was never promoted.

Example::

    report = verify_log(Path("promotions.log"), release_signer_ids(policy))
    print(len(report.entries), report.head)
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

from vault._files import append_whole, cut_back, open_to_read
from vault.crypto import Signer, key_id, load_spki, spki_der, verify_signature
from vault.errors import FormatError, InputError, LogError, PolicyError, SignatureError
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
class TornLine:
    """A last line without its newline: what a power cut during an append leaves. It is not verified."""

    number: int
    offset: int  # where it starts: the length of the log's whole lines
    length: int


@dataclass(frozen=True)
class LogReport:
    """What a verified log holds; ``torn`` is a cut-short last line, when one was allowed."""

    entries: tuple[LogEntry, ...]
    head: str
    torn: TornLine | None = None


def _lines(path: Path) -> Iterator[tuple[int, bytes, bool]]:
    """Each line's number, its bytes without the newline, and whether it had one (only the last may not)."""
    too_large = f"{path}: the promotion log is larger than {MAX_LOG // (1024 * 1024)} MiB"
    try:
        with os.fdopen(open_to_read(path), "rb") as f:
            if os.fstat(f.fileno()).st_size > MAX_LOG:
                raise FormatError(too_large)
            total = 0
            number = 0
            while line := f.readline(MAX_LINE + 1):  # never more than one line's cap in memory
                number += 1
                total += len(line)
                if len(line) > MAX_LINE:
                    raise FormatError(f"{path}:{number}: line longer than {MAX_LINE} bytes")
                if total > MAX_LOG:  # a pipe or a device has no size to check first
                    raise FormatError(too_large)
                whole = line.endswith(b"\n")
                yield number, line[:-1] if whole else line, whole
    except OSError as e:
        raise InputError(f"cannot read the promotion log {path}: {e.strerror}") from e


def verify_log(path: Path, signer_key_ids: Sequence[str], *, allow_torn: bool = False) -> LogReport:
    """Check every line's chain, hash and signature; signers must be among ``signer_key_ids``.

    Pass the current release signer's key id and those of earlier release
    signers (revoked ones keep their past promotions valid).

    Args:
        path: the promotion log; a missing file is an empty log.
        signer_key_ids: the key ids that may have signed its entries.
        allow_torn: report a last line without its newline in
            :attr:`LogReport.torn` (unverified, not an entry) instead of
            refusing it. Only the release signer's token can tell whether
            such a line was ever promoted (:mod:`vault.bundle._promotion`).

    Raises:
        FormatError: a malformed line, or a cut-short last line without ``allow_torn``.
        SignatureError: a line's hash or signature does not verify, or the chain is broken.
        PolicyError: a line signed by a key that was never the release signer.
    """
    if not path.exists():
        return LogReport((), GENESIS)
    entries: list[LogEntry] = []
    head = GENESIS
    offset = 0
    for number, line, whole in _lines(path):
        if not whole:
            if not allow_torn:
                raise FormatError(
                    f"{path}:{number}: the last line is cut short (no newline), as an append cut off part-way "
                    "(a power cut) leaves it; run 'vault bundle log verify' with --token (the release "
                    "signer's token) to learn whether it was promoted and what to do"
                )
            return LogReport(tuple(entries), head, TornLine(number, offset, len(line)))
        offset += len(line) + 1
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
    """Append a promotion signed by ``signer`` after the verified ``report``; fsynced before returning.

    The line is written whole or not at all: on a failed write (a full disk)
    the log is cut back to what it was before the error is raised.

    Raises:
        InputError: the log could not be written; nothing was appended.
    """
    if report.torn is not None:
        raise ValueError(f"{path}: remove the cut-short last line before appending")
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
    try:
        append_whole(path, line)
    except OSError as e:
        raise InputError(f"cannot append to the promotion log {path}: {e.strerror}; nothing was promoted") from e
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


def remove_torn(path: Path, report: LogReport) -> TornLine:
    """Cut the log back to its whole lines, removing the cut-short last line ``report`` found.

    The caller decides that the line may go (no token head covers it) and
    holds the log's lock.

    Raises:
        InputError: the log could not be cut back; nothing was removed.
    """
    torn = report.torn
    if torn is None:
        raise ValueError("the log has no cut-short last line")
    try:
        cut_back(path, torn.offset)
    except OSError as e:
        raise InputError(f"cannot remove the cut-short last line of the promotion log {path}: {e.strerror}") from e
    return torn


def last_line(path: Path, report: LogReport) -> tuple[int, bytes]:
    """Where the log's last whole line starts, and its bytes (with the newline); the log must be ``report``'s.

    Raises:
        InputError: the log cannot be read.
        LogError: the last whole line is not ``report``'s last entry (the log changed since it was verified).
    """
    if not report.entries:
        raise ValueError("the log holds no entry")
    try:
        end = report.torn.offset if report.torn is not None else path.stat().st_size
        start = max(0, end - MAX_LINE - 1)
        with path.open("rb") as f:
            f.seek(start)
            chunk = f.read(end - start)
    except OSError as e:
        raise InputError(f"cannot read the promotion log {path}: {e.strerror}") from e
    at = chunk.rfind(b"\n", 0, len(chunk) - 1) + 1
    line = chunk[at:]
    try:
        doc = parse_json(line[:-1], max_size=MAX_LINE, what=str(path))
    except FormatError:
        doc = None
    digest = doc.get("hash") if isinstance(doc, dict) else None
    if not line.endswith(b"\n") or digest != report.entries[-1].hash:
        raise LogError(f"{path} changed while it was being read; try again")
    return start + at, line


def _public_key(value: object, where: str) -> ec.EllipticCurvePublicKey:
    try:
        der = base64.b64decode(str(value), validate=True)
    except ValueError as e:
        raise FormatError(f"{where}: signer_spki is not base64") from e
    return load_spki(der, what=f"{where}: signer_spki")
