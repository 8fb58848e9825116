"""Every ceremony asks its tokens what they can do, and refuses before anything changes.

The token that lacks a capability is a real SoftHSM2 token read through a
configuration that leaves the mechanism out (:mod:`tests.limited`); the
refusal is one line naming the token, the capability and the role, and
every token is checked afterwards: no key, no object, no head was made.
"""

from __future__ import annotations

from pathlib import Path

from tests.ceremony.conftest import POLICIES, Setup
from tests.cli.test_token_cli import run
from tests.conftest import so_uri
from tests.limited import error_lines, limited_env, vault_process
from vault.token import Pkcs11Uri, format_uri, open_token


def _objects(uri: Pkcs11Uri) -> list[tuple[str, str, str]]:
    with open_token(uri) as token:
        return sorted((o.label, o.type, o.id) for o in token.objects())


def _argv(setup: Setup, script: str, policy: Path, out: str, creds: Path, *extra: str) -> list[str]:
    argv = ["ceremony", "run", str(POLICIES / script), "--credentials", str(creds), "--policy", str(policy)]
    argv += ["--root-cert", str(setup.root / "root-ca.pem"), "--out", str(setup.tmp / out)]
    argv += ["--share", str(setup.share(1)), "--share", str(setup.share(2))]
    return [*argv, *extra, "--rehearsal", "--yes"]


def test_each_ceremony_refuses_a_token_without_a_capability_before_anything_changes(
    setup: Setup, softhsm_dir: Path
) -> None:
    v1 = setup.root / "policy-v1.json"
    holders = ["release", "approver-1", "approver-2", "approver-3", "auditor", "recovery"]
    before = {name: _objects(setup.tokens[name]) for name in holders}
    head = setup.policy_head()

    # roles: the auditor's token cannot do ECDH; the release signer's and approvers' keys, asked for
    # first, are not made either
    no_ecdh = limited_env(softhsm_dir, setup.tmp, "CKM_ECDH1_DERIVE")
    code, _, err = vault_process(no_ecdh, *_argv(setup, "roles.yaml", v1, "roles", setup.credentials("roles")))
    assert code == 1 and "Traceback" not in err
    assert error_lines(err) == [
        f"vault: error: token '{setup.tokens['auditor'].token}' (SoftHSM2) cannot serve as the token of the "
        "auditor: it has no ECDH key agreement (CKM_ECDH1_DERIVE)"
    ]
    assert not (setup.tmp / "roles").exists()

    # station enrolment: the root token cannot sign
    request = setup.tmp / "request.json"
    code, _, err = run(setup.capsys, "station", "request", "--token", format_uri(setup.tokens["station"]),
                       "--station-id", "station-1", "-o", str(request))  # fmt: skip
    assert code == 0, err
    no_ecdsa = limited_env(softhsm_dir, setup.tmp, "CKM_ECDSA")
    creds = setup.credentials("enrol")
    code, _, err = vault_process(
        no_ecdsa, *_argv(setup, "enrol-station.yaml", v1, "enrol", creds, "--request", str(request))
    )
    assert code == 1 and "Traceback" not in err
    assert error_lines(err) == [
        f"vault: error: token '{setup.tokens['root'].token}' (SoftHSM2) cannot serve as the root token: "
        "it has no ECDSA signing (CKM_ECDSA)"
    ]
    assert not (setup.tmp / "enrol").exists()

    # recovery: the new token cannot unwrap the backup
    code, _, err = setup.ceremony(POLICIES / "backup.yaml", v1, "backup")
    assert code == 0, err
    backup = setup.tmp / "backup"
    kek = sorted((backup / "backup-shares").iterdir())
    creds = setup.credentials(
        "recover", (1, 2), recovery=setup.tokens["recovery"], recovery_so=so_uri(setup.tokens["recovery"])
    )
    no_unwrap = limited_env(softhsm_dir, setup.tmp, "CKM_AES_KEY_WRAP_PAD")
    argv = _argv(setup, "recover.yaml", v1, "recover", creds, "--backup", str(backup / "root-key-backup.json"),
                 "--backup-share", str(kek[0]), "--backup-share", str(kek[1]))  # fmt: skip
    code, _, err = vault_process(no_unwrap, *argv)
    assert code == 1 and "Traceback" not in err
    assert error_lines(err) == [
        f"vault: error: token '{setup.tokens['recovery'].token}' (SoftHSM2) cannot serve as the recovery token: "
        "it has no AES key unwrap of a key backup (CKM_AES_KEY_WRAP_PAD)"
    ]
    assert not (setup.tmp / "recover").exists()

    # nothing changed on any token: no key made, no object, the root's head where it was
    assert {name: _objects(setup.tokens[name]) for name in holders} == before
    assert setup.policy_head() == head
    with open_token(setup.tokens["recovery"]) as token:  # and the recovery token's PINs are its own still
        assert token.objects() == []


def test_station_request_refuses_a_token_without_ecdh_before_any_key_is_made(
    fresh_tokens: object, softhsm_dir: Path, tmp_path: Path
) -> None:
    station = fresh_tokens(["station"])["station"]  # type: ignore[operator]
    no_ecdh = limited_env(softhsm_dir, tmp_path, "CKM_ECDH1_DERIVE")
    code, _, err = vault_process(no_ecdh, "station", "request", "--token", format_uri(station),
                                 "--station-id", "station-9", "-o", str(tmp_path / "request.json"))  # fmt: skip
    assert code == 1 and "Traceback" not in err
    assert error_lines(err) == [
        f"vault: error: token '{station.token}' (SoftHSM2) cannot serve as the station token: "
        "it has no ECDH key agreement (CKM_ECDH1_DERIVE)"
    ]
    assert not (tmp_path / "request.json").exists()
    assert _objects(station) == []
