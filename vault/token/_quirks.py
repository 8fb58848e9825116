"""Differences between real PKCS#11 modules, kept in one place.

Every place in vault that would otherwise need "if this token does X" calls a
function here instead:

- CKA_EC_POINT comes back DER-wrapped in an OCTET STRING (the standard) or as
  the raw point (some modules);
- some modules reject CKA_EXTRACTABLE in a generation template and make
  private keys non-extractable by default; vault then generates without it
  and checks the result;
- ECDH1_DERIVE takes the peer's point raw (PKCS#11 2.30 and later) on most
  modules, DER-wrapped on some older ones.
"""

from __future__ import annotations

from collections.abc import Callable
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


def generate_with_fallback(generate: Callable[[dict[Attribute, Any]], T], private_template: dict[Attribute, Any]) -> T:
    """Run ``generate(template)``; if the module rejects CKA_EXTRACTABLE, retry without it.

    The caller must check the generated key's attributes afterwards: without
    the attribute, the module's default decides.
    """
    try:
        return generate(private_template)
    except _TEMPLATE_REJECTED:
        if Attribute.EXTRACTABLE not in private_template:
            raise
        reduced: dict[Attribute, Any] = {k: v for k, v in private_template.items() if k is not Attribute.EXTRACTABLE}
        return generate(reduced)


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
