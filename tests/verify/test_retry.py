"""A retry is not a rework: a new attempt on a failed device keeps its unit and is recorded as a retry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.test_token_cli import run
from tests.verify.conftest import World
from vault.errors import AlreadyProvisionedError, DeviceError, IdentityError
from vault.manifest import Manifest, open_manifest
from vault.token import format_uri
from vault.verify import ImageToProgram, SimulatedDevice, Station

from .test_recover import recover


def manifests(station: Station) -> list[Manifest]:
    trusted = {station.enrolled.signing.key_id: station.enrolled.signing.public_key}
    rows = station.state.read().execute("SELECT envelope FROM log ORDER BY sequence").fetchall()
    return [open_manifest(bytes(envelope), trusted) for (envelope,) in rows]


def used(station: Station) -> int:
    return station.status().releases[0].used


def test_a_failed_device_is_retried_without_a_flag_under_its_own_unit(station: Station) -> None:
    device = SimulatedDevice(label="SN-R1", fail_at="program")
    with pytest.raises(DeviceError, match="fails at program"):
        station.provision(device, label="SN-R1", fixture=2)
    device.fail_at = "lock"  # the second attempt fails too, later
    with pytest.raises(DeviceError, match="fails at lock"):
        station.provision(device, label="SN-R1", fixture=2)
    device.unlock_for_rework()
    device.fail_at = None
    outcome = station.provision(device, label="SN-R1", fixture=3)
    assert (outcome.event, outcome.unit, outcome.serial) == ("retry", 1, "SN-R1")
    assert used(station) == 1  # three attempts, one unit
    logged = manifests(station)
    assert [(m.event, m.unit, m.failed_step) for m in logged] == [
        ("failed", 1, "program"),
        ("failed", 1, "lock"),
        ("retry", 1, None),
    ]
    assert logged[-1].certificate_serial is not None and logged[-1].device_key_id is not None
    # once provisioned, it is done again only as a declared rework, which keeps the unit
    with pytest.raises(AlreadyProvisionedError, match="declare a rework"):
        station.provision(device, label="SN-R1")
    device.unlock_for_rework()
    reworked = station.provision(device, label="SN-R1", rework=True)
    assert (reworked.event, reworked.unit) == ("rework", 1) and used(station) == 1


def test_a_rework_declared_for_a_device_that_only_failed_is_recorded_as_a_retry(station: Station) -> None:
    device = SimulatedDevice(fail_at="verify")
    with pytest.raises(DeviceError):
        station.provision(device)
    device.fail_at = None
    assert station.provision(device, rework=True).event == "retry"
    assert [m.event for m in manifests(station)] == ["failed", "retry"]


def test_a_rework_of_an_unknown_device_and_a_retry_of_a_scrapped_one_are_refused(station: Station) -> None:
    with pytest.raises(IdentityError, match="never provisioned"):
        station.provision(SimulatedDevice(), rework=True)
    failed = SimulatedDevice(fail_at="program")
    with pytest.raises(DeviceError):
        station.provision(failed)
    station.scrap(failed.hardware_id, reason="bent pins")
    failed.fail_at = None
    with pytest.raises(IdentityError, match="scrapped"):
        station.provision(failed)
    assert [m.event for m in manifests(station)] == ["failed", "failed", "scrap", "failed"]
    assert used(station) == 1


class PowerCut(SimulatedDevice):
    def program(self, image: ImageToProgram, chunks: object) -> None:
        raise KeyboardInterrupt


def test_the_retry_after_a_power_cut_keeps_the_interrupted_unit(world: World, tmp_path: Path) -> None:
    state = tmp_path / "state"
    cut = PowerCut()
    with world.station(state) as station:
        station.load(world.bundle_path, world.policy)
        station.provision(SimulatedDevice())
        with pytest.raises(KeyboardInterrupt):
            station.provision(cut, label="SN-CUT")
    with world.station(state) as station:  # the unit left open is closed as interrupted on opening
        station.load(world.bundle_path, world.policy)
        again = SimulatedDevice(cut.hardware_id)
        outcome = station.provision(again, label="SN-CUT")
        assert (outcome.event, outcome.unit, outcome.serial) == ("retry", 2, "SN-CUT")
        assert used(station) == 2
        assert [(m.event, m.unit, m.failed_step) for m in manifests(station)] == [
            ("provisioned", 1, None),
            ("failed", 2, "interrupted"),
            ("retry", 2, None),
        ]
        station.export(tmp_path / "evidence")
    # a folder recovered from the evidence knows the retried device as provisioned
    recover(world, tmp_path / "recovered", tmp_path / "evidence")
    with world.station(tmp_path / "recovered") as station:
        station.load(world.bundle_path, world.policy)
        with pytest.raises(AlreadyProvisionedError, match="'SN-CUT' \\(provisioned\\)"):
            station.provision(SimulatedDevice(cut.hardware_id), label="SN-CUT")
        assert used(station) == 2


def test_simulated_retries_from_the_command_line(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    common = ["--state", str(state), "--token", format_uri(world.tokens["station-1"]), "--station-id", "station-1"]
    common += ["--root-cert", str(world.root_cert_path)]
    code, _, err = run(
        capsys, "station", "load", "--bundle", str(world.bundle_path), "--policy", str(world.policy_path), *common
    )
    assert code == 0, err
    code, out, err = run(
        capsys, "station", "provision", "--count", "3", "--fixtures", "1", "--fail", "2:program", "--retry", "2",
        "--json", *common,
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(out)
    assert [(u["unit"], u["event"]) for u in report["units"]] == [
        (1, "provisioned"),
        (2, "failed"),
        (3, "provisioned"),
        (2, "retry"),
    ]
    assert report["events"].get("retry") == 1 and report["left"] == 20 - 3
    code, _, err = run(capsys, "station", "provision", "--count", "3", "--retry", "4", *common)
    assert code != 0 and err.strip() == "vault: error: unit 4 is not among the 3 simulated units"
