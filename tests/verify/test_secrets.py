"""Per-device secrets end to end on real tokens: drawn and sealed at the station, installed, exported
sealed, opened only for audited devices; and component lots from the station to the audit."""

from __future__ import annotations

import base64
import csv
import dataclasses
import json
import os
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.cli.test_station_config import STAND_IN, command_fixture, config, load
from tests.cli.test_station_config import manifests as station_manifests
from tests.cli.test_token_cli import assert_one_line_error, run
from tests.conftest import forget_heads
from tests.verify.conftest import World
from vault.audit import audit
from vault.cli import cli
from vault.errors import DeviceError, InputError, PolicyError
from vault.manifest import Manifest, open_manifest
from vault.secrets import SecretsExport, export_secrets
from vault.token import format_uri, open_token
from vault.verify import SimulatedDevice, Station
from vault.verify._recover import recover_state
from vault.verify._station import _check_secrets_recipient

PSK = "nvs:psk"
STORAGE = "otp:3"


@pytest.fixture(scope="module")
def sworld(softhsm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> World:
    """An enrolled world whose policy names a secrets recipient, and whose bundle declares two secrets."""
    return World(tmp_path_factory.mktemp("secrets-world"), secrets_recipient=True)


@pytest.fixture
def station(sworld: World, tmp_path: Path) -> Iterator[Station]:
    for name in ("station-1", "station-2"):
        forget_heads(sworld.tokens[name])
    with sworld.station(tmp_path / "state") as opened:
        opened.load(sworld.bundle_path, sworld.policy)
        yield opened


def manifests(station: Station) -> list[Manifest]:
    trusted = {station.enrolled.signing.key_id: station.enrolled.signing.public_key}
    rows = station.state.read().execute("SELECT envelope FROM log ORDER BY sequence").fetchall()
    return [open_manifest(bytes(r[0]), trusted) for r in rows]


def run_export(world: World, evidence: Path, fail_on: str = "high") -> SecretsExport:
    with open_token(world.tokens["auditor"]) as a, open_token(world.tokens["backend"]) as b:
        return export_secrets(
            sorted(evidence.glob("*.vault-evidence")),
            policy=world.policy,
            root_certificate=world.root_cert,
            bundle_path=world.bundle_path,
            auditor=a.key(label="auditor-decrypt"),
            recipient=b.key(label="secrets-decrypt"),
            fail_on=fail_on,
            workers=1,
        )


def spellings(secret: bytes) -> list[bytes]:
    """The ways a leaked secret could be written down: raw, hex (both cases), base64 (padded or not)."""
    b64 = base64.b64encode(secret)
    return [secret, secret.hex().encode(), secret.hex().upper().encode(), b64, b64.rstrip(b"="),
            base64.urlsafe_b64encode(secret).rstrip(b"=")]  # fmt: skip


def test_installed_secrets_are_the_backend_rows_and_no_plaintext_is_kept(
    sworld: World, station: Station, tmp_path: Path
) -> None:
    devices = [SimulatedDevice(label=f"SN-S{i}") for i in range(3)]
    for device in devices:
        station.provision(device, label=device.label)
    evidence = tmp_path / "evidence"
    station.export(evidence)

    for device in devices:  # each device holds its own secrets, of the declared lengths
        assert sorted(device.secrets) == [PSK, STORAGE]
        assert len(device.secrets[PSK]) == 32 and len(device.secrets[STORAGE]) == 32
    assert len({d.secrets[PSK] for d in devices}) == 3
    for m in manifests(station):  # the manifest records each secret sealed, installed, to the recipient
        assert [(s.name, s.kind, s.installed) for s in m.secrets] == [
            ("backend-psk", "psk-256", True),
            ("storage-key", "aes-256", True),
        ]

    result = run_export(sworld, evidence)
    rows = {(r.hardware_id, r.secret_name): r for r in result.rows}
    assert len(rows) == 6 and not result.refused and result.devices == 3
    for device in devices:
        psk = rows[(device.hardware_id.hex(), "backend-psk")]
        assert psk.serial == device.label and bytes.fromhex(psk.secret_hex) == device.secrets[PSK]
        assert bytes.fromhex(rows[(device.hardware_id.hex(), "storage-key")].secret_hex) == device.secrets[STORAGE]

    # no secret, in any spelling, in any file under the station's state or evidence folders
    files = [p for folder in (tmp_path / "state", evidence) for p in folder.rglob("*") if p.is_file()]
    assert len(files) >= 3
    for path in files:
        data = path.read_bytes()
        for device in devices:
            for secret in device.secrets.values():
                assert not any(s in data for s in spellings(secret)), f"a secret is in {path}"


def test_the_cli_writes_0600_files_and_prints_secrets_only_when_asked(
    sworld: World, station: Station, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    device = SimulatedDevice(label="SN-CLI1")
    station.provision(device, label="SN-CLI1")
    evidence = tmp_path / "evidence"
    station.export(evidence)
    base = ["secrets", "export", str(evidence), "--root-cert", str(sworld.root_cert_path),
            "--policy", str(sworld.policy_path), "--bundle", str(sworld.bundle_path),
            "--auditor-token", format_uri(sworld.tokens["auditor"]), "--token", format_uri(sworld.tokens["backend"]),
            "--workers", "1"]  # fmt: skip
    out = tmp_path / "backend"
    result = CliRunner().invoke(cli, [*base, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert device.secrets[PSK].hex() not in result.stdout
    for name in ("backend-secrets.csv", "backend-secrets.json", "refused-devices.csv"):
        assert oct((out / name).stat().st_mode & 0o777) == "0o600"
    with (out / "backend-secrets.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["serial", "hardware_id", "secret_name", "secret_kind", "secret_hex"]
    assert {(r["secret_name"], r["secret_hex"]) for r in rows} == {
        ("backend-psk", device.secrets[PSK].hex()),
        ("storage-key", device.secrets[STORAGE].hex()),
    }
    code, _, err = run(capsys, *base, "--out", str(out))  # never over existing files
    assert code == 1
    assert_one_line_error(err, "exists; vault does not write over files")
    printed = CliRunner().invoke(cli, [*base, "--stdout"])
    assert printed.exit_code == 0 and device.secrets[PSK].hex() in printed.stdout
    code, _, err = run(capsys, *base)
    assert code == 1
    assert_one_line_error(err, "give --out FOLDER")
    code, _, err = run(capsys, *base, "--stdout", "--out", str(tmp_path / "both"))
    assert code == 1
    assert_one_line_error(err, "give either --out FOLDER or --stdout, not both")
    assert not (tmp_path / "both").exists()


def test_an_audit_that_fails_without_naming_a_device_still_exits_3(
    sworld: World, station: Station, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    station.provision(SimulatedDevice(label="SN-CUT1"), label="SN-CUT1")
    evidence = tmp_path / "evidence"
    station.export(evidence)
    (export,) = evidence.glob("*.vault-evidence")
    export.write_bytes(export.read_bytes()[:3000])  # truncated on its way: nothing in it can be read
    code, _, err = run(capsys, "secrets", "export", str(evidence), "--root-cert", str(sworld.root_cert_path),
                       "--policy", str(sworld.policy_path), "--bundle", str(sworld.bundle_path),
                       "--auditor-token", format_uri(sworld.tokens["auditor"]),
                       "--token", format_uri(sworld.tokens["backend"]), "--workers", "1",
                       "--out", str(tmp_path / "backend"))  # fmt: skip
    assert code == 3, err
    assert "FAIL at high" in err and "exported     0 secret(s)" in err
    assert "FAIL         1 finding(s) at or above high" in err and "Traceback" not in err


def test_an_export_interrupted_while_writing_leaves_no_file_and_runs_again(
    sworld: World, station: Station, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vault.secrets._export as export_module

    station.provision(SimulatedDevice(label="SN-INT1"), label="SN-INT1")
    evidence = tmp_path / "evidence"
    station.export(evidence)
    result = run_export(sworld, evidence)
    real_write, calls = export_module.write_new, []

    def interrupted(*args: Any, **kwargs: Any) -> Path:  # Ctrl-C once the first file is written
        calls.append(args[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_write(*args, **kwargs)

    out = tmp_path / "backend"
    monkeypatch.setattr(export_module, "write_new", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_module.write_export(result, out)
    assert not out.exists()  # neither the first file nor the folder this export made
    out.mkdir()
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        export_module.write_export(result, out)
    assert out.is_dir() and not list(out.iterdir())  # a folder that was there stays, empty
    monkeypatch.setattr(export_module, "write_new", real_write)
    written = export_module.write_export(result, out)  # the same export completes
    assert sorted(p.name for p in written) == sorted(p.name for p in out.iterdir())


def test_a_unit_that_stops_before_installing_records_its_secrets_as_never_installed(station: Station) -> None:
    device = SimulatedDevice(label="SN-F1", fail_at="program")
    with pytest.raises(DeviceError):
        station.provision(device, label="SN-F1")
    (failed,) = manifests(station)
    assert failed.event == "failed" and failed.failed_step == "program"
    assert [(s.name, s.installed) for s in failed.secrets] == [("backend-psk", False), ("storage-key", False)]
    assert device.secrets == {}
    sealed = station.state.read().execute("SELECT name FROM sealed_secrets ORDER BY name").fetchall()
    assert [r[0] for r in sealed] == ["backend-psk", "storage-key"]  # kept sealed, recorded as unused


class NoSecretsDevice(SimulatedDevice):
    """A device whose adapter has no way to install a secret."""

    def __getattribute__(self, name: str) -> Any:
        if name == "install_secret":
            raise AttributeError(name)
        return super().__getattribute__(name)


def test_an_adapter_that_cannot_install_fails_the_unit_at_that_step(station: Station) -> None:
    device = NoSecretsDevice(label="SN-N1")
    with pytest.raises(DeviceError, match="cannot install secrets") as raised:
        station.provision(device, label="SN-N1")
    assert "\n" not in str(raised.value)
    (failed,) = manifests(station)
    assert failed.failed_step == "install-secret" and not device.locked
    assert [s.installed for s in failed.secrets] == [False, False]


def test_a_device_the_audit_flags_is_refused_and_listed(sworld: World, station: Station, tmp_path: Path) -> None:
    good, reworked = SimulatedDevice(label="SN-G1"), SimulatedDevice(label="SN-R1")
    station.provision(good, label="SN-G1")
    station.provision(reworked, label="SN-R1")
    for _ in range(4):  # more than the audit's --max-reworks 3: rework-repeated, medium
        reworked.unlock_for_rework()
        station.provision(reworked, label="SN-R1", rework=True)
    evidence = tmp_path / "evidence"
    station.export(evidence)

    strict = run_export(sworld, evidence, fail_on="medium")
    assert [(d.serial, code) for d, code in strict.refused] == [("SN-R1", "rework-repeated")]
    assert {r.serial for r in strict.rows} == {"SN-G1"}
    lenient = run_export(sworld, evidence, fail_on="high")  # the finding is below high: both pass
    rows = {(r.serial, r.secret_name): r.secret_hex for r in lenient.rows}
    assert rows[("SN-R1", "backend-psk")] == reworked.secrets[PSK].hex()  # the last rework's secret


def test_lots_are_recorded_per_unit_and_figured_per_lot_by_the_audit(
    sworld: World, station: Station, tmp_path: Path
) -> None:
    station.declare_components({"mcu": (r"L[0-9]{4}[A-Z]", "L2311A"), "antenna": (r"R-[0-9]{4}", None)})
    station.provision(SimulatedDevice(label="SN-L1"), label="SN-L1")
    with pytest.raises(InputError, match="does not match mcu's lot pattern"):
        station.set_lot("mcu", "2312B")
    with pytest.raises(InputError, match="no component 'pcb'"):
        station.set_lot("pcb", "P1")
    station.set_lot("mcu", "L2312B")
    station.set_lot("antenna", "R-0007")
    station.provision(SimulatedDevice(label="SN-L2"), label="SN-L2")
    with pytest.raises(DeviceError):
        station.provision(SimulatedDevice(label="SN-L3", fail_at="verify"), label="SN-L3")
    lots = [m.lots for m in manifests(station)]
    assert lots == [{"mcu": "L2311A"}, {"antenna": "R-0007", "mcu": "L2312B"}, {"antenna": "R-0007", "mcu": "L2312B"}]

    evidence = tmp_path / "evidence"
    station.export(evidence)
    with open_token(sworld.tokens["auditor"]) as a:
        report = audit(sorted(evidence.glob("*.vault-evidence")), policy=sworld.policy,
                       root_certificate=sworld.root_cert, bundle_path=sworld.bundle_path,
                       decapsulator=a.key(label="auditor-decrypt"), workers=1)  # fmt: skip
    figures = {(lot.component, lot.lot): lot for lot in report.lots}
    assert sorted(figures) == [("antenna", "R-0007"), ("mcu", "L2311A"), ("mcu", "L2312B")]
    bad = figures[("mcu", "L2312B")]
    assert (bad.quality.attempted, bad.quality.first_pass, bad.failed) == (2, 1, 1)
    assert dict(bad.quality.failures) == {"verify": 1}
    assert figures[("mcu", "L2311A")].quality.first_pass_yield == 1.0
    as_json = report.to_json_value()["lots"]
    assert {"component": "mcu", "lot": "L2312B"}.items() <= as_json[2].items()
    assert "Failures by component lot" in report.to_html()


def test_a_release_with_secrets_needs_a_recipient_in_the_policy(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The shared world's policy names no secrets recipient: the build is refused in one line."""
    description = tmp_path / "release.yaml"
    images = tmp_path / "images"
    images.mkdir()
    (images / "app.bin").write_bytes(os.urandom(64))
    description.write_text(
        "product: example-sensor\nversion: 9.0.0\nsecurity_counter: 7\nnot_before: 2026-01-01T00:00:00Z\n"
        "expires: 2099-01-01T00:00:00Z\nproduction: {total: 5, allocation: {station-1: 5}}\n"
        "images:\n  - {name: app.bin, path: images/app.bin, partition: app}\n" + World.SECRETS
    )
    code, _, err = run(capsys, "bundle", "build", str(description), "-o", str(tmp_path / "r.vbundle"),
                       "--policy", str(world.policy_path), "--root-cert", str(world.root_cert_path))  # fmt: skip
    assert code == 1
    assert_one_line_error(err, "names no secrets recipient")
    assert not (tmp_path / "r.vbundle").exists()


def test_an_unknown_secret_kind_is_refused_at_build_with_its_line(
    sworld: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    description = tmp_path / "release.yaml"
    description.write_text(
        "product: example-sensor\nversion: 9.0.0\nsecurity_counter: 7\nnot_before: 2026-01-01T00:00:00Z\n"
        "expires: 2099-01-01T00:00:00Z\nproduction: {total: 5, allocation: {station-1: 5}}\n"
        "images:\n  - {name: app.bin, path: images/app.bin, partition: app}\n"
        "secrets:\n  - {name: backend-psk, kind: psk-128, target: 'nvs:psk'}\n"
    )
    code, _, err = run(capsys, "bundle", "build", str(description), "-o", str(tmp_path / "r.vbundle"),
                       "--policy", str(sworld.policy_path), "--root-cert", str(sworld.root_cert_path))  # fmt: skip
    assert code == 1
    assert_one_line_error(err, "release.yaml:10: secrets[0].kind")
    assert "psk-128" in err and "psk-256" in err


def test_a_station_refuses_a_release_whose_recipient_is_not_the_policys(station: Station) -> None:
    loaded = station.release
    with pytest.raises(PolicyError, match="names no secrets recipient"):
        _check_secrets_recipient(loaded.release, dataclasses.replace(loaded.policy, secrets_recipient=None))
    other = dataclasses.replace(loaded.release, secrets_recipient="ab" * 32)
    with pytest.raises(PolicyError, match="build the release again"):
        _check_secrets_recipient(other, loaded.policy)


# --- the command adapter, the configuration's components, a recovered folder ------------------------


def test_the_command_adapter_hands_each_secret_through_a_fifo_and_without_the_step_fails_the_unit(
    sworld: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tool = f"[{sys.executable}, {STAND_IN}"
    install = f"{{run: {tool}, put-secret, --port, '{{port}}', --name, '{{secret_target}}', '{{secret}}']}}"
    fixtures = command_fixture(1, tmp_path / "port-1", **{"install-secret": install})
    fixtures += command_fixture(2, tmp_path / "port-2")  # no install-secret step
    for name in ("station-1", "station-2"):
        forget_heads(sworld.tokens[name])
    path = config(sworld, tmp_path, fixtures)
    load(capsys, sworld, path)
    code, _, err = run(capsys, "station", "provision", "--config", str(path), "--count", "2", "--operator", "alice")
    assert code == 0, err
    logged = {m["fixture"]: m for m in station_manifests(tmp_path / "state")}
    assert logged[1]["event"] == "provisioned"
    assert [s["installed"] for s in logged[1]["secrets"]] == [True, True]  # type: ignore[index]
    assert logged[2]["event"] == "failed" and logged[2]["failed_step"] == "install-secret"
    assert "has no install-secret step" in str(logged[2]["detail"])
    assert [s["installed"] for s in logged[2]["secrets"]] == [False, False]  # type: ignore[index]
    held = json.loads((tmp_path / "port-1" / "device-secrets.json").read_text())
    uid = json.loads((tmp_path / "port-1" / "device.json").read_text())["uid"]

    code, _, err = run(capsys, "station", "export", "--config", str(path))
    assert code == 0, err
    result = run_export(sworld, tmp_path / "evidence")
    rows = {(r.hardware_id, r.secret_name): r.secret_hex for r in result.rows}
    assert rows == {(uid, "backend-psk"): held[PSK], (uid, "storage-key"): held[STORAGE]}


def test_components_and_lots_from_the_configuration_and_the_command_line(
    sworld: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("station-1", "station-2"):
        forget_heads(sworld.tokens[name])
    simulated = "  - {slot: 1, adapter: simulated}\n"
    bad = config(sworld, tmp_path, simulated, extra="components:\n  mcu: {pattern: 'L[0-9', lot: L1}\n")
    code, _, err = run(capsys, "station", "status", "--config", str(bad))
    assert code == 1
    assert_one_line_error(err, "station.yaml:11: components.mcu.pattern: not a regular expression")
    bad.write_text(bad.read_text().replace("pattern: 'L[0-9'", "pattern: 'L[0-9]{4}'"))
    code, _, err = run(capsys, "station", "status", "--config", str(bad))
    assert code == 1
    assert_one_line_error(err, "station.yaml:11: components.mcu.lot: lot 'L1' does not match the pattern")

    path = config(sworld, tmp_path, simulated, extra="components:\n  mcu: {pattern: 'L[0-9]{4}', lot: L0001}\n")
    load(capsys, sworld, path)
    code, _, err = run(capsys, "station", "lot", "set", "mcu", "X9", "--config", str(path))
    assert code == 1
    assert_one_line_error(err, "lot code 'X9' does not match mcu's lot pattern 'L[0-9]{4}'")
    assert run(capsys, "station", "provision", "--config", str(path), "--count", "1", "--operator", "bob")[0] == 0
    code, out, err = run(capsys, "station", "lot", "set", "mcu", "L0002", "--config", str(path))
    assert code == 0 and "in force     mcu L0002" in out, err
    assert run(capsys, "station", "provision", "--config", str(path), "--count", "1", "--operator", "bob")[0] == 0
    logged = station_manifests(tmp_path / "state")
    assert [m["lots"] for m in logged] == [{"mcu": "L0001"}, {"mcu": "L0002"}]
    code, out, err = run(capsys, "station", "record", str(logged[1]["serial"]), "--config", str(path))
    assert code == 0, err
    assert "lots mcu L0002" in out and "secret backend-psk (psk-256) installed, sealed" in out


def test_a_recovered_state_folder_keeps_the_sealed_secrets(sworld: World, station: Station, tmp_path: Path) -> None:
    for i in range(2):
        station.provision(SimulatedDevice(label=f"SN-RC{i}"), label=f"SN-RC{i}")
    with pytest.raises(DeviceError):
        station.provision(SimulatedDevice(label="SN-RCF", fail_at="verify"), label="SN-RCF")
    station.export(tmp_path / "evidence")
    before = station.state.read().execute("SELECT * FROM sealed_secrets ORDER BY sequence, name").fetchall()
    assert len(before) == 6
    recover_state(tmp_path / "recovered", token=sworld.tokens["station-1"], station_id="station-1",
                  root=sworld.root_cert, sources=[tmp_path / "evidence"])  # fmt: skip
    with sqlite3.connect(tmp_path / "recovered" / "station.sqlite") as db:
        after = db.execute("SELECT * FROM sealed_secrets ORDER BY sequence, name").fetchall()
    assert after == before


def test_the_wrong_recipient_token_is_refused_before_anything_is_opened(
    sworld: World, station: Station, tmp_path: Path
) -> None:
    station.provision(SimulatedDevice(label="SN-W1"), label="SN-W1")
    station.export(tmp_path / "evidence")
    with open_token(sworld.tokens["auditor"]) as a, pytest.raises(InputError, match="is not trust policy v5's secrets"):
        export_secrets(sorted((tmp_path / "evidence").glob("*.vault-evidence")), policy=sworld.policy,
                       root_certificate=sworld.root_cert, bundle_path=sworld.bundle_path,
                       auditor=a.key(label="auditor-decrypt"), recipient=a.key(label="auditor-decrypt"))  # fmt: skip
