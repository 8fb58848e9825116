"""Differences between real PKCS#11 modules, kept in one place.

Every place in vault that would otherwise need "if this token does X" calls a
function here instead:

- CKA_EC_POINT comes back DER-wrapped in an OCTET STRING (the standard) or as
  the raw point (some modules);
- some modules reject CKA_EXTRACTABLE in a generation template and make
  private keys non-extractable by default; vault then generates without it
  and checks the result;
- ECDH1_DERIVE takes the peer's point raw (PKCS#11 2.30 and later) on most
  modules, DER-wrapped on some older ones;
- what a module cannot be asked without changing something (whether it has a
  security officer, whether CKA_LOCAL and CKA_WRAP_WITH_TRUSTED mean what the
  standard says) is kept per module in :data:`PROFILES`, each entry with the
  test that shows it (tests/token/test_modules.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pkcs11
import pkcs11.exceptions as p11e
from pkcs11 import Attribute

from vault.crypto import Curve
from vault.errors import TokenOperationError

T = TypeVar("T")

# Errors a module raises when it does not accept an attribute in a template.
_TEMPLATE_REJECTED = (
    p11e.AttributeTypeInvalid,
    p11e.AttributeValueInvalid,
    p11e.TemplateInconsistent,
    p11e.AttributeReadOnly,
)
# Errors a module raises when it does not accept the form of an ECDH parameter.
_PARAM_REJECTED = (
    p11e.MechanismParamInvalid,
    p11e.ArgumentsBad,
    p11e.DomainParamsInvalid,
    p11e.DataInvalid,
    p11e.DataLenRange,
)


@dataclass(frozen=True)
class ModuleProfile:
    """What vault knows of a module beyond what it reports: each ``False`` is a measured fact."""

    name: str
    so_login: bool = True
    """The module has a security-officer login (CKU_SO)."""
    local_reliable: bool = True
    """CKA_LOCAL is true on keys the token generated (the standard); else the key check relies on
    CKA_ALWAYS_SENSITIVE and CKA_NEVER_EXTRACTABLE, which must then be reported and true."""
    enforces_wrap_with_trusted: bool = True
    """C_WrapKey refuses to wrap a CKA_WRAP_WITH_TRUSTED key under a key that is not CKA_TRUSTED;
    where it does not, an extractable key can leave under any key and vault makes none."""
    token_data_objects: bool = True
    """The module stores private token data objects (CKO_DATA), where vault keeps head records."""
    strict_key_template: bool = True
    """The module accepts the strict key-pair template (unused capabilities explicitly false); where it
    refuses it with a code that does not say "template", key generation starts at ``usage only``."""


GENERIC = ModuleProfile("PKCS#11 module")
SOFTHSM2 = ModuleProfile("SoftHSM2")
# NSS softoken 3.87 (Debian 12), measured by tests/token/test_modules.py: C_Login(CKU_SO) on a
# token with a password gives CKR_USER_TYPE_INVALID; keys from C_GenerateKeyPair report CKA_LOCAL
# false, CKA_ALWAYS_SENSITIVE and CKA_NEVER_EXTRACTABLE true, while an imported key reports all
# three false; an extractable CKA_WRAP_WITH_TRUSTED key is wrapped under an untrusted session key;
# C_CreateObject of a token CKO_DATA object gives CKR_ATTRIBUTE_VALUE_INVALID.
NSS_SOFTOKEN = ModuleProfile(
    "NSS softoken", so_login=False, local_reliable=False, enforces_wrap_with_trusted=False, token_data_objects=False
)

# tpm2-pkcs11 1.9 (Debian 12) on a TPM 2.0 (swtpm 0.7 in tests), measured by tests/tpm: the TPM makes
# EC keys with both its sign and decrypt attributes, so the module answers a template with CKA_DECRYPT
# or CKA_ENCRYPT false by CKR_GENERAL_ERROR ("User specified and TPM specified attr mismatch") rather
# than a template code; it has a security officer, data objects, and CKA_LOCAL true on keys it made.
# Its tokens report the TPM's maker and model (swtpm: "IBM", "SW   TPM"), so it is known by the
# library's CK_INFO manufacturer instead.
TPM2_PKCS11 = ModuleProfile("tpm2-pkcs11", strict_key_template=False)

# (token manufacturer, start of the token model) -> profile
PROFILES: dict[tuple[str, str], ModuleProfile] = {
    ("SoftHSM project", "SoftHSM"): SOFTHSM2,
    ("Mozilla Foundation", "NSS"): NSS_SOFTOKEN,
}
# module (CK_INFO) manufacturer -> profile, for modules whose tokens report the hardware's maker
LIBRARY_PROFILES: dict[str, ModuleProfile] = {
    "tpm2-software.github.io": TPM2_PKCS11,
}


def profile_for(manufacturer: str, model: str, library: str = "") -> ModuleProfile:
    """The profile of the module behind a token with this CK_TOKEN_INFO manufacturer and model.

    ``library`` is the module's own CK_INFO manufacturer, where the caller knows it.
    """
    if library in LIBRARY_PROFILES:
        return LIBRARY_PROFILES[library]
    for (maker, model_start), profile in PROFILES.items():
        if manufacturer == maker and model.startswith(model_start):
            return profile
    return GENERIC


def ec_point_from_attribute(value: bytes, curve: Curve) -> bytes:
    """The uncompressed point from a CKA_EC_POINT value, DER-wrapped or raw.

    The curve fixes the point's length, so the two forms cannot be confused:
    the raw point is ``point_size`` bytes starting 0x04, the wrapped one is
    an OCTET STRING header followed by exactly that.

    Raises:
        TokenOperationError: the value is neither form.
    """
    n = curve.point_size
    if len(value) == n and value[0] == 0x04:
        return value
    header = _octet_string_header(n)
    if len(value) == len(header) + n and value.startswith(header) and value[len(header)] == 0x04:
        return value[len(header) :]
    raise TokenOperationError(f"token returned an EC point of {len(value)} bytes that is not a {curve.name} point")


def wrap_ec_point(point: bytes) -> bytes:
    """``point`` as a DER OCTET STRING, the form CKA_EC_POINT should take."""
    return _octet_string_header(len(point)) + point


def _octet_string_header(length: int) -> bytes:
    if length < 0x80:
        return bytes([0x04, length])
    if length < 0x100:
        return bytes([0x04, 0x81, length])
    return bytes([0x04, 0x82, length >> 8, length & 0xFF])


# The capability attributes python-pkcs11 sets explicitly (true or false) in a key-pair template.
_PRIVATE_USES = (Attribute.SIGN, Attribute.DERIVE, Attribute.DECRYPT, Attribute.UNWRAP)
_PUBLIC_USES = (Attribute.VERIFY, Attribute.ENCRYPT, Attribute.WRAP)


def template_ladder(
    private_template: dict[Attribute, Any], public_template: dict[Attribute, Any], uses: frozenset[Attribute]
) -> list[tuple[str, dict[Attribute, Any], dict[Attribute, Any]]]:
    """The key-pair templates vault tries, strictest first, each ``(name, private, public)``.

    1. ``strict``: every capability set, the unused ones explicitly false;
    2. ``usage only``: the unused capabilities left to the module (tpm2-pkcs11
       refuses CKA_DECRYPT false on an EC signing key, say);
    3. ``module default extractable``: also CKA_EXTRACTABLE left out, for
       modules that refuse it and make private keys non-extractable anyway.

    Every template keeps CKA_SENSITIVE, CKA_PRIVATE and CKA_TOKEN true; none
    ever asks for an extractable key that the strict one did not. The caller
    checks the key it gets, whichever template made it.
    """
    from pkcs11.constants import DEFAULT

    lean_private = {**private_template, **{a: DEFAULT for a in _PRIVATE_USES if a not in uses}}
    lean_public = {**public_template, **{a: DEFAULT for a in _PUBLIC_USES if a not in uses}}
    ladder = [("strict", private_template, public_template), ("usage only", lean_private, lean_public)]
    if Attribute.EXTRACTABLE in private_template:
        reduced: dict[Attribute, Any] = {k: v for k, v in lean_private.items() if k is not Attribute.EXTRACTABLE}
        ladder.append(("module default extractable", reduced, lean_public))
    return ladder


def generate_with_fallback(
    generate: Callable[[dict[Attribute, Any], dict[Attribute, Any]], T],
    private_template: dict[Attribute, Any],
    public_template: dict[Attribute, Any],
    uses: frozenset[Attribute],
    *,
    strict: bool = True,
) -> tuple[T, str]:
    """Run ``generate(private, public)`` down :func:`template_ladder` until the module accepts one.

    Returns the result and the name of the template that made it. Only a
    template refusal (CKR_ATTRIBUTE_*, CKR_TEMPLATE_INCONSISTENT) moves to
    the next template; the last refusal is raised. ``strict=False`` (a
    module whose profile says it refuses the strict template) starts at the
    next one, which is no less protective.
    """
    ladder = template_ladder(private_template, public_template, uses)
    if not strict:
        ladder = ladder[1:]
    for name, private, public in ladder[:-1]:
        try:
            return generate(private, public), name
        except _TEMPLATE_REJECTED:
            continue
    name, private, public = ladder[-1]
    return generate(private, public), name


def derive_with_fallback(derive: Callable[[bytes], T], peer_point: bytes) -> T:
    """Run ``derive(point)`` with the raw point, then DER-wrapped if refused."""
    try:
        return derive(peer_point)
    except _PARAM_REJECTED:
        return derive(wrap_ec_point(peer_point))


def read_bool(obj: pkcs11.Object, attribute: Attribute) -> bool | None:
    """A boolean attribute, or ``None`` where the object does not have it."""
    try:
        return bool(obj[attribute])
    except (p11e.AttributeTypeInvalid, p11e.AttributeSensitive):
        return None
