"""The PKCS#11 token layer shared by ceremony, bundle, verify and audit.

Tokens, keys and modules are named by RFC 7512 URIs, so the same command
works on SoftHSM2, a smart card, a network HSM or a TPM. This package needs
only ``python-pkcs11`` and ``cryptography``: the station library uses it too.

Example (against the development tokens ``softhsm/setup.sh`` makes)::

    from vault.token import open_token, parse_uri
    from vault.crypto import verify_signature

    uri = parse_uri("pkcs11:token=vault-root?pin-source=file:.softhsm/pins/vault-root.pin")
    with open_token(uri, rw=True) as token:
        key = token.generate_ec_key("example")
        signature = key.sign(b"hello")
    verify_signature(key.public_key, b"hello", signature)
"""

from vault.token._capabilities import Capabilities, Need
from vault.token._heads import Head
from vault.token._keys import ObjectInfo, TokenKey, TokenSession, open_token
from vault.token._require import probe_capabilities, require_capabilities
from vault.token._session import MODULE_ENV, TokenInfo, list_tokens, load_module, module_path_for
from vault.token._uri import Pkcs11Uri, format_uri, parse_uri

__all__ = [
    "MODULE_ENV",
    "Capabilities",
    "Head",
    "Need",
    "ObjectInfo",
    "Pkcs11Uri",
    "TokenInfo",
    "TokenKey",
    "TokenSession",
    "format_uri",
    "list_tokens",
    "load_module",
    "module_path_for",
    "open_token",
    "parse_uri",
    "probe_capabilities",
    "require_capabilities",
]
