"""The ``simulated`` adapter: devices in memory, for tests, the demo and rehearsing a station configuration.

A :class:`SimulatedDevice` behaves like a device with a key generator and a
flash, with faults to inject; the ``simulated`` adapter places a new one on
its fixture each time the station asks for the next device.

Options (all optional): ``label-prefix`` (the printed labels are the prefix
and 8 hex digits of the hardware id; default ``SN-``), ``fail-step`` and
``fail-every`` (every Nth device on this fixture fails at that step),
``fail-limit-every`` (every Nth device draws a supply current above its
limit, so it fails the test).

Each device has a test, as a real fixture would: its supply current (limits
30 to 60 mA), its boot time (at most 2 s) and two calibration coefficients
(an ADC gain near 1 and an RTC trim in ppm), drawn from the hardware id so
that a device measures the same each time it is tested.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from vault.errors import AdapterError, DeviceError
from vault.verify.devices._protocol import STEPS, Calibration, ImageToProgram, Measurement, check_option_names

__all__ = ["SimulatedDevice", "SimulatedFixture", "simulated_adapter"]


class SimulatedDevice:
    """A device in memory: an id, a flash, a key made on first request, and faults to inject.

    Args:
        hardware_id: the device's id; random 8 bytes when None.
        label: the serial printed on its label (what a scanner would read).
        fail_at: a step from :data:`STEPS` that fails on this device.
        flip_flash: store one wrong byte, so the read-back measurement differs.
        out_of_limit: its supply current is above its upper limit (the unit fails the test).
        dry_run: rehearse: nothing is written to the flash, no key is kept, no certificate stored, no lock set.
    """

    def __init__(
        self,
        hardware_id: bytes | None = None,
        *,
        label: str | None = None,
        fail_at: str | None = None,
        flip_flash: bool = False,
        out_of_limit: bool = False,
        dry_run: bool = False,
    ) -> None:
        if fail_at is not None and fail_at not in STEPS:
            raise ValueError(f"unknown step {fail_at!r}; the steps are {', '.join(STEPS)}")
        self.hardware_id = hardware_id if hardware_id is not None else os.urandom(8)
        self.label = label
        self.fail_at = fail_at
        self.flip_flash = flip_flash
        self.flash: dict[str, str] = {}  # image name -> hex SHA-256 of what was written
        self.key: ec.EllipticCurvePrivateKey | None = None
        self.certificate: bytes | None = None
        self.locked = False
        self.secrets: dict[str, bytes] = {}  # target -> the secret installed there (a test reads it back)
        self.dry_run = dry_run
        self.out_of_limit = out_of_limit

    def _step(self, step: str) -> None:
        if self.fail_at == step:
            raise DeviceError(f"simulated device {self.hardware_id.hex()} fails at {step}")

    def read_hardware_id(self) -> bytes:
        self._step("read-id")
        return self.hardware_id

    def program(self, image: ImageToProgram, chunks: Iterable[bytes]) -> None:
        if self.locked:
            raise DeviceError(f"simulated device {self.hardware_id.hex()} is locked")
        digest = hashlib.sha256()
        for chunk in chunks:
            digest.update(chunk)
        if self.flip_flash:
            digest.update(b"\x01")
        self._step("program")
        if not self.dry_run:
            self.flash[image.name] = digest.hexdigest()

    def read_measurement(self, image: ImageToProgram) -> str | None:
        self._step("verify")
        return self.flash.get(image.name)

    def generate_key(self) -> bytes:
        self._step("generate-key")
        key = self.key or ec.generate_private_key(ec.SECP256R1())
        if not self.dry_run:
            self.key = key
        name = x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, self.hardware_id.hex())])
        csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
        return csr.public_bytes(serialization.Encoding.DER)

    def install_certificate(self, certificate_der: bytes) -> None:
        self._step("install-certificate")
        if not self.dry_run:
            self.certificate = certificate_der

    def install_secret(self, name: str, kind: str, target: str, secret: bytes) -> None:
        """Keep ``secret`` at ``target``, as a device's secure storage would."""
        self._step("install-secret")
        if self.locked:
            raise DeviceError(f"simulated device {self.hardware_id.hex()} is locked")
        if not self.dry_run:
            self.secrets[target] = bytes(secret)

    def lock(self) -> None:
        self._step("lock")
        self.locked = not self.dry_run

    def measurements(self) -> list[Measurement]:
        """The unit's test: its supply current and boot time, with their limits."""
        draw = random.Random(self.hardware_id)
        current = 0.045 + draw.gauss(0, 0.002)
        if self.out_of_limit:
            current = 0.072 + draw.random() * 0.01
        boot = 0.8 + abs(draw.gauss(0, 0.05))
        return [
            Measurement("supply current", round(current, 5), "A", lower=0.030, upper=0.060),
            Measurement("boot time", round(boot, 3), "s", upper=2.0),
        ]

    def calibration(self) -> list[Calibration]:
        """The coefficients its test found: the ADC's gain and the RTC's trim."""
        draw = random.Random(self.hardware_id[::-1])
        return [
            Calibration("adc gain", round(1.0 + draw.gauss(0, 0.002), 5)),
            Calibration("rtc trim", round(draw.gauss(-3.0, 1.0), 2), "ppm"),
        ]

    def unlock_for_rework(self) -> None:
        """What a technician does at the rework bench: open the device again (its key stays)."""
        self.locked = False

    def read_label(self) -> str:
        """The serial printed on its label, as the fixture's scanner reads it."""
        if self.label is None:
            raise DeviceError(f"simulated device {self.hardware_id.hex()} has no label")
        return self.label


class SimulatedFixture:
    """A fixture that places a new :class:`SimulatedDevice` on itself each time it is asked."""

    def __init__(
        self, *, label_prefix: str, fail_step: str | None, fail_every: int, dry_run: bool, fail_limit_every: int = 0
    ) -> None:
        self.label_prefix = label_prefix
        self.fail_limit_every = fail_limit_every
        self.fail_step = fail_step
        self.fail_every = fail_every
        self.dry_run = dry_run
        self.placed = 0
        self.opened = False

    def open(self) -> None:
        self.opened = True

    def close(self) -> None:
        self.opened = False

    def next_device(self) -> SimulatedDevice:
        if not self.opened:
            raise DeviceError("the simulated fixture is not open")
        self.placed += 1
        fails = self.fail_step is not None and self.placed % self.fail_every == 0
        out = self.fail_limit_every > 0 and self.placed % self.fail_limit_every == 0
        device = SimulatedDevice(
            os.urandom(8), fail_at=self.fail_step if fails else None, out_of_limit=out, dry_run=self.dry_run
        )
        device.label = f"{self.label_prefix}{device.hardware_id.hex()[:8].upper()}"
        return device


def simulated_adapter(
    options: Mapping[str, Any], *, fixture: int, timeouts: Mapping[str, float], dry_run: bool
) -> SimulatedFixture:
    """The ``simulated`` adapter's entry point: check the options and make the fixture."""
    known = ("label-prefix", "fail-step", "fail-every", "fail-limit-every")
    check_option_names("simulated", options, known)
    prefix = options.get("label-prefix", "SN-")
    if not isinstance(prefix, str) or not prefix.isprintable() or len(prefix) > 32:
        raise AdapterError("a label prefix is printable text of at most 32 characters", "label-prefix")
    step = options.get("fail-step")
    if step is not None and (step not in STEPS or step == "certify"):
        devices = ", ".join(s for s in STEPS if s != "certify")
        raise AdapterError(f"'{step}' is not a device step ({devices})", "fail-step")
    every = options.get("fail-every", 1)
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise AdapterError("fail-every is a whole number from 1", "fail-every")
    if "fail-every" in options and step is None:
        raise AdapterError("fail-every needs a fail-step", "fail-every")
    limit_every = options.get("fail-limit-every", 0)
    if isinstance(limit_every, bool) or not isinstance(limit_every, int) or limit_every < 0:
        raise AdapterError("fail-limit-every is a whole number (0: never)", "fail-limit-every")
    return SimulatedFixture(
        label_prefix=prefix, fail_step=step, fail_every=every, dry_run=dry_run, fail_limit_every=limit_every
    )
