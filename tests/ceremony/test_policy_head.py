"""The root token's policy head: stale policies refused, forks impossible, old tokens adopted, recovery carries it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from pkcs11 import Attribute, ObjectClass

from tests.ceremony.conftest import POLICIES, Setup, assert_one_line_error, run_ceremony
from tests.conftest import so_uri
from vault.ceremony import Transcript
from vault.ceremony._policy_head import POLICY_HEAD
from vault.errors import PolicyError, RollbackError, StateError
from vault.formats import Envelope

RENEW = POLICIES / "renew-policy.yaml"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def steps(transcript: Path, action: str) -> list[dict[str, object]]:
    payload = Envelope.from_json(transcript.read_bytes()).payload
    return [s.details for s in Transcript.from_bytes(payload).steps if s.action == action]


def test_the_root_ceremony_records_policy_v1_in_the_root_token(setup: Setup) -> None:
    assert setup.policy_head() == (1, sha256(setup.root / "policy-v1.json"))
    [head] = steps(setup.root / "transcript.json", "policy-head")
    assert head["version"] == 1 and head["sha256"] == sha256(setup.root / "policy-v1.json")


def test_a_stale_policy_is_refused_with_the_version_and_digest_the_token_holds(setup: Setup) -> None:
    v1 = setup.root / "policy-v1.json"
    code, _, err = setup.ceremony(RENEW, v1, "v2")
    assert code == 0, err
    v2 = setup.tmp / "v2" / "policy-v2.json"
    assert setup.policy_head() == (2, sha256(v2))

    # v1 given after v2 was signed: refused in one line, before anything happens
    code, out, err = setup.ceremony(RENEW, v1, "stale")
    assert code == 1 and out == ""
    assert_one_line_error(
        err, f"the root token already signed trust policy v2 (sha256 {sha256(v2)[:16]}…); pass the current policy, v2"
    )
    assert not (setup.tmp / "stale").exists()
    assert setup.policy_head() == (2, sha256(v2))

    # the policy the token holds goes on, and then it is the stale one
    code, _, err = setup.ceremony(RENEW, v2, "v3")
    assert code == 0, err
    v3 = setup.tmp / "v3" / "policy-v3.json"
    for stale in (v1, v2):
        code, _, err = setup.ceremony(RENEW, stale, "stale")
        assert code == 1
        assert_one_line_error(err, f"already signed trust policy v3 (sha256 {sha256(v3)[:16]}…); pass the current")
    [checked] = steps(setup.tmp / "v3" / "transcript.json", "policy-head")[:1]
    assert checked == {"head": POLICY_HEAD, "version": 2, "sha256": sha256(v2), "matched": "current"}


def test_two_ceremonies_from_one_policy_cannot_both_sign_the_next_version(setup: Setup) -> None:
    """Officers at two machines (or one with two state folders) start from v1 at once: one v2 only."""
    v1 = setup.root / "policy-v1.json"
    inner: list[Path] = []

    def meanwhile(step: str) -> None:
        if step.startswith("sign trust policy v2") and not inner:  # the other ceremony finishes first
            result = run_ceremony(setup, RENEW, v1, "second")
            assert result.policy is not None
            inner.append(result.policy)

    with pytest.raises(StateError, match="'root-policy' head changed during this ceremony"):
        run_ceremony(setup, RENEW, v1, "first", confirm=meanwhile)
    assert not (setup.tmp / "first").exists()
    assert setup.policy_head() == (2, sha256(inner[0]))
    # and the one that lost cannot start again from v1
    with pytest.raises(RollbackError, match="already signed trust policy v2"):
        run_ceremony(setup, RENEW, v1, "first")


def test_another_file_of_the_version_the_token_holds_is_refused(setup: Setup) -> None:
    v1 = setup.root / "policy-v1.json"
    first = run_ceremony(setup, RENEW, v1, "first").policy
    assert first is not None
    # An insider with the PIN and a raw PKCS#11 tool sets the head back (the audit's to find); a second v2 follows.
    with setup.root_token() as token:
        token.write_head(POLICY_HEAD, {"version": 1, "sha256": sha256(v1)}, after=token.head(POLICY_HEAD))
    second = run_ceremony(setup, RENEW, v1, "second").policy
    assert second is not None and sha256(second) != sha256(first)
    with pytest.raises(PolicyError, match=f"signed another trust policy v2 \\(sha256 {sha256(second)[:16]}…\\)"):
        run_ceremony(setup, RENEW, first, "third")


def test_a_token_without_a_head_adopts_the_policy_and_one_behind_catches_up(setup: Setup) -> None:
    v1 = setup.root / "policy-v1.json"
    with setup.root_token() as token:  # as a root token made before head records
        for obj in token._session.get_objects({Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: POLICY_HEAD}):
            obj.destroy()
        assert token.head(POLICY_HEAD) is None
    v2 = run_ceremony(setup, RENEW, v1, "v2").policy
    assert v2 is not None
    assert steps(setup.tmp / "v2" / "transcript.json", "policy-head")[0]["matched"] == "adopted"
    assert setup.policy_head() == (2, sha256(v2))

    with setup.root_token() as token:  # the token is behind a policy the root signed (a lost head write)
        token.write_head(POLICY_HEAD, {"version": 1, "sha256": sha256(v1)}, after=token.head(POLICY_HEAD))
    v3 = run_ceremony(setup, RENEW, v2, "v3").policy
    assert v3 is not None
    assert steps(setup.tmp / "v3" / "transcript.json", "policy-head")[0]["matched"] == "caught-up"
    assert setup.policy_head() == (3, sha256(v3))


def test_a_head_vault_did_not_write_is_refused(setup: Setup) -> None:
    with setup.root_token() as token:
        token.write_head(POLICY_HEAD, {"version": "9"}, after=token.head(POLICY_HEAD))
    with pytest.raises(StateError, match="'root-policy' head record on token .* is not one vault wrote"):
        run_ceremony(setup, RENEW, setup.root / "policy-v1.json", "odd")


def test_a_recovered_token_carries_the_head_of_the_policy_it_is_recovered_with(setup: Setup) -> None:
    v2 = run_ceremony(setup, RENEW, setup.root / "policy-v1.json", "v2").policy
    assert v2 is not None
    backup = run_ceremony(setup, POLICIES / "backup.yaml", v2, "backup").out
    kek = sorted((backup / "backup-shares").iterdir())
    recovery = {"recovery": setup.tokens["recovery"], "recovery_so": so_uri(setup.tokens["recovery"])}
    creds = setup.credentials("recover", (1, 3), **recovery)
    extra = ("--backup", str(backup / "root-key-backup.json"), "--backup-share", str(kek[0]))
    extra += ("--backup-share", str(kek[1]))

    # a policy older than the backup's: refused before the recovery token is touched
    code, _, err = setup.ceremony(POLICIES / "recover.yaml", setup.root / "policy-v1.json", "old", creds=creds,
                                  extra=extra)  # fmt: skip
    assert code == 1
    assert_one_line_error(err, "the backup was made under trust policy v2: recover with the current policy")
    assert not (setup.tmp / "old").exists()

    code, _, err = setup.ceremony(POLICIES / "recover.yaml", v2, "recover", creds=creds, extra=extra)
    assert code == 0, err
    assert setup.policy_head("recovery") == (2, sha256(v2))
    details = steps(setup.tmp / "recover" / "transcript.json", "policy-head")
    assert [d["matched"] for d in details] == ["adopted", "current"]

    # the recovered token refuses v1 as the lost one did, and goes on from v2
    recovered = setup.tmp / "recovered.yaml"
    recovered.write_text(
        setup.credentials("tmp", (1, 3))
        .read_text()
        .replace(f"token={setup.tokens['root'].token}", f"token={setup.tokens['recovery'].token}")
    )
    code, _, err = setup.ceremony(RENEW, setup.root / "policy-v1.json", "stale", creds=recovered)
    assert code == 1
    assert_one_line_error(err, f"already signed trust policy v2 (sha256 {sha256(v2)[:16]}…)")
    code, _, err = setup.ceremony(RENEW, v2, "v3", creds=recovered)
    assert code == 0, err
    v3 = setup.tmp / "v3" / "policy-v3.json"
    assert json.loads(Envelope.from_json(v3.read_bytes()).payload)["predicate"]["version"] == 3
    assert setup.policy_head("recovery") == (3, sha256(v3))
