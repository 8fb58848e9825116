"""The backend's rows: each audited device's per-device secrets, opened with the secrets recipient's token.

The evidence exports carry, beside each unit's signed manifest, the secrets
the station drew for it, sealed to the device maker's secrets recipient.
:func:`export_secrets` audits the same exports in this process (the audit
engine, with the auditor's key), takes the devices it passed
(:func:`vault.audit.audited_devices`), and opens their secrets with the
recipient's key. A device the audit flagged is refused and listed with the
finding, never opened.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import hashlib
import io
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from vault._files import write_new
from vault.audit import AuditedDevice, Report, audit, audited_devices
from vault.crypto import key_id
from vault.device_secrets import SecretSpec, binding, open_secret
from vault.errors import DecryptionError, FormatError, InputError, VaultError
from vault.evidence import MAX_RECORD_SIZE, EvidenceReader
from vault.formats import parse_json
from vault.hpke import Decapsulator
from vault.manifest import CERTIFIED_EVENTS, Manifest, open_manifest
from vault.policy import TrustPolicy, format_time, load_policy

__all__ = [
    "CSV_FIELDS",
    "EXPORT_FORMAT",
    "RECIPIENT_LABEL",
    "BackendRow",
    "SecretsExport",
    "check_free",
    "export_secrets",
    "refused_csv",
    "rows_csv",
    "rows_json",
    "write_export",
]

EXPORT_FORMAT = "vault-backend-secrets/v1"
RECIPIENT_LABEL = "secrets-decrypt"
"""The label of the secrets recipient's key in the device maker's token."""
CSV_FIELDS = ("serial", "hardware_id", "secret_name", "secret_kind", "secret_hex")
SECRETS_FILE = "backend-secrets"
REFUSED_FILE = "refused-devices.csv"


@dataclass(frozen=True)
class BackendRow:
    """One secret of one audited device, as the backend stores it."""

    serial: str
    hardware_id: str
    secret_name: str
    secret_kind: str
    secret_hex: str = field(repr=False)

    def to_json(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in CSV_FIELDS}


@dataclass(frozen=True)
class SecretsExport:
    """What :func:`export_secrets` found: the rows of the passed devices, the refused devices and the audit."""

    rows: tuple[BackendRow, ...] = field(repr=False)
    refused: tuple[tuple[AuditedDevice, str], ...]
    devices: int  # passed devices whose secrets were opened
    report: Report = field(repr=False)
    fail_on: str = "high"


@dataclass
class _Unit:
    """A device's latest certified manifest that records secrets, with the sealed blobs beside it."""

    manifest: Manifest
    sealed: dict[str, bytes]


def export_secrets(
    exports: Sequence[str | os.PathLike[str]],
    *,
    policy: bytes,
    root_certificate: x509.Certificate,
    bundle_path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    auditor: Decapsulator,
    recipient: Decapsulator,
    fail_on: str = "high",
    closeouts: Iterable[str | os.PathLike[str]] = (),
    workers: int | None = None,
    audit_options: dict[str, Any] | None = None,
) -> SecretsExport:
    """Audit the exports, then open the secrets of every device the audit passed.

    Args:
        exports: the stations' evidence exports (``*.vault-evidence``).
        policy, root_certificate, bundle_path, closeouts, workers: as for :func:`vault.audit.audit`.
        auditor: the auditor's decryption key (opens the exports).
        recipient: the secrets recipient's key (opens the secrets), in the device maker's token.
        fail_on: a finding at this severity or worse that touches a device refuses it.
        audit_options: more keyword arguments for :func:`vault.audit.audit` (thresholds, max_silence).

    Raises:
        InputError: the recipient key is not the policy's secrets recipient.
        DecryptionError: a passed device's secret does not open (sealed to another key, or altered).
        VaultError: the audit cannot start (see :func:`vault.audit.audit`).
    """
    now = datetime.now(UTC).replace(microsecond=0)
    trust = load_policy(policy, root_certificate, now=now, allow_expired=True)
    _check_recipient(trust, recipient)
    report = audit(
        exports,
        policy=policy,
        root_certificate=root_certificate,
        bundle_path=bundle_path,
        decapsulator=auditor,
        workers=workers,
        closeouts=closeouts,
        now=now,
        **(audit_options or {}),
    )
    units = _sealed_units(exports, trust, auditor)
    devices = [AuditedDevice(u.manifest.station_id, hwid, u.manifest.serial) for hwid, u in sorted(units.items())]
    selection = audited_devices(report, devices, fail_on=fail_on)
    rows: list[BackendRow] = []
    refused = list(selection.refused)
    passed = 0
    for device in selection.passed:
        opened = _open_unit(units[device.hardware_id], recipient)
        if opened is None:  # the export lacks a sealed blob its manifest names, or holds another one
            refused.append((device, "secret-missing"))
        else:
            rows.extend(opened)
            passed += 1
    return SecretsExport(tuple(rows), tuple(refused), passed, report, fail_on)


def _check_recipient(trust: TrustPolicy, recipient: Decapsulator) -> None:
    held = trust.secrets_recipient
    if held is None:
        raise InputError(f"trust policy v{trust.version} names no secrets recipient: no secret was sealed under it")
    if key_id(recipient.public_key) != held.key_id:
        raise InputError(
            f"the token's key {key_id(recipient.public_key)[:16]} is not trust policy v{trust.version}'s secrets "
            f"recipient ({held.key_id[:16]})"
        )


def _sealed_units(
    exports: Sequence[str | os.PathLike[str]], trust: TrustPolicy, auditor: Decapsulator
) -> dict[str, _Unit]:
    """Per hardware id, the latest certified manifest recording secrets, with its sealed blobs.

    Exports that do not open or name a station the policy does not enrol are
    skipped here: the audit reports them, and flags what they hold.
    """
    units: dict[str, _Unit] = {}
    for path in exports:
        manifests: dict[int, Manifest] = {}
        sealed: dict[int, dict[str, bytes]] = {}
        try:
            with EvidenceReader(path) as reader:
                station = trust.stations.get(reader.header.station_id)
                if station is None:
                    continue
                trusted = {station.signing.key_id: station.signing.public_key}
                for record in reader.records(reader.open(auditor)):
                    value = parse_json(record, max_size=MAX_RECORD_SIZE, what="evidence record")
                    kind = value.get("type") if isinstance(value, dict) else None
                    if kind == "entry":
                        manifest = open_manifest(str(value["envelope"]).encode(), trusted)
                        if manifest.event in CERTIFIED_EVENTS and manifest.secrets:
                            manifests[int(value["sequence"])] = manifest
                    elif kind == "secrets":
                        blobs = value["sealed"]
                        sealed[int(value["sequence"])] = {
                            str(k): base64.b64decode(v, validate=True) for k, v in blobs.items()
                        }
        except (VaultError, KeyError, TypeError, ValueError, AttributeError):
            continue  # the audit names what is wrong with this export, and holds back its station's devices
        for sequence, manifest in manifests.items():
            known = units.get(manifest.hardware_id)
            if known is None or (manifest.time, manifest.sequence) >= (known.manifest.time, known.manifest.sequence):
                units[manifest.hardware_id] = _Unit(manifest, sealed.get(sequence, {}))
    return units


def _open_unit(unit: _Unit, recipient: Decapsulator) -> list[BackendRow] | None:
    """The rows of a device's installed secrets; None when a sealed blob is missing or not the one signed."""
    m = unit.manifest
    rows = []
    for record in m.secrets:
        if not record.installed:
            continue
        blob = unit.sealed.get(record.name)
        if blob is None or hashlib.sha256(blob).hexdigest() != record.sealed_sha256:
            return None
        info = binding(
            m.bundle_id, m.station_id, m.hardware_id, m.serial or "", SecretSpec(record.name, record.kind, "")
        )
        try:
            secret = open_secret(blob, recipient, info)
        except (DecryptionError, FormatError) as e:
            raise DecryptionError(
                f"secret '{record.name}' of device {m.serial} ({m.hardware_id}) does not open with the "
                f"recipient's key: {e}"
            ) from e
        rows.append(BackendRow(m.serial or "", m.hardware_id, record.name, record.kind, secret.hex()))
    return rows


# --- the documented forms -------------------------------------------------------------------


def rows_csv(rows: Sequence[BackendRow]) -> str:
    """The rows as CSV with a header line: serial, hardware_id, secret_name, secret_kind, secret_hex."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    writer.writerows([getattr(row, name) for name in CSV_FIELDS] for row in rows)
    return out.getvalue()


def rows_json(result: SecretsExport) -> str:
    """The rows as JSON (``vault-backend-secrets/v1``), with what the audit decided."""
    report = result.report
    value = {
        "format": EXPORT_FORMAT,
        "generated": format_time(datetime.now(UTC)),
        "audit": {
            "generated": report.generated,
            "policy_version": report.policy_version,
            "policy_sha256": report.policy_sha256,
            "fail_on": result.fail_on,
            "devices_passed": result.devices,
            "devices_refused": len(result.refused),
        },
        "rows": [row.to_json() for row in result.rows],
    }
    return json.dumps(value, indent=2) + "\n"


def refused_csv(refused: Sequence[tuple[AuditedDevice, str]]) -> str:
    """The refused devices as CSV: serial, hardware_id, station, finding."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(("serial", "hardware_id", "station", "finding"))
    writer.writerows((d.serial or "", d.hardware_id, d.station_id, code) for d, code in refused)
    return out.getvalue()


def check_free(out: Path, *, overwrite: bool = False) -> None:
    """Refuse, before anything is opened, a folder that already holds the files :func:`write_export` writes.

    Raises:
        InputError: one of them exists and ``overwrite`` is false.
    """
    if overwrite:
        return
    for name in (f"{SECRETS_FILE}.csv", f"{SECRETS_FILE}.json", REFUSED_FILE):
        if (out / name).exists():
            raise InputError(f"{out / name} exists; vault does not write over files (remove it, or pass --force)")


def write_export(
    result: SecretsExport, out: Path, *, overwrite: bool = False, say: Callable[[str], None] | None = None
) -> list[Path]:
    """Write the rows (CSV and JSON) and the refused devices into the folder ``out``, each file mode 0600.

    The folder is made (mode 0700) when missing. Every file is written
    atomically and never over an existing one unless ``overwrite``; the three
    go together: a write that stops halfway (an error, Ctrl-C, another export
    into the same folder) removes the files it had written (and the folder it
    made), so the same command run again completes.

    Raises:
        InputError: a file exists, or the folder cannot be made or written.
    """
    check_free(out, overwrite=overwrite)
    made = not out.exists()
    try:
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot make {out}: {e.strerror or e}") from e
    files = [
        (out / f"{SECRETS_FILE}.csv", rows_csv(result.rows)),
        (out / f"{SECRETS_FILE}.json", rows_json(result)),
        (out / REFUSED_FILE, refused_csv(result.refused)),
    ]
    written: list[Path] = []
    try:
        for path, text in files:
            written.append(write_new(path, text.encode("utf-8"), overwrite=overwrite, mode=0o600))
    except BaseException:
        for path in written if not overwrite else []:  # only files this call made; --force keeps what it replaced
            path.unlink(missing_ok=True)
        if made:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    if say is not None:
        for path in written:
            say(f"wrote        {path}")
    return written
