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
from vault.evidence import EvidenceReader


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


def test_a_forged_file_claiming_a_genuine_export_never_hides_it(
    world: World, forge: Forge, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    forge.provision(3)
    forge.export(tmp_path / "genuine")
    size = len(forge.log)
    forge.provision(4)
    genuine = forge.export(tmp_path / "genuine")
    with EvidenceReader(genuine) as reader:
        export_id = reader.header.export_id
    # anyone can seal to the auditor: an empty export 2 with the genuine id, export 1's checkpoint as both
    monkeypatch.setattr("vault.evidence.secrets.token_hex", lambda _size: export_id)
    forged = forge.export(tmp_path / "forged", sequence=2, start=size, size=size, record_export=False)
    monkeypatch.undo()
    first = tmp_path / "genuine" / "station-1-000001.vault-evidence"
    status, report, output = _run(world, capsys, first, forged, genuine, out=tmp_path / "audit.json")
    assert status == 3, output
    forked = _findings(report, "log-forked")
    assert len(forked) == 1 and forked[0]["severity"] == "critical"
    assert str(forged.absolute()) in forked[0]["message"] and str(genuine.absolute()) in forked[0]["message"]
    statuses = {e["file"]: e["status"] for e in report["exports"]}
    assert "duplicate" not in statuses.values()
    assert report["summary"]["verified"] == 7  # the genuine export 2 was audited
    # the same file given twice (a copy) is read once and is no finding
    copy = tmp_path / "copy" / genuine.name
    copy.parent.mkdir()
    copy.write_bytes(genuine.read_bytes())
    status, report, output = _run(world, capsys, first, genuine, copy, out=tmp_path / "copy.json")
    assert status == 0, output
    assert {e["file"]: e["status"] for e in report["exports"]}[str(copy)] == "duplicate"
    assert not _findings(report, "manifest-duplicated")


def test_a_replayed_export_is_counted_once(
    world: World, forge: Forge, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    forge.provision(8)
    first = forge.export(tmp_path / "evidence")
    forge.provision(8)  # 16 of an allocation of 20
    second = forge.export(tmp_path / "evidence")
    # export 2 again, re-sealed under another header (the same entries), as a replay would bring it
    replay = forge.export(tmp_path / "replay", sequence=2, start=8, size=16, record_export=False)
    status, report, output = _run(world, capsys, first, second, replay, out=tmp_path / "audit.json")
    codes = {f["code"] for f in report["findings"]}
    assert "over-allocation" not in codes, output
    assert "log-forked" in codes and "manifest-duplicated" in codes
    duplicated = _findings(report, "manifest-duplicated")[0]
    assert duplicated["count"] == 8 and duplicated["severity"] == "medium"
    station = report["stations"][0]["reconciliation"]
    assert station["provisioned"] == 16 and station["reserved"] == 16 and station["left"] == 4
    assert report["stations"][0]["events"]["provisioned"] == 16
