"""Burning a lock profile with espefuse, and reading it back to confirm it.

The same code runs against a chip on a serial port and against espefuse's
virtual chip (a dry run, and the tests): both are an espefuse commands
object. Before a single bit is burned, every eFuse and key of the profile
is compared with what the chip holds: one already burned to another value,
or write-protected short of the value, refuses the whole lock. Then the
burns are made in one batch; the eFuses that cut the station off the chip
(download mode) are burned last, in a second batch. Each batch is read back
through a fresh read of the chip; a value that disagrees fails the lock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vault.errors import DeviceError
from vault.verify.devices.esp32._profile import LockProfile

__all__ = ["CUTS_OFF", "Burned", "burn_profile", "confirm_profile", "plan_profile"]

CUTS_OFF = frozenset(
    {"DIS_DOWNLOAD_MODE", "ENABLE_SECURITY_DOWNLOAD", "DIS_USB_SERIAL_JTAG_DOWNLOAD_MODE", "DIS_USB_SERIAL_JTAG"}
)
"""eFuses after which the station may no longer read the chip's eFuses: burned last, on their own."""

Commands = Any
"""An espefuse commands object (``espefuse.init_commands``), for a chip or its virtual twin."""


@dataclass(frozen=True)
class Burned:
    """What a lock changed: eFuse names with their old and new values, and key blocks written."""

    efuses: dict[str, tuple[int, int]]
    keys: tuple[str, ...]
    unconfirmed: tuple[str, ...] = ()  # burned, but the chip no longer lets them be read back


def _fatal() -> type[Exception]:
    import esptool  # noqa: PLC0415 - the esp32 extra

    fatal: type[Exception] = esptool.FatalError
    return fatal


def _one_line(error: BaseException) -> str:
    return "; ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__


def _value(commands: Commands, name: str) -> int:
    return int(commands.efuses[name].get_raw())


def _key_bytes(commands: Commands, block: str) -> bytes:
    return bytes(commands.efuses[block].get_bitstring().bytes[::-1])


def plan_profile(commands: Commands, profile: LockProfile) -> tuple[dict[str, tuple[int, int]], list[str]]:
    """What a lock would burn on this chip: eFuses (old, new) and key blocks; already-there values left out.

    Raises:
        DeviceError: a value cannot be reached (bits already burned, write-protected, a key block in use).
    """
    chip = commands.efuses
    efuses: dict[str, tuple[int, int]] = {}
    for name, wanted in profile.efuses.items():
        now = _value(commands, name)
        if now == wanted:
            continue
        if now & ~wanted:
            raise DeviceError(
                f"lock refused: eFuse {name} is already {now:#x} on this chip; the profile asks {wanted:#x}, "
                "which it cannot become (eFuse bits only go from 0 to 1)"
            )
        if not chip[name].is_writeable():
            raise DeviceError(
                f"lock refused: eFuse {name} is write-protected at {now:#x}; the profile asks {wanted:#x}"
            )
        efuses[name] = (now, wanted)
    keys = []
    for key in profile.keys:
        block = chip[key.block]
        purpose_field = chip[
            commands.efuses.blocks[commands.efuses.get_index_block_by_name(key.block)].key_purpose_name
        ]
        held, purpose = _key_bytes(commands, key.block), str(purpose_field.get())
        if held == key.digest and purpose == key.purpose and not block.is_writeable():
            continue
        if any(held) and held != key.digest:
            raise DeviceError(f"lock refused: {key.block} already holds another key (purpose {purpose})")
        if purpose not in ("USER", key.purpose):
            raise DeviceError(f"lock refused: {key.block} is already for {purpose}; the profile asks {key.purpose}")
        if not block.is_writeable():
            raise DeviceError(f"lock refused: {key.block} is write-protected")
        keys.append(key.block)
    return efuses, keys


def burn_profile(commands: Commands, profile: LockProfile, fresh: Callable[[], Commands]) -> Burned:
    """Burn what ``profile`` asks that the chip does not hold yet, and confirm it by reading it back.

    Args:
        commands: espefuse commands on the chip (or its virtual twin).
        profile: the checked profile.
        fresh: a new read of the same chip, for the read-back (never the cache the burn used).

    Raises:
        DeviceError: a burn refused (before anything is burned), espefuse failed, or the read-back disagrees.
    """
    efuses, keys = plan_profile(commands, profile)
    fatal = _fatal()
    first = {n: v for n, v in efuses.items() if n not in CUTS_OFF}
    last = {n: v for n, v in efuses.items() if n in CUTS_OFF}
    try:
        if first or keys:
            commands.use_batch_mode()
            wanted = [k for k in profile.keys if k.block in keys]
            if wanted:
                commands.burn_key(
                    [k.block for k in wanted],
                    [None] * len(wanted),
                    [k.purpose for k in wanted],
                    digest=[k.digest for k in wanted],
                )
            if first:
                commands.burn_efuse({n: new for n, (_, new) in first.items()})
            commands.burn_all()
        confirm_profile(fresh(), profile, skip=frozenset(CUTS_OFF))
        unconfirmed: tuple[str, ...] = ()
        if last:
            commands.use_batch_mode()
            commands.burn_efuse({n: new for n, (_, new) in last.items()})
            commands.burn_all()
            try:
                again = fresh()
            except fatal:  # the chip now refuses reads, as these eFuses say it must
                unconfirmed = tuple(sorted(last))
            else:
                confirm_profile(again, profile)
    except fatal as e:
        raise DeviceError(f"lock: espefuse failed: {_one_line(e)}") from e
    return Burned(efuses, tuple(keys), unconfirmed)


def confirm_profile(commands: Commands, profile: LockProfile, *, skip: frozenset[str] = frozenset()) -> None:
    """Read the chip's eFuses and check each one the profile asks for (keys: digest, purpose, write-protected).

    Raises:
        DeviceError: the first value that disagrees, named with what was read and what was burned.
    """
    for name, wanted in profile.efuses.items():
        if name in skip:
            continue
        now = _value(commands, name)
        if now != wanted:
            raise DeviceError(f"lock: read-back disagrees: eFuse {name} reads {now:#x}, the profile burned {wanted:#x}")
    chip = commands.efuses
    for key in profile.keys:
        held = _key_bytes(commands, key.block)
        purpose_name = chip.blocks[chip.get_index_block_by_name(key.block)].key_purpose_name
        purpose = str(chip[purpose_name].get())
        if held != key.digest:
            raise DeviceError(f"lock: read-back disagrees: {key.block} does not hold the profile's digest")
        if purpose != key.purpose:
            raise DeviceError(f"lock: read-back disagrees: {key.block} is for {purpose}, not {key.purpose}")
        if chip[key.block].is_writeable() or chip[purpose_name].is_writeable():
            raise DeviceError(f"lock: read-back disagrees: {key.block} or its purpose is still writeable")


def virtual_chip(chip: str, efuse_file: str | None = None, *, token: str | None = None) -> Commands:
    """espefuse's virtual ``chip`` (its eFuses kept in ``efuse_file``, seeded from ``token`` if given)."""
    from vault.verify.devices.esp32._profile import _espefuse  # noqa: PLC0415

    kwargs: dict[str, Any] = {"virt": True, "virt_efuse_file": efuse_file, "do_not_confirm": True}
    if token is not None:
        kwargs["token"] = token
    return _espefuse().init_commands(chip=chip, **kwargs)


def twin_of(commands: Commands, chip: str, efuse_file: str) -> tuple[Commands, Callable[[], Commands]]:
    """A virtual chip holding a copy of ``commands``' chip's eFuses (kept in ``efuse_file``), to rehearse on.

    Returns:
        The twin's commands, and a way to read the twin afresh.
    """
    from espefuse.efuse.emulate_efuse_controller_base import EfsToken  # noqa: PLC0415

    esp, efuses = commands.esp, commands.efuses
    token = EfsToken.build(
        esp.CHIP_NAME, esp.get_chip_revision(), efuses.blocks, [esp.read_reg(a) for a in efuses.REGS.ERRORS], "EFSR"
    )
    twin = virtual_chip(chip, efuse_file, token=token)
    return twin, lambda: virtual_chip(chip, efuse_file)
