"""Small test helpers shared by several test files."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11.util.ec import encode_named_curve_parameters

from vault.crypto import Signer, key_id
from vault.token import TokenSession
from vault.token._quirks import wrap_ec_point

# What a key pasted in from software looks like to the token (C_CreateObject, CKA_LOCAL false).
SOFTWARE_COPY = {Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True}


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


def import_software_key(
    token: TokenSession, label: str, attrs: Mapping[Attribute, object] = SOFTWARE_COPY, *, usage: str = "sign"
) -> ec.EllipticCurvePrivateKey:
    """Put a P-256 key made in software onto the token, as another tool would (C_CreateObject).

    Its CKA_ID is its key id, as vault would set it, so every vault lookup finds it.
    """
    session = token._session
    software = ec.generate_private_key(ec.SECP256R1())
    public = software.public_key()
    ident = bytes.fromhex(key_id(public))
    params = encode_named_curve_parameters("secp256r1")
    session.create_object(
        {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.KEY_TYPE: KeyType.EC, Attribute.TOKEN: True,
         Attribute.PRIVATE: True, Attribute.LABEL: label, Attribute.ID: ident, Attribute.EC_PARAMS: params,
         Attribute.SIGN: usage == "sign", Attribute.DERIVE: usage == "derive",
         Attribute.VALUE: software.private_numbers().private_value.to_bytes(32, "big"), **attrs}
    )  # fmt: skip
    point = public.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    session.create_object(
        {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.KEY_TYPE: KeyType.EC, Attribute.TOKEN: True,
         Attribute.LABEL: label, Attribute.ID: ident, Attribute.VERIFY: True, Attribute.EC_PARAMS: params,
         Attribute.EC_POINT: wrap_ec_point(point)}
    )  # fmt: skip
    return software


def write_small_release(folder: Path, image: bytes) -> Path:
    """A one-image release description (example-sensor 1.4.0, 10 units, 4 for station-1) and its image in
    ``folder``; the path of ``release.yaml``, as the whole-flow tests on other modules build it."""
    images = folder / "images"
    images.mkdir()
    (images / "app.bin").write_bytes(image)
    release = folder / "release.yaml"
    release.write_text(
        "product: example-sensor\nversion: 1.4.0\nsecurity_counter: 7\n"
        "not_before: 2026-01-01T00:00:00Z\nexpires: 2099-01-01T00:00:00Z\n"
        "production:\n  total: 10\n  allocation: {station-1: 4}\n"
        'images:\n  - name: app.bin\n    path: images/app.bin\n    load_address: "0x08000000"\n'
    )
    return release
