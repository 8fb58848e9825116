"""Close-outs and silence: every station with an allocation has closed its release or spoken lately.

A station's close-out (:mod:`vault.closeout`) states its log's final size
and root; the evidence must end exactly there (its last export's signed
checkpoint). A close-out past the evidence means exports were withheld; one
whose root is not the evidence's means one of the two was rewritten. A
station with an allocation and no close-out must have an export no older
than ``max_silence``: otherwise it stopped sending evidence, or its last
exports are withheld.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from vault._files import read_capped
from vault.audit._findings import Evidence, Findings
from vault.closeout import MAX_CLOSEOUT_SIZE, Closeout, verify_closeout
from vault.errors import InputError, VaultError
from vault.policy import TrustPolicy, format_time
from vault.release import Release

__all__ = ["DEFAULT_MAX_SILENCE", "LogEnd", "check_closeouts", "parse_duration", "read_closeouts"]

DEFAULT_MAX_SILENCE = timedelta(days=7)
"""How old a station's newest export may be when it has not closed its release (a week: weekends and a
line stopped for a few days stay quiet; a station silent for longer is named)."""

_DURATION = re.compile(r"(\d{1,6})([mhdw])")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta:
    """``90m``, ``36h``, ``7d`` or ``2w`` as a duration.

    Raises:
        InputError: not a whole number followed by m, h, d or w, or zero.
    """
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None or int(match.group(1)) == 0:
        raise InputError(f"{text[:40]!r} is not a duration: give a whole number and m, h, d or w, such as 36h or 7d")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def _age(delta: timedelta) -> str:
    hours = int(delta.total_seconds() // 3600)
    return f"{hours // 24} days {hours % 24} hours" if hours >= 24 else f"{hours} hours"


@dataclass(frozen=True)
class LogEnd:
    """Where one station's evidence ends, as the audit verified it."""

    station_id: str
    size: int  # the size its last export's checkpoint signs (0: no verified export)
    exports: int  # the last export's sequence (0: none)
    path: str | None  # the last export's full path
    created: datetime | None  # when the last export says it was made
    roots: Mapping[int, bytes]  # every size a verified checkpoint signs, and its root
    highest_units: Mapping[str, int]  # the highest unit the evidence shows, by bundle id


def read_closeouts(
    paths: Iterable[str | os.PathLike[str]], policy: TrustPolicy, findings: Findings
) -> list[tuple[str, Closeout]]:
    """The close-outs that verify against the policy, each with its full path; the others are findings."""
    found = []
    for given in paths:
        path = str(Path(given).absolute())
        try:
            found.append((path, verify_closeout(read_capped(given, MAX_CLOSEOUT_SIZE, "close-out"), policy)))
        except VaultError as e:
            findings.add("closeout-invalid", f"{path} is not a valid close-out: {e}", evidence=[Evidence(path, None)])
    return found


def check_closeouts(
    closeouts: Sequence[tuple[str, Closeout]],
    ends: Mapping[str, LogEnd],
    releases: Sequence[Release],
    *,
    now: datetime,
    max_silence: timedelta,
    findings: Findings,
) -> None:
    """Each close-out against the evidence, then every station with an allocation in an audited release for
    silence."""
    audited = {release.bundle_id for release in releases}
    closed: set[tuple[str, str]] = set()
    for path, c in closeouts:
        if c.bundle_id not in audited:
            findings.add(
                "station-closed",
                f"{c.station_id} closed bundle {c.bundle_id} ({c.product} {c.version}), not the audited release: "
                f"{path} is not checked against this evidence",
                stations=[c.station_id],
                evidence=[Evidence(path, c.station_id)],
            )
            continue
        closed.add((c.station_id, c.bundle_id))
        _check_one(path, c, ends.get(c.station_id), findings)
    for release in releases:
        _silence(release, closed, ends, now=now, max_silence=max_silence, findings=findings)


def _silence(
    release: Release,
    closed: set[tuple[str, str]],
    ends: Mapping[str, LogEnd],
    *,
    now: datetime,
    max_silence: timedelta,
    findings: Findings,
) -> None:
    """Each station with an allocation in ``release`` that has not closed it: evidence, and recent enough."""
    for station_id, allocation in sorted(release.allocation.items()):
        if allocation <= 0 or (station_id, release.bundle_id) in closed:
            continue
        end = ends.get(station_id)
        if end is None or end.created is None or end.path is None:
            findings.add(
                "station-no-evidence",
                f"{station_id} has an allocation of {allocation} units but the audit was given no export and no "
                "close-out of it: every unit is unaccounted for",
                stations=[station_id],
            )
            continue
        age = now - end.created
        if age > max_silence:
            findings.add(
                "station-silent",
                f"{station_id} has not closed the release and its last export, {end.path} (export {end.exports}, "
                f"created {format_time(end.created)}), is {_age(age)} old, more than the {_age(max_silence)} "
                "allowed (--max-silence): it stopped sending evidence, or later exports are withheld",
                stations=[station_id],
                evidence=[Evidence(end.path, station_id, end.size)],
            )


def _check_one(path: str, c: Closeout, end: LogEnd | None, findings: Findings) -> None:
    where = [Evidence(path, c.station_id, c.log_size)]
    size, exports = (0, 0) if end is None else (end.size, end.exports)
    last = "no verified export" if end is None or end.path is None else f"its last export {end.path}"
    if c.log_size > size or c.exports > exports:
        missing = c.log_size - size
        findings.add(
            "export-withheld",
            f"{c.station_id}'s close-out ({path}) says its log holds {c.log_size} entries after {c.exports} "
            f"export(s); the evidence ends at {size} entries after {exports} ({last}): "
            + (f"{missing} entries (log positions {size} to {c.log_size - 1})" if missing > 0 else "no entries")
            + f" and {max(0, c.exports - exports)} export(s) were not given",
            stations=[c.station_id],
            evidence=[*where, *([Evidence(end.path, c.station_id, size)] if end and end.path else [])],
            count=max(1, missing),
        )
        return
    assert end is not None
    root = end.roots.get(c.log_size)
    if root is None or root.hex() != c.log_root:
        said = "no verified checkpoint of that size" if root is None else f"root {root.hex()[:16]}"
        findings.add(
            "closeout-mismatch",
            f"{c.station_id}'s close-out ({path}) states a log of {c.log_size} entries with root "
            f"{c.log_root[:16]}; the evidence has {said} at that size",
            stations=[c.station_id],
            evidence=where,
        )
        return
    highest = end.highest_units.get(c.bundle_id, 0)
    if highest > c.units.used:
        findings.add(
            "closeout-mismatch",
            f"{c.station_id}'s close-out ({path}) counts {c.units.used} units used; the evidence names unit "
            f"{highest}",
            stations=[c.station_id],
            evidence=where,
        )
        return
    u = c.units
    findings.add(
        "station-closed",
        f"{c.station_id} closed {c.product} {c.version} on {format_time(c.time)}: {u.used} of {c.allocation} units "
        f"used ({u.provisioned} provisioned, {u.failed} failed, {u.scrapped} scrapped, {u.unrecorded} unrecorded); "
        f"its log of {c.log_size} entries is the evidence's, after export {c.exports}",
        stations=[c.station_id],
        evidence=where,
    )
