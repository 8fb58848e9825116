"""The root ceremony end to end on real SoftHSM2 tokens, through the CLI, and its refusals."""

from __future__ import annotations

import datetime
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pkcs11 import Attribute, ObjectClass

from tests.cli.test_token_cli import assert_one_line_error, run
from tests.conftest import so_uri
from vault.ceremony import Transcript, check_share_against_transcript, share_text
from vault.ceremony._common import root_pins
from vault.ceremony._lint import require_clean
from vault.ceremony._sealed import read_sealed_share
from vault.ceremony._shares import ShareSetRecord, combine_shares
from vault.errors import PinIncorrectError, ShareError, SignatureError, TranscriptError
from vault.formats import Envelope
from vault.token import Pkcs11Uri, format_uri, open_token

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "policies" / "root-ceremony.yaml"


def write_credentials(path: Path, tokens: dict[str, Pkcs11Uri]) -> Path:
    lines = [f'root: "{format_uri(tokens["root"])}"', f'root_so: "{format_uri(so_uri(tokens["root"]))}"', "officers:"]
    lines += [f'  officer-{i}: "{format_uri(tokens[f"officer-{i}"])}"' for i in (1, 2, 3)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def ceremony(
    fresh_tokens: Callable[[list[str]], dict[str, Pkcs11Uri]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[Path, dict[str, Pkcs11Uri]]:
    tokens = fresh_tokens(["root", "officer-1", "officer-2", "officer-3"])
    creds = write_credentials(tmp_path / "creds.yaml", tokens)
    out = tmp_path / "out"
    code, stdout, err = run(
        capsys, "ceremony", "run", str(SCRIPT), "--credentials", str(creds), "--out", str(out), "--rehearsal", "--yes"
    )
    assert code == 0, err
    assert "REHEARSAL" in err
    return out, tokens


def test_root_ceremony_outputs_verify(
    ceremony: tuple[Path, dict[str, Pkcs11Uri]], capsys: pytest.CaptureFixture[str]
) -> None:
    out, tokens = ceremony
    assert sorted(p.name for p in out.iterdir()) == [
        "policy-v1.json",
        "root-ca.pem",
        "shares",
        "transcript.html",
        "transcript.json",
    ]
    code, stdout, _ = run(
        capsys, "ceremony", "verify", str(out / "transcript.json"), "--root-cert", str(out / "root-ca.pem")
    )
    assert code == 0
    assert "transcript OK" in stdout and "officer-1, officer-2, officer-3" in stdout

    # the root certificate lints clean and verifies with OpenSSL; it says it is a rehearsal
    cert = x509.load_pem_x509_certificate((out / "root-ca.pem").read_bytes())
    require_clean(cert.public_bytes(serialization.Encoding.DER))
    assert "REHEARSAL" in cert.subject.rfc4514_string()
    ok = subprocess.run(
        ["openssl", "verify", "-CAfile", str(out / "root-ca.pem"), str(out / "root-ca.pem")], capture_output=True
    )
    assert ok.returncode == 0

    # every output is loudly a rehearsal
    assert "REHEARSAL" in (out / "transcript.html").read_text()
    assert (
        json.loads(Envelope.from_json((out / "policy-v1.json").read_bytes()).payload)["predicate"]["rehearsal"] is True
    )
    assert sorted(p.name for p in (out / "shares").iterdir()) == [
        "officer-1.txt",
        "officer-2.txt",
        "officer-3.sealed.json",
    ]
    assert all(p.read_text().startswith("REHEARSAL") for p in (out / "shares").glob("*.txt"))

    # each custodian proves their share; each share file is private to its owner
    for i in (1, 2):
        share = out / "shares" / f"officer-{i}.txt"
        assert share.stat().st_mode & 0o777 == 0o600
        code, stdout, _ = run(capsys, "shares", "check", str(out / "transcript.json"), "--share", str(share))
        assert code == 0 and f"share {i} of 3, threshold 2" in stdout
    # officer-3's share is sealed to their own token: it opens only there
    sealed = out / "shares" / "officer-3.sealed.json"
    assert sealed.stat().st_mode & 0o777 == 0o600
    assert b"officer-3" in sealed.read_bytes() and len(sealed.read_text().split()) == 1  # no words in clear
    check = ["shares", "check", str(out / "transcript.json"), "--share", str(sealed)]
    code, stdout, _ = run(capsys, *check, "--token", format_uri(tokens["officer-3"]))
    assert code == 0 and "share 3 of 3, threshold 2" in stdout
    code, _, err = run(capsys, *check)
    assert code == 1
    assert_one_line_error(err, "sealed to a token")
    code, _, err = run(capsys, *check, "--token", format_uri(tokens["officer-2"]))
    assert code == 1
    assert err.startswith("vault: error:") and len(err.strip().splitlines()) == 1


def test_root_pin_is_replaced_and_only_a_quorum_of_shares_opens_the_token(
    ceremony: tuple[Path, dict[str, Pkcs11Uri]],
) -> None:
    out, tokens = ceremony
    # neither the user PIN nor the security officer's PIN set up before the ceremony opens it now
    with pytest.raises(PinIncorrectError):
        with open_token(tokens["root"]):
            pass
    with pytest.raises(PinIncorrectError):
        with open_token(so_uri(tokens["root"]), rw=True, so=True):
            pass
    shares = [share_text((out / "shares" / f"officer-{i}.txt").read_text()) for i in (1, 2)]
    with open_token(tokens["officer-3"]) as officer_3:
        shares.append(read_sealed_share((out / "shares" / "officer-3.sealed.json").read_bytes()).open_in(officer_3))
    transcript = Transcript.from_bytes(Envelope.from_json((out / "transcript.json").read_bytes()).payload)
    record = ShareSetRecord.from_dict(transcript.find("split-root-pin").details["share_set"])
    with pytest.raises(ShareError, match="1 more missing"):
        combine_shares(shares[:1], record)
    for pair in ([0, 1], [1, 2], [0, 2]):
        pin, so_pin = root_pins(combine_shares([shares[i] for i in pair], record))
        with open_token(Pkcs11Uri(token=tokens["root"].token, pin_value=so_pin), rw=True, so=True):
            pass  # the quorum also holds the security officer's PIN
        with open_token(Pkcs11Uri(token=tokens["root"].token, pin_value=pin)) as root:
            key = root.key(label="root", backupable=True)  # the root key alone has a backup path
            private = root._session.get_key(object_class=ObjectClass.PRIVATE_KEY, label="root")
            assert private[Attribute.SENSITIVE] is True
            assert private[Attribute.WRAP_WITH_TRUSTED] is True  # leaves only wrapped under an SO-trusted KEK
    assert key.key_id == transcript.find("generate-root-key").details["key_id"]
    for i in (1, 2, 3):
        with open_token(tokens[f"officer-{i}"]) as officer:
            private = officer._session.get_key(object_class=ObjectClass.PRIVATE_KEY, label="officer-signing")
            assert private[Attribute.EXTRACTABLE] is False and private[Attribute.SENSITIVE] is True


def test_altered_and_foreign_shares_are_refused(
    ceremony: tuple[Path, dict[str, Pkcs11Uri]], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out, _ = ceremony
    words = share_text((out / "shares" / "officer-1.txt").read_text()).split()
    words[5] = "academic" if words[5] != "academic" else "acid"
    altered = tmp_path / "altered.txt"
    altered.write_text(" ".join(words))
    code, _, err = run(capsys, "shares", "check", str(out / "transcript.json"), "--share", str(altered))
    assert code == 1
    assert_one_line_error(err, "checksum")

    from vault.ceremony._shares import split_secret

    foreign = split_secret(bytes(range(32)), 2, 3).mnemonics[0]
    with pytest.raises(ShareError):
        check_share_against_transcript((out / "transcript.json").read_bytes(), foreign)


def test_transcript_with_a_changed_byte_or_a_removed_or_moved_step_fails(
    ceremony: tuple[Path, dict[str, Pkcs11Uri]],
) -> None:
    from vault.ceremony import verify_transcript

    out, _ = ceremony
    data = (out / "transcript.json").read_bytes()
    envelope = Envelope.from_json(data)
    altered_payload = envelope.payload.replace(b'"officer-2"', b'"officer-9"', 1)
    assert altered_payload != envelope.payload
    forged = Envelope(envelope.payload_type, altered_payload, envelope.signatures).to_json()
    with pytest.raises(SignatureError):
        verify_transcript(forged)

    transcript = Transcript.from_bytes(envelope.payload)
    removed = Transcript(transcript.header, transcript.steps[:3] + transcript.steps[4:])
    with pytest.raises(TranscriptError, match="removed or moved"):
        removed.check_chain()
    swapped = list(transcript.steps)
    swapped[2], swapped[3] = swapped[3], swapped[2]
    with pytest.raises(TranscriptError):
        Transcript(transcript.header, swapped).check_chain()
    edited = list(transcript.steps)
    edited[4] = type(edited[4])(**{**edited[4].to_dict(), "actor": "mallory"})
    with pytest.raises(TranscriptError, match="was altered"):
        Transcript(transcript.header, edited).check_chain()
    # the pinned root must be the transcript's root
    other = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "other root")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(other.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(other, hashes.SHA256())
    )
    with pytest.raises(TranscriptError, match="not the pinned root"):
        verify_transcript(data, root_certificate=cert)


def test_script_typo_names_field_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], softhsm_dir: Path
) -> None:
    script = tmp_path / "root.yaml"
    script.write_text(SCRIPT.read_text().replace("  threshold: 2 ", "  thresold: 2 "))
    creds = tmp_path / "creds.yaml"
    creds.write_text('root: "pkcs11:token=vault-root"\nofficers:\n  officer-1: "pkcs11:token=vault-officer-1"\n')
    code, _, err = run(
        capsys,
        "ceremony",
        "run",
        str(script),
        "--credentials",
        str(creds),
        "--out",
        str(tmp_path / "o"),
        "--rehearsal",
        "--yes",
    )
    assert code == 1
    assert_one_line_error(err, "unknown field 'thresold' (did you mean 'threshold'?)")
    line = next(i for i, text in enumerate(script.read_text().splitlines(), 1) if "thresold" in text)
    assert f"root.yaml:{line}:" in err
    assert not (tmp_path / "o").exists()


def test_softhsm_without_rehearsal_and_an_existing_output_folder_are_refused(
    fresh_tokens: Callable[[list[str]], dict[str, Pkcs11Uri]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tokens = fresh_tokens(["root", "officer-1", "officer-2", "officer-3"])
    creds = write_credentials(tmp_path / "creds.yaml", tokens)
    code, _, err = run(
        capsys, "ceremony", "run", str(SCRIPT), "--credentials", str(creds), "--out", str(tmp_path / "o"), "--yes"
    )
    assert code == 1
    assert_one_line_error(err, "must be run with --rehearsal")
    (tmp_path / "exists").mkdir()
    code, _, err = run(
        capsys,
        "ceremony",
        "run",
        str(SCRIPT),
        "--credentials",
        str(creds),
        "--out",
        str(tmp_path / "exists"),
        "--rehearsal",
        "--yes",
    )
    assert code == 1
    assert "exists; a ceremony writes into a new folder only" in err
    with open_token(tokens["root"]) as root:  # nothing happened to the token
        assert root.objects() == []
