"""The esp32 adapter's options, lock profiles and partition tables: refused before any device is touched."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest

from vault.errors import AdapterError, DeviceError
from vault.verify.devices import DEFAULT_TIMEOUTS, load_adapter
from vault.verify.devices.esp32 import parse_lock_profile
from vault.verify.devices.esp32._partitions import find_partition


def key(block: str = "BLOCK_KEY1", purpose: str = "SECURE_BOOT_DIGEST0", digest: str = "a" * 64) -> dict[str, str]:
    return {"block": block, "purpose": purpose, "digest": digest}


GOOD = {"port": "/dev/ttyUSB0", "chip": "esp32s3", "lock-profile": "production"}


def make(options: dict[str, Any], dry_run: bool = False) -> Any:
    return load_adapter("esp32")(options, fixture=1, timeouts=DEFAULT_TIMEOUTS, dry_run=dry_run)


def test_the_adapter_is_found_by_name_and_makes_a_fixture_without_touching_the_port() -> None:
    fixture = make(dict(GOOD, baud=921600, wait=30, **{"hardware-id": "unique-id"}))
    assert fixture.options.baud == 921600 and fixture.options.hardware_id == "unique-id"
    assert fixture.options.lock_profile == "production" and fixture.options.partition_table == 0x8000
    assert make(dict(GOOD, **{"lock-profile": "none"})).options.lock_profile is None


@pytest.mark.parametrize(
    ("options", "field", "message"),
    [
        ({**GOOD, "prot": "x"}, "prot", "the esp32 adapter has no option 'prot'"),
        ({"chip": "esp32s3", "lock-profile": "p"}, "port", "needs option 'port'"),
        ({"port": "/dev/ttyUSB0", "lock-profile": "p"}, "chip", "needs option 'chip'"),
        ({"port": "/dev/ttyUSB0", "chip": "esp32s3"}, "lock-profile", "needs option 'lock-profile'"),
        ({**GOOD, "port": ""}, "port", "port is a serial port"),
        ({**GOOD, "chip": "esp8266"}, "chip", "chip is one of esp32s3, not 'esp8266'"),
        ({**GOOD, "baud": "fast"}, "baud", "baud is a whole number"),
        ({**GOOD, "baud": 300}, "baud", "from 9600 to 4000000"),
        ({**GOOD, "app-baud": True}, "app-baud", "app-baud is a whole number"),
        ({**GOOD, "lock-profile": "Production!"}, "lock-profile", "names one of the release's lock profiles"),
        ({**GOOD, "csr-exchange": "ds-peripheral"}, "csr-exchange", "csr-exchange is one of factory-app"),
        ({**GOOD, "hardware-id": "serial"}, "hardware-id", "hardware-id is one of mac, unique-id"),
        ({**GOOD, "partition-table": "0x8100"}, "partition-table", "4 KiB aligned"),
        ({**GOOD, "partition-table": 32768}, "partition-table", "quoted hex"),
        ({**GOOD, "reset": "hard"}, "reset", "reset is one of default-reset, usb-reset, no-reset"),
        ({**GOOD, "wait": 0}, "wait", "wait is the seconds"),
        ({**GOOD, "virtual-efuses": "/nonexistent/efuses.bin"}, "virtual-efuses", "cannot read"),
    ],
)
def test_a_wrong_option_is_refused_naming_it(options: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(AdapterError, match=message) as caught:
        make(options)
    assert caught.value.field == field
    assert "\n" not in str(caught.value)


def test_a_virtual_efuse_file_is_taken_for_dry_runs(tmp_path: Path) -> None:
    efuses = tmp_path / "efuses.bin"
    efuses.write_bytes(b"")
    assert make(dict(GOOD, **{"virtual-efuses": str(efuses)}), dry_run=True).options.virtual_efuses == efuses


@pytest.mark.parametrize(
    ("profile", "field", "message"),
    [
        ({"chip": "esp32s3", "efuses": {"DIS_JTAG": 1}}, "efuses.DIS_JTAG", "esp32s3 has no eFuse 'DIS_JTAG'"),
        ({"chip": "esp32", "efuses": {"DIS_PAD_JTAG": 1}}, "chip", "drives esp32s3, not 'esp32'"),
        ({"chip": "esp32s3", "efuses": {"SOFT_DIS_JTAG": 8}}, "efuses.SOFT_DIS_JTAG", "a value from 1 to 7"),
        ({"chip": "esp32s3", "efuses": {"DIS_PAD_JTAG": 0}}, "efuses.DIS_PAD_JTAG", "leave out one that stays 0"),
        ({"chip": "esp32s3", "efuses": {"HARD_DIS_JTAG": 1}}, "efuses.HARD_DIS_JTAG", "write DIS_PAD_JTAG"),
        ({"chip": "esp32s3", "efuses": {"WR_DIS": 1}}, "efuses.WR_DIS", "not a setting a lock profile burns"),
        ({"chip": "esp32s3", "efuses": {"KEY_PURPOSE_0": 1}}, "efuses.KEY_PURPOSE_0", "not a setting"),
        ({"chip": "esp32s3", "efuses": {"MAC": 1}}, "efuses.MAC", "not a setting"),
        ({"chip": "esp32s3", "efuses": {"DISABLE_WAFER_VERSION_MAJOR": 1}}, "efuses.DISABLE_WAFER", "identity"),
        ({"chip": "esp32s3", "efuses": {}}, "efuses", "burns at least one eFuse or key"),
        ({"chip": "esp32s3", "fuses": {}}, "fuses", "has no field 'fuses'"),
        (
            {
                "chip": "esp32s3",
                "keys": [{"block": "BLOCK_KEY9", "purpose": "SECURE_BOOT_DIGEST0", "digest": "a" * 64}],
            },
            "keys[0].block",
            "no key block 'BLOCK_KEY9'",
        ),
        (
            {"chip": "esp32s3", "keys": [key(purpose="XTS_AES_128_KEY")]},
            "keys[0].purpose",
            "public-key digests only",
        ),
        (
            {"chip": "esp32s3", "keys": [key(digest="xy")]},
            "keys[0].digest",
            "64 hex digits",
        ),
    ],
)
def test_a_wrong_lock_profile_is_refused_naming_the_place(profile: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(AdapterError, match=message) as caught:
        parse_lock_profile(profile)
    assert caught.value.field.startswith(field)


def table(*entries: tuple[str, int, int]) -> bytes:
    rows = b"".join(struct.pack("<2sBBII16sI", b"\xaa\x50", 0, 0, o, s, n.encode(), 0) for n, o, s in entries)
    return rows + b"\xeb\xeb" + b"\xff" * 30 + b"\xff" * 64


def test_a_partition_target_is_found_in_the_table_read_from_flash() -> None:
    data = table(("nvs", 0x9000, 0x6000), ("factory", 0x10000, 0x100000), ("vault_cert", 0x110000, 0x1000))
    assert find_partition(data, "factory").offset == 0x10000
    with pytest.raises(DeviceError, match=r"no partition 'ota_0' \(nvs, factory, vault_cert\)"):
        find_partition(data, "ota_0")
    with pytest.raises(DeviceError, match="holds no partition table"):
        find_partition(b"\xff" * 0xC00, "factory")
    with pytest.raises(DeviceError, match="malformed at entry 1"):
        find_partition(table(("nvs", 0x9000, 0x6000))[:32] + b"\x00" * 32, "nvs")
