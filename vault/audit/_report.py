"""The audit report: summary, findings, reconciliation and quality figures; as JSON and as HTML.

The JSON schema (``vault-audit-report/v1``) is documented field by field in
``docs/audit-report.md``; :meth:`Report.to_json_value` is its one writer.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vault import __version__
from vault.audit._findings import CODES, SEVERITIES, Finding, severity_rank
from vault.audit._process import ProcessReport

__all__ = [
    "REPORT_FORMAT",
    "BundleReport",
    "BundleSummary",
    "ExportSummary",
    "Quality",
    "Reconciliation",
    "Report",
    "StationReport",
    "UnitEvent",
    "UnitRecord",
]

REPORT_FORMAT = "vault-audit-report/v1"

MAX_UNITS = 200
"""Most serials the report keeps a record of (the first named by the findings, worst finding first)."""

MAX_UNIT_EVENTS = 50
"""Most events one unit's record lists (in log order; ``events_total`` has them all)."""


@dataclass(frozen=True)
class BundleSummary:
    """The audited release: what it allows, how many, until when, and whether it is promoted."""

    bundle_id: str
    product: str
    version: str
    security_counter: int
    not_before: str
    expires: str
    total: int
    allocation: Mapping[str, int]
    images: tuple[tuple[str, str], ...]  # (name, sha256)
    promoted: bool
    approvers: tuple[str, ...]
    threshold: int
    statement_sha256: str

    def to_json(self) -> dict[str, Any]:
        return {
            "bundle_id": self.bundle_id,
            "product": self.product,
            "version": self.version,
            "security_counter": self.security_counter,
            "not_before": self.not_before,
            "expires": self.expires,
            "production_total": self.total,
            "allocation": dict(sorted(self.allocation.items())),
            "images": [{"name": n, "sha256": d} for n, d in self.images],
            "promoted": self.promoted,
            "approvals": {"approvers": list(self.approvers), "threshold": self.threshold},
            "statement_sha256": self.statement_sha256,
        }


@dataclass(frozen=True)
class ExportSummary:
    """One export file as the audit read it."""

    file: str
    station_id: str
    sequence: int
    export_id: str
    created: str
    from_size: int | None
    to_size: int | None
    entries: int
    checkpoint_root: str | None
    status: str  # "verified", "invalid", "unknown-station", "duplicate"

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "station_id": self.station_id,
            "sequence": self.sequence,
            "export_id": self.export_id,
            "created": self.created,
            "from": self.from_size,
            "to": self.to_size,
            "entries": self.entries,
            "checkpoint_root": self.checkpoint_root,
            "status": self.status,
        }


@dataclass(frozen=True)
class Reconciliation:
    """Units authorised against units used, for the audited bundle (see docs/audit-report.md)."""

    allocation: int
    reserved: int
    provisioned: int
    reworked: int
    failed: int
    scrapped: int
    label_mismatch: int
    break_glass: int
    refused: int
    units_provisioned: int
    units_failed: int
    units_scrapped: int
    units_open: int
    highest_unit: int

    @property
    def left(self) -> int:
        """Units of the allocation not reserved (negative when over-allocated)."""
        return self.allocation - self.reserved

    def to_json(self) -> dict[str, Any]:
        return {
            "allocation": self.allocation,
            "reserved": self.reserved,
            "left": self.left,
            "provisioned": self.provisioned,
            "reworked": self.reworked,
            "failed": self.failed,
            "scrapped": self.scrapped,
            "label_mismatch": self.label_mismatch,
            "break_glass": self.break_glass,
            "refused": self.refused,
            "units": {
                "provisioned": self.units_provisioned,
                "failed": self.units_failed,
                "scrapped": self.units_scrapped,
                "open": self.units_open,
            },
            "highest_unit": self.highest_unit,
        }

    @classmethod
    def sum(cls, parts: list[Reconciliation], allocation: int) -> Reconciliation:
        def total(name: str) -> int:
            return sum(int(getattr(p, name)) for p in parts)

        return cls(
            allocation,
            total("reserved"),
            total("provisioned"),
            total("reworked"),
            total("failed"),
            total("scrapped"),
            total("label_mismatch"),
            total("break_glass"),
            total("refused"),
            total("units_provisioned"),
            total("units_failed"),
            total("units_scrapped"),
            total("units_open"),
            max((p.highest_unit for p in parts), default=0),
        )


def percent(rate: float | None) -> str:
    """A rate as a percentage with one decimal, floored: below 100% is never shown as 100.0%."""
    if rate is None:
        return "–"
    if rate >= 1:
        return "100.0%"
    return f"{min(math.floor(rate * 1000 + 1e-9), 999) / 10:.1f}%"


def _share(rate: float) -> float:
    """A rate with four decimals for the JSON report, floored: below 1 is never written as 1.0."""
    return 1.0 if rate >= 1 else min(math.floor(rate * 10000 + 1e-9), 9999) / 10000


@dataclass(frozen=True)
class BundleReport:
    """One audited bundle and what the stations used of it: a reconciliation per station and in total
    (whose ``allocation`` is the bundle's production count)."""

    bundle: BundleSummary
    stations: tuple[tuple[str, Reconciliation], ...]  # (station id, its reconciliation), by station id
    totals: Reconciliation

    def to_json(self) -> dict[str, Any]:
        return {
            **self.bundle.to_json(),
            "reconciliation": {
                "stations": {station: r.to_json() for station, r in self.stations},
                "totals": self.totals.to_json(),
            },
        }


@dataclass(frozen=True)
class Quality:
    """First-pass yield, failures by step (a Pareto, largest first) and exception events per ISO week."""

    attempted: int
    first_pass: int
    failures: tuple[tuple[str, int], ...]
    exceptions_per_week: tuple[tuple[str, int], ...]

    @property
    def first_pass_yield(self) -> float | None:
        """Devices provisioned at their first attempt over devices attempted; None when none was."""
        return None if not self.attempted else self.first_pass / self.attempted

    def to_json(self) -> dict[str, Any]:
        total = sum(c for _, c in self.failures)
        running = 0
        pareto = []
        for step, count in self.failures:
            running += count
            pareto.append({"step": step, "count": count, "cumulative_share": _share(running / total)})
        fpy = self.first_pass_yield
        return {
            "first_pass_yield": {
                "attempted": self.attempted,
                "first_pass": self.first_pass,
                "rate": None if fpy is None else _share(fpy),
            },
            "failure_pareto": pareto,
            "exceptions_per_week": [{"week": w, "count": c} for w, c in self.exceptions_per_week],
        }

    @classmethod
    def of(cls, attempted: int, first_pass: int, failures: Mapping[str, int], weeks: Mapping[str, int]) -> Quality:
        return cls(
            attempted,
            first_pass,
            tuple(sorted(failures.items(), key=lambda kv: (-kv[1], kv[0]))),
            tuple(sorted(weeks.items())),
        )


@dataclass(frozen=True)
class LotReport:
    """One component lot (a reel) over all stations: the first-pass yield and failures of the units that used it."""

    component: str
    lot: str
    quality: Quality

    @property
    def failed(self) -> int:
        """Failed units that used this lot."""
        return sum(c for _, c in self.quality.failures)

    def to_json(self) -> dict[str, Any]:
        quality = self.quality.to_json()
        return {
            "component": self.component,
            "lot": self.lot,
            "first_pass_yield": quality["first_pass_yield"],
            "failed": self.failed,
            "failure_pareto": quality["failure_pareto"],
        }


@dataclass(frozen=True)
class StationReport:
    """One station: its log as the exports show it, its events, reconciliation and quality."""

    station_id: str
    enrolled: bool
    exports: int
    manifests: int
    verified: int
    log_size: int | None
    log_root: str | None
    events: Mapping[str, int]
    reconciliation: Reconciliation
    quality: Quality
    process: ProcessReport = field(default_factory=ProcessReport)

    def to_json(self) -> dict[str, Any]:
        return {
            "station_id": self.station_id,
            "enrolled": self.enrolled,
            "exports": self.exports,
            "manifests": self.manifests,
            "verified": self.verified,
            "log": {"size": self.log_size, "root": self.log_root},
            "events": dict(sorted(self.events.items())),
            "reconciliation": self.reconciliation.to_json(),
            "quality": self.quality.to_json(),
            "process": self.process.to_json(),
        }


@dataclass(frozen=True)
class UnitEvent:
    """One verified manifest that names a unit's serial, as the audit's index holds it."""

    station: str
    position: int
    time: str
    event: str
    hardware_id: str
    manifest_id: str
    export: str | None
    fixture: int
    operator: str | None
    failed_step: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "station": self.station,
            "position": self.position,
            "time": self.time,
            "event": self.event,
            "hardware_id": self.hardware_id,
            "manifest_id": self.manifest_id,
            "export": self.export,
            "fixture": self.fixture,
            "operator": self.operator,
            "failed_step": self.failed_step,
        }


@dataclass(frozen=True)
class UnitRecord:
    """What the evidence says of one serial a finding names: its events in log order (per station, by
    position; at most :data:`MAX_UNIT_EVENTS`) and the hardware ids they name."""

    serial: str
    events: tuple[UnitEvent, ...]
    events_total: int

    @property
    def hardware_ids(self) -> tuple[str, ...]:
        """The distinct hardware ids of the events listed, in order of first appearance."""
        return tuple(dict.fromkeys(e.hardware_id for e in self.events))

    @property
    def truncated(self) -> bool:
        return self.events_total > len(self.events)

    def to_json(self) -> dict[str, Any]:
        return {
            "hardware_ids": list(self.hardware_ids),
            "events": [e.to_json() for e in self.events],
            "events_total": self.events_total,
            "truncated": self.truncated,
        }


@dataclass(frozen=True)
class Report:
    """What an audit found. Serialise it with :meth:`to_json` or :meth:`to_html`.

    Attributes:
        generated: when the audit ran (UTC, ``YYYY-MM-DDTHH:MM:SSZ``).
        policy_version, policy_sha256: the trust policy audited against.
        bundles: the audited releases, in the order given, each with its reconciliation.
        exports: every export read, in the order the audit checked them.
        stations: every station with evidence, by id; each reconciliation over all audited bundles.
        totals: reconciliation (over all bundles) and quality over all stations.
        findings: every finding, worst first.
        manifests: entries read; verified: manifests whose signature and fields hold.
        seconds: the audit's wall time.
        units: a record of each serial the findings name (the first :data:`MAX_UNITS`, worst finding first).
        units_named: how many distinct serials the findings name (more than ``len(units)`` when capped).
    """

    generated: str
    policy_version: int
    policy_sha256: str
    bundles: tuple[BundleReport, ...]
    exports: tuple[ExportSummary, ...]
    stations: tuple[StationReport, ...]
    totals: tuple[Reconciliation, Quality]
    findings: tuple[Finding, ...]
    manifests: int
    verified: int
    seconds: float = field(default=0.0, compare=False)
    units: tuple[UnitRecord, ...] = ()
    units_named: int = 0
    lots: tuple[LotReport, ...] = ()
    """First-pass yield and failures per component lot, for the units whose manifests record lots."""

    @property
    def units_truncated(self) -> bool:
        """True when the findings name more serials than the report keeps a record of."""
        return self.units_named > len(self.units)

    @property
    def bundle(self) -> BundleSummary | None:
        """The audited release when one bundle was audited; None when several were (see :attr:`bundles`)."""
        return self.bundles[0].bundle if len(self.bundles) == 1 else None

    def counts(self) -> dict[str, int]:
        """Findings per severity, every severity present (zero when none)."""
        counts = dict.fromkeys(SEVERITIES, 0)
        for finding in self.findings:
            counts[finding.severity] += 1
        return counts

    @property
    def worst(self) -> str | None:
        """The worst severity found, or None when there is no finding."""
        return min((f.severity for f in self.findings), key=severity_rank, default=None)

    def at_or_above(self, severity: str) -> list[Finding]:
        """The findings at ``severity`` or worse."""
        if severity not in SEVERITIES:
            raise ValueError(f"unknown severity {severity!r}; one of {', '.join(SEVERITIES)}")
        return [f for f in self.findings if severity_rank(f.severity) <= severity_rank(severity)]

    def passed(self, fail_on: str = "high") -> bool:
        """True when no finding is at ``fail_on`` or worse."""
        return not self.at_or_above(fail_on)

    def codes(self) -> set[str]:
        """The distinct finding codes."""
        return {f.code for f in self.findings}

    def to_json_value(self, fail_on: str = "high") -> dict[str, Any]:
        """The report as a JSON-ready object (schema: docs/audit-report.md)."""
        reconciliation, quality = self.totals
        return {
            "format": REPORT_FORMAT,
            "generated": self.generated,
            "vault_version": __version__,
            "verdict": {"passed": self.passed(fail_on), "fail_on": fail_on, "worst": self.worst},
            "summary": {
                "exports": len(self.exports),
                "stations": len(self.stations),
                "manifests": self.manifests,
                "verified": self.verified,
                "findings": self.counts(),
                "seconds": round(self.seconds, 3),
            },
            "policy": {"version": self.policy_version, "sha256": self.policy_sha256},
            "bundle": None if self.bundle is None else self.bundle.to_json(),
            "bundles": [b.to_json() for b in self.bundles],
            "exports": [e.to_json() for e in self.exports],
            "stations": [s.to_json() for s in self.stations],
            "totals": {"reconciliation": reconciliation.to_json(), "quality": quality.to_json()},
            "lots": [lot.to_json() for lot in self.lots],
            "findings": [f.to_json() for f in self.findings],
            "units": {u.serial: u.to_json() for u in self.units},
            "units_listed": {"serials": len(self.units), "named": self.units_named, "truncated": self.units_truncated},
            "codes": {code: {"severity": sev, "description": text} for code, (sev, text) in CODES.items()},
        }

    def to_json(self, fail_on: str = "high") -> str:
        """The report as indented JSON text."""
        return json.dumps(self.to_json_value(fail_on), indent=2, ensure_ascii=False) + "\n"

    def to_html(self, fail_on: str = "high") -> str:
        """The report as one self-contained HTML page (no network: inline CSS and SVG)."""
        from vault.audit._html import render

        return render(self, fail_on)
