"""Which devices an audit passed: the one rule everything that leaves for the device maker's side uses.

The backend's secrets (``vault secrets export``) and the cloud registration
(``vault registry``) take only devices an audit passed. A device is *passed*
when no finding at or above ``fail_on`` touches it. A finding touches:

- the devices it names (by hardware id or by serial);
- every device of the stations it names, when it names no device, or when
  its device lists were cut short (``truncated``): it may be about any of them;
- every device, when it names neither a device nor a station.

So a station-wide problem (a forked log, an over-run) holds back that
station's devices, and a problem with the evidence as a whole holds back all.

Example:
    >>> from vault.audit._findings import Finding
    >>> from vault.audit._report import Quality, Reconciliation, Report
    >>> devices = [AuditedDevice("station-1", "a1", "SN-1"), AuditedDevice("station-1", "b2", "SN-2")]
    >>> finding = Finding("clone-suspected", "high", "...", stations=("station-1",), hardware_ids=("b2",))
    >>> totals = (Reconciliation.sum([], 0), Quality.of(0, 0, {}, {}))
    >>> report = Report("", 1, "", (), (), (), totals, (finding,), 0, 0)
    >>> chosen = audited_devices(report, devices)
    >>> [d.serial for d in chosen.passed], [(d.serial, code) for d, code in chosen.refused]
    (['SN-1'], [('SN-2', 'clone-suspected')])
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from vault.audit._findings import Finding
from vault.audit._report import Report

__all__ = ["AuditedDevice", "Selection", "audited_devices"]


@dataclass(frozen=True)
class AuditedDevice:
    """A device the evidence holds: the station that provisioned it, its hardware id (hex) and serial."""

    station_id: str
    hardware_id: str
    serial: str | None


@dataclass(frozen=True)
class Selection:
    """The devices an audit passed, and those it refused with the code of the worst finding touching each."""

    passed: tuple[AuditedDevice, ...]
    refused: tuple[tuple[AuditedDevice, str], ...]
    fail_on: str


def audited_devices(report: Report, devices: Iterable[AuditedDevice], *, fail_on: str = "high") -> Selection:
    """Split ``devices`` into those no finding at or above ``fail_on`` touches and the rest (see the module).

    Raises:
        ValueError: ``fail_on`` is not a severity.
    """
    findings = report.at_or_above(fail_on)  # worst first: the first finding touching a device names it
    passed, refused = [], []
    for device in devices:
        code = next((f.code for f in findings if _touches(f, device)), None)
        if code is None:
            passed.append(device)
        else:
            refused.append((device, code))
    return Selection(tuple(passed), tuple(refused), fail_on)


def _touches(finding: Finding, device: AuditedDevice) -> bool:
    named_hwids = {*finding.hardware_ids, *(e.hardware_id for e in finding.evidence if e.hardware_id)}
    named_serials = {*finding.serials, *(e.serial for e in finding.evidence if e.serial)}
    if device.hardware_id in named_hwids or (device.serial is not None and device.serial in named_serials):
        return True
    if (named_hwids or named_serials) and not finding.truncated:
        return False
    return not finding.stations or device.station_id in finding.stations
