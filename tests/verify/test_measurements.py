"""Per-unit test records on real SoftHSM2 tokens: measurements, limits and calibration in the signed manifest."""

from __future__ import annotations

import math

import pytest

from tests.verify.conftest import World
from tests.verify.test_station import manifests
from vault.errors import DeviceError
from vault.verify import SimulatedDevice, Station
from vault.verify.devices import Calibration, Measurement


class MeasuringDevice(SimulatedDevice):
    """A simulated device whose test returns exactly what a test gives it (an adapter, not a mock)."""

    def __init__(self, values: list[object], coefficients: list[object] | None = None) -> None:
        super().__init__()
        self.values = values
        self.coefficients = coefficients or []

    def measurements(self) -> list[object]:  # type: ignore[override]
        return self.values

    def calibration(self) -> list[object]:  # type: ignore[override]
        return self.coefficients


def test_a_passing_unit_records_its_measurements_calibration_and_step_times(station: Station) -> None:
    device = SimulatedDevice()
    outcome = station.provision(device)
    assert outcome.event == "provisioned"
    (manifest,) = manifests(station)
    quality = manifest.quality
    assert quality is not None
    assert [(r.name, r.unit, r.lower, r.upper, r.passed, r.step) for r in quality.measurements] == [
        ("supply current", "A", 0.03, 0.06, True, "test"),
        ("boot time", "s", None, 2.0, True, "test"),
    ]
    assert [m.value for m in device.measurements()] == [r.value for r in quality.measurements]
    assert [(c.name, c.unit, c.value) for c in quality.calibration] == [
        (c.name, c.unit, c.value) for c in device.calibration()
    ]
    steps = [step for step, _ in quality.steps]
    assert steps == ["read-id", "program", "verify", "test", "generate-key", "certify", "install-certificate", "lock"]
    assert all(ms >= 0 for _, ms in quality.steps)


def test_a_limit_that_fails_fails_the_unit_at_its_step_and_the_manifest_lands(station: Station) -> None:
    device = MeasuringDevice(
        [
            Measurement("supply current", 0.031, "A", lower=0.03, upper=0.06),
            Measurement("rf power", 21.5, "dBm", lower=10.0, upper=20.0, step="rf-test"),
        ],
        [Calibration("adc gain", 1.001)],
    )
    with pytest.raises(DeviceError, match=r"rf-test: rf power = 21.5 dBm is outside its limits \[10.0, 20.0\] dBm"):
        station.provision(device)
    (manifest,) = manifests(station)
    assert manifest.event == "failed" and manifest.failed_step == "rf-test"
    assert manifest.quality is not None
    assert [(r.name, r.passed) for r in manifest.quality.measurements] == [
        ("supply current", True),
        ("rf power", False),
    ]
    assert [c.value for c in manifest.quality.calibration] == [1.001]
    assert device.key is None and device.certificate is None  # a unit that fails its test gets no key
    assert station.status().releases[0].used == 1  # the unit stays used, as for any failed step


def test_an_adapter_verdict_fails_a_unit_within_its_limits(station: Station) -> None:
    device = MeasuringDevice([Measurement("leak test", 0.2, "mbar/s", passed=False, step="leak")])
    with pytest.raises(DeviceError, match="leak: leak test = 0.2 mbar/s is outside"):
        station.provision(device)
    (manifest,) = manifests(station)
    assert manifest.failed_step == "leak"


@pytest.mark.parametrize(
    ("bad", "line"),
    [
        (Measurement("", 1.0), "test: measurement 0 has no name"),
        (
            Measurement("supply current", "high", "A"),
            "test: measurement 'supply current''s value is not a number: 'high'",
        ),
        (Measurement("boot time", math.nan, "s"), "test: measurement 'boot time''s value is not a finite number: nan"),
        (Measurement("boot time", math.inf, "s"), "test: measurement 'boot time''s value is not a finite number: inf"),
        (Measurement("x", 1.0, lower=2.0, upper=1.0), "test: measurement 'x''s lower limit 2.0 is above its upper"),
        ("3.3 V", "test: measurement 0 is a str, not a Measurement"),
    ],
)
def test_a_bad_measurement_is_one_line_and_the_unit_fails_with_its_manifest(
    station: Station, bad: object, line: str
) -> None:
    good = Measurement("supply current", 0.045, "A", lower=0.03, upper=0.06)
    device = MeasuringDevice([bad, good])
    with pytest.raises(DeviceError) as raised:
        station.provision(device)
    message = str(raised.value)
    assert message.startswith(line) and "\n" not in message
    (manifest,) = manifests(station)
    assert manifest.event == "failed" and manifest.failed_step == "test" and manifest.detail == message[:256]
    assert manifest.quality is not None and [r.name for r in manifest.quality.measurements] == ["supply current"]


def test_a_bad_coefficient_and_a_meter_that_breaks_fail_at_the_test(station: Station) -> None:
    with pytest.raises(DeviceError, match="calibration coefficient 'gain' is not a finite number"):
        station.provision(MeasuringDevice([], [Calibration("gain", math.inf)]))

    class Broken(SimulatedDevice):
        def measurements(self) -> list[Measurement]:
            raise OSError("the meter does not answer")

    with pytest.raises(DeviceError, match="test failed: the meter does not answer"):
        station.provision(Broken())
    assert [(m.event, m.failed_step) for m in manifests(station)] == [("failed", "test"), ("failed", "test")]


def test_the_simulated_adapter_fails_a_limit_on_request(station: Station) -> None:
    with pytest.raises(DeviceError, match="supply current = 0.0[0-9]+ A is outside its limits"):
        station.provision(SimulatedDevice(out_of_limit=True))
    station.provision(SimulatedDevice())
    assert [(m.event, m.failed_step) for m in manifests(station)] == [("failed", "test"), ("provisioned", None)]


def test_a_retry_after_a_failed_test_records_the_new_measurements(world: World, station: Station) -> None:
    device = SimulatedDevice(out_of_limit=True)
    with pytest.raises(DeviceError):
        station.provision(device)
    device.out_of_limit = False
    assert station.provision(device).event == "retry"
    failed, retried = manifests(station)
    assert failed.quality is not None and retried.quality is not None
    assert not failed.quality.measurements[0].passed and retried.quality.measurements[0].passed
