"""Every device event that consumed hardware is counted, whatever optional fields it carries."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from tests.audit.conftest import Entry, Forge, Report, serious
from vault.manifest import sign_manifest

Audit = Callable[..., Report]


def unitless(forge: Forge, event: str = "provisioned") -> Entry:
    """An insider's manifest: a device provisioned under the station's real key, naming no unit."""
    entry = forge.manifest(event)
    if entry.manifest.unit is not None:
        forge.units -= 1  # the number was never used: the next honest unit takes it
    manifest = replace(entry.manifest, unit=None)
    forged = Entry(sign_manifest(manifest, forge.signing), entry.certificate, manifest)
    forge.log.append(forged)
    return forged


def test_a_provisioned_manifest_with_no_unit_is_a_finding_that_points_at_it(
    forge: Forge, run_audit: Audit, tmp_path: Path
) -> None:
    forge.provision(2)
    hidden = unitless(forge)
    forge.provision(1)
    path = forge.export(tmp_path)
    report = run_audit([path])
    assert serious(report) == {"unit-missing"}
    (finding,) = [f for f in report.findings if f.code == "unit-missing"]
    assert finding.severity == "high"
    assert finding.count == 1
    assert finding.stations == ("station-1",)
    assert finding.serials == (hidden.manifest.serial,)
    assert finding.hardware_ids == (hidden.manifest.hardware_id,)
    (evidence,) = finding.evidence
    assert (evidence.station, evidence.position, evidence.manifest_id) == ("station-1", 2, hidden.manifest.id)
    assert evidence.export is not None and evidence.export.endswith(path.name)
    (station,) = [s for s in report.stations if s.station_id == "station-1"]
    assert station.reconciliation.provisioned == 4  # counted as a provisioned device
    assert station.reconciliation.reserved == 3


def test_unitless_manifests_past_the_allocation_are_an_over_allocation(
    forge: Forge, run_audit: Audit, tmp_path: Path
) -> None:
    forge.provision(18)  # the allocation is 20
    for _ in range(3):
        unitless(forge)
    report = run_audit([forge.export(tmp_path)])
    assert serious(report) == {"unit-missing", "over-allocation"}
    (missing,) = [f for f in report.findings if f.code == "unit-missing"]
    assert missing.count == 3
    (over,) = [f for f in report.findings if f.code == "over-allocation"]
    assert over.count == 1 and over.stations == ("station-1",)


def test_a_retry_or_rework_with_no_unit_is_a_finding_too(forge: Forge, run_audit: Audit, tmp_path: Path) -> None:
    device = forge.device()
    forge.add("provisioned", device)
    forge.add("rework", device, unit=None)  # the forge names no unit on a rework unless told
    report = run_audit([forge.export(tmp_path)])
    assert serious(report) == {"unit-missing"}
    (finding,) = [f for f in report.findings if f.code == "unit-missing"]
    assert finding.hardware_ids == (device.hwid,) and finding.evidence[0].position == 1


def test_the_clean_twin_gives_nothing(forge: Forge, run_audit: Audit, tmp_path: Path) -> None:
    device = forge.device()
    forge.provision(3)
    forge.add("provisioned", device)
    forge.add("rework", device, unit=4)
    report = run_audit([forge.export(tmp_path)])
    assert serious(report) == set()
    (station,) = [s for s in report.stations if s.station_id == "station-1"]
    assert station.reconciliation.provisioned == 4
