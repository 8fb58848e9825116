"""The per-serial manifest: what a station did to one device, signed by the station.

A manifest is an in-toto Statement v1 (predicate type
:data:`MANIFEST_PREDICATE`) in a DSSE envelope signed by the station's
signing key. Its one subject is the device's hardware identity
(``hwid:<hex>``, digest the SHA-256 of the hardware id bytes). Its
``sequence`` is its position in the station's log, so a manifest replayed
into the log a second time sits at the wrong position. Its predicate::

    {"id": "<32 hex, unique per manifest>", "sequence": 41, "event": "provisioned",
     "station_id": "station-1", "operator": "op-7", "fixture": 2,
     "bundle_id": "<32 hex>", "product": "sensor-fw", "version": "1.4.0", "security_counter": 7,
     "policy_version": 3,
     "unit": 17,                      # the unit of the allocation this device holds; null when none was reserved
     "hardware_id": "<hex>", "serial": "SN-0042", "label": "SN-0042",
     "images": [{"name": "app.bin", "sha256": "<hex>", "measurement": "<hex or null>"}],
     "device_key_id": "<hex or null>", "certificate_serial": "<hex or null>", "certificate_sha256": "<hex or null>",
     "keys": {"signing": "<station signing key id>", "issuing_ca": "<station CA key id>"},
     "failed_step": null, "detail": null,
     "time": "2026-11-21T10:00:00Z", "clock": "system",
     "clock_session": "<32 hex>", "clock_monotonic": 5012,   # optional, both or neither
     "quality": {                                              # optional: the unit's test record
         "steps": [{"step": "program", "milliseconds": 3120}, ...],
         "measurements": [{"name": "supply current", "value": "0.0421", "unit": "A",
                           "lower": "0.03", "upper": "0.06", "passed": true, "step": "test"}],
         "calibration": [{"name": "adc gain", "value": "1.0021", "unit": ""}]},
     "secrets": [{"name": "backend-psk", "kind": "psk-256", "sealed_sha256": "<hex>",   # optional
                  "recipient": "<key id>", "installed": true}],
     "lots": {"mcu": "L2311A", "antenna": "R-0042"}}                                      # optional

``clock_session`` names one run of the station's process and
``clock_monotonic`` is its monotonic clock (whole seconds) when the manifest
was signed: inside one session, the wall clock's step between two manifests
must match the monotonic step, so a wall clock set forward mid-run shows. A
manifest from before these fields existed has neither and still verifies.

``quality`` is what the station measured of a unit it worked on: how long
each step took, the test's measurements with their limits and verdicts, and
the calibration coefficients found (``docs/adr/0010-measurements.md``).
Numbers are decimal strings in Python's shortest round-trip spelling (JSON
numbers here are whole only, so each value has one spelling); a measurement
outside its limits is never ``passed``, and a unit certified as good
(provisioned, retry, rework) never carries a failed one. A manifest without
``quality`` (any from before it existed) still verifies.

``secrets`` records each per-device secret the release declares (see
:mod:`vault.device_secrets`): its name and kind, the SHA-256 of the sealed
blob that travels in the evidence export, the key id it is sealed to, and
whether it reached the device (``installed``; false when the unit stopped
before). Never the secret. ``lots`` names the component lot codes in force
at the station for this unit (component name to lot code), so a failure can
be traced to a reel. Both are optional: manifests without them verify as before.

Events: ``provisioned`` (a new device, certified), ``retry`` (a device whose
earlier attempts at this station all failed, certified on a new attempt; under
the same release it keeps its unit), ``rework`` (a provisioned
device provisioned again, same identity and key), ``failed`` (stopped at
``failed_step``), ``scrap`` (taken out of production), ``label-mismatch``
(the scanned label is not the device's) and ``break-glass`` (an operator
override, with its reason in ``detail``). Key material never appears, only
key ids.

Operator events (:data:`OPERATOR_EVENTS`) name no unit: ``sign-in`` and
``sign-out`` (an operator starts or ends a shift at the console; the subject
is then the station itself, its hardware id being the station signing key's
id), ``acknowledge`` (a supervisor, in ``operator``, acknowledges a stopped
fixture: what stopped it and why it may go on in ``detail``; the subject is
the device that stopped it, or the station for a clock problem) and
``label`` (a label was printed for the device's bound ``serial``: what and
where in ``detail``; ``failed_step`` ``print`` when the printer failed).

This is the bottom layer shared by the station library, which writes
manifests, and the audit, which reads millions of them: bytes in, a checked
:class:`Manifest` out.

Example:
    >>> import datetime
    >>> from cryptography.hazmat.primitives.asymmetric import ec
    >>> from vault.crypto import key_id
    >>> class SoftSigner:
    ...     def __init__(self):
    ...         self._key = ec.generate_private_key(ec.SECP256R1())
    ...         self.public_key = self._key.public_key()
    ...         self.key_id = key_id(self.public_key)
    ...     def sign(self, data):
    ...         return self._key.sign(data, ec.ECDSA(hashes.SHA256()))
    >>> from cryptography.hazmat.primitives import hashes
    >>> station = SoftSigner()
    >>> manifest = Manifest(
    ...     id="00" * 16, sequence=0, event="scrap", station_id="station-1", operator="op-7", fixture=0,
    ...     bundle_id="11" * 16, product="sensor-fw", version="1.4.0", security_counter=7, policy_version=3,
    ...     unit=1, hardware_id="a1b2c3d4", serial="SN-1", label="SN-1", images=(), device_key_id=None,
    ...     certificate_serial=None, certificate_sha256=None,
    ...     keys={"signing": station.key_id, "issuing_ca": "22" * 32}, failed_step=None, detail="dropped",
    ...     time=datetime.datetime(2026, 11, 21, 10, 0, tzinfo=datetime.UTC), clock="system",
    ... )
    >>> wire = sign_manifest(manifest, station)
    >>> open_manifest(wire, {station.key_id: station.public_key}) == manifest
    True
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from vault.crypto import Signer
from vault.device_secrets import SealedRecord, parse_sealed_records
from vault.errors import FormatError
from vault.formats import Envelope, Statement, Subject, open_statement, sign_statement
from vault.formats._json import check_fields, quote
from vault.policy import format_time, parse_time

__all__ = [
    "CERTIFIED_EVENTS",
    "EVENTS",
    "MANIFEST_PREDICATE",
    "OPERATOR_EVENTS",
    "MAX_COEFFICIENTS",
    "MAX_MANIFEST_SIZE",
    "MAX_MEASUREMENTS",
    "MAX_NAME",
    "MAX_STEPS",
    "MAX_LOTS",
    "MAX_UNIT",
    "Coefficient",
    "ImageRecord",
    "Manifest",
    "QualityRecord",
    "Reading",
    "number_text",
    "open_manifest",
    "parse_lots",
    "parse_manifest",
    "parse_quality",
    "sign_manifest",
]

MANIFEST_PREDICATE = "https://vault.dev/manifest/v1"
MAX_MANIFEST_SIZE = 64 * 1024
"""Largest manifest envelope accepted, in bytes; a real one is about 2 KiB."""

EVENTS = (
    "provisioned", "retry", "rework", "failed", "scrap", "label-mismatch", "break-glass",
    "sign-in", "sign-out", "acknowledge", "label",
)  # fmt: skip
"""Every event a manifest can record."""

OPERATOR_EVENTS = ("sign-in", "sign-out", "acknowledge", "label")
"""The events that record what people did at the station rather than what was done to a device."""

_FIELDS = frozenset(
    {
        "id",
        "sequence",
        "event",
        "station_id",
        "operator",
        "fixture",
        "bundle_id",
        "product",
        "version",
        "security_counter",
        "policy_version",
        "unit",
        "hardware_id",
        "serial",
        "label",
        "images",
        "device_key_id",
        "certificate_serial",
        "certificate_sha256",
        "keys",
        "failed_step",
        "detail",
        "time",
        "clock",
    }
)
_CLOCK_FIELDS = frozenset({"clock_session", "clock_monotonic"})  # optional, both or neither
_QUALITY_FIELDS = frozenset({"steps", "measurements", "calibration"})
_STEP_FIELDS = frozenset({"step", "milliseconds"})
_READING_FIELDS = frozenset({"name", "value", "unit", "lower", "upper", "passed", "step"})
_COEFFICIENT_FIELDS = frozenset({"name", "value", "unit"})
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:e[+-][0-9]+)?")
CERTIFIED_EVENTS = frozenset({"provisioned", "retry", "rework"})
"""Events after which the device holds a certificate: its device was good."""
MAX_MEASUREMENTS = 64
"""Measurements one manifest records at most (a manifest stays well under :data:`MAX_MANIFEST_SIZE`)."""
MAX_COEFFICIENTS = 64
"""Calibration coefficients one manifest records at most."""
MAX_STEPS = 32
"""Timed steps one manifest records at most."""
MAX_NAME = 64
"""Characters of a measurement's, coefficient's or step's name."""
MAX_UNIT = 16
"""Characters of a measurement's or coefficient's unit ("A", "mV", "ppm")."""
MAX_LOTS = 32
"""Components whose lot one manifest records at most."""
_OPTIONAL = frozenset({"quality", "secrets", "lots"})  # absent from manifests made before them (or without them)
_COMPONENT = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_MAX_LOT = 64
_IMAGE_FIELDS = frozenset({"name", "sha256", "measurement"})
_KEY_FIELDS = frozenset({"signing", "issuing_ca"})
_HEX = re.compile(r"(?:[0-9a-f]{2})+")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_ID = re.compile(r"[0-9a-f]{32}")
_MAX_TEXT = 256
_MAX_HWID = 64  # hex characters: 32 bytes
_MAX_IMAGES = 64


@dataclass(frozen=True)
class ImageRecord:
    """One image as it was programmed: the allowlisted digest and what the device reported back."""

    name: str
    sha256: str
    measurement: str | None = None


@dataclass(frozen=True)
class Reading:
    """One measurement of the unit's test as recorded: its value, unit, limits (None: none) and verdict."""

    name: str
    value: float
    unit: str
    lower: float | None
    upper: float | None
    passed: bool
    step: str = "test"

    def shown(self) -> str:
        """The value and unit, for a person: "0.095 A"."""
        return f"{number_text(self.value)} {self.unit}".rstrip()

    def limits(self) -> str:
        """The limits, for a person: "[0.03, 0.06] A", "[.., 2.0] s"."""
        lower = ".." if self.lower is None else number_text(self.lower)
        upper = ".." if self.upper is None else number_text(self.upper)
        return f"[{lower}, {upper}] {self.unit}".rstrip()


@dataclass(frozen=True)
class Coefficient:
    """One calibration coefficient found for the unit."""

    name: str
    value: float
    unit: str = ""


@dataclass(frozen=True)
class QualityRecord:
    """What the station measured of one unit: (step, milliseconds) in the order run, readings, coefficients."""

    steps: tuple[tuple[str, int], ...] = ()
    measurements: tuple[Reading, ...] = ()
    calibration: tuple[Coefficient, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The ``quality`` field as signed."""
        return {
            "steps": [{"step": step, "milliseconds": ms} for step, ms in self.steps],
            "measurements": [
                {
                    "name": r.name,
                    "value": number_text(r.value),
                    "unit": r.unit,
                    "lower": None if r.lower is None else number_text(r.lower),
                    "upper": None if r.upper is None else number_text(r.upper),
                    "passed": r.passed,
                    "step": r.step,
                }  # fmt: skip
                for r in self.measurements
            ],
            "calibration": [{"name": c.name, "value": number_text(c.value), "unit": c.unit} for c in self.calibration],
        }


def number_text(value: float) -> str:
    """A finite number as the manifest spells it: Python's shortest round-trip decimal ("0.1", "1e-05")."""
    return repr(float(value))


@dataclass(frozen=True)
class Manifest:
    """One event at a station about one device; the fields are described in the module docstring."""

    id: str
    sequence: int
    event: str
    station_id: str
    operator: str
    fixture: int
    bundle_id: str
    product: str
    version: str
    security_counter: int
    policy_version: int
    unit: int | None
    hardware_id: str
    serial: str | None
    label: str | None
    images: tuple[ImageRecord, ...]
    device_key_id: str | None
    certificate_serial: str | None
    certificate_sha256: str | None
    keys: Mapping[str, str]
    failed_step: str | None
    detail: str | None
    time: datetime
    clock: str
    clock_session: str | None = None
    clock_monotonic: int | None = None
    quality: QualityRecord | None = None
    secrets: tuple[SealedRecord, ...] = ()
    lots: Mapping[str, str] | None = None

    def statement(self) -> Statement:
        """The in-toto statement this manifest is signed as."""
        hwid = bytes.fromhex(self.hardware_id)
        monotonic = {}
        if self.clock_session is not None or self.clock_monotonic is not None:
            monotonic = {"clock_session": self.clock_session, "clock_monotonic": self.clock_monotonic}
        return Statement(
            subjects=(Subject(f"hwid:{self.hardware_id}", {"sha256": hashlib.sha256(hwid).hexdigest()}),),
            predicate_type=MANIFEST_PREDICATE,
            predicate={
                "id": self.id,
                "sequence": self.sequence,
                "event": self.event,
                "station_id": self.station_id,
                "operator": self.operator,
                "fixture": self.fixture,
                "bundle_id": self.bundle_id,
                "product": self.product,
                "version": self.version,
                "security_counter": self.security_counter,
                "policy_version": self.policy_version,
                "unit": self.unit,
                "hardware_id": self.hardware_id,
                "serial": self.serial,
                "label": self.label,
                "images": [{"name": i.name, "sha256": i.sha256, "measurement": i.measurement} for i in self.images],
                "device_key_id": self.device_key_id,
                "certificate_serial": self.certificate_serial,
                "certificate_sha256": self.certificate_sha256,
                "keys": dict(self.keys),
                "failed_step": self.failed_step,
                "detail": self.detail,
                "time": format_time(self.time),
                "clock": self.clock,
                **monotonic,
                **({} if self.quality is None else {"quality": self.quality.to_json()}),
                **({"secrets": [s.to_json() for s in self.secrets]} if self.secrets else {}),
                **({} if self.lots is None else {"lots": dict(self.lots)}),
            },
        )


def sign_manifest(manifest: Manifest, signer: Signer) -> bytes:
    """The manifest's DSSE envelope (canonical JSON bytes), signed by the station's key.

    The manifest is checked by parsing its own statement first, so a station
    can never sign one an auditor would refuse as malformed.

    Raises:
        FormatError: a field is out of bounds.
    """
    statement = manifest.statement()
    parse_manifest(statement)
    return sign_statement(statement, [signer]).to_json()


def open_manifest(data: bytes, trusted: Mapping[str, ec.EllipticCurvePublicKey]) -> Manifest:
    """Verify a manifest envelope against the station keys in ``trusted``, then parse it.

    Raises:
        FormatError: malformed, too large, or not a manifest.
        SignatureError, ThresholdError: no trusted station key signed it.
    """
    envelope = Envelope.from_json(data, max_size=MAX_MANIFEST_SIZE, what="manifest")
    statement, _ = open_statement(envelope, trusted, 1, what="manifest", predicate_type=MANIFEST_PREDICATE)
    return parse_manifest(statement)


def parse_manifest(statement: Statement) -> Manifest:
    """Read a manifest statement's predicate (the signature is checked by :func:`open_manifest`).

    Raises:
        FormatError: a field is missing, unknown or malformed, or the subject is not the hardware id.
    """
    if statement.predicate_type != MANIFEST_PREDICATE:
        raise FormatError(f"not a manifest (predicate type {quote(statement.predicate_type, 80)})")
    predicate = statement.predicate
    clocked = isinstance(predicate, dict) and not _CLOCK_FIELDS.isdisjoint(predicate)
    optional = _OPTIONAL & set(predicate) if isinstance(predicate, dict) else frozenset()
    measured = "quality" in optional
    allowed = (_FIELDS | _CLOCK_FIELDS if clocked else _FIELDS) | optional
    p = check_fields(predicate, allowed, what="manifest")
    event = p["event"]
    if event not in EVENTS:
        raise FormatError(f"manifest: unknown event {quote(str(event), 40)}")
    hardware_id = _hex(p["hardware_id"], "hardware_id", _HEX, _MAX_HWID)
    subject = Subject(f"hwid:{hardware_id}", {"sha256": hashlib.sha256(bytes.fromhex(hardware_id)).hexdigest()})
    if statement.subjects != (subject,):
        raise FormatError("manifest: its subject is not the device's hardware id")
    images = p["images"]
    if not isinstance(images, list) or len(images) > _MAX_IMAGES:
        raise FormatError(f"manifest: images must be a list of at most {_MAX_IMAGES}")
    keys = check_fields(p["keys"], _KEY_FIELDS, what="manifest keys")
    quality = parse_quality(p["quality"], event=event) if measured else None
    return Manifest(
        id=_hex(p["id"], "id", _ID, 32),
        sequence=_count(p["sequence"], "sequence"),
        event=event,
        station_id=_text(p["station_id"], "station_id"),
        operator=_text(p["operator"], "operator"),
        fixture=_count(p["fixture"], "fixture"),
        bundle_id=_hex(p["bundle_id"], "bundle_id", _ID, 32),
        product=_text(p["product"], "product"),
        version=_text(p["version"], "version"),
        security_counter=_count(p["security_counter"], "security_counter"),
        policy_version=_count(p["policy_version"], "policy_version"),
        unit=None if p["unit"] is None else _count(p["unit"], "unit"),
        hardware_id=hardware_id,
        serial=_optional_text(p["serial"], "serial"),
        label=_optional_text(p["label"], "label"),
        images=tuple(_image(raw, i) for i, raw in enumerate(images)),
        device_key_id=_optional_hex(p["device_key_id"], "device_key_id", _SHA256, 64),
        certificate_serial=_optional_hex(p["certificate_serial"], "certificate_serial", _HEX, 40),
        certificate_sha256=_optional_hex(p["certificate_sha256"], "certificate_sha256", _SHA256, 64),
        keys={
            "signing": _hex(keys["signing"], "keys.signing", _SHA256, 64),
            "issuing_ca": _hex(keys["issuing_ca"], "keys.issuing_ca", _SHA256, 64),
        },
        failed_step=_optional_text(p["failed_step"], "failed_step"),
        detail=_optional_text(p["detail"], "detail"),
        time=parse_time(p["time"], what="manifest time"),
        clock=_text(p["clock"], "clock"),
        clock_session=_hex(p["clock_session"], "clock_session", _ID, 32) if clocked else None,
        clock_monotonic=_count(p["clock_monotonic"], "clock_monotonic") if clocked else None,
        quality=quality,
        secrets=parse_sealed_records(p["secrets"]) if "secrets" in p else (),
        lots=parse_lots(p["lots"]) if "lots" in p else None,
    )


def parse_lots(value: Any) -> dict[str, str]:
    """Read a manifest's ``lots``: component name to the lot code in force for the unit.

    Raises:
        FormatError: not a mapping of component names to printable lot codes, or too many.
    """
    if not isinstance(value, dict) or len(value) > MAX_LOTS:
        raise FormatError(f"manifest: lots must be a mapping of at most {MAX_LOTS} components")
    for component, lot in value.items():
        if not _COMPONENT.fullmatch(component):
            raise FormatError(f"manifest: lots: {quote(component)} is not a component name")
        _text(lot, f"lots.{component}", _MAX_LOT)
    return dict(value)


def parse_quality(value: Any, *, event: str) -> QualityRecord:
    """Read the ``quality`` field of a manifest of ``event`` (the audit's fast path uses it too: one parser).

    Raises:
        FormatError: a field is missing, unknown or malformed, a list is too long, or a verdict contradicts its limits.
    """
    q = check_fields(value, _QUALITY_FIELDS, what="manifest quality")
    steps, measurements, calibration = q["steps"], q["measurements"], q["calibration"]
    for name, items, cap in (("steps", steps, MAX_STEPS), ("measurements", measurements, MAX_MEASUREMENTS),
                             ("calibration", calibration, MAX_COEFFICIENTS)):  # fmt: skip
        if not isinstance(items, list) or len(items) > cap:
            raise FormatError(f"manifest: quality.{name} must be a list of at most {cap}")
    record = QualityRecord(
        tuple(_timed(raw, i) for i, raw in enumerate(steps)),
        tuple(_reading(raw, i) for i, raw in enumerate(measurements)),
        tuple(_coefficient(raw, i) for i, raw in enumerate(calibration)),
    )
    if event in CERTIFIED_EVENTS and not all(r.passed for r in record.measurements):
        raise FormatError(f"manifest: a {event} unit carries a failed measurement")
    return record


def _timed(raw: Any, index: int) -> tuple[str, int]:
    entry = check_fields(raw, _STEP_FIELDS, what=f"manifest quality.steps[{index}]")
    return _text(entry["step"], f"quality.steps[{index}].step", MAX_NAME), _count(
        entry["milliseconds"], f"quality.steps[{index}].milliseconds"
    )


def _reading(raw: Any, index: int) -> Reading:
    what = f"quality.measurements[{index}]"
    entry = check_fields(raw, _READING_FIELDS, what=f"manifest {what}")
    value = _number(entry["value"], f"{what}.value")
    lower = None if entry["lower"] is None else _number(entry["lower"], f"{what}.lower")
    upper = None if entry["upper"] is None else _number(entry["upper"], f"{what}.upper")
    passed = entry["passed"]
    if not isinstance(passed, bool):
        raise FormatError(f"manifest: {what}.passed must be true or false")
    if passed and ((lower is not None and value < lower) or (upper is not None and value > upper)):
        raise FormatError(f"manifest: {what} is outside its limits but recorded as passed")
    return Reading(
        _text(entry["name"], f"{what}.name", MAX_NAME), value, _unit(entry["unit"], f"{what}.unit"), lower, upper,
        passed, _text(entry["step"], f"{what}.step", MAX_NAME),
    )  # fmt: skip


def _coefficient(raw: Any, index: int) -> Coefficient:
    what = f"quality.calibration[{index}]"
    entry = check_fields(raw, _COEFFICIENT_FIELDS, what=f"manifest {what}")
    return Coefficient(
        _text(entry["name"], f"{what}.name", MAX_NAME),
        _number(entry["value"], f"{what}.value"),
        _unit(entry["unit"], f"{what}.unit"),
    )


def _number(value: object, what: str) -> float:
    """A decimal string in its one spelling (:func:`number_text`), finite."""
    if not isinstance(value, str) or len(value) > 32 or not _NUMBER.fullmatch(value):
        raise FormatError(f"manifest: {what} must be a decimal number as text")
    number = float(value)
    if not math.isfinite(number) or number_text(number) != value:
        raise FormatError(f"manifest: {what} must be a finite number in its shortest spelling")
    return number


def _unit(value: object, what: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_UNIT or not value.isprintable():
        raise FormatError(f"manifest: {what} must be printable text of at most {MAX_UNIT} characters")
    return value


def _image(raw: Any, index: int) -> ImageRecord:
    entry = check_fields(raw, _IMAGE_FIELDS, what=f"manifest images[{index}]")
    return ImageRecord(
        name=_text(entry["name"], f"images[{index}].name"),
        sha256=_hex(entry["sha256"], f"images[{index}].sha256", _SHA256, 64),
        measurement=_optional_hex(entry["measurement"], f"images[{index}].measurement", _SHA256, 64),
    )


def _text(value: object, what: str, limit: int = _MAX_TEXT) -> str:
    if not isinstance(value, str) or not value or len(value) > limit or not value.isprintable():
        raise FormatError(f"manifest: {what} must be printable text of 1 to {limit} characters")
    return value


def _optional_text(value: object, what: str) -> str | None:
    return None if value is None else _text(value, what)


def _count(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        raise FormatError(f"manifest: {what} must be a whole number")
    return value


def _hex(value: object, what: str, pattern: re.Pattern[str], max_length: int) -> str:
    if not isinstance(value, str) or len(value) > max_length or not pattern.fullmatch(value):
        raise FormatError(f"manifest: {what} must be lower-case hex")
    return value


def _optional_hex(value: object, what: str, pattern: re.Pattern[str], max_length: int) -> str | None:
    return None if value is None else _hex(value, what, pattern, max_length)
