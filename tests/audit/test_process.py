"""The audit's process figures from the units' test records: step times, measurements, Cpk, calibration drift."""

from __future__ import annotations

import datetime
import re
import statistics
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.audit.conftest import Forge, Report, read_release, serious
from tests.verify.conftest import World
from vault.audit._process import CPK_MIN_UNITS, HISTOGRAM_BINS
from vault.manifest import Coefficient, QualityRecord, Reading
from vault.token import TokenKey
from vault.verify import SimulatedDevice

Audit = Callable[..., Report]
LOWER, UPPER = 0.03, 0.06


def _record(current: float, gain: float, program_ms: int, *, passed: bool = True) -> QualityRecord:
    return QualityRecord(
        (("read-id", 20), ("program", program_ms), ("test", 300)),
        (
            Reading("supply current", current, "A", LOWER, UPPER, passed),
            Reading("boot time", 0.8, "s", None, 2.0, True),
        ),
        (Coefficient("adc gain", gain),),
    )


def _week_of(when: datetime.datetime) -> str:
    year, week, _ = when.isocalendar()
    return f"{year:04d}-W{week:02d}"


@pytest.fixture(scope="module")
def big_bundle(world: World) -> Path:
    """A release allocating enough units to station-1 for a capability figure."""
    return world.bundle(allocation="{station-1: 100}")


@pytest.fixture
def big(world: World, big_bundle: Path, station_keys: dict[str, tuple[TokenKey, TokenKey]]) -> Forge:
    return Forge(world, read_release(world, big_bundle), "station-1", *station_keys["station-1"])


@pytest.fixture
def scenario(big: Forge, tmp_path: Path) -> tuple[Path, dict[str, object]]:
    """Two weeks of units with exact measurements, one unit failing its limit, and a manifest from before records."""
    forge = big
    known: dict[str, object] = {}
    forge.add("provisioned")  # an older manifest: no test record at all
    first = [0.040 + 0.0005 * (i % 10) for i in range(40)]
    for i, current in enumerate(first):
        forge.add("provisioned", quality=_record(current, 1.0 + 0.0001 * (i % 3), 1000 + i))
    forge.add("failed", failed_step="test", quality=_record(0.071, 1.0001, 1040, passed=False))
    known["week1"] = _week_of(forge.time)
    known["first"] = [*first, 0.071]
    forge.tick(minutes=8 * 24 * 60)
    second = [0.050 + 0.001 * i for i in range(10)]
    for i, current in enumerate(second):
        forge.add("provisioned", quality=_record(current, 1.004, 2000 + 10 * i))
    known["week2"] = _week_of(forge.time)
    known["second"] = second
    return forge.export(tmp_path / "evidence"), known


def test_the_figures_match_the_known_measurements(
    scenario: tuple[Path, dict], run_audit: Audit, big_bundle: Path
) -> None:
    path, known = scenario
    report = run_audit([path], bundle=big_bundle)
    assert not serious(report)
    (station,) = report.stations
    process = station.process.to_json()
    assert process["cpk_min_units"] == CPK_MIN_UNITS == 30
    one, two = process["weeks"]
    assert (one["week"], two["week"]) == (known["week1"], known["week2"])
    assert (one["units"], two["units"]) == (41, 10)  # the older manifest carries no record and is not counted
    current = next(m for m in one["measurements"] if m["name"] == "supply current")
    values = known["first"]
    mean, stdev = statistics.fmean(values), statistics.stdev(values)
    assert (current["count"], current["failed"], current["unit"]) == (41, 1, "A")
    assert (current["lower"], current["upper"], current["min"], current["max"]) == (LOWER, UPPER, 0.04, 0.071)
    assert current["mean"] == pytest.approx(mean, rel=1e-5) and current["stdev"] == pytest.approx(stdev, rel=1e-5)
    assert current["cpk"] == pytest.approx(min(UPPER - mean, mean - LOWER) / (3 * stdev), rel=1e-5)
    assert sum(current["histogram"]["counts"]) == 41 and len(current["histogram"]["counts"]) == HISTOGRAM_BINS
    boot = next(m for m in one["measurements"] if m["name"] == "boot time")
    assert boot["cpk"] is None  # every value the same: no spread to measure capability against
    later = next(m for m in two["measurements"] if m["name"] == "supply current")
    assert later["count"] == 10 and later["cpk"] is None  # fewer than 30 units: no Cpk
    assert later["mean"] == pytest.approx(statistics.fmean(known["second"]), rel=1e-5)
    program = {s["step"]: s for s in one["steps"]}["program"]
    assert program["count"] == 41 and program["mean_seconds"] == pytest.approx((sum(range(1000, 1040)) + 1040) / 41e3)
    assert program["max_seconds"] == 1.04
    assert [s["step"] for s in one["steps"]] == ["read-id", "program", "test"]
    (gain,) = process["calibration"]
    assert gain["name"] == "adc gain" and [w["week"] for w in gain["weeks"]] == [known["week1"], known["week2"]]
    first_mean = statistics.fmean([1.0 + 0.0001 * (i % 3) for i in range(40)] + [1.0001])
    assert gain["weeks"][0]["mean"] == pytest.approx(first_mean, rel=1e-6)
    assert gain["weeks"][1]["mean"] == pytest.approx(1.004) and gain["weeks"][1]["count"] == 10
    assert gain["drift"] == pytest.approx(1.004 - first_mean, rel=1e-4)
    assert gain["weeks"][1]["change"] == gain["drift"] and gain["weeks"][0]["change"] is None
    assert station.quality.failures == (("test", 1),)


def test_a_repeated_export_counts_each_unit_once(forge: Forge, tmp_path: Path, run_audit: Audit) -> None:
    for i in range(5):
        forge.add("provisioned", quality=_record(0.045, 1.0, 1000 + i))
    first = forge.export(tmp_path / "a")
    forge.add("provisioned", quality=_record(0.045, 1.0, 1000))
    whole = forge.export(tmp_path / "b", start=0)  # the whole log again, from the start
    report = run_audit([first, whole])
    (week,) = report.stations[0].process.weeks
    assert week.units == 6 and week.measurements[0].count == 6


def test_old_manifests_without_records_still_verify_and_audit(forge: Forge, tmp_path: Path, run_audit: Audit) -> None:
    forge.provision(4)
    report = run_audit([forge.export(tmp_path)])
    assert not serious(report) and report.verified == 4
    assert report.stations[0].process.weeks == () and report.stations[0].process.calibration == ()
    assert "No test records" in report.to_html()


def _svgs(html: str) -> dict[str, ET.Element]:
    """Every inline SVG of the page, parsed, by its aria-label."""
    charts = {}
    for text in re.findall(r"<svg\b.*?</svg>", html, flags=re.S):
        element = ET.fromstring(text)
        charts[element.attrib["aria-label"]] = element
    return charts


def test_the_html_report_draws_the_process_charts(
    scenario: tuple[Path, dict], run_audit: Audit, big_bundle: Path
) -> None:
    path, known = scenario
    html = run_audit([path], bundle=big_bundle).to_html()
    assert "<script" not in html and "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    charts = _svgs(html)
    histogram = charts[f"station-1 {known['week1']}: supply current distribution"]
    bars = histogram.findall(".//{*}rect[@class='bin']")
    assert len(bars) == HISTOGRAM_BINS
    assert sum(int(b.attrib["data-count"]) for b in bars) == 41
    limits = histogram.findall(".//{*}line[@class='limit']")
    assert len(limits) == 2
    assert "Cpk" in "".join(histogram.itertext())
    assert f"station-1 {known['week2']}: supply current distribution" in charts
    drift = charts["station-1: adc gain over the weeks"]
    points = drift.findall(".//{*}circle[@class='mean']")
    assert len(points) == 2
    assert float(points[0].attrib["cy"]) > float(points[1].attrib["cy"])  # the gain rose: drawn higher
    steps = charts[f"station-1 {known['week1']}: test time per step"]
    assert [t.text for t in steps.findall(".//{*}text[@class='step']")] == ["read-id", "program", "test"]


def test_a_real_station_export_carries_the_simulated_measurements(
    world: World, tmp_path: Path, run_audit: Audit
) -> None:
    with world.station(tmp_path / "s") as station:
        station.load(world.bundle_path, world.policy)
        station.provision(SimulatedDevice())
        station.provision(SimulatedDevice())
        with pytest.raises(Exception, match="outside its limits"):
            station.provision(SimulatedDevice(out_of_limit=True))
        path = station.export(tmp_path / "evidence").path
    report = run_audit([path])
    (week,) = report.stations[0].process.weeks
    assert week.units == 3
    current = next(m for m in week.measurements if m.name == "supply current")
    assert (current.count, current.failed, current.cpk) == (3, 1, None)
    assert [c.name for c in report.stations[0].process.calibration] == ["adc gain", "rtc trim"]
    assert "test" in [s.step for s in week.steps]
