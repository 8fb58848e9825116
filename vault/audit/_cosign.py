"""``vault audit --cosign``: witness the station logs the audit verified, and write a proof per device.

After an audit, :func:`cosign` picks, per station, the largest checkpoint the
audit verified such that no finding at or above the chosen severity touches
that station's log up to that size, cosigns it with the auditor's cosigning
key (in the auditor's token; :mod:`vault.proof` has the format), and writes a
C2SP tlog-proof for every device whose current certificate is in the
cosigned part of the log. Every device the audit saw and that gets no proof
is listed as excluded, with the code of the finding that keeps it out:

- a finding at or above the severity names the device (its hardware id,
  serial, or log entry): that finding's code;
- its manifest lies beyond the cosigned size: ``log-not-cosigned``, naming
  the finding that stopped the cosignature and where;
- its last event is a scrap: ``unit-scrapped``.

A finding touches a station's log from its earliest log position on; one
that names the station but no position (or lists only some of its
evidence) touches it all, and one that names no station touches every log.
``over-allocation`` is placed at the first manifest whose unit is past the
station's allocation, so the devices before an over-run keep their proofs.

The exports are read a second time for this (the audit itself keeps no
manifest): only those the audit verified, with the auditor's decryption
key, and each root is recomputed and compared with the verified checkpoint
before anything is cosigned.

Output folder (written whole, or not at all)::

    audited.json                        the index: cosigned logs, devices, excluded devices
    checkpoints/<station>-<size>.cosigned  each cosigned checkpoint note
    devices/<station>-<position>.tlog-proof and .pem   each device's proof and certificate
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from vault import hpke, merkle
from vault._files import write_folder
from vault.audit._findings import Finding, severity_rank
from vault.audit._report import Report
from vault.checkpoint import open_checkpoint
from vault.crypto import Signer
from vault.errors import InputError, VaultError
from vault.evidence import MAX_RECORD_SIZE, EvidenceReader
from vault.formats._json import parse_json
from vault.manifest import CERTIFIED_EVENTS, open_manifest
from vault.policy import TrustPolicy, format_time
from vault.proof import (
    ProofFile,
    cosign_checkpoint,
    cosigner_key_name,
    format_proof,
    station_origin,
    verify_device_proof,
)

__all__ = [
    "AUDITED_FORMAT",
    "NOT_COSIGNED",
    "ProvenDevice",
    "CosignedLog",
    "Cosigning",
    "Excluded",
    "cosign",
    "cosigner_holder",
]

AUDITED_FORMAT = "vault-audited-devices/v1"
"""The ``format`` of ``audited.json``."""

NOT_COSIGNED = "log-not-cosigned"
"""The exclusion code of a device whose manifest lies beyond its station's cosigned checkpoint."""


@dataclass(frozen=True)
class Excluded:
    """A device the audit saw that gets no proof, and why (a finding code and one line)."""

    station_id: str
    position: int
    hardware_id: str
    serial: str | None
    code: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "station": self.station_id,
            "position": self.position,
            "hardware_id": self.hardware_id,
            "serial": self.serial,
            "code": self.code,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class CosignedLog:
    """One station log as the cosigning saw it: the size cosigned (None: nothing) and what stopped it there."""

    station_id: str
    verified_size: int
    size: int | None
    root: str | None
    note: bytes | None
    blocked_by: str | None  # the code of the finding that stopped the cosignature short, if one did
    blocked_at: int | None  # the log position it touches first (None: the whole log)

    @property
    def file(self) -> str | None:
        return None if self.size is None else f"checkpoints/{self.station_id}-{self.size}.cosigned"

    def to_json(self) -> dict[str, Any]:
        return {
            "station": self.station_id,
            "verified_size": self.verified_size,
            "cosigned_size": self.size,
            "root": self.root,
            "checkpoint": self.file,
            "blocked_by": self.blocked_by,
            "blocked_at": self.blocked_at,
        }


@dataclass(frozen=True)
class ProvenDevice:
    """A device with a proof: its station, log position, identity, certificate and proof."""

    station_id: str
    position: int
    hardware_id: str
    serial: str | None
    event: str
    manifest_id: str
    certificate: bytes  # DER
    proof: bytes

    @property
    def stem(self) -> str:
        return f"devices/{self.station_id}-{self.position}"

    def to_json(self) -> dict[str, Any]:
        return {
            "station": self.station_id,
            "position": self.position,
            "hardware_id": self.hardware_id,
            "serial": self.serial,
            "event": self.event,
            "manifest_id": self.manifest_id,
            "certificate": f"{self.stem}.pem",
            "proof": f"{self.stem}.tlog-proof",
        }


@dataclass(frozen=True)
class Cosigning:
    """What ``--cosign`` produced: the cosigned logs, the devices with proofs, and the excluded devices."""

    generated: str
    policy_version: int
    policy_sha256: str
    severity: str
    cosigner: str
    logs: tuple[CosignedLog, ...]
    devices: tuple[ProvenDevice, ...]
    excluded: tuple[Excluded, ...]

    def to_json_value(self) -> dict[str, Any]:
        return {
            "format": AUDITED_FORMAT,
            "generated": self.generated,
            "policy": {"version": self.policy_version, "sha256": self.policy_sha256},
            "severity": self.severity,
            "cosigner": self.cosigner,
            "logs": [log.to_json() for log in self.logs],
            "devices": [d.to_json() for d in self.devices],
            "excluded": [e.to_json() for e in self.excluded],
        }

    def files(self) -> dict[str, bytes]:
        """The folder's files: relative path to bytes (see the module docstring)."""
        files = {}
        for log in self.logs:
            if log.note is not None and log.file is not None:
                files[log.file] = log.note
        for device in self.devices:
            pem = x509.load_der_x509_certificate(device.certificate).public_bytes(serialization.Encoding.PEM)
            files[f"{device.stem}.pem"] = pem
            files[f"{device.stem}.tlog-proof"] = device.proof
        text = json.dumps(self.to_json_value(), indent=2, ensure_ascii=False) + "\n"
        files["audited.json"] = text.encode("utf-8")
        return files

    def write(self, folder: Path, *, overwrite: bool = False) -> None:
        """Write the folder whole (:func:`vault._files.write_folder`).

        Raises:
            InputError: the folder exists (and ``overwrite`` is not set), or it cannot be written.
        """
        write_folder(folder, self.files(), overwrite=overwrite)


@dataclass
class _Seen:
    """One station's log as read again: leaf hashes in order and each device's last events."""

    leaves: list[bytes] = field(default_factory=list)
    notes: dict[int, bytes] = field(default_factory=dict)  # size -> checkpoint note of a verified export
    certified: dict[str, tuple[int, bytes, bytes | None, Any]] = field(default_factory=dict)  # hwid -> last
    last_event: dict[str, tuple[int, str]] = field(default_factory=dict)  # hwid -> (position, event)
    over_at: int | None = None  # first position past the station's allocation
    gap: bool = False
    read: int = 0  # one past the highest position read


def cosign(
    report: Report,
    exports: Sequence[Path],
    policy: TrustPolicy,
    *,
    decapsulator: hpke.Decapsulator,
    signer: Signer,
    severity: str = "high",
    now: datetime,
) -> Cosigning:
    """Cosign the station logs ``report`` verified and make a proof per device (see the module docstring).

    Args:
        report: the audit of ``exports``.
        exports: the export files the audit read.
        policy: the trust policy the audit checked against (its ``cosigners`` must enrol ``signer``).
        decapsulator: the auditor's decryption key, to read the exports again.
        signer: the auditor's cosigning key.
        severity: a finding at this severity or worse keeps what it touches out of the cosignature.
        now: the cosignatures' timestamp.

    Raises:
        InputError: ``signer`` is not an enrolled cosigner, or an export cannot be read again.
    """
    holder = cosigner_holder(policy, signer)
    rank = severity_rank(severity)
    blocking = [f for f in report.findings if severity_rank(f.severity) <= rank]
    allocations = _allocations(report)
    seen = {s.station_id: _read(s.station_id, report, exports, policy, decapsulator, allocations)
            for s in report.stations if s.enrolled and s.station_id in policy.stations}  # fmt: skip
    key_name = cosigner_key_name(holder)
    timestamp = int(now.timestamp())
    logs, devices, excluded = [], [], []
    for station_id, log in sorted(seen.items()):
        limit, stopper = _limit(station_id, blocking, log)
        verified = max((size for size in log.notes if size <= len(log.leaves)), default=0)
        sizes = [size for size in log.notes if size <= min(limit, len(log.leaves)) and size > 0]
        size = max(sizes, default=None)
        note = root = None
        if size is not None:
            station = policy.stations[station_id]
            origin = station_origin(station_id)
            checkpoint = open_checkpoint(log.notes[size], station.signing.public_key, origin, origin=origin)
            tree = merkle.InclusionPaths(log.leaves[:size])
            if tree.root() != checkpoint.root:
                size = None  # the audit flags a rewrite; never cosign what does not add up
            else:
                note = cosign_checkpoint(log.notes[size], signer, key_name, timestamp)
                root = checkpoint.root.hex()
        code, at = (stopper.code, _first(stopper, station_id, log)) if stopper is not None else (None, None)
        logs.append(CosignedLog(station_id, verified, size, root, note, code, at))
        for hwid, (position, envelope, der, manifest) in sorted(log.certified.items(), key=lambda kv: kv[1][0]):
            reason = _excluded(hwid, manifest.serial, station_id, position, blocking, log, size, stopper)
            if reason is None and der is None:
                reason = ("certificate-invalid", "its manifest carries no certificate")
            if reason is not None:
                excluded.append(Excluded(station_id, position, hwid, manifest.serial, *reason))
                continue
            assert note is not None and der is not None and size is not None and root is not None
            path = tree.path(position)
            merkle.verify_inclusion(position, size, log.leaves[position], path, bytes.fromhex(root))
            proof = format_proof(ProofFile(envelope, position, tuple(path), note))
            devices.append(
                ProvenDevice(station_id, position, hwid, manifest.serial, manifest.event, manifest.id, der, proof)
            )
    result = Cosigning(
        format_time(now), policy.version, policy.digest, severity, holder, tuple(logs), tuple(devices), tuple(excluded)
    )
    for device in result.devices[:1]:  # the first proof is checked as a verifier will, before anything is written
        verify_device_proof(device.certificate, device.proof, policy)
    return result


def cosigner_holder(policy: TrustPolicy, signer: Signer) -> str:
    """The policy holder id of the cosigning key ``signer``.

    Raises:
        InputError: the policy does not enrol it as a cosigner.
    """
    holder = next((h for h, k in policy.cosigners.items() if k.key_id == signer.key_id), None)
    if holder is None:
        raise InputError(
            f"key {signer.key_id[:16]} is not an auditor cosigning key of trust policy v{policy.version} "
            "(enrol it in the role ceremony, cosigners:)"
        )
    return holder


def _allocations(report: Report) -> dict[str, dict[str, int]]:
    """``{bundle id: {station: allocation}}`` of the audited bundles."""
    return {b.bundle.bundle_id: dict(b.bundle.allocation) for b in report.bundles}


def _read(
    station_id: str,
    report: Report,
    exports: Sequence[Path],
    policy: TrustPolicy,
    decapsulator: hpke.Decapsulator,
    allocations: Mapping[str, Mapping[str, int]],
) -> _Seen:
    """Read one station's verified exports again, in sequence order."""
    station = policy.stations[station_id]
    trusted = {station.signing.key_id: station.signing.public_key}
    verified = sorted(
        (e for e in report.exports if e.station_id == station_id and e.status == "verified"), key=lambda e: e.sequence
    )
    by_name = {str(Path(p).absolute()): Path(p) for p in exports}
    seen = _Seen()
    units: dict[str, int] = {}
    for summary in verified:
        path = by_name.get(summary.file, Path(summary.file))
        try:
            with EvidenceReader(path) as reader:
                data_key = reader.open(decapsulator)
                for record in reader.records(data_key):
                    value = parse_json(bytes(record), max_size=MAX_RECORD_SIZE, what="evidence record")
                    kind = value.get("type") if isinstance(value, dict) else None
                    if kind == "entry":
                        _entry(seen, value, trusted, allocations, station_id, units)
                    elif kind == "checkpoint" and summary.to_size is not None:
                        seen.notes[summary.to_size] = str(value["checkpoint"]).encode("utf-8")
        except (OSError, VaultError) as e:
            raise InputError(f"cannot read {path} again to cosign it: {e}") from e
    return seen


def _entry(
    seen: _Seen,
    value: Mapping[str, Any],
    trusted: Mapping[str, Any],
    allocations: Mapping[str, Mapping[str, int]],
    station_id: str,
    units: dict[str, int],
) -> None:
    position = value.get("sequence")
    if not isinstance(position, int) or position < seen.read:
        return  # a duplicate export's entry, already read
    seen.read = position + 1
    envelope = str(value.get("envelope", "")).encode("utf-8")
    if position == len(seen.leaves) and not seen.gap:
        seen.leaves.append(merkle.leaf_hash(envelope))
    else:
        seen.gap = True  # entries missing before this one: the log is cosigned (if at all) before the gap
    try:
        manifest = open_manifest(envelope, trusted)
    except VaultError:
        return  # a finding of the audit's (signature-invalid, manifest-malformed) keeps it out
    seen.last_event[manifest.hardware_id] = (position, manifest.event)
    allocation = allocations.get(manifest.bundle_id, {}).get(station_id)
    if manifest.unit is not None and allocation is not None and manifest.unit > allocation and seen.over_at is None:
        seen.over_at = position
    if manifest.event in CERTIFIED_EVENTS:
        raw = value.get("certificate")
        der = base64.b64decode(raw) if isinstance(raw, str) else None
        seen.certified[manifest.hardware_id] = (position, envelope, der, manifest)


def _touches(finding: Finding, station_id: str) -> bool:
    named = set(finding.stations) | {e.station for e in finding.evidence if e.station}
    return not named or station_id in named


def _first(finding: Finding, station_id: str, log: _Seen | None = None) -> int | None:
    """The first log position of ``station_id`` that ``finding`` touches; None when it touches the whole log."""
    if finding.code == "over-allocation" and log is not None and log.over_at is not None:
        return log.over_at
    positions = [e.position for e in finding.evidence if e.station == station_id and e.position is not None]
    if not positions or finding.truncated:
        return None
    return min(positions)


def _limit(station_id: str, blocking: Sequence[Finding], log: _Seen) -> tuple[int, Finding | None]:
    """The largest size that may be cosigned, and the finding that holds it there (None: nothing does)."""
    limit, stopper = len(log.leaves), None
    for finding in blocking:
        if not _touches(finding, station_id):
            continue
        at = _first(finding, station_id, log)
        at = 0 if at is None else at
        if stopper is None or at < limit:
            limit, stopper = min(limit, at), finding
    return limit, stopper


def _excluded(
    hwid: str,
    serial: str | None,
    station_id: str,
    position: int,
    blocking: Sequence[Finding],
    log: _Seen,
    size: int | None,
    stopper: Finding | None,
) -> tuple[str, str] | None:
    """Why the device at ``position`` gets no proof (code, one line), or None when it gets one."""
    for finding in blocking:
        named = hwid in finding.hardware_ids or (serial is not None and serial in finding.serials)
        named |= any(e.station == station_id and e.position == position for e in finding.evidence)
        if named:
            return finding.code, finding.message[:300]
    last = log.last_event.get(hwid)
    if last is not None and last[1] == "scrap":
        return "unit-scrapped", f"the device was scrapped at position {last[0]}"
    if stopper is not None and position == _first(stopper, station_id, log):
        return stopper.code, stopper.message[:300]
    if size is None or position >= size:
        cosigned = "was not cosigned" if size is None else f"was cosigned up to size {size} only"
        if stopper is None:
            why = "no verified checkpoint covers it"
        else:
            at = _first(stopper, station_id, log)
            where = "the whole log" if at is None else f"position {at}"
            why = f"{stopper.code} touches {where}"
        return NOT_COSIGNED, f"station {station_id}'s log {cosigned}: {why}"
    return None
