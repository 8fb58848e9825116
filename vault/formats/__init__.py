"""Signed documents: DSSE v1 envelopes carrying in-toto Statement v1 payloads.

This is the bottom layer: bytes in, objects out, no file or network I/O, every
input size capped before it is parsed. It needs only the standard library,
``cryptography`` and :mod:`vault.crypto`, so the station library can use it.

Sign bytes, verify the same bytes, and only then parse them: a statement is
serialized once, its envelope's signatures cover the PAE of those bytes, and
:func:`open_statement` checks the threshold before it reads the statement.

Example:
    >>> from cryptography.hazmat.primitives import hashes
    >>> from cryptography.hazmat.primitives.asymmetric import ec
    >>> from vault.crypto import key_id
    >>> class SoftSigner:
    ...     def __init__(self):
    ...         self._key = ec.generate_private_key(ec.SECP256R1())
    ...         self.public_key = self._key.public_key()
    ...         self.key_id = key_id(self.public_key)
    ...     def sign(self, data):
    ...         return self._key.sign(data, ec.ECDSA(hashes.SHA256()))
    >>> approver = SoftSigner()
    >>> statement = Statement(
    ...     subjects=(Subject("fw.bin", {"sha256": "00" * 32}),),
    ...     predicate_type="https://vault.example/release/v1",
    ...     predicate={"version": "1.0.0"},
    ... )
    >>> wire = sign_statement(statement, [approver]).to_json()
    >>> opened, result = open_statement(
    ...     Envelope.from_json(wire), {approver.key_id: approver.public_key}, 1, what="release statement"
    ... )
    >>> opened == statement, result.valid == (approver.key_id,)
    (True, True)
"""

from vault.formats._dsse import (
    MAX_ENVELOPE_SIZE,
    MAX_SIGNATURE_SIZE,
    MAX_SIGNATURES,
    Envelope,
    Signature,
    VerificationResult,
    add_signature,
    inspect_signatures,
    pae,
    sign_envelope,
    verify_envelope,
)
from vault.formats._json import canonical_json, parse_json
from vault.formats._statement import (
    DIGEST_LENGTHS,
    MAX_STATEMENT_SIZE,
    PAYLOAD_TYPE_INTOTO,
    STATEMENT_TYPE,
    Statement,
    Subject,
    open_statement,
    sign_statement,
)

__all__ = [
    "canonical_json",
    "parse_json",
    "DIGEST_LENGTHS",
    "MAX_ENVELOPE_SIZE",
    "MAX_SIGNATURES",
    "MAX_SIGNATURE_SIZE",
    "MAX_STATEMENT_SIZE",
    "PAYLOAD_TYPE_INTOTO",
    "STATEMENT_TYPE",
    "Envelope",
    "Signature",
    "Statement",
    "Subject",
    "VerificationResult",
    "add_signature",
    "inspect_signatures",
    "open_statement",
    "pae",
    "sign_envelope",
    "sign_statement",
    "verify_envelope",
]
