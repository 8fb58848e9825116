"""Check a token's capabilities for a role before a step touches it."""

from __future__ import annotations

from collections.abc import Iterable

from vault.token._capabilities import Capabilities, Need
from vault.token._keys import open_token
from vault.token._uri import Pkcs11Uri


def require_capabilities(uri: Pkcs11Uri, needs: Iterable[Need], *, role: str) -> Capabilities:
    """Log in to the token ``uri`` names (read-only), refuse unless it meets ``needs`` for ``role``.

    Nothing on the token changes. Returns what it offers, for the caller to
    choose how to serve a role that can be served another way.

    Raises:
        MechanismNotSupportedError: a need is missing; the line names it and ``role``.
        TokenError: the token cannot be opened.
    """
    with open_token(uri) as token:
        capabilities = token.capabilities()
    capabilities.require(needs, role=role)
    return capabilities
