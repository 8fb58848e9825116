"""``vault station request`` end to end on fresh SoftHSM2 tokens, through ``main(argv)``."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.x509.oid import SignatureAlgorithmOID
from pkcs11 import Attribute, KeyType, MechanismFlag
from pkcs11.util.ec import encode_named_curve_parameters

from tests.cli.test_token_cli import assert_one_line_error, run
from tests.helpers import import_software_key
from vault._words import readable_digest
from vault.enrolment import open_enrolment_request
from vault.errors import VaultError
from vault.token import Pkcs11Uri, format_uri, open_token

FreshTokens = Callable[[list[str]], dict[str, Pkcs11Uri]]
LABELS = {"signing": "station-signing", "issuing_ca": "station-ca", "decryption": "station-decrypt"}


@pytest.fixture
def station_uri(fresh_tokens: FreshTokens) -> Pkcs11Uri:
    return fresh_tokens(["station"])["station"]


def request(
    capsys: pytest.CaptureFixture[str], uri: Pkcs11Uri, output: Path, *extra: str, station_id: str = "line-7"
) -> tuple[int, str, str]:
    token = format_uri(uri, redact_pin=False)
    return run(capsys, "station", "request", "--token", token, "--station-id", station_id, "-o", str(output), *extra)


def request_json(capsys: pytest.CaptureFixture[str], uri: Pkcs11Uri, output: Path, *extra: str) -> dict[str, Any]:
    code, out, err = request(capsys, uri, output, "--json", *extra)
    assert code == 0, err
    result: dict[str, Any] = json.loads(out)
    return result


def test_request_on_a_fresh_token_makes_the_three_keys_and_a_request_that_opens(
    capsys: pytest.CaptureFixture[str], station_uri: Pkcs11Uri, tmp_path: Path
) -> None:
    output = tmp_path / "line-7.request.json"
    code, out, err = request(capsys, station_uri, output, "--name", "Line 7, building B")
    assert code == 0, err
    data = output.read_bytes()
    opened = open_enrolment_request(data)
    assert (opened.station_id, opened.name) == ("line-7", "Line 7, building B")
    digest = hashlib.sha256(data).hexdigest()
    assert opened.digest == digest

    lines = out.splitlines()
    assert lines[0].split() == ["station", "line-7"]
    assert lines[1].split()[:2] == ["signing", opened.signing_key_id]
    assert lines[2].split()[:3] == ["issuing", "CA", opened.issuing_ca_key_id]
    assert lines[3].split()[:2] == ["decryption", opened.decryption_key_id]
    assert all("(made now)" in line for line in lines[1:4])
    assert f"sha256       {digest}" in lines
    assert readable_digest(digest) in out

    with open_token(station_uri) as token:
        objects = {(o.label, o.type): o for o in token.objects()}
        keys = {role: token.key(label=label) for role, label in LABELS.items()}
    assert keys["signing"].key_id == opened.signing_key_id
    assert keys["issuing_ca"].key_id == opened.issuing_ca_key_id
    assert keys["decryption"].key_id == opened.decryption_key_id
    for label in LABELS.values():
        private = objects[(label, "private")]
        assert (private.extractable, private.sensitive) == (False, True)
    with pytest.raises((AttributeError, VaultError)):  # made for ECDH only (python-pkcs11 offers it no sign())
        keys["decryption"].sign(b"x")


def test_running_again_reuses_the_keys(
    capsys: pytest.CaptureFixture[str], station_uri: Pkcs11Uri, tmp_path: Path
) -> None:
    first = request_json(capsys, station_uri, tmp_path / "first.json")
    second = request_json(capsys, station_uri, tmp_path / "second.json")
    assert {role: k["new"] for role, k in first["keys"].items()} == dict.fromkeys(LABELS, True)
    assert {role: k["new"] for role, k in second["keys"].items()} == dict.fromkeys(LABELS, False)
    for role, label in LABELS.items():
        assert first["keys"][role]["label"] == second["keys"][role]["label"] == label
        assert first["keys"][role]["key_id"] == second["keys"][role]["key_id"]
    a = open_enrolment_request((tmp_path / "first.json").read_bytes())
    b = open_enrolment_request((tmp_path / "second.json").read_bytes())
    assert (a.signing_key_id, a.issuing_ca_key_id, a.decryption_key_id) == (
        b.signing_key_id,
        b.issuing_ca_key_id,
        b.decryption_key_id,
    )
    assert second["sha256"] == b.digest and second["words"] == readable_digest(b.digest)
    assert second["station_id"] == "line-7" and second["request"] == str(tmp_path / "second.json")

    code, out, _ = request(capsys, station_uri, tmp_path / "third.json")
    assert code == 0
    assert out.count("(existing)") == 3


def test_an_existing_output_is_never_written_over_unless_forced(
    capsys: pytest.CaptureFixture[str], station_uri: Pkcs11Uri, tmp_path: Path
) -> None:
    output = tmp_path / "request.json"
    output.write_bytes(b"keep me")
    code, out, err = request(capsys, station_uri, output)
    assert code == 1
    assert out == ""
    assert_one_line_error(err, f"vault: error: {output} exists; vault does not write over files")
    assert output.read_bytes() == b"keep me"

    code, _, err = request(capsys, station_uri, output, "--force")
    assert code == 0, err
    assert open_enrolment_request(output.read_bytes()).station_id == "line-7"


def test_p384_keys_give_sha384_csrs(capsys: pytest.CaptureFixture[str], station_uri: Pkcs11Uri, tmp_path: Path) -> None:
    request_json(capsys, station_uri, tmp_path / "request.json", "--curve", "P-384")
    opened = open_enrolment_request((tmp_path / "request.json").read_bytes())
    assert opened.signing_csr.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA384
    assert opened.decryption_public_key.curve.name == "secp384r1"

    # the keys exist now as P-384: asking for P-256 is refused, not silently changed
    code, _, err = request(capsys, station_uri, tmp_path / "again.json")
    assert code == 1
    assert_one_line_error(err, "key 'station-signing' on token")
    assert "is P-384, not P-256; pass --curve P-384" in err


def test_an_existing_decryption_key_made_for_signing_is_refused(
    capsys: pytest.CaptureFixture[str], station_uri: Pkcs11Uri, tmp_path: Path
) -> None:
    with open_token(station_uri, rw=True) as token:
        token.generate_ec_key("station-decrypt", usage="sign")
    code, _, err = request(capsys, station_uri, tmp_path / "request.json")
    assert code == 1
    assert_one_line_error(err, "key 'station-decrypt' on token")
    assert "cannot do ECDH" in err
    assert not (tmp_path / "request.json").exists()


def test_an_existing_decryption_key_that_can_also_sign_is_refused(
    capsys: pytest.CaptureFixture[str], station_uri: Pkcs11Uri, tmp_path: Path
) -> None:
    """As another tool might make it: one EC key allowed both ECDSA and ECDH."""
    with open_token(station_uri, rw=True) as token:
        raw = token._session  # python-pkcs11 directly: vault itself never makes such a key
        raw.generate_keypair(
            KeyType.EC,
            id=b"both",
            label="station-decrypt",
            store=True,
            capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY | MechanismFlag.DERIVE,
            public_template={Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
        )
    code, _, err = request(capsys, station_uri, tmp_path / "request.json")
    assert code == 1
    assert_one_line_error(err, "key 'station-decrypt' on token")
    assert "can sign; a station decryption key must be usable for ECDH only" in err
    assert not (tmp_path / "request.json").exists()


def test_an_existing_signing_key_that_cannot_sign_is_refused(
    capsys: pytest.CaptureFixture[str], station_uri: Pkcs11Uri, tmp_path: Path
) -> None:
    with open_token(station_uri, rw=True) as token:
        token.generate_ec_key("station-ca", usage="derive")
    code, _, err = request(capsys, station_uri, tmp_path / "request.json")
    assert code == 1
    assert_one_line_error(err, "key 'station-ca' on token")
    assert "cannot sign" in err


@pytest.mark.parametrize("label", list(LABELS.values()))
def test_a_key_imported_from_software_is_refused_not_shown_as_existing(
    capsys: pytest.CaptureFixture[str], station_uri: Pkcs11Uri, tmp_path: Path, label: str
) -> None:
    """A key someone pasted in with another tool (not sensitive, extractable, not made on the token)."""
    with open_token(station_uri, rw=True) as token:
        import_software_key(token, label, usage="derive" if label == "station-decrypt" else "sign")
    code, out, err = request(capsys, station_uri, tmp_path / "request.json")
    assert code == 1
    assert "(existing)" not in out
    assert_one_line_error(
        err,
        f"key '{label}' on token '{station_uri.token}' is extractable (CKA_EXTRACTABLE); "
        "vault only uses keys that can never leave their token",
    )
    assert not (tmp_path / "request.json").exists()


@pytest.mark.parametrize(
    ("station_id", "extra", "expected"),
    [
        ("Line-7", (), "station id 'Line-7' must be a lower-case letter"),
        ("7-line", (), "station id '7-line' must be"),
        ("line-7", ("--name", ""), "station name '' must be 1 to 128 characters"),
    ],
    ids=["upper-case", "digit-first", "empty-name"],
)
def test_bad_station_ids_and_names_are_refused_before_the_token_is_touched(
    capsys: pytest.CaptureFixture[str],
    station_uri: Pkcs11Uri,
    tmp_path: Path,
    station_id: str,
    extra: tuple[str, ...],
    expected: str,
) -> None:
    code, _, err = request(capsys, station_uri, tmp_path / "request.json", *extra, station_id=station_id)
    assert code == 1
    assert_one_line_error(err, expected)
    with open_token(station_uri) as token:
        assert token.objects() == []


def test_a_token_uri_naming_a_key_is_refused(
    capsys: pytest.CaptureFixture[str], station_uri: Pkcs11Uri, tmp_path: Path
) -> None:
    code, _, err = request(capsys, station_uri.with_object("station-signing"), tmp_path / "request.json")
    assert code == 1
    assert_one_line_error(err, "--token names the station's token, not a key")


def test_an_unknown_curve_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], station_uri: Pkcs11Uri, tmp_path: Path
) -> None:
    code, _, err = request(capsys, station_uri, tmp_path / "request.json", "--curve", "P-521")
    assert code == 2
    assert "'P-521' is not one of 'P-256', 'P-384'" in err
