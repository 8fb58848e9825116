"""Token errors name the PKCS#11 return code the module gave, provoked on a real SoftHSM2 token."""

from __future__ import annotations

from collections.abc import Callable

import pkcs11.exceptions as p11e
import pytest
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

from vault.errors import MechanismNotSupportedError, TokenOperationError
from vault.token import Pkcs11Uri, open_token
from vault.token._ckr import ckr_name
from vault.token._session import translate_errors

Tokens = Callable[[list[str]], dict[str, Pkcs11Uri]]


def test_a_template_the_module_refuses_is_named_by_its_return_code(fresh_tokens: Tokens) -> None:
    uri = fresh_tokens(["ckr"])["ckr"]
    with open_token(uri, rw=True) as token:
        session = token._session
        with pytest.raises(TokenOperationError) as caught, translate_errors("making a data object", "ckr"):
            # a data object cannot carry a key type: SoftHSM2 answers CKR_ATTRIBUTE_TYPE_INVALID
            session.create_object({Attribute.CLASS: ObjectClass.DATA, Attribute.TOKEN: False,
                                   Attribute.KEY_TYPE: KeyType.EC, Attribute.VALUE: b"x"})  # fmt: skip
    expected = "making a data object on token 'ckr' failed: the token reported CKR_ATTRIBUTE_TYPE_INVALID"
    assert str(caught.value) == expected


def test_a_code_python_pkcs11_does_not_map_is_still_named(fresh_tokens: Tokens) -> None:
    uri = fresh_tokens(["ckr"])["ckr"]
    with open_token(uri, rw=True) as token:
        kept = token._session.create_object(
            {
                Attribute.CLASS: ObjectClass.DATA,
                Attribute.TOKEN: False,
                Attribute.VALUE: b"x",
                Attribute.DESTROYABLE: False,
            }  # fmt: skip
        )
        with pytest.raises(TokenOperationError) as caught, translate_errors("destroying an object", "ckr"):
            kept.destroy()  # python-pkcs11 raises CKR_ACTION_PROHIBITED as a bare "Unmapped error code 0x1b"
    assert str(caught.value).endswith("failed: the token reported CKR_ACTION_PROHIBITED")


def test_an_unknown_mechanism_keeps_its_code(fresh_tokens: Tokens) -> None:
    uri = fresh_tokens(["ckr"])["ckr"]
    with open_token(uri, rw=True) as token:
        with pytest.raises(MechanismNotSupportedError) as caught, translate_errors("hashing", "ckr"):
            token._session.digest(b"x", mechanism=Mechanism.SHA3_256)  # SoftHSM2 has no SHA-3
    assert "mechanism not supported by this token on token 'ckr' (CKR_MECHANISM_INVALID)" in str(caught.value)


@pytest.mark.parametrize(
    ("error", "name"),
    [
        (p11e.TemplateInconsistent(), "CKR_TEMPLATE_INCONSISTENT"),
        (p11e.TokenNotRecognised(), "CKR_TOKEN_NOT_RECOGNIZED"),
        (p11e.AnotherUserAlreadyLoggedIn(), "CKR_USER_ANOTHER_ALREADY_LOGGED_IN"),
        (p11e.PKCS11Error("User type invalid. Should never see this."), "CKR_USER_TYPE_INVALID"),
        (p11e.PKCS11Error("Unmapped error code 0x68"), "CKR_KEY_FUNCTION_NOT_PERMITTED"),
        (p11e.PKCS11Error("Unmapped error code 0x80000012"), "CKR_VENDOR_DEFINED+0x12"),
        (p11e.PKCS11Error("Unmapped error code 0x3f"), "CKR_0x3f"),
        (p11e.NoSuchKey("none"), "NoSuchKey"),
    ],
)
def test_each_form_python_pkcs11_raises_becomes_a_code_name(error: BaseException, name: str) -> None:
    assert ckr_name(error) == name
