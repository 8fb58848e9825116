"""Audit fixtures: the station tests' enrolled world, the auditor's key, and a forge for crafted exports.

:class:`Forge` writes exports the way a station does (manifests signed by the
real station key in its SoftHSM token, device certificates from its real
issuing CA, checkpoints and consistency proofs over its log), and lets a test
tamper with them on purpose: drop or replace an entry, sign with another key,
fork the log.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.verify import conftest as verify_conftest
from tests.verify.conftest import World
from vault import checkpoint as notes
from vault import merkle, pki
from vault.audit import Report, audit
from vault.container import BundleReader
from vault.crypto import key_id
from vault.evidence import EvidenceWriter
from vault.formats import PAYLOAD_TYPE_INTOTO, Envelope, Signature, canonical_json, pae
from vault.manifest import ImageRecord, Manifest, sign_manifest
from vault.policy import format_time, load_policy
from vault.release import Release, open_release
from vault.token import TokenKey, open_token
from vault.verify import ISSUING_CA_LABEL, SIGNING_LABEL, log_origin
from vault.verify._station import serial_hex

world = verify_conftest.world  # the station tests' session-scoped enrolled world, shared
START = datetime.datetime.now(datetime.UTC).replace(microsecond=0)


@dataclass
class Device:
    """A device as the forge makes it: its id, its serial and its own key."""

    hardware_id: bytes
    serial: str
    key: ec.EllipticCurvePrivateKey

    @property
    def hwid(self) -> str:
        return self.hardware_id.hex()


@dataclass
class Entry:
    """One log entry: the envelope bytes (the Merkle leaf) and the device certificate DER."""

    envelope: bytes
    certificate: bytes | None
    manifest: Manifest


class SoftSigner:
    """A software key, for forgeries."""

    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.public_key = self._key.public_key()
        self.key_id = key_id(self.public_key)

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data, ec.ECDSA(hashes.SHA256()))


class Forge:
    """Builds one station's log and exports from manifests, with the station's real token keys."""

    def __init__(self, world: World, release: Release, station_id: str, signing: TokenKey, ca: TokenKey) -> None:
        self.world = world
        self.release = release
        self.station_id = station_id
        self.signing = signing
        self.ca = ca
        policy = load_policy(world.policy, world.root_cert, now=START)
        self.enrolled = policy.stations[station_id]
        assert policy.auditor is not None
        self.auditor = policy.auditor.public_key
        self.policy_version = policy.version
        self.log: list[Entry] = []
        self.exports: list[tuple[int, bytes]] = []  # (size, checkpoint note) of each export written
        issuer = self.enrolled.issuing_ca.certificate
        assert issuer is not None
        self.time = max(START, issuer.not_valid_before_utc) + datetime.timedelta(hours=3)
        self.units = 0

    # --- devices and manifests ---------------------------------------------------------------

    def device(self, serial: str | None = None, *, hardware_id: bytes | None = None) -> Device:
        hwid = hardware_id or os.urandom(8)
        return Device(hwid, serial or f"SN-{hwid.hex()[:8].upper()}", ec.generate_private_key(ec.SECP256R1()))

    def tick(self, minutes: int = 1) -> datetime.datetime:
        self.time += datetime.timedelta(minutes=minutes)
        return self.time

    def certificate(self, device: Device, when: datetime.datetime) -> bytes:
        issuer = self.enrolled.issuing_ca.certificate
        assert issuer is not None
        profile = pki.device_profile(device.serial, device.hardware_id, 1, not_before=when)
        profile = pki.with_validity(
            profile, when, min(when + datetime.timedelta(days=3650), issuer.not_valid_after_utc)
        )
        certificate = pki.issue_certificate(
            device.key.public_key(), profile, self.ca, issuer_certificate=issuer,
            serial=pki.random_serial(os.urandom), now=when,
        )  # fmt: skip
        return certificate.public_bytes(serialization.Encoding.DER)

    def manifest(
        self,
        event: str = "provisioned",
        device: Device | None = None,
        *,
        unit: int | None = None,
        images: tuple[ImageRecord, ...] | None = None,
        when: datetime.datetime | None = None,
        sequence: int | None = None,
        failed_step: str | None = None,
        label: str | None = None,
        detail: str | None = None,
        signer: object | None = None,
        forge_as_station: bool = False,
        **changes: object,
    ) -> Entry:
        """A manifest for the next log position, signed by the station (or ``signer``)."""
        device = device or self.device()
        when = when or self.tick()
        certified = event in ("provisioned", "retry", "rework")
        if unit is None and event in ("provisioned", "failed"):
            self.units += 1
            unit = self.units
        der = self.certificate(device, when) if certified else None
        if images is None:
            images = tuple(ImageRecord(i.name, i.sha256, i.sha256) for i in self.release.images) if certified else ()
        manifest = Manifest(
            id=os.urandom(16).hex(),
            sequence=len(self.log) if sequence is None else sequence,
            event=event,
            station_id=self.station_id,
            operator="operator",
            fixture=1,
            bundle_id=self.release.bundle_id,
            product=self.release.product,
            version=self.release.version,
            security_counter=self.release.security_counter,
            policy_version=self.policy_version,
            unit=unit,
            hardware_id=device.hwid,
            serial=device.serial,
            label=device.serial if label is None else label,
            images=images,
            device_key_id=key_id(device.key.public_key()) if certified else None,
            certificate_serial=None,
            certificate_sha256=None,
            keys={"signing": self.signing.key_id, "issuing_ca": self.ca.key_id},
            failed_step=failed_step,
            detail=detail,
            time=when,
            clock="test",
        )
        if der is not None:
            from cryptography import x509

            manifest = replace(
                manifest,
                certificate_serial=serial_hex(x509.load_der_x509_certificate(der)),
                certificate_sha256=hashlib.sha256(der).hexdigest(),
            )
        if changes:
            manifest = replace(manifest, **changes)  # type: ignore[arg-type]
        if forge_as_station:  # a software key's signature under the station's key id: a forgery
            soft = SoftSigner()
            payload = manifest.statement().to_bytes()
            sig = soft.sign(pae(PAYLOAD_TYPE_INTOTO, payload))
            envelope = Envelope(PAYLOAD_TYPE_INTOTO, payload, (Signature(self.signing.key_id, sig),)).to_json()
        else:
            envelope = sign_manifest(manifest, signer or self.signing)  # type: ignore[arg-type]
        return Entry(envelope, der, manifest)

    def add(self, event: str = "provisioned", device: Device | None = None, **kwargs: object) -> Entry:
        """Append a manifest to the log; returns it."""
        entry = self.manifest(event, device, **kwargs)  # type: ignore[arg-type]
        self.log.append(entry)
        return entry

    def provision(self, count: int) -> list[Device]:
        devices = [self.device() for _ in range(count)]
        for device in devices:
            self.add("provisioned", device)
        return devices

    # --- exports -----------------------------------------------------------------------------

    def export(
        self,
        folder: Path,
        *,
        entries: Callable[[list[tuple[int, Entry]]], list[tuple[int, Entry]]] | None = None,
        sequence: int | None = None,
        start: int | None = None,
        size: int | None = None,
        record_export: bool = True,
        name: str | None = None,
        station_id: str | None = None,
    ) -> Path:
        """Export the log from the last export to now (or ``start`` to ``size``), as a station does.

        ``entries`` may tamper with the (position, entry) list after the
        checkpoint was computed over the real log.
        """
        size = len(self.log) if size is None else size
        previous = self.exports[-1] if self.exports and start is None else None
        start = (previous[0] if previous else 0) if start is None else start
        if start and previous is None:
            previous = next(e for e in self.exports if e[0] == start)
        sequence = len(self.exports) + 1 if sequence is None else sequence
        leaves = [merkle.leaf_hash(e.envelope) for e in self.log[:size]]
        _, root = merkle.root_from_leaf_hashes(leaves)
        origin = log_origin(self.station_id)
        note = notes.sign_checkpoint(notes.Checkpoint(origin, size, root), self.signing, origin)
        proof = merkle.consistency_proof(start, size, lambda a, b: leaves[a:b]) if previous else []
        listed = [(i, self.log[i]) for i in range(start, size)]
        if entries is not None:
            listed = entries(listed)
        station_id = station_id or self.station_id
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / (name or f"{station_id}-{sequence:06d}.vault-evidence")
        created = format_time(self.tick())
        with EvidenceWriter(path, recipient=self.auditor, station_id=station_id, sequence=sequence, created=created,
                            chunk_size=4096) as writer:  # fmt: skip
            writer.add(canonical_json({
                "type": "export", "station_id": station_id, "sequence": sequence, "from": start, "to": size,
                "created": created, "previous_checkpoint": None if previous is None else previous[1].decode(),
                "policy": base64.b64encode(self.world.policy).decode(),
            }))  # fmt: skip
            for position, entry in listed:
                writer.add(canonical_json({
                    "type": "entry", "sequence": position, "envelope": entry.envelope.decode(),
                    "certificate": None if entry.certificate is None else base64.b64encode(entry.certificate).decode(),
                }))  # fmt: skip
            writer.add(canonical_json({
                "type": "checkpoint", "checkpoint": note.decode(),
                "consistency": [base64.b64encode(h).decode() for h in proof],
            }))  # fmt: skip
            writer.finish()
        if record_export:
            self.exports.append((size, note))
        return path


def read_release(world: World, bundle: Path) -> Release:
    policy = load_policy(world.policy, world.root_cert, now=START)
    with BundleReader(bundle) as reader:
        release, _ = open_release(reader.envelope_bytes, reader.header_bytes, policy, now=START)
    return release


@pytest.fixture(scope="session")
def release(world: World) -> Release:
    return read_release(world, world.bundle_path)


@pytest.fixture(scope="module")  # not longer: an open session would keep other tests' leaked sessions alive
def station_keys(world: World) -> Iterator[dict[str, tuple[TokenKey, TokenKey]]]:
    """Each station's signing and issuing CA keys, from its token (one session per test module)."""
    with open_token(world.tokens["station-1"]) as one, open_token(world.tokens["station-2"]) as two:
        yield {
            "station-1": (one.key(label=SIGNING_LABEL), one.key(label=ISSUING_CA_LABEL)),
            "station-2": (two.key(label=SIGNING_LABEL), two.key(label=ISSUING_CA_LABEL)),
        }


@pytest.fixture
def forge(world: World, release: Release, station_keys: dict[str, tuple[TokenKey, TokenKey]]) -> Forge:
    """station-1's forge, against the world's bundle (allocation: station-1 20, station-2 10)."""
    return Forge(world, release, "station-1", *station_keys["station-1"])


@pytest.fixture(scope="module")
def auditor_key(world: World) -> Iterator[TokenKey]:
    with open_token(world.tokens["auditor"]) as session:
        yield session.key(label="auditor-decrypt")


@pytest.fixture
def run_audit(world: World, auditor_key: TokenKey) -> Callable[..., Report]:
    """``run_audit(paths, bundle=..., workers=1)``: audit exports against the world's policy (one bundle or several)."""

    def run(paths: list[Path], *, bundle: Path | list[Path] | None = None, workers: int = 1) -> Report:
        return audit(
            paths,
            policy=world.policy,
            root_certificate=world.root_cert,
            bundle_path=bundle or world.bundle_path,
            decapsulator=auditor_key,
            workers=workers,
        )

    return run


def serious(report: Report, at: str = "medium") -> set[str]:
    """The codes of the findings at ``at`` or worse."""
    return {f.code for f in report.at_or_above(at)}
