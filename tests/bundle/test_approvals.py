"""Approving as an approver does it: see what is signed, confirm it, approve in parallel with detached approvals."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest

from tests.bundle.conftest import Release
from tests.ceremony.test_quorum_ceremonies import assert_one_line_error
from vault import container
from vault._words import readable_digest
from vault.formats import Envelope, canonical_json
from vault.token import open_token


class Terminal(io.StringIO):
    """Typed answers on a terminal (the approver's keyboard)."""

    def isatty(self) -> bool:
        return True


def built(release: Release, name: str = "r", **changes: str) -> tuple[Path, dict[str, object]]:
    out = release.setup.tmp / f"{name}.vbundle"
    code, stdout, err = release.bundle(
        "build", str(release.description(f"{name}.yaml", **changes)), "-o", str(out), "--json"
    )
    assert code == 0, err
    return out, json.loads(stdout)


def approve_key(release: Release, n: int) -> str:
    return release.key(f"approver-{n}", "approver-signing")


def signers(bundle: Path) -> tuple[str, ...]:
    with container.BundleReader(bundle) as reader:
        return Envelope.from_json(reader.envelope_bytes).keyids


def test_approve_shows_what_is_signed_and_signs_only_after_yes(
    release: Release, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, build = built(release)
    statement = str(build["statement_sha256"])
    before = out.read_bytes()

    # typing anything but 'yes' signs nothing
    monkeypatch.setattr("sys.stdin", Terminal("no\n"))
    code, stdout, err = release.bundle("approve", str(out), "--key", approve_key(release, 1))
    assert code == 1
    assert_one_line_error(err, "not approved: nothing was signed")
    assert out.read_bytes() == before

    monkeypatch.setattr("sys.stdin", Terminal("yes\n"))
    code, stdout, err = release.bundle("approve", str(out), "--key", approve_key(release, 1))
    assert code == 0, err
    shown = [
        "You are about to approve, as approver-1",
        "example-sensor 1.4.0   security counter 7",
        "2026-01-01T00:00:00Z to 2099-01-01T00:00:00Z",
        "1000 units in total",
        "station-1          600 units",
        "app.bin",
        "load_address 0x08000000",
        "config.bin",
        statement,
        readable_digest(statement),
        "0 approvals, 2 required",
        f"Type 'yes' to sign statement {readable_digest(statement)}",
    ]
    for image in build["images"]:  # type: ignore[attr-defined]
        shown.append(image["sha256"])
    for text in shown:
        assert text in stdout, text
    assert "approved example-sensor 1.4.0 as approver-1: 1 approval, 2 required: 1 more needed" in stdout
    assert len(signers(out)) == 1


def test_approve_without_a_terminal_needs_yes(release: Release) -> None:
    out, _ = built(release)
    before = out.read_bytes()
    code, _, err = release.bundle("approve", str(out), "--key", approve_key(release, 1))
    assert code == 1
    assert_one_line_error(err, "approving needs a typed confirmation on a terminal; or pass --yes")
    assert out.read_bytes() == before


def test_expect_statement_refuses_another_statement(release: Release) -> None:
    out, build = built(release)
    _, other = built(release, "other", version="1.4.1")
    before = out.read_bytes()
    code, _, err = release.bundle(
        "approve",
        str(out),
        "--key",
        approve_key(release, 1),
        "--yes",
        "--expect-statement",
        str(other["statement_sha256"]),
    )
    assert code == 1
    assert_one_line_error(err, "this is not the release you inspected; nothing was signed")
    assert out.read_bytes() == before
    code, _, err = release.bundle(
        "approve", str(out), "--key", approve_key(release, 1), "--yes", "--expect-statement", "abc"
    )
    assert code == 1
    assert_one_line_error(err, "--expect-statement must be the 64 hex digits")

    code, stdout, err = release.bundle(
        "approve", str(out), "--key", approve_key(release, 1), "--yes", "--json",
        "--expect-statement", str(build["statement_sha256"]).upper(),
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(stdout)
    assert result["approver"] == "approver-1" and result["statement_sha256"] == build["statement_sha256"]
    assert result["approvals"] == {
        "threshold": 2,
        "present": ["approver-1"],
        "missing": 1,
        "pending": ["approver-2", "approver-3"],
    }
    assert result["detached"] is False and result["approval_file"] is None


def test_an_extra_approval_reads_three_approvals_two_required(release: Release) -> None:
    out, _ = built(release)
    for n in (1, 2):
        assert release.approve(out, n)[0] == 0
    code, stdout, err = release.approve(out, 3)
    assert code == 0, err
    assert "3 approvals, 2 required: enough to promote" in stdout and "3 of 2" not in stdout
    code, stdout, _ = release.bundle("inspect", str(out))
    assert (
        "approvals     3 approvals, 2 required: enough to promote; approved by approver-1, approver-2, approver-3"
        in stdout
    )


def test_detached_approvals_in_parallel_from_the_exported_statement(release: Release) -> None:
    tmp = release.setup.tmp
    out, build = built(release)
    exported = tmp / "statement.json"
    code, stdout, err = release.bundle("inspect", str(out), "--export-statement", str(exported))
    assert code == 0, err
    assert f"statement written to {exported}" in stdout
    code, _, err = release.bundle("inspect", str(out), "--export-statement", str(exported))
    assert code == 1
    assert_one_line_error(err, "exists")
    before = out.read_bytes()

    # a statement file can only be approved detached; --detached needs -o
    code, _, err = release.bundle("approve", str(exported), "--key", approve_key(release, 1), "--yes")
    assert code == 1
    assert_one_line_error(err, "is not a bundle (an exported statement?)")
    code, _, err = release.bundle("approve", str(exported), "--detached", "--key", approve_key(release, 1), "--yes")
    assert code == 1
    assert_one_line_error(err, "name it with -o FILE")

    # approver-1 and approver-3 from the statement alone, approver-2 from the bundle: the bundle never changes
    approvals = []
    for n, source in ((1, exported), (2, out), (3, exported)):
        approval = tmp / f"approval-{n}.json"
        code, stdout, err = release.bundle(
            "approve", str(source), "--detached", "-o", str(approval), "--key", approve_key(release, n),
            "--yes", "--expect-statement", str(build["statement_sha256"]),
        )  # fmt: skip
        assert code == 0, err
        assert f"wrote {approval}: approver-{n} approves example-sensor 1.4.0" in stdout
        assert len(approval.read_bytes()) < 2048
        approvals.append(approval)
    assert out.read_bytes() == before

    code, stdout, err = release.bundle("add-approvals", str(out), *map(str, approvals[:2]))
    assert code == 0, err
    assert "added the approvals of approver-1, approver-2 to example-sensor 1.4.0" in stdout
    assert "2 approvals, 2 required: enough to promote" in stdout
    code, stdout, err = release.bundle("add-approvals", str(out), str(approvals[2]), "--json")
    assert code == 0, err
    merged = json.loads(stdout)
    assert merged["added"] == ["approver-3"] and merged["approvals"]["present"] == [
        "approver-1",
        "approver-2",
        "approver-3",
    ]

    code, stdout, err = release.promote(out)
    assert code == 0, err
    assert "approved by approver-1, approver-2, approver-3" in stdout


def test_approvals_that_do_not_belong_are_refused_in_one_line(release: Release) -> None:
    tmp = release.setup.tmp
    out, _ = built(release)
    other, _ = built(release, "other", version="1.4.1")

    def detached(bundle: Path, n: int, name: str) -> Path:
        path = tmp / name
        code, _, err = release.bundle(
            "approve", str(bundle), "--detached", "-o", str(path), "--key", approve_key(release, n), "--yes"
        )
        assert code == 0, err
        return path

    mine = detached(out, 1, "a1.json")
    elsewhere = detached(other, 2, "other-a2.json")
    (tmp / "a1-copy.json").write_bytes(mine.read_bytes())
    document = json.loads(mine.read_bytes())
    sig = bytearray(base64.b64decode(document["sig"]))
    sig[-1] ^= 0x01
    (tmp / "forged.json").write_bytes(canonical_json({**document, "sig": base64.b64encode(bytes(sig)).decode()}))

    # the release signer is no approver: its signature over the same statement, in an approval file
    with container.BundleReader(out) as reader:
        envelope = Envelope.from_json(reader.envelope_bytes)
    with open_token(release.setup.tokens["release"]) as token:
        key = token.key(label="release-signer")
        outsider = {**document, "keyid": key.key_id, "sig": base64.b64encode(key.sign(envelope.pae)).decode()}
    (tmp / "outsider.json").write_bytes(canonical_json(outsider))
    (tmp / "junk.json").write_text('{"hello": 1}')

    before = out.read_bytes()
    cases = [
        ((elsewhere,), "approves another statement (example-sensor 1.4.1"),
        ((tmp / "outsider.json",), "which is not an approver's in trust policy v3; nothing was added"),
        ((mine, tmp / "a1-copy.json"), "approver-1 approved twice"),
        ((tmp / "forged.json",), "the signature of approver-1 does not verify over this bundle's statement"),
        ((tmp / "junk.json",), "is not a vault release approval"),
        ((mine, elsewhere), "approves another statement"),  # all or nothing: approver-1's is not added either
    ]
    for files, expected in cases:
        code, _, err = release.bundle("add-approvals", str(out), *map(str, files))
        assert code == 1, (files, err)
        assert_one_line_error(err, expected)
        assert out.read_bytes() == before, files

    assert release.bundle("add-approvals", str(out), str(mine))[0] == 0
    code, _, err = release.bundle("add-approvals", str(out), str(tmp / "a1-copy.json"))
    assert code == 1
    assert_one_line_error(err, "approver-1 has already approved this bundle; an approver counts once")
    # an approver who approved detached cannot approve the bundle again either
    code, _, err = release.approve(out, 1)
    assert code == 1
    assert_one_line_error(err, "approver-1 has already approved this release")


def test_json_on_build_promote_and_log_verify(release: Release) -> None:
    out, build = built(release)
    assert build["bundle"] == str(out) and len(build["statement_words"].split()) == 8  # type: ignore[union-attr]
    assert [i["name"] for i in build["images"]] == ["app.bin", "config.bin"]  # type: ignore[attr-defined]
    for n in (1, 3):
        assert release.approve(out, n)[0] == 0
    code, stdout, err = release.bundle(
        "promote", str(out), "--key", release.key("release", "release-signer"), "--log", str(release.log), "--json"
    )
    assert code == 0, err
    promoted = json.loads(stdout)
    assert promoted["outcome"] == "promoted" and promoted["started"] == "genesis"
    assert promoted["approvers"] == ["approver-1", "approver-3"] and promoted["counters"] == {"example-sensor": 7}
    assert promoted["statement_sha256"] == build["statement_sha256"]

    token = release.key("release", "release-signer")
    code, stdout, err = release.bundle("log", "verify", str(release.log), "--token", token, "--json")
    assert code == 0, err
    verified = json.loads(stdout)
    assert verified["head"] == promoted["log_head"] and verified["latest_checked"] is True
    assert [e["bundle_id"] for e in verified["entries"]] == [build["bundle_id"]]
    code, stdout, err = release.bundle("log", "verify", str(release.log), "--json")
    assert code == 0 and json.loads(stdout)["latest_checked"] is False
