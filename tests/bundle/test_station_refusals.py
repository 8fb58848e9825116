"""What a station (and a release manager) is told about a bundle that is not promoted, or a root pinned wrong."""

from __future__ import annotations

import datetime
import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.bundle.conftest import Release
from tests.ceremony.test_quorum_ceremonies import assert_one_line_error
from tests.cli.test_token_cli import run
from vault.crypto import key_id
from vault.token import format_uri


def load(release: Release, bundle: Path, *, root_cert: Path | None = None) -> tuple[int, str, str]:
    """``vault station load`` as the station's operator types it."""
    setup = release.setup
    return run(
        setup.capsys, "station", "load", "--state", str(setup.tmp / "state"),
        "--token", format_uri(setup.tokens["station"]), "--station-id", "station-1",
        "--root-cert", str(root_cert or setup.root / "root-ca.pem"),
        "--policy", str(release.policy), "--bundle", str(bundle),
    )  # fmt: skip


def approved_by(release: Release, name: str, approvers: tuple[int, ...]) -> Path:
    out = release.setup.tmp / f"{name}.vbundle"
    code, _, err = release.bundle("build", str(release.description(f"{name}.yaml")), "-o", str(out))
    assert code == 0, err
    for n in approvers:
        assert release.approve(out, n)[0] == 0
    return out


def test_an_unpromoted_bundle_says_it_was_never_promoted_and_names_the_approvers(release: Release) -> None:
    code, _, err = load(release, approved_by(release, "one", (1,)))
    assert code == 1
    assert_one_line_error(err, "the release was never promoted: the release signer (key ")
    assert "release approvals: 1 of 2 required, by approver-1; not yet: approver-2, approver-3" in err
    assert len(re.findall(r"[0-9a-f]{16}", err)) == 1  # the release signer's key; approvers by name, not key id

    code, _, err = load(release, approved_by(release, "two", (1, 3)))
    assert code == 1
    assert_one_line_error(err, "never promoted")
    assert "release approvals: 2 approvals, 2 required, by approver-1, approver-3" in err

    # promoted with too few approvals (a release manager who skipped promote's checks): names who is missing
    code, _, err = release.promote(approved_by(release, "three", (2,)))
    assert code == 1
    assert_one_line_error(err, "2 approvals are needed, 1 present (approver-2): 1 more missing")


def test_a_wrong_root_pin_says_the_policy_is_not_signed_by_it(release: Release) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "another root")])
    now = datetime.datetime.now(datetime.UTC)
    other = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pinned = release.setup.tmp / "another-root.pem"
    pinned.write_bytes(other.public_bytes(serialization.Encoding.PEM))
    expected = f"trust policy: not signed by the pinned root (key {key_id(key.public_key())[:16]})"

    code, _, err = release.bundle("build", str(release.description()), "-o", str(release.setup.tmp / "x"))
    assert code == 0, err
    policy = ["--policy", str(release.policy), "--root-cert", str(pinned)]
    code, _, err = run(release.setup.capsys, "bundle", "inspect", str(release.setup.tmp / "x"), *policy)
    assert code == 1
    assert_one_line_error(err, expected)
    assert "0 of 1" not in err and "unknown:" not in err
    assert "pin the root certificate of the root ceremony that made this policy" in err

    code, _, err = load(release, release.setup.tmp / "x", root_cert=pinned)
    assert code == 1
    assert_one_line_error(err, "not signed by the pinned root")
