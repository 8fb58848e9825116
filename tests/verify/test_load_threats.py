"""Every threat a station must refuse when it loads a release, each with its own typed, one-line error.

A refused load leaves the station's state as it was: no policy version, no
security counter, no release, no manifest is recorded for it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import struct
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from tests.conftest import forget_heads
from tests.verify.conftest import World, fixed_clock, vault
from vault.bundle import verify_bundle
from vault.bundle._approval import with_signature
from vault.container import BundleReader, replace_envelope
from vault.errors import (
    DecryptionError,
    FormatError,
    NotRecipientError,
    PolicyError,
    RollbackError,
    SignatureError,
    StateError,
    ThresholdError,
    ValidityError,
    VaultError,
)
from vault.formats import Envelope
from vault.formats._dsse import Signature
from vault.manifest import open_manifest
from vault.policy import format_time, load_policy
from vault.token import open_token
from vault.verify import SimulatedDevice, Station

NOW = datetime.now(UTC).replace(microsecond=0)


def signed_beside_the_log(world: World, folder: Path, *, counter: int, version: str) -> Path:
    """A bundle for station-1 signed by the release signer without ``vault bundle promote``.

    Promoting a higher security counter would raise the world's release token to it:
    the token refuses a lower counter whatever log is passed, so every later
    ``world.bundle()`` (counter 7) would be a rollback. A station checks the
    bundle's signatures, not the promotion log, so the release signer's signature
    added directly gives it what a promotion would.
    """
    description = folder / f"release-{counter}.yaml"
    description.write_text(
        f"product: example-sensor\nversion: {version}\nsecurity_counter: {counter}\n"
        "not_before: 2026-01-01T00:00:00Z\nexpires: 2099-01-01T00:00:00Z\n"
        "production:\n  total: 100\n  allocation: {station-1: 5}\n"
        f"images:\n  - name: app.bin\n    path: {world.images / 'app.bin'}\n"
        f"  - name: config.bin\n    path: {world.images / 'config.bin'}\n"
    )
    out = folder / f"release-{counter}.vbundle"
    policy = ["--policy", str(world.policy_path), "--root-cert", str(world.root_cert_path)]
    vault("bundle", "build", str(description), "-o", str(out), *policy)
    for i in (1, 2):
        vault("bundle", "approve", str(out), "--yes", "--key", world.key(f"approver-{i}", "approver-signing"), *policy)
    trust = load_policy(world.policy, world.root_cert, now=NOW)
    with open_token(world.tokens["release"]) as token:
        with_signature(verify_bundle(out, trust), token.key("release-signer"), trust)
    return out


class Bundles:
    """The bundles these tests load, built once for the module."""

    def __init__(self, world: World, folder: Path) -> None:
        self.one_station = world.bundle(allocation="{station-1: 5}")
        self.counter_7 = world.bundle(allocation="{station-1: 5}", counter=7, version="1.4.1")
        self.counter_8 = signed_beside_the_log(world, folder, counter=8, version="1.5.0")
        self.soon_expired = world.bundle(allocation="{station-1: 5}", expires=format_time(NOW + timedelta(days=30)))
        self.other_station = world.bundle(allocation="{station-2: 5}")
        self.unpromoted = world.bundle(allocation="{station-1: 5}", promote=False)
        self.one_approval = world.bundle(allocation="{station-1: 5}", approvers=(1,), promote=False)


@pytest.fixture(scope="module")
def bundles(world: World, tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    return Bundles(world, tmp_path_factory.mktemp("bundles"))


def snapshot(state: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table of a station's state folder."""
    db = sqlite3.connect(state / "station.sqlite")
    try:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {t: db.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in tables}
    finally:
        db.close()


def refused(error: type[VaultError], match: str, call: Callable[..., object], *args: object) -> VaultError:
    """``call(*args)`` raises exactly ``error`` (not a subclass), whose one-line text matches ``match``."""
    with pytest.raises(VaultError, match=match) as caught:
        call(*args)
    assert type(caught.value) is error, f"{type(caught.value).__name__}: {caught.value}"
    assert "\n" not in str(caught.value)
    return caught.value


def refused_untouched(station: Station, error: type[VaultError], match: str, bundle: Path, policy: bytes) -> VaultError:
    """A load refused with ``error`` that changes nothing in the station's state."""
    before = snapshot(station.state.directory)
    caught = refused(error, match, station.load, bundle, policy)
    assert snapshot(station.state.directory) == before
    return caught


def policy_expiry(world: World) -> datetime:
    return load_policy(world.policy, world.root_cert, now=NOW).expires


class Clock:
    """A station clock a test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> tuple[datetime, str]:
        return self.now, "test"


# --- the trust policy -----------------------------------------------------------------


def test_an_older_policy_is_refused_once_a_newer_one_was_seen(world: World, bundles: Bundles, tmp_path: Path) -> None:
    v3 = (world.folder / "enrol-1" / "policy-v3.json").read_bytes()
    with world.station(tmp_path / "s") as station:
        assert station.load(bundles.one_station, v3).policy.version == 3  # v3 enrols station-1: fine on its own
        assert station.load(bundles.one_station, world.policy).policy.version == 4
        refused_untouched(station, RollbackError, r"v3 is older than v4 .*\(rollback\)", bundles.one_station, v3)
        assert station.status().policy_version == 4
    with world.station(tmp_path / "s") as station:  # the highest version seen survives a restart
        refused_untouched(station, RollbackError, "rollback", bundles.one_station, v3)


def test_a_policy_that_does_not_enrol_the_station_is_refused(world: World, bundles: Bundles, tmp_path: Path) -> None:
    v3 = (world.folder / "enrol-1" / "policy-v3.json").read_bytes()
    with world.station(tmp_path / "s", "station-2") as station:
        refused_untouched(
            station, NotRecipientError, "'station-2' is not enrolled in trust policy v3", bundles.one_station, v3
        )


def test_an_expired_policy_is_refused(world: World, bundles: Bundles, tmp_path: Path) -> None:
    late = format_time(policy_expiry(world) + timedelta(days=1))
    with world.station(tmp_path / "s", clock=fixed_clock(late)) as station:
        refused_untouched(station, ValidityError, "trust policy v4 expired", bundles.one_station, world.policy)


def test_a_policy_with_a_flipped_signature_byte_is_refused(world: World, bundles: Bundles, tmp_path: Path) -> None:
    envelope = json.loads(world.policy)
    first = envelope["signatures"][0]["sig"]
    raw = bytearray(base64.b64decode(first))
    raw[-1] ^= 0x01  # still DER, another s
    forged = world.policy.replace(first.encode(), base64.b64encode(bytes(raw)))
    assert forged != world.policy and len(forged) == len(world.policy)
    with world.station(tmp_path / "s") as station:
        refused_untouched(station, SignatureError, "does not verify", bundles.one_station, forged)
        # one byte flipped in the file itself, inside the base64 text of the signature
        at = world.policy.index(first.encode()) + len(first) // 2
        flipped = bytearray(world.policy)
        flipped[at] ^= 0x01
        before = snapshot(station.state.directory)
        with pytest.raises((SignatureError, FormatError)) as caught:
            station.load(bundles.one_station, bytes(flipped))
        assert "\n" not in str(caught.value)
        assert snapshot(station.state.directory) == before


def test_oversized_and_malformed_policy_input_is_refused_before_it_is_parsed(
    world: World, bundles: Bundles, tmp_path: Path
) -> None:
    with world.station(tmp_path / "s") as station:
        refused_untouched(station, FormatError, "limit", bundles.one_station, b" " * (4 * 1024 * 1024 + 1))
        refused_untouched(
            station, FormatError, "nested too deeply", bundles.one_station, b"[" * 100_000 + b"]" * 100_000
        )
        refused_untouched(station, FormatError, "not UTF-8", bundles.one_station, b"\xff\xfe not json")
        refused_untouched(station, FormatError, "not valid JSON", bundles.one_station, b"")


# --- the root and the station's own keys ---------------------------------------------------------------


def root_fingerprint(world: World) -> str:
    return hashlib.sha256(world.root_cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def test_the_root_pinned_by_its_fingerprint(world: World, bundles: Bundles, tmp_path: Path) -> None:
    right = root_fingerprint(world)
    spelled = ":".join(right[i : i + 2] for i in range(0, 64, 2)).upper()  # as openssl prints it
    token = world.tokens["station-1"]
    with Station(tmp_path / "s", token=token, station_id="station-1", root=spelled) as station:
        assert station.load(bundles.one_station, world.policy).left == 5
        assert station.provision(SimulatedDevice()).event == "provisioned"
    wrong = hashlib.sha256(b"another root").hexdigest()
    forget_heads(token)
    with Station(tmp_path / "w", token=token, station_id="station-1", root=wrong) as station:
        refused_untouched(station, PolicyError, "not the pinned fingerprint", bundles.one_station, world.policy)


def test_a_state_folder_made_for_another_root_is_refused(world: World, tmp_path: Path) -> None:
    with world.station(tmp_path / "s"):
        pass
    before = snapshot(tmp_path / "s")
    other = Station(tmp_path / "s", token=world.tokens["station-1"], station_id="station-1", root="ab" * 32)
    refused(StateError, "made for another root certificate", other.__enter__)
    assert snapshot(tmp_path / "s") == before


def test_a_token_whose_keys_were_not_enrolled_for_the_station_id_is_refused(
    world: World, bundles: Bundles, tmp_path: Path
) -> None:
    def as_station_1(token: str, state: Path) -> Station:
        return Station(state, token=world.tokens[token], station_id="station-1", root=world.root_cert)

    with as_station_1("station-2", tmp_path / "fresh") as station:
        refused_untouched(
            station, PolicyError, "is not the one trust policy v4 enrolled", bundles.one_station, world.policy
        )
    with as_station_1("station-1", tmp_path / "s") as station:
        station.load(bundles.one_station, world.policy)
    before = snapshot(tmp_path / "s")
    refused(
        PolicyError,
        "is not the one trust policy v4 enrolled for station 'station-1'",
        as_station_1("station-2", tmp_path / "s").__enter__,
    )
    assert snapshot(tmp_path / "s") == before


# --- the release ------------------------------------------------------------------------------------


def test_a_release_with_a_lower_security_counter_is_refused(world: World, bundles: Bundles, tmp_path: Path) -> None:
    with world.station(tmp_path / "s") as station:
        assert station.load(bundles.counter_7, world.policy).release.security_counter == 7
        assert station.load(bundles.counter_8, world.policy).release.security_counter == 8
        error = refused_untouched(
            station, RollbackError, "counter 7; .* counter 8 \\(rollback\\)", bundles.counter_7, world.policy
        )
        assert "example-sensor" in str(error)
    with world.station(tmp_path / "s") as station:  # the highest counter survives a restart
        refused_untouched(station, RollbackError, "rollback", bundles.counter_7, world.policy)
        assert station.load(bundles.counter_8, world.policy).release.security_counter == 8
    forget_heads(world.tokens["station-1"])  # another station that never ran: its own floor
    with world.station(tmp_path / "fresh") as station:
        station.load(bundles.counter_8, world.policy)
        refused_untouched(station, RollbackError, "rollback", bundles.counter_7, world.policy)


def test_an_expired_release_is_refused(world: World, bundles: Bundles, tmp_path: Path) -> None:
    later = format_time(NOW + timedelta(days=60))
    with world.station(tmp_path / "s", clock=fixed_clock(later)) as station:
        refused_untouched(
            station, ValidityError, "release example-sensor 1.4.0 expired", bundles.soon_expired, world.policy
        )


def test_a_release_not_valid_yet_is_refused(world: World, bundles: Bundles, tmp_path: Path) -> None:
    with world.station(tmp_path / "s", clock=fixed_clock("2025-12-31T23:59:59Z")) as station:
        refused_untouched(station, ValidityError, "not valid before 2026-01-01", bundles.one_station, world.policy)


def test_provisioning_stops_when_the_release_or_the_policy_expires(
    world: World, bundles: Bundles, tmp_path: Path
) -> None:
    start = datetime.now(UTC).replace(microsecond=0)  # after the station CA's certificate was issued
    clock = Clock(start)
    with world.station(tmp_path / "s", clock=clock) as station:
        station.load(bundles.soon_expired, world.policy)
        station.provision(SimulatedDevice())
        before = snapshot(tmp_path / "s")
        clock.now = NOW + timedelta(days=30)  # the release's expiry itself is already outside its window
        device = SimulatedDevice()
        refused(ValidityError, "release example-sensor 1.4.0 expired", station.provision, device)
        assert device.flash == {} and device.certificate is None  # never touched
        assert snapshot(tmp_path / "s") == before  # no unit reserved, no manifest
    clock.now = start
    forget_heads(world.tokens["station-1"])
    with world.station(tmp_path / "p", clock=clock) as station:
        station.load(bundles.one_station, world.policy)
        clock.now = policy_expiry(world)
        before = snapshot(tmp_path / "p")
        refused(ValidityError, "trust policy v4 expired", station.provision, SimulatedDevice())
        assert snapshot(tmp_path / "p") == before


def test_a_bundle_for_another_station_is_refused(world: World, bundles: Bundles, tmp_path: Path) -> None:
    with world.station(tmp_path / "s") as station:
        refused_untouched(
            station, NotRecipientError, "is not for station 'station-1'", bundles.other_station, world.policy
        )


def test_an_unpromoted_release_is_refused(world: World, bundles: Bundles, tmp_path: Path) -> None:
    with world.station(tmp_path / "s") as station:
        refused_untouched(station, ThresholdError, "never promoted", bundles.unpromoted, world.policy)


def signed_again(world: World, bundle: Path, out: Path, *signers: tuple[str, str]) -> Path:
    """A copy of ``bundle`` with more signatures over its release statement, made by the tokens directly.

    This is what a release manager who skips ``vault bundle promote``'s own checks could write.
    """
    out.write_bytes(bundle.read_bytes())
    with BundleReader(out) as reader:
        envelope = Envelope.from_json(reader.envelope_bytes)
    signatures = list(envelope.signatures)
    for holder, label in signers:
        with open_token(world.tokens[holder]) as token:
            key = token.key(label=label)
            signatures.append(Signature(key.key_id, key.sign(envelope.pae)))
    replace_envelope(out, Envelope(envelope.payload_type, envelope.payload, tuple(signatures)).to_json())
    return out


def test_too_few_approvals_are_refused_even_when_the_release_signer_signed(
    world: World, bundles: Bundles, tmp_path: Path
) -> None:
    release = ("release", "release-signer")
    approver_1 = ("approver-1", "approver-signing")
    promoted = signed_again(world, bundles.one_approval, tmp_path / "promoted.vbundle", release)
    twice = signed_again(world, bundles.one_approval, tmp_path / "twice.vbundle", approver_1, release)
    with BundleReader(twice) as reader:
        keyids = Envelope.from_json(reader.envelope_bytes).keyids
    assert len(keyids) == 3 and len(set(keyids)) == 2  # approver-1 signed twice (two valid signatures)
    with world.station(tmp_path / "s") as station:
        for bundle in (bundles.one_approval, promoted, twice):
            refused_untouched(station, ThresholdError, "release approvals: 1 of 2", bundle, world.policy)


def flipped(bundle: Path, out: Path, offset: int) -> Path:
    data = bytearray(bundle.read_bytes())
    data[offset] ^= 0x01
    out.write_bytes(bytes(data))
    return out


def test_a_flipped_ciphertext_byte_fails_decryption(world: World, bundles: Bundles, tmp_path: Path) -> None:
    with BundleReader(bundles.one_station) as reader:
        app = reader.image_offset("app.bin")
        config = reader.image_offset("config.bin")
    with world.station(tmp_path / "s") as station:
        for offset in (app, app + 150_000, config + 3, config + 18 + 15):  # first byte, middle, config, its tag
            bad = flipped(bundles.one_station, tmp_path / f"flipped-{offset}.vbundle", offset)
            refused_untouched(station, DecryptionError, "does not authenticate", bad, world.policy)


def test_a_truncated_or_inflated_bundle_is_a_format_error(world: World, bundles: Bundles, tmp_path: Path) -> None:
    data = bundles.one_station.read_bytes()
    cases = {
        "end": (data[:-1], "truncated"),
        "half": (data[: len(data) // 2], "truncated"),
        "header": (data[:20], "too short"),
        "extended": (data + b"\0", "unexpected bytes after the trailer"),
        # a header length of 4 GiB: refused from the length field, never read
        "huge-header": (data[:8] + struct.pack(">I", 0xFFFFFFFF) + data[12:], "header length 4294967295 is outside"),
    }
    with world.station(tmp_path / "s") as station:
        for name, (content, message) in cases.items():
            bad = tmp_path / f"{name}.vbundle"
            bad.write_bytes(content)
            refused_untouched(station, FormatError, message, bad, world.policy)


def test_a_bundle_swapped_after_it_was_loaded_fails_the_unit_before_the_device_gets_a_byte(
    world: World, bundles: Bundles, tmp_path: Path
) -> None:
    path = tmp_path / "release.vbundle"
    path.write_bytes(bundles.one_station.read_bytes())
    with world.station(tmp_path / "s") as station:
        station.load(path, world.policy)
        path.write_bytes(bundles.counter_7.read_bytes())  # another release of the same images, under another key
        device = SimulatedDevice()
        refused(DecryptionError, "does not authenticate", station.provision, device)
        assert device.flash == {} and device.certificate is None and not device.locked
        (row,) = station.state.read().execute("SELECT event, envelope FROM log").fetchall()
        trusted = {station.enrolled.signing.key_id: station.enrolled.signing.public_key}
        manifest = open_manifest(bytes(row[1]), trusted)
        assert (manifest.event, manifest.failed_step, manifest.unit, manifest.images) == ("failed", "program", 1, ())
        assert station.status().releases[0].used == 1  # the unit stays counted
