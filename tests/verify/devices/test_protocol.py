"""The device protocol around real hardware: progress, a step's reason in the manifest, dry runs, adapter lookup."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from tests.verify.devices.test_simulated_adapter import make
from vault.errors import AdapterError, DeviceError, DeviceTimeoutError
from vault.manifest import open_manifest
from vault.verify import ImageToProgram, SimulatedDevice, Station
from vault.verify.devices import installed_adapters, load_adapter


def last_manifest(station: Station):  # type: ignore[no-untyped-def]
    trusted = {station.enrolled.signing.key_id: station.enrolled.signing.public_key}
    row = station.state.read().execute("SELECT envelope FROM log ORDER BY sequence DESC LIMIT 1").fetchone()
    return open_manifest(bytes(row[0]), trusted)


def test_progress_is_reported_as_the_adapter_takes_each_chunk(station: Station) -> None:
    seen: list[tuple[str, int, int]] = []
    station.provision(SimulatedDevice(label="SN-P1"), label="SN-P1", fixture=1, progress=lambda *a: seen.append(a))
    by_image: dict[str, list[int]] = {}
    for name, taken, total in seen:
        by_image.setdefault(name, []).append(taken)
        assert 0 < taken <= total
    assert set(by_image) == {i.name for i in station.release.images}
    for image in station.release.images:
        assert by_image[image.name] == sorted(by_image[image.name])
        assert by_image[image.name][-1] == image.length


class Hangs(SimulatedDevice):
    """A device that stops answering while it is being programmed; its adapter gives up after the timeout."""

    def program(self, image: ImageToProgram, chunks: Iterable[bytes]) -> None:
        next(iter(chunks))
        raise DeviceTimeoutError(f"no answer from the device within 5 s while writing '{image.name}'")


def test_a_step_that_times_out_fails_the_unit_with_its_reason_and_keeps_the_count(station: Station) -> None:
    used = station.status().releases[0].used
    with pytest.raises(DeviceTimeoutError):
        station.provision(Hangs(label="SN-H1"), label="SN-H1", fixture=3)
    manifest = last_manifest(station)
    assert (manifest.event, manifest.failed_step, manifest.fixture) == ("failed", "program", 3)
    assert manifest.detail == "no answer from the device within 5 s while writing 'app.bin'"
    assert station.status().releases[0].used == used + 1
    assert station.provision(SimulatedDevice(label="SN-H2"), label="SN-H2", fixture=3).event == "provisioned"


class Refuses(SimulatedDevice):
    def lock(self) -> None:
        raise DeviceError("eFuse JTAG_DISABLE did not read back as burned")


def test_a_device_error_s_message_is_the_manifest_s_detail(station: Station) -> None:
    with pytest.raises(DeviceError):
        station.provision(Refuses(label="SN-R1"), label="SN-R1", fixture=1)
    manifest = last_manifest(station)
    assert (manifest.failed_step, manifest.detail) == ("lock", "eFuse JTAG_DISABLE did not read back as burned")


def test_a_dry_run_device_walks_every_step_and_writes_nothing() -> None:
    device = make({}, dry_run=True).next_device()
    image = ImageToProgram("app.bin", 3, "00" * 32, {})
    device.program(image, [b"abc"])
    assert device.read_measurement(image) is None and device.flash == {}
    assert device.generate_key() and device.key is None
    device.install_certificate(b"cert")
    device.lock()
    assert device.certificate is None and not device.locked


def test_an_unknown_adapter_is_refused_naming_those_installed() -> None:
    assert {"simulated", "command"} <= set(installed_adapters())
    with pytest.raises(
        AdapterError,
        match=r"no device adapter 'esp32x' is installed \(did you mean 'esp32'\?\); installed: .*command.*simulated",
    ):
        load_adapter("esp32x")
    with pytest.raises(AdapterError, match=r"no device adapter 'zzz' is installed; installed: "):
        load_adapter("zzz")
