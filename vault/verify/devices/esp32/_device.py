"""The esp32 fixture and device: esptool for the flash, espefuse for the eFuses, the factory app for the key.

A unit goes: connect to the ROM loader (reset into download mode) and read
the hardware id; write each image where its target says (an offset, or a
partition of the table already in flash), in 256 KiB segments so the
progress is the device's; read each image back and hash it with SHA-256;
reset into the firmware and ask the factory app for a key request, then
hand it the certificate and the release's per-device secrets; connect to
the ROM loader again and burn the release's lock profile, reading it back.

Nothing here has run against a real ESP32-S3: see ``docs/esp32.md`` for
what was and was not tested.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from vault.errors import AdapterError, DeviceError, DeviceTimeoutError
from vault.release import Release
from vault.verify.devices._protocol import ImageToProgram, Measurement
from vault.verify.devices.esp32._efuse import Burned, burn_profile, twin_of, virtual_chip
from vault.verify.devices.esp32._factory_app import FactoryApp
from vault.verify.devices.esp32._options import Esp32Options
from vault.verify.devices.esp32._partitions import TABLE_SIZE, find_partition
from vault.verify.devices.esp32._profile import LockProfile, parse_lock_profile
from vault.verify.devices.esp32._secrets import parse_secret_target

__all__ = ["Esp32Device", "Esp32Fixture"]

SEGMENT = 256 * 1024
_ROM_NAMES = {"esp32s3": "ESP32-S3"}


def _esptool() -> Any:
    import esptool  # noqa: PLC0415 - the esp32 extra
    from esptool.logger import log  # noqa: PLC0415

    log.set_verbosity("silent")
    return esptool


class Esp32Fixture:
    """One fixture with one serial port, an ESP32-S3 placed on it at a time."""

    def __init__(self, options: Esp32Options, *, slot: int, timeouts: Mapping[str, float], dry_run: bool) -> None:
        self.options = options
        self.slot = slot
        self.timeouts = dict(timeouts)
        self.dry_run = dry_run
        self.reads_labels = False
        self._last: bytes | None = None
        self._device: Esp32Device | None = None

    def check_release(self, release: Release) -> None:
        """Every secret the release declares has a target this adapter installs (checked before a run).

        Raises:
            AdapterError: the first secret whose target it does not know, named with this fixture.
        """
        for spec in release.secrets:
            try:
                parse_secret_target(spec.target)
            except AdapterError as e:
                raise AdapterError(f"fixture {self.slot} cannot install secret '{spec.name}': {e}") from e

    def open(self) -> None:
        _esptool()

    def close(self) -> None:
        if self._device is not None:
            self._device.disconnect()
            self._device = None

    def connect(self) -> Any:
        """The ROM loader of the chip on the port (reset into download mode), with the flasher stub running."""
        esptool = _esptool()
        try:
            esp = esptool.cmds.detect_chip(self.options.port, self.options.baud, self.options.reset, connect_attempts=1)
        except (esptool.FatalError, OSError) as e:
            raise DeviceError(f"no ESP chip answers on {self.options.port}: {_first_line(e)}") from e
        wanted = _ROM_NAMES[self.options.chip]
        if esp.CHIP_NAME != wanted:
            esp._port.close()
            raise DeviceError(f"the chip on {self.options.port} is an {esp.CHIP_NAME}, the fixture expects {wanted}")
        if not esp.secure_download_mode:
            esp = esptool.cmds.run_stub(esp)
        return esp

    def next_device(self) -> Esp32Device | None:
        """Wait (up to the ``wait`` option) for a chip other than the last one to answer on the port."""
        self.close()
        deadline = time.monotonic() + self.options.wait
        while time.monotonic() < deadline:
            try:
                esp = self.connect()
            except DeviceError:
                time.sleep(1.0)
                continue
            mac = bytes(esp.read_mac())
            if mac == self._last:  # the unit just done is still on the fixture
                esp._port.close()
                time.sleep(1.0)
                continue
            self._last = mac
            self._device = Esp32Device(self, esp, mac)
            return self._device
        return None


class Esp32Device:
    """The ESP32-S3 on a fixture, driven through esptool, espefuse and its factory app."""

    def __init__(self, fixture: Esp32Fixture, esp: Any, mac: bytes) -> None:
        self.fixture = fixture
        self.options = fixture.options
        self.dry_run = fixture.dry_run
        self.mac = mac
        self._esp: Any = esp
        self._app: FactoryApp | None = None
        self._targets: dict[str, int] = {}
        self._measurements: list[Measurement] = []

    def _deadline(self, step: str) -> float:
        return time.monotonic() + self.fixture.timeouts[step]

    def disconnect(self) -> None:
        if self._app is not None:
            self._app.close()
            self._app = None
        if self._esp is not None:
            self._esp._port.close()
            self._esp = None

    def _loader(self) -> Any:
        if self._app is not None:
            self._app.close()
            self._app = None
        if self._esp is None:
            self._esp = self.fixture.connect()
            if bytes(self._esp.read_mac()) != self.mac:
                raise DeviceError("another chip answers on the port than the one this unit started with")
        return self._esp

    def _esptool_call(self, step: str, call: Callable[[], Any]) -> Any:
        esptool = _esptool()
        try:
            return call()
        except esptool.FatalError as e:
            raise DeviceError(f"{step}: esptool: {_first_line(e)}") from e
        except OSError as e:
            raise DeviceError(f"{step}: the serial port failed: {e}") from e

    def read_hardware_id(self) -> bytes:
        if self.options.hardware_id == "mac":
            return self.mac
        esptool = _esptool()
        from espefuse import init_commands  # noqa: PLC0415

        try:
            commands = init_commands(esp=self._loader(), do_not_confirm=True)
        except esptool.FatalError as e:
            raise DeviceError(f"read-id: espefuse: {_first_line(e)}") from e
        unique = bytes(commands.efuses["OPTIONAL_UNIQUE_ID"].get_bitstring().bytes[::-1])
        if not any(unique):
            raise DeviceError("read-id: this chip has no OPTIONAL_UNIQUE_ID burned (use hardware-id: mac)")
        return unique

    def _offset(self, image: ImageToProgram) -> int:
        target = image.target
        if "load_address" in target:
            return int(str(target["load_address"]), 16)
        if "partition" in target:
            esp = self._loader()
            table = self._esptool_call("program", lambda: esp.read_flash(self.options.partition_table, TABLE_SIZE))
            partition = find_partition(table, str(target["partition"]))
            if image.length > partition.size:
                raise DeviceError(
                    f"image '{image.name}' is {image.length} bytes; "
                    f"partition '{partition.label}' holds {partition.size}"
                )
            return partition.offset
        raise DeviceError(f"image '{image.name}' has no target (load_address or partition) in the release")

    def program(self, image: ImageToProgram, chunks: Iterable[bytes]) -> None:
        deadline = self._deadline("program")
        offset = self._offset(image)
        if offset % 0x1000:
            raise DeviceError(f"image '{image.name}': flash offset {offset:#x} is not 4 KiB aligned")
        esptool = _esptool()
        esp = self._loader()
        size = self._esptool_call("program", lambda: esptool.cmds.detect_flash_size(esp))
        if size and offset + image.length > esptool.util.flash_size_bytes(size):
            raise DeviceError(f"image '{image.name}' does not fit the {size} flash at {offset:#x}")
        self._targets[image.name] = offset
        pending = bytearray()
        written = 0

        def write(segment: bytes) -> None:
            nonlocal written
            if time.monotonic() > deadline:
                raise DeviceTimeoutError(f"program: '{image.name}' not written in time ({written} bytes done)")
            if not self.dry_run:
                self._esptool_call(
                    "program",
                    lambda: esptool.cmds.write_flash(esp, [(offset + written, bytes(segment))], no_progress=True),
                )
            written += len(segment)

        for chunk in chunks:
            pending += chunk
            while len(pending) >= SEGMENT:
                write(bytes(pending[:SEGMENT]))
                del pending[:SEGMENT]
        if pending:
            write(bytes(pending))

    def read_measurement(self, image: ImageToProgram) -> str | None:
        offset = self._targets.get(image.name)
        if offset is None:
            raise DeviceError(f"verify: '{image.name}' was not programmed on this unit")
        esp = self._loader()
        data = self._esptool_call("verify", lambda: esp.read_flash(offset, image.length))
        if self.dry_run:  # nothing was written: the read exercised the path, its digest means nothing
            return None
        return hashlib.sha256(data).hexdigest()

    def _factory_app(self) -> FactoryApp:
        if self._app is None:
            esp = self._loader()
            self._esptool_call("generate-key", esp.hard_reset)  # into the firmware just written
            esp._port.close()
            self._esp = None
            self._app = FactoryApp(self.options.port, self.options.app_baud)
            mac = self._app.hello(self._deadline("generate-key"))
            if mac != self.mac:
                raise DeviceError(f"the factory app reports MAC {mac.hex()}, the chip read {self.mac.hex()}")
        return self._app

    def generate_key(self) -> bytes:
        return self._factory_app().csr(self._deadline("generate-key"), dry_run=self.dry_run)

    def install_certificate(self, certificate_der: bytes) -> None:
        deadline = self._deadline("install-certificate")
        self._factory_app().certificate(certificate_der, deadline, dry_run=self.dry_run)

    def install_secret(self, name: str, kind: str, target: str, secret: bytes) -> None:
        """Have the factory app store a per-device secret where ``target`` says (``SECRET-DRY`` in a dry run)."""
        deadline = self._deadline("install-secret")
        try:
            place = parse_secret_target(target)
        except AdapterError as e:
            raise DeviceError(f"install-secret: secret '{name}': {e}") from e
        self._factory_app().secret(name, kind, place.wire(), secret, deadline, dry_run=self.dry_run)

    def lock(self) -> None:
        self.lock_with({})

    def lock_with(self, profiles: Mapping[str, Mapping[str, Any]]) -> None:
        """Burn the configured lock profile of the release (``lock-profile: none``: nothing is burned)."""
        name = self.options.lock_profile
        if name is None:
            self._measurements.append(Measurement("lock", "none: left unlocked (lock-profile: none)"))
            return
        if name not in profiles:
            have = ", ".join(sorted(profiles)) or "none"
            raise DeviceError(f"lock: the release has no lock profile '{name}' (it has: {have})")
        profile = parse_lock_profile(profiles[name])
        if profile.chip != self.options.chip:
            raise DeviceError(f"lock: profile '{name}' is for {profile.chip}, this fixture drives {self.options.chip}")
        burned = self._burn(profile)
        for efuse, (old, new) in sorted(burned.efuses.items()):
            note = " (not readable back by design)" if efuse in burned.unconfirmed else ""
            self._measurements.append(Measurement(f"eFuse {efuse}", f"{old:#x} -> {new:#x}{note}"))
        for block in burned.keys:
            self._measurements.append(Measurement(f"eFuse {block}", "digest burned, write-protected"))

    def _burn(self, profile: LockProfile) -> Burned:
        from espefuse import init_commands  # noqa: PLC0415

        esptool = _esptool()
        esp = self._loader()
        try:
            chip = init_commands(esp=esp, do_not_confirm=True)
            if not self.dry_run:
                return burn_profile(chip, profile, lambda: init_commands(esp=self._loader(), do_not_confirm=True))
            folder = Path(tempfile.mkdtemp(prefix="vault-efuse-"))
            try:  # the rehearsal burns a virtual twin: a copy of the given file, or of this chip's eFuses
                efuse_file = str(folder / "efuses.bin")
                if self.options.virtual_efuses is not None:
                    shutil.copyfile(self.options.virtual_efuses, efuse_file)
                    twin, fresh = virtual_chip(profile.chip, efuse_file), lambda: virtual_chip(profile.chip, efuse_file)
                else:
                    twin, fresh = twin_of(chip, profile.chip, efuse_file)
                return burn_profile(twin, profile, fresh)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        except esptool.FatalError as e:
            raise DeviceError(f"lock: espefuse: {_first_line(e)}") from e

    def measurements(self) -> list[Measurement]:
        return list(self._measurements)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
