"""HPKE (RFC 9180) base mode: seal to an EC public key, open with a key that stays in a token.

One suite per curve, chosen from the recipient's key:

- P-256: DHKEM(P-256, HKDF-SHA256), HKDF-SHA256, AES-256-GCM (ids 0x0010, 0x0001, 0x0002);
- P-384: DHKEM(P-384, HKDF-SHA384), HKDF-SHA384, AES-256-GCM (ids 0x0011, 0x0002, 0x0002).

Sealing is cryptography's own HPKE (``Suite.encrypt``) when there is no
``aad``. That single-shot API takes no aad, so a message sealed with aad goes
through the same RFC 9180 steps written out here, on cryptography's HKDF and
AES-GCM. Opening is always done here: the recipient's private key never
leaves its token, so only the Diffie-Hellman step runs on the token (a
:class:`Decapsulator`, such as :class:`vault.token.TokenKey`) and the key
schedule and AES-GCM run in software on its result.

A sealed message is ``enc || ciphertext``: the sender's ephemeral public key
as an uncompressed point (65 bytes on P-256, 97 on P-384), then the AES-GCM
ciphertext with its 16-byte tag. The recipient's curve fixes where ``enc``
ends, so no length prefix is needed.

Example:
    >>> from cryptography.hazmat.primitives.asymmetric import ec
    >>> recipient = SoftwareDecapsulator(ec.generate_private_key(ec.SECP256R1()))
    >>> sealed = seal(recipient.public_key, b"wifi key", info=b"vault example v1")
    >>> len(sealed.enc), len(sealed.ciphertext)
    (65, 24)
    >>> open_sealed(sealed.to_bytes(), recipient, info=b"vault example v1")
    b'wifi key'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from vault.crypto import CURVES, Curve, key_id
from vault.errors import DecryptionError, FormatError, InputError, TokenOperationError

__all__ = [
    "MAX_CIPHERTEXT",
    "TAG_SIZE",
    "Decapsulator",
    "Sealed",
    "SoftwareDecapsulator",
    "open_sealed",
    "seal",
]

MAX_CIPHERTEXT = 64 * 1024 * 1024  # bytes of AES-GCM output (tag included) vault seals or opens
TAG_SIZE = 16  # AES-GCM tag

_VERSION_LABEL = b"HPKE-v1"
_MODE_BASE = 0x00
_AEAD_AES_256_GCM = 0x0002
_KEY_SIZE = 32  # Nk of AES-256-GCM
_NONCE_SIZE = 12  # Nn of AES-256-GCM


@dataclass(frozen=True)
class _Suite:
    """One HPKE suite: a DHKEM on ``curve`` with HKDF over the curve's hash, and AES-256-GCM."""

    curve: Curve
    kem_id: int
    kdf_id: int
    library: hpke.Suite  # the same suite in cryptography, for sealing without aad

    @property
    def secret_size(self) -> int:
        """Nsecret of the DHKEM: the length of its hash."""
        return self.curve.hash().digest_size

    @property
    def kem_suite_id(self) -> bytes:
        return b"KEM" + self.kem_id.to_bytes(2, "big")

    @property
    def hpke_suite_id(self) -> bytes:
        ids = (self.kem_id, self.kdf_id, _AEAD_AES_256_GCM)
        return b"HPKE" + b"".join(i.to_bytes(2, "big") for i in ids)

    def labeled_extract(self, suite_id: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
        return HKDF.extract(self.curve.hash(), salt, _VERSION_LABEL + suite_id + label + ikm)

    def labeled_expand(self, suite_id: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
        labeled_info = length.to_bytes(2, "big") + _VERSION_LABEL + suite_id + label + info
        return HKDFExpand(self.curve.hash(), length, labeled_info).derive(prk)


# For both curves the DHKEM's hash, the KDF's hash and vault's Curve.hash are the same.
_SUITES = (
    _Suite(CURVES["P-256"], 0x0010, 0x0001, hpke.Suite(hpke.KEM.P256, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)),
    _Suite(CURVES["P-384"], 0x0011, 0x0002, hpke.Suite(hpke.KEM.P384, hpke.KDF.HKDF_SHA384, hpke.AEAD.AES_256_GCM)),
)


def _suite_for(public_key: object) -> _Suite:
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise InputError(f"HPKE needs an EC public key, not {type(public_key).__name__}")
    for suite in _SUITES:
        if isinstance(public_key.curve, suite.curve.curve):
            return suite
    raise InputError(f"vault's HPKE supports P-256 and P-384 keys; this key is on {public_key.curve.name}")


def _point(public_key: ec.EllipticCurvePublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


@runtime_checkable
class Decapsulator(Protocol):
    """An EC private key that does ECDH without revealing itself: the recipient side of HPKE.

    The PKCS#11 implementation is :class:`vault.token.TokenKey` (a key made
    with ``usage="derive"``); :class:`SoftwareDecapsulator` wraps a key in memory.
    """

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The public half."""
        ...

    def ecdh(self, peer: ec.EllipticCurvePublicKey) -> bytes:
        """The ECDH shared secret with ``peer``: the x coordinate, one curve coordinate long."""
        ...


class SoftwareDecapsulator:
    """A :class:`Decapsulator` over an EC private key held in memory.

    For tests, and for checks that already hold a software key. Keys that
    protect anything live in a token, where :class:`vault.token.TokenKey` does
    the same job.

    Raises:
        InputError: the key is not on P-256 or P-384.
    """

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        self._public_key = private_key.public_key()
        self._curve = _suite_for(self._public_key).curve
        self._private_key = private_key

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The public half."""
        return self._public_key

    def ecdh(self, peer: ec.EllipticCurvePublicKey) -> bytes:
        """The ECDH shared secret (x coordinate) with ``peer``."""
        if not isinstance(peer.curve, self._curve.curve):
            raise InputError(f"peer key is on {peer.curve.name}, this key is {self._curve.name}")
        return self._private_key.exchange(ec.ECDH(), peer)

    def __repr__(self) -> str:
        return f"SoftwareDecapsulator(key_id={key_id(self._public_key)[:16]}...)"


@dataclass(frozen=True)
class Sealed:
    """One HPKE-sealed message: the sender's ephemeral public key and the AES-GCM output."""

    enc: bytes  # the ephemeral public key, an uncompressed point
    ciphertext: bytes  # AES-256-GCM ciphertext followed by its 16-byte tag

    def to_bytes(self) -> bytes:
        """``enc || ciphertext``, as cryptography's ``Suite.encrypt`` returns it."""
        return self.enc + self.ciphertext

    @classmethod
    def from_bytes(cls, data: bytes, curve: Curve) -> Sealed:
        """Split ``enc || ciphertext`` for a recipient key on ``curve``.

        Raises:
            FormatError: too short to hold a point and a tag, or larger than
                :data:`MAX_CIPHERTEXT` allows.
        """
        n = curve.point_size
        if len(data) > n + MAX_CIPHERTEXT:
            raise FormatError(f"sealed message is {len(data)} bytes; vault opens at most {n + MAX_CIPHERTEXT}")
        if len(data) < n + TAG_SIZE:
            raise FormatError(f"sealed message is {len(data)} bytes; a {curve.name} one has at least {n + TAG_SIZE}")
        return cls(bytes(data[:n]), bytes(data[n:]))


def _check_shape(sealed: Sealed, curve: Curve) -> None:
    n = curve.point_size
    if len(sealed.enc) != n or sealed.enc[:1] != b"\x04":
        raise FormatError(f"sealed message's enc is not an uncompressed {curve.name} point ({n} bytes, 0x04 first)")
    if len(sealed.ciphertext) > MAX_CIPHERTEXT:
        raise FormatError(f"sealed ciphertext is {len(sealed.ciphertext)} bytes; vault opens at most {MAX_CIPHERTEXT}")
    if len(sealed.ciphertext) < TAG_SIZE:
        raise FormatError(f"sealed ciphertext is {len(sealed.ciphertext)} bytes, shorter than its {TAG_SIZE}-byte tag")


def _extract_and_expand(suite: _Suite, dh: bytes, kem_context: bytes) -> bytes:
    """DHKEM's ExtractAndExpand: the KEM shared secret from the DH output and enc || pkRm."""
    sid = suite.kem_suite_id
    eae_prk = suite.labeled_extract(sid, b"", b"eae_prk", dh)
    return suite.labeled_expand(sid, eae_prk, b"shared_secret", kem_context, suite.secret_size)


def _encap(suite: _Suite, recipient: ec.EllipticCurvePublicKey) -> tuple[bytes, bytes]:
    """DHKEM Encap with a fresh ephemeral key: (shared_secret, enc)."""
    ephemeral = ec.generate_private_key(suite.curve.curve())
    enc = _point(ephemeral.public_key())
    dh = ephemeral.exchange(ec.ECDH(), recipient)
    return _extract_and_expand(suite, dh, enc + _point(recipient)), enc


def _decap(suite: _Suite, enc: bytes, recipient: Decapsulator) -> bytes:
    """DHKEM Decap, with the Diffie-Hellman step done by ``recipient``: the shared_secret."""
    try:
        ephemeral = ec.EllipticCurvePublicKey.from_encoded_point(suite.curve.curve(), enc)
    except ValueError as e:
        raise FormatError(f"sealed message's enc is not a point on {suite.curve.name}") from e
    dh = recipient.ecdh(ephemeral)
    if len(dh) != suite.curve.size:
        raise TokenOperationError(
            f"the recipient key gave a {len(dh)}-byte ECDH secret; {suite.curve.name} needs {suite.curve.size}"
        )
    return _extract_and_expand(suite, dh, enc + _point(recipient.public_key))


def _key_schedule(suite: _Suite, shared_secret: bytes, info: bytes) -> tuple[bytes, bytes]:
    """The base-mode KeySchedule (no PSK): the AEAD (key, nonce) of the one message sealed."""
    sid = suite.hpke_suite_id
    psk_id_hash = suite.labeled_extract(sid, b"", b"psk_id_hash", b"")
    info_hash = suite.labeled_extract(sid, b"", b"info_hash", info)
    context = bytes([_MODE_BASE]) + psk_id_hash + info_hash
    secret = suite.labeled_extract(sid, shared_secret, b"secret", b"")
    key = suite.labeled_expand(sid, secret, b"key", context, _KEY_SIZE)
    base_nonce = suite.labeled_expand(sid, secret, b"base_nonce", context, _NONCE_SIZE)
    # A single-shot message is sequence number 0, whose nonce is base_nonce XOR 0: base_nonce itself.
    return key, base_nonce


def seal(recipient: ec.EllipticCurvePublicKey, plaintext: bytes, *, info: bytes, aad: bytes = b"") -> Sealed:
    """Encrypt ``plaintext`` to ``recipient`` (HPKE base mode, single shot).

    Args:
        recipient: a P-256 or P-384 public key; its curve picks the suite.
        plaintext: at most ``MAX_CIPHERTEXT - TAG_SIZE`` bytes.
        info: the application context the message is bound to; the same
            bytes must be given to open it.
        aad: extra data authenticated with the message but not sealed in it.

    Raises:
        InputError: the key is not P-256 or P-384, or the plaintext is too large.
    """
    suite = _suite_for(recipient)
    if len(plaintext) > MAX_CIPHERTEXT - TAG_SIZE:
        raise InputError(f"plaintext is {len(plaintext)} bytes; vault seals at most {MAX_CIPHERTEXT - TAG_SIZE}")
    if not aad:
        return Sealed.from_bytes(suite.library.encrypt(plaintext, recipient, info=info), suite.curve)
    shared_secret, enc = _encap(suite, recipient)
    key, nonce = _key_schedule(suite, shared_secret, info)
    return Sealed(enc, AESGCM(key).encrypt(nonce, plaintext, aad))


def open_sealed(sealed: Sealed | bytes, recipient: Decapsulator, *, info: bytes, aad: bytes = b"") -> bytes:
    """Decrypt a message :func:`seal` (or any RFC 9180 sender of the same suite) made.

    Args:
        sealed: a :class:`Sealed`, or its ``enc || ciphertext`` bytes.
        recipient: the recipient key; only its ECDH runs, in its token.
        info: the application context given when sealing.
        aad: the additional data given when sealing.

    Raises:
        FormatError: the message is too short or too large, or its ``enc`` is
            not a point on the recipient's curve.
        InputError: the recipient key is not P-256 or P-384.
        DecryptionError: the message does not open: a different recipient,
            different ``info`` or ``aad``, or altered in transit.
        TokenError: the token failed the ECDH.
    """
    suite = _suite_for(recipient.public_key)
    if not isinstance(sealed, Sealed):
        sealed = Sealed.from_bytes(sealed, suite.curve)
    _check_shape(sealed, suite.curve)
    shared_secret = _decap(suite, sealed.enc, recipient)
    key, nonce = _key_schedule(suite, shared_secret, info)
    try:
        return AESGCM(key).decrypt(nonce, sealed.ciphertext, aad)
    except InvalidTag as e:
        raise DecryptionError(
            f"sealed message does not open with key {key_id(recipient.public_key)[:16]}: "
            "wrong key, wrong info or aad, or altered"
        ) from e
