"""Custodian shares against a signed transcript: read a share file, prove a share belongs."""

from __future__ import annotations

from collections.abc import Mapping

from cryptography import x509

from vault.ceremony._sealed import MAX_SEALED_SHARE, is_sealed_share, read_sealed_share
from vault.ceremony._shares import ShareCheck, ShareSetRecord, check_share
from vault.ceremony._transcript import Transcript
from vault.ceremony._verify import verify_transcript
from vault.errors import InputError, KeyNotFoundError
from vault.formats import Envelope
from vault.token import Pkcs11Uri, open_token

SHARE_FILE_MARK = "vault custodian share"
MAX_SHARE_FILE = MAX_SEALED_SHARE
"""Largest share file read: a sealed share's cap (a paper share of 33 words is far smaller)."""


def share_text(file_text: str) -> str:
    """The mnemonic from a share file: the text after its heading lines (or the whole text)."""
    lines = file_text.strip().splitlines()
    if lines and SHARE_FILE_MARK in lines[0]:
        lines = lines[2:]
    return " ".join(lines)


def read_share(data: bytes, tokens: Mapping[str, Pkcs11Uri]) -> str:
    """The mnemonic in a share file: paper text as is, a sealed share opened in its custodian's token.

    Args:
        data: the file's bytes.
        tokens: custodian id to the URI of their token (with PIN source), for sealed shares.

    Raises:
        InputError: a sealed share whose custodian has no token in ``tokens``.
        DecryptionError: the token's key does not open it (wrong token, altered file).
    """
    if not is_sealed_share(data):
        return share_text(data.decode("utf-8", errors="replace"))
    sealed = read_sealed_share(data)
    uri = tokens.get(sealed.custodian)
    if uri is None:
        raise InputError(f"the share is sealed to {sealed.custodian}'s token, which the credentials do not name")
    with open_token(uri) as token:
        try:
            return sealed.open_in(token)
        except KeyNotFoundError as e:
            raise InputError(
                f"this share is sealed to {sealed.custodian}'s token (key {sealed.recipient_key_id[:16]}), "
                f"and token '{token.label}' does not hold that key"
            ) from e


def check_share_against_transcript(
    transcript: bytes, mnemonic: str, *, root_certificate: x509.Certificate | None = None
) -> ShareCheck:
    """Verify the transcript, then check ``mnemonic`` against the share set it records.

    Raises:
        VaultError: the transcript does not verify, or the share is not one of its set.
    """
    verify_transcript(transcript, root_certificate=root_certificate)
    split = Transcript.from_bytes(Envelope.from_json(transcript).payload).find("split-root-pin")
    record = ShareSetRecord.from_dict(split.details.get("share_set", {}))
    return check_share(mnemonic, record)
