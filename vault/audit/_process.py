"""The process figures of an audit: test time per step, measurements against their limits, calibration drift.

Per station and ISO week, from the test records the stations signed into
the audited release's manifests (``quality``, :mod:`vault.manifest`). Every
figure is exact and streamed (Welford's mean and variance), so memory does
not grow with the number of units; only the histograms are drawn from a
sample: the first :data:`HISTOGRAM_SAMPLE` values of each measurement in
each week. A manifest that sits at a log position already counted (an
export that repeats entries, a fork) is counted once.

Example:
    >>> tally = ProcessTally()
    >>> tally.add([(0, "2026-W05", (("program", 1500),), (("i", "A", 0.03, 0.06, 0.045, True),), ())])
    >>> tally.report().weeks[0].measurements[0].mean
    0.045
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from vault.audit._worker import Measured

__all__ = ["CPK_MIN_UNITS", "HISTOGRAM_BINS", "HISTOGRAM_SAMPLE", "ProcessReport", "ProcessTally"]

CPK_MIN_UNITS = 30
"""Units a measurement needs in a week before its process capability (Cpk) is given: fewer say too little."""

HISTOGRAM_SAMPLE = 500
"""Values of one measurement in one week kept for its histogram (the figures use every value)."""

HISTOGRAM_BINS = 24
"""Bins of a histogram, spanning the values seen and the limits."""

_MAX_WEEKS = 530  # ten years of weeks per station; later weeks are not tallied (and counted as such)
_MAX_KEYS = 64  # measurements (and coefficients, and steps) per station and week
_K = TypeVar("_K")
_V = TypeVar("_V")


class _Stats:
    """Count, mean, variance (Welford), least and greatest of a stream of values."""

    __slots__ = ("count", "high", "low", "m2", "mean")

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.low = math.inf
        self.high = -math.inf

    def add(self, value: float) -> None:
        _welford(self, value)

    @property
    def stdev(self) -> float | None:
        """The sample standard deviation (n - 1), or None below two values."""
        return math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else None


def _welford(stats: _Stats, value: float) -> None:
    """Add ``value`` to ``stats`` (Welford's update; the values are finite)."""
    count = stats.count = stats.count + 1
    delta = value - stats.mean
    mean = stats.mean = stats.mean + delta / count
    stats.m2 += delta * (value - mean)
    if value < stats.low:
        stats.low = value
    if value > stats.high:
        stats.high = value


class _Measure:
    __slots__ = ("failed", "sample", "stats")

    def __init__(self) -> None:
        self.stats = _Stats()
        self.failed = 0
        self.sample = array("d")


class _Week:
    __slots__ = ("calibration", "measurements", "steps", "units")

    def __init__(self) -> None:
        self.units = 0
        self.steps: dict[str, _Stats] = {}
        self.measurements: dict[tuple[str, str, float | None, float | None], _Measure] = {}
        self.calibration: dict[tuple[str, str], _Stats] = {}


class ProcessTally:
    """One station's process figures as the audit reads its manifests, chunk by chunk, in log order."""

    def __init__(self) -> None:
        self.weeks: dict[str, _Week] = {}
        self.high = -1  # the highest log position tallied
        self.untallied = 0  # records over the caps (weeks, measurements per week)

    def add(self, items: Iterable[Measured]) -> None:
        """Tally the test records of one chunk (:attr:`ChunkResult.measured`).

        The main process runs this for every record, so the table look-ups are
        made once per key and :func:`_welford` is called directly.
        """
        slot, weeks, high = self._slot, self.weeks, self.high
        for position, week_name, steps, readings, coefficients in items:
            if position <= high:
                continue
            high = position
            week = weeks.get(week_name) or slot(weeks, week_name, _Week, _MAX_WEEKS)
            if week is None:
                continue
            week.units += 1
            table = week.steps
            for step, milliseconds in steps:
                timed = table.get(step) or slot(table, step, _Stats, _MAX_KEYS)
                if timed is not None:
                    _welford(timed, milliseconds / 1000)
            measures = week.measurements
            for name, unit, lower, upper, value, passed in readings:
                key = (name, unit, lower, upper)
                measure = measures.get(key) or slot(measures, key, _Measure, _MAX_KEYS)
                if measure is not None:
                    _welford(measure.stats, value)
                    measure.failed += not passed
                    if len(measure.sample) < HISTOGRAM_SAMPLE:
                        measure.sample.append(value)
            calibration = week.calibration
            for name, unit, value in coefficients:
                coefficient = calibration.get((name, unit)) or slot(calibration, (name, unit), _Stats, _MAX_KEYS)
                if coefficient is not None:
                    _welford(coefficient, value)
        self.high = high

    def _slot(self, table: dict[_K, _V], key: _K, make: Callable[[], _V], cap: int) -> _V | None:
        """``table[key]``, made when new; None (and counted as untallied) when the table is full."""
        found = table.get(key)
        if found is None:
            if len(table) >= cap:
                self.untallied += 1
                return None
            found = table[key] = make()
        return found

    def report(self) -> ProcessReport:
        """The figures, weeks in order."""
        weeks = []
        drift: dict[tuple[str, str], list[tuple[str, _Stats]]] = {}
        for name in sorted(self.weeks):
            week = self.weeks[name]
            steps = tuple(
                StepTime(step, s.count, s.mean, s.high) for step, s in week.steps.items()
            )  # in the order the station runs them (the first unit's order)
            measurements = tuple(
                _figures(key, m) for key, m in sorted(week.measurements.items(), key=lambda kv: _order(kv[0]))
            )
            weeks.append(WeekFigures(name, week.units, steps, measurements))
            for key, stats in week.calibration.items():
                drift.setdefault(key, []).append((name, stats))
        calibration = tuple(
            CalibrationTrend(
                name,
                unit,
                tuple(CalibrationWeek(w, s.count, s.mean, s.stdev, s.low, s.high) for w, s in series),
            )
            for (name, unit), series in sorted(drift.items())
        )
        return ProcessReport(tuple(weeks), calibration, self.untallied)


def _order(key: tuple[str, str, float | None, float | None]) -> tuple[str, str, float, float]:
    name, unit, lower, upper = key
    return name, unit, -math.inf if lower is None else lower, math.inf if upper is None else upper


def cpk(mean: float, stdev: float | None, lower: float | None, upper: float | None, count: int) -> float | None:
    """The process capability index: the nearer limit's distance from the mean in units of 3 sigma.

    None with fewer than :data:`CPK_MIN_UNITS` units, without a limit, or when every value is the same.
    """
    if count < CPK_MIN_UNITS or stdev is None or stdev == 0 or (lower is None and upper is None):
        return None
    sides = []
    if upper is not None:
        sides.append((upper - mean) / (3 * stdev))
    if lower is not None:
        sides.append((mean - lower) / (3 * stdev))
    return min(sides)


def _figures(key: tuple[str, str, float | None, float | None], m: _Measure) -> MeasurementFigures:
    name, unit, lower, upper = key
    s = m.stats
    return MeasurementFigures(
        name,
        unit,
        lower,
        upper,
        s.count,
        m.failed,
        s.mean,
        s.stdev,
        s.low,
        s.high,
        cpk(s.mean, s.stdev, lower, upper, s.count),
        _histogram(m.sample, s.low, s.high, lower, upper),
    )


def _histogram(
    sample: array[float], low: float, high: float, lower: float | None, upper: float | None
) -> tuple[float, float, tuple[int, ...]]:
    """(start, end, counts) of :data:`HISTOGRAM_BINS` equal bins spanning the values and the limits."""
    start = min(x for x in (low, lower) if x is not None)
    end = max(x for x in (high, upper) if x is not None)
    if end <= start:
        pad = abs(start) * 0.05 or 1.0
        start, end = start - pad, end + pad
    else:
        pad = (end - start) * 0.05
        start, end = start - pad, end + pad
    counts = [0] * HISTOGRAM_BINS
    width = (end - start) / HISTOGRAM_BINS
    for value in sample:
        counts[min(int((value - start) / width), HISTOGRAM_BINS - 1)] += 1
    return start, end, tuple(counts)


def _number(value: float | None) -> float | None:
    """A figure for the JSON report: twelve significant digits (a calibration drift sits in the fifth)."""
    return None if value is None else float(f"{value:.12g}")


@dataclass(frozen=True)
class StepTime:
    """How long one step took in a week: units timed, mean and longest, in seconds."""

    step: str
    count: int
    mean: float
    longest: float

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "count": self.count, "mean_seconds": _number(self.mean),
                "max_seconds": _number(self.longest)}  # fmt: skip


@dataclass(frozen=True)
class MeasurementFigures:
    """One measurement (by name, unit and limits) in one week: its distribution against its limits."""

    name: str
    unit: str
    lower: float | None
    upper: float | None
    count: int
    failed: int
    mean: float
    stdev: float | None
    low: float
    high: float
    cpk: float | None
    histogram: tuple[float, float, tuple[int, ...]]

    def to_json(self) -> dict[str, Any]:
        start, end, counts = self.histogram
        return {
            "name": self.name, "unit": self.unit, "lower": self.lower, "upper": self.upper,
            "count": self.count, "failed": self.failed, "mean": _number(self.mean), "stdev": _number(self.stdev),
            "min": self.low, "max": self.high, "cpk": _number(self.cpk),
            "histogram": {"start": _number(start), "end": _number(end), "counts": list(counts),
                          "sampled": sum(counts)},
        }  # fmt: skip


@dataclass(frozen=True)
class WeekFigures:
    """One ISO week at one station: units with a test record, step times, measurements."""

    week: str
    units: int
    steps: tuple[StepTime, ...]
    measurements: tuple[MeasurementFigures, ...]

    def to_json(self) -> dict[str, Any]:
        return {"week": self.week, "units": self.units, "steps": [s.to_json() for s in self.steps],
                "measurements": [m.to_json() for m in self.measurements]}  # fmt: skip


@dataclass(frozen=True)
class CalibrationWeek:
    """One coefficient in one week."""

    week: str
    count: int
    mean: float
    stdev: float | None
    low: float
    high: float


@dataclass(frozen=True)
class CalibrationTrend:
    """One calibration coefficient over the weeks: its weekly mean, spread and drift (last mean minus first)."""

    name: str
    unit: str
    weeks: tuple[CalibrationWeek, ...]

    @property
    def drift(self) -> float:
        return self.weeks[-1].mean - self.weeks[0].mean

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "unit": self.unit, "drift": _number(self.drift),
            "weeks": [
                {"week": w.week, "count": w.count, "mean": _number(w.mean), "stdev": _number(w.stdev),
                 "min": w.low, "max": w.high,
                 "change": None if i == 0 else _number(w.mean - self.weeks[i - 1].mean)}
                for i, w in enumerate(self.weeks)
            ],
        }  # fmt: skip


@dataclass(frozen=True)
class ProcessReport:
    """A station's process figures: per week, and each calibration coefficient over the weeks."""

    weeks: tuple[WeekFigures, ...] = ()
    calibration: tuple[CalibrationTrend, ...] = ()
    untallied: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "cpk_min_units": CPK_MIN_UNITS,
            "histogram_sample": HISTOGRAM_SAMPLE,
            "weeks": [w.to_json() for w in self.weeks],
            "calibration": [c.to_json() for c in self.calibration],
            "untallied": self.untallied,
        }
