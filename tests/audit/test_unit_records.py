"""Each serial a finding names has a unit record in the report (the view `vault station record` gives), and
the HTML findings link to it."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.audit.conftest import Forge, Report
from vault.audit import _engine
from vault.audit._html import unit_anchor

Audit = Callable[..., Report]

HOSTILE = "SN-\"'><script>alert(1)</script>&amp;"


class _Units(HTMLParser):
    """The links of the findings section, and each unit block's text cells, by the block's id."""

    def __init__(self) -> None:
        super().__init__()
        self.section: str | None = None
        self.block: str | None = None
        self.links: list[str] = []
        self.blocks: dict[str, list[str]] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "section":
            self.section = found.get("id")
        if tag == "a" and self.section == "findings":
            self.links.append(found.get("href") or "")
        if tag == "div" and found.get("class") == "unit":
            self.block = found.get("id") or ""
            self.blocks[self.block] = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "div":
            self.block = None

    def handle_data(self, data: str) -> None:
        if self.block is not None:
            self.blocks[self.block].append(data)


def _parse(report: Report) -> _Units:
    parsed = _Units()
    parsed.feed(report.to_html())
    return parsed


def test_a_findings_serial_links_to_a_block_of_exactly_that_devices_events(
    forge: Forge, run_audit: Audit, tmp_path: Path
) -> None:
    forge.provision(2)
    device = forge.device()
    first = forge.add("provisioned", device)
    others = forge.provision(2)
    again = forge.add("rework", device, unit=None)  # unit-missing and unit-reworked name the device
    forge.provision(1)
    report = run_audit([forge.export(tmp_path)])
    assert {"unit-missing", "unit-reworked"} <= report.codes()
    assert [u.serial for u in report.units] == [device.serial]  # no finding names the others
    parsed = _parse(report)
    anchor = unit_anchor(device.serial)
    assert parsed.links and set(parsed.links) == {f"#{anchor}"}
    assert list(parsed.blocks) == [anchor]
    cells = parsed.blocks[anchor]
    mids = [c for c in cells if re.fullmatch(r"[0-9a-f]{32}", c)]
    assert mids == [first.manifest.id, again.manifest.id]
    assert cells.count(device.hwid) == 3  # the hardware ids line and each event
    assert not any(o.hwid in cells or o.serial in "".join(cells) for o in others)
    assert "provisioned" in cells and "rework" in cells


def test_a_hostile_serial_is_escaped_and_its_anchor_is_safe(forge: Forge, run_audit: Audit, tmp_path: Path) -> None:
    forge.provision(1)
    device = forge.device(HOSTILE)
    forge.add("provisioned", device, label="SN-SOMEONE-ELSE")  # label-serial-differs names the serial
    report = run_audit([forge.export(tmp_path)])
    page = report.to_html()
    assert "<script>" not in page and "&lt;script&gt;" in page
    anchor = unit_anchor(HOSTILE)
    assert re.fullmatch(r"unit-[A-Za-z0-9_-]+", anchor) and anchor != unit_anchor(HOSTILE + "x")
    parsed = _parse(report)
    assert f"#{anchor}" in parsed.links and list(parsed.blocks) == [anchor]
    assert HOSTILE in parsed.blocks[anchor]  # shown as the text it is


def test_the_json_units_match_the_evidence(forge: Forge, run_audit: Audit, tmp_path: Path) -> None:
    one, two = forge.device(), forge.device()
    made = [forge.add("provisioned", one, label="SN-MISREAD"), forge.add("provisioned", two, label="SN-MISREAD")]
    path = forge.export(tmp_path)
    value = json.loads(run_audit([path]).to_json())
    assert set(value["units"]) == {one.serial, two.serial}
    assert value["units_listed"] == {"serials": 2, "named": 2, "truncated": False}
    for device, entry in zip((one, two), made, strict=True):
        unit = value["units"][device.serial]
        assert unit["hardware_ids"] == [device.hwid]
        assert unit["events_total"] == 1 and not unit["truncated"]
        (event,) = unit["events"]
        assert event["manifest_id"] == entry.manifest.id and event["event"] == "provisioned"
        assert event["station"] == "station-1" and event["export"].endswith(path.name)
        assert event["fixture"] == entry.manifest.fixture and event["operator"] == entry.manifest.operator
        assert event["position"] == made.index(entry) and event["failed_step"] is None


def test_the_records_are_capped_and_say_so(
    forge: Forge, run_audit: Audit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_engine, "MAX_UNITS", 1)
    monkeypatch.setattr(_engine, "MAX_UNIT_EVENTS", 1)
    one, two = forge.device(), forge.device()
    forge.add("provisioned", one, label="SN-MISREAD")
    forge.add("rework", one, label="SN-MISREAD", unit=1)
    forge.add("provisioned", two, label="SN-MISREAD")
    report = run_audit([forge.export(tmp_path)])
    (unit,) = report.units
    assert report.units_named == 2 and report.units_truncated
    assert unit.events_total == 2 and len(unit.events) == 1 and unit.truncated
    text = report.to_html()
    assert "The findings name 2 serials; the first 1" in text and "(the first 1 of 2)" in text
    linked = _parse(report).links
    assert linked == [f"#{unit_anchor(unit.serial)}"] * linked.count(f"#{unit_anchor(unit.serial)}")
