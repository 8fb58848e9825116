"""Device certificates chain to the root through the station's CA (openssl verify) and lint clean (pkilint)."""

from __future__ import annotations

import hashlib
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.verify.conftest import World
from vault.ceremony._lint import lint_certificate, require_clean
from vault.manifest import open_manifest
from vault.policy import load_policy
from vault.verify import SimulatedDevice, Station


def pem(path: Path, certificate: x509.Certificate) -> Path:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


def openssl_verify(root: Path, intermediate: Path, *leaves: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "verify", "-x509_strict", "-purpose", "sslclient", "-CAfile", str(root),
         "-untrusted", str(intermediate), *map(str, leaves)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def one(name: x509.Name, oid: x509.ObjectIdentifier) -> str:
    (attribute,) = name.get_attributes_for_oid(oid)
    assert isinstance(attribute.value, str)
    return attribute.value


def test_device_certificates_chain_to_the_root_lint_clean_and_name_the_device(world: World, tmp_path: Path) -> None:
    devices = [SimulatedDevice(label=f"SN-{n:04d}") for n in (1, 2, 3)] + [SimulatedDevice()]
    with world.station(tmp_path / "s") as station:
        station.load(world.bundle_path, world.policy)
        started = datetime.now(UTC).replace(microsecond=0)
        outcomes = [station.provision(d, label=d.label, fixture=1) for d in devices]
        devices[0].unlock_for_rework()
        outcomes.append(station.provision(devices[0], label="SN-0001", rework=True))
        devices.append(devices[0])
        station_ca = station.enrolled.issuing_ca.certificate
        assert station_ca is not None
        trusted = {station.enrolled.signing.key_id: station.enrolled.signing.public_key}
        rows = station.state.read().execute("SELECT envelope, certificate FROM log ORDER BY sequence").fetchall()
    manifests = [(open_manifest(bytes(envelope), trusted), bytes(der)) for envelope, der in rows]
    assert [m.event for m, _ in manifests] == ["provisioned"] * 4 + ["rework"]

    root = pem(tmp_path / "root-ca.pem", world.root_cert)
    intermediate = pem(tmp_path / "station-ca.pem", station_ca)
    leaves = []
    for n, (outcome, device, (manifest, logged_der)) in enumerate(zip(outcomes, devices, manifests, strict=True)):
        certificate = outcome.certificate
        assert certificate is not None and device.key is not None
        der = certificate.public_bytes(serialization.Encoding.DER)
        # the device holds it, the log holds it, and the signed manifest names it
        installed = outcomes[-1] if n == 0 else outcome  # the rework certified device 0 again, with its key
        assert installed.certificate is not None
        assert device.certificate == installed.certificate.public_bytes(serialization.Encoding.DER)
        assert logged_der == der
        assert manifest.certificate_sha256 == hashlib.sha256(der).hexdigest()
        assert int(manifest.certificate_serial or "0", 16) == certificate.serial_number > 0
        # the subject binds the serial to the device-derived identity
        assert one(certificate.subject, NameOID.COMMON_NAME) == outcome.serial == manifest.serial
        assert one(certificate.subject, NameOID.SERIAL_NUMBER) == device.hardware_id.hex() == manifest.hardware_id
        assert certificate.public_key().public_numbers() == device.key.public_key().public_numbers()
        # an end-entity certificate issued by the station's CA, for as long as the CA is valid at most
        assert certificate.issuer == station_ca.subject
        assert certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
        assert usage.digital_signature and not usage.key_cert_sign
        eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
        aki = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        ski = station_ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        assert aki.key_identifier == ski.digest
        assert certificate.not_valid_before_utc >= started
        assert certificate.not_valid_after_utc <= station_ca.not_valid_after_utc
        # pkilint, RFC 5280: no error and no warning or notice either, only information
        require_clean(der)
        assert {f.severity for f in lint_certificate(der)} <= {"INFO"}
        leaves.append(pem(tmp_path / f"device-{n}.pem", certificate))
    assert (
        outcomes[-1].serial == "SN-0001"
        and outcomes[3].serial == f"station-1-{station.release.release.bundle_id[:8]}-0000004"
    )
    assert len({o.certificate.serial_number for o in outcomes if o.certificate}) == len(outcomes)

    result = openssl_verify(root, intermediate, *leaves)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [f"{leaf}: OK" for leaf in leaves]
    # the station CA is what makes the chain: without it, or with another station's CA, it does not verify
    assert openssl_verify(root, root, leaves[0]).returncode != 0
    policy = load_policy(world.policy, world.root_cert, now=datetime.now(UTC))
    other_ca = policy.stations["station-2"].issuing_ca.certificate
    assert other_ca is not None
    assert openssl_verify(root, pem(tmp_path / "station-2-ca.pem", other_ca), leaves[0]).returncode != 0


def test_the_station_ca_certificate_itself_chains_to_the_root_and_lints_clean(world: World, station: Station) -> None:
    station_ca = station.enrolled.issuing_ca.certificate
    assert station_ca is not None
    require_clean(station_ca.public_bytes(serialization.Encoding.DER))
    assert station_ca.issuer == world.root_cert.subject
    assert station_ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
