"""The token layer on NSS softoken: what the module can do, and vault's answers to what it cannot."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable

import pkcs11.exceptions as p11e
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11.util.ec import encode_named_curve_parameters

from vault.crypto import key_id, verify_signature
from vault.errors import KeyProtectionError, MechanismNotSupportedError, StateError
from vault.token import Need, Pkcs11Uri, list_tokens, open_token
from vault.token._quirks import NSS_SOFTOKEN

Uri = Callable[..., Pkcs11Uri]


def new_label() -> str:
    return "t-" + uuid.uuid4().hex[:12]


def test_setup_makes_every_token_and_they_are_nss(nss_uri: Uri) -> None:
    labels = {t.label for t in list_tokens(nss_uri("nss-root").token_only())}
    proxy_uri = Pkcs11Uri(module_path=nss_uri("nss-root").module_path)
    found = {t.label: t for t in list_tokens(proxy_uri)}
    assert {"nss-root", "nss-station-1", "nss-auditor", "nss-officer-3"} <= set(found)
    assert found["nss-root"].manufacturer == "Mozilla Foundation"
    assert labels == {"nss-root"}
    with open_token(nss_uri("nss-root")) as token:
        assert token.profile is NSS_SOFTOKEN


def test_capabilities_are_asked_of_the_module(nss_uri: Uri) -> None:
    with open_token(nss_uri("nss-station-1")) as token:
        caps = token.capabilities()
    assert {Need.EC_SIGNING, Need.ECDH, Need.HEAD_RECORDS} <= caps.has
    assert Need.SO_LOGIN not in caps.has and Need.TRUSTED_WRAP not in caps.has
    with pytest.raises(MechanismNotSupportedError) as e:
        caps.require([Need.EC_SIGNING, Need.TRUSTED_WRAP], role="root token of a backup")
    assert str(e.value) == (
        "token 'nss-station-1' (NSS softoken) cannot serve as the root token of a backup: it has no "
        "AES key wrap under trusted keys only (CKM_AES_KEY_WRAP_PAD, enforced CKA_WRAP_WITH_TRUSTED)"
    )


def test_generated_keys_pass_the_check_though_nss_says_they_are_not_local(nss_uri: Uri) -> None:
    label = new_label()
    with open_token(nss_uri("nss-officer-1"), rw=True) as token:
        key = token.generate_ec_key(label)
        assert key.template == "strict"
        raw = token._session.get_key(ObjectClass.PRIVATE_KEY, label=label)
        # the measured facts behind NSS_SOFTOKEN.local_reliable = False
        assert raw[Attribute.LOCAL] is False
        assert raw[Attribute.ALWAYS_SENSITIVE] is True and raw[Attribute.NEVER_EXTRACTABLE] is True
        found = token.key(label=label)
        verify_signature(found.public_key, b"x", found.sign(b"x"))
        derive = token.generate_ec_key(new_label(), usage="derive")
        peer = ec.generate_private_key(ec.SECP256R1())
        assert derive.ecdh(peer.public_key()) == peer.exchange(ec.ECDH(), derive.public_key)


def test_an_imported_key_is_refused_by_what_nss_does_keep(nss_uri: Uri) -> None:
    label = new_label()
    software = ec.generate_private_key(ec.SECP256R1())
    with open_token(nss_uri("nss-officer-2"), rw=True) as token:
        imported = token._session.create_object(
            {
                Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                Attribute.KEY_TYPE: KeyType.EC,
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.SIGN: True,
                Attribute.LABEL: label,
                Attribute.ID: b"imported",
                Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1"),
                Attribute.VALUE: software.private_numbers().private_value.to_bytes(32, "big"),
            }
        )
        assert imported[Attribute.ALWAYS_SENSITIVE] is False and imported[Attribute.NEVER_EXTRACTABLE] is False
        with pytest.raises(KeyProtectionError, match=r"CKA_ALWAYS_SENSITIVE false"):
            token.key(label=label)


def test_no_backupable_key_where_wrap_with_trusted_is_not_enforced(nss_uri: Uri) -> None:
    with open_token(nss_uri("nss-officer-3"), rw=True) as token:
        # the measured fact: NSS wraps a CKA_WRAP_WITH_TRUSTED key under an untrusted session key
        public, private = token._session.generate_keypair(
            KeyType.EC, store=False, capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
            public_template={Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
            private_template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: True,
                              Attribute.WRAP_WITH_TRUSTED: True},
        )  # fmt: skip
        kek = token._session.create_object(
            {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES, Attribute.TOKEN: False,
             Attribute.WRAP: True, Attribute.VALUE: bytes(32)}
        )  # fmt: skip
        assert kek.wrap_key(private, mechanism=Mechanism.AES_KEY_WRAP_PAD)
        with pytest.raises(MechanismNotSupportedError, match="does not enforce CKA_WRAP_WITH_TRUSTED"):
            token.generate_ec_key(new_label(), backupable=True)


def test_heads_live_in_key_carriers_because_nss_keeps_no_data_objects(nss_uri: Uri) -> None:
    name = new_label()
    with open_token(nss_uri("nss-release"), rw=True) as token:
        with pytest.raises(p11e.AttributeValueInvalid):  # the measured fact
            token._session.create_object(
                {Attribute.CLASS: ObjectClass.DATA, Attribute.TOKEN: True, Attribute.PRIVATE: True,
                 Attribute.LABEL: name, Attribute.VALUE: b"x"}
            )  # fmt: skip
        first = token.write_head(name, {"size": 1}, after=None)
        second = token.write_head(name, {"size": 2}, after=first)
        assert token.head(name) == second
        with pytest.raises(StateError, match="changed meanwhile"):
            token.write_head(name, {"size": 3}, after=first)
    with open_token(nss_uri("nss-release")) as token:  # a new session reads the same record
        assert token.head(name) == second


def test_a_key_made_by_another_tool_is_found_by_its_public_key_and_used_by_handle(nss_uri: Uri) -> None:
    label = new_label()
    with open_token(nss_uri("nss-approver-1"), rw=True) as token:
        public, _ = token._session.generate_keypair(
            KeyType.EC, id=b"\x01\x02", label=label, store=True, capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
            public_template={Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
            private_template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False},
        )  # fmt: skip
        by_label = token.key(label=label)
        by_id = token.key_by_key_id(by_label.key_id)
        assert by_id.key_id == key_id(by_label.public_key) and by_id.label == label
        verify_signature(by_id.public_key, b"y", by_id.sign(b"y"))
        assert public[Attribute.ID] == b"\x01\x02"  # vault did not rewrite another tool's CKA_ID


def test_a_module_that_needs_init_arguments_is_named() -> None:
    # in a fresh process: this one has NSS initialised through p11-kit already
    probe = f"from vault.token import load_module\ntry:\n load_module({NSS_LIB!r})\nexcept Exception as e:\n print(e)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "needs arguments at C_Initialize (NSS softoken does): load it through p11-kit's proxy" in out


NSS_LIB = next(
    (p for p in ("/usr/lib/x86_64-linux-gnu/libsoftokn3.so", "/usr/lib/aarch64-linux-gnu/libsoftokn3.so",
                 "/usr/lib64/libsoftokn3.so") if os.path.exists(p)),  # fmt: skip
    "/usr/lib/x86_64-linux-gnu/libsoftokn3.so",
)
