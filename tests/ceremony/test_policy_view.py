"""``vault policy show`` and ``vault policy diff``, the diff and digest words a ceremony shows before it
signs a new policy, and the inputs a ceremony refuses instead of ignoring them."""

from __future__ import annotations

import hashlib
import json
import re

from tests.ceremony.conftest import POLICIES, Setup, assert_one_line_error
from tests.cli.test_token_cli import run
from vault._words import readable_digest
from vault.token import format_uri


def _policy_json(setup: Setup, *argv: str) -> dict[str, object]:
    code, out, err = run(setup.capsys, "policy", *argv, "--root-cert", str(setup.root / "root-ca.pem"), "--json")
    assert code == 0, err
    result = json.loads(out)
    assert isinstance(result, dict)
    return result


def test_policy_show_diff_and_the_confirmation_before_signing(setup: Setup) -> None:
    v1 = setup.root / "policy-v1.json"
    code, _, err = setup.ceremony(POLICIES / "roles.yaml", v1, "roles")
    assert code == 0, err
    v2 = setup.tmp / "roles" / "policy-v2.json"
    policy = setup.policy(v2)

    # before signing, the officers saw what changes and the new statement's digest as words
    assert "-> sign trust policy v2 with the root and the officers present" in err
    assert "   trust policy v1 -> v2" in err
    for holder, key in policy.approvers.items():
        assert f"+ approver {holder}: {key.key_id}" in err  # key ids in full
    assert policy.release_signer is not None
    assert f"+ release signer: {policy.release_signer.key_id}" in err
    said = re.search(r"new policy statement sha256 ([0-9a-f]{64})\n +read aloud: ([a-z ]+)\n", err)
    assert said is not None, err

    # the same digest and words are what `vault policy show` prints for the signed file
    shown = _policy_json(setup, "show", str(v2))
    assert shown["statement_sha256"] == said.group(1)
    assert shown["statement_words"] == said.group(2) == readable_digest(said.group(1))
    assert shown["file_sha256"] == hashlib.sha256(v2.read_bytes()).hexdigest()
    assert shown["version"] == 2 and shown["root_pinned"] is True and shown["expired"] is False
    assert shown["approvers"] == {"threshold": 2, "count": 3}
    assert shown["officers"] == {"threshold": 2, "count": 3}
    code, out, err = run(setup.capsys, "policy", "show", str(v2), "--root-cert", str(setup.root / "root-ca.pem"))
    assert code == 0, err
    assert "trust policy v2 (REHEARSAL)" in out and "approvers: 2 of 3" in out
    for holder, key in policy.approvers.items():
        assert re.search(rf"^  {holder} +{key.key_id}$", out, re.MULTILINE), out
    assert f"words  {said.group(2)}" in out
    # without a pinned root it still verifies, against the root it names, and says so
    code, out, err = run(setup.capsys, "policy", "show", str(v2))
    assert code == 0 and "(not pinned)" in out
    assert "note: root not pinned; pass --root-cert" in err

    # one script enrols any station: the id and name come from the request
    request = setup.tmp / "station-1-request.json"
    code, _, err = run(
        setup.capsys, "station", "request", "--token", format_uri(setup.tokens["station"]),
        "--station-id", "station-1", "--name", "Line 1", "-o", str(request),
    )  # fmt: skip
    assert code == 0, err
    # --station-id names the station the officers expect: a request for another is refused before any share
    code, _, err = setup.ceremony(
        POLICIES / "enrol-station.yaml", v2, "wrong-station",
        extra=("--request", str(request), "--station-id", "line-9"),
    )  # fmt: skip
    assert code == 1
    assert_one_line_error(err, "the enrolment request is for station 'station-1', but --station-id names 'line-9'")
    assert not (setup.tmp / "wrong-station").exists()
    code, _, err = setup.ceremony(
        POLICIES / "enrol-station.yaml", v2, "enrol", extra=("--request", str(request), "--station-id", "station-1")
    )
    assert code == 0, err
    v3 = setup.tmp / "enrol" / "policy-v3.json"
    station = setup.policy(v3).stations["station-1"]
    assert station.name == "Line 1"
    assert "-> enrol station station-1 (Line 1): request " in err

    changes = _policy_json(setup, "diff", str(v2), str(v3))
    assert changes["stations_enrolled"] == ["station-1"] and changes["stations_removed"] == []
    added = {(k["holder"], k["part"]): k["key_id"] for k in changes["keys_added"]}  # type: ignore[union-attr,index]
    assert added == {
        ("station-1", "signing"): station.signing.key_id,
        ("station-1", "decryption"): station.decryption.key_id,
        ("station-1", "issuing_ca"): station.issuing_ca.key_id,
    }
    assert changes["revoked"] == [] and changes["keys_removed"] == []
    assert changes["new"]["statement_words"] == readable_digest(changes["new"]["statement_sha256"])  # type: ignore[index]

    # a renewal takes no request: refused in one line, nothing made
    code, _, err = setup.ceremony(POLICIES / "renew-policy.yaml", v3, "renew", extra=("--request", str(request)))
    assert code == 1
    assert_one_line_error(err, "a 'policy' ceremony takes no --request (only 'enrol-station' does); leave it out")
    assert not (setup.tmp / "renew").exists()
    code, _, err = setup.ceremony(POLICIES / "renew-policy.yaml", v3, "renew", extra=("--station-id", "station-1"))
    assert code == 1
    assert_one_line_error(err, "a 'policy' ceremony takes no --station-id")

    # revoking the station: the diff lists the station removed and its three keys revoked
    revoke = setup.tmp / "revoke.yaml"
    revoke.write_text((POLICIES / "revoke.yaml").read_text().replace("station-2", "station-1"))
    code, _, err = setup.ceremony(revoke, v3, "revoke")
    assert code == 0, err
    v4 = setup.tmp / "revoke" / "policy-v4.json"
    changes = _policy_json(setup, "diff", str(v3), str(v4))
    assert changes["stations_removed"] == ["station-1"] and changes["stations_enrolled"] == []
    revoked = {r["key_id"] for r in changes["revoked"]}  # type: ignore[union-attr,index]
    assert revoked == {k.key_id for k in station.keys()}
    root_cert = str(setup.root / "root-ca.pem")
    code, out, err = run(setup.capsys, "policy", "diff", str(v3), str(v4), "--root-cert", root_cert)
    assert code == 0, err
    assert "trust policy v3 -> v4" in out and "  - station station-1 removed (Line 1)" in out
    assert f"  - station station-1 signing: {station.signing.key_id}" in out
    assert f"  + revoked {station.signing.key_id}  station station-1, in v4: " in out

    # wrong inputs: one line each
    code, _, err = run(setup.capsys, "policy", "show", str(setup.root / "root-ca.pem"))
    assert code == 1
    assert_one_line_error(err, "root-ca.pem: envelope: not valid JSON")
    other = setup.tmp / "enrol" / "certs" / "station-1-signing.pem"
    code, _, err = run(setup.capsys, "policy", "show", str(v2), "--root-cert", str(other))
    assert code == 1
    assert_one_line_error(err, "trust policy")
    # the root ceremony takes none of the later ceremonies' inputs
    code, _, err = run(
        setup.capsys, "ceremony", "run", str(POLICIES / "root-ceremony.yaml"), "--credentials",
        str(setup.credentials("again")), "--out", str(setup.tmp / "root-again"), "--request", str(request),
        "--rehearsal", "--yes",
    )  # fmt: skip
    assert code == 1
    assert_one_line_error(err, "the root ceremony takes no --request; it starts from the script alone")
