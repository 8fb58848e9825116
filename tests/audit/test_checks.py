"""The checks of what an honest line never records: each crafted anomaly gives exactly its finding,
pointing at the unit, and its clean twin nothing at medium or above."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.audit.conftest import START, Forge, read_release, serious
from tests.verify.conftest import World
from vault.audit import Finding, Report, Thresholds, audit
from vault.errors import DeviceError, LabelMismatchError
from vault.manifest import ImageRecord
from vault.token import TokenKey
from vault.verify import SimulatedDevice

Audit = Callable[..., Report]
Keys = dict[str, tuple[TokenKey, TokenKey]]


def only(report: Report, code: str) -> Finding:
    """The one finding at medium or above, which must have ``code``."""
    assert serious(report) == {code}, [f.message for f in report.at_or_above("medium")]
    (finding,) = report.at_or_above("medium")
    return finding


@pytest.fixture(scope="module")
def big_bundle(world: World) -> Path:
    """A bundle allocating 400 units to each station, for the fast-fixture scenarios."""
    return world.bundle(allocation="{station-1: 400, station-2: 400}")


def other_station(world: World, keys: Keys, forge: Forge, station_id: str = "station-2") -> Forge:
    twin = Forge(world, forge.release, station_id, *keys[station_id])
    twin.time = forge.time
    return twin


# --- a. the label of a good device -------------------------------------------------------------


def test_a_good_device_labelled_with_another_serial_is_found(forge: Forge, tmp_path: Path, run_audit: Audit) -> None:
    forge.provision(2)
    bad = forge.add("provisioned", label="SN-SOMEONE-ELSE")
    finding = only(run_audit([forge.export(tmp_path)]), "label-serial-differs")
    assert finding.severity == "high" and finding.serials == (bad.manifest.serial,)
    assert finding.hardware_ids == (bad.manifest.hardware_id,)
    assert [(e.position, e.manifest_id) for e in finding.evidence] == [(2, bad.manifest.id)]


def test_the_clean_twin_labels_that_match(forge: Forge, tmp_path: Path, run_audit: Audit) -> None:
    forge.provision(3)
    device = forge.device()
    forge.add("failed", device, label="SN-MISREAD", failed_step="identity", unit=None)  # a refusal may differ
    assert serious(run_audit([forge.export(tmp_path)])) == set()


# --- b. a good device missing images -----------------------------------------------------------


def test_a_good_device_missing_an_image_is_found(forge: Forge, tmp_path: Path, run_audit: Audit) -> None:
    app = forge.release.images[0]
    forge.provision(1)
    short = forge.add("provisioned", images=(ImageRecord(app.name, app.sha256, app.sha256),))
    finding = only(run_audit([forge.export(tmp_path)]), "image-missing")
    assert "config.bin" in finding.message and finding.evidence[0].manifest_id == short.manifest.id
    assert finding.evidence[0].position == 1 and finding.serials == (short.manifest.serial,)


def test_the_clean_twin_a_failed_unit_may_lack_images(forge: Forge, tmp_path: Path, run_audit: Audit) -> None:
    app = forge.release.images[0]
    forge.provision(1)
    forge.add("failed", failed_step="program", images=(ImageRecord(app.name, app.sha256, None),))
    assert serious(run_audit([forge.export(tmp_path)])) == set()


# --- c. a scrapped device back on the line -----------------------------------------------------


def test_a_scrapped_device_reworked_is_found(forge: Forge, tmp_path: Path, run_audit: Audit) -> None:
    device = forge.device()
    first = forge.add("provisioned", device)
    forge.add("scrap", device, unit=first.manifest.unit)
    back = forge.add("rework", device, unit=first.manifest.unit)
    finding = only(run_audit([forge.export(tmp_path)]), "scrap-reprovisioned")
    assert finding.hardware_ids == (device.hwid,) and "rework at position 2" in finding.message
    assert back.manifest.id in {e.manifest_id for e in finding.evidence}


def test_a_device_scrapped_at_one_station_provisioned_at_another_is_found(
    world: World, forge: Forge, station_keys: Keys, tmp_path: Path, run_audit: Audit
) -> None:
    device = forge.device()
    failed = forge.add("failed", device, failed_step="verify")
    forge.add("scrap", device, unit=failed.manifest.unit)
    two = other_station(world, station_keys, forge)
    two.tick(30)
    two.add("provisioned", device)
    report = run_audit([forge.export(tmp_path / "1"), two.export(tmp_path / "2")])
    assert serious(report) == {"scrap-reprovisioned"}
    (finding,) = report.at_or_above("medium")
    assert finding.stations == ("station-1", "station-2")


def test_the_clean_twin_scrapped_after_its_rework(forge: Forge, tmp_path: Path, run_audit: Audit) -> None:
    device = forge.device()
    first = forge.add("provisioned", device)
    forge.add("rework", device, unit=first.manifest.unit)
    forge.add("scrap", device, unit=first.manifest.unit)
    assert serious(run_audit([forge.export(tmp_path)])) == set()


# --- d. reworks past what a line does ----------------------------------------------------------


def reworked(forge: Forge, times: int) -> tuple[str, list[str]]:
    device = forge.device()
    first = forge.add("provisioned", device)
    ids = [forge.add("rework", device, unit=first.manifest.unit).manifest.id for _ in range(times)]
    return device.hwid, ids


def test_a_device_reworked_again_and_again_is_found(forge: Forge, tmp_path: Path, run_audit: Audit) -> None:
    forge.provision(1)
    hwid, ids = reworked(forge, 5)
    finding = only(run_audit([forge.export(tmp_path)]), "rework-repeated")
    assert finding.severity == "medium" and finding.hardware_ids == (hwid,)
    assert [e.manifest_id for e in finding.evidence] == ids and "5 times" in finding.message


def test_the_clean_twin_reworked_three_times(
    world: World, forge: Forge, tmp_path: Path, run_audit: Audit, auditor_key: TokenKey
) -> None:
    reworked(forge, 3)
    path = forge.export(tmp_path)
    assert serious(run_audit([path])) == set()
    stricter = audit(
        [path], policy=world.policy, root_certificate=world.root_cert, bundle_path=world.bundle_path,
        decapsulator=auditor_key, workers=1, thresholds=Thresholds(max_reworks=2),
    )  # fmt: skip
    assert serious(stricter) == {"rework-repeated"}


# --- e. one operator at two stations at once ---------------------------------------------------


def operator_at(forge: Forge, start: datetime.datetime, units: int, every: int, operator: str = "mallory") -> None:
    for i in range(units):
        forge.add("provisioned", when=start + datetime.timedelta(minutes=every * i), operator=operator)


def test_one_operator_at_two_stations_at_once_is_found(
    world: World, forge: Forge, station_keys: Keys, tmp_path: Path, run_audit: Audit
) -> None:
    two = other_station(world, station_keys, forge)
    start = forge.time + datetime.timedelta(hours=1)
    operator_at(forge, start, 15, 4)  # 10:00 to 10:56
    operator_at(two, start + datetime.timedelta(minutes=10), 8, 6)  # 10:10 to 10:52
    report = run_audit([forge.export(tmp_path / "1"), two.export(tmp_path / "2")])
    finding = only(report, "operator-two-stations")
    assert "'mallory'" in finding.message and finding.stations == ("station-1", "station-2")
    assert {e.station for e in finding.evidence} == {"station-1", "station-2"}


def test_the_clean_twin_an_operator_who_changes_station_between_shifts(
    world: World, forge: Forge, station_keys: Keys, tmp_path: Path, run_audit: Audit
) -> None:
    two = other_station(world, station_keys, forge)
    start = forge.time + datetime.timedelta(hours=1)
    operator_at(forge, start, 15, 4)  # until 10:56
    operator_at(two, start + datetime.timedelta(minutes=58), 8, 6)  # from 10:58
    operator_at(forge, start + datetime.timedelta(minutes=70), 1, 1)  # a short visit back, inside her stretch at 2
    report = run_audit([forge.export(tmp_path / "1"), two.export(tmp_path / "2")])
    assert serious(report) == set(), [f.message for f in report.at_or_above("medium")]


# --- f. a fixture faster than physics ----------------------------------------------------------


def test_a_fixture_minting_hundreds_a_minute_is_found(
    world: World, big_bundle: Path, station_keys: Keys, tmp_path: Path, run_audit: Audit
) -> None:
    forge = Forge(world, read_release(world, big_bundle), "station-1", *station_keys["station-1"])
    start = forge.time
    for i in range(10):  # an honest start, one unit a minute
        forge.add("provisioned", when=start + datetime.timedelta(minutes=i))
    burst = start + datetime.timedelta(minutes=20)
    for i in range(300):  # then 300 units in 90 s on fixture 1: no device takes 0.3 s
        forge.add("provisioned", when=burst + datetime.timedelta(seconds=i * 90 // 300))
    report = run_audit([forge.export(tmp_path)], bundle=big_bundle)
    finding = only(report, "cycle-too-fast")
    assert finding.severity == "high" and "fixture 1" in finding.message and finding.count > 200
    (evidence,) = finding.evidence
    assert evidence.station == "station-1" and evidence.position is not None and evidence.position >= 10
    assert evidence.manifest_id == forge.log[evidence.position].manifest.id


def test_the_clean_twin_four_fixtures_at_full_speed(
    world: World, big_bundle: Path, station_keys: Keys, tmp_path: Path, run_audit: Audit
) -> None:
    forge = Forge(world, read_release(world, big_bundle), "station-1", *station_keys["station-1"])
    start = forge.time
    for i in range(240):  # 60 units a minute on each of four fixtures (one a second each): the default's edge
        forge.add("provisioned", when=start + datetime.timedelta(seconds=i // 4), fixture=1 + i % 4)
    assert serious(run_audit([forge.export(tmp_path)], bundle=big_bundle)) == set()


# --- g. a clock set forward mid-run ------------------------------------------------------------


def clocked(forge: Forge, steps: list[tuple[int, int, str]]) -> list[str]:
    """Manifests after (wall seconds, monotonic seconds, session) steps; returns their ids."""
    wall, mono, ids = forge.time, 1000, []
    for wall_step, mono_step, session in steps:
        wall += datetime.timedelta(seconds=wall_step)
        mono = mono + mono_step if mono_step >= 0 else 5  # a negative step: the station restarted
        entry = forge.add("provisioned", when=wall, clock_session=session * 32, clock_monotonic=mono)
        ids.append(entry.manifest.id)
    return ids


def test_a_clock_set_forward_by_hours_mid_run_is_found(forge: Forge, tmp_path: Path, run_audit: Audit) -> None:
    ids = clocked(forge, [(60, 60, "a"), (60, 60, "a"), (3 * 3600 + 60, 60, "a"), (60, 60, "a")])
    finding = only(run_audit([forge.export(tmp_path)]), "clock-jump")
    assert finding.severity == "medium" and "set forward by 10800 s" in finding.message
    assert [(e.position, e.manifest_id) for e in finding.evidence] == [(2, ids[2])]


def test_a_clock_set_forward_between_two_exports_is_found(forge: Forge, tmp_path: Path, run_audit: Audit) -> None:
    clocked(forge, [(60, 60, "b"), (60, 60, "b")])
    first = forge.export(tmp_path)
    clocked(forge, [(2 * 86400, 120, "b")])
    assert serious(run_audit([first, forge.export(tmp_path)])) == {"clock-jump"}


def test_the_clean_twin_nights_weekends_and_restarts(forge: Forge, tmp_path: Path, run_audit: Audit) -> None:
    night, weekend = 14 * 3600, 62 * 3600
    ids = clocked(
        forge,
        [(60, 60, "c"), (night, night, "c"), (60, 61, "c"), (weekend, -1, "d"), (60, 60, "d"), (20, 20, "d")],
    )
    report = run_audit([forge.export(tmp_path)])
    assert serious(report) == set() and len(ids) == 6


# --- a realistic line, through the station library ---------------------------------------------


@dataclass
class LineClock:
    """A station's wall and monotonic clocks, advancing together a few seconds per reading."""

    now: datetime.datetime
    monotonic_now: float = 100.0
    step: int = 9

    def clock(self) -> tuple[datetime.datetime, str]:
        self.now += datetime.timedelta(seconds=self.step)
        self.monotonic_now += self.step
        return self.now, "test"

    def monotonic(self) -> float:
        return self.monotonic_now

    def pause(self, hours: float, *, restart: bool) -> None:
        self.now += datetime.timedelta(hours=hours)
        self.monotonic_now = 3.0 if restart else self.monotonic_now + hours * 3600


class PowerCut(SimulatedDevice):
    def program(self, image: object, chunks: object) -> None:
        raise KeyboardInterrupt


def test_a_realistic_line_over_three_days_gives_nothing_at_medium(
    world: World, tmp_path: Path, run_audit: Audit
) -> None:
    """Two stations, four fixtures, three days with nights and a weekend, several exports: failures,
    retries, a power cut, reworks, scraps and label misreads. Nothing at medium or above."""
    monday = START.replace(hour=6, minute=0, second=0) + datetime.timedelta(days=1)
    evidence, exports = tmp_path / "evidence", []
    one_clock, two_clock = LineClock(monday), LineClock(monday + datetime.timedelta(minutes=3))

    def open_station(station_id: str, line: LineClock, operator: str) -> object:
        state = tmp_path / station_id
        return world.station(state, station_id, clock=line.clock, monotonic=line.monotonic, operator=operator)

    with open_station("station-1", one_clock, "alice") as one:  # type: ignore[attr-defined]
        one.load(world.bundle_path, world.policy)
        devices = [SimulatedDevice(label=f"S1-{i:02d}") for i in range(12)]
        for day in range(2):
            for i, device in enumerate(devices[day * 5 : day * 5 + 5]):
                if i == 2:
                    device.fail_at = "program"
                    with pytest.raises(DeviceError):
                        one.provision(device, label=device.label, fixture=1 + i % 2)
                    device.fail_at = None
                one.provision(device, label=device.label, fixture=1 + i % 2)
            with pytest.raises(LabelMismatchError):
                one.provision(devices[day * 5 + 1], label=devices[day * 5].label, fixture=2)
            devices[day * 5].unlock_for_rework()
            one.provision(devices[day * 5], label=devices[day * 5].label, fixture=1, rework=True)
            exports.append(one.export(evidence).path)
            one_clock.pause(14, restart=False)  # the night: the station stays on
        broken = devices[10]
        broken.fail_at = "verify"
        with pytest.raises(DeviceError):
            one.provision(broken, label=broken.label, fixture=2)
        one.scrap(broken.hardware_id, reason="no read-back")
        cut = PowerCut(label="S1-CUT")
        with pytest.raises(KeyboardInterrupt):
            one.provision(cut, label="S1-CUT", fixture=1)
    one_clock.pause(0.5, restart=True)
    with open_station("station-1", one_clock, "carol") as one:  # type: ignore[attr-defined]
        one.load(world.bundle_path, world.policy)
        assert one.provision(SimulatedDevice(cut.hardware_id), label="S1-CUT", fixture=1).event == "retry"
        exports.append(one.export(evidence).path)
    with open_station("station-2", two_clock, "bob") as two:  # type: ignore[attr-defined]
        two.load(world.bundle_path, world.policy)
        units = [SimulatedDevice(label=f"S2-{i:02d}") for i in range(8)]
        for day, batch in enumerate((units[:4], units[4:])):
            for i, device in enumerate(batch):
                two.provision(device, label=device.label, fixture=3 + i % 2)
            exports.append(two.export(evidence).path)
            two_clock.pause(62 if day == 0 else 14, restart=False)  # a weekend, then a night: the station stays on
        units[1].unlock_for_rework()
        two.provision(units[1], label=units[1].label, fixture=4, rework=True)
        two.scrap(units[3].hardware_id, reason="cracked case")
        exports.append(two.export(evidence).path)
    report = run_audit(exports)
    assert serious(report) == set(), [f.message for f in report.at_or_above("medium")]
    assert {"unit-reworked", "unit-scrapped", "label-mismatch", "unit-interrupted"} <= report.codes()


def test_a_station_clock_set_forward_mid_run_is_found_through_the_library(
    world: World, tmp_path: Path, run_audit: Audit
) -> None:
    line = LineClock(START + datetime.timedelta(days=1))
    with world.station(tmp_path / "s1", clock=line.clock, monotonic=line.monotonic) as station:
        station.load(world.bundle_path, world.policy)
        station.provision(SimulatedDevice(label="J-1"), label="J-1")
        line.now += datetime.timedelta(hours=5)  # someone sets the clock forward; the monotonic clock does not move
        jumped = station.provision(SimulatedDevice(label="J-2"), label="J-2")
        exported = station.export(tmp_path / "evidence").path
    finding = only(run_audit([exported]), "clock-jump")
    assert finding.evidence[0].manifest_id == jumped.manifest_id and finding.serials == ("J-2",)


# --- the thresholds on the command line --------------------------------------------------------


def test_the_thresholds_are_audit_options(world: World, forge: Forge, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from tests.audit.test_report import _argv
    from vault.cli import cli

    reworked(forge, 3)
    export = forge.export(tmp_path)
    runner = CliRunner()
    default = runner.invoke(cli, _argv(world, export, extra=("--fail-on", "medium")))
    assert default.exit_code == 0 and "rework-repeated" not in default.output
    strict = runner.invoke(cli, _argv(world, export, extra=("--fail-on", "medium", "--max-reworks", "2")))
    assert strict.exit_code == 3 and "rework-repeated" in strict.output
    wrong = runner.invoke(cli, _argv(world, export, extra=("--min-cycle", "0")))
    assert wrong.exit_code == 2 and "--min-cycle" in wrong.output
