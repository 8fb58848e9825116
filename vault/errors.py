"""The one exception tree of vault.

Every error vault raises on purpose is a :class:`VaultError`. Each class
carries a one-line diagnosis meant for people; the CLI prints ``str(error)``
and exits non-zero, and shows the traceback only with ``--verbose``.

Three branches sit under the root:

- :class:`TokenError` — the PKCS#11 module, token, PIN, key or mechanism
  could not be used;
- :class:`InputError` — something given to vault is malformed (a URI, a file,
  a YAML document);
- :class:`VerificationError` — something well-formed failed a check
  (a signature, a threshold, a count).

Example:
    >>> from vault.errors import KeyNotFoundError, TokenError, VaultError
    >>> err = KeyNotFoundError("no key labelled 'root' on token 'vault-root'")
    >>> isinstance(err, TokenError) and isinstance(err, VaultError)
    True
    >>> str(err)
    "no key labelled 'root' on token 'vault-root'"
"""

from __future__ import annotations

__all__ = [
    "InputError",
    "KeyExistsError",
    "KeyNotFoundError",
    "KeyProtectionError",
    "MechanismNotSupportedError",
    "ModuleLoadError",
    "PinIncorrectError",
    "PinLockedError",
    "PinSourceError",
    "SignatureError",
    "TokenError",
    "TokenNotFoundError",
    "TokenOperationError",
    "UriError",
    "VaultError",
    "VerificationError",
    "ThresholdError",
    "PolicyError",
    "ProvenanceError",
    "TranscriptError",
    "FormatError",
    "ScriptError",
    "ShareError",
    "CertificateError",
    "LintError",
    "DecryptionError",
    "RollbackError",
    "ValidityError",
    "NotRecipientError",
    "AllowlistError",
    "AllocationError",
    "BundleClosedError",
    "IdentityError",
    "LabelMismatchError",
    "AlreadyProvisionedError",
    "CloneError",
    "ClockError",
    "LogError",
    "ProofError",
    "DeviceError",
    "DeviceTimeoutError",
    "LabelError",
    "AdapterError",
    "StateError",
]


class VaultError(Exception):
    """Root of every error vault raises on purpose.

    ``str(error)`` is a single line that says what is wrong in words a user
    can act on.
    """


# --- token branch -----------------------------------------------------------


class TokenError(VaultError):
    """A PKCS#11 module, token, key or mechanism could not be used."""


class ModuleLoadError(TokenError):
    """The PKCS#11 module (shared library) is missing or cannot be loaded."""


class TokenNotFoundError(TokenError):
    """No token matches the URI (label, serial, manufacturer, model)."""


class PinIncorrectError(TokenError):
    """The token refused the PIN."""


class PinLockedError(TokenError):
    """The token's user PIN is locked after too many wrong tries."""


class KeyNotFoundError(TokenError):
    """No key on the token matches the URI."""


class KeyExistsError(TokenError):
    """A key with that label already exists; vault never makes a second."""


class KeyProtectionError(TokenError):
    """A key found on a token could leave it (extractable, not sensitive) or was not made inside it."""


class MechanismNotSupportedError(TokenError):
    """The token does not offer the mechanism the operation needs."""


class TokenOperationError(TokenError):
    """The token failed an operation for another reason it reported."""


# --- input branch -----------------------------------------------------------


class InputError(VaultError):
    """Something given to vault is malformed or out of bounds."""


class UriError(InputError):
    """A PKCS#11 URI does not follow RFC 7512 or names something vault refuses."""


class PinSourceError(InputError):
    """The PIN could not be read from the place the URI names."""


class FormatError(InputError):
    """A document (envelope, statement, bundle, transcript) is not well-formed or too large."""


class ScriptError(InputError):
    """A ceremony script, release description or policy YAML is wrong; names the field and line."""


class ShareError(InputError):
    """A custodian share is mistyped, altered, foreign, repeated, or too few were given."""


class CertificateError(InputError):
    """A certificate request or profile breaks a limit (validity, curve, issuer)."""


class LintError(CertificateError):
    """A to-be-signed certificate failed the RFC 5280 lint; it was not signed."""


# --- verification branch ----------------------------------------------------


class VerificationError(VaultError):
    """A well-formed input failed a check."""


class SignatureError(VerificationError):
    """A signature does not verify under the key it claims."""


class ThresholdError(VerificationError):
    """Fewer distinct authorised keys signed than the threshold needs."""


class PolicyError(VerificationError):
    """A trust policy is unsigned, expired, rolled back, or not the next version."""


class TranscriptError(VerificationError):
    """A ceremony transcript was altered, reordered, truncated or is unsigned."""


class DecryptionError(VerificationError):
    """A sealed message does not open: wrong key, wrong info/aad, or altered."""


class ProvenanceError(VerificationError):
    """An image's Sigstore bundle does not prove that the expected identity built it."""


class RollbackError(PolicyError):
    """A policy version or a release's security counter is lower than one seen before."""


class ValidityError(PolicyError):
    """A policy or release is used outside its validity window (expired, or not valid yet)."""


class NotRecipientError(PolicyError):
    """The bundle is not addressed to this station, or allocates it nothing."""


class AllowlistError(VerificationError):
    """An image's bytes do not match the digest or length the release statement allows."""


class AllocationError(VerificationError):
    """The station's allocation for the release is used up: no unit is left to provision."""


class BundleClosedError(AllocationError):
    """The station closed this release (signed its close-out): it provisions no further unit of it."""


class IdentityError(VerificationError):
    """A device's identity does not hold: its label, its hardware id or its key."""


class LabelMismatchError(IdentityError):
    """The scanned label serial does not belong to the device's hardware id."""


class AlreadyProvisionedError(IdentityError):
    """The hardware id was provisioned before and the call did not declare a rework."""


class CloneError(IdentityError):
    """A second device claims a known identity (hardware id or device key) with other key material."""


class ClockError(VerificationError):
    """The station clock is earlier than its last log entry: it was set back, or is broken."""


class LogError(VerificationError):
    """A log, checkpoint or proof does not verify: truncated, rewritten or forked."""


class ProofError(VerificationError):
    """A device proof does not show that an audited log holds this device."""


# --- device and state --------------------------------------------------------


class DeviceError(VaultError):
    """A device on a fixture failed a provisioning step (programming, read-back, key generation, lock)."""


class DeviceTimeoutError(DeviceError):
    """A device stopped answering: a step did not finish within its timeout (the adapter gave up on it)."""


class LabelError(VaultError):
    """A unit's label could not be made or printed (its manifest is not affected: the unit stays good)."""


class AdapterError(InputError):
    """A device adapter is unknown, or its options in a station configuration are wrong.

    ``field`` is the option's path inside the fixture's ``options`` (such as
    ``steps.program.run[2]``), so a configuration loader can name its line.
    """

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class StateError(InputError):
    """The station's state folder belongs to another station or root, or is damaged."""
