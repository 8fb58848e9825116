"""The esp32 adapter's lock step on espefuse's virtual ESP32-S3: burn, refuse, read back (no hardware)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from vault.errors import DeviceError
from vault.verify.devices.esp32._efuse import burn_profile, confirm_profile, plan_profile, twin_of, virtual_chip
from vault.verify.devices.esp32._profile import LockProfile, parse_lock_profile

DIGEST = hashlib.sha256(b"secure boot public key").hexdigest()
PROFILE = {
    "chip": "esp32s3",
    "efuses": {"DIS_PAD_JTAG": 1, "DIS_USB_JTAG": 1, "SOFT_DIS_JTAG": 7, "SECURE_BOOT_EN": 1, "DIS_DOWNLOAD_MODE": 1},
    "keys": [{"block": "BLOCK_KEY0", "purpose": "SECURE_BOOT_DIGEST0", "digest": DIGEST}],
}


def chip(path: Path) -> Any:
    return virtual_chip("esp32s3", str(path))


def burn(path: Path, profile: LockProfile) -> Any:
    return burn_profile(chip(path), profile, lambda: chip(path))


def test_a_profile_is_burned_read_back_and_a_second_lock_changes_nothing(tmp_path: Path) -> None:
    efuses = tmp_path / "efuses.bin"
    profile = parse_lock_profile(PROFILE)
    burned = burn(efuses, profile)
    assert burned.efuses == {name: (0, value) for name, value in PROFILE["efuses"].items()}  # type: ignore[attr-defined]
    assert burned.keys == ("BLOCK_KEY0",) and burned.unconfirmed == ()
    again = chip(efuses)  # a fresh read of the file: the values are in the chip, not in a cache
    assert again.efuses["SOFT_DIS_JTAG"].get_raw() == 7 and again.efuses["DIS_PAD_JTAG"].get_raw()
    assert again.efuses["KEY_PURPOSE_0"].get() == "SECURE_BOOT_DIGEST0"
    assert not again.efuses["BLOCK_KEY0"].is_writeable()
    confirm_profile(again, profile)
    second = burn(efuses, profile)  # a reworked unit: already locked, nothing to burn
    assert second.efuses == {} and second.keys == ()


def test_a_bit_already_burned_to_another_value_refuses_the_whole_lock_before_burning(tmp_path: Path) -> None:
    efuses = tmp_path / "efuses.bin"
    burn(efuses, parse_lock_profile({"chip": "esp32s3", "efuses": {"SOFT_DIS_JTAG": 2}}))
    profile = parse_lock_profile({"chip": "esp32s3", "efuses": {"DIS_PAD_JTAG": 1, "SOFT_DIS_JTAG": 1}})
    before = efuses.read_bytes()
    with pytest.raises(DeviceError, match=r"SOFT_DIS_JTAG is already 0x2 .* asks 0x1, which it cannot become"):
        burn(efuses, profile)
    assert efuses.read_bytes() == before  # DIS_PAD_JTAG, listed first, was not burned either


def test_a_write_protected_efuse_refuses_the_lock(tmp_path: Path) -> None:
    efuses = tmp_path / "efuses.bin"
    protect = chip(efuses)
    protect.write_protect_efuse(["DIS_PAD_JTAG"])  # espefuse's own operation, as a previous tool might have
    with pytest.raises(DeviceError, match="eFuse DIS_PAD_JTAG is write-protected at 0x0; the profile asks 0x1"):
        plan_profile(chip(efuses), parse_lock_profile({"chip": "esp32s3", "efuses": {"DIS_PAD_JTAG": 1}}))


def test_a_key_block_holding_another_key_refuses_the_lock(tmp_path: Path) -> None:
    efuses = tmp_path / "efuses.bin"
    burn(efuses, parse_lock_profile(PROFILE))
    other = dict(PROFILE, efuses={}, keys=[dict(PROFILE["keys"][0], digest="ab" * 32)])  # type: ignore[index]
    with pytest.raises(DeviceError, match="BLOCK_KEY0 already holds another key"):
        burn(efuses, parse_lock_profile(other))


def test_a_read_back_that_disagrees_fails_the_lock(tmp_path: Path) -> None:
    efuses = tmp_path / "efuses.bin"
    profile = parse_lock_profile(PROFILE)
    burn(efuses, profile)
    confirm_profile(chip(efuses), profile)
    # the chip changes between the burn and the read-back: the virtual eFuse file is rewritten blank
    efuses.write_bytes(bytes(len(efuses.read_bytes())))
    with pytest.raises(DeviceError, match=r"read-back disagrees: eFuse DIS_PAD_JTAG reads 0x0, the profile burned 0x1"):
        confirm_profile(chip(efuses), profile)


def test_a_key_digest_read_back_wrong_fails_the_lock(tmp_path: Path) -> None:
    efuses = tmp_path / "efuses.bin"
    burn(efuses, parse_lock_profile(PROFILE))
    swapped = dict(PROFILE, keys=[dict(PROFILE["keys"][0], digest="cd" * 32)])  # type: ignore[index]
    with pytest.raises(DeviceError, match="BLOCK_KEY0 does not hold the profile's digest"):
        confirm_profile(chip(efuses), parse_lock_profile(swapped))


def test_a_dry_run_burns_a_virtual_twin_and_leaves_the_chip_as_it_was(tmp_path: Path) -> None:
    board = tmp_path / "board.bin"  # stands in for a real chip: the twin copies its eFuses through espefuse
    burn(board, parse_lock_profile({"chip": "esp32s3", "efuses": {"SOFT_DIS_JTAG": 1}}))
    before = board.read_bytes()
    twin, fresh = twin_of(chip(board), "esp32s3", str(tmp_path / "twin.bin"))
    assert twin.efuses["SOFT_DIS_JTAG"].get_raw() == 1
    with pytest.raises(DeviceError, match="SOFT_DIS_JTAG is already 0x1"):  # the rehearsal sees the real state
        burn_profile(twin, parse_lock_profile({"chip": "esp32s3", "efuses": {"SOFT_DIS_JTAG": 2}}), fresh)
    twin, fresh = twin_of(chip(board), "esp32s3", str(tmp_path / "twin2.bin"))
    burn_profile(twin, parse_lock_profile(PROFILE), fresh)
    assert board.read_bytes() == before
    assert chip(tmp_path / "twin2.bin").efuses["DIS_PAD_JTAG"].get_raw()
