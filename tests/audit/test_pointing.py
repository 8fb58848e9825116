"""Every finding points at the evidence; figures count each distinct manifest once; refusals apart."""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.audit.conftest import Forge, Report, serious
from tests.audit.test_figures import _refusal
from tests.audit.test_report import _argv
from tests.verify.conftest import World
from vault.audit import Evidence, Finding
from vault.cli import main

Audit = Callable[..., Report]


def _only(report: Report, code: str) -> Finding:
    found = [f for f in report.findings if f.code == code]
    assert len(found) == 1, [(f.code, f.message) for f in report.findings]
    return found[0]


def test_a_manifest_finding_names_the_export_by_full_path_and_the_device(
    forge: Forge, tmp_path: Path, run_audit: Audit, monkeypatch: pytest.MonkeyPatch
) -> None:
    forge.provision(2)
    device = forge.device()
    entry = forge.add("failed", device, failed_step="program")
    monkeypatch.chdir(tmp_path)
    relative = Path("evidence")
    path = forge.export(relative)
    report = run_audit([path])
    finding = _only(report, "unit-failed")
    assert finding.evidence == (
        Evidence(str((tmp_path / path).absolute()), "station-1", 2, entry.manifest.id, device.serial, device.hwid),
    )
    assert report.exports[0].file == str((tmp_path / path).absolute())


def test_a_cross_station_finding_names_each_device_it_saw(forge: Forge, tmp_path: Path, run_audit: Audit) -> None:
    one, two = forge.device("SN-SAME"), forge.device("SN-SAME")
    first, second = forge.add("provisioned", one), forge.add("provisioned", two)
    path = forge.export(tmp_path)
    finding = _only(run_audit([path]), "duplicate-serial")
    assert [(e.position, e.manifest_id, e.serial, e.hardware_id, e.export) for e in finding.evidence] == [
        (0, first.manifest.id, "SN-SAME", one.hwid, str(path)),
        (1, second.manifest.id, "SN-SAME", two.hwid, str(path)),
    ]


def test_the_terminal_shows_where_each_finding_points(
    world: World, forge: Forge, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one, two = forge.device("SN-TWICE"), forge.device("SN-TWICE")
    forge.add("provisioned", one)
    second = forge.add("provisioned", two)
    path = forge.export(tmp_path / "evidence")
    with pytest.raises(SystemExit) as exited:
        main(_argv(world, path))
    assert exited.value.code == 3
    out = capsys.readouterr().out
    below = out[out.index("duplicate-serial") :]
    below = re.split(r"\n(?! {3})", below)[0]  # up to the next finding or summary line
    shown = "".join(below.split())
    assert shown.count(f"at{path},position") == 2
    assert f"position1,manifest{second.manifest.id},serialSN-TWICE,hardwareid{two.hwid}" in shown


def test_repeated_manifests_count_once_in_the_pareto_and_the_weeks(
    forge: Forge, tmp_path: Path, run_audit: Audit
) -> None:
    forge.provision(2)
    forge.add("failed", failed_step="program")
    forge.add("scrap", forge.device())
    first = forge.export(tmp_path / "a")
    again = forge.export(tmp_path / "b", sequence=1, start=0, record_export=False)  # export 1 re-sealed
    report = run_audit([first, again])
    assert "manifest-duplicated" in serious(report)
    for quality in (report.stations[0].quality, report.totals[1]):
        assert quality.failures == (("program", 1),)
        assert sum(count for _, count in quality.exceptions_per_week) == 2  # the failure and the scrap, once each


def test_refusals_are_their_own_finding_never_failed_units(forge: Forge, tmp_path: Path, run_audit: Audit) -> None:
    forge.provision(2)
    _refusal(forge)
    _refusal(forge, "identity")
    report = run_audit([forge.export(tmp_path)])
    refused = _only(report, "unit-refused")
    assert refused.severity == "info" and refused.count == 2
    assert [e.position for e in refused.evidence] == [2, 3]
    assert not [f for f in report.findings if f.code == "unit-failed"]


# --- time: the forward-dated entry is named ------------------------------------------------------


@pytest.mark.parametrize("outlier", range(1, 9))  # exports are cut in 4 KiB chunks: inside one and across
def test_a_forward_dated_entry_is_named_itself(
    forge: Forge, tmp_path: Path, run_audit: Audit, outlier: int
) -> None:
    entries = []
    for position in range(10):
        device = forge.device()
        when = forge.tick() + datetime.timedelta(hours=5) if position == outlier else forge.tick()
        entries.append((forge.add("provisioned", device, when=when), device))
        if position == 4:
            first = forge.export(tmp_path)  # the outlier at the end of an export, or at the start of the next
    report = run_audit([first, forge.export(tmp_path)])
    assert serious(report) == {"time-forward-dated"}
    finding = _only(report, "time-forward-dated")
    entry, device = entries[outlier]
    assert [(e.position, e.manifest_id, e.serial) for e in finding.evidence] == [
        (outlier, entry.manifest.id, device.serial)
    ]


def test_a_clock_set_back_is_a_regression_at_the_entry_that_went_back(
    forge: Forge, tmp_path: Path, run_audit: Audit
) -> None:
    forge.provision(3)
    back = forge.add("provisioned", when=forge.time - datetime.timedelta(hours=1))
    forge.provision(2)
    report = run_audit([forge.export(tmp_path)])
    assert serious(report) == {"time-regression"}
    assert [e.manifest_id for e in _only(report, "time-regression").evidence] == [back.manifest.id]


def test_the_clean_twin_has_no_time_finding(forge: Forge, tmp_path: Path, run_audit: Audit) -> None:
    forge.provision(10)
    assert serious(run_audit([forge.export(tmp_path)]), "low") == {"station-no-evidence"}  # station-2 sent nothing


# --- a label on the wrong board: both devices are named ---------------------------------------------


def test_a_misbound_label_names_the_device_whose_label_it_is(
    forge: Forge, tmp_path: Path, run_audit: Audit
) -> None:
    owner = forge.device()
    given = forge.add("provisioned", owner)
    forge.provision(1)
    refused = forge.device()
    scan = forge.add("label-mismatch", refused, label=owner.serial, serial=None, unit=None)
    path = forge.export(tmp_path)
    report = run_audit([path])
    finding = _only(report, "label-misbound")
    assert finding.hardware_ids == (refused.hwid, owner.hwid) and finding.serials == (owner.serial,)
    assert [(e.position, e.manifest_id, e.hardware_id, e.export) for e in finding.evidence] == [
        (2, scan.manifest.id, refused.hwid, str(path)),
        (0, given.manifest.id, owner.hwid, str(path)),
    ]
    assert not serious(report)


def test_a_misread_label_that_is_nobody_s_names_no_other_device(
    forge: Forge, tmp_path: Path, run_audit: Audit
) -> None:
    forge.provision(2)
    forge.add("label-mismatch", forge.device(), label="SN-NOBODY", serial=None, unit=None)
    report = run_audit([forge.export(tmp_path)])
    assert [f.code for f in report.findings] == ["label-mismatch", "station-no-evidence"]  # station-2 sent nothing
