"""Report figures: yield counts devices, not refusals; rates never round up to 100%; --json -; whole findings."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from tests.audit.conftest import Entry, Forge
from tests.audit.test_report import _argv
from tests.verify.conftest import World
from vault.audit._report import Quality, percent
from vault.cli import main
from vault.manifest import sign_manifest


def _refusal(forge: Forge, step: str = "allocation") -> None:
    """A device the station refused before touching it: a failed manifest naming no unit, as the station writes."""
    entry = forge.manifest("failed", failed_step=step)
    forge.units -= 1
    manifest = replace(entry.manifest, unit=None)
    forge.log.append(Entry(sign_manifest(manifest, forge.signing), None, manifest))


def report_lines(out: str) -> list[str]:
    """The summary's lines, a wrapped finding joined back into one (its continuations are indented 40)."""
    return re.sub(r"\n {40}", "\n\t", out).replace("\n\t", "").splitlines()


def _audit(world: World, capsys: pytest.CaptureFixture[str], *exports: Path) -> tuple[int, dict, str]:
    with pytest.raises(SystemExit) as exited:
        main(_argv(world, *exports, extra=("--json", "-")))
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), json.loads(out), err


def test_refusals_are_not_failed_units_and_json_goes_to_standard_output(
    world: World, forge: Forge, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    forge.provision(8)
    _refusal(forge)
    _refusal(forge, "identity")
    status, report, err = _audit(world, capsys, forge.export(tmp_path / "evidence"))
    assert status == 0, err
    assert not Path("-").exists()  # --json - writes to standard output, never a file named "-"
    assert "PASS: no finding at or above high" in err and "json report" not in err  # the summary went to stderr
    station = report["stations"][0]
    assert station["quality"]["first_pass_yield"] == {"attempted": 8, "first_pass": 8, "rate": 1.0}
    assert station["quality"]["failure_pareto"] == []
    r = station["reconciliation"]
    assert (r["failed"], r["refused"], r["provisioned"], r["reserved"]) == (0, 2, 8, 8)
    assert report["totals"]["reconciliation"]["refused"] == 2


def test_a_failed_unit_still_counts(
    world: World, forge: Forge, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    forge.provision(2)
    forge.add("failed", failed_step="program")
    status, report, err = _audit(world, capsys, forge.export(tmp_path / "evidence"))
    quality = report["stations"][0]["quality"]
    assert quality["first_pass_yield"] == {"attempted": 3, "first_pass": 2, "rate": 0.6666}  # floored
    assert quality["failure_pareto"] == [{"step": "program", "count": 1, "cumulative_share": 1.0}]
    assert report["stations"][0]["reconciliation"]["failed"] == 1


def test_a_rate_below_one_is_never_shown_as_100_percent() -> None:
    assert percent(19999 / 20000) == "99.9%" and percent(1.0) == "100.0%" and percent(0.3) == "30.0%"
    assert percent(None) == "–"
    rate = Quality.of(20000, 19999, {}, {}).to_json()["first_pass_yield"]["rate"]
    assert rate == 0.9999
    pareto = Quality.of(1, 0, {"program": 19999, "verify": 1}, {}).to_json()["failure_pareto"]
    assert [p["cumulative_share"] for p in pareto] == [0.9999, 1.0]


def test_the_terminal_shows_whole_findings(
    world: World, forge: Forge, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    forge.provision(1)
    folder = tmp_path / "evidence"
    forge.export(folder)
    bogus = folder / ("a-file-with-a-long-name-that-is-not-an-export-at-all-" * 2 + ".vault-evidence")
    bogus.write_bytes(b"not an export")
    with pytest.raises(SystemExit) as exited:
        main(_argv(world, folder))
    out = capsys.readouterr().out
    assert exited.value.code == 3
    line = next(f for f in report_lines(out) if "export-invalid" in f)
    assert "".join(str(bogus.absolute()).split()) in "".join(line.split())  # whole, wrapped under itself
    assert "".join(line.split()).endswith("notavaultevidenceexport(doesnotstartwithVLTEVID1)") and "…" not in out
    assert max(len(line) for line in out.splitlines()) <= 100
