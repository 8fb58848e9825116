"""Per-device secret formats: the HPKE binding, the release's and the manifest's fields, old manifests."""

from __future__ import annotations

import dataclasses
import datetime

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.audit.conftest import SoftSigner
from vault.device_secrets import (
    SealedRecord,
    SecretSpec,
    binding,
    open_secret,
    parse_release_secrets,
    parse_sealed_records,
    seal_secret,
)
from vault.errors import DecryptionError, FormatError
from vault.hpke import SoftwareDecapsulator
from vault.manifest import Manifest, open_manifest, parse_manifest, sign_manifest

SPEC = SecretSpec("backend-psk", "psk-256", "nvs:psk")


def test_a_sealed_secret_opens_only_for_its_own_release_device_and_secret() -> None:
    backend = SoftwareDecapsulator(ec.generate_private_key(ec.SECP256R1()))
    info = binding("11" * 16, "station-1", "a1b2", "SN-1", SPEC)
    blob = seal_secret(backend.public_key, b"k" * 32, info)
    assert open_secret(blob, backend, info) == b"k" * 32
    others = [
        binding("22" * 16, "station-1", "a1b2", "SN-1", SPEC),
        binding("11" * 16, "station-2", "a1b2", "SN-1", SPEC),
        binding("11" * 16, "station-1", "a1b3", "SN-1", SPEC),
        binding("11" * 16, "station-1", "a1b2", "SN-2", SPEC),
        binding("11" * 16, "station-1", "a1b2", "SN-1", dataclasses.replace(SPEC, name="storage-key")),
    ]
    for other in others:
        with pytest.raises(DecryptionError):
            open_secret(blob, backend, other)
    stranger = SoftwareDecapsulator(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(DecryptionError):
        open_secret(blob, stranger, info)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"recipient": "ab" * 32, "items": [{"name": "p", "kind": "psk-128", "target": "t"}]}, "not a secret kind"),
        ({"recipient": "AB" * 32, "items": [SPEC.to_json()]}, "recipient must be a key id"),
        ({"recipient": "ab" * 32, "items": []}, "items must be a list of 1 to 16"),
        ({"recipient": "ab" * 32, "items": [SPEC.to_json(), SPEC.to_json()]}, "appears twice"),
        ({"recipient": "ab" * 32, "items": [{**SPEC.to_json(), "target": "a b"}]}, "target"),
        ({"recipient": "ab" * 32}, "missing field 'items'"),
    ],
)
def test_a_malformed_release_secrets_field_is_refused(value: object, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        parse_release_secrets(value)


def test_a_malformed_manifest_secrets_field_is_refused() -> None:
    good = SealedRecord("backend-psk", "psk-256", "cd" * 32, "ab" * 32, True).to_json()
    assert parse_sealed_records([good])[0].installed
    with pytest.raises(FormatError, match="installed must be true or false"):
        parse_sealed_records([{**good, "installed": "yes"}])
    with pytest.raises(FormatError, match="sealed_sha256"):
        parse_sealed_records([{**good, "sealed_sha256": "x"}])
    with pytest.raises(FormatError, match="unknown field 'secret'"):
        parse_sealed_records([{**good, "secret": "00"}])


def _manifest(**changes: object) -> Manifest:
    base = Manifest(
        id="00" * 16, sequence=0, event="provisioned", station_id="station-1", operator="op", fixture=1,
        bundle_id="11" * 16, product="p", version="1", security_counter=1, policy_version=1, unit=1,
        hardware_id="a1b2", serial="SN-1", label=None, images=(), device_key_id=None, certificate_serial=None,
        certificate_sha256=None, keys={"signing": "22" * 32, "issuing_ca": "33" * 32}, failed_step=None,
        detail=None, time=datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC), clock="system",
    )  # fmt: skip
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_secrets_and_lots_round_trip_and_manifests_without_them_read_as_before() -> None:
    signer = SoftSigner()
    trusted = {signer.key_id: signer.public_key}
    record = SealedRecord("backend-psk", "psk-256", "cd" * 32, "ab" * 32, False)
    full = _manifest(secrets=(record,), lots={"mcu": "L2311A"})
    assert open_manifest(sign_manifest(full, signer), trusted) == full
    plain = _manifest()
    predicate = plain.statement().predicate
    assert "secrets" not in predicate and "lots" not in predicate  # old readers see the same fields as before
    assert open_manifest(sign_manifest(plain, signer), trusted) == plain
    statement = full.statement()
    statement.predicate["lots"] = {"MCU!": "x"}
    with pytest.raises(FormatError, match="not a component name"):
        parse_manifest(statement)
    statement.predicate["lots"] = {"mcu": ""}
    with pytest.raises(FormatError, match="lots.mcu"):
        parse_manifest(statement)
