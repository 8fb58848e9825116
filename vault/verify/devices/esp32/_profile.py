"""Lock profiles: the eFuses a release asks a chip to burn, checked against the chip's own eFuse table.

A lock profile is part of the signed release statement (approvers see it,
the station cannot change it)::

    {"chip": "esp32s3",
     "efuses": {"DIS_PAD_JTAG": 1, "DIS_USB_JTAG": 1, "SOFT_DIS_JTAG": 7, "SECURE_BOOT_EN": 1},
     "keys": [{"block": "BLOCK_KEY0", "purpose": "SECURE_BOOT_DIGEST0", "digest": "<64 hex>"}]}

``efuses`` are BLOCK0 settings by their espefuse names, each with the value
it must have after the lock (bits only go from 0 to 1, so 0 is never a
value to burn). ``keys`` put a secure boot public key digest (what
``espsecure digest-sbv2-public-key`` prints) in a key block, with its
purpose, write-protected. Secret keys are never in a profile: the flash
encryption key is made by the chip itself on first boot, and the device
key by the factory app (see ``docs/esp32.md``).

The eFuse table comes from espefuse (esptool's ``espefuse``), so a name the
chip does not have is refused when the release is built, before any device
is touched.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from vault.errors import AdapterError

__all__ = ["CHIPS", "KEY_PURPOSES", "KeyDigest", "LockProfile", "efuse_table", "parse_lock_profile"]

CHIPS = ("esp32s3",)
"""Chips the esp32 adapter drives and whose lock profiles it checks (ESP32-S3 first)."""

KEY_PURPOSES = ("SECURE_BOOT_DIGEST0", "SECURE_BOOT_DIGEST1", "SECURE_BOOT_DIGEST2")
"""Key-block purposes a profile may burn: public-key digests only, never a secret key."""

_HELD_BACK = frozenset({"WR_DIS", "RD_DIS"})  # protection bits are set by the burns that need them


@dataclass(frozen=True)
class KeyDigest:
    """A public-key digest burned into a key block with its purpose (then write-protected)."""

    block: str
    purpose: str
    digest: bytes


@dataclass(frozen=True)
class LockProfile:
    """A checked lock profile for one chip."""

    chip: str
    efuses: Mapping[str, int]
    keys: tuple[KeyDigest, ...]


@dataclass(frozen=True)
class EfuseInfo:
    """One eFuse of a chip's table: what a profile may ask of it."""

    name: str
    block: int
    bits: int  # 0 for byte fields
    kind: str  # espefuse's efuse_type: bool, uint:N, bytes:N
    efuse_class: str
    category: str


def _espefuse() -> Any:
    try:
        import espefuse  # noqa: PLC0415 - the esp32 extra, imported only when a profile is checked or burned
        from esptool.logger import log  # noqa: PLC0415
    except ImportError as e:
        raise AdapterError(f"the esp32 adapter needs esptool 5 (pip install 'vault[esp32]'): {e}") from e
    log.set_verbosity("silent")
    return espefuse


@cache
def efuse_table(chip: str) -> Mapping[str, EfuseInfo]:
    """Every eFuse ``chip`` has, by name (alternative names too), from espefuse's definitions.

    Raises:
        AdapterError: espefuse is not installed, or the chip is not one the adapter drives.
    """
    if chip not in CHIPS:
        raise AdapterError(f"the esp32 adapter drives {', '.join(CHIPS)}, not '{chip}'", "chip")
    commands = _espefuse().init_commands(chip=chip, virt=True, do_not_confirm=True)
    table: dict[str, EfuseInfo] = {}
    for e in commands.efuses:
        bits = 0 if e.efuse_type.startswith("bytes") else (1 if e.efuse_type == "bool" else int(e.efuse_type[5:]))
        info = EfuseInfo(e.name, e.block, bits, e.efuse_type, e.efuse_class or "", e.category)
        for name in e.all_names:
            table.setdefault(name, info)
    return table


def parse_lock_profile(raw: Mapping[str, Any]) -> LockProfile:
    """Check a lock profile (as written in a release) against its chip's eFuse table.

    Raises:
        AdapterError: with ``field`` the place in the profile (``efuses.DIS_JTAG``, ``keys[0].digest``).
    """
    if not isinstance(raw, Mapping):
        raise AdapterError("a lock profile is a mapping with chip, efuses and keys")
    unknown = sorted(set(raw) - {"chip", "efuses", "keys"})
    if unknown:
        raise AdapterError(f"a lock profile has no field '{unknown[0]}' (it has chip, efuses, keys)", unknown[0])
    chip = raw.get("chip")
    if not isinstance(chip, str):
        raise AdapterError("a lock profile names its chip (esp32s3)", "chip")
    table = efuse_table(chip)
    efuses = raw.get("efuses", {})
    keys = raw.get("keys", [])
    if not isinstance(efuses, Mapping) or not isinstance(keys, list):
        raise AdapterError("efuses is a mapping of eFuse names to values; keys is a list", "efuses")
    if not efuses and not keys:
        raise AdapterError("a lock profile burns at least one eFuse or key", "efuses")
    checked: dict[str, int] = {}
    for name, value in efuses.items():
        info = _settable(table, chip, str(name))
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 2**info.bits:
            top = 1 if info.bits == 1 else 2**info.bits - 1
            raise AdapterError(
                f"{name} is {info.bits} bit{'s' if info.bits > 1 else ''}: a value from 1 to {top} "
                "(eFuse bits only go from 0 to 1, so leave out one that stays 0)",
                f"efuses.{name}",
            )
        checked[info.name] = value
    digests = tuple(_key(table, chip, entry, i) for i, entry in enumerate(keys))
    blocks = [k.block for k in digests]
    for i, block in enumerate(blocks):
        if block in blocks[:i]:
            raise AdapterError(f"{block} is given twice", f"keys[{i}].block")
    return LockProfile(chip, checked, digests)


def _settable(table: Mapping[str, EfuseInfo], chip: str, name: str) -> EfuseInfo:
    info = table.get(name)
    if info is None:
        close = _closest(name, table)
        hint = f" (did you mean '{close}'?)" if close else ""
        raise AdapterError(f"{chip} has no eFuse '{name}'{hint}", f"efuses.{name}")
    if info.name != name:
        raise AdapterError(f"'{name}' is another name of {info.name}: write {info.name}", f"efuses.{name}")
    if info.name in _HELD_BACK or info.block != 0 or info.bits == 0 or info.efuse_class == "keypurpose":
        raise AdapterError(
            f"{name} is not a setting a lock profile burns (keys and their purposes go in 'keys'; "
            "protection bits follow the burns that need them)",
            f"efuses.{name}",
        )
    if info.category == "identity":
        raise AdapterError(f"{name} is the chip's identity, written at Espressif's factory", f"efuses.{name}")
    return info


def _key(table: Mapping[str, EfuseInfo], chip: str, entry: object, i: int) -> KeyDigest:
    if not isinstance(entry, Mapping) or set(entry) != {"block", "purpose", "digest"}:
        raise AdapterError("a key is a mapping with block, purpose and digest", f"keys[{i}]")
    block, purpose, digest = entry["block"], entry["purpose"], entry["digest"]
    info = table.get(str(block))
    if info is None or info.efuse_class != "keyblock" or not str(block).startswith("BLOCK_KEY"):
        blocks = sorted({i.name for i in table.values() if i.name.startswith("BLOCK_KEY")})
        raise AdapterError(f"{chip} has no key block '{block}' ({', '.join(blocks)})", f"keys[{i}].block")
    if purpose not in KEY_PURPOSES:
        raise AdapterError(
            f"a profile burns public-key digests only ({', '.join(KEY_PURPOSES)}), not '{purpose}'",
            f"keys[{i}].purpose",
        )
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
        raise AdapterError("a digest is 64 hex digits (the SHA-256 espsecure prints)", f"keys[{i}].digest")
    return KeyDigest(info.name, str(purpose), bytes.fromhex(digest))


def _closest(name: str, table: Mapping[str, EfuseInfo]) -> str | None:
    import difflib  # noqa: PLC0415 - only on an error

    found = difflib.get_close_matches(name, list(table), n=1)
    return found[0] if found else None


def profile_to_json(profile: LockProfile) -> dict[str, Any]:
    """The profile as the release statement carries it."""
    return {
        "chip": profile.chip,
        "efuses": dict(profile.efuses),
        "keys": [{"block": k.block, "purpose": k.purpose, "digest": k.digest.hex()} for k in profile.keys],
    }
