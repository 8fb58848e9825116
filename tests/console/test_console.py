"""The operator's console driven headless through a shift (Textual's Pilot), on real SoftHSM2 tokens."""

from __future__ import annotations

import asyncio
import hashlib
import re
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

import pytest
import zxingcpp
from PIL import Image
from textual.widgets import Static

from tests.cli.test_token_cli import run
from tests.verify import conftest as verify_conftest
from tests.verify.conftest import World
from vault.audit import audit
from vault.console import LabelSpec
from vault.console._app import make_console
from vault.errors import DeviceError
from vault.manifest import Manifest, open_manifest
from vault.token import open_token
from vault.verify import Station
from vault.verify.devices import ImageToProgram, SimulatedDevice
from vault.verify.devices._run import FixtureRun

world = verify_conftest.world


class Scripted:
    """A fixture on which the given devices are placed one after the other, then no more."""

    def __init__(self, devices: list[SimulatedDevice]) -> None:
        self.devices = list(devices)

    def open(self) -> None: ...

    def close(self) -> None: ...

    def next_device(self) -> SimulatedDevice | None:
        return self.devices.pop(0) if self.devices else None


class PulledOff(SimulatedDevice):
    """A device taken off the fixture while its first image was being written."""

    def program(self, image: ImageToProgram, chunks: Iterable[bytes]) -> None:
        next(iter(chunks), None)
        raise DeviceError("the device stopped answering mid-programming (taken off the fixture)")


def device(label: str | None = None, **kwargs: object) -> SimulatedDevice:
    d = SimulatedDevice(**kwargs)  # type: ignore[arg-type]
    d.label = label or f"SN-{d.hardware_id.hex()[:8].upper()}"
    return d


def log_of(state: Path, station: Station) -> list[Manifest]:
    with sqlite3.connect(state / "station.sqlite") as db:
        rows = db.execute("SELECT envelope FROM log ORDER BY sequence").fetchall()
    trusted = {station._signing.key_id: station._signing.public_key}
    return [open_manifest(bytes(r[0]), trusted) for r in rows]


async def until(pilot: object, check: object, what: str, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.1)  # type: ignore[attr-defined]


def svg_text(svg: str) -> str:
    return svg.replace("&#160;", " ").replace("&amp;", "&")


def test_a_shift_on_four_fixtures(world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = device()
    swapped = device(label=first.label)  # fixture 3's second device carries the first one's label
    runs = [
        FixtureRun(1, Scripted([device(), device()])),
        FixtureRun(2, Scripted([device(), device(fail_at="lock")])),
        FixtureRun(3, Scripted([first, swapped, device()])),
        FixtureRun(4, Scripted([PulledOff(label="SN-PULLED")])),
    ]
    state, evidence, labels = tmp_path / "state", tmp_path / "evidence", tmp_path / "labels"
    with world.station(state, operator="alice") as station:
        station.load(world.bundle_path, world.policy)
        app = make_console(
            station, runs, adapters={1: "simulated", 2: "simulated", 3: "simulated", 4: "simulated"},
            labels=LabelSpec(output=labels), label_source="adapter", operators=["alice", "bob"],
            supervisors=["carol"], evidence=evidence, export_warning_hours=8,
        )  # fmt: skip

        async def shift() -> tuple[str, str]:
            async with app.run_test(size=(150, 50)) as pilot:
                line = app.line
                assert line is not None
                assert "No evidence exported yet" in svg_text(app.export_screenshot())
                await pilot.press("f2")  # sign in with a badge scanner that types like a keyboard
                await pilot.pause()
                await pilot.press(*"alice", "enter")
                await until(pilot, lambda: line.operator == "alice", "the sign-in")
                await until(pilot, lambda: line.stopped() == [3], "fixture 3's stop")
                await until(pilot, lambda: all(line.panels[s].state in ("done", "fail") for s in (1, 2, 4)),
                            "fixtures 1, 2 and 4")  # fmt: skip
                assert line.panels[3].state == "stopped"
                stopped = app.export_screenshot()
                (tmp_path / "console-stopped.svg").write_text(stopped)  # the artifact: a fixture stopped mid-shift
                await pilot.click("#fixture-3")  # the supervisor, with the mouse
                await pilot.pause()
                await pilot.click("#supervisor-0")
                await pilot.pause()
                await pilot.press(*"label from the unit before; relabelled", "enter")
                await until(pilot, lambda: line.panels[3].state == "done", "fixture 3 after the acknowledgement")
                await pilot.press("f5")
                await until(pilot, lambda: any(evidence.glob("*")), "the export")
                await until(pilot, lambda: app.last_export is not None, "the export's time")
                await pilot.click("#sign-out")
                await until(pilot, lambda: line.operator is None and any("signed out" in m for m in app.messages),
                            "the sign-out")  # fmt: skip
                await pilot.pause()
                app.save_screenshot(filename="console.svg", path=str(tmp_path))
                return stopped, app.export_screenshot()

        stopped, ended = asyncio.run(shift())
        log = log_of(state, station)

    shown = svg_text(stopped)
    for text in ("Fixture 1", "Fixture 4", "PASS", "FAIL at lock", "FAIL at program", "STOPPED", "label mismatch",
                 "units left", "operator: alice", first.label):  # fmt: skip
        assert text in shown, text
    assert (tmp_path / "console.svg").is_file()
    assert "nobody signed in" in svg_text(ended)

    events = [(m.event, m.operator, m.failed_step) for m in log]
    assert events[0] == ("sign-in", "alice", None)
    assert events[-1] == ("sign-out", "alice", None)
    provisioned = [m for m in log if m.event == "provisioned"]
    assert len(provisioned) == 5 and all(m.operator == "alice" for m in provisioned)
    failed = {m.failed_step for m in log if m.event == "failed"}
    assert failed == {"lock", "program"}
    mismatch = [m for m in log if m.event == "label-mismatch"]
    assert len(mismatch) == 1 and mismatch[0].hardware_id == swapped.hardware_id.hex()
    (ack,) = [m for m in log if m.event == "acknowledge"]
    assert ack.operator == "carol" and ack.hardware_id == swapped.hardware_id.hex() and ack.fixture == 3
    assert "label mismatch" in (ack.detail or "") and "relabelled" in (ack.detail or "")
    assert log.index(ack) > log.index(mismatch[0])
    printed = [m for m in log if m.event == "label"]
    assert sorted(m.serial for m in printed) == sorted(m.serial for m in provisioned)  # type: ignore[type-var]
    for m in provisioned:  # each label after its unit's manifest: PASS and the label only once it is committed
        label = next(x for x in printed if x.hardware_id == m.hardware_id)
        assert log.index(label) > log.index(m)

    # every label reads back, with a real QR decoder, as the unit's bound identity
    for m in provisioned:
        assert m.serial is not None
        png = labels / f"{m.serial}.png"
        (found,) = zxingcpp.read_barcodes(Image.open(png))
        digest = hashlib.sha256(bytes.fromhex(m.hardware_id)).hexdigest()
        assert found.text == f"{m.serial}|{digest}|{m.time.date().isoformat()}"
        zpl = (labels / f"{m.serial}.zpl").read_text()
        assert zpl.startswith("^XA") and "^BQN" in zpl and digest in zpl

    # the audit of the shift's export: the people's records raise nothing at medium or above
    with open_token(world.tokens["auditor"]) as session:
        report = audit(sorted(evidence.glob("*.vault-evidence")) or sorted(p for p in evidence.iterdir()
                       if not p.name.endswith(".station-copy")), policy=world.policy,
                       root_certificate=world.root_cert, bundle_path=world.bundle_path,
                       decapsulator=session.key(label="auditor-decrypt"), workers=1)  # fmt: skip
    serious = {f.code for f in report.at_or_above("medium")}
    assert serious <= {"station-silent"}, serious
    assert "stop-acknowledged" in {f.code for f in report.findings}

    # vault station record: what the station knows of one unit, from its verified manifests
    from vault.token import format_uri

    unit = provisioned[0]
    station_options = ["--state", str(state), "--token", format_uri(world.tokens["station-1"], redact_pin=False),
                       "--station-id", "station-1", "--root-cert", str(world.root_cert_path)]  # fmt: skip
    code, out, err = run(capsys, "station", "record", str(unit.serial), *station_options)
    assert code == 0, err
    assert f"unit         {unit.serial}" in out and unit.hardware_id in out
    assert "provisioned" in out and "image app.bin" in out and "certificate " in out and "labels 1 printed" in out
    code, _, err = run(capsys, "station", "record", "SN-NOBODY", *station_options)
    assert code != 0 and "no device with serial or hardware id 'SN-NOBODY'" in err and "Traceback" not in err


def test_a_failing_printer_is_one_line_and_the_unit_stays_good(world: World, tmp_path: Path) -> None:
    runs = [FixtureRun(1, Scripted([device()]))]
    state = tmp_path / "state"
    with world.station(state) as station:
        station.load(world.bundle_path, world.policy)
        spec = LabelSpec(output=tmp_path / "labels", printer=("sh", "-c", "echo 'zebra: out of labels' >&2; exit 3"))
        app = make_console(station, runs, adapters={1: "simulated"}, labels=spec, label_source="adapter",
                           operators=["bob"], supervisors=["carol"], evidence=None, export_warning_hours=1)  # fmt: skip

        async def shift() -> None:
            async with app.run_test(size=(120, 40)) as pilot:
                line = app.line
                assert line is not None
                await pilot.click("#sign-in")
                await pilot.pause()
                await pilot.click("#operator-0")
                await until(pilot, lambda: line.panels[1].state == "done", "the unit")
                assert line.panels[1].label_ok is False
                await pilot.press("f3")
                await until(pilot, lambda: line.operator is None, "the sign-out")
                await pilot.pause()

        asyncio.run(shift())
        log = log_of(state, station)
    assert [m.event for m in log] == ["sign-in", "provisioned", "label", "sign-out"]
    label = log[2]
    assert label.failed_step == "print" and label.serial == log[1].serial
    assert re.search(r"printer command 'sh' failed .*exit 3.*out of labels", label.detail or "")
    errors = [m for m in app.messages if "not printed" in m]
    assert len(errors) == 1 and "\n" not in errors[0]


def test_a_label_template_with_an_unknown_field_is_refused_with_its_line(tmp_path: Path) -> None:
    from vault.cli._station_config import load_station_config
    from vault.errors import ScriptError

    path = tmp_path / "station.yaml"
    path.write_text(
        "station: station-1\ntoken: \"pkcs11:token=t?pin-value=1\"\nroot:\n  fingerprint: " + "ab" * 32 + "\n"
        "state: state\noperators: [alice]\nlabel:\n  source: adapter\n  content: \"{serial} {hwid_sha265}\"\n"
        "fixtures:\n  - slot: 1\n    adapter: simulated\n"
    )
    with pytest.raises(ScriptError, match=r"station.yaml:9: label.content: .*no field 'hwid_sha265' "
                                          r"\(did you mean 'hwid_sha256'\?\)"):  # fmt: skip
        load_station_config(path)


def test_a_clone_stops_its_fixture_until_a_supervisor_acknowledges(world: World, tmp_path: Path) -> None:
    first = device()
    clone = device(label=first.label, hardware_id=first.hardware_id)  # the same hardware id, its own key
    runs = [FixtureRun(1, Scripted([first, clone, device()])), FixtureRun(2, Scripted([device(), device()]))]
    state = tmp_path / "state"
    with world.station(state, operator="alice") as station:
        station.load(world.bundle_path, world.policy)
        app = make_console(
            station, runs, adapters={1: "simulated", 2: "simulated"}, labels=None, label_source="adapter",
            operators=["alice"], supervisors=["carol"], evidence=tmp_path / "evidence", export_warning_hours=8,
        )  # fmt: skip

        async def shift() -> str:
            async with app.run_test(size=(150, 50)) as pilot:
                line = app.line
                assert line is not None
                await pilot.press("f2")
                await pilot.pause()
                await pilot.press(*"alice", "enter")
                await until(pilot, lambda: line.stopped() == [1], "fixture 1's stop")
                await until(pilot, lambda: line.panels[2].state == "done", "fixture 2: the line keeps running")
                await pilot.pause(0.5)
                assert line.panels[1].state == "stopped" and line.stopped() == [1]  # it stays stopped
                stopped = app.export_screenshot()
                await pilot.click("#fixture-1")
                await pilot.pause()
                await pilot.click("#supervisor-0")
                await pilot.pause()
                await pilot.press(*"second board with one id; quarantined", "enter")
                await until(pilot, lambda: line.panels[1].state == "done", "fixture 1 after the acknowledgement")
                return stopped

        stopped = svg_text(asyncio.run(shift()))
        log = log_of(state, station)

    for text in ("STOPPED", "clone", first.label):
        assert text in stopped, text
    hwid = first.hardware_id.hex()
    assert [m.event for m in log if m.hardware_id == hwid] == ["provisioned", "failed", "acknowledge"]
    (ack,) = [m for m in log if m.event == "acknowledge"]
    assert ack.operator == "carol" and ack.fixture == 1 and ack.serial == first.label
    assert "clone" in (ack.detail or "") and "quarantined" in (ack.detail or "")
    assert len([m for m in log if m.event == "provisioned"]) == 4  # both fixtures finished their good devices


def test_the_label_command_says_printed_then_reprint(world: World, tmp_path: Path) -> None:
    from vault.cli._record import label_units

    state = tmp_path / "state"
    with world.station(state, operator="alice") as station:
        station.load(world.bundle_path, world.policy)
        outcome = station.provision(device(), fixture=1)
        spec = LabelSpec(output=tmp_path / "labels")
        label_units(station, spec, [outcome.serial], as_json=True)
        label_units(station, spec, [outcome.serial], as_json=True)
        log = log_of(state, station)
    details = [m.detail or "" for m in log if m.event == "label"]
    assert len(details) == 2
    assert details[0].startswith("printed: ") and details[1].startswith("reprint: ")


def test_a_new_reel_scanned_at_the_console_is_in_force_and_a_wrong_code_is_one_line(
    world: World, tmp_path: Path
) -> None:
    runs = [FixtureRun(1, Scripted([]))]
    with world.station(tmp_path / "state") as station:
        station.load(world.bundle_path, world.policy)
        station.declare_components({"mcu": (r"L[0-9]{4}[A-Z]", "L2311A")})
        app = make_console(station, runs, adapters={1: "simulated"}, labels=None, label_source="adapter",
                           operators=["bob"], supervisors=["carol"], evidence=None, export_warning_hours=1)  # fmt: skip

        async def scan() -> None:
            async with app.run_test(size=(120, 40)) as pilot:
                await pilot.press("f6")
                await pilot.pause()
                await pilot.press(*"mcu 2312B", "enter")
                await until(pilot, lambda: any("does not match" in m for m in app.messages), "the refusal")
                await pilot.press("f6")
                await pilot.pause()
                await pilot.press(*"mcu L2312B", "enter")
                await until(pilot, lambda: any("in force" in m for m in app.messages), "the new lot")
                await pilot.pause()
                app._refresh_top()
                assert "lots mcu L2312B" in str(app.query_one("#top", Static).render())

        asyncio.run(scan())
        assert station.lots() == {"mcu": "L2312B"}
    refused = [m for m in app.messages if "does not match" in m]
    assert len(refused) == 1 and "\n" not in refused[0]
