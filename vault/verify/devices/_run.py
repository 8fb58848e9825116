"""A production run on configured fixtures: one thread per fixture, each driving the devices placed on it.

A unit that fails (a step, a timeout, a device that stops answering) is
logged by the station and the fixture goes on with its next device; a
fixture whose port or adapter breaks ends alone; the other fixtures never
wait for either. Only a station that cannot go on (its state or token)
stops the line.

A dry run (:func:`rehearse`) walks the same steps through the adapter's
dry-run mode: no unit is reserved, no certificate is issued by the station
CA, nothing is signed or logged.
"""

from __future__ import annotations

import datetime
import functools
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from vault import pki
from vault.container import BundleReader
from vault.errors import DeviceError, DeviceTimeoutError, StateError, TokenError, VaultError
from vault.verify._simulate import ProvisioningInterrupted, UnitResult, event_of, run_threads
from vault.verify._station import Station
from vault.verify.devices._protocol import Device, Fixture, Measurement, Progress, install_secret, lock_device

__all__ = ["FixtureRun", "RunResult", "rehearse", "run_fixtures"]

LabelSource = str
"""``"adapter"``: the fixture's scanner (:meth:`Device.read_label`); ``"none"``: the station assigns serials."""


@dataclass(frozen=True)
class FixtureRun:
    """One configured fixture: its slot number and the fixture its adapter made."""

    slot: int
    fixture: Fixture


@dataclass(frozen=True)
class RunResult:
    """Every unit that ended, in unit order, and each fixture that stopped on its own (slot, reason)."""

    units: list[UnitResult]
    fixture_errors: list[tuple[int, str]]


def _measurements(device: Device) -> tuple[Measurement, ...]:
    read = getattr(device, "measurements", None)
    if read is None:
        return ()
    try:
        return tuple(m for m in read() if isinstance(m, Measurement))
    except Exception:  # measurements are shown, never required: a failing meter does not fail the unit
        return ()


class _Watched:
    """A device whose hardware id is kept once read, so a unit that fails later is shown with it."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.hardware_id = b""

    def read_hardware_id(self) -> bytes:
        self.hardware_id = self.device.read_hardware_id()
        return self.hardware_id

    def __getattr__(self, name: str) -> Any:
        return getattr(self.device, name)


def _label(device: Device, source: LabelSource) -> str | None:
    if source == "none":
        return None
    read = getattr(device, "read_label", None)
    if read is None:
        raise DeviceError("this adapter reads no labels (the configuration says label: adapter)")
    label = read()
    if not isinstance(label, str):
        raise DeviceError("the adapter's label is not text")
    return label


def run_fixtures(
    station: Station,
    fixtures: Sequence[FixtureRun],
    *,
    count: int,
    label_source: LabelSource = "adapter",
    dry_run: bool = False,
    progress: Callable[[int, str, int, int], None] | None = None,
) -> RunResult:
    """Provision (or, with ``dry_run``, rehearse) up to ``count`` devices over ``fixtures`` at once.

    Each fixture is opened, asked for devices until ``count`` units have
    started on all fixtures together (or it has no more), and closed. A
    fixture with ``check_release`` is asked first whether its devices can
    take the loaded release.

    Raises:
        AdapterError: a fixture's devices cannot take the release (nothing started).
        ProvisioningInterrupted: Ctrl-C; the units on the fixtures finished and were logged first.
        StateError, TokenError: the station cannot go on; the line stopped.
    """
    for run in fixtures:  # what a fixture's devices cannot do stops the run before any unit starts
        check = getattr(run.fixture, "check_release", None)
        if check is not None:
            check(station.release.release)
    guard = threading.Lock()
    started = 0
    results: dict[int, UnitResult] = {}
    in_flight: dict[int, int] = {}
    fixture_errors: list[tuple[int, str]] = []
    stopped: list[VaultError] = []
    stopping = threading.Event()

    freed: list[int] = []  # numbers claimed for a device that never came, for another fixture to take

    def claim() -> int | None:
        nonlocal started
        with guard:
            if stopping.is_set():
                return None
            if freed:
                return freed.pop()
            if started >= count:
                return None
            started += 1
            return started

    def unit(n: int, slot: int, placed: Device) -> UnitResult:
        watched = _Watched(placed)
        device = cast(Device, watched)
        label = ""
        try:
            scanned = _label(device, label_source)
            label = scanned or ""
            if dry_run:
                hwid = rehearse(station, device, label=scanned).hex()
                return UnitResult(n, slot, hwid, label, "dry-run", measurements=_measurements(placed))
            report: Progress | None = None if progress is None else (lambda *a: progress(slot, *a))
            outcome = station.provision(device, label=scanned, fixture=slot, progress=report)
        except (StateError, TokenError):
            raise
        except VaultError as e:
            event, refusal = event_of(e)
            hwid = watched.hardware_id.hex()
            shown = () if refusal is not None else _measurements(placed)  # a refused device was never tested
            return UnitResult(n, slot, hwid, label, event, None, str(e), refusal, shown)
        except Exception as e:  # an adapter bug reading the label: this unit fails, the fixture goes on
            return UnitResult(n, slot, watched.hardware_id.hex(), label, "failed", None, f"{type(e).__name__}: {e}")
        return UnitResult(
            n, slot, outcome.hardware_id, label, outcome.event, outcome.serial, measurements=_measurements(placed)
        )

    def fixture_loop(run: FixtureRun) -> None:
        try:
            run.fixture.open()
        except Exception as e:
            with guard:
                fixture_errors.append((run.slot, f"cannot open: {e}"))
            return
        try:
            while (n := claim()) is not None:
                try:
                    device = run.fixture.next_device()
                except Exception as e:  # the fixture itself broke: it ends, the others go on
                    with guard:
                        freed.append(n)
                        fixture_errors.append((run.slot, str(e) or type(e).__name__))
                    return
                if device is None:
                    with guard:
                        freed.append(n)
                    return
                with guard:
                    in_flight[n] = run.slot
                try:
                    results[n] = unit(n, run.slot, device)
                except (StateError, TokenError) as e:
                    stopped.append(e)
                    stopping.set()
                finally:
                    with guard:
                        del in_flight[n]
        finally:
            try:
                run.fixture.close()
            except Exception as e:
                with guard:
                    fixture_errors.append((run.slot, f"cannot close: {e}"))

    interrupted: list[int] = []

    def on_interrupt() -> None:
        with guard:
            interrupted.extend(sorted(in_flight))

    work = [(f"fixture-{r.slot}", functools.partial(fixture_loop, r)) for r in fixtures]
    try:
        run_threads(work, stopping, on_interrupt)
    except KeyboardInterrupt:
        done = [results[n] for n in sorted(results)]
        raise ProvisioningInterrupted(done, interrupted, count - len(done)) from None
    if stopped:
        raise stopped[0]
    return RunResult([results[n] for n in sorted(results)], sorted(fixture_errors))


def rehearse(station: Station, device: Device, *, label: str | None = None) -> bytes:
    """Walk every device step against ``device`` (in its adapter's dry-run mode) without recording anything.

    The images stream from the loaded bundle as in production; the read-back
    runs, but has nothing to match since nothing was written (only a device
    that stops answering fails it); the device's key request is checked; a
    throwaway key, never the station CA, certifies it so the install step has
    a real certificate to rehearse with.

    Returns:
        The device's hardware id.

    Raises:
        DeviceError: a step failed (the message names it).
    """
    loaded = station.release

    def step(name: str, call: Callable[..., object], *args: object) -> object:
        try:
            return call(*args)
        except VaultError:
            raise
        except Exception as e:
            raise DeviceError(f"{name} failed: {e}") from e

    hardware_id = step("read-id", device.read_hardware_id)
    if not isinstance(hardware_id, bytes) or not 1 <= len(hardware_id) <= 32:
        raise DeviceError("read-id: the device's hardware id must be 1 to 32 bytes")
    with BundleReader(loaded.path) as reader:
        for image in loaded.images:
            chunks = reader.image_chunks(image.name, loaded.data_key)
            try:
                step("program", device.program, image, chunks)
            finally:
                chunks.close()
            try:  # nothing was written, so a read-back has nothing to match; a device that stops answering fails
                step("verify", device.read_measurement, image)
            except DeviceTimeoutError:
                raise
            except DeviceError:
                pass
    der = step("generate-key", device.generate_key)
    try:
        public_key = pki.check_csr(x509.load_der_x509_csr(der if isinstance(der, bytes) else b""))
    except (ValueError, TypeError, VaultError) as e:
        raise DeviceError(f"generate-key: the device's key request is not valid: {e}") from e
    step("install-certificate", device.install_certificate, _throwaway_certificate(public_key, label))
    for spec in loaded.release.secrets:  # a throwaway secret: the adapter's dry run must not keep it
        step("install-secret", install_secret, device, spec.name, spec.kind, spec.target, os.urandom(spec.length))
    step("lock", lock_device, device, loaded.release.lock_profiles)
    return hardware_id


def _throwaway_certificate(public_key: object, label: str | None) -> bytes:
    """A certificate for a dry run, issued by a key made for it and thrown away (never the station CA)."""
    issuer_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vault dry run - not a device certificate")])
    subject = x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, label or "dry-run")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(name)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(issuer_key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.DER)
