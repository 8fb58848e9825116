"""Fuzz every parser that needs no token: nothing but a VaultError may escape, whatever the bytes.

Each test starts from a valid document and draws mutations of it (bytes cut,
flipped or inserted; JSON values swapped for other JSON of any type, fields
dropped or added; for signed documents the mutated payload is signed again,
so the parser behind the signature check is reached too). Each is bounded by
``max_examples`` so the whole set runs in seconds; ``VAULT_FUZZ_EXAMPLES``
raises the count for a longer campaign.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.formats._soft import SoftSigner
from vault.ceremony._custody import share_text
from vault.ceremony._sealed import read_sealed_share
from vault.ceremony._shares import ShareSetRecord, check_share, split_secret
from vault.ceremony._transcript import PAYLOAD_TYPE as TRANSCRIPT_TYPE
from vault.ceremony._transcript import Transcript
from vault.ceremony._verify import verify_transcript
from vault.checkpoint import Checkpoint, open_checkpoint, parse_checkpoint_unverified, sign_checkpoint
from vault.container import BundleWriter, Header, seal_recipients
from vault.crypto import spki_der
from vault.errors import VaultError
from vault.evidence import EvidenceHeader, write_evidence
from vault.formats import PAYLOAD_TYPE_INTOTO, Envelope, Statement, Subject, canonical_json, sign_envelope
from vault.formats import verify_envelope as verify_dsse
from vault.hpke import SoftwareDecapsulator
from vault.manifest import ImageRecord, Manifest, open_manifest, sign_manifest
from vault.token import parse_uri

EXAMPLES = int(os.environ.get("VAULT_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow], database=None
)

# --- strategies ----------------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every value's path in a JSON document, the document itself first."""
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


@st.composite
def mutated_json(draw: st.DrawFn, document: Any) -> Any:
    """``document`` with one to three of its values (any one, at any depth) replaced, removed or joined by another."""
    doc = json.loads(json.dumps(document))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(doc)))
        if not path:
            if isinstance(doc, dict) and draw(st.booleans()):
                doc[draw(st.text(max_size=8))] = draw(json_values)
            elif draw(st.integers(0, 9)) == 0:
                doc = draw(json_values)
            continue
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(json_values)
        else:
            parent[path[-1]] = draw(json_values)
    return doc


@st.composite
def mutated_bytes(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` cut, with bytes flipped or inserted, or replaced by random bytes."""
    kind = draw(st.sampled_from(["cut", "flip", "insert", "random"]))
    if kind == "random":
        return draw(st.binary(max_size=300))
    if kind == "cut":
        return data[: draw(st.integers(0, len(data)))]
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(out)))
        if kind == "flip" and at < len(out):
            out[at] ^= draw(st.integers(1, 255))
        else:
            out[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(out)


def only_vault_errors(parse: Callable[[], object]) -> None:
    """Run ``parse``; a VaultError is a refusal (fine), anything else escapes and fails the test."""
    try:
        parse()
    except VaultError as e:
        assert str(e) and "\n" not in str(e), repr(e)


# --- samples -------------------------------------------------------------------------------------------------------

SIGNER = SoftSigner()
TRUSTED = {SIGNER.key_id: SIGNER.public_key}
STATEMENT = Statement(
    subjects=(Subject("fw.bin", {"sha256": "ab" * 32}),),
    predicate_type="https://vault.example/release/v1",
    predicate={"version": "1.0.0", "counts": [1, 2]},
)
ENVELOPE = sign_envelope(PAYLOAD_TYPE_INTOTO, STATEMENT.to_bytes(), [SIGNER]).to_json()
MANIFEST = Manifest(
    id="0f" * 16, sequence=3, event="provisioned", station_id="station-1", operator="op-7", fixture=2,
    bundle_id="11" * 16, product="example-sensor", version="1.4.0", security_counter=7, policy_version=3,
    unit=4, hardware_id="a1b2c3d4e5f60708", serial="SN-0004", label="SN-0004",
    images=(ImageRecord("app.bin", "ab" * 32, "ab" * 32),), device_key_id="cd" * 32,
    certificate_serial="7f" * 8, certificate_sha256="ef" * 32,
    keys={"signing": SIGNER.key_id, "issuing_ca": SIGNER.key_id}, failed_step=None, detail=None,
    time=datetime.datetime(2026, 11, 21, 10, 0, tzinfo=datetime.UTC), clock="system",
)  # fmt: skip
CHECKPOINT = sign_checkpoint(Checkpoint("vault.example/station-1", 5, b"\x01" * 32), SIGNER, "station-1")


def _payload_of(envelope: bytes) -> Any:
    return json.loads(Envelope.from_json(envelope).payload)


def _resigned(payload_type: str, document: Any, *signers: SoftSigner) -> bytes:
    return sign_envelope(payload_type, canonical_json(document), signers or (SIGNER,)).to_json()


# --- DSSE and in-toto ---------------------------------------------------------------------------------------------


@FUZZ
@given(st.one_of(mutated_bytes(ENVELOPE), mutated_json(json.loads(ENVELOPE)).map(canonical_json)))
def test_dsse_envelope(data: bytes) -> None:
    only_vault_errors(lambda: verify_dsse(Envelope.from_json(data), TRUSTED, 1, what="fuzzed envelope"))


@FUZZ
@given(
    st.one_of(mutated_bytes(STATEMENT.to_bytes()), mutated_json(json.loads(STATEMENT.to_bytes())).map(canonical_json))
)
def test_in_toto_statement(data: bytes) -> None:
    only_vault_errors(lambda: Statement.from_bytes(data))


# --- manifests and checkpoints -------------------------------------------------------------------------------------


@FUZZ
@given(mutated_json(_payload_of(sign_manifest(MANIFEST, SIGNER))))
def test_manifest(document: Any) -> None:
    only_vault_errors(lambda: open_manifest(_resigned(PAYLOAD_TYPE_INTOTO, document), TRUSTED))


@FUZZ
@given(mutated_bytes(sign_manifest(MANIFEST, SIGNER)))
def test_manifest_bytes(data: bytes) -> None:
    only_vault_errors(lambda: open_manifest(data, TRUSTED))


@FUZZ
@given(mutated_bytes(CHECKPOINT))
def test_checkpoint_note(note: bytes) -> None:
    only_vault_errors(lambda: parse_checkpoint_unverified(note))
    only_vault_errors(lambda: open_checkpoint(note, SIGNER.public_key, "station-1"))


# --- bundle and evidence headers -----------------------------------------------------------------------------------


def _bundle_header(folder: Path) -> bytes:
    station = SoftwareDecapsulator(ec.generate_private_key(ec.SECP256R1()))
    with BundleWriter(folder / "b.vbundle") as writer:
        writer.add_image("app.bin", __import__("io").BytesIO(b"firmware" * 100))
        recipients = seal_recipients(writer.data_key, writer.bundle_id, {"station-1": station.public_key})
        return writer.finish(recipients, ENVELOPE).to_bytes()


def _evidence_header(folder: Path) -> bytes:
    auditor = SoftwareDecapsulator(ec.generate_private_key(ec.SECP256R1()))
    header = write_evidence(
        folder / "e.vault-evidence", [b"record"], recipient=auditor.public_key, station_id="station-1",
        sequence=1, created="2025-06-01T12:00:00Z",
    )  # fmt: skip
    return header.to_bytes()


@pytest.fixture(scope="module")
def headers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("headers")
    return {"bundle": _bundle_header(folder), "evidence": _evidence_header(folder)}


@pytest.mark.parametrize("kind", ["bundle", "evidence"])
def test_container_headers(headers: dict[str, bytes], kind: str) -> None:
    sample = headers[kind]
    parse = Header.from_bytes if kind == "bundle" else EvidenceHeader.from_bytes
    assert parse(sample).to_bytes() == sample  # the sample is valid: mutations start from a real header

    @FUZZ
    @given(st.one_of(mutated_bytes(sample), mutated_json(json.loads(sample)).map(canonical_json)))
    def fuzz(data: bytes) -> None:
        only_vault_errors(lambda: parse(data))

    fuzz()


# --- ceremony transcripts and shares -------------------------------------------------------------------------------

OFFICER = SoftSigner()


def _transcript() -> dict[str, Any]:
    t = Transcript.start({"type": "root", "name": "demo"}, now=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC))
    for actor, action, key in (("root-token", "generate-root-key", SIGNER), ("officer-1", "officer-key", OFFICER)):
        t.record(actor, action, details={"spki": base64.b64encode(spki_der(key.public_key)).decode()})
    t.record("officers", "close-ceremony", details={"note": "done"})
    return dict(json.loads(t.to_bytes()))


TRANSCRIPT = _transcript()


@FUZZ
@given(mutated_json(TRANSCRIPT))
def test_transcript(document: Any) -> None:
    envelope = _resigned(TRANSCRIPT_TYPE, document, SIGNER, OFFICER)
    only_vault_errors(lambda: verify_transcript(envelope))


@FUZZ
@given(mutated_bytes(_resigned(TRANSCRIPT_TYPE, TRANSCRIPT, SIGNER, OFFICER)))
def test_transcript_bytes(data: bytes) -> None:
    only_vault_errors(lambda: verify_transcript(data))


SHARES = split_secret(b"\x11" * 16, threshold=2, count=3)


@FUZZ
@given(
    st.one_of(
        st.text(max_size=400),
        st.lists(st.sampled_from(SHARES.mnemonics[0].split() + ["zzz", "", "abandon"]), max_size=40).map(" ".join),
        mutated_bytes(SHARES.mnemonics[0].encode()).map(lambda b: b.decode("utf-8", errors="replace")),
    )
)
def test_share_text(text: str) -> None:
    only_vault_errors(lambda: check_share(share_text(text), SHARES.record))


@FUZZ
@given(mutated_json(SHARES.record.to_dict()))
def test_share_set_record(document: Any) -> None:
    only_vault_errors(lambda: ShareSetRecord.from_dict(document))


SEALED = canonical_json(
    {"format": "vault-sealed-share/v1", "custodian": "officer-1", "share_set": 1, "recipient_key_id": "ab" * 32,
     "sealed": base64.b64encode(b"\x04" * 65 + b"x" * 40).decode()}
)  # fmt: skip


@FUZZ
@given(st.one_of(mutated_bytes(SEALED), mutated_json(json.loads(SEALED)).map(canonical_json)))
def test_sealed_share(data: bytes) -> None:
    only_vault_errors(lambda: read_sealed_share(data))


# --- PKCS#11 URIs --------------------------------------------------------------------------------------------------

URI = "pkcs11:token=vault-root;object=root;id=%01%02?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/p"


@FUZZ
@given(
    st.one_of(
        st.text(max_size=200),
        mutated_bytes(URI.encode()).map(lambda b: b.decode("utf-8", errors="replace")),
        st.lists(st.sampled_from(list(";?&=%:/") + ["token", "id", "pin-value", "%zz", "%00", "é"]), max_size=30)
        .map("".join)
        .map(lambda tail: "pkcs11:" + tail),
    )
)
def test_pkcs11_uri(text: str) -> None:
    only_vault_errors(lambda: parse_uri(text))


# --- release description (YAML) -----------------------------------------------------------------------------------

DESCRIPTION = """product: example-sensor
version: 1.4.0
security_counter: 7
not_before: 2026-01-01T00:00:00Z
expires: 2099-01-01T00:00:00Z
production:
  total: 1000
  allocation: {station-1: 20, station-2: 10}
images:
  - name: app.bin
    path: images/app.bin
    load_address: "0x08000000"
  - name: config.bin
    path: images/config.bin
    partition: config
"""


@pytest.fixture(scope="module")
def description_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("description")
    (folder / "images").mkdir()
    (folder / "images" / "app.bin").write_bytes(b"app")
    (folder / "images" / "config.bin").write_bytes(b"config")
    return folder


def test_release_description(description_folder: Path) -> None:
    from vault.bundle import load_release_description

    path = description_folder / "release.yaml"
    path.write_text(DESCRIPTION)
    load_release_description(path)  # the sample is valid
    yaml_bits = ["\n", ": ", "- ", "  ", "{", "}", "[", "]", "&a ", "*a", "!!str ", "null", "~", "0x", "1e9", "'", '"']

    @FUZZ
    @given(
        st.one_of(
            mutated_bytes(DESCRIPTION.encode()),
            st.lists(st.sampled_from(DESCRIPTION.splitlines(keepends=True) + yaml_bits), max_size=30).map(
                lambda parts: "".join(parts).encode()
            ),
        )
    )
    def fuzz(data: bytes) -> None:
        path.write_bytes(data)
        only_vault_errors(lambda: load_release_description(path))

    fuzz()
