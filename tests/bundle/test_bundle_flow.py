"""Build -> approve m of n -> promote -> inspect, end to end on real SoftHSM2 tokens, and the refusals."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.bundle.conftest import Release
from tests.ceremony.test_quorum_ceremonies import assert_one_line_error
from vault import container
from vault.formats import Envelope
from vault.token import open_token

SIGSTORE = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "sigstore"
WHEEL = "rfc8785-0.1.2-py3-none-any.whl"
IDENTITY = "https://github.com/trailofbits/rfc8785.py/.github/workflows/release.yml@refs/tags/v0.1.2"
ISSUER = "https://token.actions.githubusercontent.com"


def test_build_approve_two_of_three_promote_inspect(release: Release) -> None:
    out = release.setup.tmp / "r.vbundle"
    code, stdout, err = release.bundle("build", str(release.description()), "-o", str(out), "--log", str(release.log))
    assert code == 0, err
    app = (release.setup.tmp / "images" / "app.bin").read_bytes()
    assert hashlib.sha256(app).hexdigest() in stdout

    code, stdout, _ = release.bundle("inspect", str(out), "--json")
    view = json.loads(stdout)
    assert view["approvals"] == {
        "threshold": 2, "present": [], "missing": 2, "pending": ["approver-1", "approver-2", "approver-3"],
    }  # fmt: skip
    assert view["production"] == {"total": 1000, "allocation": {"station-1": 600}} and not view["promoted"]
    assert [i["name"] for i in view["images"]] == ["app.bin", "config.bin"]

    assert release.approve(out, 1)[0] == 0
    code, _, err = release.approve(out, 1)  # the same approver twice counts once: refused
    assert code == 1
    assert_one_line_error(err, "already approved")
    code, _, err = release.promote(out)  # 1 of 2
    assert code == 1
    assert_one_line_error(err, "1 more missing")
    code, _, err = release.bundle("approve", str(out), "--key", release.key("release", "release-signer"))
    assert code == 1
    assert_one_line_error(err, "not an approver")

    assert release.approve(out, 3)[0] == 0
    code, stdout, err = release.promote(out)
    assert code == 0, err
    assert "approver-1, approver-3" in stdout
    code, stdout, _ = release.bundle("inspect", str(out))
    assert "promoted      yes" in stdout
    assert "approvals     2 approvals, 2 required: enough to promote; approved by approver-1, approver-3" in stdout
    code, stdout, err = release.bundle("log", "verify", str(release.log))
    assert code == 0 and "1 entry," in stdout

    # the station decrypts it with the key in its token, and gets the same image
    with container.BundleReader(out) as reader, open_token(release.setup.tokens["station"]) as token:
        wrapped = reader.header.recipients["station-1"].wrapped_key
        data_key = container.unwrap_data_key(
            wrapped, reader.header.bundle_id, "station-1", token.key(label="station-decrypt")
        )
        chunks: list[bytes] = []
        digest = reader.decrypt_image("app.bin", data_key, chunks.append)
    assert b"".join(chunks) == app and digest == hashlib.sha256(app).hexdigest()

    # a lower security counter for the same product is refused (rollback)
    older = release.description("old.yaml", security_counter="6")
    old = release.setup.tmp / "old.vbundle"
    code, _, err = release.bundle("build", str(older), "-o", str(old), "--log", str(release.log))
    assert code == 1
    assert_one_line_error(err, "rollback")

    # an edited log line is found
    lines = release.log.read_bytes().splitlines(keepends=True)
    release.log.write_bytes(lines[0].replace(b'"version":"1.4.0"', b'"version":"1.4.1"'))
    code, _, err = release.bundle("log", "verify", str(release.log))
    assert code == 1
    assert_one_line_error(err, "altered")


def test_a_statement_changed_after_approval_is_refused(release: Release) -> None:
    out = release.setup.tmp / "r.vbundle"
    assert release.bundle("build", str(release.description()), "-o", str(out))[0] == 0
    assert release.approve(out, 2)[0] == 0
    with container.BundleReader(out) as reader:
        envelope = Envelope.from_json(reader.envelope_bytes)
    changed = envelope.payload.replace(b'"total":1000', b'"total":9000')
    assert changed != envelope.payload
    container.replace_envelope(out, Envelope(envelope.payload_type, changed, envelope.signatures).to_json())
    code, _, err = release.approve(out, 1)
    assert code == 1
    assert_one_line_error(err, "changed after it was signed")
    code, _, err = release.bundle("inspect", str(out))
    assert code == 1


def test_bad_release_descriptions_and_bundles_are_refused(release: Release) -> None:
    tmp = release.setup.tmp
    cases = {
        "unknown station": ({"allocation": "{station-9: 10}"}, "not enrolled"),
        "over-allocated": ({"allocation": "{station-1: 1001}"}, "more than the total"),
        "window over": ({"not_before": "2020-01-01T00:00:00Z", "expires": "2021-01-01T00:00:00Z"}, "already over"),
        "escaping name": ({"extra": "  - name: ../evil.bin\n    path: images/app.bin"}, "images[2].name"),
    }
    for i, (_, (changes, expected)) in enumerate(cases.items()):
        code, _, err = release.bundle(
            "build", str(release.description(f"bad{i}.yaml", **changes)), "-o", str(tmp / f"b{i}")
        )
        assert code == 1, err
        assert_one_line_error(err, expected)
        assert not (tmp / f"b{i}").exists()
    (tmp / "images" / "app.bin").unlink()
    code, _, err = release.bundle("build", str(release.description()), "-o", str(tmp / "missing"))
    assert code == 1
    assert_one_line_error(err, "image app.bin")
    # not a bundle, truncated
    (tmp / "junk").write_bytes(b"not a bundle at all" * 10)
    code, _, err = release.bundle("inspect", str(tmp / "junk"))
    assert code == 1 and err.startswith("vault: error:")


def test_provenance_gate_admits_only_the_expected_identity(release: Release) -> None:
    tmp = release.setup.tmp
    if not (SIGSTORE / WHEEL).exists():
        pytest.fail(f"the shared Sigstore test data is missing: {SIGSTORE}")
    (tmp / "images" / WHEEL).write_bytes((SIGSTORE / WHEEL).read_bytes())

    def described(name: str, identity: str) -> Path:
        extra = (
            f"  - name: {WHEEL}\n    path: images/{WHEEL}\n    provenance:\n"
            f"      sigstore_bundle: {SIGSTORE / (WHEEL + '.sigstore.json')}\n"
            f"      trusted_root: {SIGSTORE / 'sigstore-public-good-trusted_root.json'}\n"
            f"      identity: {identity}\n      issuer: {ISSUER}"
        )
        return release.description(name, extra=extra)

    out = tmp / "p.vbundle"
    code, _, err = release.bundle("build", str(described("p.yaml", IDENTITY)), "-o", str(out))
    assert code == 0, err
    code, stdout, _ = release.bundle("inspect", str(out), "--json")
    proof = json.loads(stdout)["provenance"][WHEEL]
    assert proof["identity"] == IDENTITY and proof["issuer"] == ISSUER
    code, _, err = release.bundle(
        "build", str(described("q.yaml", IDENTITY.replace("v0.1.2", "v9.9.9"))), "-o", str(tmp / "q.vbundle")
    )
    assert code == 1 and not (tmp / "q.vbundle").exists()
    assert_one_line_error(err, WHEEL)
