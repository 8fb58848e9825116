"""vault.proof's formats on their own: the cosignature line and the tlog-proof text, good and bad."""

from __future__ import annotations

import base64

import pytest

from tests.audit.conftest import SoftSigner
from vault import merkle
from vault.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from vault.errors import FormatError, ProofError
from vault.policy import RoleKey
from vault.proof import (
    PROOF_HEADER,
    ProofFile,
    cosign_checkpoint,
    cosigned_message,
    cosigner_key_name,
    format_proof,
    parse_proof,
    station_id_of,
    verify_cosignatures,
)

ORIGIN = "vault.dev/station/station-1"


class Soft(SoftSigner):
    def role(self) -> RoleKey:
        return RoleKey(self.key_id, self.public_key)


@pytest.fixture
def note() -> tuple[bytes, Soft]:
    station = Soft()
    return sign_checkpoint(Checkpoint(ORIGIN, 3, bytes(range(32))), station, ORIGIN), station


def test_a_cosignature_is_one_more_line_the_station_signature_still_verifies(note: tuple[bytes, Soft]) -> None:
    signed, station = note
    one, two = Soft(), Soft()
    cosigned = cosign_checkpoint(signed, one, cosigner_key_name("one"), 1_700_000_000)
    cosigned = cosign_checkpoint(cosigned, two, cosigner_key_name("two"), 1_700_000_001)
    assert cosigned.startswith(signed) and cosigned.count(b"\n\xe2\x80\x94 ") == 3
    assert open_checkpoint(cosigned, station.public_key, ORIGIN).size == 3
    both = {"one": one.role(), "two": two.role()}
    assert verify_cosignatures(cosigned, both, 2) == ("one", "two")
    with pytest.raises(ProofError, match="2 valid auditor cosignature.*needs 3"):
        verify_cosignatures(cosigned, {**both, "three": Soft().role()}, 3)
    # a cosigner's line does not count for another holder, nor under another name
    with pytest.raises(ProofError, match="0 valid"):
        verify_cosignatures(cosigned, {"two": one.role()}, 1)


def test_the_signed_message_is_the_specs() -> None:
    body = Checkpoint(ORIGIN, 3, bytes(range(32))).body()
    assert cosigned_message(body, 1679315147) == b"cosignature/v1\ntime 1679315147\n" + body


def test_an_altered_cosignature_by_an_enrolled_key_is_refused(note: tuple[bytes, Soft]) -> None:
    signed, _ = note
    one = Soft()
    cosigned = cosign_checkpoint(signed, one, cosigner_key_name("one"), 1_700_000_000)
    line = cosigned.rsplit(b"\n", 2)[1].decode()
    name, encoded = line[2:].split(" ")
    raw = bytearray(base64.b64decode(encoded))
    raw[7] ^= 1  # the timestamp, which the signature covers
    forged = cosigned.replace(line.encode(), f"\u2014 {name} {base64.b64encode(bytes(raw)).decode()}".encode())
    with pytest.raises(ProofError, match="does not verify"):
        verify_cosignatures(forged, {"one": one.role()}, 1)


def test_a_proof_round_trips_and_malformed_ones_are_refused(note: tuple[bytes, Soft]) -> None:
    signed, _ = note
    leaves = [merkle.leaf_hash(bytes([i])) for i in range(3)]
    path = merkle.inclusion_proof(1, 3, lambda a, b: leaves[a:b])
    proof = ProofFile(b"entry", 1, tuple(path), signed)
    text = format_proof(proof)
    assert text.startswith(f"{PROOF_HEADER}\nextra ZW50cnk=\nindex 1\n".encode())
    assert parse_proof(text) == proof
    bad = {
        "no header": text.replace(PROOF_HEADER.encode(), b"c2sp.org/tlog-proof@v2"),
        "leading zero": text.replace(b"index 1\n", b"index 01\n"),
        "no index": text.replace(b"index 1\n", b""),
        "short hash": text.replace(base64.b64encode(path[0]), base64.b64encode(path[0][:31])),
        "not base64": text.replace(b"extra ZW50cnk=", b"extra ZW50cnk"),
        "no checkpoint": text[: text.index(b"\n\n") + 2],
        "no blank line": text[: text.index(b"\n\n")],
        "too large": text + b"x" * 300_000,
    }
    for what, data in bad.items():
        with pytest.raises(FormatError):
            parse_proof(data)
            pytest.fail(f"accepted a proof with {what}")


def test_station_ids_come_only_from_station_origins() -> None:
    assert station_id_of(ORIGIN) == "station-1"
    assert station_id_of("vault.dev/station/Station 1") is None
    assert station_id_of("example.com/log") is None
