"""A software Signer for format tests that need no token (the token tests use SoftHSM2)."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import ec

from vault.crypto import curve_of, key_id


class SoftSigner:
    """A :class:`vault.crypto.Signer` over a software key, for tests of formats only."""

    def __init__(self, curve: ec.EllipticCurve | None = None) -> None:
        self._key = ec.generate_private_key(curve or ec.SECP256R1())

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._key.public_key()

    @property
    def key_id(self) -> str:
        return key_id(self.public_key)

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data, ec.ECDSA(curve_of(self.public_key).hash()))


def trusted_of(*signers: SoftSigner) -> dict[str, ec.EllipticCurvePublicKey]:
    """The trusted-key map for ``signers``."""
    return {s.key_id: s.public_key for s in signers}
