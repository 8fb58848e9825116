"""Officers, approvers and the release signer on tpm2-pkcs11 with swtpm, through the CLI as users type it.

The root key stays on SoftHSM2: a root needs its PIN split and replaced by a
security officer the shares can rebuild, and the TPM offers no ECDH, so a
sealed share cannot live there either. Officers 1 and 2 take part in the root
and role ceremonies with their keys on the TPM; approvers 1 and 2 approve a
bundle and the release signer promotes it and keeps the promotion log's head
on the TPM. What the TPM cannot do (a sealed share, which needs ECDH) is
refused in one line before anything is made.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.cli.test_token_cli import run
from tests.conftest import so_uri
from tests.helpers import write_small_release
from vault.cli import cli
from vault.token import Pkcs11Uri, format_uri, open_token

POLICIES = Path(__file__).resolve().parents[2] / "policies"
Uri = Callable[..., Pkcs11Uri]


def vault(*argv: str) -> str:
    result = CliRunner().invoke(cli, list(argv), catch_exceptions=False)
    assert result.exit_code == 0, f"vault {' '.join(argv[:2])}: {result.output}"
    return result.output


def test_officers_approvers_and_release_signer_on_the_tpm(
    tpm_uri: Uri,
    fresh_tokens: Callable[[list[str]], dict[str, Pkcs11Uri]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def tpm(name: str, **attrs: object) -> str:
        return format_uri(tpm_uri(f"tpm-{name}", **attrs))

    soft = fresh_tokens(["root", "officer-3", "approver-3", "auditor", "station-1"])

    def root_creds(officer_3: str) -> Path:
        creds = tmp_path / "root-creds.yaml"
        creds.write_text(
            f'root: "{format_uri(soft["root"])}"\nroot_so: "{format_uri(so_uri(soft["root"]))}"\nofficers:\n'
            f'  officer-1: "{tpm("officer-1")}"\n  officer-2: "{tpm("officer-2")}"\n  officer-3: "{officer_3}"\n'
        )
        return creds

    root = tmp_path / "root"
    ceremony_root = [
        "ceremony",
        "run",
        str(POLICIES / "root-ceremony.yaml"),
        "--out",
        str(root),
        "--rehearsal",
        "--yes",
    ]

    # officer 3's share is sealed to a key-agreement key: the TPM has no ECDH, refused before anything is made
    code, _, err = run(capsys, *ceremony_root, "--credentials", str(root_creds(tpm("officer-1"))))
    assert code == 1 and "Traceback" not in err
    lines = [line for line in err.splitlines() if not line.startswith("*** REHEARSAL")]
    assert len(lines) == 1 and "tpm-officer-1" in lines[0] and "ECDH" in lines[0], lines
    assert not root.exists()
    with open_token(tpm_uri("tpm-officer-1")) as token:
        assert token.objects() == []

    vault(*ceremony_root, "--credentials", str(root_creds(format_uri(soft["officer-3"]))))
    root_cert = root / "root-ca.pem"
    vault("ceremony", "verify", str(root / "transcript.json"), "--root-cert", str(root_cert))

    quorum = tmp_path / "creds.yaml"
    quorum.write_text(
        f'root: "{format_uri(Pkcs11Uri(token=soft["root"].token))}"\n'
        f'officers:\n  officer-1: "{tpm("officer-1")}"\n  officer-2: "{tpm("officer-2")}"\n'
        f'release: "{tpm("release")}"\napprovers:\n'
        f'  approver-1: "{tpm("approver-1")}"\n  approver-2: "{tpm("approver-2")}"\n'
        f'  approver-3: "{format_uri(soft["approver-3"])}"\n'
        f'auditor: "{format_uri(soft["auditor"])}"\n'
    )
    shares = ["--share", str(root / "shares" / "officer-1.txt"), "--share", str(root / "shares" / "officer-2.txt")]

    def ceremony(script: str, policy: Path, out: str, *extra: str) -> Path:
        vault("ceremony", "run", str(POLICIES / script), "--credentials", str(quorum), "--policy", str(policy),
              "--root-cert", str(root_cert), *shares, "--out", str(tmp_path / out), *extra,
              "--rehearsal", "--yes")  # fmt: skip
        return next((tmp_path / out).glob("policy-v*.json"))

    policy = ceremony("roles.yaml", root / "policy-v1.json", "roles")
    request = tmp_path / "station-1-request.json"
    station = format_uri(soft["station-1"])
    vault("station", "request", "--token", station, "--station-id", "station-1", "-o", str(request))
    policy = ceremony("enrol-station.yaml", policy, "enrol-1", "--request", str(request))

    release = write_small_release(tmp_path, bytes(range(256)) * 100)
    bundle, log = tmp_path / "release.vbundle", tmp_path / "promotions.log"
    trust = ["--policy", str(policy), "--root-cert", str(root_cert)]
    vault("bundle", "build", str(release), "-o", str(bundle), "--log", str(log), *trust)
    for i in (1, 2):
        vault(
            "bundle", "approve", str(bundle), "--yes", "--key", tpm(f"approver-{i}", object="approver-signing"), *trust
        )
    vault("bundle", "promote", str(bundle), "--key", tpm("release", object="release-signer"), "--log", str(log), *trust)
    vault("bundle", "log", "verify", str(log), "--token", tpm("release"), *trust)
    vault("station", "load", "--state", str(tmp_path / "state"), "--token", station, "--station-id", "station-1",
          "--root-cert", str(root_cert), "--policy", str(policy), "--bundle", str(bundle))  # fmt: skip
