"""What the station library asks of a device adapter: a fixture that yields devices, and the device's steps.

See ``docs/adr/0007-device-adapters.md`` for which steps run where (station, token, device) and why.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from vault.errors import AdapterError, DeviceError
from vault.manifest import MAX_COEFFICIENTS, MAX_MEASUREMENTS, MAX_NAME, MAX_UNIT, Coefficient, Reading

__all__ = [
    "DEFAULT_TIMEOUTS",
    "STEPS",
    "WRITING_STEPS",
    "Adapter",
    "Calibration",
    "Device",
    "Fixture",
    "ImageToProgram",
    "Measurement",
    "Progress",
    "check_option_names",
    "check_timeouts",
    "install_secret",
    "lock_device",
    "record_test",
]

STEPS = ("read-id", "program", "verify", "generate-key", "certify", "install-certificate", "install-secret", "lock")
"""The provisioning steps in order; a failed manifest names one of them (or "identity", "allocation")."""

WRITING_STEPS = frozenset({"program", "generate-key", "install-certificate", "install-secret", "lock"})
"""The device steps that change the device; a dry run asks the adapter to rehearse them without writing."""

DEFAULT_TIMEOUTS: Mapping[str, float] = {
    "read-id": 30.0,
    "program": 600.0,
    "verify": 300.0,
    "generate-key": 120.0,
    "install-certificate": 60.0,
    "install-secret": 60.0,
    "lock": 120.0,
}
"""Seconds each device step may take unless the station configuration says otherwise."""

Progress = Callable[[str, int, int], None]
"""Called while an image streams to a device: the image's name, bytes handed to the adapter, and its length."""


@dataclass(frozen=True)
class ImageToProgram:
    """What an adapter needs to know about an image: its name, size, digest and target (from the release)."""

    name: str
    length: int
    sha256: str
    target: dict[str, object]


@dataclass(frozen=True)
class Measurement:
    """One value a device or fixture measured during a unit (a supply current, a boot time, a read-back time).

    The station asks for a device's measurements once its images are
    programmed and read back, before the device makes its key: that is the
    unit's test. Each must have a name and a finite number as its value; it
    is signed into the unit's manifest with its limits. A value below
    ``lower`` or above ``upper`` (or ``passed`` False: a verdict the adapter
    made itself) fails the unit at ``step``. ``passed`` None means "judge by
    the limits"; a measurement without limits is recorded, never judged.

    Adapters may also return text values for the operator (the esp32 adapter
    reports its eFuse writes after the lock step this way); those are shown,
    never recorded, and the station only asks for measurements at the test.
    """

    name: str
    value: float | str
    unit: str = ""
    passed: bool | None = None
    lower: float | None = None
    upper: float | None = None
    step: str = "test"

    def verdict(self) -> bool | None:
        """Whether it passed: the adapter's own verdict, else its limits; None when neither says."""
        if self.passed is not None or isinstance(self.value, str) or (self.lower is None and self.upper is None):
            return self.passed
        return (self.lower is None or self.value >= self.lower) and (self.upper is None or self.value <= self.upper)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "value": self.value, "unit": self.unit, "passed": self.passed,
            "lower": self.lower, "upper": self.upper, "step": self.step,
        }  # fmt: skip


@dataclass(frozen=True)
class Calibration:
    """One calibration coefficient the test found for this unit (an ADC gain, an oscillator trim).

    Signed into the unit's manifest beside its measurements, so the audit
    can follow each coefficient over weeks (drift of the fixture or of the parts).
    """

    name: str
    value: float
    unit: str = ""


def record_test(
    measurements: Sequence[object], calibration: Sequence[object]
) -> tuple[tuple[Reading, ...], tuple[Coefficient, ...], list[tuple[str, str]]]:
    """What an adapter's test returned, as the manifest records it, and what is wrong with it.

    Every well-formed measurement and coefficient is kept, so the manifest
    shows what was measured even when something else was not right.

    Returns:
        The readings, the coefficients, and the problems in order as (step,
        one line): a measurement outside its limits names its own step; a
        malformed entry (no name, a value that is not a finite number) is
        at "test".
    """
    readings: list[Reading] = []
    coefficients: list[Coefficient] = []
    problems: list[tuple[str, str]] = []
    for i, m in enumerate(measurements[:MAX_MEASUREMENTS]):
        try:
            reading = _reading(m, i)
        except ValueError as e:
            problems.append(("test", str(e)))
            continue
        readings.append(reading)
        if not reading.passed:
            problems.append(
                (reading.step, f"{reading.name} = {reading.shown()} is outside its limits {reading.limits()}")
            )
    if len(measurements) > MAX_MEASUREMENTS:
        problems.append(
            ("test", f"the adapter returned {len(measurements)} measurements; at most {MAX_MEASUREMENTS} are recorded")
        )
    for i, c in enumerate(calibration[:MAX_COEFFICIENTS]):
        try:
            coefficients.append(_coefficient(c, i))
        except ValueError as e:
            problems.append(("test", str(e)))
    if len(calibration) > MAX_COEFFICIENTS:
        problems.append(
            ("test", f"the adapter returned {len(calibration)} coefficients; at most {MAX_COEFFICIENTS} are recorded")
        )
    return tuple(readings), tuple(coefficients), problems


def _name(value: object, what: str, limit: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} has no name")
    if len(value) > limit or not value.isprintable():
        raise ValueError(f"{what}'s name is not printable text of at most {limit} characters")
    return value


def _finite(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} is not a number: {str(value)[:40]!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{what} is not a finite number: {number}")
    return number


def _reading(m: object, index: int) -> Reading:
    if not isinstance(m, Measurement):
        raise ValueError(f"measurement {index} is a {type(m).__name__}, not a Measurement")
    name = _name(m.name, f"measurement {index}", MAX_NAME)
    what = f"measurement {name!r}"
    value = _finite(m.value, f"{what}'s value")
    lower = None if m.lower is None else _finite(m.lower, f"{what}'s lower limit")
    upper = None if m.upper is None else _finite(m.upper, f"{what}'s upper limit")
    if lower is not None and upper is not None and lower > upper:
        raise ValueError(f"{what}'s lower limit {lower} is above its upper limit {upper}")
    unit = m.unit
    if not isinstance(unit, str) or len(unit) > MAX_UNIT or not unit.isprintable():
        raise ValueError(f"{what}'s unit is not printable text of at most {MAX_UNIT} characters")
    step = _name(m.step, f"{what}'s step", MAX_NAME)
    within = (lower is None or value >= lower) and (upper is None or value <= upper)
    return Reading(name, value, unit, lower, upper, within and m.passed is not False, step)


def _coefficient(c: object, index: int) -> Coefficient:
    if not isinstance(c, Calibration):
        raise ValueError(f"calibration {index} is a {type(c).__name__}, not a Calibration")
    name = _name(c.name, f"calibration coefficient {index}", MAX_NAME)
    value = _finite(c.value, f"calibration coefficient {name!r}")
    unit = c.unit
    if not isinstance(unit, str) or len(unit) > MAX_UNIT or not unit.isprintable():
        raise ValueError(
            f"calibration coefficient {name!r}'s unit is not printable text of at most {MAX_UNIT} characters"
        )
    return Coefficient(name, value, unit)


@runtime_checkable
class Device(Protocol):
    """One device on one fixture, as the station library drives it.

    A step that fails raises :class:`vault.errors.DeviceError` with a reason
    a person can act on ("flash write failed at 0x10000: no ACK"); the
    station records the step and that reason in the unit's "failed"
    manifest. A step that does not finish in its timeout raises
    :class:`vault.errors.DeviceTimeoutError` (the adapter owns the I/O, so
    it is the one that can give up on it). Any other exception is recorded
    too, as "<step> failed: <exception>".

    Optional, looked up with ``getattr``: ``read_label() -> str`` (a
    scanner at the fixture, for ``label: adapter``),
    ``measurements() -> Sequence[Measurement]`` and ``calibration() ->
    Sequence[Calibration]`` (the unit's test, asked once the images are read
    back; recorded in the manifest, a limit that fails fails the unit),
    ``install_secret(name, kind, target, secret)`` (see :func:`install_secret`) and
    ``lock_with(profiles)`` (see :func:`lock_device`).
    """

    def read_hardware_id(self) -> bytes:
        """The device's own unique id (fuses, OTP, the chip's UID): the source of truth for its identity."""
        ...

    def program(self, image: ImageToProgram, chunks: Iterable[bytes]) -> None:
        """Write the image's plaintext, given chunk by chunk, where ``image.target`` says.

        The station counts the bytes as the adapter takes them from
        ``chunks`` and reports them as progress: an adapter that pulls chunks
        as the device accepts them gives a true progress bar.
        """
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


@runtime_checkable
class Fixture(Protocol):
    """One fixture slot with its port: opened once for a run, giving the devices placed on it one by one.

    ``open`` takes the port (and may check the programmer is there);
    ``close`` always follows a successful ``open``, also after a failure.
    ``next_device`` waits for the next device on the fixture and returns
    it, or None when no more will come (the fixture's run ends).

    Optional, looked up with ``getattr``: ``check_release(release)``, asked
    once before a run with the loaded :class:`vault.release.Release`
    (before ``open``); it raises :class:`vault.errors.AdapterError` for what
    this fixture's devices cannot do (the esp32 adapter: a secret target it
    does not know), so the run stops before any unit starts.
    """

    def open(self) -> None: ...

    def close(self) -> None: ...

    def next_device(self) -> Device | None: ...


class Adapter(Protocol):
    """What the ``vault.devices`` entry point names: a callable that makes one fixture from its options.

    It checks ``options`` (the fixture's ``options`` mapping from the
    station configuration, plain str/int/bool/list/dict values) without
    touching any device, raising :class:`vault.errors.AdapterError` with
    the option's path in ``field``; the configuration loader turns that
    into ``file:line: fixtures[0].options.<field>: ...``.

    Args:
        options: the adapter's own options.
        fixture: the fixture's slot number (recorded in manifests).
        timeouts: seconds per device step (every step in :data:`DEFAULT_TIMEOUTS` is present).
        dry_run: rehearse: the steps in :data:`WRITING_STEPS` must not
            change the device (no flash, keys, certificate or locks written).
    """

    def __call__(
        self, options: Mapping[str, Any], *, fixture: int, timeouts: Mapping[str, float], dry_run: bool
    ) -> Fixture: ...


def check_option_names(adapter: str, options: Mapping[str, Any], known: tuple[str, ...]) -> None:
    """Refuse an option ``adapter`` does not have, naming those it has.

    Raises:
        AdapterError: the first unknown option.
    """
    for name in options:
        if name not in known:
            raise AdapterError(f"the {adapter} adapter has no option '{name}' (it has {', '.join(known)})", name)


def check_timeouts(values: Mapping[str, float]) -> dict[str, float]:
    """:data:`DEFAULT_TIMEOUTS` with ``values`` over them; unknown steps and non-positive values refused.

    Raises:
        AdapterError: an unknown step or a timeout that is not a positive number of seconds.
    """
    merged = dict(DEFAULT_TIMEOUTS)
    for step, seconds in values.items():
        if step not in DEFAULT_TIMEOUTS:
            raise AdapterError(f"no device step '{step}'; the steps are {', '.join(DEFAULT_TIMEOUTS)}", step)
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 < seconds <= 86400:
            raise AdapterError("a timeout is a number of seconds from 1 to 86400", step)
        merged[step] = float(seconds)
    return merged


def install_secret(device: Device, name: str, kind: str, target: str, secret: bytes) -> None:
    """The install-secret step: ``device.install_secret(name, kind, target, secret)``.

    ``target`` is where the release says the secret goes ("nvs:psk", "otp:3"),
    a string the adapter understands. The adapter must put ``secret`` on the
    device and nowhere else: never in a file, a log, or a tool's command line.
    An adapter without ``install_secret`` cannot install one, and the unit
    fails at this step (its sealed secret is recorded as never installed).

    Raises:
        DeviceError: the adapter cannot install secrets.
    """
    install = getattr(device, "install_secret", None)
    if install is None:
        raise DeviceError(f"the device adapter cannot install secrets (secret '{name}', target '{target}')")
    install(name, kind, target, secret)


def lock_device(device: Device, profiles: Mapping[str, Mapping[str, Any]]) -> None:
    """The lock step: ``device.lock_with(profiles)`` where the adapter applies a release's lock profiles.

    ``profiles`` are the release's signed lock profiles by name (empty for a
    release without any); an adapter that reads them (``esp32``) picks the
    one its configuration names. Other adapters are asked to ``lock()``.
    """
    apply = getattr(device, "lock_with", None)
    if apply is None:
        device.lock()
    else:
        apply(profiles)
