"""A retry is not a rework: an honest line's retries raise nothing; a retry or rework out of turn does."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.audit.conftest import Forge, Report, serious
from tests.verify.conftest import World
from vault.errors import DeviceError, LabelMismatchError
from vault.verify import ImageToProgram, SimulatedDevice
from vault.verify._simulate import run_simulation

Audit = Callable[..., Report]


class PowerCut(SimulatedDevice):
    def program(self, image: ImageToProgram, chunks: object) -> None:
        raise KeyboardInterrupt


@pytest.fixture
def honest_run(world: World, tmp_path: Path) -> list[Path]:
    """Two stations over several exports: failures and their retries, a power cut and its retry,
    reworks, scraps and a label misread, all through the station library (function scope: the
    station tokens start with no head, see tests/conftest.py)."""
    folder = tmp_path
    evidence = folder / "evidence"
    exports = []
    state = folder / "station-1"
    cut = PowerCut()
    with world.station(state) as station:
        station.load(world.bundle_path, world.policy)
        good = SimulatedDevice(label="S1-GOOD")
        station.provision(good, label="S1-GOOD", fixture=1)
        twice = SimulatedDevice(label="S1-TWICE", fail_at="program")
        with pytest.raises(DeviceError):
            station.provision(twice, label="S1-TWICE", fixture=2)
        twice.fail_at = "install-certificate"
        with pytest.raises(DeviceError):
            station.provision(twice, label="S1-TWICE", fixture=2)
        exports.append(station.export(evidence).path)  # the export falls between a failure and its retry
        twice.fail_at = None
        assert station.provision(twice, label="S1-TWICE", fixture=3).event == "retry"
        twice.unlock_for_rework()
        assert station.provision(twice, label="S1-TWICE", fixture=3, rework=True).event == "rework"
        misread = SimulatedDevice(label="S1-MISREAD")
        with pytest.raises(LabelMismatchError):
            station.provision(misread, label="S1-GOOD", fixture=1)
        station.provision(misread, label="S1-MISREAD", fixture=1)
        broken = SimulatedDevice(label="S1-BROKEN", fail_at="verify")
        with pytest.raises(DeviceError):
            station.provision(broken, label="S1-BROKEN", fixture=4)
        station.scrap(broken.hardware_id, reason="no read-back after two tries")
        station.scrap(misread.hardware_id, reason="dropped")
        with pytest.raises(KeyboardInterrupt):  # the power goes
            station.provision(cut, label="S1-CUT", fixture=2)
    with world.station(state) as station:  # the power comes back: the open unit is closed as interrupted
        station.load(world.bundle_path, world.policy)
        exports.append(station.export(evidence).path)
        assert station.provision(SimulatedDevice(cut.hardware_id), label="S1-CUT", fixture=2).event == "retry"
        good.unlock_for_rework()
        assert station.provision(good, label="S1-GOOD", fixture=1, rework=True).event == "rework"
        exports.append(station.export(evidence).path)
    with world.station(folder / "station-2", "station-2") as station:
        station.load(world.bundle_path, world.policy)
        run_simulation(
            station, count=6, fixtures=2, fail={2: "program", 5: "lock"}, label_mismatch={4}, rework=[1],
            retry=[2, 5], label_prefix="S2-",
        )  # fmt: skip
        exports.append(station.export(evidence).path)
    return exports


def test_an_honest_run_with_retries_reworks_scraps_and_a_power_cut_has_nothing_at_medium(
    honest_run: list[Path], run_audit: Audit
) -> None:
    report = run_audit(honest_run)
    assert serious(report) == set(), [f.message for f in report.at_or_above("medium")]
    assert "rework-unknown-device" not in report.codes() and "retry-without-failure" not in report.codes()
    stations = {s.station_id: s for s in report.stations}
    one, two = stations["station-1"], stations["station-2"]
    assert one.events["retry"] == 2 and one.events["rework"] == 2 and one.events["scrap"] == 2
    r = one.reconciliation
    # good, twice, misread, broken, cut: five units, however many attempts each took
    assert (r.reserved, r.units_provisioned, r.units_failed, r.units_scrapped, r.units_open) == (5, 3, 0, 2, 0)
    # six devices, one refused for its label before any unit was reserved; two retried on their own units
    assert two.events["retry"] == 2 and two.reconciliation.reserved == 5
    assert two.reconciliation.units_provisioned == 5 and two.reconciliation.units_failed == 0


def test_a_retry_no_failure_came_before_is_found(forge: Forge, tmp_path: Path, run_audit: Audit) -> None:
    forge.provision(1)
    forge.add("retry", forge.device(), unit=2)
    report = run_audit([forge.export(tmp_path)])
    assert serious(report) == {"retry-without-failure"}
    (finding,) = report.at_or_above("medium")
    assert len(finding.evidence) == 1 and finding.evidence[0].position == 1


def test_the_clean_twin_a_retry_after_a_failure_is_not(forge: Forge, tmp_path: Path, run_audit: Audit) -> None:
    device = forge.device()
    failed = forge.add("failed", device, failed_step="program")
    forge.add("retry", device, unit=failed.manifest.unit)
    report = run_audit([forge.export(tmp_path)])
    assert serious(report) == set()
    assert report.stations[0].reconciliation.reserved == 1


def test_a_retry_of_a_provisioned_device_is_found(forge: Forge, tmp_path: Path, run_audit: Audit) -> None:
    device = forge.provision(1)[0]
    forge.add("failed", device, unit=1, failed_step="lock")  # a rework that failed
    forge.add("retry", device, unit=1)  # but a provisioned device is never retried: it is reworked
    report = run_audit([forge.export(tmp_path)])
    assert serious(report) == {"duplicate-hardware-id"}


def test_a_rework_of_a_device_that_only_failed_is_still_found(forge: Forge, tmp_path: Path, run_audit: Audit) -> None:
    device = forge.device()
    failed = forge.add("failed", device, failed_step="program")
    forge.add("rework", device, unit=failed.manifest.unit)
    report = run_audit([forge.export(tmp_path)])
    assert serious(report) == {"rework-unknown-device"}
