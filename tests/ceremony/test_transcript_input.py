"""``vault ceremony verify`` and ``vault shares check`` on hostile transcripts: one line, exit 1, never exit 70.

A transcript step whose ``details`` is a list, a string or null used to end
in ``AttributeError``; a root or officer key naming a curve cryptography does
not know, in ``UnsupportedAlgorithm``; both were ``internal error`` (exit 70).
"""

from __future__ import annotations

import base64
import datetime
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.cli.test_token_cli import assert_one_line_error, run
from tests.formats._soft import SoftSigner
from vault.ceremony._transcript import PAYLOAD_TYPE, Transcript
from vault.crypto import spki_der
from vault.formats import canonical_json, sign_envelope

P256_OID = bytes.fromhex("06082a8648ce3d030107")  # secp256r1
UNKNOWN_OID = bytes.fromhex("06082a8648ce3d030102")  # prime192v2: same length, a curve cryptography does not know


def unknown_curve(der: bytes) -> bytes:
    """``der`` (an SPKI or a certificate holding a P-256 key) with its curve renamed to one nobody supports."""
    assert der.count(P256_OID) == 1
    return der.replace(P256_OID, UNKNOWN_OID)


def _transcript(root: SoftSigner, officer: SoftSigner) -> Transcript:
    t = Transcript.start({"type": "root", "name": "demo"}, now=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC))
    for actor, action, key in (("root-token", "generate-root-key", root), ("officer-1", "officer-key", officer)):
        t.record(actor, action, details={"spki": base64.b64encode(spki_der(key.public_key)).decode()})
    t.record("officers", "close-ceremony")
    return t


def _write(tmp_path: Path, document: dict[str, Any], *signers: SoftSigner) -> Path:
    path = tmp_path / "transcript.json"
    path.write_bytes(sign_envelope(PAYLOAD_TYPE, canonical_json(document), signers).to_json())
    return path


def test_a_well_formed_transcript_verifies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, officer = SoftSigner(), SoftSigner()
    path = _write(tmp_path, json.loads(_transcript(root, officer).to_bytes()), root, officer)
    code, out, err = run(capsys, "ceremony", "verify", str(path))
    assert code == 0, err
    assert "transcript OK: demo (root ceremony), 3 steps" in out


@pytest.mark.parametrize(("details", "shape"), [([1, 2], "a list"), ("text", "a string"), (None, "null")])
def test_a_step_whose_details_is_not_an_object_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], details: object, shape: str
) -> None:
    root, officer = SoftSigner(), SoftSigner()
    document = json.loads(_transcript(root, officer).to_bytes())
    document["steps"][1]["details"] = details  # signed as it is: the signatures hold, the shape does not
    path = _write(tmp_path, document, root, officer)
    for argv in (["ceremony", "verify", str(path)], ["shares", "check", str(path), "--share", str(path)]):
        code, _, err = run(capsys, *argv)
        assert code == 1, (shape, err)
        assert_one_line_error(err, "transcript step 1: details is not an object")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("index", "0", "transcript step 0: index is not a whole number"),
        ("index", True, "transcript step 0: index is not a whole number"),
        ("actor", 7, "transcript step 0: actor is not text"),
        ("inputs", [], "transcript step 0: inputs is not an object of SHA-256 digests"),
        ("outputs", {"a": 1}, "transcript step 0: outputs is not an object of SHA-256 digests"),
        ("extra", 1, "transcript step 0: unknown field 'extra'"),
    ],
)
def test_a_step_field_of_the_wrong_type_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], field: str, value: object, message: str
) -> None:
    root, officer = SoftSigner(), SoftSigner()
    document = json.loads(_transcript(root, officer).to_bytes())
    document["steps"][0][field] = value
    code, _, err = run(capsys, "ceremony", "verify", str(_write(tmp_path, document, root, officer)))
    assert code == 1
    assert_one_line_error(err, message)


def test_steps_that_are_not_a_list_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, officer = SoftSigner(), SoftSigner()
    document = json.loads(_transcript(root, officer).to_bytes())
    document["steps"] = {"0": document["steps"][0]}
    code, _, err = run(capsys, "ceremony", "verify", str(_write(tmp_path, document, root)))
    assert code == 1
    assert_one_line_error(err, "transcript: steps is not a list")


@pytest.mark.parametrize(("step", "who"), [(0, "the root key"), (1, "officer officer-1's key")])
def test_a_key_on_an_unknown_curve_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], step: int, who: str
) -> None:
    root, officer = SoftSigner(), SoftSigner()
    document = json.loads(_transcript(root, officer).to_bytes())
    spki = base64.b64decode(document["steps"][step]["details"]["spki"])
    document["steps"][step]["details"]["spki"] = base64.b64encode(unknown_curve(spki)).decode()
    code, _, err = run(capsys, "ceremony", "verify", str(_write(tmp_path, document, root, officer)))
    assert code == 1
    assert_one_line_error(err, f"transcript: {who} names a key type or curve vault does not support")


def test_a_key_on_a_curve_vault_does_not_support_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, officer = SoftSigner(ec.SECP521R1()), SoftSigner()
    path = _write(tmp_path, json.loads(_transcript(root, officer).to_bytes()), officer)  # P-521 cannot sign here
    code, _, err = run(capsys, "ceremony", "verify", str(path))
    assert code == 1
    assert_one_line_error(err, "transcript: the root key is on curve secp521r1, which vault does not support")


def test_a_missing_key_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, officer = SoftSigner(), SoftSigner()
    document = json.loads(_transcript(root, officer).to_bytes())
    del document["steps"][0]["details"]["spki"]
    code, _, err = run(capsys, "ceremony", "verify", str(_write(tmp_path, document, root, officer)))
    assert code == 1
    assert_one_line_error(err, "transcript: the root key is missing")


def _certificate(key: ec.EllipticCurvePrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "root-ca")])
    now = datetime.datetime.now(datetime.UTC)
    builder = x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
    builder = builder.serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def test_a_root_certificate_on_an_unknown_curve_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, officer = SoftSigner(), SoftSigner()
    path = _write(tmp_path, json.loads(_transcript(root, officer).to_bytes()), root, officer)
    cert = tmp_path / "root-ca.der"
    cert.write_bytes(unknown_curve(_certificate(ec.generate_private_key(ec.SECP256R1()))))
    code, _, err = run(capsys, "ceremony", "verify", str(path), "--root-cert", str(cert))
    assert code == 1
    assert_one_line_error(err, f"{cert}: the root certificate holds a key type or curve vault does not support")
    odd = tmp_path / "root-k1.der"
    odd.write_bytes(_certificate(ec.generate_private_key(ec.SECP256K1())))
    code, _, err = run(capsys, "ceremony", "verify", str(path), "--root-cert", str(odd))
    assert code == 1
    assert_one_line_error(err, f"{odd}: the root certificate is on curve secp256k1, which vault does not support")
