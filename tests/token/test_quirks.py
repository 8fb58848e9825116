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


def test_template_without_extractable_is_retried_once() -> None:
    seen: list[dict[Attribute, Any]] = []

    def module_rejecting_extractable(template: dict[Attribute, Any]) -> str:
        seen.append(template)
        if Attribute.EXTRACTABLE in template:
            raise p11e.AttributeTypeInvalid()
        return "key"

    assert (
        generate_with_fallback(module_rejecting_extractable, {Attribute.EXTRACTABLE: False, Attribute.SENSITIVE: True})
        == "key"
    )
    assert [Attribute.EXTRACTABLE in t for t in seen] == [True, False]
    assert seen[1] == {Attribute.SENSITIVE: True}
