"""The ceremonies after the root one, end to end on real SoftHSM2 tokens, and their refusals."""

from __future__ import annotations

import datetime
import json
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.ceremony import conftest
from tests.ceremony.conftest import NOW, POLICIES, Setup, assert_one_line_error
from tests.cli.test_token_cli import run
from tests.conftest import so_uri
from vault.ceremony import verify_transcript
from vault.ceremony._lint import require_clean
from vault.crypto import key_id, verify_signature
from vault.errors import PolicyError, SignatureError, ThresholdError
from vault.formats import Envelope
from vault.policy import load_policy
from vault.token import Pkcs11Uri, format_uri, open_token

setup = conftest.setup  # tests/bundle takes the root ceremony fixture from here


def _openssl_verify(root: Path, cert: Path) -> None:
    result = subprocess.run(["openssl", "verify", "-CAfile", str(root), str(cert)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _der(path: Path) -> bytes:
    return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(serialization.Encoding.DER)


def test_roles_then_station_enrolment_then_renewal_and_revocation(setup: Setup) -> None:
    # roles: release signer, three approvers, auditor -> policy v2
    code, stdout, err = setup.ceremony(POLICIES / "roles.yaml", setup.root / "policy-v1.json", "roles")
    assert code == 0, err
    roles = setup.tmp / "roles"
    v2 = setup.policy(roles / "policy-v2.json", highest_seen=1)
    assert v2.version == 2 and v2.approvers_threshold == 2
    assert sorted(v2.approvers) == ["approver-1", "approver-2", "approver-3"]
    assert v2.release_signer is not None and v2.auditor is not None
    for cert in sorted((roles / "certs").iterdir()):
        require_clean(_der(cert))  # pkilint, RFC 5280: no error
        _openssl_verify(setup.root / "root-ca.pem", cert)
    with open_token(setup.tokens["auditor"]) as token:
        assert token.key(label="auditor-decrypt").key_id == v2.auditor.key_id
    report = verify_transcript((roles / "transcript.json").read_bytes(), root_certificate=setup.root_cert)
    assert report.type == "roles" and report.officers == ("officer-1", "officer-3") and report.rehearsal

    # the station makes its keys and its request; the officers enrol it -> policy v3
    request = setup.tmp / "station-1-request.json"
    code, stdout, err = run(
        setup.capsys, "station", "request", "--token", format_uri(setup.tokens["station"]),
        "--station-id", "station-1", "-o", str(request),
    )  # fmt: skip
    assert code == 0, err
    code, stdout, err = setup.ceremony(
        POLICIES / "enrol-station.yaml", roles / "policy-v2.json", "station", extra=("--request", str(request))
    )
    assert code == 0, err
    enrol = setup.tmp / "station"
    v3 = setup.policy(enrol / "policy-v3.json", highest_seen=2)
    station = v3.stations["station-1"]
    with open_token(setup.tokens["station"]) as token:
        assert token.key(label="station-signing").key_id == station.signing.key_id
        assert token.key(label="station-decrypt").key_id == station.decryption.key_id
        assert token.key(label="station-ca").key_id == station.issuing_ca.key_id
        for info in token.objects():
            if info.type == "private":
                assert info.extractable is False and info.sensitive is True
    ca = station.issuing_ca.certificate
    assert ca is not None
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0
    for name in ("signing", "decryption", "issuing-ca"):
        path = enrol / "certs" / f"station-1-{name}.pem"
        require_clean(_der(path))
        _openssl_verify(setup.root / "root-ca.pem", path)
    verify_transcript((enrol / "transcript.json").read_bytes(), root_certificate=setup.root_cert)
    assert v3.approvers == v2.approvers  # the other roles carry over

    # renew -> v4, then revoke the station -> v5: its three keys are listed as revoked
    code, _, err = setup.ceremony(POLICIES / "renew-policy.yaml", enrol / "policy-v3.json", "renew", shares=(2, 3))
    assert code == 0, err
    v4 = setup.policy(setup.tmp / "renew" / "policy-v4.json", highest_seen=3)
    assert "station-1" in v4.stations
    revoke = setup.tmp / "revoke.yaml"
    revoke.write_text((POLICIES / "revoke.yaml").read_text().replace("station-2", "station-1"))
    code, _, err = setup.ceremony(revoke, setup.tmp / "renew" / "policy-v4.json", "revoke")
    assert code == 0, err
    v5 = setup.policy(setup.tmp / "revoke" / "policy-v5.json", highest_seen=4)
    assert v5.stations == {}
    assert {r.key_id for r in v5.revoked} == {k.key_id for k in station.keys()}

    # enrolling the same keys again is refused: they are revoked
    code, _, err = setup.ceremony(
        POLICIES / "enrol-station.yaml", setup.tmp / "revoke" / "policy-v5.json", "again",
        extra=("--request", str(request)),
    )  # fmt: skip
    assert code == 1
    assert_one_line_error(err, "revoked in policy v5")

    # a verifier that has seen v5 refuses v3 (rollback)
    with pytest.raises(PolicyError, match="rollback"):
        setup.policy(enrol / "policy-v3.json", highest_seen=5)


def test_rotating_an_approver_revokes_the_old_key(setup: Setup) -> None:
    code, _, err = setup.ceremony(POLICIES / "roles.yaml", setup.root / "policy-v1.json", "roles")
    assert code == 0, err
    v2 = setup.policy(setup.tmp / "roles" / "policy-v2.json")
    # approver-3 leaves; the others get new keys under a new label
    script = setup.tmp / "rotate.yaml"
    text = (POLICIES / "roles.yaml").read_text().replace("key_label: approver-signing", "key_label: approver-2027")
    text = text.replace("    - id: approver-3\n      name: Grace Lin (product security)\n", "")
    script.write_text(text)
    code, _, err = setup.ceremony(script, setup.tmp / "roles" / "policy-v2.json", "rotate")
    assert code == 0, err
    v3 = setup.policy(setup.tmp / "rotate" / "policy-v3.json")
    assert sorted(v3.approvers) == ["approver-1", "approver-2"]
    revoked = {r.key_id: r for r in v3.revoked}
    assert set(revoked) == {k.key_id for k in v2.approvers.values()}
    assert revoked[v2.approvers["approver-3"].key_id].reason == "removed from the approvers"
    assert revoked[v2.approvers["approver-1"].key_id].reason.startswith("rotated")
    assert v3.release_signer == v2.release_signer  # unchanged keys keep their certificates


def test_quorum_refusals(setup: Setup, tmp_path: Path) -> None:
    v1 = setup.root / "policy-v1.json"
    renew = POLICIES / "renew-policy.yaml"
    # m - 1 shares: says how many are missing
    code, _, err = setup.ceremony(renew, v1, "one", shares=(1,))
    assert code == 1
    assert_one_line_error(err, "1 more")
    # an altered share: refused by position and reason, never corrected
    words = setup.share(2).read_text().splitlines()[-1].split()
    words[3] = "academic" if words[3] != "academic" else "acid"
    altered = tmp_path / "altered.txt"
    altered.write_text(" ".join(words))
    argv = ["ceremony", "run", str(renew), "--credentials", str(setup.credentials("c")), "--policy", str(v1)]
    argv += ["--root-cert", str(setup.root / "root-ca.pem"), "--out", str(tmp_path / "alt"), "--rehearsal", "--yes"]
    code, _, err = run(setup.capsys, *argv, "--share", str(setup.share(1)), "--share", str(altered))
    assert code == 1
    assert_one_line_error(err, "share 2")
    # a share from another set (another root ceremony's)
    from vault.ceremony._shares import split_secret

    foreign = tmp_path / "foreign.txt"
    foreign.write_text(split_secret(bytes(32), 2, 3).mnemonics[1])
    argv[argv.index(str(tmp_path / "alt"))] = str(tmp_path / "foreign")
    code, _, err = run(setup.capsys, *argv, "--share", str(setup.share(1)), "--share", str(foreign))
    assert code == 1
    assert_one_line_error(err, "share 2")
    # fewer officers present than the threshold
    code, _, err = setup.ceremony(renew, v1, "alone", shares=(1, 2), creds=setup.credentials("alone", officers=(1,)))
    assert code == 1
    assert_one_line_error(err, "2 officers must be present")
    # a policy with one byte changed
    data = bytearray(v1.read_bytes())
    data[data.index(b'"payload":"') + 40] ^= 0x01
    changed = tmp_path / "changed.json"
    changed.write_bytes(bytes(data))
    code, _, err = setup.ceremony(renew, changed, "changed")
    assert code == 1
    assert_one_line_error(err, "forged or altered")
    # a refused run leaves no output folder behind
    for out in ("one", "alt", "foreign", "alone", "changed"):
        assert not (tmp_path / out).exists(), out


def test_a_policy_the_officers_did_not_sign_is_refused(setup: Setup) -> None:
    envelope = Envelope.from_json((setup.root / "policy-v1.json").read_bytes())
    root_only = Envelope(envelope.payload_type, envelope.payload, envelope.signatures[:1]).to_json()
    with pytest.raises(ThresholdError):
        load_policy(root_only, setup.root_cert, now=NOW)
    other = json.loads(envelope.payload)
    assert other["predicate"]["version"] == 1
    forged = Envelope(
        envelope.payload_type, envelope.payload.replace(b'"version":1', b'"version":2'), envelope.signatures
    )
    with pytest.raises(SignatureError):
        load_policy(forged.to_json(), setup.root_cert, now=NOW)
    with pytest.raises(PolicyError, match="expired"):
        load_policy(envelope.to_json(), setup.root_cert, now=NOW + datetime.timedelta(days=400))


def test_backup_and_recovery_onto_a_fresh_token(setup: Setup) -> None:
    v1 = setup.root / "policy-v1.json"
    code, stdout, err = setup.ceremony(POLICIES / "backup.yaml", v1, "backup")
    assert code == 0, err
    backup = setup.tmp / "backup"
    assert (backup / "root-key-backup.json").exists()
    kek_shares = sorted((backup / "backup-shares").iterdir())
    assert len(kek_shares) == 3 and all(p.stat().st_mode & 0o777 == 0o600 for p in kek_shares)
    with open_token(setup.tokens["recovery"]) as fresh:
        assert not [o for o in fresh.objects() if o.type == "private"]

    # one KEK share is not enough
    creds = setup.credentials(
        "recover", (1, 3), recovery=setup.tokens["recovery"], recovery_so=so_uri(setup.tokens["recovery"])
    )
    backup_args = ("--backup", str(backup / "root-key-backup.json"), "--backup-share", str(kek_shares[0]))
    code, _, err = setup.ceremony(POLICIES / "recover.yaml", v1, "recover-short", creds=creds, extra=backup_args)
    assert code == 1
    assert_one_line_error(err, "1 more")

    code, _, err = setup.ceremony(
        POLICIES / "recover.yaml", v1, "recover", creds=creds,
        extra=(*backup_args, "--backup-share", str(kek_shares[2])),
    )  # fmt: skip
    assert code == 0, err
    verify_transcript((setup.tmp / "recover" / "transcript.json").read_bytes(), root_certificate=setup.root_cert)

    # the recovered token holds the same key, opened by the officers' existing shares
    root_public = setup.root_cert.public_key()
    assert isinstance(root_public, ec.EllipticCurvePublicKey)
    from vault.ceremony._common import root_pins
    from vault.ceremony._custody import share_text
    from vault.ceremony._quorum import quorum_secret

    policy = setup.policy(v1)
    secret = quorum_secret(policy, [share_text(setup.share(i).read_text()) for i in (1, 2)])
    user_pin, _ = root_pins(secret)
    with open_token(Pkcs11Uri(token=setup.tokens["recovery"].token, pin_value=user_pin)) as token:
        key = token.key_by_public(root_public, backupable=True, unwrapped=True)  # vault unwrapped it here
        assert key.key_id == key_id(root_public)
        signature = key.sign(b"signed by the recovered root")
    verify_signature(root_public, b"signed by the recovered root", signature)

    # and the recovered token runs the next ceremony as the root
    recovered = setup.tmp / "recovered-creds.yaml"
    recovered.write_text(
        setup.credentials("tmp", (1, 3))
        .read_text()
        .replace(f"token={setup.tokens['root'].token}", f"token={setup.tokens['recovery'].token}")
    )
    code, _, err = setup.ceremony(POLICIES / "renew-policy.yaml", v1, "after", creds=recovered)
    assert code == 0, err
    assert setup.policy(setup.tmp / "after" / "policy-v2.json").version == 2


def test_the_roles_ceremony_enrols_the_auditors_cosigning_key_and_revoke_takes_it_out(setup: Setup) -> None:
    code, _, err = setup.ceremony(POLICIES / "roles.yaml", setup.root / "policy-v1.json", "roles")
    assert code == 0, err
    v2 = setup.policy(setup.tmp / "roles" / "policy-v2.json")
    assert v2.auditor is not None and v2.cosigners_threshold == 1 and sorted(v2.cosigners) == ["auditor"]
    with open_token(setup.tokens["auditor"]) as token:  # a second key in the auditor's token: it signs
        cosigning = token.key(label="auditor-cosign")
        assert cosigning.key_id == v2.cosigners["auditor"].key_id != v2.auditor.key_id
        verify_signature(cosigning.public_key, b"checkpoint", cosigning.sign(b"checkpoint"))
    _openssl_verify(setup.root / "root-ca.pem", setup.tmp / "roles" / "certs" / "cosigner-auditor.pem")

    script = setup.tmp / "revoke-cosigner.yaml"
    script.write_text(
        "ceremony: revoke\nname: Revoke the cosigner\nrevoke:\n"
        "  - role: cosigner\n    id: auditor\n    reason: cosigning key lost\npolicy:\n  expires_days: 365\n"
    )
    code, _, err = setup.ceremony(script, setup.tmp / "roles" / "policy-v2.json", "revoke")
    assert code == 0, err
    v3 = setup.policy(setup.tmp / "revoke" / "policy-v3.json")
    assert v3.cosigners == {} and v3.auditor == v2.auditor
    (revoked,) = [r for r in v3.revoked if r.role == "cosigner"]
    assert (revoked.key_id, revoked.holder, revoked.version) == (v2.cosigners["auditor"].key_id, "auditor", 3)
