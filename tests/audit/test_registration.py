"""The registration loop: the audit cosigns what it verified, a proof per device, the registry export, the check.

Real exports from the forge (station keys in SoftHSM), the real audit, the
auditor's cosigning key in its token (enrolled by the role ceremony of
policies/roles.yaml); proofs refused one bad case at a time; the cloud forms
checked against the providers' published models; and the proof format
checked by an independent reader written from the C2SP specs.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import struct
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.audit.conftest import Forge, Report, SoftSigner
from tests.verify.conftest import World, vault
from vault.audit import NOT_COSIGNED, Cosigning, cosign
from vault.cli import cli
from vault.errors import InputError, ProofError
from vault.policy import Revocation, TrustPolicy, load_policy
from vault.proof import cosign_checkpoint, parse_proof, verify_device_proof
from vault.registry import read_audited, write_registry
from vault.token import TokenKey, open_token

Audit = Callable[..., Report]
NOW = datetime.datetime.now(datetime.UTC).replace(microsecond=0)


@pytest.fixture(scope="module")
def cosigner(world: World) -> Iterator[TokenKey]:
    """The auditor's cosigning key, a second key in the auditor's token."""
    with open_token(world.tokens["auditor"]) as session:
        yield session.key(label="auditor-cosign")


@pytest.fixture
def policy(world: World) -> TrustPolicy:
    return load_policy(world.policy, world.root_cert, now=NOW)


@pytest.fixture
def cosigning(
    policy: TrustPolicy, auditor_key: TokenKey, cosigner: TokenKey, run_audit: Audit
) -> Callable[[list[Path]], Cosigning]:
    def run(paths: list[Path]) -> Cosigning:
        report = run_audit(paths)
        return cosign(report, paths, policy, decapsulator=auditor_key, signer=cosigner, now=NOW)

    return run


@pytest.fixture
def two_stations(
    forge: Forge, world: World, station_keys: dict[str, tuple[TokenKey, TokenKey]], tmp_path: Path
) -> tuple[list[Path], list[str]]:
    """A clean run: station-1 provisions 4 devices (one reworked), station-2 three; each exports twice."""
    other = Forge(world, forge.release, "station-2", *station_keys["station-2"])
    paths, hwids = [], []
    for f, count in ((forge, 2), (other, 2)):
        hwids += [d.hwid for d in f.provision(count)]
        paths.append(f.export(tmp_path / "evidence"))
    reworked = forge.provision(2)
    forge.add("rework", reworked[0], unit=3)
    hwids += [d.hwid for d in reworked] + [d.hwid for d in other.provision(1)]
    paths += [forge.export(tmp_path / "evidence"), other.export(tmp_path / "evidence")]
    return paths, hwids


def test_the_role_ceremony_enrols_a_cosigning_key_apart_from_the_decryption_key(
    world: World, policy: TrustPolicy, cosigner: TokenKey, auditor_key: TokenKey
) -> None:
    from vault.ceremony._policy_view import read_policy_view

    assert policy.auditor is not None and policy.cosigners_threshold == 1
    assert policy.cosigners["auditor"].key_id == cosigner.key_id != auditor_key.key_id == policy.auditor.key_id
    certificate = policy.cosigners["auditor"].certificate
    assert certificate is not None and "cosigner auditor" in certificate.subject.rfc4514_string()
    lines = read_policy_view(world.policy, root_certificate=world.root_cert, now=NOW).lines()
    assert "cosigners: 1 of 1" in lines and f"  {'auditor':<20} {cosigner.key_id}" in lines


def test_a_clean_run_exports_every_device_with_a_proof_that_verifies(
    two_stations: tuple[list[Path], list[str]], cosigning: Callable[[list[Path]], Cosigning],
    policy: TrustPolicy, tmp_path: Path,
) -> None:  # fmt: skip
    paths, hwids = two_stations
    result = cosigning(paths)
    assert {(log.station_id, log.size) for log in result.logs} == {("station-1", 5), ("station-2", 3)}
    assert sorted(d.hardware_id for d in result.devices) == sorted(hwids)
    assert not result.excluded
    reworked = next(d for d in result.devices if d.event == "rework")
    assert reworked.position == 4  # the device's current certificate: the rework's
    result.write(tmp_path / "audited")
    audited = read_audited(tmp_path / "audited", policy)
    written = write_registry(audited, tmp_path / "registry")
    listed = json.loads(written["allowed-devices.json"].read_text())["devices"]
    assert sorted(d["hardware_id"] for d in listed) == sorted(hwids)
    for device in listed:
        pem = device["certificate_pem"].encode()
        assert verify_device_proof(pem, device["proof"].encode(), policy).hardware_id == device["hardware_id"]
    assert json.loads(written["excluded-devices.json"].read_text())["excluded"] == []
    csv_lines = written["allowed-devices.csv"].read_text().count("-----END CERTIFICATE-----")
    assert csv_lines == len(hwids)


def test_bad_proofs_are_refused_with_one_line(
    two_stations: tuple[list[Path], list[str]], cosigning: Callable[[list[Path]], Cosigning], policy: TrustPolicy
) -> None:
    result = cosigning(two_stations[0])
    one, two = result.devices[0], result.devices[1]

    with pytest.raises(ProofError, match="another device"):
        verify_device_proof(two.certificate, one.proof, policy)
    for cut in (len(one.proof) // 2, len(one.proof) - 20, 40):
        with pytest.raises(ProofError):
            verify_device_proof(one.certificate, one.proof[:cut], policy)

    # the station's checkpoint, cosigned by a key the policy does not enrol (under the enrolled name, too)
    proof = parse_proof(one.proof)
    station_note = proof.note[: proof.note.rindex(b"\xe2\x80\x94 vault.dev/cosigner/")]
    stranger = cosign_checkpoint(station_note, SoftSigner(), "vault.dev/cosigner/auditor", int(NOW.timestamp()))
    forged = one.proof.replace(proof.note, stranger)
    with pytest.raises(ProofError, match="0 valid auditor cosignature.*1 cosignature.*not enrol"):
        verify_device_proof(one.certificate, forged, policy)

    # the station revoked after the checkpoint was cosigned: the current policy no longer enrols it
    station = policy.stations[one.station_id]
    revoked = replace(
        policy,
        stations={k: v for k, v in policy.stations.items() if k != one.station_id},
        revoked=(Revocation(station.signing.key_id, "station", one.station_id, "line closed after a breach", 9),),
    )
    with pytest.raises(ProofError, match=f"station {one.station_id} was revoked in trust policy v9"):
        verify_device_proof(one.certificate, one.proof, revoked)

    # a policy without cosigners admits nothing
    with pytest.raises(ProofError, match="enrols no auditor cosigner"):
        verify_device_proof(one.certificate, one.proof, replace(policy, cosigners={}, cosigners_threshold=0))


def test_a_missing_manifest_and_an_over_run_keep_their_devices_out(
    forge: Forge, world: World, station_keys: dict[str, tuple[TokenKey, TokenKey]],
    cosigning: Callable[[list[Path]], Cosigning], policy: TrustPolicy, tmp_path: Path,
) -> None:  # fmt: skip
    # station-1 (allocation 20): 19 units, an export; then units 20, 21 (past the allocation) and 22
    early = forge.provision(19)
    paths = [forge.export(tmp_path / "evidence")]
    unit20, over, later = forge.provision(3)
    paths.append(forge.export(tmp_path / "evidence"))
    # station-2: 3 units, the second one's manifest left out of the export
    other = Forge(world, forge.release, "station-2", *station_keys["station-2"])
    kept, missing, after = other.provision(3)
    paths.append(other.export(tmp_path / "evidence", entries=lambda listed: [e for e in listed if e[0] != 1]))

    result = cosigning(paths)
    logs = {log.station_id: log for log in result.logs}
    assert (logs["station-1"].size, logs["station-1"].blocked_by, logs["station-1"].blocked_at) == (
        19, "over-allocation", 20,
    )  # fmt: skip
    assert logs["station-2"].size is None
    assert {d.hardware_id for d in result.devices} == {d.hwid for d in early}
    excluded = {e.hardware_id: e for e in result.excluded}
    assert excluded[over.hwid].code == "over-allocation"
    assert excluded[later.hwid].code == NOT_COSIGNED
    assert "over-allocation touches position 20" in excluded[later.hwid].reason
    assert excluded[unit20.hwid].code == NOT_COSIGNED  # clean, but no checkpoint between 19 and the over-run
    assert excluded[kept.hwid].code == excluded[after.hwid].code == NOT_COSIGNED
    assert missing.hwid not in excluded  # the audit never saw it: it is nowhere, never exported

    result.write(tmp_path / "audited")
    written = write_registry(read_audited(tmp_path / "audited", policy), tmp_path / "registry")
    exported = {d["hardware_id"] for d in json.loads(written["allowed-devices.json"].read_text())["devices"]}
    assert exported == {d.hwid for d in early}
    listing = json.loads(written["excluded-devices.json"].read_text())
    assert {e["hardware_id"]: e["code"] for e in listing["excluded"]}[over.hwid] == "over-allocation"
    blocked = {log["station"]: log["blocked_by"] for log in listing["logs"]}
    assert blocked["station-2"] in {"log-gap", "unit-hole"}  # what keeps the missing manifest's log out


def test_a_tampered_audited_folder_stops_the_export(
    two_stations: tuple[list[Path], list[str]], cosigning: Callable[[list[Path]], Cosigning],
    policy: TrustPolicy, tmp_path: Path,
) -> None:  # fmt: skip
    cosigning(two_stations[0]).write(tmp_path / "audited")
    index = json.loads((tmp_path / "audited" / "audited.json").read_text())
    first, second = index["devices"][0], index["devices"][1]
    proof = tmp_path / "audited" / first["proof"]
    proof.write_bytes((tmp_path / "audited" / second["proof"]).read_bytes())  # a proof swapped in
    with pytest.raises(InputError, match="does not verify: the proof is for another device"):
        read_audited(tmp_path / "audited", policy)
    assert not (tmp_path / "registry").exists()


def test_a_policy_older_than_the_one_the_folder_was_cosigned_under_is_refused(
    two_stations: tuple[list[Path], list[str]], cosigning: Callable[[list[Path]], Cosigning],
    policy: TrustPolicy, tmp_path: Path,
) -> None:  # fmt: skip
    result = cosigning(two_stations[0])
    replace(result, policy_version=policy.version + 1).write(tmp_path / "audited")  # as if cosigned under a newer one
    with pytest.raises(InputError, match=f"trust policy v{policy.version + 1}; the policy given is v{policy.version}"):
        read_audited(tmp_path / "audited", policy)
    result.write(tmp_path / "audited-now")
    assert len(read_audited(tmp_path / "audited-now", policy).devices) == len(result.devices)


def test_a_key_that_is_not_an_enrolled_cosigner_cosigns_nothing(
    two_stations: tuple[list[Path], list[str]], run_audit: Audit, policy: TrustPolicy, auditor_key: TokenKey
) -> None:
    report = run_audit(two_stations[0])
    with pytest.raises(InputError, match="not an auditor cosigning key"):
        cosign(report, two_stations[0], policy, decapsulator=auditor_key, signer=SoftSigner(), now=NOW)  # type: ignore[arg-type]


# --- the command line ------------------------------------------------------------------------------


def test_audit_cosign_then_registry_export_and_verify(
    world: World, two_stations: tuple[list[Path], list[str]], tmp_path: Path
) -> None:
    trust = ["--policy", str(world.policy_path), "--root-cert", str(world.root_cert_path)]
    audited = tmp_path / "audited"
    out = vault(
        "audit", *map(str, two_stations[0]), *trust, "--bundle", str(world.bundle_path),
        "--token", world.key("auditor", "auditor-decrypt"), "--cosign", str(audited), "--workers", "1",
    )  # fmt: skip
    assert "cosigned    station-1 up to 5 of 5" in out
    assert f"proofs      {len(two_stations[1])} device(s), 0 excluded" in out
    out = vault("registry", "export", str(audited), *trust, "--out", str(tmp_path / "registry"))
    assert f"allowed     {len(two_stations[1])} device(s)" in out
    proofs = sorted((audited / "devices").glob("*.tlog-proof"))
    yes = vault("registry", "verify", str(proofs[0].with_suffix(".pem")), str(proofs[0]), *trust)
    assert yes.startswith("yes: device ") and yes.count("\n") == 1
    result = CliRunner().invoke(cli, ["registry", "verify", str(proofs[1].with_suffix(".pem")), str(proofs[0]), *trust])
    assert result.exit_code == 1
    assert result.output.startswith("no: the proof is for another device") and result.output.count("\n") == 1
    again = CliRunner().invoke(cli, ["registry", "export", str(audited), *trust, "--out", str(tmp_path / "registry")])
    assert again.exit_code != 0 and "exists" in str(again.exception or again.output)


def test_a_cosigning_key_the_policy_does_not_enrol_is_refused_before_the_audit(
    world: World, two_stations: tuple[list[Path], list[str]], tmp_path: Path
) -> None:
    trust = ["--policy", str(world.policy_path), "--root-cert", str(world.root_cert_path)]
    result = CliRunner().invoke(cli, [
        "audit", *map(str, two_stations[0]), *trust, "--bundle", str(world.bundle_path),
        "--token", world.key("auditor", "auditor-decrypt"), "--json", str(tmp_path / "audit.json"),
        "--cosign", str(tmp_path / "audited"), "--cosign-key", "auditor-decrypt",
    ])  # fmt: skip
    assert result.exit_code != 0
    assert "is not an auditor cosigning key of trust policy" in str(result.exception)
    assert not (tmp_path / "audit.json").exists() and not (tmp_path / "audited").exists()


# --- the cloud forms against the providers' own models ---------------------------------------------


@pytest.fixture
def registry(
    two_stations: tuple[list[Path], list[str]], cosigning: Callable[[list[Path]], Cosigning],
    policy: TrustPolicy, tmp_path: Path,
) -> dict[str, Path]:  # fmt: skip
    cosigning(two_stations[0]).write(tmp_path / "audited")
    return write_registry(read_audited(tmp_path / "audited", policy), tmp_path / "registry")


def test_the_aws_form_validates_against_botocores_iot_model(registry: dict[str, Path]) -> None:
    import re

    import botocore.session
    from botocore.validate import ParamValidator

    model = botocore.session.get_session().get_service_model("iot")
    template = registry["aws-iot-template.json"].read_text()
    thing_name = model.shape_for("ThingName")
    lines = registry["aws-iot-bulk.jsonl"].read_text().splitlines()
    assert lines
    for line in lines:
        parameters = json.loads(line)
        request = {"templateBody": template, "parameters": parameters}
        report = ParamValidator().validate(request, model.operation_model("RegisterThing").input_shape)
        assert not report.has_errors(), report.generate_report()
        assert set(parameters) == set(json.loads(template)["Parameters"])
        assert re.fullmatch(thing_name.metadata["pattern"], parameters["ThingName"])
        assert len(parameters["ThingName"]) <= thing_name.metadata["max"]
    task = {"templateBody": template, "inputFileBucket": "bucket", "inputFileKey": "aws-iot-bulk.jsonl",
            "roleArn": "arn:aws:iam::123456789012:role/registration"}  # fmt: skip
    report = ParamValidator().validate(task, model.operation_model("StartThingRegistrationTask").input_shape)
    assert not report.has_errors(), report.generate_report()


def test_the_azure_form_validates_against_the_dps_service_models(registry: dict[str, Path]) -> None:
    from msrest import Deserializer, Serializer
    from provisioningserviceclient.protocol import models

    classes = {k: v for k, v in vars(models).items() if isinstance(v, type)}
    document = json.loads(registry["azure-dps-enrollments.json"].read_text())
    operation = Deserializer(classes)("BulkEnrollmentOperation", document)
    assert operation.mode == "create" and len(operation.enrollments) == len(document["enrollments"])
    for enrollment, raw in zip(operation.enrollments, document["enrollments"], strict=True):
        assert enrollment.validate() == []
        assert enrollment.attestation.type == "x509"
        certificate = enrollment.attestation.x509.client_certificates.primary.certificate
        der = base64.b64decode(certificate)
        cn = x509.load_der_x509_certificate(der).subject.rfc4514_string()
        assert f"CN={enrollment.registration_id.upper()}" in cn.upper()
        assert Serializer(classes).body(enrollment, "IndividualEnrollment") == raw  # no field the model lacks


# --- an independent reader of the proof format, from the C2SP spec text alone ----------------------


def _b64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def _spec_root(index: int, size: int, leaf: bytes, path: list[bytes]) -> bytes:
    """RFC 9162 section 2.1.3.2: the root an inclusion path leads to."""
    fn, sn, r = index, size - 1, leaf
    for p in path:
        assert sn != 0
        if fn & 1 or fn == sn:
            r = hashlib.sha256(b"\x01" + p + r).digest()
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = hashlib.sha256(b"\x01" + r + p).digest()
        fn >>= 1
        sn >>= 1
    assert sn == 0
    return r


def _spec_check(proof: bytes, station: ec.EllipticCurvePublicKey, cosigner: ec.EllipticCurvePublicKey) -> None:
    text = proof.decode("utf-8")
    head, _, note = text.partition("\n\n")
    lines = head.split("\n")
    assert lines[0] == "c2sp.org/tlog-proof@v1"
    assert lines[1].startswith("extra ")
    extra = _b64(lines[1][len("extra "):])
    assert lines[2].startswith("index ")
    index = int(lines[2][len("index "):])
    path = [_b64(line) for line in lines[3:]]
    assert all(len(h) == 32 for h in path)
    body, _, signatures = note.partition("\n\n")
    origin, size_text, root_text = body.split("\n")[:3]
    size, root = int(size_text), _b64(root_text)
    assert _spec_root(index, size, hashlib.sha256(b"\x00" + extra).digest(), path) == root
    body_bytes = (body + "\n").encode("utf-8")
    spki = station.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    cospki = cosigner.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    seen = set()
    for line in signatures.rstrip("\n").split("\n"):
        assert line.startswith("\u2014 ")
        name, _, encoded = line[2:].partition(" ")
        raw = _b64(encoded)
        if name == origin:  # the log's own signature: type 0x02 (ECDSA), key ID from the SPKI
            assert raw[:4] == hashlib.sha256(spki).digest()[:4]
            station.verify(raw[4:], body_bytes, ec.ECDSA(hashes.SHA256()))
        else:  # the cosignature: key ID || u64 time || signature over cosignature/v1, time, body
            key = hashlib.sha256(name.encode() + b"\n\xff" + b"cosignature/v1+ecdsa-p256" + cospki).digest()[:4]
            assert raw[:4] == key
            (when,) = struct.unpack(">Q", raw[4:12])
            message = b"cosignature/v1\ntime %d\n" % when + body_bytes
            cosigner.verify(raw[12:], message, ec.ECDSA(hashes.SHA256()))
            with pytest.raises(InvalidSignature):
                cosigner.verify(raw[12:], message + b"x", ec.ECDSA(hashes.SHA256()))
        seen.add(name == origin)
    assert seen == {True, False}


def test_an_independent_reader_of_the_c2sp_specs_accepts_vaults_proofs(
    two_stations: tuple[list[Path], list[str]], cosigning: Callable[[list[Path]], Cosigning], policy: TrustPolicy
) -> None:
    result = cosigning(two_stations[0])
    (holder, cosigner), = policy.cosigners.items()
    assert holder == "auditor"
    for device in result.devices:
        _spec_check(device.proof, policy.stations[device.station_id].signing.public_key, cosigner.public_key)
