"""The device adapter: the few things the station library asks of a device on a fixture.

A real adapter drives esptool, OpenOCD, a JTAG probe or a vendor tool; the
:class:`SimulatedDevice` here behaves like a device with a key generator and
a flash, and is what the tests and the demo use. An adapter signals a
failed step by raising any exception; the library records the step that
failed and stops the unit.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from vault.errors import DeviceError

__all__ = ["STEPS", "Device", "ImageToProgram", "SimulatedDevice"]

STEPS = ("read-id", "program", "verify", "generate-key", "certify", "install-certificate", "lock")
"""The provisioning steps in order; a failed manifest names one of them (or "identity", "allocation")."""


@dataclass(frozen=True)
class ImageToProgram:
    """What an adapter needs to know about an image: its name, size, digest and target (from the release)."""

    name: str
    length: int
    sha256: str
    target: dict[str, object]


@runtime_checkable
class Device(Protocol):
    """One device on one fixture, as the station library drives it.

    Every method may raise to report that its step failed.
    """

    def read_hardware_id(self) -> bytes:
        """The device's own unique id (fuses, OTP, the chip's UID): the source of truth for its identity."""
        ...

    def program(self, image: ImageToProgram, chunks: Iterable[bytes]) -> None:
        """Write the image's plaintext, given chunk by chunk, where ``image.target`` says."""
        ...

    def read_measurement(self, image: ImageToProgram) -> str | None:
        """The hex SHA-256 the device computes over what it now holds for ``image``, or None if it cannot."""
        ...

    def generate_key(self) -> bytes:
        """A PKCS#10 request (DER) for the device's own key, made on the device; an existing key is kept."""
        ...

    def install_certificate(self, certificate_der: bytes) -> None:
        """Store the device certificate the station issued."""
        ...

    def lock(self) -> None:
        """Close the debug port and write-protect what must not change."""
        ...


class SimulatedDevice:
    """A device in memory: an id, a flash, a key made on first request, and faults to inject.

    Args:
        hardware_id: the device's id; random 8 bytes when None.
        label: the serial printed on its label (what a scanner would read).
        fail_at: a step from :data:`STEPS` that fails on this device.
        flip_flash: store one wrong byte, so the read-back measurement differs.
    """

    def __init__(
        self,
        hardware_id: bytes | None = None,
        *,
        label: str | None = None,
        fail_at: str | None = None,
        flip_flash: bool = False,
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
        self.flash[image.name] = digest.hexdigest()

    def read_measurement(self, image: ImageToProgram) -> str | None:
        self._step("verify")
        return self.flash.get(image.name)

    def generate_key(self) -> bytes:
        self._step("generate-key")
        if self.key is None:
            self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, self.hardware_id.hex())])
        csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(self.key, hashes.SHA256())
        return csr.public_bytes(serialization.Encoding.DER)

    def install_certificate(self, certificate_der: bytes) -> None:
        self._step("install-certificate")
        self.certificate = certificate_der

    def lock(self) -> None:
        self._step("lock")
        self.locked = True

    def unlock_for_rework(self) -> None:
        """What a technician does at the rework bench: open the device again (its key stays)."""
        self.locked = False
