"""The audit report as one self-contained HTML page: summary, findings, charts.

No network: the CSS is inline, the charts are inline SVG, there are no
scripts, fonts or links. Every string that comes from the evidence (station
ids, serials, messages, failed steps) is untrusted and escaped.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Sequence
from html import escape

from vault.audit._findings import SEVERITIES, Finding
from vault.audit._process import CPK_MIN_UNITS, CalibrationTrend, MeasurementFigures, StepTime, WeekFigures
from vault.audit._report import Report, UnitRecord, percent

__all__ = ["render"]

_COLOURS = {
    "critical": "#8b0000",
    "high": "#c62828",
    "medium": "#ef6c00",
    "low": "#9e9d24",
    "info": "#546e7a",
}

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f5f6f8;color:#1d2330}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:19px;margin:32px 0 10px}
.muted{color:#5f6b7a}.mono{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:13px}
.verdict{border-radius:10px;padding:18px 22px;margin:18px 0;color:#fff;font-size:20px;font-weight:600}
.pass{background:#2e7d32}.fail{background:#b71c1c}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border-radius:10px;padding:12px 16px;min-width:120px;box-shadow:0 1px 2px #0002}
.card b{display:block;font-size:22px}
.sev{display:inline-block;border-radius:5px;padding:1px 8px;color:#fff;font-size:12px;font-weight:600;
text-transform:uppercase;letter-spacing:.03em}
table{border-collapse:collapse;width:100%;background:#fff;border-radius:10px;overflow:hidden;box-shadow:0 1px 2px #0002}
th,td{padding:7px 10px;text-align:left;vertical-align:top;border-bottom:1px solid #e6e8ec}
th{background:#eef0f4;font-size:13px}td.n,th.n{text-align:right}
details summary{cursor:pointer;color:#1f4fa3}
.charts{display:flex;flex-wrap:wrap;gap:16px}
figure{background:#fff;border-radius:10px;padding:12px 16px;margin:0;box-shadow:0 1px 2px #0002}
figcaption{font-weight:600;margin-bottom:6px}
"""


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def unit_anchor(serial: str) -> str:
    """The HTML id of a serial's unit block: ``unit-``, the serial's letters, digits, ``-`` and ``_`` (others
    as ``_``, at most 40), and a digest of the whole serial, so that two serials never share an id and no
    attacker-chosen serial can close the attribute or spell markup."""
    readable = re.sub(r"[^A-Za-z0-9_-]", "_", serial[:40])
    return f"unit-{readable}-{hashlib.sha256(serial.encode()).hexdigest()[:12]}"


def _serial(serial: str, linked: Collection[str]) -> str:
    """A serial, escaped, linked to its unit block when the report has one."""
    if serial in linked:
        return f'<a href="#{unit_anchor(serial)}">{_e(serial)}</a>'
    return _e(serial)


def _sev(severity: str) -> str:
    return f'<span class="sev" style="background:{_COLOURS[severity]}">{_e(severity)}</span>'


def _percent(rate: float | None) -> str:
    return percent(rate)


def render(report: Report, fail_on: str = "high") -> str:
    """The report as an HTML page (see the module docstring)."""
    passed = report.passed(fail_on)
    counts = report.counts()
    releases = ", ".join(f"{b.bundle.product} {b.bundle.version}" for b in report.bundles)
    bundles = " &middot; ".join(
        f"{_e(b.product)} {_e(b.version)} &middot; bundle <span class=mono>{_e(b.bundle_id)}</span>"
        for b in (item.bundle for item in report.bundles)
    )
    parts: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>vault audit: {_e(releases)}</title>",
        f"<style>{_CSS}</style></head><body><main>",
        '<header><h1>Evidence audit</h1><div class="muted">',
        f"{bundles} &middot; trust policy v{report.policy_version} &middot; generated {_e(report.generated)}",
        "</div></header>",
    ]
    # --- summary ---
    worst = [f for f in report.at_or_above(fail_on)]
    if passed:
        verdict = f"PASS: no finding at or above {_e(fail_on)}"
    else:
        verdict = f"FAIL: {len(worst)} finding{'s' if len(worst) != 1 else ''} at or above {_e(fail_on)}"
    parts.append(f'<section id="summary"><div class="verdict {"pass" if passed else "fail"}">{verdict}</div>')
    cards = [
        ("exports", len(report.exports)),
        ("stations", len(report.stations)),
        ("manifests", report.manifests),
        ("verified", report.verified),
    ]
    parts.append('<div class="cards">')
    for label, value in cards:
        parts.append(f'<div class="card"><b>{value:,}</b>{_e(label)}</div>')
    for severity in SEVERITIES:
        parts.append(f'<div class="card"><b>{counts[severity]}</b>{_sev(severity)}</div>')
    parts.append("</div>")
    parts.append(_stations_table(report))
    parts.append(_bundles_tables(report))
    parts.append("</section>")
    # --- findings ---
    parts.append('<section id="findings"><h2>Findings</h2>')
    linked = {u.serial for u in report.units}
    parts.append(_findings_table(report.findings, linked))
    parts.append("</section>")
    parts.append(_units_section(report))
    # --- charts ---
    parts.append('<section id="charts"><h2>Quality</h2><div class="charts">')
    yields = [(s.station_id, s.quality.first_pass_yield) for s in report.stations]
    total_quality = report.totals[1]
    yields.append(("all stations", total_quality.first_pass_yield))
    parts.append(_figure("First-pass yield per station", _yield_chart(yields)))
    parts.append(_figure("Failure Pareto (all stations)", _pareto_chart(total_quality.failures)))
    parts.append(_figure("Exception events per ISO week", _weeks_chart(total_quality.exceptions_per_week)))
    if report.lots:  # a bad reel shows as a tall bar
        by_lot = sorted(((f"{lot.component} {lot.lot}", lot.failed) for lot in report.lots), key=lambda x: -x[1])
        parts.append(_figure("Failures by component lot", _pareto_chart([item for item in by_lot if item[1]])))
        yields = [(f"{lot.component} {lot.lot}", lot.quality.first_pass_yield) for lot in report.lots]
        parts.append(_figure("First-pass yield per component lot", _yield_chart(yields)))
    parts.append("</div></section>")
    parts.append(_process_section(report))
    parts.append(_exports_table(report))
    parts.append("</main></body></html>\n")
    return "\n".join(parts)


def _stations_table(report: Report) -> str:
    rows = []
    heads = ["station", "exports", "manifests", "allocation", "reserved", "provisioned", "reworked", "failed"]
    heads += ["refused", "scrapped", "label mismatch", "break-glass", "first-pass yield"]
    items = [(s.station_id + ("" if s.enrolled else " (not enrolled)"), s.exports, s.manifests, s.reconciliation,
              s.quality.first_pass_yield) for s in report.stations]  # fmt: skip
    totals = report.totals
    items.append(("all stations", len(report.exports), report.manifests, totals[0], totals[1].first_pass_yield))
    for name, exports, manifests, r, fpy in items:
        cells = [exports, manifests, r.allocation, r.reserved, r.provisioned, r.reworked, r.failed, r.refused]
        cells += [r.scrapped]
        cells += [r.label_mismatch, r.break_glass]
        rows.append(
            f"<tr><td>{_e(name)}</td>"
            + "".join(f'<td class="n">{int(c):,}</td>' for c in cells)
            + f'<td class="n">{_percent(fpy)}</td></tr>'
        )
    head = "".join(f"<th{'' if i == 0 else ' class=n'}>{_e(h)}</th>" for i, h in enumerate(heads))
    return f'<h2>Stations</h2><table id="stations"><tr>{head}</tr>{"".join(rows)}</table>'


def _bundles_tables(report: Report) -> str:
    """Each audited bundle: what it authorises and what each station used of it."""
    sections = []
    heads = ["station", "allocation", "reserved", "left", "provisioned", "reworked", "failed", "refused"]
    heads += ["scrapped", "highest unit"]
    head = "".join(f"<th{'' if i == 0 else ' class=n'}>{_e(h)}</th>" for i, h in enumerate(heads))
    for item in report.bundles:
        b = item.bundle
        rows = []
        for name, r in [*item.stations, ("all stations", item.totals)]:
            cells = [r.allocation, r.reserved, r.left, r.provisioned, r.reworked, r.failed, r.refused, r.scrapped]
            cells += [r.highest_unit]
            rows.append(f"<tr><td>{_e(name)}</td>" + "".join(f'<td class="n">{int(c):,}</td>' for c in cells) + "</tr>")
        promoted = "promoted" if b.promoted else "NOT promoted"
        sections.append(
            f"<h3>{_e(b.product)} {_e(b.version)} &middot; bundle <span class=mono>{_e(b.bundle_id)}</span> "
            f"&middot; security counter {b.security_counter} &middot; {promoted} &middot; "
            f"{_e(b.not_before)} to {_e(b.expires)}</h3><table>{head}{''.join(rows)}</table>"
        )
    return f'<h2>Bundles</h2><div id="bundles">{"".join(sections)}</div>'


def _findings_table(findings: Sequence[Finding], linked: Collection[str]) -> str:
    if not findings:
        return "<p>No findings.</p>"
    rows = []
    for f in findings:
        serials = ", ".join(_serial(s, linked) for s in f.serials[:5]) + (" …" if len(f.serials) > 5 else "")
        evidence = "".join(
            f"<tr><td>{_e(item.export or '')}</td><td>{_e(item.station or '')}</td>"
            f'<td class="n">{"" if item.position is None else item.position}</td>'
            f'<td class="mono">{_e(item.manifest_id or "")}</td><td>{_serial(item.serial or "", linked)}</td>'
            f'<td class="mono">{_e(item.hardware_id or "")}</td></tr>'
            for item in f.evidence
        )
        more = " (more not listed)" if f.truncated else ""
        details = (
            f"<details><summary>{len(f.evidence)} item{'s' if len(f.evidence) != 1 else ''}{more}</summary>"
            "<table><tr><th>export</th><th>station</th><th class=n>position</th><th>manifest</th><th>serial</th>"
            "<th>hardware id</th></tr>"
            f"{evidence}</table></details>"
            if f.evidence
            else ""
        )
        rows.append(
            f"<tr><td>{_sev(f.severity)}</td><td class=mono>{_e(f.code)}</td><td>{_e(f.message)}{details}</td>"
            f'<td>{_e(", ".join(f.stations))}</td><td>{serials}</td><td class="n">{f.count:,}</td></tr>'
        )
    head = (
        "<tr><th>severity</th><th>code</th><th>finding</th><th>stations</th><th>serials</th><th class=n>count</th></tr>"
    )
    return f"<table>{head}{''.join(rows)}</table>"


def _units_section(report: Report) -> str:
    """One block per serial the findings name: the device's events in log order and its hardware ids."""
    if not report.units:
        return ""
    capped = (
        f'<p class="muted">The findings name {report.units_named:,} serials; the first {len(report.units):,} '
        "(worst finding first) are listed.</p>"
        if report.units_truncated
        else ""
    )
    head = (
        "<tr><th>station</th><th class=n>position</th><th>time</th><th>event</th><th>failed step</th>"
        "<th class=n>fixture</th><th>operator</th><th>hardware id</th><th>manifest</th><th>export</th></tr>"
    )
    blocks = []
    for unit in report.units:
        blocks.append(_unit_block(unit, head))
    return f'<section id="units"><h2>Units</h2>{capped}{"".join(blocks)}</section>'


def _unit_block(unit: UnitRecord, head: str) -> str:
    rows = "".join(
        f"<tr><td>{_e(e.station)}</td><td class=n>{e.position}</td><td>{_e(e.time)}</td><td>{_e(e.event)}</td>"
        f"<td>{_e(e.failed_step or '')}</td><td class=n>{e.fixture}</td><td>{_e(e.operator or '')}</td>"
        f"<td class=mono>{_e(e.hardware_id)}</td><td class=mono>{_e(e.manifest_id)}</td>"
        f"<td class=mono>{_e(e.export or '')}</td></tr>"
        for e in unit.events
    )
    hwids = ", ".join(_e(h) for h in unit.hardware_ids) or "none"
    more = f" (the first {len(unit.events)} of {unit.events_total})" if unit.truncated else ""
    table = f"<table>{head}{rows}</table>" if unit.events else "<p>No verified manifest names this serial.</p>"
    return (
        f'<div class="unit" id="{unit_anchor(unit.serial)}"><h3>Unit <span class=mono>{_e(unit.serial)}</span></h3>'
        f'<p class="muted">hardware id{"s" if len(unit.hardware_ids) != 1 else ""}: '
        f"<span class=mono>{hwids}</span> &middot; {unit.events_total} event{'s' if unit.events_total != 1 else ''}"
        f"{more}</p>{table}</div>"
    )


def _exports_table(report: Report) -> str:
    rows = []
    for x in report.exports:
        span = "–" if x.from_size is None else f"{x.from_size} to {x.to_size}"
        rows.append(
            f"<tr><td class=mono>{_e(x.file)}</td><td>{_e(x.station_id)}</td><td class=n>{x.sequence}</td>"
            f"<td>{_e(span)}</td><td class=n>{x.entries:,}</td><td>{_e(x.status)}</td>"
            f"<td class=mono>{_e((x.checkpoint_root or '')[:16])}</td></tr>"
        )
    head = "<tr><th>export</th><th>station</th><th class=n>sequence</th><th>log entries</th><th class=n>manifests</th>"
    head += "<th>status</th><th>checkpoint root</th></tr>"
    return f'<section id="exports"><h2>Exports</h2><table>{head}{"".join(rows)}</table></section>'


def _figure(caption: str, svg: str) -> str:
    return f"<figure><figcaption>{_e(caption)}</figcaption>{svg}</figure>"


def _yield_chart(items: Sequence[tuple[str, float | None]]) -> str:
    width, label_w, bar_h, gap = 520, 150, 22, 8
    height = max(1, len(items)) * (bar_h + gap) + 24
    body = []
    for i, (name, rate) in enumerate(items):
        y = i * (bar_h + gap) + 4
        span = width - label_w - 60
        w = 0 if rate is None else round(span * rate)
        colour = "#2e7d32" if rate is not None and rate >= 0.95 else "#ef6c00"
        body.append(
            f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end" font-size="12">{_e(name[:24])}</text>'
            f'<rect x="{label_w}" y="{y}" width="{span}" height="{bar_h}" fill="#eceff1"/>'
            f'<rect x="{label_w}" y="{y}" width="{w}" height="{bar_h}" fill="{colour}"/>'
            f'<text x="{label_w + span + 6}" y="{y + 15}" font-size="12">{_percent(rate)}</text>'
        )
    return (
        f'<svg role="img" aria-label="first-pass yield" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">{"".join(body)}</svg>'
    )


def _pareto_chart(failures: Sequence[tuple[str, int]]) -> str:
    width, height, left, bottom, top = 520, 260, 40, 70, 16
    if not failures:
        return (
            f'<svg role="img" aria-label="failure pareto" width="{width}" height="60" viewBox="0 0 {width} 60">'
            '<text x="10" y="34" font-size="13">No failed units.</text></svg>'
        )
    shown = list(failures[:12])
    rest = sum(c for _, c in failures[12:])
    if rest:
        shown.append(("other steps", rest))
    total = sum(c for _, c in shown)
    peak = max(c for _, c in shown)
    plot_w, plot_h = width - left - 40, height - top - bottom
    slot = plot_w / len(shown)
    bars, points = [], []
    running = 0
    for i, (step, count) in enumerate(shown):
        x = left + i * slot
        h = plot_h * count / peak
        running += count
        bars.append(
            f'<rect x="{x + slot * 0.15:.1f}" y="{top + plot_h - h:.1f}" width="{slot * 0.7:.1f}" height="{h:.1f}" '
            f'fill="#c62828"><title>{_e(step)}: {count}</title></rect>'
            f'<text x="{x + slot / 2:.1f}" y="{top + plot_h - h - 3:.1f}" text-anchor="middle" font-size="11">'
            f"{count}</text>"
            f'<text transform="translate({x + slot / 2:.1f},{top + plot_h + 12}) rotate(35)" font-size="11">'
            f"{_e(step[:18])}</text>"
        )
        points.append(f"{x + slot / 2:.1f},{top + plot_h * (1 - running / total):.1f}")
    axis = (
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#90a4ae"/>'
        f'<text x="{left + plot_w + 4}" y="{top + 4}" font-size="11">100%</text>'
        f'<text x="{left + plot_w + 4}" y="{top + plot_h}" font-size="11">0%</text>'
    )
    line = f'<polyline points="{" ".join(points)}" fill="none" stroke="#1f4fa3" stroke-width="2"/>'
    dots = "".join(f'<circle cx="{p.split(",")[0]}" cy="{p.split(",")[1]}" r="3" fill="#1f4fa3"/>' for p in points)
    return (
        f'<svg role="img" aria-label="failure pareto" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">{axis}{"".join(bars)}{line}{dots}</svg>'
    )


def _weeks_chart(weeks: Sequence[tuple[str, int]]) -> str:
    width, height, left, bottom, top = 520, 200, 30, 50, 16
    if not weeks:
        return (
            f'<svg role="img" aria-label="exceptions per week" width="{width}" height="60" viewBox="0 0 {width} 60">'
            '<text x="10" y="34" font-size="13">No exception events.</text></svg>'
        )
    shown = list(weeks[-26:])
    peak = max(c for _, c in shown)
    plot_w, plot_h = width - left - 10, height - top - bottom
    slot = plot_w / len(shown)
    bars = []
    for i, (week, count) in enumerate(shown):
        x = left + i * slot
        h = plot_h * count / peak
        bars.append(
            f'<rect x="{x + slot * 0.15:.1f}" y="{top + plot_h - h:.1f}" width="{slot * 0.7:.1f}" height="{h:.1f}" '
            f'fill="#ef6c00"><title>{_e(week)}: {count}</title></rect>'
            f'<text x="{x + slot / 2:.1f}" y="{top + plot_h - h - 3:.1f}" text-anchor="middle" font-size="11">'
            f"{count}</text>"
            f'<text transform="translate({x + slot / 2:.1f},{top + plot_h + 12}) rotate(35)" font-size="11">'
            f"{_e(week)}</text>"
        )
    axis = f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#90a4ae"/>'
    return (
        f'<svg role="img" aria-label="exceptions per week" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">{axis}{"".join(bars)}</svg>'
    )


# --- process: step times, measurements against their limits, calibration drift -----------------------

_WEEKS_DRAWN = 8  # weeks per station drawn as charts (the newest); the table lists every week


def _g(value: float) -> str:
    """A figure for a person: four significant digits."""
    return f"{value:.4g}"


def _process_section(report: Report) -> str:
    parts = ['<section id="process"><h2>Process: test time, measurements, calibration</h2>']
    measured = [s for s in report.stations if s.process.weeks]
    if not measured:
        parts.append('<p class="muted">No test records in the audited manifests.</p></section>')
        return "\n".join(parts)
    parts.append(
        f'<p class="muted">Per station and ISO week, from the test records signed into each unit\'s manifest. '
        f"Cpk is given for a measurement with limits and at least {CPK_MIN_UNITS} units in the week; "
        "histograms are drawn from the first units of the week, the figures from all.</p>"
    )
    for station in measured:
        name = station.station_id
        process = station.process
        parts.append(f"<h3>{_e(name)}</h3>")
        parts.append(_measurement_table(station.station_id, process.weeks))
        if process.calibration:
            parts.append('<div class="charts">')
            for trend in process.calibration:
                parts.append(_figure(f"{name}: calibration {trend.name}", _drift_chart(name, trend)))
            parts.append("</div>")
        for week in process.weeks[-_WEEKS_DRAWN:]:
            heading = f"{_e(name)} &middot; {_e(week.week)} &middot; {week.units:,} units"
            parts.append(f'<h4>{heading}</h4><div class="charts">')
            if week.steps:
                parts.append(_figure("Test time per step", _steps_chart(f"{name} {week.week}", week.steps)))
            for m in week.measurements:
                parts.append(_figure(m.name, _histogram_chart(f"{name} {week.week}", m)))
            parts.append("</div>")
    parts.append("</section>")
    return "\n".join(parts)


def _measurement_table(station: str, weeks: Sequence[WeekFigures]) -> str:
    rows = []
    for week in weeks:
        for m in week.measurements:
            lower = "" if m.lower is None else _g(m.lower)
            upper = "" if m.upper is None else _g(m.upper)
            cpk = "&ndash;" if m.cpk is None else _g(m.cpk)
            rows.append(
                f"<tr><td>{_e(week.week)}</td><td>{_e(m.name)}</td><td>{_e(m.unit)}</td>"
                f'<td class="n">{lower}</td><td class="n">{upper}</td><td class="n">{m.count:,}</td>'
                f'<td class="n">{m.failed:,}</td><td class="n">{_g(m.mean)}</td>'
                f'<td class="n">{"&ndash;" if m.stdev is None else _g(m.stdev)}</td><td class="n">{cpk}</td></tr>'
            )
    return (
        f'<table aria-label="{_e(station)} measurements"><tr><th>week</th><th>measurement</th><th>unit</th>'
        '<th class="n">lower</th><th class="n">upper</th><th class="n">units</th><th class="n">failed</th>'
        '<th class="n">mean</th><th class="n">stdev</th><th class="n">Cpk</th></tr>' + "".join(rows) + "</table>"
    )


def _histogram_chart(where: str, m: MeasurementFigures) -> str:
    """Bars of the week's values over the span of values and limits; the limits red, the mean blue."""
    width, height, left, right, top, bottom = 360, 210, 36, 12, 34, 40
    start, end, counts = m.histogram
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max(counts) or 1
    slot = plot_w / len(counts)

    def x_of(value: float) -> float:
        return left + plot_w * (value - start) / (end - start)

    bins = []
    for i, count in enumerate(counts):
        low, high = start + (end - start) * i / len(counts), start + (end - start) * (i + 1) / len(counts)
        outside = (m.lower is not None and high <= m.lower) or (m.upper is not None and low >= m.upper)
        h = plot_h * count / peak
        bins.append(
            f'<rect class="bin" data-count="{count}" x="{left + i * slot:.1f}" y="{top + plot_h - h:.1f}" '
            f'width="{max(slot - 1, 1):.1f}" height="{h:.1f}" fill="{"#c62828" if outside else "#5c8dd6"}">'
            f"<title>{_g(low)} to {_g(high)} {_e(m.unit)}: {count}</title></rect>"
        )
    marks = []
    for label, value in (("LSL", m.lower), ("USL", m.upper)):
        if value is not None:
            x = x_of(value)
            marks.append(
                f'<line class="limit" x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{top + plot_h}" stroke="#c62828" '
                f'stroke-width="2" stroke-dasharray="5 3"/><text x="{x:.1f}" y="{top - 8}" text-anchor="middle" '
                f'font-size="11" fill="#c62828">{label} {_g(value)}</text>'
            )
    mean_x = x_of(m.mean)
    marks.append(
        f'<line class="mean" x1="{mean_x:.1f}" y1="{top}" x2="{mean_x:.1f}" y2="{top + plot_h}" stroke="#1f4fa3" '
        'stroke-width="1.5"/>'
    )
    if m.cpk is not None:
        cpk = f"Cpk {_g(m.cpk)}"
    elif m.count < CPK_MIN_UNITS:
        cpk = f"Cpk n/a (n &lt; {CPK_MIN_UNITS})"
    else:
        cpk = "Cpk n/a (no limit)" if m.lower is None and m.upper is None else "Cpk n/a (no spread)"
    caption = f"n={m.count:,} \u00b7 failed {m.failed:,} \u00b7 mean {_g(m.mean)} {_e(m.unit)} \u00b7 {cpk}"
    axis = (
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#90a4ae"/>'
        f'<text x="{left}" y="{top + plot_h + 14}" font-size="10">{_g(start)}</text>'
        f'<text x="{left + plot_w}" y="{top + plot_h + 14}" font-size="10" text-anchor="end">{_g(end)} '
        f"{_e(m.unit)}</text>"
        f'<text x="{left}" y="{height - 8}" font-size="11">{caption}</text>'
    )
    label = f"{where}: {m.name} distribution"
    return (
        f'<svg role="img" aria-label="{_e(label)}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">{axis}{"".join(bins)}{"".join(marks)}</svg>'
    )


def _steps_chart(where: str, steps: Sequence[StepTime]) -> str:
    """Horizontal bars: each step's mean time, its longest as a tick."""
    width, label_w, bar_h, gap = 360, 110, 16, 6
    height = len(steps) * (bar_h + gap) + 10
    span = width - label_w - 110
    peak = max(s.longest for s in steps) or 1.0
    body = []
    for i, s in enumerate(steps):
        y = i * (bar_h + gap) + 4
        w = span * s.mean / peak
        tick = label_w + span * s.longest / peak
        body.append(
            f'<text class="step" x="{label_w - 6}" y="{y + 12}" text-anchor="end" font-size="12">'
            f"{_e(s.step[:18])}</text>"
            f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="#26a69a">'
            f"<title>{_e(s.step)}: mean {_g(s.mean)} s over {s.count:,} units</title></rect>"
            f'<line x1="{tick:.1f}" y1="{y}" x2="{tick:.1f}" y2="{y + bar_h}" stroke="#37474f"/>'
            f'<text x="{label_w + span + 6}" y="{y + 12}" font-size="11">{_g(s.mean)} s (max {_g(s.longest)})</text>'
        )
    label = f"{where}: test time per step"
    return (
        f'<svg role="img" aria-label="{_e(label)}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">{"".join(body)}</svg>'
    )


def _drift_chart(station: str, trend: CalibrationTrend) -> str:
    """The coefficient's weekly mean (dots and a line) and its range each week (a vertical bar)."""
    width, height, left, right, top, bottom = 520, 210, 60, 16, 16, 50
    weeks = trend.weeks[-52:]
    low = min(w.low for w in weeks)
    high = max(w.high for w in weeks)
    if high <= low:
        pad = abs(low) * 0.01 or 1.0
        low, high = low - pad, high + pad
    plot_w, plot_h = width - left - right, height - top - bottom
    slot = plot_w / len(weeks)

    def y_of(value: float) -> float:
        return top + plot_h * (1 - (value - low) / (high - low))

    body, points = [], []
    for i, w in enumerate(weeks):
        x = left + slot * (i + 0.5)
        y = y_of(w.mean)
        points.append(f"{x:.1f},{y:.1f}")
        body.append(
            f'<line x1="{x:.1f}" y1="{y_of(w.high):.1f}" x2="{x:.1f}" y2="{y_of(w.low):.1f}" stroke="#b0bec5" '
            f'stroke-width="6"/><circle class="mean" cx="{x:.1f}" cy="{y:.1f}" r="4" fill="#6a1b9a">'
            f"<title>{_e(w.week)}: mean {_g(w.mean)} {_e(trend.unit)} over {w.count:,} units "
            f"(range {_g(w.low)} to {_g(w.high)})</title></circle>"
            f'<text transform="translate({x:.1f},{top + plot_h + 12}) rotate(35)" font-size="11">{_e(w.week)}</text>'
        )
    line = f'<polyline points="{" ".join(points)}" fill="none" stroke="#6a1b9a" stroke-width="2"/>'
    axis = (
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#90a4ae"/>'
        f'<text x="{left - 4}" y="{top + 4}" font-size="10" text-anchor="end">{_g(high)}</text>'
        f'<text x="{left - 4}" y="{top + plot_h}" font-size="10" text-anchor="end">{_g(low)}</text>'
        f'<text x="{left}" y="{height - 4}" font-size="11">drift {trend.drift:+.4g} {_e(trend.unit)} '
        f"from {_e(trend.weeks[0].week)} to {_e(trend.weeks[-1].week)}</text>"
    )
    label = f"{station}: {trend.name} over the weeks"
    return (
        f'<svg role="img" aria-label="{_e(label)}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">{axis}{"".join(body)}{line}</svg>'
    )
