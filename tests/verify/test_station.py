"""The station library on real SoftHSM2 tokens: load, provision, identity, log, export."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import forget_heads
from tests.verify.conftest import World, fixed_clock
from vault import merkle
from vault.errors import (
    AllocationError,
    AlreadyProvisionedError,
    ClockError,
    CloneError,
    DeviceError,
    IdentityError,
    LabelMismatchError,
    LogError,
    StateError,
)
from vault.manifest import open_manifest
from vault.pki import verify_issued_by
from vault.verify import SimulatedDevice, Station


def manifests(station: Station) -> list:
    trusted = {station.enrolled.signing.key_id: station.enrolled.signing.public_key}
    rows = station.state.read().execute("SELECT envelope FROM log ORDER BY sequence").fetchall()
    return [open_manifest(bytes(r[0]), trusted) for r in rows]


def test_provision_issues_a_chained_certificate_and_a_signed_manifest(world: World, station: Station) -> None:
    device = SimulatedDevice(label="SN-0001")
    outcome = station.provision(device, label="SN-0001", fixture=2)
    assert outcome.event == "provisioned" and outcome.serial == "SN-0001" and outcome.unit == 1
    assert device.locked and device.certificate is not None and device.key is not None
    certificate = outcome.certificate
    assert certificate is not None
    verify_issued_by(certificate, station.enrolled.issuing_ca.public_key)
    assert certificate.public_key().public_numbers() == device.key.public_key().public_numbers()
    (manifest,) = manifests(station)
    assert manifest.event == "provisioned" and manifest.fixture == 2 and manifest.sequence == 0
    assert manifest.hardware_id == device.hardware_id.hex() and manifest.serial == "SN-0001"
    assert [(i.name, i.measurement == i.sha256) for i in manifest.images] == [("app.bin", True), ("config.bin", True)]
    assert manifest.certificate_serial is not None and int(manifest.certificate_serial, 16) == certificate.serial_number
    assert manifest.keys["issuing_ca"] == station.enrolled.issuing_ca.key_id
    assert station.status().releases[0].used == 1 and station.status().releases[0].left == 19


def test_allocation_is_never_exceeded_and_a_reload_keeps_the_count(world: World, tmp_path: Path) -> None:
    bundle = world.bundle(allocation="{station-1: 3}")
    with world.station(tmp_path / "s") as station:
        station.load(bundle, world.policy)
        for _ in range(3):
            station.provision(SimulatedDevice())
    with world.station(tmp_path / "s") as station:
        assert station.load(bundle, world.policy).left == 0
        device = SimulatedDevice()
        with pytest.raises(AllocationError, match="used up"):
            station.provision(device)
        assert device.flash == {}  # the device was never touched
        assert [m.failed_step for m in manifests(station)][-1] == "allocation"


def test_label_swap_stops_the_unit_and_is_logged(station: Station) -> None:
    first = SimulatedDevice(label="SN-1")
    station.provision(first, label="SN-1")
    second = SimulatedDevice(label="SN-2")
    with pytest.raises(LabelMismatchError, match="belongs to device"):
        station.provision(second, label="SN-1")  # the first device's label on the second
    assert second.flash == {}
    assert manifests(station)[-1].event == "label-mismatch"
    assert station.status().releases[0].used == 1  # a stopped unit uses no count


def test_known_device_needs_rework_and_keeps_its_identity(station: Station) -> None:
    device = SimulatedDevice(label="SN-7")
    station.provision(device, label="SN-7")
    with pytest.raises(AlreadyProvisionedError, match="declare a rework"):
        station.provision(device, label="SN-7")
    device.unlock_for_rework()
    outcome = station.provision(device, label="SN-7", rework=True)
    assert outcome.event == "rework" and outcome.unit == 1 and outcome.serial == "SN-7"
    assert station.status().releases[0].used == 1  # the same device holds the same unit
    with pytest.raises(LabelMismatchError, match="its label reads"):
        station.provision(device, label="SN-8", rework=True)
    with pytest.raises(IdentityError, match="never provisioned"):
        station.provision(SimulatedDevice(), rework=True)


def test_a_second_device_with_a_known_hardware_id_and_another_key_is_a_clone(station: Station) -> None:
    original = SimulatedDevice(label="SN-9")
    station.provision(original, label="SN-9")
    clone = SimulatedDevice(original.hardware_id, label="SN-9")
    with pytest.raises(CloneError, match="clone"):
        station.provision(clone, label="SN-9", rework=True)
    assert clone.certificate is None
    assert manifests(station)[-1].failed_step == "identity"
    # a device key already bound to another hardware id is a clone too
    copy = SimulatedDevice()
    copy.key = original.key
    with pytest.raises(CloneError, match="already belongs"):
        station.provision(copy)


def test_a_failing_step_is_recorded_and_the_unit_stays_counted(station: Station) -> None:
    with pytest.raises(DeviceError, match="fails at program"):
        station.provision(SimulatedDevice(fail_at="program"), fixture=3)
    failed = manifests(station)[-1]
    assert failed.event == "failed" and failed.failed_step == "program" and failed.unit == 1
    with pytest.raises(DeviceError, match="reads back"):
        station.provision(SimulatedDevice(flip_flash=True))
    assert manifests(station)[-1].failed_step == "verify"
    assert station.status().releases[0].used == 2
    with pytest.raises(DeviceError, match="fails at lock"):
        station.provision(SimulatedDevice(fail_at="lock"))
    locked = manifests(station)[-1]
    assert locked.failed_step == "lock" and [i.name for i in locked.images] == ["app.bin", "config.bin"]


def test_scrap_ends_a_device(station: Station) -> None:
    device = SimulatedDevice()
    station.provision(device)
    station.scrap(device.hardware_id, reason="cracked housing")
    device.unlock_for_rework()
    with pytest.raises(IdentityError, match="scrapped"):
        station.provision(device, rework=True)
    with pytest.raises(IdentityError, match="not known"):
        station.scrap(b"\x01\x02", reason="never seen")


def test_clock_behind_the_log_is_refused_unless_break_glass(world: World, tmp_path: Path) -> None:
    with world.station(tmp_path / "s", clock=fixed_clock("2027-01-02T00:00:00Z")) as station:
        station.load(world.bundle_path, world.policy)
        station.provision(SimulatedDevice())
    with world.station(tmp_path / "s", clock=fixed_clock("2027-01-01T00:00:00Z")) as station:
        station.load(world.bundle_path, world.policy)
        with pytest.raises(ClockError, match="earlier than the last log entry"):
            station.provision(SimulatedDevice())
        station.provision(SimulatedDevice(), break_glass="RTC battery replaced; time confirmed by supervisor")
        events = [m.event for m in manifests(station)]
        assert events == ["provisioned", "break-glass", "provisioned"]
        times = [m.time for m in manifests(station)]
        assert times == sorted(times)  # held at the last entry, never going back
        assert "held at" in manifests(station)[-1].clock


def test_state_folder_is_pinned_to_its_station(world: World, tmp_path: Path) -> None:
    with world.station(tmp_path / "s"):
        pass
    with pytest.raises(StateError, match="another station id"):
        world.station(tmp_path / "s", "station-2").__enter__()


def test_the_log_verifies_and_a_rewritten_or_truncated_log_fails(world: World, tmp_path: Path) -> None:
    with world.station(tmp_path / "s") as station:
        station.load(world.bundle_path, world.policy)
        for _ in range(5):
            station.provision(SimulatedDevice())
        size, root = station.verify_log()
        assert size == 5
        leaves = [bytes(r[0]) for r in station.state.read().execute("SELECT leaf_hash FROM log ORDER BY sequence")]
        assert merkle.root_from_leaf_hashes(leaves) == (5, root)
        first = station.export(tmp_path / "evidence")
        assert (first.from_size, first.to_size) == (0, 5)
        station.provision(SimulatedDevice())
    db = sqlite3.connect(tmp_path / "s" / "station.sqlite")
    db.execute("DELETE FROM log WHERE sequence >= 4")
    db.commit()
    with pytest.raises(StateError, match="is behind the station token.*6 log entries"):
        world.station(tmp_path / "s").__enter__()  # the token's head names 6 entries
    forget_heads(world.tokens["station-1"])  # an insider who also destroyed the token's head...
    with world.station(tmp_path / "s") as station:  # ...is still caught by the last export's checkpoint
        with pytest.raises(LogError, match="truncated"):
            station.verify_log()
        with pytest.raises(LogError, match="truncated"):
            station.export(tmp_path / "evidence")
    db.execute("UPDATE log SET envelope = (SELECT envelope FROM log WHERE sequence = 0) WHERE sequence = 1")
    db.commit()
    with world.station(tmp_path / "s") as station, pytest.raises(LogError, match="rewritten"):
        station.verify_log()


def test_export_is_written_once_read_only_and_chains_its_checkpoints(world: World, tmp_path: Path) -> None:
    with world.station(tmp_path / "s") as station:
        station.load(world.bundle_path, world.policy)
        station.provision(SimulatedDevice())
        first = station.export(tmp_path / "evidence")
        station.provision(SimulatedDevice())
        station.provision(SimulatedDevice())
        second = station.export(tmp_path / "evidence")
    assert (second.sequence, second.from_size, second.to_size) == (2, 1, 3)
    assert first.path != second.path and first.path.stat().st_mode & 0o777 == 0o444


def test_key_is_generated_on_the_device_never_on_the_station(station: Station) -> None:
    device = SimulatedDevice()
    station.provision(device)
    assert isinstance(device.key, ec.EllipticCurvePrivateKey)  # the simulated device holds it; the station saw a CSR
