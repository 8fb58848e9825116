"""The esp32 adapter's options in a station configuration, checked before any device is touched."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vault.errors import AdapterError
from vault.verify.devices.esp32._profile import CHIPS

__all__ = ["OPTIONS", "Esp32Options", "parse_options"]

OPTIONS = (
    "port",
    "chip",
    "baud",
    "lock-profile",
    "csr-exchange",
    "app-baud",
    "hardware-id",
    "partition-table",
    "reset",
    "wait",
    "virtual-efuses",
)
_REQUIRED = ("port", "chip", "lock-profile")
_PROFILE_NAME = r"[a-z0-9][a-z0-9_-]{0,31}"


@dataclass(frozen=True)
class Esp32Options:
    """The checked options of one esp32 fixture."""

    port: str
    chip: str
    baud: int
    lock_profile: str | None  # None: 'none', the device is left unlocked (a development line)
    csr_exchange: str
    app_baud: int
    hardware_id: str
    partition_table: int
    reset: str
    wait: float
    virtual_efuses: Path | None


def _baud(options: Mapping[str, Any], name: str, default: int) -> int:
    value = options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 9600 <= value <= 4_000_000:
        raise AdapterError(f"{name} is a whole number of bits per second from 9600 to 4000000", name)
    return value


def _choice(options: Mapping[str, Any], name: str, choices: tuple[str, ...], default: str) -> str:
    value = options.get(name, default)
    if value not in choices:
        raise AdapterError(f"{name} is one of {', '.join(choices)}, not {value!r}", name)
    return str(value)


def parse_options(options: Mapping[str, Any]) -> Esp32Options:
    """Check an esp32 fixture's options (nothing is opened).

    Raises:
        AdapterError: an unknown, missing or wrong option, named in ``field``.
    """
    for name in options:
        if name not in OPTIONS:
            raise AdapterError(f"the esp32 adapter has no option '{name}' (it has {', '.join(OPTIONS)})", name)
    for name in _REQUIRED:
        if name not in options:
            raise AdapterError(f"the esp32 adapter needs option '{name}'", name)
    port = options["port"]
    if not isinstance(port, str) or not port or not port.isprintable() or len(port) > 256:
        raise AdapterError("port is a serial port (/dev/ttyUSB0, COM5, rfc2217://host:4000)", "port")
    chip = _choice(options, "chip", CHIPS, CHIPS[0])
    profile = options["lock-profile"]
    if not isinstance(profile, str) or not re.fullmatch(_PROFILE_NAME, profile):
        raise AdapterError(
            "lock-profile names one of the release's lock profiles, or is 'none' (devices left unlocked)",
            "lock-profile",
        )
    table = options.get("partition-table", "0x8000")
    if not isinstance(table, str) or not re.fullmatch(r"0x[0-9a-fA-F]{1,8}", table) or int(table, 16) % 0x1000:
        raise AdapterError(
            "partition-table is the table's flash offset in quoted hex, 4 KiB aligned", "partition-table"
        )
    wait = options.get("wait", 600)
    if isinstance(wait, bool) or not isinstance(wait, int | float) or not 1 <= wait <= 86400:
        raise AdapterError("wait is the seconds to wait for the next device, from 1 to 86400", "wait")
    efuse_file = options.get("virtual-efuses")
    virtual = None
    if efuse_file is not None:
        if not isinstance(efuse_file, str) or not efuse_file:
            raise AdapterError("virtual-efuses is the path of an espefuse virtual eFuse file", "virtual-efuses")
        virtual = Path(efuse_file)
        if not virtual.is_file() or not os.access(virtual, os.R_OK):
            raise AdapterError(f"virtual-efuses: cannot read {virtual}", "virtual-efuses")
    return Esp32Options(
        port=port,
        chip=chip,
        baud=_baud(options, "baud", 460800),
        lock_profile=None if profile == "none" else profile,
        csr_exchange=_choice(options, "csr-exchange", ("factory-app",), "factory-app"),
        app_baud=_baud(options, "app-baud", 115200),
        hardware_id=_choice(options, "hardware-id", ("mac", "unique-id"), "mac"),
        partition_table=int(table, 16),
        reset=_choice(options, "reset", ("default-reset", "usb-reset", "no-reset"), "default-reset"),
        wait=float(wait),
        virtual_efuses=virtual,
    )
