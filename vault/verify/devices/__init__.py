"""Device adapters: how a station drives the devices on its fixtures.

An adapter is a plug-in found by name in the ``vault.devices`` entry-point
group (:func:`load_adapter`); called with its options from the station
configuration, it makes a :class:`Fixture`, which is opened once and
gives the :class:`Device` on it, unit after unit. vault ships ``simulated``
and ``command`` (vendor command-line tools, run without a shell).
A plug-in's own dependencies (pyserial, esptool, a vendor SDK) are imported
by that plug-in only, when it is loaded.

Example::

    from vault.verify.devices import DEFAULT_TIMEOUTS, load_adapter

    make = load_adapter("simulated")
    fixture = make({"label-prefix": "SN-"}, fixture=1, timeouts=DEFAULT_TIMEOUTS, dry_run=False)
    fixture.open()
    try:
        device = fixture.next_device()
        print(device.read_hardware_id().hex(), device.read_label())
    finally:
        fixture.close()
"""

from vault.verify.devices._plugins import ENTRY_POINT_GROUP, installed_adapters, load_adapter
from vault.verify.devices._protocol import (
    DEFAULT_TIMEOUTS,
    STEPS,
    WRITING_STEPS,
    Adapter,
    Calibration,
    Device,
    Fixture,
    ImageToProgram,
    Measurement,
    Progress,
    check_option_names,
    check_timeouts,
    install_secret,
    lock_device,
)
from vault.verify.devices._simulated import SimulatedDevice, SimulatedFixture

__all__ = [
    "DEFAULT_TIMEOUTS",
    "ENTRY_POINT_GROUP",
    "STEPS",
    "WRITING_STEPS",
    "Adapter",
    "Calibration",
    "Device",
    "Fixture",
    "ImageToProgram",
    "Measurement",
    "Progress",
    "SimulatedDevice",
    "SimulatedFixture",
    "check_option_names",
    "check_timeouts",
    "install_secret",
    "installed_adapters",
    "load_adapter",
    "lock_device",
]
