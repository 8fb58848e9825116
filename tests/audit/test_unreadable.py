"""One bad export never stops the audit; two files claiming one export are always a finding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.audit.conftest import Forge
from tests.audit.test_report import _argv
from tests.verify.conftest import World
from vault.cli import main


def _run(world: World, capsys: pytest.CaptureFixture[str], *exports: Path, out: Path) -> tuple[int, dict, str]:
    with pytest.raises(SystemExit) as exited:
        main(_argv(world, *exports, extra=("--json", str(out))))
    text, err = capsys.readouterr()
    report = json.loads(out.read_text()) if out.exists() else {}
    return int(exited.value.code or 0), report, text + err


def _findings(report: dict, code: str) -> list[dict]:
    return [f for f in report["findings"] if f["code"] == code]


def test_an_export_truncated_inside_its_header_is_a_finding_and_the_rest_is_audited(
    world: World, forge: Forge, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    forge.provision(3)
    first = forge.export(tmp_path / "evidence")
    forge.provision(2)
    second = forge.export(tmp_path / "evidence")
    second.write_bytes(second.read_bytes()[:40])  # cut inside its header
    status, report, output = _run(world, capsys, first, second, out=tmp_path / "audit.json")
    assert status == 3, output
    invalid = _findings(report, "export-invalid")
    assert len(invalid) == 1 and invalid[0]["severity"] == "critical"
    assert str(second.absolute()) in invalid[0]["message"]
    assert report["summary"]["manifests"] == 3 and report["summary"]["verified"] == 3  # the first is audited
    assert {e["file"]: e["status"] for e in report["exports"]} == {str(first): "verified", str(second): "invalid"}
    assert "traceback" not in output.lower()


def test_an_export_sealed_to_another_auditor_is_a_finding_and_the_rest_is_audited(
    world: World, forge: Forge, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    forge.provision(3)
    forge.export(tmp_path / "evidence")
    forge.provision(2)
    auditor, forge.auditor = forge.auditor, ec.generate_private_key(ec.SECP256R1()).public_key()
    second = forge.export(tmp_path / "evidence")
    status, report, output = _run(world, capsys, tmp_path / "evidence", out=tmp_path / "audit.json")
    assert status == 3, output
    invalid = _findings(report, "export-invalid")
    assert len(invalid) == 1 and str(second.absolute()) in invalid[0]["message"]
    assert "not to this auditor's key" in invalid[0]["message"]
    assert report["summary"]["verified"] == 3
    # every export sealed to another key: the wrong token was given, the audit cannot start
    forge.auditor = ec.generate_private_key(ec.SECP256R1()).public_key()
    only = forge.export(tmp_path / "elsewhere")
    forge.auditor = auditor
    status, report, output = _run(world, capsys, only, out=tmp_path / "other.json")
    assert status == 1 and not report
    assert output.startswith("vault: error:") and "use the token the exports were written for" in output


def test_a_file_that_is_not_an_export_is_a_finding(
    world: World, forge: Forge, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    forge.provision(2)
    good = forge.export(tmp_path / "evidence")
    bogus = tmp_path / "evidence" / "not-an-export.vault-evidence"
    bogus.write_bytes(b"hello, this is not an export at all")
    status, report, output = _run(world, capsys, tmp_path / "evidence", out=tmp_path / "audit.json")
    assert status == 3, output
    invalid = _findings(report, "export-invalid")
    assert len(invalid) == 1 and str(bogus.absolute()) in invalid[0]["message"]
    assert "not a vault evidence export" in invalid[0]["message"]
    assert report["summary"]["verified"] == 2 and str(good) in {e["file"] for e in report["exports"]}
