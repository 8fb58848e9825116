"""DSSE envelopes: PAE, signing (in software and in a real SoftHSM2 token), thresholds and forgeries."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from tests.formats._soft import SoftSigner, trusted_of
from vault.crypto import Signer, key_id
from vault.errors import InputError, SignatureError, ThresholdError
from vault.formats import (
    Envelope,
    Signature,
    VerificationResult,
    add_signature,
    inspect_signatures,
    pae,
    sign_envelope,
    verify_envelope,
)
from vault.token import Pkcs11Uri, open_token

TokenUri = Callable[..., Pkcs11Uri]
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
TYPE = "application/vnd.vault.test+json"


# --- PAE ---------------------------------------------------------------------


def test_pae_known_answer_from_the_spec_definition() -> None:
    payload_type = "http://example.com/HelloWorld"
    payload = b"hello world"
    # "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body, LEN in ASCII decimal bytes:
    # the type is 29 bytes long and the body 11.
    expected = b"DSSEv1" + b" " + b"29" + b" " + b"http://example.com/HelloWorld" + b" " + b"11" + b" " + b"hello world"
    assert pae(payload_type, payload) == expected


def test_pae_counts_bytes_not_characters_and_keeps_binary_body() -> None:
    body = b"\x00 \xff\n"
    assert pae("é", body) == b"DSSEv1 2 \xc3\xa9 4 \x00 \xff\n"
    assert pae("t", b"") == b"DSSEv1 1 t 0 "


def test_pae_separates_type_from_body_unambiguously() -> None:
    # Moving a byte across the type/body boundary changes the encoding.
    assert pae("ab", b"c") != pae("a", b"bc")


# --- signing and round-trips ---------------------------------------------------


def test_signed_envelope_round_trips_through_json() -> None:
    a, b = SoftSigner(), SoftSigner()
    envelope = sign_envelope(TYPE, b'{"x":1}', [a, b])
    wire = envelope.to_json()
    assert Envelope.from_json(wire) == envelope
    assert Envelope.from_json(wire).to_json() == wire
    document = json.loads(wire)
    assert document == {
        "payload": base64.b64encode(b'{"x":1}').decode(),
        "payloadType": TYPE,
        "signatures": [
            {"keyid": a.key_id, "sig": base64.b64encode(envelope.signatures[0].sig).decode()},
            {"keyid": b.key_id, "sig": base64.b64encode(envelope.signatures[1].sig).decode()},
        ],
    }
    # Deterministic: sorted keys, no spaces.
    assert wire == json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def test_each_signature_is_der_ecdsa_over_the_pae() -> None:
    signer = SoftSigner()
    envelope = sign_envelope(TYPE, b"payload", [signer])
    (signature,) = envelope.signatures
    signer.public_key.verify(signature.sig, pae(TYPE, b"payload"), ec.ECDSA(hashes.SHA256()))
    decode_dss_signature(signature.sig)  # DER, not raw r||s


def test_add_signature_refuses_a_key_that_already_signed() -> None:
    signer = SoftSigner()
    envelope = sign_envelope(TYPE, b"payload", [signer])
    with pytest.raises(InputError, match=f"key {signer.key_id[:16]} has already signed"):
        add_signature(envelope, signer)
    with pytest.raises(InputError, match="already signed"):
        sign_envelope(TYPE, b"payload", [signer, signer])


def test_add_signature_leaves_the_original_envelope_unchanged() -> None:
    a, b = SoftSigner(), SoftSigner()
    first = sign_envelope(TYPE, b"payload", [a])
    second = add_signature(first, b)
    assert first.keyids == (a.key_id,)
    assert second.keyids == (a.key_id, b.key_id)


def test_add_signature_refuses_a_signer_whose_key_id_lies() -> None:
    honest, other = SoftSigner(), SoftSigner()

    class Liar:
        public_key = honest.public_key
        key_id = other.key_id

        def sign(self, data: bytes) -> bytes:
            return honest.sign(data)

    liar: Signer = Liar()
    with pytest.raises(InputError, match="claims key id"):
        sign_envelope(TYPE, b"payload", [liar])


def test_add_signature_refuses_a_signer_whose_signature_does_not_verify() -> None:
    honest, other = SoftSigner(), SoftSigner()

    class Broken:
        public_key = honest.public_key
        key_id = honest.key_id

        def sign(self, data: bytes) -> bytes:
            return other.sign(data)

    with pytest.raises(InputError, match="does not verify"):
        sign_envelope(TYPE, b"payload", [Broken()])


def test_an_envelope_may_be_unsigned_while_approvals_are_collected() -> None:
    envelope = Envelope.from_json(sign_envelope(TYPE, b"payload", []).to_json())
    assert envelope.signatures == ()
    with pytest.raises(ThresholdError, match="0 of 1 required signatures"):
        verify_envelope(envelope, trusted_of(SoftSigner()), 1, what="draft")


# --- real token keys ------------------------------------------------------------


def test_token_key_signs_an_envelope_that_verifies_with_cryptography(token_uri: TokenUri, label: str) -> None:
    payload = b'{"release":"1.0.0"}'
    with open_token(token_uri("vault-approver-1"), rw=True) as token:
        key = token.generate_ec_key(label)
        envelope = sign_envelope(TYPE, payload, [key])
    (signature,) = Envelope.from_json(envelope.to_json()).signatures
    assert signature.keyid == key_id(key.public_key)
    key.public_key.verify(signature.sig, pae(TYPE, payload), ec.ECDSA(hashes.SHA256()))
    result = verify_envelope(envelope, {key.key_id: key.public_key}, 1, what="release statement")
    assert result.valid == (key.key_id,)


def test_two_approver_tokens_meet_a_two_of_three_threshold(token_uri: TokenUri, label: str) -> None:
    absent = SoftSigner()
    with open_token(token_uri("vault-approver-1"), rw=True) as token:
        first = token.generate_ec_key(label)
        envelope = sign_envelope(TYPE, b"release", [first])
    trusted = {first.key_id: first.public_key, absent.key_id: absent.public_key}
    with pytest.raises(ThresholdError, match="1 of 2 required signatures"):
        verify_envelope(envelope, trusted, 2, what="release statement")
    with open_token(token_uri("vault-approver-2"), rw=True) as token:
        second = token.generate_ec_key(label)
        envelope = add_signature(Envelope.from_json(envelope.to_json()), second)
    trusted[second.key_id] = second.public_key
    result = verify_envelope(Envelope.from_json(envelope.to_json()), trusted, 2, what="release statement")
    assert set(result.valid) == {first.key_id, second.key_id}
    assert result.missing == (absent.key_id,)
    assert result.met


def test_token_p384_key_signs_with_sha384(token_uri: TokenUri, label: str) -> None:
    with open_token(token_uri("vault-approver-3"), rw=True) as token:
        key = token.generate_ec_key(label, curve="P-384")
        envelope = sign_envelope(TYPE, b"payload", [key])
    key.public_key.verify(envelope.signatures[0].sig, envelope.pae, ec.ECDSA(hashes.SHA384()))
    verify_envelope(envelope, {key.key_id: key.public_key}, 1, what="statement")


# --- thresholds -------------------------------------------------------------------


def test_threshold_met_returns_a_result() -> None:
    a, b, c = SoftSigner(), SoftSigner(), SoftSigner()
    envelope = sign_envelope(TYPE, b"payload", [b, a])
    result = verify_envelope(envelope, trusted_of(a, b, c), 2, what="release statement")
    assert result == VerificationResult(
        threshold=2, valid=(b.key_id, a.key_id), unknown=(), missing=(c.key_id,), invalid=()
    )
    assert result.met


def test_threshold_not_met_says_how_many_and_who_is_missing() -> None:
    a, b, c = SoftSigner(), SoftSigner(), SoftSigner()
    envelope = sign_envelope(TYPE, b"payload", [a])
    with pytest.raises(ThresholdError) as caught:
        verify_envelope(envelope, trusted_of(a, b, c), 3, what="release statement")
    unsigned = ", ".join(k[:16] for k in sorted([b.key_id, c.key_id]))
    assert str(caught.value) == f"release statement: 1 of 3 required signatures (missing 2; unsigned: {unsigned})"


def test_one_key_signing_twice_does_not_meet_two_of_n() -> None:
    a, b = SoftSigner(), SoftSigner()
    once = sign_envelope(TYPE, b"payload", [a])
    # A second, different, valid signature by the same key (ECDSA is randomised).
    again = Signature(a.key_id, a.sign(once.pae))
    assert again.sig != once.signatures[0].sig
    twice = Envelope(TYPE, b"payload", (*once.signatures, again))
    received = Envelope.from_json(twice.to_json())
    assert len(received.signatures) == 2
    with pytest.raises(ThresholdError, match="1 of 2 required signatures"):
        verify_envelope(received, trusted_of(a, b), 2, what="release statement")
    assert inspect_signatures(received, trusted_of(a, b), threshold=2).valid == (a.key_id,)


def test_a_malleated_copy_of_one_signature_does_not_count_twice() -> None:
    a, b = SoftSigner(), SoftSigner()
    once = sign_envelope(TYPE, b"payload", [a])
    r, s = decode_dss_signature(once.signatures[0].sig)
    flipped = Signature(a.key_id, encode_dss_signature(r, P256_ORDER - s))  # also valid ECDSA
    envelope = Envelope(TYPE, b"payload", (*once.signatures, flipped))
    with pytest.raises(ThresholdError, match="1 of 2"):
        verify_envelope(envelope, trusted_of(a, b), 2, what="release statement")


def test_threshold_must_be_at_least_one() -> None:
    a = SoftSigner()
    envelope = sign_envelope(TYPE, b"payload", [])
    for threshold in (0, -1):
        with pytest.raises(InputError, match="threshold must be"):
            verify_envelope(envelope, trusted_of(a), threshold, what="statement")


def test_threshold_larger_than_the_trusted_set_cannot_be_met() -> None:
    a = SoftSigner()
    envelope = sign_envelope(TYPE, b"payload", [a])
    with pytest.raises(ThresholdError, match="1 of 2 required signatures"):
        verify_envelope(envelope, trusted_of(a), 2, what="statement")


# --- tampering and forgery ----------------------------------------------------------


def test_a_changed_payload_byte_fails() -> None:
    a = SoftSigner()
    wire = json.loads(sign_envelope(TYPE, b'{"count":1000}', [a]).to_json())
    wire["payload"] = base64.b64encode(b'{"count":9000}').decode()
    tampered = Envelope.from_json(json.dumps(wire).encode())
    with pytest.raises(SignatureError, match=f"statement: signature by trusted key {a.key_id[:16]} does not verify"):
        verify_envelope(tampered, trusted_of(a), 1, what="statement")


def test_a_changed_payload_type_fails() -> None:
    a = SoftSigner()
    envelope = sign_envelope(TYPE, b"payload", [a])
    retyped = Envelope("application/vnd.other+json", envelope.payload, envelope.signatures)
    with pytest.raises(SignatureError):
        verify_envelope(retyped, trusted_of(a), 1, what="statement")


def test_a_forged_signature_under_a_trusted_keyid_raises_even_when_the_threshold_is_met() -> None:
    a, b, mallory = SoftSigner(), SoftSigner(), SoftSigner()
    envelope = sign_envelope(TYPE, b"payload", [a])
    forged = Signature(b.key_id, mallory.sign(envelope.pae))
    envelope = Envelope(TYPE, b"payload", (*envelope.signatures, forged))
    with pytest.raises(SignatureError, match=f"trusted key {b.key_id[:16]} does not verify"):
        verify_envelope(envelope, trusted_of(a, b), 1, what="release statement")


def test_garbage_in_place_of_a_signature_is_a_forgery() -> None:
    a = SoftSigner()
    envelope = Envelope(TYPE, b"payload", (Signature(a.key_id, b"\x30\x03\x02\x01"),))
    with pytest.raises(SignatureError, match="does not verify"):
        verify_envelope(envelope, trusted_of(a), 1, what="statement")


def test_one_bad_signature_spoils_a_key_that_also_signed_well() -> None:
    a, b, mallory = SoftSigner(), SoftSigner(), SoftSigner()
    envelope = sign_envelope(TYPE, b"payload", [a, b])
    envelope = Envelope(TYPE, b"payload", (*envelope.signatures, Signature(a.key_id, mallory.sign(envelope.pae))))
    with pytest.raises(SignatureError):
        verify_envelope(envelope, trusted_of(a, b), 2, what="statement")
    result = inspect_signatures(envelope, trusted_of(a, b), threshold=2)
    assert result.valid == (b.key_id,)
    assert result.invalid == (a.key_id,)
    assert not result.met


def test_unknown_keyids_are_reported_and_not_counted() -> None:
    a, b, stranger = SoftSigner(), SoftSigner(), SoftSigner()
    envelope = sign_envelope(TYPE, b"payload", [stranger, a])
    result = verify_envelope(envelope, trusted_of(a, b), 1, what="statement")
    assert result.valid == (a.key_id,)
    assert result.unknown == (stranger.key_id,)
    assert result.missing == (b.key_id,)
    with pytest.raises(ThresholdError, match="1 of 2 required signatures"):
        verify_envelope(envelope, trusted_of(a, b), 2, what="statement")


def test_an_unknown_keyid_with_a_bad_signature_is_listed_not_raised() -> None:
    a = SoftSigner()
    envelope = sign_envelope(TYPE, b"payload", [a])
    envelope = Envelope(TYPE, b"payload", (*envelope.signatures, Signature("ab" * 32, b"\x00")))
    result = verify_envelope(envelope, trusted_of(a), 1, what="statement")
    assert result.unknown == ("ab" * 32,)


# --- inspecting without raising ---------------------------------------------------------


def test_inspect_signatures_shows_present_and_missing_approvals() -> None:
    a, b, c, stranger = SoftSigner(), SoftSigner(), SoftSigner(), SoftSigner()
    envelope = sign_envelope(TYPE, b"payload", [a, stranger])
    result = inspect_signatures(envelope, trusted_of(a, b, c), threshold=2)
    assert result.valid == (a.key_id,)
    assert set(result.missing) == {b.key_id, c.key_id}
    assert result.unknown == (stranger.key_id,)
    assert not result.met
    summary = result.summary()
    assert summary.startswith("1 of 2 required signatures (missing 1; unsigned: ")
    assert stranger.key_id[:16] in summary


def test_inspect_signatures_never_counts_a_forgery() -> None:
    a, mallory = SoftSigner(), SoftSigner()
    envelope = Envelope(TYPE, b"payload", (Signature(a.key_id, mallory.sign(pae(TYPE, b"payload"))),))
    result = inspect_signatures(envelope, trusted_of(a))
    assert result.valid == ()
    assert result.invalid == (a.key_id,)
    assert result.missing == ()
    assert not result.met
    assert "invalid: " + a.key_id[:16] in result.summary()


# --- the trusted map ------------------------------------------------------------------------


def test_a_trusted_entry_under_the_wrong_key_id_is_refused() -> None:
    a, b = SoftSigner(), SoftSigner()
    envelope = sign_envelope(TYPE, b"payload", [a])
    with pytest.raises(InputError, match="is not the id of its public key"):
        verify_envelope(envelope, {a.key_id: b.public_key}, 1, what="statement")
    with pytest.raises(InputError, match="is not the id of its public key"):
        inspect_signatures(envelope, {a.key_id: b.public_key})


def test_a_trusted_key_on_an_unsupported_curve_is_refused() -> None:
    odd = SoftSigner(ec.SECP256K1())
    envelope = sign_envelope(TYPE, b"payload", [])
    with pytest.raises(InputError, match="unsupported curve"):
        verify_envelope(envelope, {odd.key_id: odd.public_key}, 1, what="statement")
