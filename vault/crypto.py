"""Key ids, curves and the Signer protocol: the bottom layer every part shares.

A key id is the lower-case hex SHA-256 of the key's SubjectPublicKeyInfo
DER, the same value vault stores as a token key's CKA_ID, so a key can be
found from its public key and its id never changes.

Example:
    >>> from cryptography.hazmat.primitives.asymmetric import ec
    >>> key = ec.generate_private_key(ec.SECP256R1())
    >>> signature = key.sign(b"hello", ec.ECDSA(CURVES["P-256"].hash()))
    >>> verify_signature(key.public_key(), b"hello", signature)
    >>> len(key_id(key.public_key()))
    64
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from vault.errors import FormatError, InputError, SignatureError

__all__ = [
    "CURVES",
    "Curve",
    "Signer",
    "curve_by_name",
    "certificate_key",
    "key_id",
    "load_spki",
    "spki_der",
    "verify_signature",
]


@dataclass(frozen=True)
class Curve:
    """A named curve vault supports, with the hash it signs with."""

    name: str  # vault's name, as written in scripts and formats: "P-256"
    oid_name: str  # asn1crypto/OpenSSL name: "secp256r1"
    curve: type[ec.EllipticCurve]
    hash: type[hashes.HashAlgorithm]
    size: int  # bytes per coordinate

    @property
    def point_size(self) -> int:
        """Length of an uncompressed point (0x04 || X || Y)."""
        return 1 + 2 * self.size


CURVES: dict[str, Curve] = {
    "P-256": Curve("P-256", "secp256r1", ec.SECP256R1, hashes.SHA256, 32),
    "P-384": Curve("P-384", "secp384r1", ec.SECP384R1, hashes.SHA384, 48),
}


def curve_by_name(name: str) -> Curve:
    """The :class:`Curve` called ``name`` (``P-256``, ``P-384``).

    Raises:
        InputError: vault does not support that curve.
    """
    try:
        return CURVES[name]
    except KeyError:
        raise InputError(f"unknown curve '{name}' (supported: {', '.join(CURVES)})") from None


def curve_of(public_key: ec.EllipticCurvePublicKey) -> Curve:
    """The :class:`Curve` of ``public_key``.

    Raises:
        InputError: the key is on a curve vault does not support.
    """
    for curve in CURVES.values():
        if isinstance(public_key.curve, curve.curve):
            return curve
    raise InputError(f"unsupported curve '{public_key.curve.name}'")


def spki_der(public_key: ec.EllipticCurvePublicKey) -> bytes:
    """The SubjectPublicKeyInfo DER of ``public_key``."""
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_spki(der: bytes, *, what: str) -> ec.EllipticCurvePublicKey:
    """The EC public key in a DER SubjectPublicKeyInfo; ``what`` names it in the error.

    Raises:
        FormatError: not a public key, not an EC one, or on a curve vault does not support.
    """
    try:
        public = serialization.load_der_public_key(der)
    except UnsupportedAlgorithm as e:
        raise FormatError(f"{what} names a key type or curve vault does not support") from e
    except (ValueError, TypeError) as e:
        raise FormatError(f"{what} is not a public key") from e
    return _supported(public, what)


def certificate_key(certificate: x509.Certificate, *, what: str) -> ec.EllipticCurvePublicKey:
    """The EC public key a certificate holds; ``what`` names the certificate in the error.

    Raises:
        FormatError: the key does not parse, is not an EC key, or is on a curve vault does not support.
    """
    try:
        public = certificate.public_key()
    except UnsupportedAlgorithm as e:
        raise FormatError(f"{what} holds a key type or curve vault does not support") from e
    except (ValueError, TypeError) as e:
        raise FormatError(f"{what} holds a public key that does not parse") from e
    return _supported(public, what)


def _supported(public: object, what: str) -> ec.EllipticCurvePublicKey:
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise FormatError(f"{what} is not an EC key")
    if not any(isinstance(public.curve, c.curve) for c in CURVES.values()):
        raise FormatError(f"{what} is on curve {public.curve.name}, which vault does not support ({', '.join(CURVES)})")
    return public


def key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """The key id: hex SHA-256 of the SubjectPublicKeyInfo DER."""
    return hashlib.sha256(spki_der(public_key)).hexdigest()


def verify_signature(public_key: ec.EllipticCurvePublicKey, data: bytes, signature: bytes) -> None:
    """Check a DER ECDSA ``signature`` over ``data`` with the curve's hash.

    Raises:
        SignatureError: the signature does not verify.
    """
    curve = curve_of(public_key)
    try:
        public_key.verify(signature, data, ec.ECDSA(curve.hash()))
    except InvalidSignature as e:
        raise SignatureError(f"signature does not verify under key {key_id(public_key)[:16]}") from e


@runtime_checkable
class Signer(Protocol):
    """Anything that signs bytes with an EC key it does not reveal.

    The PKCS#11 implementation is :class:`vault.token.TokenKey`; software
    keys can implement it in tests of formats that need no token.
    """

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The public half."""
        ...

    @property
    def key_id(self) -> str:
        """Hex SHA-256 of the public key's SubjectPublicKeyInfo DER."""
        ...

    def sign(self, data: bytes) -> bytes:
        """A DER ECDSA signature over ``data`` using the curve's hash."""
        ...
