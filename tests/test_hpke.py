"""HPKE base mode: interop with cryptography's HPKE both ways, opening inside SoftHSM2, and every refusal.

No RFC 9180 known-answer vectors here: the RFC's appendix has none for
AES-256-GCM with P-256 or P-384, and the suite is checked instead against
cryptography's independent implementation, which is itself tested on the
official vectors.
"""

from __future__ import annotations

import doctest
import subprocess
import sys
from collections.abc import Callable

import pytest
from cryptography.hazmat.bindings._rust import openssl as _rust_openssl
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

import vault.hpke
from vault.crypto import CURVES
from vault.errors import DecryptionError, FormatError, InputError, VaultError
from vault.hpke import (
    MAX_CIPHERTEXT,
    TAG_SIZE,
    Decapsulator,
    Sealed,
    SoftwareDecapsulator,
    open_sealed,
    seal,
)
from vault.token import Pkcs11Uri, open_token

TokenUri = Callable[..., Pkcs11Uri]

INFO = b"vault test hpke v1"
AAD = b"device 00:11:22:33:44:55"
MESSAGE = b"factory wifi key: correct horse battery staple"

# curve name -> (cryptography curve, cryptography's suite for it)
CASES = {
    "P-256": (ec.SECP256R1, Suite(KEM.P256, KDF.HKDF_SHA256, AEAD.AES_256_GCM)),
    "P-384": (ec.SECP384R1, Suite(KEM.P384, KDF.HKDF_SHA384, AEAD.AES_256_GCM)),
}


def _software(curve: str = "P-256") -> tuple[ec.EllipticCurvePrivateKey, SoftwareDecapsulator]:
    private = ec.generate_private_key(CASES[curve][0]())
    return private, SoftwareDecapsulator(private)


def _point(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


# --- the module ---------------------------------------------------------------


def test_docstring_example_runs() -> None:
    result = doctest.testmod(vault.hpke)
    assert result.attempted > 0
    assert result.failed == 0


def test_hpke_stays_in_the_bottom_layer() -> None:
    code = (
        "import sys, vault.hpke\n"
        "heavy = sorted(m for m in ('pkcs11', 'vault.token', 'vault.formats', 'vault.ceremony', 'click', 'yaml')"
        " if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_software_decapsulator_is_a_decapsulator() -> None:
    _, recipient = _software()
    assert isinstance(recipient, Decapsulator)
    assert "key_id=" in repr(recipient)


# --- interop with cryptography's own HPKE -------------------------------------


@pytest.mark.parametrize("curve", sorted(CASES))
def test_cryptography_sealed_message_opens_with_vault(curve: str) -> None:
    private, recipient = _software(curve)
    suite = CASES[curve][1]
    sealed = suite.encrypt(MESSAGE, private.public_key(), info=INFO)
    assert open_sealed(sealed, recipient, info=INFO) == MESSAGE
    parsed = Sealed.from_bytes(sealed, CURVES[curve])
    assert open_sealed(parsed, recipient, info=INFO) == MESSAGE


@pytest.mark.parametrize("curve", sorted(CASES))
def test_vault_sealed_message_opens_with_cryptography(curve: str) -> None:
    private, _ = _software(curve)
    sealed = seal(private.public_key(), MESSAGE, info=INFO)
    assert len(sealed.enc) == CURVES[curve].point_size
    assert sealed.enc[0] == 0x04
    assert len(sealed.ciphertext) == len(MESSAGE) + TAG_SIZE
    assert CASES[curve][1].decrypt(sealed.to_bytes(), private, info=INFO) == MESSAGE


@pytest.mark.parametrize("curve", sorted(CASES))
def test_empty_info_and_plaintext_interoperate(curve: str) -> None:
    private, recipient = _software(curve)
    suite = CASES[curve][1]
    assert open_sealed(suite.encrypt(b"", private.public_key(), info=b""), recipient, info=b"") == b""
    assert suite.decrypt(seal(private.public_key(), b"", info=b"").to_bytes(), private, info=b"") == b""


# cryptography's single-shot API takes no aad; it has private aad variants it
# uses for its own RFC 9180 vector tests. They check vault's own key schedule
# (the aad path) against an independent one. The pinned cryptography (>=50)
# has them; if a release drops them this test fails, and must be rewritten.
_encrypt_with_aad = getattr(_rust_openssl.hpke, "_encrypt_with_aad", None)
_decrypt_with_aad = getattr(_rust_openssl.hpke, "_decrypt_with_aad", None)


@pytest.mark.parametrize("curve", sorted(CASES))
def test_sealing_with_aad_interoperates_with_cryptography(curve: str) -> None:
    assert _encrypt_with_aad is not None and _decrypt_with_aad is not None, "cryptography dropped its aad HPKE variants"
    private, recipient = _software(curve)
    suite = CASES[curve][1]
    theirs = _encrypt_with_aad(suite, MESSAGE, private.public_key(), info=INFO, aad=AAD)
    assert open_sealed(theirs, recipient, info=INFO, aad=AAD) == MESSAGE
    ours = seal(private.public_key(), MESSAGE, info=INFO, aad=AAD)
    assert _decrypt_with_aad(suite, ours.to_bytes(), private, info=INFO, aad=AAD) == MESSAGE


@pytest.mark.parametrize("curve", sorted(CASES))
def test_round_trip_with_aad(curve: str) -> None:
    private, recipient = _software(curve)
    sealed = seal(private.public_key(), MESSAGE, info=INFO, aad=AAD)
    assert open_sealed(sealed, recipient, info=INFO, aad=AAD) == MESSAGE
    assert open_sealed(sealed.to_bytes(), recipient, info=INFO, aad=AAD) == MESSAGE


def test_each_seal_uses_a_fresh_ephemeral_key() -> None:
    private, _ = _software()
    first = seal(private.public_key(), MESSAGE, info=INFO, aad=AAD)
    second = seal(private.public_key(), MESSAGE, info=INFO, aad=AAD)
    assert first.enc != second.enc
    assert first.ciphertext != second.ciphertext


# --- opening inside a real token ----------------------------------------------


@pytest.mark.parametrize("curve", sorted(CASES))
def test_opens_with_a_derive_key_inside_softhsm(token_uri: TokenUri, label: str, curve: str) -> None:
    with open_token(token_uri("vault-station-1"), rw=True) as token:
        key = token.generate_ec_key(label, curve=curve, usage="derive")
        assert isinstance(key, Decapsulator)
        by_vault = seal(key.public_key, MESSAGE, info=INFO)
        with_aad = seal(key.public_key, MESSAGE, info=INFO, aad=AAD)
        by_cryptography = CASES[curve][1].encrypt(MESSAGE, key.public_key, info=INFO)
        assert open_sealed(by_vault, key, info=INFO) == MESSAGE
        assert open_sealed(with_aad.to_bytes(), key, info=INFO, aad=AAD) == MESSAGE
        assert open_sealed(by_cryptography, key, info=INFO) == MESSAGE
        with pytest.raises(DecryptionError):
            open_sealed(by_vault, key, info=b"another context")


def test_a_token_key_does_not_open_a_message_for_another_key(token_uri: TokenUri, label: str) -> None:
    with open_token(token_uri("vault-station-1"), rw=True) as token:
        intended = token.generate_ec_key(label, usage="derive")
        other = token.generate_ec_key(label + "-2", usage="derive")
        sealed = seal(intended.public_key, MESSAGE, info=INFO)
        with pytest.raises(DecryptionError, match="wrong key"):
            open_sealed(sealed, other, info=INFO)
        assert open_sealed(sealed, intended, info=INFO) == MESSAGE


# --- refusals -----------------------------------------------------------------


@pytest.fixture
def sealed_p256() -> tuple[Sealed, SoftwareDecapsulator]:
    private, recipient = _software()
    return seal(private.public_key(), MESSAGE, info=INFO, aad=AAD), recipient


def _refused(error: type[VaultError], sealed: Sealed | bytes, recipient: Decapsulator, **context: bytes) -> str:
    context = {"info": INFO, "aad": AAD} | context
    with pytest.raises(error) as caught:
        open_sealed(sealed, recipient, info=context["info"], aad=context["aad"])
    message = str(caught.value)
    assert message and "\n" not in message
    return message


def test_wrong_info_is_refused(sealed_p256: tuple[Sealed, SoftwareDecapsulator]) -> None:
    sealed, recipient = sealed_p256
    message = _refused(DecryptionError, sealed, recipient, info=b"vault test hpke v2")
    assert "wrong info or aad" in message


@pytest.mark.parametrize("aad", [b"", b"device 00:11:22:33:44:56"])
def test_wrong_or_missing_aad_is_refused(sealed_p256: tuple[Sealed, SoftwareDecapsulator], aad: bytes) -> None:
    sealed, recipient = sealed_p256
    _refused(DecryptionError, sealed, recipient, aad=aad)


def test_aad_given_for_a_message_sealed_without_is_refused() -> None:
    private, recipient = _software()
    sealed = seal(private.public_key(), MESSAGE, info=INFO)
    _refused(DecryptionError, sealed, recipient, aad=b"unexpected")


def test_wrong_recipient_is_refused(sealed_p256: tuple[Sealed, SoftwareDecapsulator]) -> None:
    sealed, _ = sealed_p256
    _, stranger = _software()
    message = _refused(DecryptionError, sealed, stranger)
    assert "wrong key" in message


def test_recipient_on_another_curve_is_refused(sealed_p256: tuple[Sealed, SoftwareDecapsulator]) -> None:
    sealed, _ = sealed_p256
    _, p384 = _software("P-384")
    _refused(FormatError, sealed, p384)
    _refused(FormatError, sealed.to_bytes(), p384)


@pytest.mark.parametrize("where", ["first", "middle", "tag"])
def test_altered_ciphertext_is_refused(sealed_p256: tuple[Sealed, SoftwareDecapsulator], where: str) -> None:
    sealed, recipient = sealed_p256
    index = {"first": 0, "middle": len(sealed.ciphertext) // 2, "tag": len(sealed.ciphertext) - 1}[where]
    _refused(DecryptionError, Sealed(sealed.enc, _flip(sealed.ciphertext, index)), recipient)


def test_altered_enc_is_refused(sealed_p256: tuple[Sealed, SoftwareDecapsulator]) -> None:
    sealed, recipient = sealed_p256
    message = _refused(FormatError, Sealed(_flip(sealed.enc, 10), sealed.ciphertext), recipient)
    assert "not a point on P-256" in message


def test_enc_replaced_by_another_valid_point_is_refused(sealed_p256: tuple[Sealed, SoftwareDecapsulator]) -> None:
    sealed, recipient = sealed_p256
    other = _point(ec.generate_private_key(ec.SECP256R1()).public_key())
    _refused(DecryptionError, Sealed(other, sealed.ciphertext), recipient)


@pytest.mark.parametrize(
    "enc",
    [
        pytest.param(b"\x04" + b"\x00" * 64, id="zero-coordinates"),
        pytest.param(b"\x05" + b"\x11" * 64, id="bad-prefix"),
        pytest.param(b"", id="empty"),
    ],
)
def test_enc_that_is_not_a_point_is_refused(sealed_p256: tuple[Sealed, SoftwareDecapsulator], enc: bytes) -> None:
    sealed, recipient = sealed_p256
    _refused(FormatError, Sealed(enc, sealed.ciphertext), recipient)


def test_compressed_enc_is_refused(sealed_p256: tuple[Sealed, SoftwareDecapsulator]) -> None:
    sealed, recipient = sealed_p256
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), sealed.enc)
    compressed = public.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    _refused(FormatError, Sealed(compressed, sealed.ciphertext), recipient)


def test_truncated_ciphertext_is_refused(sealed_p256: tuple[Sealed, SoftwareDecapsulator]) -> None:
    sealed, recipient = sealed_p256
    _refused(DecryptionError, sealed.to_bytes()[:-1], recipient)
    _refused(DecryptionError, Sealed(sealed.enc, sealed.ciphertext[:TAG_SIZE]), recipient)


def test_ciphertext_shorter_than_the_tag_is_refused(sealed_p256: tuple[Sealed, SoftwareDecapsulator]) -> None:
    sealed, recipient = sealed_p256
    message = _refused(FormatError, Sealed(sealed.enc, sealed.ciphertext[: TAG_SIZE - 1]), recipient)
    assert "shorter than its 16-byte tag" in message
    _refused(FormatError, sealed.to_bytes()[: 65 + TAG_SIZE - 1], recipient)
    _refused(FormatError, sealed.enc[:40], recipient)


def test_oversized_ciphertext_is_refused_before_opening(sealed_p256: tuple[Sealed, SoftwareDecapsulator]) -> None:
    sealed, recipient = sealed_p256
    huge = bytes(MAX_CIPHERTEXT + 1)
    message = _refused(FormatError, Sealed(sealed.enc, huge), recipient)
    assert "at most" in message
    _refused(FormatError, sealed.enc + huge, recipient)


def test_every_single_byte_change_is_refused_with_a_vault_error() -> None:
    private, recipient = _software()
    data = seal(private.public_key(), b"short", info=INFO).to_bytes()
    for index in range(len(data)):
        with pytest.raises((DecryptionError, FormatError)):
            open_sealed(_flip(data, index), recipient, info=INFO)


def test_sealing_refuses_unsupported_curves_and_oversized_plaintext() -> None:
    with pytest.raises(InputError, match="P-256 and P-384"):
        seal(ec.generate_private_key(ec.SECP521R1()).public_key(), MESSAGE, info=INFO)
    with pytest.raises(InputError, match="P-256 and P-384"):
        seal(ec.generate_private_key(ec.SECP256K1()).public_key(), MESSAGE, info=INFO)
    with pytest.raises(InputError, match="P-256 and P-384"):
        SoftwareDecapsulator(ec.generate_private_key(ec.SECP521R1()))
    private, _ = _software()
    with pytest.raises(InputError, match="vault seals at most"):
        seal(private.public_key(), bytes(MAX_CIPHERTEXT - TAG_SIZE + 1), info=INFO)


def test_sealing_refuses_a_key_that_is_not_ec() -> None:
    from cryptography.hazmat.primitives.asymmetric import x25519

    with pytest.raises(InputError, match="EC public key"):
        seal(x25519.X25519PrivateKey.generate().public_key(), MESSAGE, info=INFO)  # type: ignore[arg-type]


def test_software_decapsulator_refuses_a_peer_on_another_curve() -> None:
    _, recipient = _software()
    with pytest.raises(InputError, match="peer key is on secp384r1"):
        recipient.ecdh(ec.generate_private_key(ec.SECP384R1()).public_key())
