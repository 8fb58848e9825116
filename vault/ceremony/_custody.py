"""Custodian shares against a signed transcript: read a share file, prove a share belongs."""

from __future__ import annotations

from cryptography import x509

from vault.ceremony._shares import ShareCheck, ShareSetRecord, check_share
from vault.ceremony._transcript import Transcript
from vault.ceremony._verify import verify_transcript
from vault.formats import Envelope

SHARE_FILE_MARK = "vault custodian share"


def share_text(file_text: str) -> str:
    """The mnemonic from a share file: the text after its heading lines (or the whole text)."""
    lines = file_text.strip().splitlines()
    if lines and SHARE_FILE_MARK in lines[0]:
        lines = lines[2:]
    return " ".join(lines)


def check_share_against_transcript(
    transcript: bytes, mnemonic: str, *, root_certificate: x509.Certificate | None = None
) -> ShareCheck:
    """Verify the transcript, then check ``mnemonic`` against the share set it records.

    Raises:
        VaultError: the transcript does not verify, or the share is not one of its set.
    """
    verify_transcript(transcript, root_certificate=root_certificate)
    record = ShareSetRecord.from_dict(
        Transcript.from_bytes(Envelope.from_json(transcript).payload).find("split-root-pin").details["share_set"]
    )
    return check_share(mnemonic, record)
