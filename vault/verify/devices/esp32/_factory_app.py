"""The CSR exchange with a factory app on the device, over its serial port: a small line protocol.

The device makes its own key (the factory app, flashed with the release,
generates it with the chip's random number generator and keeps it in its
flash, which flash encryption protects); only a PKCS#10 request comes out,
and the certificate goes back in. Lines are ASCII, end with ``\\n``, and are
at most :data:`MAX_LINE` bytes; lines that do not start with ``VAULT `` (the
boot log) are ignored. Protocol version 1::

    station: VAULT HELLO 1                 (repeated every second until answered)
    device:  VAULT READY 1 <MAC, 12 hex>   the chip's base MAC, checked against the hardware id
    station: VAULT CSR        | VAULT CSR-DRY
    device:  VAULT CSR <base64 DER PKCS#10>          (CSR-DRY: a throwaway key, nothing kept)
    station: VAULT CERT <base64 DER>  | VAULT CERT-DRY <base64 DER>
    device:  VAULT CERT-OK <hex SHA-256 of the DER it stored>   (CERT-DRY: checked, nothing stored)
    station: VAULT SECRET <name> <kind> <target> <base64>  | VAULT SECRET-DRY <name> <kind> <target> <base64>
    device:  VAULT SECRET-OK <name> <hex SHA-256 of the bytes it stored>   (SECRET-DRY: checked, nothing stored)
    device, to any request:  VAULT ERR <reason>                 (the step fails with that reason)

``VAULT CSR`` keeps an existing key (a rework asks again and gets the same
key's request). ``SECRET`` came later within version 1: an app that does not
know it answers ``ERR`` and the step fails saying so; the station asks for it
only when the release declares secrets. The secret is on the serial line and
nowhere else: an answer that repeats it is never shown. Documented in
``docs/esp32.md``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import time

from vault.errors import DeviceError, DeviceTimeoutError

__all__ = ["MAX_LINE", "FactoryApp"]

MAX_LINE = 16 * 1024
_PREFIX = b"VAULT "
_WORD = re.compile(r"[A-Z][A-Z-]{0,19}")  # a protocol word, shown in an error; anything else is not
_WINDOW = 8  # bytes of a secret (or 12 characters of its base64 or hex) an answer may not repeat


class FactoryApp:
    """The factory app on one device's serial port (pyserial), spoken to in protocol version 1."""

    def __init__(self, port: str, baud: int) -> None:
        import serial  # noqa: PLC0415 - pyserial comes with the esp32 extra (esptool)

        try:
            self._serial = serial.serial_for_url(port, baudrate=baud, timeout=0.1, exclusive=True)
        except (serial.SerialException, OSError, ValueError) as e:
            raise DeviceError(f"cannot open {port} to talk to the factory app: {e}") from e
        self._buffer = b""

    def close(self) -> None:
        self._serial.close()

    def _send(self, line: str) -> None:
        self._serial.write(line.encode("ascii") + b"\n")
        self._serial.flush()

    def _line(self, deadline: float) -> bytes | None:
        """The next ``VAULT`` line before ``deadline``, or None when the time is up."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line, self._buffer = self._buffer[:end].rstrip(b"\r"), self._buffer[end + 1 :]
                if line.startswith(_PREFIX):
                    return line[len(_PREFIX) :]
                continue
            if len(self._buffer) > MAX_LINE:
                raise DeviceError(f"the factory app sent a line longer than {MAX_LINE} bytes")
            if time.monotonic() >= deadline:
                return None
            self._buffer += self._serial.read(max(1, self._serial.in_waiting))

    def _answer(self, request: str, expect: str, deadline: float, step: str, secret: bytes = b"") -> str:
        self._send(request)
        line = self._line(deadline)
        if line is None:
            raise DeviceTimeoutError(f"{step}: the factory app did not answer '{request.split()[1]}' in time")
        word, _, rest = line.decode("ascii", "replace").partition(" ")
        if word == "ERR":
            reason = "(its reason repeats the secret: not shown)" if _repeats(line, secret) else rest[:200]
            raise DeviceError(f"{step}: the factory app says: {reason}")
        if word != expect:
            shown = f"'{word}'" if _WORD.fullmatch(word) else "an unexpected line"
            raise DeviceError(f"{step}: the factory app answered {shown}, expected '{expect}'")
        return rest

    def hello(self, deadline: float) -> bytes:
        """Wait for the app to answer (it may still be booting); returns the MAC it reports."""
        while True:
            self._send("VAULT HELLO 1")
            line = self._line(min(deadline, time.monotonic() + 1.0))
            if line is not None:
                word, _, rest = line.decode("ascii", "replace").partition(" ")
                version, _, mac = rest.partition(" ")
                if word != "READY" or version != "1":
                    raise DeviceError(f"the factory app does not speak protocol 1 ({line[:40]!r})")
                try:
                    value = bytes.fromhex(mac)
                except ValueError:
                    value = b""
                if len(value) != 6:
                    raise DeviceError("the factory app's READY does not give the chip's MAC (12 hex digits)")
                return value
            if time.monotonic() >= deadline:
                raise DeviceTimeoutError("generate-key: the factory app did not answer HELLO (is it flashed?)")

    def csr(self, deadline: float, *, dry_run: bool) -> bytes:
        """The device's PKCS#10 request, DER (a throwaway key's in a dry run)."""
        text = self._answer("VAULT CSR-DRY" if dry_run else "VAULT CSR", "CSR", deadline, "generate-key")
        try:
            return base64.b64decode(text, validate=True)
        except binascii.Error as e:
            raise DeviceError("generate-key: the factory app's request is not base64") from e

    def certificate(self, der: bytes, deadline: float, *, dry_run: bool) -> None:
        """Hand the certificate over; the app's digest of what it stored must be the certificate's."""
        request = f"VAULT {'CERT-DRY' if dry_run else 'CERT'} {base64.b64encode(der).decode()}"
        stored = self._answer(request, "CERT-OK", deadline, "install-certificate").strip().lower()
        if stored != hashlib.sha256(der).hexdigest():
            raise DeviceError("install-certificate: the factory app stored other bytes than the certificate sent")

    def secret(self, name: str, kind: str, target: str, secret: bytes, deadline: float, *, dry_run: bool) -> None:
        """Hand a per-device secret over; the app's digest of what it stored must be the secret's.

        ``target`` is in the form the app receives (:meth:`._secrets.SecretTarget.wire`). No error
        message carries the secret, or a part of it that the app repeated.
        """
        verb = "SECRET-DRY" if dry_run else "SECRET"
        request = f"VAULT {verb} {name} {kind} {target} {base64.b64encode(secret).decode()}"
        try:
            answer = self._answer(request, "SECRET-OK", deadline, "install-secret", secret)
        except DeviceTimeoutError:
            raise
        except DeviceError as e:
            if "says: unknown" not in str(e):
                raise
            raise DeviceError(
                f"{e} (this factory app cannot install secrets: flash one that answers SECRET, docs/esp32.md)"
            ) from e
        answered, _, digest = answer.strip().partition(" ")
        if answered != name:
            raise DeviceError(f"install-secret: the factory app's SECRET-OK is not for secret '{name}'")
        if digest.lower() != hashlib.sha256(secret).hexdigest():
            raise DeviceError(f"install-secret: the factory app stored other bytes than secret '{name}' sent")


def _repeats(line: bytes, secret: bytes) -> bool:
    """Whether ``line`` holds a run of ``secret`` (raw, base64, or hex in either case) long enough to matter."""
    if not secret:
        return False
    text = line.lower()
    forms = (
        (secret, line, _WINDOW),
        (base64.b64encode(secret), line, _WINDOW * 3 // 2),
        (secret.hex().encode(), text, _WINDOW * 3 // 2),
    )
    for form, haystack, window in forms:
        size = min(window, len(form))
        if any(form[i : i + size] in haystack for i in range(len(form) - size + 1)):
            return True
    return False
