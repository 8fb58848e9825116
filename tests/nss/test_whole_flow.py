"""One whole flow on NSS softoken, every token an NSS token, through the CLI as users type it.

Root ceremony, role ceremony, station enrolment, bundle build/approve/promote,
station load/provision/export, audit: the steps of docs/demo.sh, with the
URIs pointing at the tokens ``nss/setup.sh`` made. It runs once (the
SoftHSM2 suite covers each step's wrong turns).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.cli.test_token_cli import run
from tests.helpers import write_small_release
from vault.cli import cli
from vault.token import Pkcs11Uri, format_uri

POLICIES = Path(__file__).resolve().parents[2] / "policies"
Uri = Callable[..., Pkcs11Uri]


def vault(*argv: str) -> str:
    result = CliRunner().invoke(cli, list(argv), catch_exceptions=False)
    assert result.exit_code == 0, f"vault {' '.join(argv[:2])}: {result.output}"
    return result.output


def test_whole_flow_on_nss_softoken(nss_uri: Uri, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def uri(name: str, **attrs: object) -> str:
        return format_uri(nss_uri(f"nss-{name}", **attrs))

    creds = tmp_path / "root-creds.yaml"
    creds.write_text(
        f'root: "{uri("root")}"\nofficers:\n'
        + "".join(f'  officer-{i}: "{uri(f"officer-{i}")}"\n' for i in (1, 2, 3))
    )  # no root_so: NSS has no security officer
    root = tmp_path / "root"
    vault("ceremony", "run", str(POLICIES / "root-ceremony.yaml"), "--credentials", str(creds),
          "--out", str(root), "--rehearsal", "--yes")  # fmt: skip
    vault("ceremony", "verify", str(root / "transcript.json"), "--root-cert", str(root / "root-ca.pem"))
    text = base64.b64decode(json.loads((root / "transcript.json").read_text())["payload"]).decode()
    assert "the user PIN alone is split" in text and "not extractable at all" in text

    root_cert = root / "root-ca.pem"
    proxy = nss_uri("nss-root").module_path
    quorum = tmp_path / "creds.yaml"
    quorum.write_text(
        f'root: "{format_uri(Pkcs11Uri(token="nss-root", module_path=proxy))}"\nofficers:\n'
        + "".join(f'  officer-{i}: "{uri(f"officer-{i}")}"\n' for i in (1, 2))
        + f'release: "{uri("release")}"\napprovers:\n'
        + "".join(f'  approver-{i}: "{uri(f"approver-{i}")}"\n' for i in (1, 2, 3))
        + f'auditor: "{uri("auditor")}"\n'
    )
    shares = ["--share", str(root / "shares" / "officer-1.txt"), "--share", str(root / "shares" / "officer-2.txt")]

    def ceremony(script: str, policy: Path, out: str, *extra: str) -> Path:
        vault("ceremony", "run", str(POLICIES / script), "--credentials", str(quorum), "--policy", str(policy),
              "--root-cert", str(root_cert), *shares, "--out", str(tmp_path / out), *extra,
              "--rehearsal", "--yes")  # fmt: skip
        return next((tmp_path / out).glob("policy-v*.json"))

    policy = ceremony("roles.yaml", root / "policy-v1.json", "roles")
    request = tmp_path / "station-1-request.json"
    vault("station", "request", "--token", uri("station-1"), "--station-id", "station-1", "-o", str(request))
    policy = ceremony("enrol-station.yaml", policy, "enrol-1", "--request", str(request))

    release = write_small_release(tmp_path, bytes(range(256)) * 1000)
    bundle, log = tmp_path / "release.vbundle", tmp_path / "promotions.log"
    trust = ["--policy", str(policy), "--root-cert", str(root_cert)]
    vault("bundle", "build", str(release), "-o", str(bundle), "--log", str(log), *trust)
    for i in (1, 3):
        key = uri(f"approver-{i}", object="approver-signing")
        vault("bundle", "approve", str(bundle), "--yes", "--key", key, *trust)
    vault("bundle", "promote", str(bundle), "--key", uri("release", object="release-signer"), "--log", str(log), *trust)
    vault("bundle", "log", "verify", str(log), "--token", uri("release"), *trust)

    station = ["--state", str(tmp_path / "state"), "--token", uri("station-1"), "--station-id", "station-1",
               "--root-cert", str(root_cert)]  # fmt: skip
    vault("station", "load", *station, "--policy", str(policy), "--bundle", str(bundle))
    out = vault("station", "provision", *station, "--count", "3", "--fixtures", "2", "--operator", "alice")
    assert out.count(" provisioned") >= 3
    vault("station", "export", *station, "--out", str(tmp_path / "evidence"))

    report = tmp_path / "audit.json"
    vault("audit", str(tmp_path / "evidence"), "--root-cert", str(root_cert), "--policy", str(policy),
          "--bundle", str(bundle), "--token", uri("auditor"), "--json", str(report))  # fmt: skip
    assert json.loads(report.read_text())["findings"] == []

    # a backup cannot be served on NSS: refused before anything is made, in one line naming what is missing
    backup = ["ceremony", "run", str(POLICIES / "backup.yaml"), "--credentials", str(quorum), *trust, *shares,
              "--out", str(tmp_path / "backup"), "--rehearsal", "--yes"]  # fmt: skip
    capsys.readouterr()
    code, _, err = run(capsys, *backup)
    assert code == 1
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if not line.startswith("*** REHEARSAL")] == [
        "vault: error: token 'nss-root' (NSS softoken) cannot serve as the root token of a backup: "
        "it has no security-officer login (CKU_SO)"
    ]
    assert not (tmp_path / "backup").exists()
