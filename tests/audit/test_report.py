"""The audit's outputs: the documented JSON schema, the HTML page, and the command line."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.audit.conftest import Forge, Report
from tests.verify.conftest import World
from vault.cli import cli, main
from vault.token import format_uri

DOC = Path(__file__).resolve().parents[2] / "docs" / "audit-report.md"

Audit = Callable[..., Report]


@pytest.fixture
def mixed(forge: Forge, tmp_path: Path) -> Path:
    """An export with a label mismatch carrying hostile text, a failure, and a forged manifest."""
    device = forge.provision(2)[0]
    forge.add("label-mismatch", forge.device(), label=device.serial, serial=None, detail='<script>alert("x")</script>')
    forge.add("failed", failed_step="program", detail="flash <b>timeout</b>")
    forge.add("provisioned", forge_as_station=True)
    return forge.export(tmp_path / "evidence")


# --- JSON --------------------------------------------------------------------------------------


def _documented() -> dict[str, set[str]]:
    """The fields docs/audit-report.md lists for each object: {object name: fields}."""
    objects: dict[str, set[str]] = {}
    current = None
    for line in DOC.read_text().splitlines():
        if line.startswith("#"):
            heading = re.match(r"^#{2,4} `([a-z_.\[\]]+)`", line)
            current = heading.group(1) if heading else None
            if current is not None:
                objects[current] = set()
            continue
        row = re.match(r"^\| `([a-z0-9_]+)` \|", line)
        if row and current is not None:
            objects[current].add(row.group(1))
    return objects


def _check(value: Any, name: str, documented: dict[str, set[str]]) -> None:
    name = name.replace("report.totals.", "report.stations[].")  # the totals have a station's form
    if isinstance(value, dict) and name in documented:
        assert set(value) == documented[name], f"{name}: {set(value) ^ documented[name]}"
        for key, item in value.items():
            _check(item, f"{name}.{key}", documented)
    elif isinstance(value, list):
        for item in value:
            _check(item, f"{name}[]", documented)


def test_the_json_report_has_exactly_the_documented_fields(mixed: Path, run_audit: Audit) -> None:
    value = json.loads(run_audit([mixed]).to_json())
    documented = _documented()
    assert {"report", "report.findings[]", "report.stations[]", "report.findings[].evidence[]"} <= set(documented)
    _check(value, "report", documented)
    assert value["format"] == "vault-audit-report/v1"
    assert value["verdict"] == {"passed": False, "fail_on": "high", "worst": "critical"}
    assert value["summary"]["findings"]["critical"] == 1 and value["summary"]["manifests"] == 5
    codes = {f["code"]: f for f in value["findings"]}
    assert set(codes) == {"signature-invalid", "label-mismatch", "label-misbound", "unit-failed", "station-no-evidence"}
    assert codes["label-mismatch"]["evidence"][0]["position"] == 2
    assert value["stations"][0]["quality"]["failure_pareto"] == [
        {"step": "program", "count": 1, "cumulative_share": 1.0}
    ]


def test_every_finding_code_is_documented() -> None:
    """Each code has one row: its severity, its meaning and what its evidence points at; no other code has one."""
    from vault.audit import CODES

    rows = re.findall(r"^\| `([a-z-]+)` \| ([a-z]+) \| (.+?) \| (.+?) \|$", DOC.read_text(), re.MULTILINE)
    documented = {code: (severity, meaning, points) for code, severity, meaning, points in rows}
    assert len(documented) == len(rows) and set(documented) == set(CODES), set(documented) ^ set(CODES)
    for code, (severity, _) in CODES.items():
        assert documented[code][0] == severity, code


def test_every_audit_option_is_documented() -> None:
    from vault.cli._audit import audit as command

    text = DOC.read_text()
    options = [opt for param in command.params for opt in param.opts if opt.startswith("--")]
    assert "--bundle" in options and "--force" in options
    for option in options:
        assert re.search(rf"^- (`--[a-z-]+`, )*`{option}`[,:]", text, re.MULTILINE), option


# --- HTML --------------------------------------------------------------------------------------


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.ids: list[str] = []
        self.links: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            if name == "id" and value:
                self.ids.append(value)
            if name in ("src", "href", "xlink:href", "action") and value:
                self.links.append(value)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_the_html_report_is_one_self_contained_page(mixed: Path, run_audit: Audit) -> None:
    page = run_audit([mixed]).to_html()
    parsed = _Page()
    parsed.feed(page)
    assert parsed.ids[:4] == ["summary", "stations", "bundles", "findings"] and "charts" in parsed.ids
    assert parsed.tags.count("svg") == 3
    assert not {"script", "link", "img", "iframe", "object"} & set(parsed.tags)
    assert not any("http" in link for link in parsed.links) and "http" not in page.replace('"http', "")
    text = " ".join(parsed.text)
    assert "FAIL" in text and "signature-invalid" in text and "label-mismatch" in text
    # evidence text is escaped, never markup
    assert "<script>" not in page and "&lt;script&gt;" in page and "<b>timeout" not in page


# --- the command line --------------------------------------------------------------------------


def _argv(world: World, *exports: Path, extra: tuple[str, ...] = ()) -> list[str]:
    return [
        "audit", *map(str, exports), "--root-cert", str(world.root_cert_path), "--policy", str(world.policy_path),
        "--bundle", str(world.bundle_path), "--token", format_uri(world.tokens["auditor"]), "--workers", "1", *extra,
    ]  # fmt: skip


def test_fail_on_sets_the_exit_status(world: World, forge: Forge, tmp_path: Path) -> None:
    device = forge.provision(2)[0]
    forge.add("label-mismatch", forge.device(), label=device.serial, serial=None)
    folder = tmp_path / "evidence"
    forge.export(folder)
    runner = CliRunner()
    clean = runner.invoke(cli, _argv(world, folder), catch_exceptions=False)
    assert clean.exit_code == 0, clean.output
    # low: the label mismatch, the misbound label, and station-2 (allocated 10) of which nothing was given
    assert "PASS: no finding at or above high" in clean.output and "3 low" in clean.output
    strict = runner.invoke(cli, _argv(world, folder, extra=("--fail-on", "low")), catch_exceptions=False)
    assert strict.exit_code == 3 and "FAIL: 3 finding(s) at or above low" in strict.output
    assert "label-mismatch" in strict.output


def test_the_command_writes_the_reports_and_never_over_a_file(world: World, mixed: Path, tmp_path: Path) -> None:
    out_json, out_html = tmp_path / "audit.json", tmp_path / "audit.html"
    argv = _argv(world, mixed, extra=("--json", str(out_json), "--html", str(out_html)))
    result = CliRunner().invoke(cli, argv, catch_exceptions=False)
    assert result.exit_code == 3, result.output
    assert f"html report {out_html}" in result.output
    assert re.search(r"critical +signature-invalid", result.output)
    assert json.loads(out_json.read_text())["verdict"]["passed"] is False
    assert out_html.read_text().startswith("<!DOCTYPE html>")
    again = CliRunner().invoke(cli, argv)
    assert again.exit_code == 1 and "exists" in str(again.exception)
    missing = tmp_path / "reports" / "audit.json"  # a folder not made yet: refused before the audit runs
    nowhere = CliRunner().invoke(cli, _argv(world, mixed, extra=("--json", str(missing))))
    assert nowhere.exit_code == 1 and f"no folder {missing.parent} (make it first)" in str(nowhere.exception)
    assert "audited" not in nowhere.output


def test_bad_input_is_one_line_and_exit_1(
    world: World, forge: Forge, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    forge.provision(1)
    export = forge.export(tmp_path / "evidence")
    bogus = tmp_path / "policy.yaml"
    bogus.write_bytes(b"hello, this is not a trust policy at all")
    argv = _argv(world, export)
    argv[argv.index("--policy") + 1] = str(bogus)
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("vault: error:") and "\n" not in err


def test_progress_shows_on_a_terminal_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from vault.audit import AuditProgress
    from vault.cli._audit import _progress

    with _progress() as update:
        assert update is None  # stderr is not a terminal under pytest
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    with _progress() as update:
        update(AuditProgress(10, 100, 3))
        update(AuditProgress(100, 100, 30))


def test_the_audit_package_needs_no_cli_libraries() -> None:
    import subprocess
    import sys

    code = (
        "import sys, vault.audit\nprint(sorted(m for m in ('click', 'yaml', 'sigstore', 'rich') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_command_knows_the_severities_of_the_library() -> None:
    from vault.audit import SEVERITIES
    from vault.cli._audit import _SEVERITIES

    assert _SEVERITIES == SEVERITIES


def test_a_station_folder_given_file_by_file_skips_the_stations_own_copies(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vault.verify import SimulatedDevice

    with world.station(tmp_path / "state") as station:
        station.load(world.bundle_path, world.policy)
        station.provision(SimulatedDevice())
        station.export(tmp_path / "evidence")
    files = sorted((tmp_path / "evidence").iterdir())  # as a shell expands evidence/*
    assert [f.suffix for f in files] == [".station-copy", ".vault-evidence"]
    with pytest.raises(SystemExit) as exited:
        main(_argv(world, *files))
    out, err = capsys.readouterr()
    assert exited.value.code == 0, out + err
    assert "skipped" in err and "station-1-000001.station-copy" in err and "not evidence" in err
    assert "PASS" in out
    with pytest.raises(SystemExit) as exited:
        main(_argv(world, files[0]))
    assert exited.value.code == 1 and "only station copies" in capsys.readouterr().err
