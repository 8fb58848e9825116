"""C2SP checkpoints in signed notes: round trips, forgeries, strict parsing, and a real Rekor checkpoint."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.formats._soft import SoftSigner
from vault.checkpoint import (
    MAX_NOTE_SIZE,
    MAX_SIGNATURES,
    Checkpoint,
    note_key_id,
    open_checkpoint,
    parse_checkpoint_unverified,
    sign_checkpoint,
    verifier_key,
)
from vault.crypto import load_spki, spki_der
from vault.errors import FormatError, InputError, LogError, SignatureError

ORIGIN = "vault.example/station-7"
NAME = "vault.example/station-7"
ROOT = hashlib.sha256(b"root").digest()
DASH = "\u2014"
URLSAFE_ROOT = base64.urlsafe_b64encode(bytes([0xFF]) * 32).decode()  # "_" and "-" are not standard base64


@pytest.fixture(scope="module")
def key() -> SoftSigner:
    return SoftSigner()


@pytest.fixture(scope="module")
def other() -> SoftSigner:
    return SoftSigner()


def sign_text(signer: SoftSigner, text: bytes, name: str = NAME) -> bytes:
    """A note over arbitrary text, signed correctly: for bodies sign_checkpoint would never make."""
    line = f"{DASH} {name} " + base64.b64encode(note_key_id(signer.public_key) + signer.sign(text)).decode()
    return text + b"\n" + line.encode() + b"\n"


def split(note: bytes) -> tuple[bytes, bytes]:
    """The text and the signature block of a note."""
    at = note.rindex(b"\n\n")
    return note[: at + 1], note[at + 2 :]


# --- round trips ---------------------------------------------------------------------


def test_round_trip(key: SoftSigner) -> None:
    checkpoint = Checkpoint(ORIGIN, 12345, ROOT)
    note = sign_checkpoint(checkpoint, key, NAME)
    text, block = split(note)
    assert text == f"{ORIGIN}\n12345\n{base64.b64encode(ROOT).decode()}\n".encode()
    assert block.startswith(f"{DASH} {NAME} ".encode()) and block.endswith(b"\n")
    assert base64.b64decode(block.split(b" ")[2])[:4] == hashlib.sha256(spki_der(key.public_key)).digest()[:4]
    assert open_checkpoint(note, key.public_key, NAME) == checkpoint
    assert open_checkpoint(note, key.public_key, NAME, origin=ORIGIN) == checkpoint
    assert parse_checkpoint_unverified(note) == checkpoint


def test_empty_tree_and_extension_lines(key: SoftSigner) -> None:
    empty = Checkpoint(ORIGIN, 0, hashlib.sha256(b"").digest(), ("Timestamp: 1", "x y z"))
    note = sign_checkpoint(empty, key, NAME)
    assert split(note)[0].endswith(b"=\nTimestamp: 1\nx y z\n")
    assert b"\n0\n" in note
    opened = open_checkpoint(note, key.public_key, NAME)
    assert opened == empty
    assert opened.extensions == ("Timestamp: 1", "x y z")


def test_unicode_origin_and_key_name(key: SoftSigner) -> None:
    checkpoint = Checkpoint("lög.example/ü", 1, ROOT)
    note = sign_checkpoint(checkpoint, key, "nøkkel.example")
    assert open_checkpoint(note, key.public_key, "nøkkel.example") == checkpoint


def test_extensions_list_becomes_a_tuple() -> None:
    checkpoint = Checkpoint(ORIGIN, 1, ROOT, ["a"])  # type: ignore[arg-type]
    assert checkpoint.extensions == ("a",)


# --- signatures ----------------------------------------------------------------------


def test_forged_signature_fails(key: SoftSigner) -> None:
    note = sign_checkpoint(Checkpoint(ORIGIN, 7, ROOT), key, NAME)
    text, block = split(note)
    prefix, encoded = block[:-1].rsplit(b" ", 1)
    raw = bytearray(base64.b64decode(encoded))
    raw[-1] ^= 1
    forged = text + b"\n" + prefix + b" " + base64.b64encode(bytes(raw)) + b"\n"
    with pytest.raises(SignatureError, match="does not verify"):
        open_checkpoint(forged, key.public_key, NAME)


def test_signature_by_another_key_fails(key: SoftSigner, other: SoftSigner) -> None:
    note = sign_checkpoint(Checkpoint(ORIGIN, 7, ROOT), other, NAME)
    with pytest.raises(SignatureError, match="not signed by key"):
        open_checkpoint(note, key.public_key, NAME)


def test_another_key_claiming_our_key_id_fails(key: SoftSigner, other: SoftSigner) -> None:
    body = Checkpoint(ORIGIN, 7, ROOT).body()
    line = f"{DASH} {NAME} " + base64.b64encode(note_key_id(key.public_key) + other.sign(body)).decode()
    with pytest.raises(SignatureError, match="does not verify"):
        open_checkpoint(body + b"\n" + line.encode() + b"\n", key.public_key, NAME)


def test_our_key_under_another_name_is_not_ours(key: SoftSigner) -> None:
    note = sign_checkpoint(Checkpoint(ORIGIN, 7, ROOT), key, "someone.else")
    with pytest.raises(SignatureError, match="not signed by key"):
        open_checkpoint(note, key.public_key, NAME)


@pytest.mark.parametrize(
    ("old", "new"),
    [(b"\n7\n", b"\n8\n"), (b"vault.example", b"vault.exampla"), (b"=\n", b"=\nextra\n")],
    ids=["size", "origin", "added-extension"],
)
def test_altered_body_fails(key: SoftSigner, old: bytes, new: bytes) -> None:
    note = sign_checkpoint(Checkpoint(ORIGIN, 7, ROOT), key, NAME)
    text, block = split(note)
    altered = text.replace(old, new, 1)
    assert altered != text
    with pytest.raises(SignatureError):
        open_checkpoint(altered + b"\n" + block, key.public_key, NAME)


def test_altered_root_fails(key: SoftSigner) -> None:
    note = sign_checkpoint(Checkpoint(ORIGIN, 7, ROOT), key, NAME)
    encoded = base64.b64encode(ROOT)
    altered = note.replace(encoded, base64.b64encode(hashlib.sha256(b"other").digest()))
    with pytest.raises(SignatureError):
        open_checkpoint(altered, key.public_key, NAME)


def test_wrong_origin_is_a_log_error(key: SoftSigner) -> None:
    note = sign_checkpoint(Checkpoint("vault.example/station-8", 7, ROOT), key, NAME)
    with pytest.raises(LogError, match="for log 'vault.example/station-8', not 'vault.example/station-7'"):
        open_checkpoint(note, key.public_key, NAME, origin=ORIGIN)


def test_unknown_signatures_are_ignored(key: SoftSigner, other: SoftSigner) -> None:
    checkpoint = Checkpoint(ORIGIN, 9, ROOT)
    ours = split(sign_checkpoint(checkpoint, key, NAME))[1]
    theirs = split(sign_checkpoint(checkpoint, other, "witness.example/w1"))[1]
    # An unknown algorithm's long signature, under an unknown name.
    unknown = f"{DASH} pq.example/w2 ".encode() + base64.b64encode(b"\x01\x02\x03\x04" + b"s" * 2420) + b"\n"
    for block in (ours + theirs + unknown, theirs + unknown + ours, unknown + ours):
        assert open_checkpoint(checkpoint.body() + b"\n" + block, key.public_key, NAME) == checkpoint
    with pytest.raises(SignatureError, match="not signed by key"):
        open_checkpoint(checkpoint.body() + b"\n" + theirs + unknown, key.public_key, NAME)


def test_every_line_by_our_key_must_verify(key: SoftSigner) -> None:
    checkpoint = Checkpoint(ORIGIN, 9, ROOT)
    good = split(sign_checkpoint(checkpoint, key, NAME))[1]
    bad = f"{DASH} {NAME} ".encode() + base64.b64encode(note_key_id(key.public_key) + b"\x30\x00") + b"\n"
    with pytest.raises(SignatureError, match="does not verify"):
        open_checkpoint(checkpoint.body() + b"\n" + good + bad, key.public_key, NAME)


# --- strict parsing ---------------------------------------------------------------------


def good_note(key: SoftSigner) -> bytes:
    return sign_checkpoint(Checkpoint(ORIGIN, 7, ROOT), key, NAME)


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda n: n.replace(b"\n\n", b"\n"), "no blank line"),
        (lambda n: n[:-1], "does not end with a newline"),
        (lambda n: split(n)[0] + b"\n", "no signature lines"),
        (lambda n: n.replace(DASH.encode(), b"-"), "em dash"),
        (lambda n: n.replace(f"{DASH} {NAME}".encode(), f"{DASH} a+b".encode()), "valid key name"),
        (lambda n: n.replace(f"{DASH} {NAME} ".encode(), f"{DASH} {NAME}  ".encode()), "not valid standard base64"),
        (lambda n: n.replace(b"\n7\n", b"\n7\r\n"), "control character U\\+000D"),
        (lambda n: n.replace(b"\n7\n", b"\n7\t\n"), "control character U\\+0009"),
        (lambda n: n.replace(b"\n7\n", b"\n\xff\n"), "not valid UTF-8"),
        (lambda n: n + b"x" * MAX_NOTE_SIZE, "larger than the limit"),
    ],
    ids=[
        "no-blank-line",
        "no-final-newline",
        "no-signatures",
        "hyphen",
        "plus-in-name",
        "two-spaces",
        "carriage-return",
        "tab",
        "not-utf8",
        "oversized",
    ],
)
def test_malformed_notes(key: SoftSigner, mangle: Callable[[bytes], bytes], message: str) -> None:
    note = mangle(good_note(key))
    with pytest.raises(FormatError, match=message):
        open_checkpoint(note, key.public_key, NAME)
    with pytest.raises(FormatError, match=message):
        parse_checkpoint_unverified(note)


def test_short_and_non_canonical_signature_lines(key: SoftSigner) -> None:
    text = Checkpoint(ORIGIN, 7, ROOT).body()
    short = f"{DASH} {NAME} ".encode() + base64.b64encode(b"\x01\x02\x03\x04") + b"\n"
    with pytest.raises(FormatError, match="too short"):
        open_checkpoint(text + b"\n" + short, key.public_key, NAME)
    unpadded = f"{DASH} {NAME} ".encode() + base64.b64encode(b"\x01\x02\x03\x04\x05").rstrip(b"=") + b"\n"
    with pytest.raises(FormatError, match="base64"):
        open_checkpoint(text + b"\n" + unpadded, key.public_key, NAME)


def test_too_many_signatures(key: SoftSigner) -> None:
    note = good_note(key)
    line = split(note)[1]
    with pytest.raises(FormatError, match=f"more than the limit of {MAX_SIGNATURES}"):
        open_checkpoint(note + line * MAX_SIGNATURES, key.public_key, NAME)


def test_oversized_note_is_refused_before_decoding(key: SoftSigner) -> None:
    with pytest.raises(FormatError, match="larger than the limit of 100"):
        open_checkpoint(b"\xff" * 101, key.public_key, NAME, max_size=100)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (f"{ORIGIN}\n07\nROOT\n", "leading zeros"),
        (f"{ORIGIN}\n00\nROOT\n", "leading zeros"),
        (f"{ORIGIN}\n+7\nROOT\n", "decimal"),
        (f"{ORIGIN}\n-1\nROOT\n", "decimal"),
        (f"{ORIGIN}\n1_000\nROOT\n", "decimal"),
        (f"{ORIGIN}\n\u0663\nROOT\n", "decimal"),  # ARABIC-INDIC DIGIT THREE: int() would take it
        (f"{ORIGIN}\n 7\nROOT\n", "decimal"),
        (f"{ORIGIN}\n99999999999999999999\nROOT\n", "decimal"),
        (f"{ORIGIN}\n9223372036854775808\nROOT\n", "outside"),
        (f"{ORIGIN}\n7\n{base64.b64encode(ROOT[:31]).decode()}\n", "31 bytes"),
        (f"{ORIGIN}\n7\n{base64.b64encode(ROOT).decode()[:-1]}\n", "base64"),
        (f"{ORIGIN}\n7\n{URLSAFE_ROOT}\n", "base64"),
        (f"{ORIGIN}\n7\nROOT\n\nextension after an empty line\n", "extension line 1 is empty"),
        ("\n7\nROOT\n", "origin is empty"),
        (f"{ORIGIN}\n7\n", "not at least 3"),
        ("\n", "not at least 3"),
    ],
)
def test_malformed_bodies_are_format_errors(key: SoftSigner, body: str, message: str) -> None:
    text = body.replace("ROOT", base64.b64encode(ROOT).decode()).encode()
    note = sign_text(key, text)  # correctly signed: the body is refused for its form alone
    with pytest.raises(FormatError, match=message):
        open_checkpoint(note, key.public_key, NAME)
    with pytest.raises(FormatError, match=message):
        parse_checkpoint_unverified(note)


def test_largest_size_is_accepted(key: SoftSigner) -> None:
    text = f"{ORIGIN}\n9223372036854775807\n{base64.b64encode(ROOT).decode()}\n".encode()
    assert open_checkpoint(sign_text(key, text), key.public_key, NAME).size == 2**63 - 1


# --- construction and keys ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("", 1, ROOT), "origin is empty"),
        (("a\nb", 1, ROOT), "newline"),
        (("a\x00", 1, ROOT), "control"),
        ((ORIGIN, -1, ROOT), "outside"),
        ((ORIGIN, 2**63, ROOT), "outside"),
        ((ORIGIN, True, ROOT), "whole number"),
        ((ORIGIN, "1", ROOT), "whole number"),
        ((ORIGIN, 1, ROOT[:31]), "not 31 bytes"),
        ((ORIGIN, 1, ROOT.hex()), "not str"),
        ((ORIGIN, 1, ROOT, ("",)), "extension line 1 is empty"),
        ((ORIGIN, 1, ROOT, ("a", "b\nc")), "extension line 2 contains a newline"),
    ],
)
def test_invalid_checkpoints_are_refused(args: tuple[object, ...], message: str) -> None:
    with pytest.raises(FormatError, match=message):
        Checkpoint(*args)  # type: ignore[arg-type]


def test_signing_refuses_bad_names_and_keys(key: SoftSigner) -> None:
    checkpoint = Checkpoint(ORIGIN, 1, ROOT)
    for name in ("", "a b", "a+b", "a\u00a0b", "a\tb"):
        with pytest.raises(InputError, match="key name"):
            sign_checkpoint(checkpoint, key, name)
        with pytest.raises(InputError, match="key name"):
            open_checkpoint(good_note(key), key.public_key, name)
    p384 = SoftSigner(ec.SECP384R1())
    with pytest.raises(InputError, match="P-256"):
        sign_checkpoint(checkpoint, p384, NAME)
    with pytest.raises(InputError, match="P-256"):
        open_checkpoint(good_note(key), p384.public_key, NAME)


def test_signing_checks_the_signer(key: SoftSigner, other: SoftSigner) -> None:
    class Liar(SoftSigner):
        @property
        def key_id(self) -> str:
            return other.key_id

    class Broken(SoftSigner):
        def sign(self, data: bytes) -> bytes:
            return other.sign(data)

    checkpoint = Checkpoint(ORIGIN, 1, ROOT)
    with pytest.raises(InputError, match="claims key id"):
        sign_checkpoint(checkpoint, Liar(), NAME)
    with pytest.raises(InputError, match="does not verify"):
        sign_checkpoint(checkpoint, Broken(), NAME)


# --- interoperability: a real Sigstore Rekor checkpoint (signed-note type 0x02) ------------

# The production Rekor log key (SubjectPublicKeyInfo, base64), as published in Sigstore's trusted root.
REKOR_SPKI = (
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE2G2Y+2tabdTV5BcGiBIx0a9fAFwrkBbmLSGtks4L3qX6yYY0zufB"
    "nhC8Ur/iy55GhWP/9A/bY2LhC30M9+RYtw=="
)
REKOR_NAME = "rekor.sigstore.dev"
REKOR_ORIGIN = "rekor.sigstore.dev - 2605736670972794746"
REKOR_NOTES = [
    (
        "rekor.sigstore.dev - 2605736670972794746\n90244708\nCOSIc1jqxpbuuTChPdiTqtZBBve7GAVJqTYjqAaM940=\n\n"
        "\u2014 rekor.sigstore.dev wNI9ajBEAiAkKWVCpp/N5yF/GlQkAyKQxUsjc3Vpu04YyALJvrBsvAIgcZfXJsJdwLdgUAWwnekWg8YX"
        "S4gfz/DM1wVhhcouJBE=\n"
    ),
    (
        "rekor.sigstore.dev - 2605736670972794746\n26792039\ncQcl3UjHWft0wEVP9BBGd+dKOcmUlaEMIYdC64mNONc=\n"
        "Timestamp: 1691781533798160174\n\n"
        "\u2014 rekor.sigstore.dev wNI9ajBEAiAq6zQXfHpGZ9D4aVzzCNt1vUwxQMMpnbfsC0LawPzkpwIgfDHE3XjN4N7zXG6vpN8eXDGq"
        "Y30jTLojMOjHGFtySuk=\n"
    ),
]


def test_real_rekor_checkpoints_verify() -> None:
    public_key = load_spki(base64.b64decode(REKOR_SPKI), what="Rekor key")
    assert note_key_id(public_key).hex() == "c0d23d6a"  # the first bytes of Rekor's published log id
    first, second = (
        open_checkpoint(note.encode(), public_key, REKOR_NAME, origin=REKOR_ORIGIN) for note in REKOR_NOTES
    )
    assert (first.size, first.extensions) == (90244708, ())
    assert first.root == base64.b64decode("COSIc1jqxpbuuTChPdiTqtZBBve7GAVJqTYjqAaM940=")
    assert (second.size, second.extensions) == (26792039, ("Timestamp: 1691781533798160174",))
    altered = REKOR_NOTES[0].replace("90244708", "90244709").encode()
    with pytest.raises(SignatureError):
        open_checkpoint(altered, public_key, REKOR_NAME)


def test_verifier_key_matches_the_transparency_dev_form() -> None:
    public_key = load_spki(base64.b64decode(REKOR_SPKI), what="Rekor key")
    name, keyid, encoded = verifier_key(public_key, REKOR_NAME).split("+", 2)
    assert (name, keyid) == (REKOR_NAME, "c0d23d6a")
    # transparency-dev/formats note.NewECDSAVerifier documents this key as
    # "rekor.sigstore.dev+<hash>+AjBZMBMG...": 0x02 followed by the SPKI DER.
    assert encoded.startswith("AjBZMBMG")
    assert base64.b64decode(encoded) == b"\x02" + base64.b64decode(REKOR_SPKI)
