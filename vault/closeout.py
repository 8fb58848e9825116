"""The close-out: a station's signed statement that it is done with a release.

A close-out is an in-toto Statement v1 (predicate type
:data:`CLOSEOUT_PREDICATE`) in a DSSE envelope signed by the station's
signing key, the key that signs its manifests and checkpoints. Its one
subject is the release (``bundle:<bundle id>``, digest the SHA-256 of the
release statement envelope the station loaded). Its predicate::

    {"station_id": "station-1", "bundle_id": "<32 hex>", "product": "sensor-fw", "version": "1.4.0",
     "security_counter": 7, "policy_version": 4, "allocation": 12,
     "units": {"used": 10, "provisioned": 8, "failed": 1, "scrapped": 1, "unrecorded": 0},
     "log": {"origin": "vault.dev/station/station-1", "size": 31, "root": "<64 hex>"},
     "exports": 3, "time": "2026-11-21T18:00:00Z", "clock": "system"}

``units.used`` is the count of the allocation the station token reserved
for the release; the other four say how those units ended (``unrecorded``:
counted, with no device record left, e.g. after a recovery). ``log`` is
the station log's size and RFC 9162 root when it closed, which is the
checkpoint of its ``exports``-th (last) evidence export: everything the log
held was exported before the close-out was signed. After signing it the
station refuses every further unit of the release.

Anyone holding the trust policy can check one (:func:`verify_closeout`):
the release manager without the auditor's key, the auditor beside the
evidence.

Example:
    >>> import datetime
    >>> from cryptography.hazmat.primitives import hashes
    >>> from cryptography.hazmat.primitives.asymmetric import ec
    >>> from vault.crypto import key_id
    >>> class SoftSigner:
    ...     def __init__(self):
    ...         self._key = ec.generate_private_key(ec.SECP256R1())
    ...         self.public_key = self._key.public_key()
    ...         self.key_id = key_id(self.public_key)
    ...     def sign(self, data):
    ...         return self._key.sign(data, ec.ECDSA(hashes.SHA256()))
    >>> station = SoftSigner()
    >>> closeout = Closeout(
    ...     station_id="station-1", bundle_id="11" * 16, statement_sha256="22" * 32, product="sensor-fw",
    ...     version="1.4.0", security_counter=7, policy_version=4, allocation=12,
    ...     units=UnitsUsed(used=3, provisioned=2, failed=1, scrapped=0, unrecorded=0),
    ...     log_size=5, log_root="33" * 32, exports=2,
    ...     time=datetime.datetime(2026, 11, 21, 18, 0, tzinfo=datetime.UTC), clock="system",
    ... )
    >>> wire = sign_closeout(closeout, station)
    >>> open_closeout(wire, {station.key_id: station.public_key}) == closeout
    True
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from vault.crypto import Signer
from vault.errors import FormatError, SignatureError
from vault.formats import Envelope, Statement, Subject, open_statement, sign_statement
from vault.formats._json import check_fields, quote
from vault.policy import TrustPolicy, format_time, parse_time

__all__ = [
    "CLOSEOUT_PREDICATE",
    "CLOSEOUT_SUFFIX",
    "MAX_CLOSEOUT_SIZE",
    "Closeout",
    "UnitsUsed",
    "closeout_name",
    "open_closeout",
    "parse_closeout",
    "sign_closeout",
    "verify_closeout",
]

CLOSEOUT_PREDICATE = "https://vault.dev/closeout/v1"
CLOSEOUT_SUFFIX = ".vault-closeout"
"""A close-out file's name ends so: ``<station id>-<bundle id>.vault-closeout``."""
MAX_CLOSEOUT_SIZE = 16 * 1024
"""Largest close-out envelope accepted, in bytes; a real one is about 1.5 KiB."""

_FIELDS = frozenset(
    {
        "station_id",
        "bundle_id",
        "product",
        "version",
        "security_counter",
        "policy_version",
        "allocation",
        "units",
        "log",
        "exports",
        "time",
        "clock",
    }
)
_UNIT_FIELDS = ("used", "provisioned", "failed", "scrapped", "unrecorded")
_LOG_FIELDS = frozenset({"origin", "size", "root"})
_BUNDLE_ID = re.compile(r"[0-9a-f]{32}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MAX_TEXT = 256


@dataclass(frozen=True)
class UnitsUsed:
    """The units of the allocation the station reserved, and how they ended."""

    used: int
    provisioned: int
    failed: int
    scrapped: int
    unrecorded: int


@dataclass(frozen=True)
class Closeout:
    """A station's close-out of one release; the fields are described in the module docstring."""

    station_id: str
    bundle_id: str
    statement_sha256: str
    product: str
    version: str
    security_counter: int
    policy_version: int
    allocation: int
    units: UnitsUsed
    log_size: int
    log_root: str
    exports: int
    time: datetime
    clock: str

    @property
    def origin(self) -> str:
        """The station log's checkpoint origin."""
        return f"vault.dev/station/{self.station_id}"

    def statement(self) -> Statement:
        """The in-toto statement this close-out is signed as."""
        return Statement(
            subjects=(Subject(f"bundle:{self.bundle_id}", {"sha256": self.statement_sha256}),),
            predicate_type=CLOSEOUT_PREDICATE,
            predicate={
                "station_id": self.station_id,
                "bundle_id": self.bundle_id,
                "product": self.product,
                "version": self.version,
                "security_counter": self.security_counter,
                "policy_version": self.policy_version,
                "allocation": self.allocation,
                "units": {name: getattr(self.units, name) for name in _UNIT_FIELDS},
                "log": {"origin": self.origin, "size": self.log_size, "root": self.log_root},
                "exports": self.exports,
                "time": format_time(self.time),
                "clock": self.clock,
            },
        )

    def to_json(self) -> dict[str, Any]:
        """What ``--json`` prints: the predicate, with the release statement's digest."""
        value = dict(self.statement().predicate)
        value["statement_sha256"] = self.statement_sha256
        return value


def closeout_name(station_id: str, bundle_id: str) -> str:
    """The file name of a station's close-out of a release."""
    return f"{station_id}-{bundle_id}{CLOSEOUT_SUFFIX}"


def sign_closeout(closeout: Closeout, signer: Signer) -> bytes:
    """The close-out's DSSE envelope (canonical JSON bytes), signed by the station's key.

    Raises:
        FormatError: a field is out of bounds (checked by parsing the statement first).
    """
    statement = closeout.statement()
    parse_closeout(statement)
    return sign_statement(statement, [signer]).to_json()


def open_closeout(data: bytes, trusted: Mapping[str, ec.EllipticCurvePublicKey]) -> Closeout:
    """Verify a close-out envelope against the station keys in ``trusted``, then parse it.

    Raises:
        FormatError: malformed, too large, or not a close-out.
        SignatureError, ThresholdError: no trusted key signed it.
    """
    return _open(data, trusted)[0]


def verify_closeout(data: bytes, policy: TrustPolicy) -> Closeout:
    """Verify a close-out against the signing key the trust policy enrols for the station it names.

    Raises:
        FormatError: malformed, too large, or not a close-out.
        SignatureError, ThresholdError: no enrolled station key signed it, or
            the key that did is another station's.
    """
    trusted = {s.signing.key_id: s.signing.public_key for s in policy.stations.values()}
    closeout, signer = _open(data, trusted)
    enrolled = policy.stations.get(closeout.station_id)
    if enrolled is None or enrolled.signing.key_id != signer:
        raise SignatureError(
            f"close-out: it names station {quote(closeout.station_id)}, but the key that signed it "
            f"({signer[:16]}) is not that station's signing key in trust policy v{policy.version}"
        )
    return closeout


def _open(data: bytes, trusted: Mapping[str, ec.EllipticCurvePublicKey]) -> tuple[Closeout, str]:
    envelope = Envelope.from_json(data, max_size=MAX_CLOSEOUT_SIZE, what="close-out")
    statement, result = open_statement(envelope, trusted, 1, what="close-out", predicate_type=CLOSEOUT_PREDICATE)
    return parse_closeout(statement), result.valid[0]


def parse_closeout(statement: Statement) -> Closeout:
    """Read a close-out statement's predicate (the signature is checked by :func:`open_closeout`).

    Raises:
        FormatError: a field is missing, unknown or malformed, or the subject is not the release.
    """
    if statement.predicate_type != CLOSEOUT_PREDICATE:
        raise FormatError(f"not a close-out (predicate type {quote(statement.predicate_type, 80)})")
    p = check_fields(statement.predicate, _FIELDS, what="close-out")
    bundle_id = _matching(p["bundle_id"], "bundle_id", _BUNDLE_ID)
    if len(statement.subjects) != 1 or statement.subjects[0].name != f"bundle:{bundle_id}":
        raise FormatError("close-out: its subject is not the release it closes")
    digest = statement.subjects[0].digest
    if set(digest) != {"sha256"}:
        raise FormatError("close-out: its subject's digest must be the release statement's sha256 alone")
    raw_units = check_fields(p["units"], frozenset(_UNIT_FIELDS), what="close-out units")
    units = UnitsUsed(**{name: _whole(raw_units[name], f"units.{name}") for name in _UNIT_FIELDS})
    if units.provisioned + units.failed + units.scrapped + units.unrecorded != units.used:
        raise FormatError("close-out: the units' outcomes do not add up to the units used")
    log = check_fields(p["log"], _LOG_FIELDS, what="close-out log")
    station_id = _text(p["station_id"], "station_id")
    closeout = Closeout(
        station_id=station_id,
        bundle_id=bundle_id,
        statement_sha256=_matching(digest["sha256"], "subject digest", _SHA256),
        product=_text(p["product"], "product"),
        version=_text(p["version"], "version"),
        security_counter=_whole(p["security_counter"], "security_counter"),
        policy_version=_whole(p["policy_version"], "policy_version"),
        allocation=_whole(p["allocation"], "allocation"),
        units=units,
        log_size=_whole(log["size"], "log.size"),
        log_root=_matching(log["root"], "log.root", _SHA256),
        exports=_whole(p["exports"], "exports"),
        time=parse_time(p["time"], what="close-out time"),
        clock=_text(p["clock"], "clock"),
    )
    if log["origin"] != closeout.origin:
        raise FormatError(f"close-out: its log origin is not station {quote(station_id)}'s")
    return closeout


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_TEXT or not value.isprintable():
        raise FormatError(f"close-out: {what} must be printable text of 1 to {_MAX_TEXT} characters")
    return value


def _whole(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise FormatError(f"close-out: {what} must be a whole number")
    return value


def _matching(value: object, what: str, pattern: re.Pattern[str]) -> str:
    if not isinstance(value, str) or len(value) > 64 or not pattern.fullmatch(value):
        raise FormatError(f"close-out: {what} must be lower-case hex of the right length")
    return value
