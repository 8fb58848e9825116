"""Every device event that consumed hardware is counted, whatever optional fields it carries; unit numbers
are one device each and leave no hole."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from tests.audit.conftest import Device, Entry, Forge, Report, serious
from vault.manifest import sign_manifest

Audit = Callable[..., Report]


def unitless(forge: Forge, event: str = "provisioned", device: Device | None = None, **kwargs: object) -> Entry:
    """A manifest signed with the station's real key that names no unit (an insider's, or a refusal)."""
    entry = forge.manifest(event, device, **kwargs)  # type: ignore[arg-type]
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


def test_one_unit_on_two_devices_is_a_finding_naming_both(forge: Forge, run_audit: Audit, tmp_path: Path) -> None:
    first, _ = forge.provision(2)
    other = forge.device()
    forge.add("provisioned", other, unit=1)
    report = run_audit([forge.export(tmp_path)])
    assert serious(report) == {"unit-shared"}
    (finding,) = [f for f in report.findings if f.code == "unit-shared"]
    assert finding.severity == "critical"
    assert "unit 1 " in finding.message
    assert set(finding.hardware_ids) == {first.hwid, other.hwid}
    assert [(e.station, e.position) for e in finding.evidence] == [("station-1", 0), ("station-1", 2)]


def test_a_hole_in_the_unit_numbers_is_a_finding_naming_the_units(
    forge: Forge, run_audit: Audit, tmp_path: Path
) -> None:
    forge.provision(2)
    forge.units += 2  # units 3 and 4 were used by devices the evidence does not show
    forge.provision(1)
    report = run_audit([forge.export(tmp_path)])
    assert serious(report) == {"unit-hole"}
    (finding,) = [f for f in report.findings if f.code == "unit-hole"]
    assert finding.severity == "high" and finding.count == 2
    assert "have no manifest: 3, 4 (" in finding.message and finding.stations == ("station-1",)


def test_a_unit_number_far_past_the_allocation_is_counted_not_walked(
    forge: Forge, run_audit: Audit, tmp_path: Path
) -> None:
    forge.provision(2)
    forge.add("provisioned", unit=10**15)
    report = run_audit([forge.export(tmp_path)])  # returns at once: the holes past the allocation are counted
    assert serious(report) == {"over-allocation", "unit-hole"}
    (hole,) = [f for f in report.findings if f.code == "unit-hole"]
    assert hole.count == 10**15 - 3 and "no manifest: 3, 4, 5, " in hole.message


def test_retries_reworks_refusals_and_interruptions_leave_no_shared_unit_or_hole(
    forge: Forge, run_audit: Audit, tmp_path: Path
) -> None:
    retried, reworked, refused, cut = (forge.device() for _ in range(4))
    forge.add("failed", retried, failed_step="program")  # unit 1
    forge.add("retry", retried, unit=1)
    forge.add("provisioned", reworked)  # unit 2
    forge.add("rework", reworked, unit=2)
    unitless(forge, "failed", refused, failed_step="allocation")  # a refusal names no unit
    forge.add("failed", cut, failed_step="interrupted")  # unit 3, closed after a power cut
    forge.provision(1)  # unit 4
    first = forge.export(tmp_path / "a")
    forge.provision(2)  # units 5 and 6
    second = forge.export(tmp_path / "b")
    report = run_audit([first, second])
    assert serious(report) == set()
    (station,) = [s for s in report.stations if s.station_id == "station-1"]
    assert station.reconciliation.highest_unit == 6 and station.reconciliation.reserved == 6
    assert serious(run_audit([second])) == set()  # an audit picked up inside the log sees no hole below it


def test_a_unit_on_a_fixture_when_the_station_exports_is_no_hole(
    world: object, run_audit: Audit, tmp_path: Path
) -> None:
    import threading

    from vault.verify import ImageToProgram, SimulatedDevice

    on_fixture, release = threading.Event(), threading.Event()

    class Slow(SimulatedDevice):
        def program(self, image: ImageToProgram, chunks: object) -> None:
            on_fixture.set()
            release.wait(60)
            super().program(image, chunks)  # type: ignore[arg-type]

    evidence = tmp_path / "evidence"
    with world.station(tmp_path / "s") as station:  # type: ignore[attr-defined]
        station.load(world.bundle_path, world.policy)  # type: ignore[attr-defined]
        station.provision(SimulatedDevice())
        slow = threading.Thread(target=station.provision, args=(Slow(),), kwargs={"fixture": 2})
        slow.start()
        assert on_fixture.wait(60)  # unit 2 is on fixture 2 ...
        station.provision(SimulatedDevice())  # ... while unit 3 is done
        first = station.export(evidence).path  # the export says unit 2 is still on a fixture
        release.set()
        slow.join(60)
        second = station.export(evidence).path
    report = run_audit([first])
    assert serious(report) == set(), [f.message for f in report.findings]
    (waiting,) = [f for f in report.findings if f.code == "unit-open"]  # shown, not hidden
    assert waiting.severity == "info" and waiting.message.endswith(": 2")
    both = run_audit([first, second])
    assert serious(both) == set() and not [f for f in both.findings if f.code == "unit-open"]
