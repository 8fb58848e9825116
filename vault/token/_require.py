"""Check a token's capabilities for a role before a step touches it."""

from __future__ import annotations

from collections.abc import Iterable

from vault.token._capabilities import Capabilities, Need, capabilities_of
from vault.token._session import _text, find_token, module_profile, translate_errors
from vault.token._uri import Pkcs11Uri


def probe_capabilities(uri: Pkcs11Uri) -> Capabilities:
    """What the token ``uri`` names offers vault, asked of its module without logging in.

    No PIN is read or spent and nothing on the token changes: the mechanisms
    are the slot's, the rest is the module's measured profile. A root token
    whose PIN the officers' shares hold is asked this way before the shares
    are combined.

    Raises:
        TokenError: the module or the token cannot be found.
    """
    token = find_token(uri)
    label = _text(token.label)
    with translate_errors("asking the token what it can do", label):
        return capabilities_of(token, module_profile(token, uri))


def require_capabilities(uri: Pkcs11Uri, needs: Iterable[Need], *, role: str) -> Capabilities:
    """Refuse unless the token ``uri`` names meets ``needs`` for ``role``; nothing on it changes.

    Returns what it offers, for the caller to choose how to serve a role
    that can be served another way.

    Raises:
        MechanismNotSupportedError: a need is missing; the line names it and ``role``.
        TokenError: the token cannot be found.
    """
    capabilities = probe_capabilities(uri)
    capabilities.require(needs, role=role)
    return capabilities
