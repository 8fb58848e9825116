"""``vault station ... --config``: the station configuration, the command adapter on real processes, dry runs."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sqlite3
import sys
from pathlib import Path

import pytest

from tests.cli.test_token_cli import assert_one_line_error, run
from tests.verify import conftest as verify_conftest
from tests.verify.conftest import World
from vault.token import format_uri

world = verify_conftest.world  # the station tests' session-scoped enrolled world, shared

ROOT = Path(__file__).resolve().parents[2]
STAND_IN = ROOT / "stations" / "tools" / "stand-in-programmer"
MISBEHAVING = Path(__file__).resolve().parent / "tools" / "misbehaving-tool"


def steps(**override: str) -> str:
    """The stand-in tool's steps as YAML (each run with this Python), with some replaced."""
    tool = f"[{sys.executable}, {STAND_IN}"
    lines = {
        "wait": f"{{run: {tool}, place, --port, '{{port}}']}}",
        "read-id": f"{{run: {tool}, uid, --port, '{{port}}'], hardware-id: {{pattern: 'UID: ([0-9a-f]+)'}}}}",
        "program": f"{{run: {tool}, write, --port, '{{port}}', --name, '{{image_name}}', '{{image}}']}}",
        "verify": f"{{run: {tool}, sha256, --port, '{{port}}', --name, '{{image_name}}'], "
        "sha256: {pattern: '([0-9a-f]{64})'}}",
        "generate-key": f"{{run: {tool}, keygen, --port, '{{port}}', --out, '{{workdir}}/d.csr'], "
        "csr: {file: '{workdir}/d.csr'}}",
        "install-certificate": f"{{run: {tool}, put-cert, --port, '{{port}}', '{{certificate}}']}}",
        "lock": f"{{run: {tool}, lock, --port, '{{port}}'], dry-run: {tool}, lock, --check-only, --port, '{{port}}']}}",
    }
    lines.update(override)
    return "".join(f"        {name}: {text}\n" for name, text in lines.items() if text)


def config(world: World, folder: Path, fixtures: str, *, station_id: str = "station-1", extra: str = "") -> Path:
    path = folder / "station.yaml"
    token = format_uri(world.tokens[station_id], redact_pin=False)
    path.write_text(
        f"station: {station_id}\ntoken: \"{token}\"\nroot:\n  certificate: {world.root_cert_path}\n"
        f"state: state\nevidence: evidence\noperators: [alice, bob]\nlabel:\n  source: none\n{extra}"
        f"fixtures:\n{fixtures}"
    )
    return path


def command_fixture(slot: int, port: Path, timeouts: str = "", **override: str) -> str:
    return (f"  - slot: {slot}\n    adapter: command\n{timeouts}    options:\n      port: {port}\n      steps:\n"
            + steps(**override))  # fmt: skip


def load(capsys: pytest.CaptureFixture[str], world: World, path: Path) -> None:
    code, _, err = run(capsys, "station", "load", "--config", str(path), "--policy", str(world.policy_path),
                       "--bundle", str(world.bundle_path))  # fmt: skip
    assert code == 0, err


def manifests(state: Path) -> list[dict[str, object]]:
    with sqlite3.connect(state / "station.sqlite") as db:
        rows = db.execute("SELECT envelope FROM log ORDER BY sequence").fetchall()
    out = []
    for (envelope,) in rows:
        payload = json.loads(base64.b64decode(json.loads(bytes(envelope))["payload"]))
        out.append(payload["predicate"])
    return out


def test_four_command_fixtures_provision_units_end_to_end_and_a_bad_one_fails_alone(
    capsys: pytest.CaptureFixture[str], world: World, tmp_path: Path
) -> None:
    tool = f"[{sys.executable}, {MISBEHAVING}"
    fixtures = "".join(command_fixture(slot, tmp_path / f"port-{slot}") for slot in (1, 2, 3))
    fixtures += command_fixture(4, tmp_path / "port-4", "    timeouts: {verify: 2}\n",
                                verify=f"{{run: {tool}, hang], sha256: {{pattern: '([0-9a-f]{{64}})'}}}}")
    path = config(world, tmp_path, fixtures)
    load(capsys, world, path)
    code, out, err = run(capsys, "station", "provision", "--config", str(path), "--count", "8", "--operator",
                         "bob", "--json")  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    units = result["units"]
    assert len(units) == 8
    by_fixture: dict[int, list[str]] = {}
    for unit in units:
        by_fixture.setdefault(unit["fixture"], []).append(unit["event"])
    assert all(event == "provisioned" for slot in (1, 2, 3) for event in by_fixture.get(slot, []))
    assert set(by_fixture.get(4, [])) == {"failed"}  # the hung device failed; the fixture went on with the next
    logged = manifests(tmp_path / "state")
    hung = [m for m in logged if m["fixture"] == 4]
    assert hung and all(m["failed_step"] == "verify" and "did not finish within 2 s" in m["detail"] for m in hung)
    assert sum(1 for m in logged if m["event"] == "provisioned") == 8 - len(hung)
    assert result["left"] == 20 - 8  # every unit that reached a device, failed or not, keeps its count
    for slot in (1, 2, 3):
        assert (tmp_path / f"port-{slot}" / "device-cert.der").is_file()


@pytest.mark.parametrize(
    ("override", "detail"),
    [
        ({"lock": "{run: [TOOL, fail]}"}, "misbehaving-tool exited with status 7: Error: target voltage too low"),
        ({"read-id": "{run: [TOOL, garbage], hardware-id: {pattern: 'UID: ([0-9a-f]+)'}}"}, "no hardware-id"),
        ({"program": "{run: [TOOL, ignore-image, '{image}']}"}, "ended before it read the whole image"),
        ({"generate-key": "{run: [TOOL, garbage], csr: {file: '{workdir}/none.csr'}}"}, "wrote no csr"),
    ],
)
def test_a_tool_that_fails_fails_the_step_with_its_last_error_line(
    capsys: pytest.CaptureFixture[str], world: World, tmp_path: Path, override: dict[str, str], detail: str
) -> None:
    tool = f"{sys.executable}, {MISBEHAVING}"
    override = {step: command.replace("TOOL", tool) for step, command in override.items()}
    path = config(world, tmp_path, command_fixture(1, tmp_path / "port", **override))
    load(capsys, world, path)
    code, out, err = run(capsys, "station", "provision", "--config", str(path), "--count", "1", "--operator",
                         "alice", "--json")  # fmt: skip
    assert code == 0, err
    (unit,) = json.loads(out)["units"]
    assert unit["event"] == "failed" and detail in unit["error"]
    if "read-id" not in override:
        assert detail in manifests(tmp_path / "state")[-1]["detail"]


def test_the_tool_reads_the_image_from_the_fifo(
    capsys: pytest.CaptureFixture[str], world: World, tmp_path: Path
) -> None:
    images = [(world.images / "app.bin").read_bytes(), (world.images / "config.bin").read_bytes()]
    report = tmp_path / "reported.txt"
    program = f"{{run: [{sys.executable}, {MISBEHAVING}, sha-of-fifo, {report}, '{{image}}']}}"
    path = config(world, tmp_path, command_fixture(1, tmp_path / "port", program=program,
                                                   verify="{run: [echo, unread], sha256: {pattern: 'x'}}"))
    load(capsys, world, path)
    code, _, err = run(capsys, "station", "provision", "--config", str(path), "--count", "1", "--operator", "alice")
    assert code == 0, err
    reported = report.read_text().split()
    assert reported == ["sha256:", hashlib.sha256(images[0]).hexdigest()]  # then verify fails: one image only


def test_a_dry_run_walks_every_step_and_writes_counts_and_logs_nothing(
    capsys: pytest.CaptureFixture[str], world: World, tmp_path: Path
) -> None:
    path = config(world, tmp_path, command_fixture(1, tmp_path / "port-1") + command_fixture(2, tmp_path / "port-2"))
    load(capsys, world, path)
    code, out, err = run(capsys, "station", "provision", "--config", str(path), "--count", "2", "--operator",
                         "alice", "--dry-run", "--json")  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert [u["event"] for u in result["units"]] == ["dry-run", "dry-run"] and result["left"] == 20
    assert manifests(tmp_path / "state") == []
    for slot in (1, 2):
        device = json.loads((tmp_path / f"port-{slot}" / "device.json").read_text())
        assert device["flash"] == {} and not device["locked"]  # the writing steps had no dry-run, or a checking one
        assert not (tmp_path / f"port-{slot}" / "device-cert.der").exists()


@pytest.mark.parametrize(
    ("fixture", "extra", "message"),
    [
        ("  - slot: 1\n    adapter: esp32x\n", "", r":\d+: fixtures\[0\]\.adapter: no device adapter 'esp32x'"),
        ("  - slot: 1\n    adaptor: command\n", "", r":\d+: fixtures\[0\]: unknown field 'adaptor' \(did you mean"),
        ("lock-placeholder", "", r":\d+: fixtures\[0\]\.options\.steps\.lock\.run\[2\]: unknown placeholder \{prot\}"),
        ("no-port", "", r":\d+: fixtures\[0\]\.options\.port: the steps use \{port\}, but no port is given"),
        ("  - slot: 1\n    adapter: simulated\n  - slot: 1\n    adapter: simulated\n", "",
         r":\d+: fixtures\[1\]\.slot: slot 1 is fixtures\[0\]'s"),
        ("  - slot: 1\n    adapter: simulated\n", "clock: {source: sundial}\n", r":\d+: clock\.source: expected one"),
        ("  - slot: 1\n    adapter: simulated\n    timeouts: {flash: 3}\n", "", r":\d+: fixtures\[0\]\.timeouts"),
    ],
)
def test_a_configuration_error_is_one_line_naming_the_field_and_its_line_before_any_device(
    capsys: pytest.CaptureFixture[str], world: World, tmp_path: Path, fixture: str, extra: str, message: str
) -> None:
    port = tmp_path / "port"
    if fixture == "lock-placeholder":
        fixture = command_fixture(1, port, lock="{run: [tool, lock, '{prot}']}")
    elif fixture == "no-port":
        fixture = command_fixture(1, port).replace(f"      port: {port}\n", "")
    path = config(world, tmp_path, fixture, extra=extra)
    code, out, err = run(capsys, "station", "provision", "--config", str(path), "--count", "1", "--operator", "bob")
    assert code != 0
    assert_one_line_error(err, f"{path}:")
    assert re.search(message, err), err
    assert not port.exists() and not (tmp_path / "state").exists()  # no device, no station touched


def test_config_and_the_long_options_are_not_mixed(
    capsys: pytest.CaptureFixture[str], world: World, tmp_path: Path
) -> None:
    path = config(world, tmp_path, "  - slot: 1\n    adapter: simulated\n")
    code, _, err = run(capsys, "station", "status", "--config", str(path), "--station-id", "station-2")
    assert code != 0
    assert_one_line_error(err, "--config names the station: leave out --station-id")
    code, _, err = run(capsys, "station", "provision", "--config", str(path), "--count", "1", "--operator", "eve")
    assert code != 0
    assert_one_line_error(err, "'eve' is not allowed at this station")
