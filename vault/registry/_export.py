"""Read the audited devices (authenticated by their proofs) and write the allowed-devices list in each form."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from vault._files import read_capped, write_folder
from vault.errors import FormatError, InputError, ProofError
from vault.formats._json import parse_json
from vault.policy import TrustPolicy
from vault.proof import MAX_PROOF_SIZE, verify_device_proof

__all__ = ["AUDITED_FORMAT", "FORMS", "REGISTRY_FORMAT", "Audited", "RegistryDevice", "read_audited", "write_registry"]

AUDITED_FORMAT = "vault-audited-devices/v1"  # vault.audit.AUDITED_FORMAT, which this layer does not import
REGISTRY_FORMAT = "vault-registry/v1"
FORMS = ("json", "csv", "aws", "azure")
"""The forms :func:`write_registry` writes: generic JSON and CSV, AWS IoT Core, Azure IoT Hub DPS."""

_MAX_INDEX = 64 * 1024 * 1024
_MAX_CERTIFICATE = 64 * 1024
_THING_NAME = re.compile(r"[a-zA-Z0-9:_-]{1,128}")  # AWS IoT ThingName (the iot service model's pattern)
_REGISTRATION_ID = re.compile(r"[a-z0-9][a-z0-9._:-]{0,127}")  # DPS: lower-case alphanumerics and - . _ :
_FIELDS = ("device_id", "serial", "hardware_id", "station", "position", "certificate_pem", "proof")


@dataclass(frozen=True)
class RegistryDevice:
    """One allowed device: its ids, where its manifest is, its certificate and its verified proof."""

    device_id: str
    serial: str | None
    hardware_id: str
    station_id: str
    position: int
    certificate: x509.Certificate
    proof: bytes

    @property
    def certificate_pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")

    @property
    def common_name(self) -> str:
        names = self.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(names[0].value) if names else self.device_id

    def to_json(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "serial": self.serial,
            "hardware_id": self.hardware_id,
            "station": self.station_id,
            "position": self.position,
            "certificate_pem": self.certificate_pem,
            "proof": self.proof.decode("utf-8"),
        }


@dataclass(frozen=True)
class Audited:
    """The audited folder, authenticated: the devices whose proofs verify, and those the audit left out."""

    policy_version: int
    devices: tuple[RegistryDevice, ...]
    excluded: tuple[Mapping[str, Any], ...]
    station_cas: Mapping[str, str]  # station id -> its issuing CA certificate (PEM), for AWS's CACertificatePem
    logs: tuple[Mapping[str, Any], ...] = ()  # each station log: the size cosigned and the finding that held it


def read_audited(folder: Path, policy: TrustPolicy) -> Audited:
    """Read ``folder`` (written by ``vault audit --cosign``) and verify every device's proof against ``policy``.

    Nothing is taken on the index's word: each listed device's certificate
    and proof must verify (:func:`vault.proof.verify_device_proof`) and the
    proof must name the device, station and position the index lists. One
    that does not stops the export (its one-line reason names the file).

    Raises:
        InputError: the folder is not an audited-devices folder, it was cosigned under a newer trust
            policy than ``policy`` (a stale one), or a proof does not verify.
    """
    index = parse_json(
        read_capped(folder / "audited.json", _MAX_INDEX, "audited devices index"),
        max_size=_MAX_INDEX,
        what=f"{folder}/audited.json",
    )
    if not isinstance(index, dict) or index.get("format") != AUDITED_FORMAT:
        raise FormatError(f"{folder}/audited.json is not a {AUDITED_FORMAT} index (written by 'vault audit --cosign')")
    made_under = index.get("policy", {}).get("version") if isinstance(index.get("policy"), dict) else None
    if isinstance(made_under, int) and made_under > policy.version:
        raise InputError(
            f"{folder} was cosigned under trust policy v{made_under}; the policy given is v{policy.version} "
            "(stale: give the current policy)"
        )
    listed = index.get("devices")
    excluded = index.get("excluded")
    if not isinstance(listed, list) or not isinstance(excluded, list):
        raise FormatError(f"{folder}/audited.json has no devices or excluded list")
    devices: dict[str, RegistryDevice] = {}
    for item in listed:
        device = _device(folder, item, policy)
        if device.hardware_id in devices:
            raise InputError(f"{folder}: hardware id {device.hardware_id} is listed twice")
        devices[device.hardware_id] = device
    cas = {}
    for station_id in sorted({d.station_id for d in devices.values()}):
        ca = policy.stations[station_id].issuing_ca.certificate
        if ca is not None:
            cas[station_id] = ca.public_bytes(serialization.Encoding.PEM).decode("ascii")
    logs = [
        {k: log.get(k) for k in ("station", "verified_size", "cosigned_size", "blocked_by", "blocked_at")}
        for log in index.get("logs") or []
        if isinstance(log, dict)
    ]
    return Audited(policy.version, tuple(devices.values()), tuple(_excluded(excluded)), cas, tuple(logs))


def _device(folder: Path, item: Any, policy: TrustPolicy) -> RegistryDevice:
    if not isinstance(item, dict):
        raise FormatError(f"{folder}/audited.json: a device entry is not an object")
    names = [item.get("certificate"), item.get("proof")]
    files = [folder / n for n in names if isinstance(n, str) and n.startswith("devices/") and ".." not in n]
    if len(files) != 2:
        raise FormatError(f"{folder}/audited.json: a device entry names no certificate and proof under devices/")
    certificate_file, proof_file = files
    pem = read_capped(certificate_file, _MAX_CERTIFICATE, "device certificate")
    proof = read_capped(proof_file, MAX_PROOF_SIZE, "device proof")
    try:
        certificate = x509.load_pem_x509_certificate(pem)
        result = verify_device_proof(certificate, proof, policy)
    except ValueError as e:
        raise InputError(f"{certificate_file}: not a PEM certificate") from e
    except ProofError as e:
        raise InputError(f"{proof_file}: the proof does not verify: {e}") from e
    claimed = (item.get("station"), item.get("position"), item.get("hardware_id"), item.get("serial"))
    if claimed != (result.station_id, result.index, result.hardware_id, result.serial):
        raise InputError(f"{proof_file}: the proof is for another device than the index lists")
    return RegistryDevice(
        _device_id(result.serial, result.hardware_id),
        result.serial,
        result.hardware_id,
        result.station_id,
        result.index,
        certificate,
        proof,
    )


def _device_id(serial: str | None, hardware_id: str) -> str:
    """The cloud's device id: the serial where it is a valid AWS thing name, else ``hw-<hardware id>``."""
    if serial is not None and _THING_NAME.fullmatch(serial):
        return serial
    return f"hw-{hardware_id[:120]}"


def _excluded(items: Iterable[Any]) -> list[dict[str, Any]]:
    keys = ("station", "position", "hardware_id", "serial", "code", "reason")
    out = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("code"), str):
            raise FormatError("audited.json: an excluded entry is not an object with a code")
        out.append({k: item.get(k) for k in keys})
    return out


def write_registry(
    audited: Audited, out: Path, *, forms: Sequence[str] = FORMS, overwrite: bool = False
) -> dict[str, Path]:
    """Write the allowed-devices list in ``forms`` and the excluded devices into the new folder ``out``.

    Returns:
        Each file written, by what it is.

    Raises:
        InputError: an unknown form, a device id no cloud form accepts, or ``out`` exists.
    """
    unknown = sorted(set(forms) - set(FORMS))
    if unknown:
        raise InputError(f"unknown registry form {unknown[0]!r}; one of {', '.join(FORMS)}")
    files: dict[str, bytes] = {}
    if "json" in forms:
        document = {
            "format": REGISTRY_FORMAT,
            "policy_version": audited.policy_version,
            "devices": [d.to_json() for d in audited.devices],
        }
        files["allowed-devices.json"] = _json(document)
    if "csv" in forms:
        files["allowed-devices.csv"] = _csv(audited.devices)
    if "aws" in forms:
        files["aws-iot-template.json"] = _json(aws_template())
        files["aws-iot-bulk.jsonl"] = "".join(
            json.dumps(aws_parameters(d, audited.station_cas), sort_keys=True) + "\n" for d in audited.devices
        ).encode("utf-8")
    if "azure" in forms:
        enrollments = [azure_enrollment(d) for d in audited.devices]
        files["azure-dps-enrollments.json"] = _json({"mode": "create", "enrollments": enrollments})
    listing = {"format": REGISTRY_FORMAT, "excluded": list(audited.excluded), "logs": list(audited.logs)}
    files["excluded-devices.json"] = _json(listing)
    write_folder(out, files, overwrite=overwrite)
    return {name: out / name for name in files}


def aws_template() -> dict[str, Any]:
    """The AWS IoT provisioning template the bulk parameters are for: a thing and its certificate, active.

    The certificate is registered with its issuer (the station's CA, which
    must be registered in AWS IoT first); an IoT policy is the device maker's
    to add.
    """

    def ref(name: str) -> dict[str, str]:
        return {"Ref": name}

    parameters = ("ThingName", "SerialNumber", "HardwareId", "Station", "CertificatePem", "CACertificatePem")
    return {
        "Parameters": {name: {"Type": "String"} for name in parameters},
        "Resources": {
            "thing": {
                "Type": "AWS::IoT::Thing",
                "Properties": {
                    "ThingName": ref("ThingName"),
                    "AttributePayload": {
                        "serial": ref("SerialNumber"),
                        "hardware_id": ref("HardwareId"),
                        "station": ref("Station"),
                    },
                },
            },
            "certificate": {
                "Type": "AWS::IoT::Certificate",
                "Properties": {
                    "CertificatePem": ref("CertificatePem"),
                    "CACertificatePem": ref("CACertificatePem"),
                    "Status": "ACTIVE",
                },
            },
        },
    }


def aws_parameters(device: RegistryDevice, station_cas: Mapping[str, str]) -> dict[str, str]:
    """One device's template parameters: a line of the bulk registration input file.

    Raises:
        InputError: the device id is not a valid AWS IoT thing name.
    """
    if not _THING_NAME.fullmatch(device.device_id):
        raise InputError(f"device id {device.device_id!r} is not a valid AWS IoT thing name")
    return {
        "ThingName": device.device_id,
        "SerialNumber": device.serial or "",
        "HardwareId": device.hardware_id,
        "Station": device.station_id,
        "CertificatePem": device.certificate_pem,
        "CACertificatePem": station_cas.get(device.station_id, ""),
    }


def azure_enrollment(device: RegistryDevice) -> dict[str, Any]:
    """One device's DPS individual enrollment with X.509 attestation (its certificate as the primary).

    DPS takes the registration id from the certificate's subject CN, which
    vault sets to the serial; registration ids are lower case.

    Raises:
        InputError: the CN is not a valid DPS registration id, even lower-cased.
    """
    registration_id = device.common_name.lower()
    if not _REGISTRATION_ID.fullmatch(registration_id):
        raise InputError(f"certificate CN {device.common_name!r} is not a valid DPS registration id")
    body = base64.b64encode(device.certificate.public_bytes(serialization.Encoding.DER)).decode("ascii")
    return {
        "registrationId": registration_id,
        "deviceId": device.device_id,
        "attestation": {"type": "x509", "x509": {"clientCertificates": {"primary": {"certificate": body}}}},
        "provisioningStatus": "enabled",
        "initialTwin": {
            "tags": {"serial": device.serial, "hardwareId": device.hardware_id, "station": device.station_id},
        },
    }


def _json(value: Any) -> bytes:
    return (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _csv(devices: Iterable[RegistryDevice]) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(_FIELDS)
    for d in devices:
        proof = base64.b64encode(d.proof).decode("ascii")
        row = [d.device_id, d.serial or "", d.hardware_id, d.station_id, d.position, d.certificate_pem, proof]
        writer.writerow(row)
    return text.getvalue().encode("utf-8")
