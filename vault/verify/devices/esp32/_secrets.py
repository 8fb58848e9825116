"""Where a release's per-device secret goes on an ESP32-S3: the target forms the esp32 adapter accepts.

A release's ``secrets[].target`` is a string each adapter reads its own way
(``docs/adr/0012-device-secrets.md``). The esp32 adapter hands the secret to
the factory app (``VAULT SECRET``, :mod:`._factory_app`), which stores it
where the target says:

- ``nvs:<key>`` or ``nvs:<namespace>/<key>``: an NVS entry (a blob), in the
  namespace ``vault`` when none is given. Namespace and key are 1 to 15
  letters, digits, ``_`` or ``-`` (NVS's limit). The app keeps it in an
  encrypted NVS partition; flash encryption protects the rest.
- ``efuse:BLOCK_KEY<0-5>/<purpose>``: burnt into an eFuse key block with a
  purpose that keeps it out of software's reach (read-protected, used only by
  the HMAC peripheral): ``HMAC_UP``, ``HMAC_DOWN_ALL``, ``HMAC_DOWN_JTAG``,
  ``HMAC_DOWN_DIGITAL_SIGNATURE``. A readable purpose (``USER``) or a
  flash encryption key is not a target: the chip makes that key itself.

A target is checked when a release with an ESP chip's lock profile is built
(``vault bundle build``), and again by the adapter before anything is sent.

Example::

    >>> parse_secret_target("nvs:psk").wire()
    'nvs:vault/psk'
    >>> parse_secret_target("efuse:BLOCK_KEY3/HMAC_UP").block
    'BLOCK_KEY3'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vault.errors import AdapterError

__all__ = ["NVS_NAMESPACE", "SECRET_PURPOSES", "SecretTarget", "parse_secret_target"]

NVS_NAMESPACE = "vault"
"""The NVS namespace of an ``nvs:<key>`` target."""

SECRET_PURPOSES = ("HMAC_UP", "HMAC_DOWN_ALL", "HMAC_DOWN_JTAG", "HMAC_DOWN_DIGITAL_SIGNATURE")
"""eFuse key purposes a secret may be burnt with: each read-protects the block (the HMAC peripheral uses it)."""

_NVS_NAME = r"[A-Za-z0-9_-]{1,15}"
_NVS = re.compile(rf"nvs:(?:({_NVS_NAME})/)?({_NVS_NAME})")
_EFUSE = re.compile(r"efuse:(BLOCK_KEY[0-5])/([A-Z_]{1,32})")
_FORMS = "nvs:<key>, nvs:<namespace>/<key> (1 to 15 of A-Z a-z 0-9 _ -) or efuse:BLOCK_KEY<0-5>/<purpose>"


@dataclass(frozen=True)
class SecretTarget:
    """A checked esp32 secret target: an NVS entry, or an eFuse key block with its purpose."""

    store: str  # "nvs" or "efuse"
    namespace: str = ""  # nvs
    key: str = ""  # nvs
    block: str = ""  # efuse
    purpose: str = ""  # efuse

    def wire(self) -> str:
        """The target as the factory app receives it (the NVS namespace always written out)."""
        if self.store == "nvs":
            return f"nvs:{self.namespace}/{self.key}"
        return f"efuse:{self.block}/{self.purpose}"


def parse_secret_target(target: str) -> SecretTarget:
    """Check a secret's target against the forms the esp32 adapter accepts.

    Raises:
        AdapterError: a form the adapter does not know, or an eFuse purpose a secret may not have.
    """
    nvs = _NVS.fullmatch(target)
    if nvs:
        return SecretTarget("nvs", namespace=nvs.group(1) or NVS_NAMESPACE, key=nvs.group(2))
    efuse = _EFUSE.fullmatch(target)
    if efuse:
        block, purpose = efuse.groups()
        if purpose not in SECRET_PURPOSES:
            raise AdapterError(
                f"the esp32 adapter burns a secret only with a read-protected purpose "
                f"({', '.join(SECRET_PURPOSES)}), not '{purpose}'"
            )
        return SecretTarget("efuse", block=block, purpose=purpose)
    raise AdapterError(f"the esp32 adapter has no secret target '{target[:128]}' (it takes {_FORMS})")
