"""The CSR exchange with a factory app over a serial port: a stand-in app in its own process, over a pty pair.

No ESP32-S3 here: the pty stands in for the USB serial port, and the stand-in for the firmware's factory app.
"""

from __future__ import annotations

import subprocess
import time

import pytest
from cryptography import x509

from tests.verify.devices.conftest import MAC, soon
from vault.errors import DeviceError, DeviceTimeoutError
from vault.verify.devices.esp32._factory_app import FactoryApp


def test_the_device_key_request_and_certificate_go_through_the_line_protocol(
    app: tuple[FactoryApp, subprocess.Popen[str]],
) -> None:
    factory, process = app
    assert factory.hello(soon()).hex() == MAC  # the boot log before READY is skipped
    first = x509.load_der_x509_csr(factory.csr(soon(), dry_run=False))
    again = x509.load_der_x509_csr(factory.csr(soon(), dry_run=False))
    assert first.is_signature_valid and first.public_key() == again.public_key()  # the key is kept
    rehearsal = x509.load_der_x509_csr(factory.csr(soon(), dry_run=True))
    assert rehearsal.public_key() != first.public_key()  # a dry run's key is a throwaway
    factory.certificate(b"certificate DER", soon(), dry_run=True)
    factory.certificate(b"certificate DER", soon(), dry_run=False)
    factory.close()
    process.kill()
    _, err = process.communicate()
    assert err.count("stored ") == 1  # only the real CERT was stored


@pytest.mark.parametrize("app", ["refuse"], indirect=True)
def test_the_apps_refusal_fails_the_step_with_its_reason(app: tuple[FactoryApp, subprocess.Popen[str]]) -> None:
    factory, _ = app
    factory.hello(soon())
    with pytest.raises(DeviceError, match="generate-key: the factory app says: no entropy source"):
        factory.csr(soon(), dry_run=False)


@pytest.mark.parametrize("app", ["silent"], indirect=True)
def test_an_app_that_never_answers_times_out(app: tuple[FactoryApp, subprocess.Popen[str]]) -> None:
    factory, _ = app
    started = time.monotonic()
    with pytest.raises(DeviceTimeoutError, match="did not answer HELLO"):
        factory.hello(soon(2.0))
    assert 1.5 < time.monotonic() - started < 6


@pytest.mark.parametrize("app", ["bad-store"], indirect=True)
def test_an_app_that_stores_other_bytes_fails_the_install(app: tuple[FactoryApp, subprocess.Popen[str]]) -> None:
    factory, _ = app
    factory.hello(soon())
    with pytest.raises(DeviceError, match="stored other bytes than the certificate sent"):
        factory.certificate(b"certificate DER", soon(), dry_run=False)


@pytest.mark.parametrize("app", ["wrong-mac"], indirect=True)
def test_the_app_reports_the_mac_the_station_compares(app: tuple[FactoryApp, subprocess.Popen[str]]) -> None:
    factory, _ = app
    assert factory.hello(soon()).hex() == "000000000000"


def test_a_port_that_does_not_exist_is_one_line() -> None:
    with pytest.raises(DeviceError, match="cannot open /nonexistent/ttyUSB9 to talk to the factory app"):
        FactoryApp("/nonexistent/ttyUSB9", 115200)
