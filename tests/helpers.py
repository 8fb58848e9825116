"""Small test helpers shared by several test files."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import ec

from vault.crypto import Signer


class CountingSigner:
    """Wraps a Signer and counts how often it is asked to sign."""

    def __init__(self, inner: Signer) -> None:
        self.inner = inner
        self.calls = 0

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.inner.public_key

    @property
    def key_id(self) -> str:
        return self.inner.key_id

    def sign(self, data: bytes) -> bytes:
        self.calls += 1
        return self.inner.sign(data)
