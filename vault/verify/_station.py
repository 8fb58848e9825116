"""The station: load a release, provision units, keep the log, export evidence."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from vault import checkpoint as notes
from vault import merkle, pki
from vault.container import BundleReader, unwrap_data_key
from vault.crypto import key_id
from vault.device_secrets import SealedRecord, SecretSpec, binding, seal_secret
from vault.errors import (
    AllocationError,
    AllowlistError,
    AlreadyProvisionedError,
    ClockError,
    CloneError,
    DeviceError,
    FormatError,
    IdentityError,
    InputError,
    LabelMismatchError,
    LogError,
    NotRecipientError,
    PolicyError,
    RollbackError,
    StateError,
    VaultError,
)
from vault.evidence import EvidenceWriter
from vault.formats import Envelope, parse_json
from vault.formats._json import canonical_json
from vault.manifest import ImageRecord, Manifest, QualityRecord, open_manifest, sign_manifest
from vault.policy import Station as EnrolledStation
from vault.policy import TrustPolicy, format_time, load_policy
from vault.release import Release, open_release
from vault.token import Head, Pkcs11Uri, TokenSession, open_token
from vault.verify._closing import CloseResult, close_release, refuse_if_closed
from vault.verify._device import Device, ImageToProgram
from vault.verify._state import LogHead, State
from vault.verify.devices._protocol import Progress, install_secret, lock_device, record_test

__all__ = [
    "COPY_SUFFIX",
    "DECRYPTION_LABEL",
    "ISSUING_CA_LABEL",
    "SIGNING_LABEL",
    "AllocationStatus",
    "Clock",
    "CloseResult",
    "ExportResult",
    "LoadedRelease",
    "Outcome",
    "Station",
    "StationStatus",
    "log_origin",
    "system_clock",
]

SIGNING_LABEL = "station-signing"
ISSUING_CA_LABEL = "station-ca"
DECRYPTION_LABEL = "station-decrypt"
COPY_SUFFIX = ".station-copy"
"""The station's own copy of each export, sealed to its decryption key, beside the auditor's."""

Clock = Callable[[], tuple[datetime, str]]
"""Returns the current UTC time and where it comes from ("system", "ntp", "gps", "rtc")."""

_DEVICE_CERTIFICATE_DAYS = 20 * 365
_MAX_LABEL = 64
_MAX_POLICY = 4 * 1024 * 1024


def system_clock() -> tuple[datetime, str]:
    """The host's clock, to the second."""
    return datetime.now(UTC).replace(microsecond=0), "system"


def log_origin(station_id: str) -> str:
    """The checkpoint origin (and signed-note key name) of a station's log."""
    return f"vault.dev/station/{station_id}"


@dataclass(frozen=True)
class LoadedRelease:
    """A release this station verified and decrypted, ready to provision from."""

    release: Release
    policy: TrustPolicy
    allocation: int
    used: int
    path: Path
    images: tuple[ImageToProgram, ...]
    data_key: bytes = field(repr=False)

    @property
    def left(self) -> int:
        """Units of the allocation not reserved when it was loaded."""
        return self.allocation - self.used


@dataclass(frozen=True)
class Outcome:
    """What one call did: the event recorded, the unit it holds and where its manifest is in the log."""

    event: str
    hardware_id: str
    serial: str | None
    unit: int | None
    sequence: int
    manifest_id: str
    certificate: x509.Certificate | None = None


@dataclass(frozen=True)
class AllocationStatus:
    """One loaded release's allocation at this station."""

    bundle_id: str
    product: str
    version: str
    security_counter: int
    allocation: int
    used: int
    expires: str
    closed: bool = False  # the station closed this release: no further unit of it

    @property
    def left(self) -> int:
        """Units not yet reserved (none once the release is closed)."""
        return 0 if self.closed else self.allocation - self.used


@dataclass(frozen=True)
class StationStatus:
    """What ``vault station status`` shows."""

    station_id: str
    policy_version: int
    releases: tuple[AllocationStatus, ...]
    log_size: int
    events: dict[str, int]
    last_time: str | None
    last_export: ExportResult | None
    token_head: LogHead | None = None  # what the station token holds (the folder was checked against it)
    refused: dict[str, int] = field(default_factory=dict)
    """Of the "failed" manifests, those of devices refused before any unit was reserved, by the step
    that refused them ("allocation": none was left; "identity": a known, scrapped or unknown device)."""


@dataclass(frozen=True)
class ExportResult:
    """One evidence export: where it is and which part of the log it carries."""

    sequence: int
    path: Path
    from_size: int
    to_size: int
    root: str
    checkpoint: bytes = field(repr=False)


class _UnitFailed(Exception):
    """Internal: a step failed; carries the step and the error to record and raise."""

    def __init__(
        self,
        step: str,
        error: VaultError,
        images: tuple[ImageRecord, ...] = (),
        tested: QualityRecord | None = None,
    ) -> None:
        super().__init__(str(error))
        self.step = step
        self.error = error
        self.images = images  # the images programmed before the step failed
        self.tested = tested  # what the test measured, when the test failed


@dataclass
class _Secret:
    """One secret drawn for a unit: sealed at once; the plaintext only until the adapter took it."""

    spec: SecretSpec
    sealed: bytes
    recipient: str
    plaintext: bytearray = field(repr=False)
    installed: bool = False

    def record(self) -> SealedRecord:
        """What the manifest records: the sealed blob's digest, never the secret."""
        digest = hashlib.sha256(self.sealed).hexdigest()
        return SealedRecord(self.spec.name, self.spec.kind, digest, self.recipient, self.installed)

    def forget(self) -> None:
        """Overwrite the plaintext (the sealed blob stays)."""
        self.plaintext[:] = bytes(len(self.plaintext))


def _quality(times: dict[str, float], tested: QualityRecord | None) -> QualityRecord:
    """The unit's quality record: each step's time (whole milliseconds, in the order run) and its test."""
    steps = tuple((step, round(seconds * 1000)) for step, seconds in times.items())
    if tested is None:
        return QualityRecord(steps)
    return QualityRecord(steps, tested.measurements, tested.calibration)


class Station:
    """A factory station: its token, its state folder, and the release it provisions from.

    Use it as a context manager; it opens the station token (the keys
    ``station-signing``, ``station-ca`` and ``station-decrypt``), the state
    folder, and closes units that a crashed process left open with an
    "interrupted" manifest. One :class:`Station` may serve several fixture
    threads; several processes may each open their own on the same folder.

    Args:
        state_dir: the station's state folder (its database and log).
        token: the station token's URI, with its PIN source.
        station_id: the id the station was enrolled as.
        root: the pinned root certificate, or its SHA-256 fingerprint (hex)
            to take the certificate from the policy and check it.
        clock: where the time comes from (default: the host clock).
        operator: who runs the station, recorded in every manifest.
        monotonic: a monotonic clock of the same machine as ``clock``, in
            seconds (default: the host's, with the host clock). Each manifest
            records its reading and this run's session id, so that an audit
            sees a wall clock set forward mid-run. A ``clock`` given without
            one records neither: a monotonic clock of another machine proves nothing.

    Raises:
        StateError: the state folder belongs to another station or root.
        TokenError: the token or one of its keys cannot be used.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        token: Pkcs11Uri,
        station_id: str,
        root: x509.Certificate | str,
        clock: Clock = system_clock,
        operator: str = "operator",
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        self._root: x509.Certificate | None = root if isinstance(root, x509.Certificate) else None
        self.root_sha256 = root_sha256(root)
        self.station_id = station_id
        self.operator = _label_text(operator, "operator")
        self.clock = clock
        self._monotonic = monotonic if monotonic is not None or clock is not system_clock else time.monotonic
        self._clock_session = os.urandom(16).hex()  # this run: monotonic readings compare only inside one
        self._token_uri = token
        self._state_dir = Path(state_dir)
        self._stack = contextlib.ExitStack()
        self._token_lock = threading.Lock()
        self._release: LoadedRelease | None = None
        self._policy: TrustPolicy | None = None
        self._reader: BundleReader | None = None
        self._components: dict[str, tuple[re.Pattern[str], str | None]] = {}  # see declare_components

    # --- opening ----------------------------------------------------------------

    def __enter__(self) -> Station:
        state: State | None = None
        try:
            session: TokenSession = self._stack.enter_context(open_token(self._token_uri, rw=True))
            self._signing = session.key(label=SIGNING_LABEL)
            self._issuing_ca = session.key(label=ISSUING_CA_LABEL)
            self._decryption = session.key(label=DECRYPTION_LABEL)
            self._session = session
            state = self.state = State(self._state_dir, station_id=self.station_id, root_sha256=self.root_sha256)
            self._stack.callback(self.state.close)
            stored = self.state.meta("policy")
            if stored is not None:  # first: the token's keys are the ones enrolled for this station
                self._policy = self._verify_policy(bytes(stored), highest_seen=0, allow_expired=True)
            anchor = TokenAnchor(session, self.station_id, self._state_dir, self._token_lock)
            self._stack.callback(anchor.close)
            self.state.anchor = anchor
            with self.state.write():  # checks the folder against the token's head (and repairs a crash's lag)
                pass
            self._close_orphans()
        except BaseException:
            self._stack.close()
            if state is not None and state.created:
                state.discard_new()  # a folder made by this open holds nothing yet: it is not left behind
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        state = getattr(self, "state", None)
        unused = kind is not None and state is not None and state.created and self._nothing_recorded()
        self._stack.close()
        if unused:  # a load into a new folder failed: the folder holds nothing, so it is not left behind
            assert state is not None
            state.discard_new()

    def _nothing_recorded(self) -> bool:
        """Whether this station's folder holds nothing yet: no policy, release, log entry or unit."""
        try:
            db = self.state.read()
            head = State.head_in(db)
            loaded = db.execute("SELECT COUNT(*) FROM releases").fetchone()[0]
        except (sqlite3.Error, OSError, VaultError):
            return False
        return head.empty and not loaded and self.state.meta("policy") is None  # discard_new checks other users

    def _verify_policy(self, data: bytes, *, highest_seen: int, allow_expired: bool = False) -> TrustPolicy:
        now, _ = self.clock()
        root = self._root or _root_from_policy(data, self.root_sha256)
        policy = load_policy(data, root, now=now, highest_seen=highest_seen, allow_expired=allow_expired)
        enrolled = policy.stations.get(self.station_id)
        if enrolled is None:
            revoked = policy.revocation(self._signing.key_id) or next(
                (r for r in policy.revoked if r.role == "station" and r.holder == self.station_id), None
            )
            if revoked is not None:
                why = f" ({revoked.reason})" if revoked.reason else ""
                raise NotRecipientError(
                    f"station '{self.station_id}' was revoked in trust policy v{revoked.version}{why}: "
                    "it can load no release under this policy"
                )
            raise NotRecipientError(f"station '{self.station_id}' is not enrolled in trust policy v{policy.version}")
        for role, mine, theirs in (
            ("signing", self._signing, enrolled.signing),
            ("issuing CA", self._issuing_ca, enrolled.issuing_ca),
            ("decryption", self._decryption, enrolled.decryption),
        ):
            if mine.key_id != theirs.key_id:
                raise PolicyError(
                    f"the token's {role} key {mine.key_id[:16]} is not the one trust policy v{policy.version} "
                    f"enrolled for station '{self.station_id}' ({theirs.key_id[:16]})"
                )
        return policy

    @property
    def enrolled(self) -> EnrolledStation:
        """This station as the current policy enrolled it."""
        if self._policy is None:
            raise PolicyError("no trust policy is loaded at this station yet: load a release first")
        return self._policy.stations[self.station_id]

    # --- loading ----------------------------------------------------------------

    def load(self, bundle: str | os.PathLike[str], policy: bytes) -> LoadedRelease:
        """Verify a bundle against the trust policy and decrypt every image against its allowlist.

        Nothing is written but the station's state (highest policy version,
        highest security counter per product, the release and its
        allocation); loading the same bundle again keeps the units used.

        Raises:
            RollbackError: the policy is older than one seen, or the release's
                security counter is lower than one loaded for the product.
            ValidityError: the policy or the release is expired or not valid yet.
            NotRecipientError: the bundle is not for this station, or allocates it nothing.
            SignatureError, ThresholdError: a signature is missing, forged or not in its role.
            AllowlistError: an image decrypts but is not what the statement allows.
            DecryptionError: the data key or a chunk does not open (another station's, or altered).
            FormatError: the bundle or policy is malformed.
        """
        if len(policy) > _MAX_POLICY:
            raise FormatError(f"trust policy: {len(policy)} bytes is more than the {_MAX_POLICY}-byte limit")
        now, _ = self.clock()
        highest = int(self.state.meta("policy_version", 0))
        trust = self._verify_policy(policy, highest_seen=highest)
        path = Path(bundle)
        with BundleReader(path) as reader:
            release, _ = open_release(
                reader.envelope_bytes, reader.header_bytes, trust, now=now, station=self.station_id
            )
            if release.bundle_id != reader.header.bundle_id:
                raise FormatError("the release statement names another bundle id than the bundle's header")
            allocation = release.allocation.get(self.station_id, 0)
            recipient = reader.header.recipients.get(self.station_id)
            if recipient is None or self.station_id not in release.recipients:
                raise NotRecipientError(
                    f"bundle {release.bundle_id} ({release.product} {release.version}) is not for station "
                    f"'{self.station_id}'"
                )
            if allocation == 0:
                raise NotRecipientError(f"bundle {release.bundle_id} allocates no units to station '{self.station_id}'")
            self._check_counter(release)
            _check_secrets_recipient(release, trust)
            with self._token_lock:
                data_key = unwrap_data_key(recipient.wrapped_key, release.bundle_id, self.station_id, self._decryption)
            images = []
            for image in release.images:
                entry = reader.header.image(image.name)
                if entry.plaintext_length != image.length:
                    raise AllowlistError(
                        f"image '{image.name}' is {entry.plaintext_length} bytes in the bundle, "
                        f"the release allows {image.length}"
                    )
                digest = reader.plaintext_digest(image.name, data_key)
                if digest != image.sha256:
                    raise AllowlistError(
                        f"image '{image.name}' decrypts to {digest[:16]}, not the allowed {image.sha256[:16]}"
                    )
                images.append(ImageToProgram(image.name, image.length, image.sha256, dict(image.target)))
        with self.state.write() as db:
            self._check_counter(release, db)
            seen = int(State.meta_in(db, "policy_version") or 0)
            if trust.version < seen:  # another process stored a newer policy since this load began
                raise RollbackError(f"trust policy v{trust.version} is older than v{seen} seen before (rollback)")
            if trust.version >= seen:
                State.set_meta(db, "policy_version", trust.version)
                State.set_meta(db, "policy", policy)
            State.set_meta(db, "bundle_path", str(path.resolve()))
            State.set_meta(db, f"bundle_path:{release.bundle_id}", str(path.resolve()))
            db.execute(
                "INSERT INTO products (product, security_counter) VALUES (?, ?) ON CONFLICT(product) "
                "DO UPDATE SET security_counter = MAX(security_counter, excluded.security_counter)",
                (release.product, release.security_counter),
            )
            db.execute(
                "INSERT OR IGNORE INTO releases VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    release.bundle_id,
                    release.product,
                    release.version,
                    release.security_counter,
                    allocation,
                    format_time(release.not_before),
                    format_time(release.expires),
                    release.statement_sha256,
                    format_time(now),
                ),
            )
            used = State.used(db, release.bundle_id)
        self._policy = trust
        self._release = LoadedRelease(release, trust, allocation, used, path, tuple(images), data_key)
        if self._reader is not None:
            self._reader.close()
        self._reader = self._stack.enter_context(BundleReader(path))  # read by every unit (pread: thread-safe)
        if self._reader.header_bytes != reader.header_bytes:
            raise FormatError(f"{path} changed while it was being loaded")
        return self._release

    def resume(self, bundle_id: str | None = None) -> LoadedRelease:
        """Load again a bundle this station loaded, with the policy it holds (both verified again).

        Args:
            bundle_id: the release's bundle id, or a prefix of it naming one
                release loaded here; by default the one loaded last.

        Raises:
            InputError: no bundle was loaded at this station yet; no loaded
                release, or more than one, has that bundle id prefix; or the
                station does not know where that release's bundle is.
            As :meth:`load`.
        """
        bundle = self.state.meta("bundle_path")
        policy = self.state.meta("policy")
        if bundle is None or policy is None:
            raise InputError("this station has loaded no bundle yet: run 'vault station load' first")
        if bundle_id is not None:
            match = self.loaded_bundle_id(bundle_id)
            bundle = self.state.meta(f"bundle_path:{match}")
            if bundle is None:
                raise InputError(
                    f"this station does not know where bundle {match} is: load it again with 'vault station load'"
                )
        return self.load(bundle, bytes(policy))

    def loaded_bundle_id(self, prefix: str) -> str:
        """The bundle id of the one release loaded here whose id starts with ``prefix``.

        Raises:
            InputError: no loaded release, or more than one, has that prefix.
        """
        prefix = prefix.strip().lower()
        loaded: list[str] = [r[0] for r in self.state.read().execute("SELECT bundle_id FROM releases ORDER BY loaded")]
        matches = [b for b in loaded if b.startswith(prefix)]
        if len(matches) != 1:
            which = "no loaded release has" if not matches else f"{len(matches)} loaded releases have"
            raise InputError(
                f"{which} a bundle id starting with {prefix[:64]!r} (loaded here: {', '.join(loaded) or 'none'})"
            )
        return matches[0]

    def _check_counter(self, release: Release, db: sqlite3.Connection | None = None) -> None:
        row = (
            (db or self.state.read())
            .execute("SELECT security_counter FROM products WHERE product = ?", (release.product,))
            .fetchone()
        )
        if row is not None and release.security_counter < row[0]:
            raise RollbackError(
                f"release {release.product} {release.version} has security counter {release.security_counter}; "
                f"this station already loaded counter {row[0]} (rollback)"
            )

    @property
    def release(self) -> LoadedRelease:
        """The release loaded by :meth:`load`."""
        if self._release is None:
            raise InputError("no release is loaded: load a bundle first")
        return self._release

    # --- provisioning -------------------------------------------------------------

    def provision(
        self,
        device: Device,
        *,
        label: str | None = None,
        fixture: int = 0,
        rework: bool = False,
        break_glass: str | None = None,
        progress: Progress | None = None,
    ) -> Outcome:
        """Provision one device from the loaded release, recording a signed manifest whatever happens.

        A device this station knows, whose attempts all failed (a step, or a
        power cut) and that was neither provisioned nor scrapped, is retried
        without any flag: the new attempt keeps its serial and, under the same
        release, its unit (no new unit is counted); a success is a ``retry``.

        The per-device secrets the release declares are drawn from the station
        token and sealed to the secrets recipient as soon as the unit is
        reserved; the adapter installs each after the certificate, before the
        lock. The manifest records each one sealed (installed or not), the
        station keeps only the sealed blob (``docs/adr/0012-device-secrets.md``).
        With components declared (:meth:`declare_components`), the manifest
        records the lots in force.

        Args:
            device: the device on the fixture, behind its adapter.
            label: the serial scanned from its label; it must be the device's
                (new devices are bound to it, known ones must carry theirs).
                Without one, the station assigns ``<station>-<unit>``.
            fixture: the fixture slot, recorded in the manifest.
            rework: the device was provisioned before and is being done
                again; it keeps its identity, serial and key. A device whose
                attempts all failed is never reworked: it is retried.
            break_glass: DANGEROUS: a reason to provision although the clock
                is behind the log. It is recorded as a break-glass event.
            progress: called as each image streams to the device (name, bytes taken, length).

        Returns:
            The outcome, for a provisioned, retried or reworked device.

        Raises:
            LabelMismatchError, AlreadyProvisionedError, CloneError, IdentityError:
                the identity does not hold; a manifest records it.
            AllocationError: no unit is left; a manifest records the attempt.
            ClockError: the clock is behind the last log entry.
            ValidityError: the release or policy is outside its validity window.
            AllowlistError, DecryptionError, DeviceError, CertificateError:
                a step failed; a "failed" manifest names it and the unit stays used.
        """
        loaded = self.release
        self.check_not_closed()
        if label is not None:
            label = _label_text(label, "label")
        if fixture < 0:
            raise InputError("a fixture slot is a number from 0")
        now, source = self.clock()
        loaded.release.check_window(now)
        loaded.policy.check_current(now)
        last = self.state.meta("last_time")
        if last is not None and format_time(now) < last:
            if break_glass is None:
                raise ClockError(
                    f"the station clock ({format_time(now)}, {source}) is earlier than the last log entry ({last}); "
                    "fix the clock before provisioning"
                )
        times: dict[str, float] = {}
        started = time.monotonic()
        try:
            hardware_id = device.read_hardware_id()
        except Exception as e:  # an adapter reports a failed step by raising anything
            raise DeviceError(f"fixture {fixture}: reading the hardware id failed: {e}") from e
        if not isinstance(hardware_id, bytes) or not 1 <= len(hardware_id) <= 32:
            raise DeviceError(f"fixture {fixture}: the device's hardware id must be 1 to 32 bytes")
        hwid = hardware_id.hex()
        times["read-id"] = time.monotonic() - started
        if break_glass is not None:
            self._record(
                "break-glass", hwid, fixture=fixture, label=label, detail=_label_text(break_glass, "reason", 256)
            )
        unit, serial, known_key, event = self._reserve(hwid, label, fixture, rework)
        images: tuple[ImageRecord, ...] = ()
        tested: list[QualityRecord] = []  # the test's record, once it ran
        secrets: list[_Secret] = []  # drawn and sealed first: a unit that stops early records them as unused
        try:
            secrets += self._draw_secrets(loaded, hwid, serial)
            images = self._program(device, loaded, progress, times)
            tested.append(self._test(device, times))
            public_key, device_key_id = self._device_key(device, hwid, known_key, times)
            started = time.monotonic()
            certificate = self._certify(public_key, serial, hardware_id, now)
            times["certify"] = time.monotonic() - started
            self._step(
                "install-certificate",
                device.install_certificate,
                certificate.public_bytes(serialization.Encoding.DER),
                times=times,
            )
            for secret in secrets:
                self._step(
                    "install-secret",
                    install_secret,
                    device,
                    secret.spec.name,
                    secret.spec.kind,
                    secret.spec.target,
                    bytes(secret.plaintext),
                    times=times,
                )
                secret.installed = True
                secret.forget()
            self._step("lock", lock_device, device, loaded.release.lock_profiles, times=times)
        except _UnitFailed as failed:
            self._finish(
                "failed",
                hwid,
                unit,
                serial,
                label,
                fixture,
                failed.images or images,  # a step after programming still records what reached the device
                None,
                None,
                failed_step=failed.step,
                detail=str(failed.error),
                quality=_quality(times, failed.tested or (tested[0] if tested else None)),
                secrets=secrets,
                lots=self.lots(),
            )
            raise failed.error from failed
        finally:
            for secret in secrets:
                secret.forget()
        return self._finish(
            event,
            hwid,
            unit,
            serial,
            label,
            fixture,
            images,
            device_key_id,
            certificate,
            quality=_quality(times, tested[0]),
            secrets=secrets,
            lots=self.lots(),
        )

    def _draw_secrets(self, loaded: LoadedRelease, hwid: str, serial: str) -> list[_Secret]:
        """Each secret the release declares, drawn from the station token's generator and sealed at once."""
        release = loaded.release
        if not release.secrets:
            return []
        recipient = loaded.policy.secrets_recipient
        assert recipient is not None  # load() refused a release whose recipient the policy does not name
        drawn = []
        for spec in release.secrets:
            try:
                with self._token_lock:
                    plaintext = bytearray(self._session.generate_random(spec.length))
            except VaultError as e:
                raise _UnitFailed("install-secret", e) from e
            info = binding(release.bundle_id, self.station_id, hwid, serial, spec)
            sealed = seal_secret(recipient.public_key, bytes(plaintext), info)
            drawn.append(_Secret(spec, sealed, recipient.key_id, plaintext))
        return drawn

    # --- component lots -----------------------------------------------------------------

    def declare_components(self, components: dict[str, tuple[str, str | None]]) -> None:
        """The components whose lots this station records: name -> (lot code pattern, lot configured).

        A lot scanned at the station (:meth:`set_lot`) replaces the configured one until another is
        scanned; every unit's manifest records the lots in force (:meth:`lots`).

        Raises:
            InputError: a pattern is not a regular expression, or a configured lot does not match it.
        """
        checked: dict[str, tuple[re.Pattern[str], str | None]] = {}
        for name, (pattern, lot) in components.items():
            try:
                compiled = re.compile(pattern)
            except re.error as e:
                raise InputError(f"component {name}: its lot pattern is not a regular expression: {e}") from e
            if lot is not None:
                _check_lot(name, compiled, lot)
            checked[name] = (compiled, lot)
        self._components = checked

    @property
    def components(self) -> tuple[str, ...]:
        """The components whose lots this station records (:meth:`declare_components`), sorted."""
        return tuple(sorted(self._components))

    def set_lot(self, component: str, code: str) -> None:
        """Record the lot now in use for ``component`` (a reel scanned at the line), for every unit from now on.

        Raises:
            InputError: the component is not declared, or the code does not match its pattern.
        """
        declared = self._components
        if component not in declared:
            known = ", ".join(sorted(declared)) or "none"
            raise InputError(f"no component '{component}' is declared in the station configuration (declared: {known})")
        _check_lot(component, declared[component][0], code)
        with self.state.write() as db:
            State.set_meta(db, f"lot:{component}", code)

    def lots(self) -> dict[str, str] | None:
        """The lot in force per declared component (scanned, else configured); None when none is declared."""
        declared = self._components
        if not declared:
            return None
        lots = {}
        for name, (pattern, configured) in sorted(declared.items()):
            scanned = self.state.meta(f"lot:{name}")
            lot = str(scanned) if scanned is not None and pattern.fullmatch(str(scanned)) else configured
            if lot is not None:
                lots[name] = lot
        return lots

    def check_not_closed(self) -> None:
        """Refuse when the loaded release is closed at this station (no unit of it may start).

        Raises:
            BundleClosedError: it is closed (or being closed).
        """
        refuse_if_closed(self.state.read(), self.station_id, self.release.release)

    def _reserve(self, hwid: str, label: str | None, fixture: int, rework: bool) -> tuple[int, str, str | None, str]:
        """Check the identity and reserve one unit, durably, before the device is touched.

        Returns the unit, the serial, the device key id a known device holds,
        and the event a success records: "provisioned" for a new device,
        "retry" for a known one whose attempts all failed, "rework" for a
        provisioned one.
        """
        loaded = self.release
        bundle_id = loaded.release.bundle_id
        refusal: tuple[str, VaultError, str | None] | None = None
        with self.state.write() as db:
            refuse_if_closed(db, self.station_id, loaded.release)  # a close may have begun since provision() checked
            known = State.device(db, hardware_id=hwid)
            owner = State.device(db, serial=label) if label is not None else None
            if label is not None and owner is not None and owner.hardware_id != hwid:
                refusal = (
                    "label-mismatch",
                    LabelMismatchError(f"label '{label}' belongs to device {owner.hardware_id}, not to {hwid}"),
                    known.serial if known else None,
                )
            elif known is not None and label is not None and known.serial != label:
                refusal = (
                    "label-mismatch",
                    LabelMismatchError(f"device {hwid} is '{known.serial}', but its label reads '{label}'"),
                    known.serial,
                )
            elif known is not None and known.state == "scrapped":
                refusal = ("failed", IdentityError(f"device {hwid} ('{known.serial}') was scrapped"), known.serial)
            elif known is not None and known.state != "failed" and not rework:
                refusal = (
                    "failed",
                    AlreadyProvisionedError(
                        f"device {hwid} is known to this station as '{known.serial}' ({known.state}); "
                        "declare a rework to provision it again"
                    ),
                    known.serial,
                )
            elif known is None and rework:
                refusal = (
                    "failed",
                    IdentityError(f"rework declared for device {hwid}, which this station never provisioned"),
                    None,
                )
            if refusal is None:
                row = db.execute(
                    "SELECT unit FROM units WHERE bundle_id = ? AND hardware_id = ?", (bundle_id, hwid)
                ).fetchone()
                if row is not None:  # a retry or rework under the release that already counted this device: its unit
                    unit = int(row[0])
                    db.execute(
                        "UPDATE units SET done = 0, owner = ?, fixture = ?, operator = ? "
                        "WHERE bundle_id = ? AND unit = ?",
                        (self.state.owner, fixture, self.operator, bundle_id, unit),
                    )
                else:
                    used = State.used(db, bundle_id)
                    if used >= loaded.allocation:
                        refusal = (
                            "failed",
                            AllocationError(
                                f"the allocation of {loaded.allocation} units for {loaded.release.product} "
                                f"{loaded.release.version} at station '{self.station_id}' is used up"
                            ),
                            known.serial if known else None,
                        )
                    else:
                        unit = State.reserve_next(db, bundle_id)
                        db.execute(
                            "INSERT INTO units (bundle_id, unit, hardware_id, owner, fixture, operator) "
                            "VALUES (?, ?, ?, ?, ?, ?)",
                            (bundle_id, unit, hwid, self.state.owner, fixture, self.operator),
                        )
                if refusal is None:
                    serial = known.serial if known else (label or f"{self.station_id}-{bundle_id[:8]}-{unit:07d}")
                    if known is None:
                        db.execute(
                            "INSERT INTO devices (hardware_id, serial, state) VALUES (?, ?, 'reserved')",
                            (hwid, serial),
                        )
                    if known is None:
                        event = "provisioned"
                    elif known.state == "failed":  # never provisioned: a new attempt, never a rework
                        event = "retry"
                    else:
                        event = "rework"
                    return unit, serial, known.device_key_id if known else None, event
        assert refusal is not None
        event, error, bound_serial = refusal
        step = "allocation" if isinstance(error, AllocationError) else "identity"
        self._record(
            event,
            hwid,
            fixture=fixture,
            label=label,
            serial=bound_serial,
            failed_step=None if event != "failed" else step,
            detail=str(error),
        )
        raise error

    def _step(
        self, step: str, call: Callable[..., object], *args: object, times: dict[str, float] | None = None
    ) -> object:
        started = time.monotonic()
        try:
            return call(*args)
        except VaultError as e:
            raise _UnitFailed(step, e) from e
        except Exception as e:  # an adapter reports a failed step by raising anything
            raise _UnitFailed(step, DeviceError(f"{step} failed: {e}")) from e
        finally:
            if times is not None:  # a step run once per image adds up
                times[step] = times.get(step, 0.0) + time.monotonic() - started

    def _test(self, device: Device, times: dict[str, float]) -> QualityRecord:
        """The unit's test: the adapter's measurements and calibration, recorded; the first problem fails the unit.

        A limit that fails names the measurement's step; a malformed entry
        (no name, a value that is not a finite number) fails at "test". The
        well-formed entries are recorded either way, in the failed manifest too.
        """
        measure = getattr(device, "measurements", None)
        calibrate = getattr(device, "calibration", None)
        if measure is None and calibrate is None:
            return QualityRecord()
        values = self._step("test", measure, times=times) if measure is not None else ()
        coefficients = self._step("test", calibrate, times=times) if calibrate is not None else ()
        for what, got in (("measurements", values), ("calibration", coefficients)):
            if not isinstance(got, list | tuple):
                raise _UnitFailed("test", DeviceError(f"test: the adapter's {what} are not a list"))
        readings, found, problems = record_test(values, coefficients)  # type: ignore[arg-type]
        record = QualityRecord(measurements=readings, calibration=found)
        if problems:
            step, line = problems[0]
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise _UnitFailed(step, DeviceError(f"{step}: {line}{more}"), tested=record)
        return record

    def _program(
        self, device: Device, loaded: LoadedRelease, progress: Progress | None, times: dict[str, float]
    ) -> tuple[ImageRecord, ...]:
        done: list[ImageRecord] = []
        try:
            reader = self._reader
            assert reader is not None  # set by load() with the release
            for image in loaded.images:
                digest = hashlib.sha256()
                chunks = reader.image_chunks(image.name, loaded.data_key)

                def hashed(
                    source: Iterator[bytes] = chunks, d: hashlib._Hash = digest, image: ImageToProgram = image
                ) -> Iterator[bytes]:
                    taken = 0
                    for chunk in source:
                        d.update(chunk)
                        taken += len(chunk)
                        yield chunk
                        if progress is not None:  # the adapter took the chunk: report it
                            progress(image.name, taken, image.length)

                try:
                    self._step("program", device.program, image, hashed(), times=times)
                finally:
                    chunks.close()
                if digest.hexdigest() != image.sha256:
                    raise _UnitFailed(
                        "program",
                        AllowlistError(f"image '{image.name}' streamed to the device is not the allowed one"),
                    )
                measurement = self._step("verify", device.read_measurement, image, times=times)
                if measurement is not None and measurement != image.sha256:
                    raise _UnitFailed(
                        "verify",
                        DeviceError(
                            f"the device reads back {str(measurement)[:16]} for '{image.name}', not {image.sha256[:16]}"
                        ),
                    )
                done.append(
                    ImageRecord(image.name, image.sha256, measurement if isinstance(measurement, str) else None)
                )
        except _UnitFailed as failed:
            raise _UnitFailed(failed.step, failed.error, tuple(done)) from failed.error
        except VaultError as e:  # the bundle changed or vanished since it was loaded
            raise _UnitFailed("program", e, tuple(done)) from e
        return tuple(done)

    def _device_key(
        self, device: Device, hwid: str, known_key: str | None, times: dict[str, float]
    ) -> tuple[object, str]:
        der = self._step("generate-key", device.generate_key, times=times)
        try:
            csr = x509.load_der_x509_csr(der if isinstance(der, bytes) else b"")
            public_key = pki.check_csr(csr)
        except (ValueError, TypeError, VaultError) as e:
            raise _UnitFailed("generate-key", IdentityError(f"device {hwid}'s key request is not valid: {e}")) from e
        device_key_id = key_id(public_key)
        if known_key is not None and known_key != device_key_id:
            raise _UnitFailed(
                "identity",
                CloneError(
                    f"device {hwid} was provisioned with key {known_key[:16]}; "
                    f"this one has {device_key_id[:16]} (clone)"
                ),
            )
        other = State.device(self.state.read(), device_key_id=device_key_id)
        if other is not None and other.hardware_id != hwid:
            raise _UnitFailed(
                "identity",
                CloneError(f"device key {device_key_id[:16]} already belongs to device {other.hardware_id} (clone)"),
            )
        return public_key, device_key_id

    def _certify(self, public_key: object, serial: str, hardware_id: bytes, now: datetime) -> x509.Certificate:
        issuer_certificate = self.enrolled.issuing_ca.certificate
        assert issuer_certificate is not None  # the policy certifies every station key
        not_after = min(now + timedelta(days=_DEVICE_CERTIFICATE_DAYS), issuer_certificate.not_valid_after_utc)
        try:
            profile = pki.device_profile(serial, hardware_id, 1, not_before=now)
            profile = pki.with_validity(profile, now, not_after)
            with self._token_lock:
                return pki.issue_certificate(
                    public_key,  # type: ignore[arg-type]
                    profile,
                    self._issuing_ca,
                    issuer_certificate=issuer_certificate,
                    serial=pki.random_serial(os.urandom),
                    now=now,
                )
        except VaultError as e:
            raise _UnitFailed("certify", e) from e

    # --- recording ----------------------------------------------------------------

    def _finish(
        self,
        event: str,
        hwid: str,
        unit: int,
        serial: str,
        label: str | None,
        fixture: int,
        images: Sequence[ImageRecord],
        device_key_id: str | None,
        certificate: x509.Certificate | None,
        *,
        failed_step: str | None = None,
        detail: str | None = None,
        quality: QualityRecord | None = None,
        secrets: Sequence[_Secret] = (),
        lots: dict[str, str] | None = None,
    ) -> Outcome:
        """Append the unit's last manifest and close the unit, in one transaction."""
        state = "failed" if event == "failed" else "provisioned"
        bundle_id = self.release.release.bundle_id
        try:
            with self.state.write() as db:
                closed = db.execute(
                    "UPDATE units SET done = 1 WHERE bundle_id = ? AND unit = ? AND done = 0 AND owner = ?",
                    (bundle_id, unit, self.state.owner),
                )
                if closed.rowcount != 1:
                    raise StateError(f"unit {unit} of bundle {bundle_id} was closed by another process meanwhile")
                outcome = self._append(
                    db, event, hwid, fixture=fixture, unit=unit, serial=serial, label=label, images=images,
                    device_key_id=device_key_id, certificate=certificate, failed_step=failed_step, detail=detail,
                    quality=quality, sealed=[(s.record(), s.sealed) for s in secrets], lots=lots,
                )  # fmt: skip
                if device_key_id is not None:
                    db.execute(
                        "UPDATE devices SET state = ?, device_key_id = ? WHERE hardware_id = ?",
                        (state, device_key_id, hwid),
                    )
                else:
                    db.execute(
                        "UPDATE devices SET state = CASE WHEN state = 'provisioned' THEN state ELSE ? END "
                        "WHERE hardware_id = ?",
                        (state, hwid),
                    )
        except sqlite3.IntegrityError as e:  # two fixtures raced with devices sharing one key
            raise CloneError(f"device key {device_key_id} was just bound to another device (clone)") from e
        return outcome

    def _record(self, event: str, hwid: str, **fields: object) -> Outcome:
        with self.state.write() as db:
            return self._append(db, event, hwid, **fields)  # type: ignore[arg-type]

    def _append(
        self,
        db: sqlite3.Connection,
        event: str,
        hwid: str,
        *,
        fixture: int,
        unit: int | None = None,
        serial: str | None = None,
        label: str | None = None,
        images: Sequence[ImageRecord] = (),
        device_key_id: str | None = None,
        certificate: x509.Certificate | None = None,
        failed_step: str | None = None,
        detail: str | None = None,
        operator: str | None = None,
        release: _ReleaseRef | None = None,
        quality: QualityRecord | None = None,
        sealed: Sequence[tuple[SealedRecord, bytes]] = (),
        lots: dict[str, str] | None = None,
    ) -> Outcome:
        """Sign a manifest and append it to the log inside the caller's write transaction.

        The time is read here, under the log's lock, so manifests are in time
        order; a clock that went back while a unit was on the fixture is held
        at the last entry's time and says so in the clock source.
        """
        ref = release or _ReleaseRef.of(self.release)
        sequence = int(db.execute("SELECT COALESCE(MAX(sequence) + 1, 0) FROM log").fetchone()[0])
        now, source = self.clock()
        last = State.meta_in(db, "last_time")
        when = format_time(now)
        if last is not None and when < last:
            now, source = datetime.strptime(last, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC), f"{source}, held at {last}"
            when = last
        certificate_der = None if certificate is None else certificate.public_bytes(serialization.Encoding.DER)
        manifest = Manifest(
            id=os.urandom(16).hex(),
            sequence=sequence,
            event=event,
            station_id=self.station_id,
            operator=operator or self.operator,
            fixture=fixture,
            bundle_id=ref.bundle_id,
            product=ref.product,
            version=ref.version,
            security_counter=ref.security_counter,
            policy_version=ref.policy_version,
            unit=unit,
            hardware_id=hwid,
            serial=serial,
            label=label,
            images=tuple(images),
            device_key_id=device_key_id,
            certificate_serial=None if certificate is None else serial_hex(certificate),
            certificate_sha256=None if certificate_der is None else hashlib.sha256(certificate_der).hexdigest(),
            keys={"signing": self._signing.key_id, "issuing_ca": self._issuing_ca.key_id},
            failed_step=failed_step,
            detail=None if detail is None else detail[:256],
            time=now,
            clock=source[:256],
            clock_session=None if self._monotonic is None else self._clock_session,
            clock_monotonic=None if self._monotonic is None else int(self._monotonic()),
            quality=quality,
            secrets=tuple(record for record, _ in sealed),
            lots=lots,
        )
        with self._token_lock:
            envelope = sign_manifest(manifest, self._signing)
        leaf = merkle.leaf_hash(envelope)
        root = State.append_leaf(db, sequence, leaf)
        db.execute(
            "INSERT INTO log (sequence, manifest_id, event, hardware_id, time, envelope, leaf_hash, certificate, root) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (sequence, manifest.id, event, hwid, when, envelope, leaf, certificate_der, root),
        )
        db.executemany(
            "INSERT INTO sealed_secrets (sequence, name, sealed) VALUES (?, ?, ?)",
            [(sequence, record.name, blob) for record, blob in sealed],
        )
        State.set_meta(db, "last_time", when)
        return Outcome(event, hwid, serial, unit, sequence, manifest.id, certificate)

    def scrap(self, hardware_id: bytes, *, reason: str, fixture: int = 0) -> Outcome:
        """Record that a known device is taken out of production; it can never be provisioned again.

        Raises:
            IdentityError: the station never bound this device.
        """
        hwid = hardware_id.hex()
        with self.state.write() as db:
            known = State.device(db, hardware_id=hwid)
            if known is None:
                raise IdentityError(f"device {hwid} is not known to this station; nothing to scrap")
            row = db.execute(
                "SELECT unit FROM units WHERE bundle_id = ? AND hardware_id = ?", (self.release.release.bundle_id, hwid)
            ).fetchone()
            outcome = self._append(
                db,
                "scrap",
                hwid,
                fixture=fixture,
                unit=None if row is None else int(row[0]),
                serial=known.serial,
                detail=_label_text(reason, "reason", 256),
            )
            db.execute("UPDATE devices SET state = 'scrapped' WHERE hardware_id = ?", (hwid,))
        return outcome

    # --- what people do at the station: shifts, acknowledgements, labels ---------------

    @property
    def station_subject(self) -> str:
        """The hardware id of the station's own events (sign-in, sign-out): its signing key's id."""
        return self._signing.key_id

    def sign_in(self, operator: str) -> Outcome:
        """Record that ``operator`` starts a shift here; the manifests from now on name them."""
        self.operator = _label_text(operator, "operator")
        return self._record("sign-in", self.station_subject, fixture=0, detail="shift started at the console")

    def sign_out(self, *, detail: str = "shift ended at the console") -> Outcome:
        """Record that the operator signed in ends their shift."""
        return self._record("sign-out", self.station_subject, fixture=0, detail=_label_text(detail, "detail", 256))

    def acknowledge(
        self, supervisor: str, reason: str, *, stopped: str, fixture: int, hardware_id: str | None = None,
        serial: str | None = None,
    ) -> Outcome:  # fmt: skip
        """Record a supervisor's acknowledgement of a fixture stopped by ``stopped`` (a label mismatch,
        a clone, a clock problem), with the reason it may go on.

        Raises:
            InputError: the supervisor's name or the reason is empty or not printable.
        """
        who = _label_text(supervisor, "supervisor")
        why = _label_text(reason.strip(), "reason", 200)
        what = _label_text(stopped.strip() or "a stop", "stop", 200)
        return self._record(
            "acknowledge", hardware_id or self.station_subject, fixture=fixture, serial=serial, operator=who,
            detail=f"{what[:120]}; why: {why}",
        )  # fmt: skip

    def record_label(self, outcome: Outcome, *, fixture: int, detail: str, failed: bool = False) -> Outcome:
        """Record the label printed (or, ``failed``, not printed) for a unit the station just provisioned.

        The label's serial is the one bound to the device (``outcome.serial``), never a typed value.
        """
        return self._record(
            "label", outcome.hardware_id, fixture=fixture, serial=outcome.serial,
            failed_step="print" if failed else None, detail=_label_text(detail, "detail", 256),
        )  # fmt: skip

    def units_left(self) -> int:
        """Units of the loaded release's allocation not yet reserved (none once it is closed)."""
        loaded = self.release
        db = self.state.read()
        if db.execute("SELECT 1 FROM closed WHERE bundle_id = ?", (loaded.release.bundle_id,)).fetchone():
            return 0
        return loaded.allocation - State.used(db, loaded.release.bundle_id)

    def provisioned_serials(self) -> list[str]:
        """The serials of every device this station provisioned (and did not scrap), in serial order."""
        rows = self.state.read().execute("SELECT serial FROM devices WHERE state = 'provisioned' ORDER BY serial")
        return [str(r[0]) for r in rows]

    def history(self, serial_or_hardware_id: str) -> tuple[tuple[Manifest, x509.Certificate | None], ...]:
        """Every manifest this station's log holds about one device, verified, in log order, with the device
        certificate each one carries.

        Raises:
            IdentityError: the station knows no device by that serial or hardware id.
        """
        db = self.state.read()
        key = serial_or_hardware_id.strip()
        row = db.execute("SELECT hardware_id FROM devices WHERE serial = ?", (key,)).fetchone()
        hwid = row[0] if row is not None else key.lower()
        found = db.execute(
            "SELECT envelope, certificate FROM log WHERE hardware_id = ? ORDER BY sequence", (hwid,)
        ).fetchall()
        if not found or hwid == self.station_subject:
            raise IdentityError(f"this station's log has no device with serial or hardware id {key!r}")
        trusted = {self._signing.key_id: self._signing.public_key}
        return tuple(
            (open_manifest(bytes(envelope), trusted), None if der is None else x509.load_der_x509_certificate(der))
            for envelope, der in found
        )

    def _close_orphans(self) -> None:
        """Give every unit a process left open when it died its "interrupted" manifest (exactly once)."""
        orphans = self.state.orphans()
        if not orphans:
            return
        if self._policy is None:
            raise StateError("the station state has reserved units but no trust policy")
        version = self._policy.version
        releases = {
            bundle_id: _ReleaseRef(bundle_id, product, release_version, counter, version)
            for bundle_id, product, release_version, counter in self.state.read()
            .execute("SELECT bundle_id, product, version, security_counter FROM releases")
            .fetchall()
        }
        for bundle_id, unit, hwid, fixture, operator in orphans:
            if bundle_id not in releases:  # a recovered folder whose release is not loaded again yet
                releases[bundle_id] = self._release_from_log(bundle_id, version)
            with self.state.write() as db:
                still_open = db.execute(
                    "SELECT 1 FROM units WHERE bundle_id = ? AND unit = ? AND done = 0", (bundle_id, unit)
                ).fetchone()
                if not still_open:
                    continue
                serial = db.execute("SELECT serial FROM devices WHERE hardware_id = ?", (hwid,)).fetchone()
                self._append(
                    db,
                    "failed",
                    hwid,
                    fixture=fixture,
                    unit=unit,
                    serial=serial[0] if serial else None,
                    failed_step="interrupted",
                    operator=operator,
                    release=releases[bundle_id],
                    detail="the station stopped while this unit was on the fixture; the unit stays counted",
                )
                db.execute("UPDATE units SET done = 1 WHERE bundle_id = ? AND unit = ?", (bundle_id, unit))
                db.execute("UPDATE devices SET state = 'failed' WHERE hardware_id = ? AND state = 'reserved'", (hwid,))

    def _release_from_log(self, bundle_id: str, policy_version: int) -> _ReleaseRef:
        """What a manifest says of a release, taken from the last manifest the log has of it."""
        trusted = {self._signing.key_id: self._signing.public_key}
        for (envelope,) in self.state.read().execute("SELECT envelope FROM log ORDER BY sequence DESC"):
            manifest = open_manifest(bytes(envelope), trusted)
            if manifest.bundle_id == bundle_id:
                return _ReleaseRef(
                    bundle_id, manifest.product, manifest.version, manifest.security_counter, policy_version
                )
        raise StateError(f"a unit of bundle {bundle_id[:16]} is open but the release is unknown: load it first")

    # --- status, log and export ------------------------------------------------------

    def status(self) -> StationStatus:
        """Allocations used and left, log size, event counts, last export."""
        db = self.state.read()
        closed = {r[0] for r in db.execute("SELECT bundle_id FROM closed")}
        releases = tuple(
            AllocationStatus(
                bundle_id, product, version, counter, allocation, State.used(db, bundle_id), expires,
                closed=bundle_id in closed,
            )
            for bundle_id, product, version, counter, allocation, expires in db.execute(
                "SELECT bundle_id, product, version, security_counter, allocation, expires "
                "FROM releases ORDER BY loaded"
            )
        )
        events = dict(db.execute("SELECT event, COUNT(*) FROM log GROUP BY event").fetchall())
        size = int(db.execute("SELECT COUNT(*) FROM log").fetchone()[0])
        refused: dict[str, int] = {}
        trusted = {self._signing.key_id: self._signing.public_key}
        for (envelope,) in db.execute("SELECT envelope FROM log WHERE event = 'failed'").fetchall():
            manifest = open_manifest(bytes(envelope), trusted)
            if manifest.unit is None and manifest.failed_step is not None:
                refused[manifest.failed_step] = refused.get(manifest.failed_step, 0) + 1
        return StationStatus(
            station_id=self.station_id,
            policy_version=int(self.state.meta("policy_version", 0)),
            releases=releases,
            log_size=size,
            events=events,
            last_time=self.state.meta("last_time"),
            last_export=self._last_export(db),
            token_head=None if self.state.anchor is None else self.state.anchor.read(),
            refused=refused,
        )

    def _last_export(self, db: sqlite3.Connection) -> ExportResult | None:
        row = db.execute(
            "SELECT sequence, path, size, root, checkpoint FROM exports ORDER BY sequence DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        previous = db.execute("SELECT size FROM exports WHERE sequence = ?", (row[0] - 1,)).fetchone()
        return ExportResult(
            row[0], Path(row[1]), previous[0] if previous else 0, row[2], bytes(row[3]).hex(), bytes(row[4])
        )

    def verify_log(self) -> tuple[int, bytes]:
        """Recompute the log's tree from the stored manifests and check it against the last export.

        Returns:
            The log's size and root.

        Raises:
            LogError: a manifest was altered, removed or re-ordered, or the
                log is no longer an extension of what the last export signed.
        """
        db = self.state.read()
        trusted = {self._signing.key_id: self._signing.public_key}
        builder = merkle.TreeBuilder()
        expected = 0
        for sequence, envelope, leaf in db.execute("SELECT sequence, envelope, leaf_hash FROM log ORDER BY sequence"):
            if sequence != expected:
                raise LogError(f"the station log has no entry {expected}: entries were removed")
            _check_entry(sequence, bytes(envelope), bytes(leaf), trusted)
            builder.append(bytes(leaf))
            expected += 1
        root = builder.root()
        last = self._last_export(db)
        if last is not None:
            self._check_extends(last, expected, root)
        return expected, root

    def _recheck(self, db: sqlite3.Connection, last: ExportResult | None, size: int, held: LogHead | None) -> bytes:
        """Check every entry written since the last export before an export seals it; returns the log's root.

        Each new entry must be a manifest signed by this station's key, at
        the position it names, with its stored leaf hash and the root stored
        after it; the log must have the root the station token holds at the
        token's size (when the token is not ahead of this snapshot), and
        extend the last export's checkpoint.

        Raises:
            LogError: the first entry that fails, and that nothing was exported.
        """
        start = last.to_size if last else 0
        trusted = {self._signing.key_id: self._signing.public_key}
        builder = merkle.TreeBuilder()
        nothing = "nothing was exported"
        rows = db.execute("SELECT sequence, envelope, leaf_hash, root FROM log WHERE sequence < ? ORDER BY sequence",
                          (size,))  # fmt: skip
        for sequence, envelope, leaf, stored_root in rows:
            if sequence != builder.size:
                raise LogError(f"the station log has no entry {builder.size}: entries were removed; {nothing}")
            if sequence >= start:
                _check_entry(sequence, bytes(envelope), bytes(leaf), trusted, then=f"; {nothing}")
            builder.append(bytes(leaf))
            if sequence >= start and (stored_root is None or bytes(stored_root) != builder.root()):
                raise LogError(f"the station log's entry {sequence} was rewritten (the root after it); {nothing}")
            if held is not None and held.size == builder.size and held.root != builder.root():
                raise LogError(
                    f"the station log's first {held.size} entries are not the ones the station token holds "
                    f"(root {builder.root().hex()[:16]}, the token's {held.root.hex()[:16]}): rewritten; {nothing}"
                )
        if builder.size != size:
            raise LogError(f"the station log has no entry {builder.size}: entries were removed; {nothing}")
        root = builder.root()
        if last is not None:
            try:
                self._check_extends(last, size, root)
            except VaultError as e:
                raise LogError(f"{e}; {nothing}") from e
        return root

    def _check_extends(self, last: ExportResult, size: int, root: bytes) -> None:
        if size < last.to_size:
            raise LogError(
                f"the station log has {size} entries but export {last.sequence} signed {last.to_size} (truncated)"
            )
        proof = merkle.consistency_proof(last.to_size, size, self._leaf_hashes)
        merkle.verify_consistency(last.to_size, size, bytes.fromhex(last.root), root, proof)

    def _leaf_hashes(self, start: int, end: int) -> list[bytes]:
        rows = (
            self.state.read()
            .execute("SELECT leaf_hash FROM log WHERE sequence >= ? AND sequence < ? ORDER BY sequence", (start, end))
            .fetchall()
        )
        if len(rows) != end - start:
            raise LogError(f"the station log is missing entries between {start} and {end}")
        return [bytes(r[0]) for r in rows]

    def export(self, directory: str | os.PathLike[str]) -> ExportResult:
        """Write the manifests since the last export, their certificates, a signed checkpoint and a
        consistency proof from the last export's checkpoint, encrypted to the auditor's key.

        The file is new (never written over), fsynced and read-only, in
        ``directory`` (made if missing). Every entry since the last export is
        checked first (its signature by the station key, leaf hash, position
        and the root after it), and the log against the station token's head
        and the last export's checkpoint, so a truncated, rewritten or
        replayed log is never exported.

        Raises:
            LogError: an entry fails those checks, or the log is not an
                extension of the last export; nothing is written.
            PolicyError: the trust policy names no auditor key.
            InputError: the folder cannot be written or the file exists.
        """
        if self._policy is None:
            raise PolicyError("no trust policy is loaded at this station yet: load a release first")
        auditor = self._policy.auditor
        if auditor is None:
            raise PolicyError(f"trust policy v{self._policy.version} names no auditor key to export evidence to")
        out = Path(directory)
        held = None if self.state.anchor is None else self.state.anchor.read()
        db = self.state.read()
        db.execute("BEGIN")  # one snapshot of the log for the whole export
        try:
            size = int(db.execute("SELECT COUNT(*) FROM log").fetchone()[0])
            last = self._last_export(db)
            start = last.to_size if last else 0
            root = self._recheck(db, last, size, held)
            try:
                out.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise InputError(f"cannot make the export folder {out}: {e.strerror or e}") from e
            proof = merkle.consistency_proof(start, size, self._leaf_hashes) if last else []
            now, _ = self.clock()
            sequence = (last.sequence if last else 0) + 1
            with self._token_lock:
                note = notes.sign_checkpoint(
                    notes.Checkpoint(log_origin(self.station_id), size, root),
                    self._signing,
                    log_origin(self.station_id),
                )
            path = out / f"{self.station_id}-{sequence:06d}.vault-evidence"
            copy = path.with_suffix(COPY_SUFFIX)
            with contextlib.ExitStack() as writers:
                # the auditor's export, and the station's own copy (sealed to its decryption key) that
                # 'vault station recover' rebuilds a lost state folder from
                sinks = [
                    writers.enter_context(
                        EvidenceWriter(
                            target,
                            recipient=recipient,
                            station_id=self.station_id,
                            sequence=sequence,
                            created=format_time(now),
                        )
                    )
                    for target, recipient in ((path, auditor.public_key), (copy, self._decryption.public_key))
                ]

                def add(record: bytes) -> None:
                    for sink in sinks:
                        sink.add(record)

                add(
                    canonical_json(
                        {
                            "type": "export",
                            "station_id": self.station_id,
                            "sequence": sequence,
                            "from": start,
                            "to": size,
                            "created": format_time(now),
                            "previous_checkpoint": None if last is None else last.checkpoint.decode(),
                            "policy": base64.b64encode(bytes(self.state.meta("policy"))).decode(),
                            # units on a fixture right now: their manifests come in a later export
                            "open_units": [
                                [bundle_id, unit]
                                for bundle_id, unit in db.execute(
                                    "SELECT bundle_id, unit FROM units WHERE done = 0 ORDER BY bundle_id, unit"
                                )
                            ],
                        }
                    )
                )
                sealed: dict[int, dict[str, str]] = {}  # the per-device secrets, sealed to the device maker
                for index, name, blob in db.execute(
                    "SELECT sequence, name, sealed FROM sealed_secrets WHERE sequence >= ? AND sequence < ?",
                    (start, size),
                ):
                    sealed.setdefault(index, {})[name] = base64.b64encode(blob).decode()
                for index, envelope, certificate in db.execute(
                    "SELECT sequence, envelope, certificate FROM log "
                    "WHERE sequence >= ? AND sequence < ? ORDER BY sequence",
                    (start, size),
                ):
                    add(
                        canonical_json(
                            {
                                "type": "entry",
                                "sequence": index,
                                "envelope": bytes(envelope).decode(),
                                "certificate": None if certificate is None else base64.b64encode(certificate).decode(),
                            }
                        )
                    )
                    if index in sealed:  # beside its manifest, which records each blob's digest
                        add(canonical_json({"type": "secrets", "sequence": index, "sealed": sealed.pop(index)}))
                add(
                    canonical_json(
                        {
                            "type": "checkpoint",
                            "checkpoint": note.decode(),
                            "consistency": [base64.b64encode(h).decode() for h in proof],
                        }
                    )
                )
                sinks[1].finish()  # the copy first: an auditor's export never exists without it
                try:
                    sinks[0].finish()
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.chmod(copy, 0o600)
                        copy.unlink()
                    raise
        finally:
            db.execute("ROLLBACK")
        try:
            with self.state.write() as wdb:  # the token's head counts exports: a copy of this folder cannot make it too
                wdb.execute(
                    "INSERT INTO exports (sequence, size, root, checkpoint, path, created) VALUES (?, ?, ?, ?, ?, ?)",
                    (sequence, size, root, note, str(path.resolve()), format_time(now)),
                )
        except BaseException as e:
            recorded = (
                self.state.read()
                .execute("SELECT 1 FROM exports WHERE sequence = ? AND checkpoint = ?", (sequence, note))
                .fetchone()
            )
            if recorded:  # committed; only the token write after it failed (the next write repairs that)
                raise
            for written in (path, copy):  # not recorded: it is not evidence, so it does not stay
                with contextlib.suppress(OSError):
                    written.unlink()
            if isinstance(e, sqlite3.IntegrityError):
                raise StateError(f"another export {sequence} was recorded at the same time; {path} was removed") from e
            raise
        return ExportResult(sequence, path, start, size, root.hex(), note)

    # --- closing a release ---------------------------------------------------------------------

    def close(self, bundle_id: str, directory: str | os.PathLike[str]) -> CloseResult:
        """Close a release: export what the log holds, sign a close-out, refuse every further unit of it.

        ``bundle_id`` is the release's bundle id or a prefix naming one
        release loaded here. The closing is recorded in the state folder and
        in the station token's head before anything else, so from then on no
        unit of the release starts, here or from any other copy of the
        folder. If the log holds entries no export carries, a final export is
        written to ``directory`` first; the close-out then states that
        export's checkpoint (the log's size and root, which the token's head
        must hold too), the units the token counts and how they ended. It is
        written to ``directory`` as a plain signed file
        (``<station>-<bundle id>.vault-closeout``, write-once, read-only).

        Stopped at any point (Ctrl-C, a crash), the same call completes it;
        called again after it completed, it returns the same close-out.

        Raises:
            StateError: a unit of the release is still on a fixture (nothing is recorded).
            InputError: no loaded release has that bundle id; the folder cannot
                be written, or holds another file of the close-out's name.
            LogError, PolicyError: as :meth:`export`.
        """
        return close_release(self, self.loaded_bundle_id(bundle_id), Path(directory))


@dataclass(frozen=True)
class _ReleaseRef:
    """What a manifest says about the release it was made under."""

    bundle_id: str
    product: str
    version: str
    security_counter: int
    policy_version: int

    @classmethod
    def of(cls, loaded: LoadedRelease) -> _ReleaseRef:
        r = loaded.release
        return cls(r.bundle_id, r.product, r.version, r.security_counter, loaded.policy.version)


def _check_lot(component: str, pattern: re.Pattern[str], code: str) -> None:
    if not isinstance(code, str) or not code.isprintable() or not 1 <= len(code) <= 64:
        raise InputError(f"lot code for {component}: printable text of 1 to 64 characters, not {code!r}")
    if not pattern.fullmatch(code):
        raise InputError(f"lot code {code!r} does not match {component}'s lot pattern {pattern.pattern!r}")


def _check_secrets_recipient(release: Release, policy: TrustPolicy) -> None:
    """A release that declares secrets seals them to the policy's secrets recipient, or it is refused.

    Raises:
        PolicyError: the policy names no recipient, or another key than the release's.
    """
    if not release.secrets:
        return
    recipient = policy.secrets_recipient
    if recipient is None:
        raise PolicyError(
            f"release {release.product} {release.version} declares per-device secrets, but trust policy "
            f"v{policy.version} names no secrets recipient to seal them to"
        )
    if recipient.key_id != release.secrets_recipient:
        raise PolicyError(
            f"release {release.product} {release.version} seals its secrets to key "
            f"{str(release.secrets_recipient)[:16]}, not to trust policy v{policy.version}'s secrets recipient "
            f"{recipient.key_id[:16]}: build the release again under this policy"
        )


def _check_entry(
    sequence: int, envelope: bytes, leaf: bytes, trusted: dict[str, ec.EllipticCurvePublicKey], then: str = ""
) -> None:
    """One stored log entry: its leaf hash, its signature by the station key, the position it names.

    Raises:
        LogError: the entry was rewritten, does not verify, or was replayed from another position.
    """
    if merkle.leaf_hash(envelope) != leaf:
        raise LogError(f"the station log's entry {sequence} was rewritten (its leaf hash){then}")
    try:
        manifest = open_manifest(envelope, trusted)
    except VaultError as e:
        raise LogError(f"the station log's entry {sequence} does not verify ({e}){then}") from e
    if manifest.sequence != sequence:
        raise LogError(f"the station log's entry {sequence} is manifest {manifest.sequence} (replayed){then}")


def serial_hex(certificate: x509.Certificate) -> str:
    """A certificate's serial number as manifests write it: its big-endian bytes in hex."""
    serial = certificate.serial_number
    return serial.to_bytes(max(1, (serial.bit_length() + 7) // 8), "big").hex()


class TokenAnchor:
    """The station token's head record of a station's log: the :class:`~vault.verify._state.Anchor` of its state.

    A state folder is accepted only if its log and counts are the token's,
    or extend them (a crash between the commit and the token write); a new,
    older, copied or other folder is refused with both heads named.
    """

    def __init__(self, session: TokenSession, station_id: str, folder: Path, lock: threading.Lock) -> None:
        self.name = f"station-log:{station_id}"
        self._session = session
        self._station_id = station_id
        self._folder = folder
        self._lock = lock
        self._record: Head | None = None
        self.lock_path = _token_lock_path(session, station_id)
        try:
            self._lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise StateError(f"cannot use the station token's lock file {self.lock_path}: {e.strerror or e}") from e

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Release the lock file."""
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)

    def read(self) -> LogHead | None:
        with self._lock:
            self._record = self._session.head(self.name)
        return None if self._record is None else LogHead.from_value(self._record.value)

    def check(self, db: sqlite3.Connection, held: LogHead | None, mine: LogHead) -> None:
        if held is None or held == mine:
            return
        way_out = "use the station's current state folder, or rebuild one with 'vault station recover'"
        token = f"the station token '{self._session.label}'"
        if mine.empty:
            raise StateError(
                f"the state folder {self._folder} is new, but {token} holds the head of station "
                f"'{self._station_id}': {held.describe()}; {way_out}"
            )
        if mine.behind(held):
            raise StateError(
                f"the state folder {self._folder} is behind {token}: it holds {mine.describe()}, "
                f"the token {held.describe()} (an older copy or another folder); {way_out}"
            )
        if State.root_at(db, held.size) != held.root:
            raise StateError(
                f"the state folder {self._folder} diverges from {token}: it holds {mine.describe()}, "
                f"the token {held.describe()} of another log; {way_out}"
            )

    def advance(self, held: LogHead | None, new: LogHead) -> None:
        with self._lock:
            self._record = self._session.write_head(self.name, new.to_value(), after=self._record)


_LOCK_DIRS = ("/run/lock", "/var/lock", "/tmp")


def _token_lock_path(session: TokenSession, station_id: str) -> Path:
    """The machine-wide lock file of one station's head on one token.

    Every folder and process that writes the head takes it, so two state
    folders used at once on one token cannot both build on one head (the
    head record itself also refuses a second writer it catches, see
    :func:`vault.token._heads.write_head`).
    """
    key = hashlib.sha256(f"{session.serial}\0{session.label}\0{station_id}".encode()).hexdigest()[:24]
    for directory in _LOCK_DIRS:
        if os.access(directory, os.W_OK | os.X_OK):
            return Path(directory) / f"vault-station-{key}.lock"
    raise StateError(f"no folder for the station token's lock file: none of {', '.join(_LOCK_DIRS)} is writable")


def _label_text(value: str, what: str, limit: int = _MAX_LABEL) -> str:
    if not isinstance(value, str) or not value or len(value) > limit or not value.isprintable():
        raise InputError(f"the {what} must be printable text of 1 to {limit} characters")
    return value


def root_sha256(root: x509.Certificate | str) -> str:
    """The pinned root's SHA-256 in hex: of the certificate, or the fingerprint given (checked)."""
    if isinstance(root, x509.Certificate):
        return hashlib.sha256(root.public_bytes(serialization.Encoding.DER)).hexdigest()
    text = root.strip().lower().replace(":", "")
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise InputError("a root fingerprint is the certificate's SHA-256 in hex (64 digits, colons allowed)")
    return text


def _root_from_policy(data: bytes, fingerprint: str) -> x509.Certificate:
    """The root certificate the policy carries, if its SHA-256 is the pinned fingerprint.

    :func:`vault.policy.load_policy` then verifies the policy against it like any pinned root.
    """
    envelope = Envelope.from_json(data, max_size=_MAX_POLICY, what="trust policy")
    statement = parse_json(envelope.payload, max_size=_MAX_POLICY, what="trust policy")
    try:
        der = base64.b64decode(statement["predicate"]["root"]["certificate"], validate=True)
    except (KeyError, TypeError, ValueError) as e:
        raise FormatError("trust policy: it carries no root certificate") from e
    if hashlib.sha256(der).hexdigest() != fingerprint:
        raise PolicyError("trust policy: its root certificate is not the pinned fingerprint")
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as e:
        raise FormatError(f"trust policy: its root certificate does not parse: {e}") from e
