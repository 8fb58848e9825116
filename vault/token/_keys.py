"""Keys inside a token: generate, find, export public, sign, ECDH, wrap.

Private keys are generated inside the token, sensitive and non-extractable,
with CKA_ID set to the SHA-256 of their SubjectPublicKeyInfo so that the
key id vault prints is the id the token stores. The one exception is a key
generated ``backupable``: it is extractable only wrapped, and only under a
key the token trusts (CKA_WRAP_WITH_TRUSTED).

A key *found* on a token is held to the same rules as a key vault makes,
wherever it is found (:meth:`TokenSession.key` and the lookups built on it):
sensitive and always so, not extractable and never so, and generated on the
token (CKA_LOCAL), each checked where the module reports the attribute. A key
imported from software, or one that was extractable once, is refused with
the attribute that gives it away. Two callers widen this, by name: the root
key may be ``backupable``, and a root key vault itself ``unwrapped`` from a
backup onto a new token is not CKA_LOCAL by nature.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pkcs11
import pkcs11.exceptions as p11e
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import KDF, Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11.constants import DEFAULT
from pkcs11.util.ec import encode_named_curve_parameters

from vault.crypto import CURVES, Curve, curve_by_name, curve_of, spki_der, verify_signature
from vault.crypto import key_id as compute_key_id
from vault.errors import (
    InputError,
    KeyExistsError,
    KeyNotFoundError,
    KeyProtectionError,
    MechanismNotSupportedError,
    StateError,
    TokenOperationError,
)
from vault.token import _capabilities, _heads, _quirks
from vault.token._session import _text, module_profile, open_session, translate_errors
from vault.token._uri import Pkcs11Uri

MAX_LABEL = 32  # bytes: many tokens cut labels longer than this

_USAGE_CAPS = {
    "sign": MechanismFlag.SIGN | MechanismFlag.VERIFY,
    "derive": MechanismFlag.DERIVE,
}
_USAGE_ATTRIBUTES = {
    "sign": frozenset({Attribute.SIGN, Attribute.VERIFY}),
    "derive": frozenset({Attribute.DERIVE}),
}

_CLASS_NAMES = {
    ObjectClass.PRIVATE_KEY: "private",
    ObjectClass.PUBLIC_KEY: "public",
    ObjectClass.SECRET_KEY: "secret-key",
    ObjectClass.CERTIFICATE: "cert",
    ObjectClass.DATA: "data",
}


@dataclass(frozen=True)
class ObjectInfo:
    """What ``vault token keys`` shows of one object. Never key material."""

    label: str
    id: str  # CKA_ID, hex
    type: str  # private, public, secret-key, cert, data
    key_type: str | None  # EC, AES, ...
    key_id: str | None  # SHA-256 of the SPKI, for EC keys
    extractable: bool | None
    sensitive: bool | None


class TokenKey:
    """An EC key pair in a token: a :class:`vault.crypto.Signer` that also does ECDH.

    Get one from :meth:`TokenSession.generate_ec_key` or :meth:`TokenSession.key`;
    it is valid while its session is open.
    """

    def __init__(self, private: Any, public_key: ec.EllipticCurvePublicKey, label: str):
        self._private = private
        self._public_key = public_key
        self._curve = curve_of(public_key)
        self.label = label
        self._token_label = _text(private.session.token.label)
        self.template: str | None = None
        """Which of :func:`vault.token._quirks.template_ladder`'s templates made the key, if vault made it now."""

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The public half, as a ``cryptography`` key."""
        return self._public_key

    @property
    def key_id(self) -> str:
        """Hex SHA-256 of the SubjectPublicKeyInfo DER (also the CKA_ID)."""
        return hashlib.sha256(self.spki_der).hexdigest()

    @property
    def spki_der(self) -> bytes:
        """The public key as SubjectPublicKeyInfo DER."""
        return spki_der(self._public_key)

    @property
    def curve(self) -> Curve:
        """The key's curve."""
        return self._curve

    @property
    def backupable(self) -> bool:
        """Whether the key may leave its token wrapped under a trusted key (as a root key must, for backups)."""
        return bool(
            _quirks.read_bool(self._private, Attribute.EXTRACTABLE)
            and _quirks.read_bool(self._private, Attribute.WRAP_WITH_TRUSTED)
        )

    def sign(self, data: bytes) -> bytes:
        """Sign ``data`` in the token; returns a DER ECDSA signature.

        The digest is computed here and the token signs it with CKM_ECDSA,
        which every EC-capable token offers (many lack CKM_ECDSA_SHA256).
        """
        digest = hashlib.new(self._curve.hash().name, data).digest()
        return self.sign_digest(digest)

    def sign_digest(self, digest: bytes) -> bytes:
        """Sign a precomputed digest of the curve's hash; returns DER."""
        size = self._curve.hash().digest_size
        if len(digest) != size:
            raise InputError(f"digest must be {size} bytes for {self._curve.name}")
        if not hasattr(self._private, "sign"):  # python-pkcs11 gives a key only the methods its usage allows
            raise TokenOperationError(f"key '{self.label}' on token '{self._token_label}' is not a signing key")
        with translate_errors(f"signing with key '{self.label}'", self._token_label):
            raw = self._private.sign(digest, mechanism=Mechanism.ECDSA)
        n = self._curve.size
        if len(raw) != 2 * n:
            raise TokenOperationError(f"token returned a {len(raw)}-byte signature for {self._curve.name}")
        return encode_dss_signature(int.from_bytes(raw[:n], "big"), int.from_bytes(raw[n:], "big"))

    def ecdh(self, peer: ec.EllipticCurvePublicKey) -> bytes:
        """The ECDH shared secret (x coordinate) with ``peer``, computed in the token."""
        if not isinstance(peer.curve, self._curve.curve):
            raise InputError(f"peer key is on {peer.curve.name}, this key is {self._curve.name}")
        if not hasattr(self._private, "derive_key"):
            raise TokenOperationError(f"key '{self.label}' on token '{self._token_label}' is not a key-agreement key")
        point = peer.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)

        def derive(param_point: bytes) -> bytes:
            secret = self._private.derive_key(
                KeyType.GENERIC_SECRET,
                8 * self._curve.size,
                mechanism=Mechanism.ECDH1_DERIVE,
                mechanism_param=(KDF.NULL, None, param_point),
                store=False,
                template={Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True},
            )
            try:
                return bytes(secret[Attribute.VALUE])
            finally:
                with contextlib.suppress(p11e.PKCS11Error):
                    secret.destroy()

        with translate_errors(f"ECDH with key '{self.label}'", self._token_label):
            return _quirks.derive_with_fallback(derive, point)

    def __repr__(self) -> str:
        return f"TokenKey(label={self.label!r}, key_id={self.key_id[:16]}..., token={self._token_label!r})"


class TokenSession:
    """An open, logged-in session on one token. Use :func:`open_token`."""

    def __init__(self, session: pkcs11.Session, uri: Pkcs11Uri):
        self._session = session
        self.uri = uri
        self.label = _text(session.token.label)
        self.serial = _text(session.token.serial)
        self.profile = module_profile(session.token, uri)
        """What vault knows of this token's module beyond what it reports (:mod:`vault.token._quirks`)."""

    # --- finding ------------------------------------------------------------

    def _find(self, attrs: dict[Attribute, Any]) -> list[pkcs11.Object]:
        with translate_errors("searching for objects", self.label):
            return list(self._session.get_objects(attrs))

    def _private_keys(self, *, label: str | None = None, id: bytes | None = None) -> list[pkcs11.Object]:
        attrs: dict[Attribute, Any] = {Attribute.CLASS: ObjectClass.PRIVATE_KEY}
        if label is not None:
            attrs[Attribute.LABEL] = label
        if id is not None:
            attrs[Attribute.ID] = id
        return self._find(attrs)

    def key(
        self,
        label: str | None = None,
        id: bytes | None = None,
        *,
        backupable: bool = False,
        unwrapped: bool = False,
    ) -> TokenKey:
        """The EC key pair with this label and/or CKA_ID, checked like a key vault makes.

        Args:
            backupable: accept a key that is extractable, but only wrapped
                under a key the token trusts (CKA_WRAP_WITH_TRUSTED): the
                root key's backup path, and nothing else.
            unwrapped: accept a key that was not generated on this token
                (CKA_LOCAL, CKA_ALWAYS_SENSITIVE and CKA_NEVER_EXTRACTABLE
                false): a root key vault unwrapped from its backup in a
                recovery, and nothing else.

        Raises:
            KeyNotFoundError: no such key, or more than one matches.
            KeyProtectionError: the key could leave the token, or was not
                made inside it; the message names the attribute.
        """
        private, what = self._one_private(label, id)
        if private[Attribute.KEY_TYPE] != KeyType.EC:
            raise KeyNotFoundError(f"the key {what} on token '{self.label}' is not an EC key")
        found_label = _text(private[Attribute.LABEL])
        self._check_protection(private, found_label, backupable=backupable, unwrapped=unwrapped)
        public_key = self._public_key_for(private, what)
        return TokenKey(private, public_key, found_label)

    def _one_private(self, label: str | None, id: bytes | None) -> tuple[pkcs11.Object, str]:
        """The one private key with this label and/or id, and how to name it in a message."""
        if label is None and id is None:
            raise KeyNotFoundError("name a key: the URI needs object=LABEL or id=...")
        what = f"labelled '{label}'" if label is not None else f"with id {id.hex() if id else ''}"
        found = self._private_keys(label=label, id=id)
        if not found:
            raise KeyNotFoundError(f"no private key {what} on token '{self.label}'")
        if len(found) > 1:
            raise KeyNotFoundError(f"{len(found)} private keys {what} on token '{self.label}'; name it by id")
        return found[0], what

    def key_for(self, uri: Pkcs11Uri) -> TokenKey:
        """The key ``uri`` names with ``object=`` and/or ``id=`` (checked as :meth:`key` does)."""
        if uri.type not in (None, "private"):
            raise InputError(f"the URI names type={uri.type}; a signing key needs type=private or none")
        return self.key(label=uri.object, id=uri.id)

    def key_by_public(
        self, public_key: ec.EllipticCurvePublicKey, *, backupable: bool = False, unwrapped: bool = False
    ) -> TokenKey:
        """The key pair whose public half is ``public_key`` (checked as :meth:`key` does); see :meth:`key_by_key_id`."""
        return self.key_by_key_id(compute_key_id(public_key), backupable=backupable, unwrapped=unwrapped)

    def key_by_key_id(self, key_id: str, *, backupable: bool = False, unwrapped: bool = False) -> TokenKey:
        """The key pair whose key id (SHA-256 of its SubjectPublicKeyInfo) is ``key_id``.

        vault stores that id as the key's CKA_ID. A key another tool made
        (pkcs11-tool, a PIV card's own generation) has some other CKA_ID: it
        is then found by its public key object, paired with the one private
        key of that public key's CKA_ID, checked like vault's own keys, and
        proven to be the pair by a signature (or an ECDH) in the token. The
        key that comes back is that private key's handle, used from then on.

        Raises:
            KeyNotFoundError: no key pair on the token has this key id.
        """
        raw = bytes.fromhex(key_id)
        if self._private_keys(id=raw):
            return self.key(id=raw, backupable=backupable, unwrapped=unwrapped)
        for public in self._find({Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.KEY_TYPE: KeyType.EC}):
            try:
                curve = _curve_from_params(public[Attribute.EC_PARAMS])
                point = _quirks.ec_point_from_attribute(bytes(public[Attribute.EC_POINT]), curve)
                public_key = ec.EllipticCurvePublicKey.from_encoded_point(curve.curve(), point)
            except (InputError, TokenOperationError, ValueError, p11e.PKCS11Error):
                continue
            if compute_key_id(public_key) != key_id:
                continue
            pair_id = bytes(public[Attribute.ID]) if _has(public, Attribute.ID) else b""
            privates = self._private_keys(id=pair_id) if pair_id else []
            if len(privates) != 1:
                raise KeyNotFoundError(
                    f"the key {key_id[:16]}... on token '{self.label}' has a public key but "
                    f"{len(privates)} private keys with its CKA_ID {pair_id.hex() or '(none)'}"
                )
            private = privates[0]
            found_label = _text(private[Attribute.LABEL]) if _has(private, Attribute.LABEL) else pair_id.hex()
            if private[Attribute.KEY_TYPE] != KeyType.EC:
                raise KeyNotFoundError(f"the key {key_id[:16]}... on token '{self.label}' is not an EC key")
            self._check_protection(private, found_label, backupable=backupable, unwrapped=unwrapped)
            key = TokenKey(private, public_key, found_label)
            _check_pair(key, "sign" if _quirks.read_bool(private, Attribute.SIGN) else "derive")
            return key
        raise KeyNotFoundError(f"no private key with key id {key_id[:16]}... on token '{self.label}'")

    def _public_key_for(self, private: pkcs11.Object, what: str) -> ec.EllipticCurvePublicKey:
        params = private[Attribute.EC_PARAMS]
        curve = _curve_from_params(params)
        publics = self._find(
            {
                Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                Attribute.KEY_TYPE: KeyType.EC,
                Attribute.ID: private[Attribute.ID],
            }
        )
        if not publics:
            raise KeyNotFoundError(f"the public half of the key {what} is missing on token '{self.label}'")
        point = _quirks.ec_point_from_attribute(bytes(publics[0][Attribute.EC_POINT]), curve)
        return ec.EllipticCurvePublicKey.from_encoded_point(curve.curve(), point)

    # --- generating ---------------------------------------------------------

    def generate_ec_key(
        self, label: str, *, curve: str = "P-256", usage: str = "sign", backupable: bool = False
    ) -> TokenKey:
        """Generate an EC key pair inside the token and store it.

        Args:
            label: CKA_LABEL; must not exist on the token yet.
            curve: ``P-256`` (baseline) or ``P-384``.
            usage: ``sign`` (ECDSA) or ``derive`` (ECDH, for decryption).
            backupable: if true the private key may leave the token wrapped
                under a trusted key (backup ceremonies); never in clear.

        Raises:
            KeyExistsError: a key with ``label`` exists.
            InputError: unknown curve or usage, label too long.
            TokenOperationError: the token made a key that is not sensitive,
                or extractable when it must not be (it is destroyed).
        """
        spec = curve_by_name(curve)
        caps = _USAGE_CAPS.get(usage)
        if caps is None:
            raise InputError(f"unknown key usage '{usage}' (sign or derive)")
        self._check_new_label(label)
        if backupable and not self.profile.enforces_wrap_with_trusted:
            raise MechanismNotSupportedError(
                f"token '{self.label}' ({self.profile.name}) does not enforce CKA_WRAP_WITH_TRUSTED, "
                "so a backupable key could leave it under any key; vault makes none there"
            )
        temporary_id = self._session.generate_random(128)
        private_template: dict[Attribute, Any] = {
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: backupable,
        }
        if backupable:
            private_template[Attribute.WRAP_WITH_TRUSTED] = True
        public_template: dict[Attribute, Any] = {
            Attribute.TOKEN: True,
            Attribute.EC_PARAMS: encode_named_curve_parameters(spec.oid_name),
        }

        def generate(
            private_tpl: dict[Attribute, Any], public_tpl: dict[Attribute, Any]
        ) -> tuple[pkcs11.PublicKey, pkcs11.PrivateKey]:
            return self._session.generate_keypair(
                KeyType.EC,
                id=temporary_id,
                label=label,
                store=True,
                capabilities=caps,
                public_template=public_tpl,
                private_template=private_tpl,
            )

        with translate_errors(f"generating key '{label}'", self.label):
            (public, private), template = _quirks.generate_with_fallback(
                generate,
                private_template,
                public_template,
                _USAGE_ATTRIBUTES[usage],
                strict=self.profile.strict_key_template,
            )
            try:
                fault = _protection_fault(private, self.profile, backupable=backupable, unwrapped=False)
                if fault is not None:
                    raise TokenOperationError(f"token '{self.label}' made key '{label}' that {fault}; destroyed it")
                point = _quirks.ec_point_from_attribute(bytes(public[Attribute.EC_POINT]), spec)
                public_key = ec.EllipticCurvePublicKey.from_encoded_point(spec.curve(), point)
                key = TokenKey(private, public_key, label)
                key.template = template
                stable_id = bytes.fromhex(key.key_id)
                private[Attribute.ID] = stable_id
                public[Attribute.ID] = stable_id
            except BaseException:
                for obj in (private, public):
                    with contextlib.suppress(p11e.PKCS11Error):
                        obj.destroy()
                raise
        return key

    def _check_new_label(self, label: str) -> None:
        if not label or len(label.encode()) > MAX_LABEL:
            raise InputError(f"a key label must be 1 to {MAX_LABEL} bytes")
        if self._find({Attribute.LABEL: label}):
            raise KeyExistsError(f"a key labelled '{label}' already exists on token '{self.label}'")

    def _check_protection(self, private: pkcs11.Object, label: str, *, backupable: bool, unwrapped: bool) -> None:
        """Refuse a found key that could leave the token or was not made in it (see :func:`_protection_fault`)."""
        fault = _protection_fault(private, self.profile, backupable=backupable, unwrapped=unwrapped)
        if fault is not None:
            raise KeyProtectionError(f"key '{label}' on token '{self.label}' {fault}")
        if _quirks.read_bool(private, Attribute.ALWAYS_AUTHENTICATE):
            # PKCS#11 wants the PIN again between C_SignInit and C_Sign; python-pkcs11 makes both in one
            # call, so such a key would fail at its first signature, halfway through a ceremony.
            raise MechanismNotSupportedError(
                f"key '{label}' on token '{self.label}' asks for its PIN again at every use "
                "(CKA_ALWAYS_AUTHENTICATE, as PIV slot 9c does), which vault cannot give: "
                "use a key without it, such as PIV slot 9a (id=%01, 'PIV AUTH key'); see docs/piv.md"
            )

    def delete_key(self, label: str | None = None, id: bytes | None = None) -> ObjectInfo:
        """Destroy the key pair with this label and/or CKA_ID (private half and public half), for good.

        The key is not checked first: removing a key vault would refuse, or
        one a stopped ceremony left, is what this is for. A token that holds
        a root (a ``root-policy`` head record) is refused: its keys go only
        with the token.

        Returns:
            What the private half was (label, key id), for the caller to say.

        Raises:
            KeyNotFoundError: no such private key, or more than one matches.
            StateError: the token holds a root.
        """
        private, what = self._one_private(label, id)
        root = self.head("root-policy")
        if root is not None:
            raise StateError(
                f"token '{self.label}' holds a root that signed trust policy v{root.value.get('version')}; "
                "vault deletes no key from it"
            )
        info = self._describe(private)
        raw_id = bytes(private[Attribute.ID]) if _has(private, Attribute.ID) else None
        publics = self._find({Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.ID: raw_id}) if raw_id else []
        with translate_errors(f"deleting key {what}", self.label):
            private.destroy()
            for public in publics:
                public.destroy()
        return info

    def import_kek(self, value: bytes, label: str, *, trusted: bool = False) -> pkcs11.SecretKey:
        """Store the AES key ``value`` on the token as a key-encryption key.

        Backups use a KEK that exists whole only for the moment of wrapping
        (its value is split among custodians) and only on the token, never on
        disk. ``trusted`` marks it CKA_TRUSTED so that it may wrap keys made
        ``backupable``: tokens accept that only in a security officer's
        session, and the key is then public (CKA_PRIVATE false) so that the
        user's session can use it. Destroy it with :meth:`destroy` once done.
        """
        if len(value) not in (16, 24, 32):
            raise InputError("an AES key-encryption key must be 128, 192 or 256 bits")
        self._check_new_label(label)
        template: dict[Attribute, Any] = {
            Attribute.CLASS: ObjectClass.SECRET_KEY,
            Attribute.KEY_TYPE: KeyType.AES,
            Attribute.TOKEN: True,
            Attribute.PRIVATE: not trusted,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.WRAP: True,
            Attribute.UNWRAP: True,
            Attribute.LABEL: label,
            Attribute.VALUE: value,
        }
        if trusted:
            template[Attribute.TRUSTED] = True
        with translate_errors(f"storing key-encryption key '{label}'", self.label):
            key = self._session.create_object(template)
        assert isinstance(key, pkcs11.SecretKey)
        return key

    def destroy(self, obj: pkcs11.Object) -> None:
        """Destroy one object on the token."""
        with translate_errors("destroying an object", self.label):
            obj.destroy()

    def aes_key(self, label: str) -> pkcs11.SecretKey:
        """The AES key with this label."""
        found = self._find({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: label})
        if len(found) != 1:
            raise KeyNotFoundError(f"no single AES key labelled '{label}' on token '{self.label}'")
        key = found[0]
        assert isinstance(key, pkcs11.SecretKey)
        return key

    def wrap(self, kek: Any, key: TokenKey) -> bytes:
        """The private half of ``key`` encrypted under ``kek`` (AES key wrap with padding, RFC 5649)."""
        with translate_errors(f"wrapping key '{key.label}'", self.label):
            return bytes(kek.wrap_key(key._private, mechanism=Mechanism.AES_KEY_WRAP_PAD))

    def unwrap_ec_key(
        self,
        kek: Any,
        wrapped: bytes,
        label: str,
        public_key: ec.EllipticCurvePublicKey,
        *,
        usage: str = "sign",
        backupable: bool = True,
    ) -> TokenKey:
        """Import a wrapped private key under ``kek`` and store it with its public half.

        The public key is given (it is public, from a certificate or backup
        file); the result is checked by signing and verifying in software so
        a wrong or corrupt blob never lands as a key.
        """
        if usage not in _USAGE_CAPS:
            raise InputError(f"unknown key usage '{usage}' (sign or derive)")
        self._check_new_label(label)
        spec = curve_of(public_key)
        stable_id = bytes.fromhex(compute_key_id(public_key))
        template: dict[Attribute, Any] = {
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: backupable,
            Attribute.SIGN: usage == "sign",
            Attribute.DERIVE: usage == "derive",
            # python-pkcs11 fills every capability; a private EC key has only these two.
            Attribute.ENCRYPT: DEFAULT,
            Attribute.DECRYPT: DEFAULT,
            Attribute.VERIFY: DEFAULT,
            Attribute.WRAP: DEFAULT,
            Attribute.UNWRAP: DEFAULT,
        }
        if backupable:
            template[Attribute.WRAP_WITH_TRUSTED] = True
        with translate_errors(f"unwrapping key '{label}'", self.label):
            private = kek.unwrap_key(
                ObjectClass.PRIVATE_KEY,
                KeyType.EC,
                wrapped,
                id=stable_id,
                label=label,
                store=True,
                mechanism=Mechanism.AES_KEY_WRAP_PAD,
                template=template,
            )
            point = public_key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
            public = self._session.create_object(
                {
                    Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                    Attribute.KEY_TYPE: KeyType.EC,
                    Attribute.TOKEN: True,
                    Attribute.VERIFY: True,
                    Attribute.LABEL: label,
                    Attribute.ID: stable_id,
                    Attribute.EC_PARAMS: encode_named_curve_parameters(spec.oid_name),
                    Attribute.EC_POINT: _quirks.wrap_ec_point(point),
                }
            )
        key = TokenKey(private, public_key, label)
        try:
            _check_pair(key, usage)
        except BaseException:
            for obj in (private, public):
                with contextlib.suppress(p11e.PKCS11Error):
                    obj.destroy()
            raise
        return key

    # --- listing ------------------------------------------------------------

    def objects(self) -> list[ObjectInfo]:
        """Every object the session can see, without key material."""
        infos = []
        for obj in self._find({}):
            infos.append(self._describe(obj))
        return sorted(infos, key=lambda i: (i.label, i.type))

    def _describe(self, obj: pkcs11.Object) -> ObjectInfo:
        cls = obj[Attribute.CLASS]
        type_name = _CLASS_NAMES.get(cls, str(cls))
        key_type = None
        key_id = None
        if cls in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY, ObjectClass.SECRET_KEY):
            kt = obj[Attribute.KEY_TYPE]
            key_type = kt.name if isinstance(kt, KeyType) else str(kt)
        if cls == ObjectClass.PUBLIC_KEY and key_type == "EC":
            with contextlib.suppress(TokenOperationError, InputError):
                curve = _curve_from_params(obj[Attribute.EC_PARAMS])
                point = _quirks.ec_point_from_attribute(bytes(obj[Attribute.EC_POINT]), curve)
                key_id = compute_key_id(ec.EllipticCurvePublicKey.from_encoded_point(curve.curve(), point))
        raw_id = bytes(obj[Attribute.ID]) if _has(obj, Attribute.ID) else b""
        if cls == ObjectClass.PRIVATE_KEY and key_type == "EC" and len(raw_id) == 32:
            key_id = raw_id.hex()  # vault sets CKA_ID to the key id; the public half confirms it
        is_key = cls in (ObjectClass.PRIVATE_KEY, ObjectClass.SECRET_KEY)
        return ObjectInfo(
            label=_text(obj[Attribute.LABEL]) if _has(obj, Attribute.LABEL) else "",
            id=raw_id.hex(),
            type=type_name,
            key_type=key_type,
            key_id=key_id,
            extractable=_quirks.read_bool(obj, Attribute.EXTRACTABLE) if is_key else None,
            sensitive=_quirks.read_bool(obj, Attribute.SENSITIVE) if is_key else None,
        )

    # --- capabilities -------------------------------------------------------

    def capabilities(self) -> _capabilities.Capabilities:
        """What this token offers vault (:mod:`vault.token._capabilities`); changes nothing on it."""
        with translate_errors("asking the token what it can do", self.label):
            return _capabilities.capabilities_of(self._session.token, self.profile)

    # --- head records -------------------------------------------------------

    def head(self, name: str) -> _heads.Head | None:
        """The head record ``name`` this token holds, if any (see :mod:`vault.token._heads`)."""
        return _heads.read_head(self._session, name, self.label)

    def write_head(self, name: str, value: dict[str, Any], *, after: _heads.Head | None) -> _heads.Head:
        """Advance the head record ``name`` from ``after`` (what the caller read) to ``value``.

        The session must be read-write.
        """
        return _heads.write_head(self._session, name, value, self.label, after=after)

    def change_pin(self, old_pin: str, new_pin: str) -> None:
        """Replace the logged-in user's PIN (C_SetPIN). Neither PIN is shown or kept."""
        with translate_errors("changing the PIN", self.label):
            self._session.set_pin(old_pin, new_pin)

    def generate_random(self, nbytes: int) -> bytes:
        """``nbytes`` from the token's random generator."""
        with translate_errors("reading random bytes", self.label):
            return bytes(self._session.generate_random(8 * nbytes))


_LEAVES = "vault only uses keys that can never leave their token"


def _protection_fault(
    private: pkcs11.Object, profile: _quirks.ModuleProfile, *, backupable: bool, unwrapped: bool
) -> str | None:
    """What makes ``private`` unfit for vault, as the end of a sentence naming the attribute; ``None`` if nothing.

    An attribute the module does not report (``None``) is not held against
    the key; one it reports must say the key never left, and never could.
    On a module whose CKA_LOCAL is false even for keys it generated (NSS
    softoken, see :mod:`vault.token._quirks`), CKA_LOCAL is not read; its
    CKA_ALWAYS_SENSITIVE and CKA_NEVER_EXTRACTABLE, which it does keep, must
    then be reported and true.
    """

    def flag(attribute: Attribute) -> bool | None:
        return _quirks.read_bool(private, attribute)

    if flag(Attribute.EXTRACTABLE):
        if not backupable:
            return f"is extractable (CKA_EXTRACTABLE); {_LEAVES}"
        if flag(Attribute.WRAP_WITH_TRUSTED) is not True:
            return (
                "is extractable (CKA_EXTRACTABLE) without CKA_WRAP_WITH_TRUSTED; "
                "vault only uses keys that can leave their token wrapped under a trusted key, or not at all"
            )
        if not profile.enforces_wrap_with_trusted:
            return (
                f"is extractable (CKA_EXTRACTABLE) and {profile.name} does not enforce CKA_WRAP_WITH_TRUSTED; {_LEAVES}"
            )
    if flag(Attribute.SENSITIVE) is not True:
        return f"is not sensitive (CKA_SENSITIVE false); {_LEAVES}"
    if unwrapped:
        return None  # a key unwrapped onto the token was made elsewhere, and not always sensitive there
    if profile.local_reliable and flag(Attribute.LOCAL) is False:
        return "was not generated on the token (CKA_LOCAL false); vault only uses keys made inside their token"
    for attribute, name, what in (
        (Attribute.ALWAYS_SENSITIVE, "CKA_ALWAYS_SENSITIVE", "was not always sensitive"),
        (Attribute.NEVER_EXTRACTABLE, "CKA_NEVER_EXTRACTABLE", "was extractable once"),
    ):
        if backupable and attribute is Attribute.NEVER_EXTRACTABLE:
            continue
        value = flag(attribute)
        if value is False:
            return f"{what} ({name} false); {_LEAVES}"
        if value is None and not profile.local_reliable:
            return (
                f"may have been made outside it ({name} not reported, and {profile.name}'s CKA_LOCAL says nothing); "
                f"{_LEAVES}"
            )
    return None


def _check_pair(key: TokenKey, usage: str) -> None:
    """Prove the private half in the token belongs to ``key.public_key``."""
    if usage == "sign":
        verify_signature(key.public_key, b"vault key check", key.sign(b"vault key check"))
        return
    probe = ec.generate_private_key(key.curve.curve())
    if key.ecdh(probe.public_key()) != probe.exchange(ec.ECDH(), key.public_key):
        raise TokenOperationError(f"the key '{key.label}' does not match its public key")


def _has(obj: pkcs11.Object, attribute: Attribute) -> bool:
    try:
        obj[attribute]
    except (p11e.AttributeTypeInvalid, p11e.AttributeSensitive):
        return False
    return True


def _curve_from_params(params: bytes) -> Curve:
    for spec in CURVES.values():
        if bytes(params) == encode_named_curve_parameters(spec.oid_name):
            return spec
    raise InputError("key is on a curve vault does not support")


@contextlib.contextmanager
def open_token(uri: Pkcs11Uri, *, rw: bool = False, so: bool = False) -> Iterator[TokenSession]:
    """Open the token ``uri`` names, logged in; yields a :class:`TokenSession`.

    With ``so`` the session is the security officer's and the URI's PIN is
    the SO PIN: needed only to mark a key-encryption key trusted.

    Example:
        ``with open_token(parse_uri("pkcs11:token=vault-root?pin-source=file:pin")) as t: t.key("root")``
    """
    with open_session(uri, rw=rw, so=so) as session:
        yield TokenSession(session, uri)
