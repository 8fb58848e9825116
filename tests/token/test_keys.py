"""Keys inside real SoftHSM2 tokens: protection, signing, ECDH, ids, wrap and recovery."""

from __future__ import annotations

import os
from collections.abc import Callable

import pkcs11
import pkcs11.exceptions as p11e
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11.util.ec import encode_named_curve_parameters

from tests.helpers import import_software_key
from vault.crypto import key_id, verify_signature
from vault.errors import (
    InputError,
    KeyExistsError,
    KeyNotFoundError,
    KeyProtectionError,
    SignatureError,
    TokenOperationError,
)
from vault.token import Pkcs11Uri, open_token

TokenUri = Callable[..., Pkcs11Uri]


def _raw_private(token_session: object, label: str) -> pkcs11.PrivateKey:
    session = token_session._session  # type: ignore[attr-defined]
    return session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=label)


@pytest.mark.parametrize("usage", ["sign", "derive"])
def test_generated_private_key_is_sensitive_non_extractable_and_unreadable(
    token_uri: TokenUri, label: str, usage: str
) -> None:
    with open_token(token_uri("vault-root"), rw=True) as token:
        token.generate_ec_key(label, usage=usage)
        private = _raw_private(token, label)
        assert private[Attribute.SENSITIVE] is True
        assert private[Attribute.EXTRACTABLE] is False
        assert private[Attribute.ALWAYS_SENSITIVE] is True
        assert private[Attribute.NEVER_EXTRACTABLE] is True
        with pytest.raises(p11e.AttributeSensitive):
            private[Attribute.VALUE]
        info = {(o.label, o.type): o for o in token.objects()}[(label, "private")]
        assert (info.extractable, info.sensitive) == (False, True)


def test_token_signature_verifies_with_cryptography(token_uri: TokenUri, label: str) -> None:
    with open_token(token_uri("vault-root"), rw=True) as token:
        key = token.generate_ec_key(label)
        signature = key.sign(b"firmware statement")
    key.public_key.verify(signature, b"firmware statement", ec.ECDSA(key.curve.hash()))
    with pytest.raises(SignatureError):
        verify_signature(key.public_key, b"another statement", signature)


def test_p384_key_signs_with_sha384(token_uri: TokenUri, label: str) -> None:
    with open_token(token_uri("vault-root"), rw=True) as token:
        key = token.generate_ec_key(label, curve="P-384")
        signature = key.sign(b"data")
    assert isinstance(key.public_key.curve, ec.SECP384R1)
    verify_signature(key.public_key, b"data", signature)


def test_ecdh_in_token_equals_software(token_uri: TokenUri, label: str) -> None:
    peer = ec.generate_private_key(ec.SECP256R1())
    with open_token(token_uri("vault-station-1"), rw=True) as token:
        key = token.generate_ec_key(label, usage="derive")
        shared = key.ecdh(peer.public_key())
    assert shared == peer.exchange(ec.ECDH(), key.public_key)
    assert len(shared) == 32


def test_ecdh_refuses_a_peer_on_another_curve(token_uri: TokenUri, label: str) -> None:
    with open_token(token_uri("vault-station-1"), rw=True) as token:
        key = token.generate_ec_key(label, usage="derive")
        with pytest.raises(InputError, match="secp384r1"):
            key.ecdh(ec.generate_private_key(ec.SECP384R1()).public_key())


def test_key_id_is_the_cka_id_and_finds_the_key_from_its_public_key(token_uri: TokenUri, label: str) -> None:
    with open_token(token_uri("vault-root"), rw=True) as token:
        key = token.generate_ec_key(label)
        assert key.key_id == key_id(key.public_key)
        assert _raw_private(token, label)[Attribute.ID] == bytes.fromhex(key.key_id)
        again = token.key_by_public(key.public_key)
        assert again.label == label
    # a new session (and so a new process later) finds the same id
    with open_token(token_uri("vault-root")) as token:
        assert token.key(label=label).key_id == key.key_id


def test_second_key_with_an_existing_label_is_refused(token_uri: TokenUri, label: str) -> None:
    with open_token(token_uri("vault-root"), rw=True) as token:
        first = token.generate_ec_key(label)
        with pytest.raises(KeyExistsError, match=f"'{label}' already exists on token 'vault-root'"):
            token.generate_ec_key(label)
        assert [o.type for o in token.objects() if o.label == label] == ["private", "public"]
        assert token.key(label=label).key_id == first.key_id


def test_missing_key_and_unknown_curve_are_clear_errors(token_uri: TokenUri, label: str) -> None:
    with open_token(token_uri("vault-root"), rw=True) as token:
        with pytest.raises(KeyNotFoundError, match=f"no private key labelled '{label}' on token 'vault-root'"):
            token.key(label=label)
        with pytest.raises(InputError, match="unknown curve 'P-224'"):
            token.generate_ec_key(label, curve="P-224")


def test_backup_wraps_only_under_a_trusted_kek_and_recovers_onto_another_token(
    token_uri: TokenUri, softhsm_dir: object, label: str
) -> None:
    kek_value = os.urandom(32)
    so_uri = token_uri("vault-root")
    so_uri = Pkcs11Uri(token="vault-root", pin_source=so_uri.pin_source.replace(".pin", ".so-pin"))  # type: ignore[union-attr]

    with open_token(token_uri("vault-root"), rw=True) as token:
        original = token.generate_ec_key(label, backupable=True)
        private = _raw_private(token, label)
        assert private[Attribute.SENSITIVE] is True
        assert private[Attribute.WRAP_WITH_TRUSTED] is True
        with pytest.raises(p11e.AttributeSensitive):
            private[Attribute.VALUE]
        # a KEK the user made up is not trusted: the key refuses to leave under it
        rogue = token.import_kek(os.urandom(32), label + "-rogue")
        with pytest.raises(TokenOperationError, match="CKR_KEY_NOT_WRAPPABLE"):
            token.wrap(rogue, original)
        token.destroy(rogue)

    with open_token(so_uri, rw=True, so=True) as officer:
        officer.import_kek(kek_value, label + "-kek", trusted=True)
    with open_token(token_uri("vault-root"), rw=True) as token:
        kek = token.aes_key(label + "-kek")
        with pytest.raises(KeyProtectionError, match=r"is extractable \(CKA_EXTRACTABLE\)"):
            token.key(label=label)  # only the root key's lookups accept the backup path
        wrapped = token.wrap(kek, token.key(label=label, backupable=True))
        token.destroy(kek)
        assert not [o for o in token.objects() if o.label.startswith(label + "-")]
    assert len(wrapped) > 32

    with open_token(token_uri("vault-officer-3"), rw=True) as fresh:
        kek = fresh.import_kek(kek_value, label + "-kek")
        recovered = fresh.unwrap_ec_key(kek, wrapped, label, original.public_key)
        fresh.destroy(kek)
        assert recovered.key_id == original.key_id
        signature = recovered.sign(b"signed after recovery")
        # found again later, it was not made on this token: only a lookup that names that accepts it
        with pytest.raises(KeyProtectionError, match=r"was not generated on the token \(CKA_LOCAL false\)"):
            fresh.key(label=label, backupable=True)
        assert fresh.key_by_public(original.public_key, backupable=True, unwrapped=True).key_id == original.key_id
    verify_signature(original.public_key, b"signed after recovery", signature)


def test_unwrap_with_the_wrong_kek_lands_no_key(token_uri: TokenUri, label: str) -> None:
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    with open_token(token_uri("vault-officer-2"), rw=True) as token:
        kek = token.import_kek(os.urandom(32), label + "-kek")
        with pytest.raises(TokenOperationError):
            token.unwrap_ec_key(kek, os.urandom(48), label, public)
        token.destroy(kek)
        assert not [o for o in token.objects() if o.label == label]


def test_a_wrong_pin_leaves_no_session_that_blocks_the_security_officer(token_uri: TokenUri, label: str) -> None:
    from vault.errors import PinIncorrectError

    with pytest.raises(PinIncorrectError), open_token(Pkcs11Uri(token="vault-auditor", pin_value="not-the-pin")):
        pass
    so_pin = token_uri("vault-auditor").pin_source.replace(".pin", ".so-pin")  # type: ignore[union-attr]
    with open_token(Pkcs11Uri(token="vault-auditor", pin_source=so_pin), rw=True, so=True) as officer:
        kek = officer.import_kek(os.urandom(32), label, trusted=True)
        officer.destroy(kek)


def test_a_key_used_against_its_usage_gives_a_token_error(token_uri: TokenUri, label: str) -> None:
    peer = ec.generate_private_key(ec.SECP256R1()).public_key()
    with open_token(token_uri("vault-station-2"), rw=True) as token:
        derive = token.generate_ec_key(label + "-d", usage="derive")
        signing = token.generate_ec_key(label + "-s")
        with pytest.raises(TokenOperationError, match="not a signing key"):
            derive.sign(b"x")
        with pytest.raises(TokenOperationError, match="not a key-agreement key"):
            signing.ecdh(peer)


@pytest.mark.parametrize(
    ("attrs", "named"),
    [
        ({Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True}, r"is extractable \(CKA_EXTRACTABLE\)"),
        ({Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: False}, r"is not sensitive \(CKA_SENSITIVE false\)"),
        (
            {Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False},
            r"was not generated on the token \(CKA_LOCAL false\)",
        ),
    ],
    ids=["software-copy", "readable", "imported-then-locked"],
)
def test_a_key_imported_from_software_is_refused_wherever_it_is_found(
    fresh_tokens: Callable[[list[str]], dict[str, Pkcs11Uri]], attrs: dict[Attribute, bool], named: str
) -> None:
    uri = fresh_tokens(["imported"])["imported"]
    with open_token(uri, rw=True) as token:
        software = import_software_key(token, "station-signing", attrs)
        for lookup in (
            lambda: token.key(label="station-signing"),
            lambda: token.key_by_public(software.public_key()),
            lambda: token.key_for(uri.with_object("station-signing")),
            lambda: token.key(label="station-signing", backupable=True),  # the root's exception is not this one
        ):
            with pytest.raises(KeyProtectionError, match=f"^key 'station-signing' on token '{uri.token}' {named}"):
                lookup()
        info = {(o.label, o.type): o for o in token.objects()}[("station-signing", "private")]
        assert info.sensitive is attrs[Attribute.SENSITIVE]  # listing still shows it, for the officer to see


def test_a_key_made_extractable_and_locked_later_is_refused(
    fresh_tokens: Callable[[list[str]], dict[str, Pkcs11Uri]],
) -> None:
    uri = fresh_tokens(["once"])["once"]
    with open_token(uri, rw=True) as token:
        token._session.generate_keypair(
            KeyType.EC, id=b"once", label="once", store=True,
            public_template={Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
            private_template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: True},
        )  # fmt: skip
        private = _raw_private(token, "once")
        private[Attribute.EXTRACTABLE] = False  # a copy may have been wrapped out before
        with pytest.raises(KeyProtectionError, match=r"was extractable once \(CKA_NEVER_EXTRACTABLE false\)"):
            token.key(label="once")


def test_softhsm_offers_every_capability_a_ceremony_asks_for(token_uri: Callable[..., Pkcs11Uri]) -> None:
    from vault.token import Need
    from vault.token._quirks import SOFTHSM2

    with open_token(token_uri("vault-approver-3")) as token:
        caps = token.capabilities()
        assert token.profile is SOFTHSM2
    assert caps.has == frozenset(Need) and caps.data_objects
    caps.require(list(Need), role="root token of a backup")  # nothing missing: no error
