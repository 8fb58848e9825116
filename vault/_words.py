"""Digests in a form people can read aloud and compare.

Two officers comparing a 64-character hex digest across a table make
mistakes; comparing eight words does not. The words are SLIP-39's list of
1024 (from ``shamir-mnemonic``), chosen to be distinct in their first four
letters, so 8 words carry the digest's first 80 bits. The hex stays the
reference; the words are for the human check.

Example:
    >>> readable_digest("00" * 32).split()[:2]
    ['academic', 'academic']
"""

from __future__ import annotations

from shamir_mnemonic.wordlist import WORDLIST

__all__ = ["readable_digest"]

WORDS = 8  # 8 x 10 bits = the digest's first 80 bits


def readable_digest(hex_digest: str, words: int = WORDS) -> str:
    """The first ``10 * words`` bits of ``hex_digest`` as SLIP-39 words."""
    value = int.from_bytes(bytes.fromhex(hex_digest), "big")
    bits = len(hex_digest) * 4
    out = []
    for i in range(words):
        shift = bits - 10 * (i + 1)
        out.append(WORDLIST[(value >> shift) & 0x3FF])
    return " ".join(out)
