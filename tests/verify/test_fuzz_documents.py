"""Fuzz the parsers whose valid samples come from the enrolled world: policy, release, log line, enrolment request.

Nothing but a VaultError may escape. Samples are the world's own files (made
through the CLI on SoftHSM2 tokens); mutations are drawn as in
``tests/fuzz/test_parsers.py``, bounded by ``max_examples``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.test_parsers import FUZZ, mutated_bytes, mutated_json, only_vault_errors
from tests.verify.conftest import World
from vault.bundle._log import _BODY, release_signer_ids, verify_log
from vault.container import BundleReader
from vault.enrolment import open_enrolment_request
from vault.formats import Envelope, Statement, canonical_json
from vault.policy import load_policy
from vault.release import parse_release

NOW = datetime.datetime(2026, 6, 1, tzinfo=datetime.UTC)


def test_policy(world: World) -> None:
    root = world.root_cert
    load_policy(world.policy, root, now=NOW)  # the sample is valid

    @FUZZ
    @given(st.one_of(mutated_bytes(world.policy), mutated_json(json.loads(world.policy)).map(canonical_json)))
    def fuzz(data: bytes) -> None:
        only_vault_errors(lambda: load_policy(data, root, now=NOW))

    fuzz()


def test_release_statement(world: World) -> None:
    with BundleReader(world.bundle_path) as reader:
        envelope = Envelope.from_json(reader.envelope_bytes)
    statement = json.loads(envelope.payload)
    parse_release(Statement.from_bytes(envelope.payload))  # the sample is valid

    @FUZZ
    @given(mutated_json(statement["predicate"]))
    def fuzz(predicate: Any) -> None:
        data = canonical_json({**statement, "predicate": predicate})
        only_vault_errors(lambda: parse_release(Statement.from_bytes(data)))

    fuzz()


def test_promotion_log_line(world: World, tmp_path: Path) -> None:
    policy = load_policy(world.policy, world.root_cert, now=NOW)
    ids = release_signer_ids(policy)
    first = world.promotions.read_bytes().splitlines()[0]
    log = tmp_path / "promotions.log"

    def rehashed(doc: Any) -> bytes:
        if isinstance(doc, dict) and _BODY <= set(doc):  # a hash that matches: the parser goes on past it
            doc = {**doc, "hash": hashlib.sha256(canonical_json({k: doc[k] for k in _BODY})).hexdigest()}
        return canonical_json(doc)

    @FUZZ
    @given(st.one_of(mutated_bytes(first), mutated_json(json.loads(first)).map(rehashed)), st.booleans())
    def fuzz(line: bytes, newline: bool) -> None:
        log.write_bytes(line + (b"\n" if newline else b""))
        only_vault_errors(lambda: verify_log(log, ids, allow_torn=not newline))

    fuzz()


def test_enrolment_request(world: World) -> None:
    request = (world.folder / "station-1-request.json").read_bytes()
    open_enrolment_request(request)  # the sample is valid
    payload = json.loads(Envelope.from_json(request).payload)
    envelope = json.loads(request)

    def repacked(document: Any) -> bytes:
        import base64

        return canonical_json({**envelope, "payload": base64.b64encode(canonical_json(document)).decode()})

    @FUZZ
    @given(
        st.one_of(
            mutated_bytes(request),
            mutated_json(envelope).map(canonical_json),
            mutated_json(payload).map(repacked),
        )
    )
    def fuzz(data: bytes) -> None:
        only_vault_errors(lambda: open_enrolment_request(data))

    fuzz()


@pytest.mark.parametrize("name", ["transcript.json", "policy-v1.json"])
def test_root_ceremony_outputs(world: World, name: str) -> None:
    """The root ceremony's own transcript and first policy, mutated as bytes, through their parsers."""
    from vault.ceremony import verify_transcript

    data = (world.folder / "root" / name).read_bytes()
    root = world.root_cert
    parse = (
        (lambda d: verify_transcript(d, root_certificate=root))
        if name == "transcript.json"
        else (lambda d: load_policy(d, root, now=NOW))
    )

    @FUZZ
    @given(st.one_of(mutated_bytes(data), mutated_json(json.loads(data)).map(canonical_json)))
    def fuzz(mutated: bytes) -> None:
        only_vault_errors(lambda: parse(mutated))

    fuzz()
