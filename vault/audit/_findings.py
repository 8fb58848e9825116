"""Findings: what the audit found, how bad it is, and the evidence that shows it.

Every finding has a code from :data:`CODES`, whose severity is fixed, so a
code always means the same thing in every report. Findings about single
manifests (a forged signature, a failed unit) are grouped per code, station
and export into one finding with a count; their evidence list is capped at
:data:`MAX_EVIDENCE` items, so a report stays small whatever the exports hold.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CODES",
    "Thresholds",
    "MAX_EVIDENCE",
    "SEVERITIES",
    "Evidence",
    "Finding",
    "severity_rank",
]

SEVERITIES = ("critical", "high", "medium", "low", "info")
"""Severities, worst first."""

MAX_EVIDENCE = 50
"""Most evidence items, serials and hardware ids one finding lists (its ``count`` has them all)."""

MAX_FINDINGS_PER_CODE = 200
"""Most separate findings of one code; the rest are folded into one "and N more" finding."""

CODES: dict[str, tuple[str, str]] = {
    # code: (severity, what it means, in a few words)
    "export-invalid": ("critical", "an export does not authenticate or its records are out of order"),
    "unknown-station": ("critical", "evidence from a station or key the trust policy does not enrol"),
    "signature-invalid": ("critical", "a manifest signature does not verify (forged or altered)"),
    "manifest-malformed": ("high", "a signed manifest that is not a well-formed manifest"),
    "checkpoint-signature-invalid": ("critical", "a log checkpoint signature does not verify"),
    "log-rewritten": ("critical", "the entries do not hash to the signed checkpoint"),
    "log-forked": ("critical", "two exports of one log disagree (same sequence or size, other roots)"),
    "log-gap": ("critical", "log entries or whole exports are missing"),
    "consistency-proof-invalid": ("critical", "an export is not proven to extend the previous checkpoint"),
    "manifest-replayed": ("critical", "a manifest at the wrong log position, or seen twice"),
    "manifest-duplicated": ("medium", "a manifest carried by more than one export file; counted once"),
    "over-allocation": ("critical", "a station provisioned more units than its allocation"),
    "over-production": ("critical", "the stations together provisioned more than the production count"),
    "unit-missing": ("high", "a device provisioned, retried or reworked with no unit number (counted anyway)"),
    "unit-shared": ("critical", "one unit number of a station and release on several devices"),
    "unit-hole": ("high", "unit numbers below a station's highest with no manifest: each a ghost until disproved"),
    "closeout-invalid": ("critical", "a close-out file that does not verify against the trust policy"),
    "export-withheld": ("critical", "a station's close-out names log entries or exports the audit was not given"),
    "closeout-mismatch": ("critical", "a close-out whose log root or unit count disagrees with the evidence"),
    "station-silent": ("high", "a station with an allocation, no close-out and no export newer than --max-silence"),
    "station-no-evidence": ("low", "a station with an allocation of which the audit was given nothing at all"),
    "station-closed": ("info", "a station closed the release; its close-out matches the evidence"),
    "unit-open": ("info", "units the last export declares still on a fixture: the next export must carry them"),
    "duplicate-hardware-id": ("critical", "one hardware id provisioned twice without rework, or with two keys"),
    "duplicate-serial": ("critical", "one serial on two devices"),
    "device-key-reused": ("critical", "one device key on two devices"),
    "certificate-invalid": ("high", "a device certificate that does not match its manifest or issuer"),
    "image-not-allowed": ("critical", "an image programmed that is not in the release's allowlist"),
    "bundle-not-promoted": ("critical", "the audited bundle is not promoted under the trust policy"),
    "bundle-mismatch": ("high", "a manifest for another bundle than the audited one"),
    "time-regression": ("high", "a station's log goes back in time"),
    "time-forward-dated": ("high", "an entry dated later than both entries around it (a clock set forward)"),
    "time-outside-window": ("high", "a manifest outside the release's validity window"),
    "time-jump": ("medium", "an implausible jump forward between consecutive log entries"),
    "label-serial-differs": ("high", "a device recorded as good whose scanned label is not its assigned serial"),
    "image-missing": ("high", "a device recorded as good that lacks some of its release's images"),
    "scrap-reprovisioned": ("high", "a scrapped device provisioned, retried or reworked again, at any station"),
    "cycle-too-fast": ("high", "more units finished on one fixture in a minute than its fastest cycle allows"),
    "clock-jump": ("medium", "a station's wall clock set forward inside one run (its monotonic clock did not move)"),
    "operator-two-stations": ("medium", "one operator active at two stations at the same time"),
    "rework-repeated": ("medium", "one device reworked more often than a line reworks a device"),
    "rework-unknown-device": ("medium", "a rework of a device no manifest shows provisioned"),
    "retry-without-failure": ("medium", "a retry of a device no earlier manifest of its station shows failed"),
    "break-glass": ("medium", "an operator override was used"),
    "label-mismatch": ("low", "a scanned label did not belong to the device"),
    "label-misbound": ("low", "a label read on one device is another device's serial: both are named"),
    "unit-interrupted": ("low", "a unit was left open when the station stopped"),
    "unit-failed": ("info", "a unit failed a provisioning step"),
    "unit-refused": ("info", "a device refused before a unit was used (no unit left, or a device not taken)"),
    "unit-scrapped": ("info", "a device was scrapped"),
    "unit-reworked": ("info", "a device was provisioned again (rework)"),
    "label-not-printed": ("low", "a unit passed but its label was not printed (the printer failed)"),
    "stop-acknowledged": ("info", "a supervisor acknowledged a fixture the console stopped, and said why"),
}
"""Every finding code: its severity and a short description."""


@dataclass(frozen=True)
class Thresholds:
    """The limits a line's physics and habits decide, each an option of ``vault audit``.

    The defaults hold for a line provisioning at full speed on simulated
    devices (``make demo``, the test suite) and catch what no honest line does.
    """

    min_cycle: float = 1.0
    """Fastest a fixture finishes a unit, in seconds: more than ``60 / min_cycle + 1`` units finished on
    one fixture within one minute is ``cycle-too-fast``."""
    max_clock_step: int = 300
    """Seconds a station's wall clock may run ahead of its monotonic clock between two manifests of one run
    (an NTP correction) before it is ``clock-jump``."""
    operator_window: int = 600
    """Seconds: an operator's manifests at one station no more than this apart are one stretch of work; two
    stretches at two stations overlapping by more than this are ``operator-two-stations``."""
    max_reworks: int = 3
    """Reworks of one device before ``rework-repeated``."""

    def per_minute(self) -> int:
        """Most units one fixture can finish within one minute (whole-second times, both ends counted)."""
        return int(60 / self.min_cycle) + 1


def severity_rank(severity: str) -> int:
    """0 for critical up to 4 for info; lower is worse."""
    return SEVERITIES.index(severity)


@dataclass(frozen=True)
class Evidence:
    """Where a finding shows: the export file (its full path), the station, and where known the log
    position, the manifest id and the device (its serial and hardware id)."""

    export: str | None
    station: str | None
    position: int | None = None
    manifest_id: str | None = None
    serial: str | None = None
    hardware_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "export": self.export,
            "station": self.station,
            "position": self.position,
            "manifest_id": self.manifest_id,
            "serial": self.serial,
            "hardware_id": self.hardware_id,
        }

    def where(self) -> str:
        """One line naming what is known: "<export>, position 3, manifest ..., serial ..., hardware id ..."."""
        parts = [self.export or (f"station {self.station}" if self.station else "no export")]
        if self.position is not None:
            parts.append(f"position {self.position}")
        for name, value in (("manifest", self.manifest_id), ("serial", self.serial), ("hardware id", self.hardware_id)):
            if value is not None:
                parts.append(f"{name} {value}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Finding:
    """One finding: its code and severity, a one-line message, who and what is involved, and the evidence.

    ``count`` is how many occurrences the finding stands for (manifests,
    exports or devices); ``evidence``, ``serials`` and ``hardware_ids`` list
    at most :data:`MAX_EVIDENCE` of them and ``truncated`` says when more exist.
    """

    code: str
    severity: str
    message: str
    count: int = 1
    stations: tuple[str, ...] = ()
    serials: tuple[str, ...] = ()
    hardware_ids: tuple[str, ...] = ()
    evidence: tuple[Evidence, ...] = ()
    truncated: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "count": self.count,
            "stations": list(self.stations),
            "serials": list(self.serials),
            "hardware_ids": list(self.hardware_ids),
            "evidence": [e.to_json() for e in self.evidence],
            "truncated": self.truncated,
        }


@dataclass
class _Group:
    code: str
    message: str
    count: int = 0
    stations: list[str] = field(default_factory=list)
    serials: list[str] = field(default_factory=list)
    hardware_ids: list[str] = field(default_factory=list)
    evidence: list[Evidence] = field(default_factory=list)
    truncated: bool = False


def _add_capped(items: list[str], value: str | None) -> bool:
    """Add ``value`` unless present; False when the list is full and it was left out."""
    if value is None or value in items:
        return True
    if len(items) >= MAX_EVIDENCE:
        return False
    items.append(value)
    return True


class Findings:
    """Collects findings in bounded memory: grouped per key, each group's lists capped."""

    def __init__(self) -> None:
        self._groups: dict[tuple[str, ...], _Group] = {}
        self._per_code: dict[str, int] = {}
        self._overflow: dict[str, int] = {}

    def add(
        self,
        code: str,
        message: str,
        *,
        key: tuple[str, ...] = (),
        stations: Iterable[str] = (),
        serials: Iterable[str | None] = (),
        hardware_ids: Iterable[str | None] = (),
        evidence: Iterable[Evidence] = (),
        count: int = 1,
    ) -> None:
        """Record ``count`` occurrences of ``code``.

        Occurrences with the same ``key`` join one finding (whose message is
        the first one given); with no key, each call is its own finding.
        """
        if code not in CODES:
            raise ValueError(f"unknown finding code {code!r}")
        group_key = (code, *key) if key else (code, "#", str(len(self._groups)))
        group = self._groups.get(group_key)
        if group is None:
            if self._per_code.get(code, 0) >= MAX_FINDINGS_PER_CODE:
                self._overflow[code] = self._overflow.get(code, 0) + count
                return
            self._per_code[code] = self._per_code.get(code, 0) + 1
            group = self._groups[group_key] = _Group(code, message)
        group.count += count
        full = False
        for station in stations:
            full |= not _add_capped(group.stations, station)
        for serial in serials:
            full |= not _add_capped(group.serials, serial)
        for hwid in hardware_ids:
            full |= not _add_capped(group.hardware_ids, hwid)
        for item in evidence:
            if len(group.evidence) < MAX_EVIDENCE:
                group.evidence.append(item)
            else:
                full = True
        group.truncated |= full

    def finish(self) -> list[Finding]:
        """The findings, worst first, then by code and message."""
        out = []
        for group in self._groups.values():
            severity = CODES[group.code][0]
            message = group.message
            if group.count > 1 and not message.startswith(f"{group.count} "):
                message = f"{message} ({group.count} occurrences)"
            truncated = group.truncated or group.count > len(group.evidence) > 0
            out.append(
                Finding(
                    group.code,
                    severity,
                    message,
                    group.count,
                    tuple(group.stations),
                    tuple(group.serials),
                    tuple(group.hardware_ids),
                    tuple(group.evidence),
                    truncated,
                )
            )
        for code, count in self._overflow.items():
            out.append(
                Finding(
                    code,
                    CODES[code][0],
                    f"{count} more occurrences of {code} than the report lists one by one",
                    count,
                    truncated=True,
                )
            )
        out.sort(key=lambda f: (severity_rank(f.severity), f.code, f.stations, f.message))
        return out
