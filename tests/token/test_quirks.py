"""The quirk layer: the two CKA_EC_POINT forms and the template fallback.

Real tokens that show these quirks are not available in CI, so the parsing
and fallback rules are tested directly; SoftHSM2 exercises the standard path
in test_keys.py.
"""

from __future__ import annotations

from typing import Any

import pkcs11.exceptions as p11e
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pkcs11 import Attribute
from pkcs11.constants import DEFAULT

from vault.crypto import CURVES
from vault.errors import TokenOperationError
from vault.token._quirks import ec_point_from_attribute, generate_with_fallback, wrap_ec_point


@pytest.mark.parametrize("curve", ["P-256", "P-384"])
def test_ec_point_raw_and_der_wrapped_give_the_same_point(curve: str) -> None:
    spec = CURVES[curve]
    point = (
        ec.generate_private_key(spec.curve())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    assert ec_point_from_attribute(point, spec) == point
    assert ec_point_from_attribute(wrap_ec_point(point), spec) == point


def test_ec_point_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(TokenOperationError, match="not a P-256 point"):
        ec_point_from_attribute(b"\x04" + b"\x01" * 40, CURVES["P-256"])


def test_template_ladder_goes_down_only_on_template_refusals_and_keeps_the_key_sensitive() -> None:
    seen: list[dict[Attribute, Any]] = []

    def module_rejecting_extractable(private: dict[Attribute, Any], public: dict[Attribute, Any]) -> str:
        seen.append(private)
        if Attribute.EXTRACTABLE in private:
            raise p11e.AttributeTypeInvalid()
        return "key"

    strict = {Attribute.EXTRACTABLE: False, Attribute.SENSITIVE: True, Attribute.PRIVATE: True}
    assert generate_with_fallback(module_rejecting_extractable, strict, {}, frozenset({Attribute.SIGN})) == (
        "key",
        "module default extractable",
    )
    assert [Attribute.EXTRACTABLE in t for t in seen] == [True, True, False]
    assert seen[0] == strict
    # the lean templates leave unused capabilities to the module (DEFAULT), never turn them on
    assert seen[1][Attribute.DECRYPT] is DEFAULT and seen[1][Attribute.DERIVE] is DEFAULT
    assert Attribute.SIGN not in seen[1]
    assert all(t[Attribute.SENSITIVE] is True and t[Attribute.PRIVATE] is True for t in seen)


def test_a_refusal_other_than_the_template_is_not_retried() -> None:
    calls = []

    def module_failing(private: dict[Attribute, Any], public: dict[Attribute, Any]) -> str:
        calls.append(1)
        raise p11e.MechanismInvalid()

    with pytest.raises(p11e.MechanismInvalid):
        generate_with_fallback(module_failing, {Attribute.EXTRACTABLE: False}, {}, frozenset())
    assert calls == [1]
