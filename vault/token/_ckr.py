"""The PKCS#11 return code behind a python-pkcs11 exception, by its ``CKR_`` name.

python-pkcs11 raises one exception class per return code it knows
(``TemplateInconsistent`` for ``CKR_TEMPLATE_INCONSISTENT``) and a bare
``PKCS11Error`` carrying the number for the codes it does not ("Unmapped
error code 0x..."); a few codes it knows only by a sentence. Token errors
name the code the module returned, so a user can look it up in the module's
documentation: :func:`ckr_name` turns either form back into that name.
"""

from __future__ import annotations

import re

import pkcs11.exceptions as p11e

__all__ = ["ckr_name"]

# Exception classes whose name is not the code's name spelled in CamelCase.
_RENAMED = {
    "AnotherUserAlreadyLoggedIn": "CKR_USER_ANOTHER_ALREADY_LOGGED_IN",
    "FunctionCancelled": "CKR_FUNCTION_CANCELED",
    "TokenNotRecognised": "CKR_TOKEN_NOT_RECOGNIZED",
    "SlotIDInvalid": "CKR_SLOT_ID_INVALID",
    "RandomNoRNG": "CKR_RANDOM_NO_RNG",
    "SessionReadWriteSOExists": "CKR_SESSION_READ_WRITE_SO_EXISTS",
}

# python-pkcs11's own conditions, raised without any return code from the module.
_NOT_A_RETURN_CODE = frozenset({"MultipleObjectsReturned", "MultipleTokensReturned", "NoSuchKey", "NoSuchToken"})

# Return codes python-pkcs11 raises as a bare PKCS11Error (values from the PKCS#11 base specification).
_UNMAPPED = {
    0x001: "CKR_CANCEL",
    0x009: "CKR_NEED_TO_CREATE_THREADS",
    0x00A: "CKR_CANT_LOCK",
    0x01B: "CKR_ACTION_PROHIBITED",
    0x051: "CKR_FUNCTION_NOT_PARALLEL",
    0x065: "CKR_KEY_CHANGED",
    0x068: "CKR_KEY_FUNCTION_NOT_PERMITTED",
    0x103: "CKR_USER_TYPE_INVALID",
    0x140: "CKR_CURVE_NOT_SUPPORTED",
    0x150: "CKR_BUFFER_TOO_SMALL",
    0x160: "CKR_SAVED_STATE_INVALID",
    0x170: "CKR_INFORMATION_SENSITIVE",
    0x180: "CKR_STATE_UNSAVEABLE",
    0x190: "CKR_CRYPTOKI_NOT_INITIALIZED",
    0x191: "CKR_CRYPTOKI_ALREADY_INITIALIZED",
    0x1A0: "CKR_MUTEX_BAD",
    0x1A1: "CKR_MUTEX_NOT_LOCKED",
    0x1B0: "CKR_NEW_PIN_MODE",
    0x1B1: "CKR_NEXT_OTP",
    0x1B6: "CKR_FIPS_SELF_TEST_FAILED",
    0x1B7: "CKR_LIBRARY_LOAD_FAILED",
    0x202: "CKR_OPERATION_CANCEL_FAILED",
}
_VENDOR_DEFINED = 0x80000000

# Codes python-pkcs11 knows only by the sentence it raises them with.
_BY_SENTENCE = {
    "user type invalid": "CKR_USER_TYPE_INVALID",
    "buffer was too small": "CKR_BUFFER_TOO_SMALL",
    "already initialized": "CKR_CRYPTOKI_ALREADY_INITIALIZED",
    "not initialized": "CKR_CRYPTOKI_NOT_INITIALIZED",
    "parallel not supported": "CKR_SESSION_PARALLEL_NOT_SUPPORTED",
}

_WORD = re.compile(r"[A-Z][a-z0-9]*")
_NUMBER = re.compile(r"0x([0-9a-fA-F]+)")


def ckr_name(error: BaseException) -> str:
    """The ``CKR_...`` name of the return code behind ``error``; the class name when there is none."""
    kind = type(error)
    if not isinstance(error, p11e.PKCS11Error):
        return kind.__name__
    if kind is not p11e.PKCS11Error:
        name = kind.__name__
        if name in _NOT_A_RETURN_CODE:
            return name
        return _RENAMED.get(name) or "CKR_" + "_".join(w.upper() for w in _WORD.findall(name))
    text = " ".join(str(a) for a in error.args).lower()
    number = _NUMBER.search(text)
    if number is not None:
        value = int(number.group(1), 16)
        if value >= _VENDOR_DEFINED:
            return f"CKR_VENDOR_DEFINED+{value - _VENDOR_DEFINED:#x}"
        return _UNMAPPED.get(value, f"CKR_{value:#x}")
    for sentence, name in _BY_SENTENCE.items():
        if sentence in text:
            return name
    return "PKCS11Error"
