"""The ``simulated`` adapter: its options, and the devices its fixture places."""

from __future__ import annotations

from typing import Any

import pytest

from vault.errors import AdapterError, DeviceError
from vault.verify.devices import DEFAULT_TIMEOUTS, SimulatedFixture, load_adapter


def make(options: dict[str, Any], *, dry_run: bool = False) -> SimulatedFixture:
    fixture = load_adapter("simulated")(options, fixture=1, timeouts=DEFAULT_TIMEOUTS, dry_run=dry_run)
    assert isinstance(fixture, SimulatedFixture)
    fixture.open()
    return fixture


def test_every_nth_device_fails_at_the_step_named() -> None:
    fixture = make({"label-prefix": "LINE3-", "fail-step": "verify", "fail-every": 3})
    devices = [fixture.next_device() for _ in range(6)]
    assert [d.fail_at for d in devices] == [None, None, "verify", None, None, "verify"]
    assert all(d.read_label() == f"LINE3-{d.hardware_id.hex()[:8].upper()}" for d in devices)
    assert len({d.hardware_id for d in devices}) == 6


def test_every_nth_device_fails_its_supply_current_limit() -> None:
    fixture = make({"fail-limit-every": 2})
    devices = [fixture.next_device() for _ in range(4)]
    verdicts = [[m.verdict() for m in d.measurements()] for d in devices]
    assert verdicts == [[True, True], [False, True], [True, True], [False, True]]
    assert devices[0].measurements() == devices[0].measurements()  # a device measures the same each time
    assert [c.name for c in devices[0].calibration()] == ["adc gain", "rtc trim"]


def test_a_closed_fixture_places_no_device() -> None:
    fixture = make({})
    fixture.close()
    with pytest.raises(DeviceError, match="not open"):
        fixture.next_device()


@pytest.mark.parametrize(
    ("options", "field", "message"),
    [
        ({"port": "/dev/ttyUSB0"}, "port", "has no option 'port'"),
        ({"fail-step": "certify"}, "fail-step", "not a device step"),
        ({"fail-step": "program", "fail-every": 0}, "fail-every", "whole number"),
        ({"fail-every": 2}, "fail-every", "needs a fail-step"),
        ({"label-prefix": "x" * 40}, "label-prefix", "at most 32"),
        ({"fail-limit-every": -1}, "fail-limit-every", "whole number"),
    ],
)
def test_wrong_options_are_refused_naming_the_option(options: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(AdapterError, match=message) as caught:
        make(options)
    assert caught.value.field == field
