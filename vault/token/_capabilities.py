"""What a token can do, asked before a ceremony or a station step changes anything.

The module is asked what it reports (its mechanisms and their flags); what
cannot be asked without changing something or spending a PIN try (whether it
has a security officer, whether it enforces CKA_WRAP_WITH_TRUSTED, whether it
keeps token data objects) comes from the module's measured profile in
:mod:`vault.token._quirks`.

Example::

    with open_token(uri) as token:
        token.capabilities().require([Need.EC_SIGNING, Need.HEAD_RECORDS], role="station token")
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

import pkcs11
import pkcs11.exceptions as p11e
from pkcs11 import Mechanism, MechanismFlag

from vault.errors import MechanismNotSupportedError
from vault.token._quirks import ModuleProfile

__all__ = ["Capabilities", "Need", "capabilities_of"]


class Need(enum.Enum):
    """One thing a step needs of a token; the value is how a message names it."""

    EC_SIGNING = "EC P-256 key generation and ECDSA signing (CKM_EC_KEY_PAIR_GEN, CKM_ECDSA)"
    EC_KEYGEN = "EC P-256 key generation (CKM_EC_KEY_PAIR_GEN)"
    ECDSA = "ECDSA signing (CKM_ECDSA)"
    """Signing with a key that is already on the token (a PIV card's, made by the card's own tool)."""
    ECDH = "ECDH key agreement (CKM_ECDH1_DERIVE)"
    KEY_UNWRAP = "AES key unwrap of a key backup (CKM_AES_KEY_WRAP_PAD)"
    HEAD_RECORDS = "private token objects for head records"
    SO_LOGIN = "security-officer login (CKU_SO)"
    TRUSTED_WRAP = "AES key wrap under trusted keys only (CKM_AES_KEY_WRAP_PAD, enforced CKA_WRAP_WITH_TRUSTED)"


@dataclass(frozen=True)
class Capabilities:
    """What one token offers vault, and what its module is."""

    token: str
    module: str
    has: frozenset[Need]
    data_objects: bool
    """Head records are data objects; else they are kept in key carriers (:mod:`vault.token._heads`)."""

    def missing(self, needs: Iterable[Need]) -> list[Need]:
        """The needs this token does not meet, in the order given."""
        return [n for n in needs if n not in self.has]

    def require(self, needs: Iterable[Need], *, role: str) -> None:
        """Refuse, naming the first missing capability and ``role``, unless every need is met.

        Raises:
            MechanismNotSupportedError: one line naming token, module, capability and role.
        """
        missing = self.missing(needs)
        if missing:
            raise MechanismNotSupportedError(
                f"token '{self.token}' ({self.module}) cannot serve as the {role}: it has no {missing[0].value}"
            )


def capabilities_of(token: pkcs11.Token, profile: ModuleProfile) -> Capabilities:
    """Ask ``token``'s slot for its mechanisms and combine them with ``profile``."""
    slot = token.slot
    try:
        mechanisms = set(slot.get_mechanisms())
    except p11e.PKCS11Error:
        mechanisms = set()

    def can(mechanism: Mechanism, flags: MechanismFlag) -> bool:
        if mechanism not in mechanisms:
            return False
        try:
            info = slot.get_mechanism_info(mechanism)
        except p11e.PKCS11Error:
            return False
        return bool(info.flags & flags) and (not info.max_key_length or info.max_key_length >= 256)

    has = set()
    if can(Mechanism.EC_KEY_PAIR_GEN, MechanismFlag.GENERATE_KEY_PAIR):
        has.add(Need.EC_KEYGEN)
    if can(Mechanism.ECDSA, MechanismFlag.SIGN):
        has.add(Need.ECDSA)
    if {Need.EC_KEYGEN, Need.ECDSA} <= has:
        has.add(Need.EC_SIGNING)
    if can(Mechanism.AES_KEY_WRAP_PAD, MechanismFlag.UNWRAP):
        has.add(Need.KEY_UNWRAP)
    if can(Mechanism.ECDH1_DERIVE, MechanismFlag.DERIVE):
        has.add(Need.ECDH)
    has.add(Need.HEAD_RECORDS)  # data objects, or key carriers where the module keeps none
    if profile.so_login:
        has.add(Need.SO_LOGIN)
    if profile.enforces_wrap_with_trusted and profile.so_login and can(Mechanism.AES_KEY_WRAP_PAD, MechanismFlag.WRAP):
        has.add(Need.TRUSTED_WRAP)
    label = token.label.rstrip(" \x00") if isinstance(token.label, str) else str(token.label)
    return Capabilities(label, profile.name, frozenset(has), profile.token_data_objects)
