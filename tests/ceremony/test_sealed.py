"""Shares sealed to a custodian's token: open only there, bound to the custodian and the share set."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from vault.ceremony._sealed import is_sealed_share, read_sealed_share, seal_share
from vault.errors import DecryptionError, FormatError
from vault.token import Pkcs11Uri, open_token

MNEMONIC = "academic acid acne acquire acrobat activity"


def test_sealed_share_opens_in_its_token_only_and_is_bound_to_custodian_and_set(
    token_uri: Callable[..., Pkcs11Uri], label: str
) -> None:
    with open_token(token_uri("vault-officer-1"), rw=True) as token:
        key = token.generate_ec_key(label, usage="derive")
        data = seal_share(MNEMONIC, "officer-1", 1234, key.public_key)
        assert is_sealed_share(data) and not is_sealed_share(MNEMONIC.encode())
        assert b"academic" not in data
        assert read_sealed_share(data).open_in(token) == MNEMONIC

        doc = json.loads(data)
        for field, value in (("custodian", "officer-2"), ("share_set", 1235)):
            relabelled = json.dumps({**doc, field: value}).encode()
            with pytest.raises(DecryptionError):
                read_sealed_share(relabelled).open_in(token)
        other = token.generate_ec_key(label + "-other", usage="derive")
        foreign = json.dumps({**doc, "recipient_key_id": other.key_id}).encode()
        with pytest.raises(DecryptionError):
            read_sealed_share(foreign).open_in(token)
    with pytest.raises(FormatError):
        read_sealed_share(b'{"format": "vault-sealed-share/v1"}')
