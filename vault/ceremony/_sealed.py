"""Shares sealed to a custodian's own token, instead of printed on paper.

A sealed share is the SLIP-39 mnemonic encrypted with HPKE (RFC 9180,
DHKEM(P-256), HKDF-SHA256, AES-256-GCM) to a key-agreement key inside the
custodian's token. Opening it needs that token and its PIN: the ECDH runs in
the token, so a copied file alone is useless, and the custodian never has to
type or store the words.

The file (``shares/<id>.sealed.json``) is canonical JSON::

    {"format": "vault-sealed-share/v1", "custodian": "officer-1", "share_set": 1234,
     "recipient_key_id": "<hex SHA-256 of the token key's SPKI>", "sealed": "<base64 enc||ct>"}

The HPKE info binds the custodian id and the share set, so a sealed share
cannot be passed off as another custodian's or another set's.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec

from vault.crypto import key_id
from vault.errors import FormatError
from vault.formats import canonical_json, parse_json
from vault.formats._json import check_fields
from vault.hpke import Decapsulator, open_sealed, seal
from vault.token import TokenSession

FORMAT = "vault-sealed-share/v1"
MAX_SEALED_SHARE = 16 * 1024
_FIELDS = frozenset({"format", "custodian", "share_set", "recipient_key_id", "sealed"})


def _info(custodian: str, share_set: int) -> bytes:
    return f"vault sealed share v1\0{custodian}\0{share_set}".encode()


@dataclass(frozen=True)
class SealedShare:
    """A parsed sealed share file (still sealed)."""

    custodian: str
    share_set: int
    recipient_key_id: str
    sealed: bytes

    def open(self, recipient: Decapsulator) -> str:
        """The mnemonic, opened with the custodian's key (a token key does the ECDH).

        Raises:
            DecryptionError: wrong key, or the file was altered.
        """
        return open_sealed(self.sealed, recipient, info=_info(self.custodian, self.share_set)).decode("utf-8")

    def open_in(self, token: TokenSession) -> str:
        """The mnemonic, opened with the key in ``token`` it was sealed to."""
        return self.open(token.key_by_key_id(self.recipient_key_id))


def seal_share(mnemonic: str, custodian: str, share_set: int, recipient: ec.EllipticCurvePublicKey) -> bytes:
    """The sealed share file's bytes for ``custodian``, sealed to ``recipient``."""
    sealed = seal(recipient, mnemonic.encode("utf-8"), info=_info(custodian, share_set))
    return canonical_json(
        {
            "format": FORMAT,
            "custodian": custodian,
            "share_set": share_set,
            "recipient_key_id": key_id(recipient),
            "sealed": base64.b64encode(sealed.to_bytes()).decode(),
        }
    )


def is_sealed_share(data: bytes) -> bool:
    """Whether ``data`` looks like a sealed share file rather than a paper share."""
    return data.lstrip().startswith(b"{") and FORMAT.encode() in data[:4096]


def read_sealed_share(data: bytes) -> SealedShare:
    """Parse a sealed share file.

    Raises:
        FormatError: not a sealed share file.
    """
    doc = check_fields(parse_json(data, max_size=MAX_SEALED_SHARE, what="sealed share"), _FIELDS, what="sealed share")
    if doc["format"] != FORMAT:
        raise FormatError(f"sealed share: format {doc['format']!r} is not {FORMAT}")
    if not isinstance(doc["custodian"], str) or not isinstance(doc["share_set"], int):
        raise FormatError("sealed share: custodian must be text and share_set a number")
    if not isinstance(doc["recipient_key_id"], str) or len(doc["recipient_key_id"]) != 64:
        raise FormatError("sealed share: recipient_key_id must be a 64-digit hex key id")
    try:
        bytes.fromhex(doc["recipient_key_id"])
        sealed = base64.b64decode(str(doc["sealed"]), validate=True)
    except ValueError as e:
        raise FormatError("sealed share: recipient_key_id or sealed is not valid hex/base64") from e
    return SealedShare(doc["custodian"], doc["share_set"], doc["recipient_key_id"], sealed)
