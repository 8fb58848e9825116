"""The station library holds its token's keys to the rules vault makes keys by (checked in the token layer)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import import_software_key
from vault.errors import KeyProtectionError
from vault.token import Pkcs11Uri, open_token
from vault.verify import DECRYPTION_LABEL, ISSUING_CA_LABEL, SIGNING_LABEL, Station


def test_a_station_refuses_to_open_with_a_key_imported_from_software(
    fresh_tokens: Callable[[list[str]], dict[str, Pkcs11Uri]], tmp_path: Path
) -> None:
    uri = fresh_tokens(["station"])["station"]
    with open_token(uri, rw=True) as token:
        import_software_key(token, SIGNING_LABEL)  # pasted in by another tool: a copy lives outside
        token.generate_ec_key(ISSUING_CA_LABEL)
        token.generate_ec_key(DECRYPTION_LABEL, usage="derive")
    station = Station(tmp_path / "state", token=uri, station_id="line-7", root="00" * 32)
    with pytest.raises(KeyProtectionError, match=f"key '{SIGNING_LABEL}' on token '{uri.token}' is extractable"):
        with station:
            pass
