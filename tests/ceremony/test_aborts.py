"""Ceremonies that stop: no output folder is left behind, and the same ceremony run again finishes."""

from __future__ import annotations

import datetime
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.ceremony.conftest import POLICIES, Setup, assert_one_line_error, run_ceremony
from tests.ceremony.test_root_ceremony import SCRIPT, write_credentials
from tests.cli.test_token_cli import run
from tests.conftest import so_uri
from tests.helpers import import_software_key
from vault.ceremony import (
    Transcript,
    load_credentials,
    load_root_script,
    run_root_ceremony,
    share_text,
    verify_transcript,
)
from vault.ceremony._common import root_pins, uninterrupted
from vault.ceremony._shares import ShareSetRecord, combine_shares
from vault.errors import InputError, PinIncorrectError
from vault.formats import Envelope
from vault.token import Pkcs11Uri, format_uri, open_token

FreshTokens = Callable[[list[str]], dict[str, Pkcs11Uri]]
RENEW = POLICIES / "renew-policy.yaml"


def stop_at(prefix: str, error: BaseException) -> Callable[[str], None]:
    """A confirm hook that answers yes, until the step starting with ``prefix``: there it raises ``error``."""

    def confirm(step: str) -> None:
        if step.startswith(prefix):
            raise error

    return confirm


def typed_no(step: str) -> InputError:
    return InputError(f"stopped before: {step}")  # what the CLI raises for anything but a typed "yes"


def transcript_steps(path: Path) -> dict[str, dict[str, object]]:
    steps = Transcript.from_bytes(Envelope.from_json(path.read_bytes()).payload).steps
    return {s.action: s.details for s in steps}


def private_keys(uri: Pkcs11Uri) -> list[str]:
    with open_token(uri) as token:
        return [o.label for o in token.objects() if o.type == "private"]


@pytest.mark.parametrize(
    "stop",
    [typed_no("replace the root token's PINs"), KeyboardInterrupt()],
    ids=["typed-no", "ctrl-c"],
)
def test_a_root_ceremony_stopped_after_the_root_key_exists_is_run_again_to_completion(
    fresh_tokens: FreshTokens, tmp_path: Path, stop: BaseException
) -> None:
    tokens = fresh_tokens(["root", "officer-1", "officer-2", "officer-3"])
    creds = load_credentials(write_credentials(tmp_path / "creds.yaml", tokens))
    script = load_root_script(SCRIPT)
    out = tmp_path / "ceremonies" / "root"  # its parent folder is new too

    with pytest.raises(type(stop)):
        run_root_ceremony(script, creds, out, rehearsal=True, confirm=stop_at("replace the root token's PINs", stop))
    assert not (tmp_path / "ceremonies").exists()  # what this run made is gone; tmp_path, which existed, stays
    assert tmp_path.is_dir()
    assert private_keys(tokens["root"]) == ["root"]  # the key stays; the token's PIN is still the initial one

    asked: list[str] = []
    result = run_root_ceremony(script, creds, out, rehearsal=True, confirm=asked.append)
    assert asked[0].startswith("use the root key ") and "that a root ceremony which stopped left" in asked[0]
    assert not any(step.startswith("generate the root key") for step in asked)
    steps = transcript_steps(result.transcript)
    assert "generate-root-key" not in steps
    assert steps["root-key"]["found"] == "left by a root ceremony that stopped before the PINs changed"
    report = verify_transcript(result.transcript.read_bytes(), root_certificate=result.root_certificate)
    assert report.root_key_id == steps["root-key"]["key_id"]
    assert sorted(p.name for p in out.iterdir()) == [
        "policy-v1.json", "root-ca.pem", "shares", "transcript.html", "transcript.json",
    ]  # fmt: skip


def test_a_root_ceremony_stopped_before_the_root_key_leaves_nothing(
    fresh_tokens: FreshTokens, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tokens = fresh_tokens(["root", "officer-1", "officer-2", "officer-3"])
    creds = write_credentials(tmp_path / "creds.yaml", tokens)
    # without --yes and without a terminal to type "yes" on, the first step is refused
    code, _, err = run(capsys, "ceremony", "run", str(SCRIPT), "--credentials", str(creds),
                       "--out", str(tmp_path / "out"), "--rehearsal")  # fmt: skip
    assert code == 1
    assert_one_line_error(
        "\n".join(line for line in err.splitlines() if "REHEARSAL" not in line), "needs a typed confirmation"
    )
    assert not (tmp_path / "out").exists()
    assert private_keys(tokens["root"]) == []
    code, _, err = run(capsys, "ceremony", "run", str(SCRIPT), "--credentials", str(creds),
                       "--out", str(tmp_path / "out"), "--rehearsal", "--yes")  # fmt: skip
    assert code == 0, err


def test_a_root_key_imported_from_software_is_not_taken_for_one_a_ceremony_left(
    fresh_tokens: FreshTokens, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tokens = fresh_tokens(["root", "officer-1", "officer-2", "officer-3"])
    with open_token(tokens["root"], rw=True) as token:
        import_software_key(token, "root")
    creds = write_credentials(tmp_path / "creds.yaml", tokens)
    code, _, err = run(capsys, "ceremony", "run", str(SCRIPT), "--credentials", str(creds),
                       "--out", str(tmp_path / "out"), "--rehearsal", "--yes")  # fmt: skip
    assert code == 1
    assert_one_line_error(
        "\n".join(line for line in err.splitlines() if "REHEARSAL" not in line),
        f"key 'root' on token '{tokens['root'].token}' is extractable (CKA_EXTRACTABLE) without CKA_WRAP_WITH_TRUSTED",
    )
    assert not (tmp_path / "out").exists()


def test_an_officer_key_imported_from_software_stops_the_root_ceremony(
    fresh_tokens: FreshTokens, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tokens = fresh_tokens(["root", "officer-1", "officer-2", "officer-3"])
    with open_token(tokens["officer-2"], rw=True) as token:
        import_software_key(token, "officer-signing")
    creds = write_credentials(tmp_path / "creds.yaml", tokens)
    code, _, err = run(capsys, "ceremony", "run", str(SCRIPT), "--credentials", str(creds),
                       "--out", str(tmp_path / "out"), "--rehearsal", "--yes")  # fmt: skip
    assert code == 1
    assert_one_line_error(
        "\n".join(line for line in err.splitlines() if "REHEARSAL" not in line),
        f"key 'officer-signing' on token '{tokens['officer-2'].token}' is extractable (CKA_EXTRACTABLE); "
        "vault only uses keys that can never leave their token",
    )
    assert not (tmp_path / "out").exists()
    assert private_keys(tokens["root"]) == []


def test_a_role_key_imported_from_software_stops_the_roles_ceremony(setup: Setup) -> None:
    with open_token(setup.tokens["approver-2"], rw=True) as token:
        import_software_key(token, "approver-signing")
    code, _, err = setup.ceremony(POLICIES / "roles.yaml", setup.root / "policy-v1.json", "roles")
    assert code == 1
    assert_one_line_error(err, f"key 'approver-signing' on token '{setup.tokens['approver-2'].token}' is extractable")
    assert not (setup.tmp / "roles").exists()
    assert setup.policy_head() is not None and setup.policy_head()[0] == 1  # type: ignore[index]


@pytest.mark.parametrize("stop", [typed_no("sign trust policy v2"), KeyboardInterrupt()], ids=["typed-no", "ctrl-c"])
def test_a_roles_ceremony_stopped_before_signing_is_run_again_with_the_keys_it_made(
    setup: Setup, stop: BaseException
) -> None:
    v1 = setup.root / "policy-v1.json"
    with pytest.raises(type(stop)):
        run_ceremony(setup, POLICIES / "roles.yaml", v1, "roles", confirm=stop_at("sign trust policy v2", stop))
    assert not (setup.tmp / "roles").exists()  # the certificates it issued went with it
    assert setup.policy_head() == (1, setup.policy(v1).digest)
    made = {name: sorted(private_keys(setup.tokens[name])) for name in ("release", "approver-1", "auditor")}
    assert made == {
        "release": ["release-signer"],
        "approver-1": ["approver-signing"],
        "auditor": ["auditor-cosign", "auditor-decrypt"],  # its cosigning key beside its decryption key
    }

    result = run_ceremony(setup, POLICIES / "roles.yaml", v1, "roles")
    assert result.policy is not None
    v2 = setup.policy(result.policy)
    with open_token(setup.tokens["approver-1"]) as token:
        assert v2.approvers["approver-1"].key_id == token.key(label="approver-signing").key_id


def test_too_few_shares_leave_no_folder(setup: Setup) -> None:
    code, _, err = setup.ceremony(RENEW, setup.root / "policy-v1.json", "few", shares=(1,))
    assert code == 1
    assert_one_line_error(err, "1 more")
    assert not (setup.tmp / "few").exists()


def test_ctrl_c_after_the_token_recorded_the_policy_keeps_the_folder(setup: Setup) -> None:
    """The point of no return: the root token holds v2, so its file and folder stay, whatever comes next."""
    out = setup.tmp / "renew"

    def clock() -> datetime.datetime:
        if (out / "policy-v2.json").exists():
            raise KeyboardInterrupt  # while the transcript is being closed
        return datetime.datetime.now(datetime.UTC)

    with pytest.raises(KeyboardInterrupt):
        run_ceremony(setup, RENEW, setup.root / "policy-v1.json", "renew", clock=clock)
    assert sorted(p.name for p in out.iterdir()) == ["policy-v2.json"]
    assert setup.policy_head() == (2, setup.policy(out / "policy-v2.json").digest)
    code, _, err = setup.ceremony(RENEW, out / "policy-v2.json", "next")
    assert code == 0, err


def test_a_recovery_stopped_before_the_pins_change_is_resumed(setup: Setup) -> None:
    v1 = setup.root / "policy-v1.json"
    backup = run_ceremony(setup, POLICIES / "backup.yaml", v1, "backup").out
    kek = [str(p) for p in sorted((backup / "backup-shares").iterdir())[:2]]
    recovery = setup.tokens["recovery"]
    creds = setup.credentials("recover", (1, 3), recovery=recovery, recovery_so=so_uri(recovery))
    data = (backup / "root-key-backup.json").read_bytes()
    shares = [share_text(Path(p).read_text()) for p in kek]
    stop = stop_at(f"give token {recovery.token} the PINs", KeyboardInterrupt())

    with pytest.raises(KeyboardInterrupt):
        run_ceremony(setup, POLICIES / "recover.yaml", v1, "recover", creds=creds, confirm=stop,
                     backup=data, backup_shares=shares)  # fmt: skip
    assert not (setup.tmp / "recover").exists()
    assert private_keys(recovery) == ["root"]  # unwrapped, and the token's PIN is still the initial one

    asked: list[str] = []
    result = run_ceremony(setup, POLICIES / "recover.yaml", v1, "recover", creds=creds, confirm=asked.append,
                          backup=data, backup_shares=shares)  # fmt: skip
    assert asked[0] == f"use the root key a recovery that stopped left on token {recovery.token}"
    steps = transcript_steps(result.transcript)
    assert steps["recover-root-key"]["found"] == "left by a recovery that stopped before the PINs changed"
    assert setup.policy_head("recovery") == (1, setup.policy(v1).digest)

    # run once more, the token answers only to the officers' shares now: said in one line
    with pytest.raises(PinIncorrectError, match="refused the PIN the credentials give for 'recovery'"):
        run_ceremony(setup, POLICIES / "recover.yaml", v1, "again", creds=creds, backup=data, backup_shares=shares)
    assert not (setup.tmp / "again").exists()


def test_ctrl_c_waits_for_the_steps_that_must_land_together() -> None:
    landed = []
    with pytest.raises(KeyboardInterrupt):
        with uninterrupted():
            os.kill(os.getpid(), signal.SIGINT)
            landed.append("head")
            landed.append("file")
    assert landed == ["head", "file"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_officers_may_delete_the_key_a_stopped_root_ceremony_left_instead(
    fresh_tokens: FreshTokens, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tokens = fresh_tokens(["root", "officer-1", "officer-2", "officer-3"])
    creds = load_credentials(write_credentials(tmp_path / "creds.yaml", tokens))
    script = load_root_script(SCRIPT)
    out = tmp_path / "root"
    with pytest.raises(InputError):
        run_root_ceremony(script, creds, out, rehearsal=True, confirm=stop_at("replace", typed_no("replace")))
    root_key = format_uri(tokens["root"].with_object("root"), redact_pin=False)
    code, stdout, err = run(capsys, "token", "delete", root_key, "--yes")
    assert code == 0, err
    assert "deleted key 'root'" in stdout
    result = run_root_ceremony(script, creds, out, rehearsal=True)
    assert "generate-root-key" in transcript_steps(result.transcript)

    # once a root ceremony finished, the token's keys are not vault's to delete, even with the quorum's PIN
    shares = [share_text((out / "shares" / f"officer-{i}.txt").read_text()) for i in (1, 2)]
    split = transcript_steps(result.transcript)["split-root-pin"]
    record = ShareSetRecord.from_dict(split["share_set"])  # type: ignore[arg-type]
    pin = root_pins(combine_shares(shares, record))[0]
    quorum_uri = Pkcs11Uri(token=tokens["root"].token, object="root", pin_value=pin)
    code, _, err = run(capsys, "token", "delete", format_uri(quorum_uri, redact_pin=False), "--yes")
    assert code == 1
    assert_one_line_error(err, "holds a root that signed trust policy v1; vault deletes no key from it")
