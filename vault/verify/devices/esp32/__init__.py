"""The ``esp32`` device adapter (ESP32-S3 first): esptool writes the flash, espefuse burns the eFuses.

Each fixture is one serial port with one chip on it at a time. The
hardware id is the chip's base MAC (or its OPTIONAL_UNIQUE_ID eFuse); the
images go where the release's targets say and are read back and hashed
with SHA-256; the device key is made on the device by the factory app
(the CSR exchange in :mod:`._factory_app`), which also stores the
release's per-device secrets where their targets say (:mod:`._secrets`);
the lock burns the lock profile the release names, read back to confirm.
A dry run writes no flash, asks the app for a throwaway key, has it check
each secret without storing it, and burns the lock profile on espefuse's
virtual chip. Needs ``pip install 'vault[esp32]'`` (esptool 5).

Example (a station configuration's fixture)::

    - slot: 1
      adapter: esp32
      options: {port: /dev/ttyUSB0, chip: esp32s3, lock-profile: production}

and checking a lock profile as ``vault bundle build`` does::

    from vault.verify.devices.esp32 import parse_lock_profile
    parse_lock_profile({"chip": "esp32s3", "efuses": {"DIS_PAD_JTAG": 1}})
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vault.verify.devices.esp32._options import parse_options
from vault.verify.devices.esp32._profile import (
    CHIPS,
    KEY_PURPOSES,
    KeyDigest,
    LockProfile,
    _espefuse,
    parse_lock_profile,
)
from vault.verify.devices.esp32._secrets import SECRET_PURPOSES, SecretTarget, parse_secret_target

__all__ = [
    "CHIPS",
    "KEY_PURPOSES",
    "SECRET_PURPOSES",
    "KeyDigest",
    "LockProfile",
    "SecretTarget",
    "esp32_adapter",
    "parse_lock_profile",
    "parse_secret_target",
]


def esp32_adapter(options: Mapping[str, Any], *, fixture: int, timeouts: Mapping[str, float], dry_run: bool) -> Any:
    """The ``esp32`` adapter's entry point: check the options (no device is touched) and make the fixture.

    Raises:
        AdapterError: an unknown, missing or wrong option (named), or esptool is not installed.
    """
    checked = parse_options(options)
    _espefuse()  # esptool installed, or one line saying how to install it
    from vault.verify.devices.esp32._device import Esp32Fixture  # noqa: PLC0415 - imports esptool

    return Esp32Fixture(checked, slot=fixture, timeouts=timeouts, dry_run=dry_run)
