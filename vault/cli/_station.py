"""``vault station ...``: a factory station's own steps, such as asking to be enrolled."""

from __future__ import annotations

import datetime
import hashlib
from pathlib import Path

import click
from cryptography.hazmat.primitives.asymmetric import ec

from vault._files import write_new
from vault._words import readable_digest
from vault.cli._options import PKCS11_URI, echo_json, force_option, json_option
from vault.crypto import CURVES, verify_signature
from vault.errors import InputError, KeyNotFoundError, SignatureError, TokenError, TokenOperationError
from vault.token import Pkcs11Uri, TokenKey, TokenSession, open_token

SIGNING_LABEL = "station-signing"
ISSUING_CA_LABEL = "station-ca"
DECRYPTION_LABEL = "station-decrypt"

_PROBE = b"vault station key usage check"


@click.group()
def station() -> None:
    """Factory stations: the station's own keys and requests."""


@station.command("request")
@click.option("--token", "uri", type=PKCS11_URI, required=True, help="The station's token (URI with its PIN source).")
@click.option("--station-id", required=True, help="The station's id: lower-case letters, digits, hyphens.")
@click.option("--name", help="A name for people, such as 'Line 3, building B'.")
@click.option(
    "--curve", type=click.Choice(list(CURVES)), default="P-256", show_default=True, help="Curve of keys made now."
)
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Request file to write."
)
@force_option
@json_option
def request(
    uri: Pkcs11Uri, station_id: str, name: str | None, curve: str, output: Path, force: bool, as_json: bool
) -> None:
    """Write the station's enrolment request for the security officers.

    The station token's keys station-signing, station-ca (both sign) and
    station-decrypt (ECDH only) are used if they exist and made inside the
    token if not, so running this again asks for the same keys.
    """
    from vault.enrolment import build_enrolment_request, check_station_id, check_station_name

    check_station_id(station_id)
    check_station_name(name)
    if uri.object is not None or uri.id is not None or uri.type is not None:
        raise InputError(
            f"--token names the station's token, not a key: drop object=, id= and type= "
            f"(the keys are {SIGNING_LABEL}, {ISSUING_CA_LABEL} and {DECRYPTION_LABEL})"
        )
    with open_token(uri, rw=True) as session:
        signing, signing_new = _find_or_make(session, SIGNING_LABEL, curve, "sign")
        issuing_ca, issuing_ca_new = _find_or_make(session, ISSUING_CA_LABEL, curve, "sign")
        decryption, decryption_new = _find_or_make(session, DECRYPTION_LABEL, curve, "derive")
        _check_signing_key(session, signing)
        _check_signing_key(session, issuing_ca)
        _check_decryption_key(session, decryption)
        data = build_enrolment_request(
            station_id,
            signing=signing,
            issuing_ca=issuing_ca,
            decryption_public_key=decryption.public_key,
            name=name,
            now=datetime.datetime.now(datetime.UTC),
        )
    write_new(output, data, overwrite=force)
    digest = hashlib.sha256(data).hexdigest()  # EnrolmentRequest.digest, what the ceremony shows
    keys = [
        ("signing", "signing", signing, signing_new),
        ("issuing_ca", "issuing CA", issuing_ca, issuing_ca_new),
        ("decryption", "decryption", decryption, decryption_new),
    ]
    if as_json:
        echo_json(
            {
                "station_id": station_id,
                "request": str(output),
                "sha256": digest,
                "words": readable_digest(digest),
                "keys": {field: {"label": key.label, "key_id": key.key_id, "new": new} for field, _, key, new in keys},
            }
        )
        return
    click.echo(f"station      {station_id}")
    for _, role, key, new in keys:
        click.echo(f"{role:<12} {key.key_id}  {key.label} ({'made now' if new else 'existing'})")
    click.echo(f"request      {output}")
    click.echo(f"sha256       {digest}")
    click.echo(f"             {readable_digest(digest)}")
    click.echo("read these words to the officers: the ceremony shows them for the request it is given", err=True)


def _find_or_make(session: TokenSession, label: str, curve: str, usage: str) -> tuple[TokenKey, bool]:
    """The key labelled ``label``, made inside the token first if there is none; and whether it is new."""
    try:
        key = session.key(label=label)
    except KeyNotFoundError:
        if any(info.label == label for info in session.objects()):
            raise  # something by that name is there but is not one EC key pair: never make a second
        return session.generate_ec_key(label, curve=curve, usage=usage), True
    if key.curve.name != curve:
        raise InputError(
            f"key '{label}' on token '{session.label}' is {key.curve.name}, not {curve}; "
            f"pass --curve {key.curve.name} to use it"
        )
    return key, False


def _check_signing_key(session: TokenSession, key: TokenKey) -> None:
    """Prove a station signing key signs, and with the private half of its public key."""
    try:
        signature = key.sign(_PROBE)
    except (TokenError, AttributeError) as e:  # python-pkcs11 gives a key without CKA_SIGN no sign method
        raise InputError(f"key '{key.label}' on token '{session.label}' cannot sign; the station needs it to") from e
    try:
        verify_signature(key.public_key, _PROBE, signature)
    except SignatureError as e:
        raise TokenOperationError(f"key '{key.label}' on token '{session.label}' does not match its public key") from e


def _check_decryption_key(session: TokenSession, key: TokenKey) -> None:
    """Prove the decryption key does ECDH with its public key, and cannot sign.

    A key found on the token may have been made by another tool; the request
    vouches for it as decryption-only, so this is checked rather than assumed.
    """
    peer = ec.generate_private_key(key.curve.curve())
    try:
        shared = key.ecdh(peer.public_key())
    except (TokenError, AttributeError) as e:  # python-pkcs11 gives a key without CKA_DERIVE no derive method
        raise InputError(
            f"key '{key.label}' on token '{session.label}' cannot do ECDH; a station decryption key must"
        ) from e
    if shared != peer.exchange(ec.ECDH(), key.public_key):
        raise TokenOperationError(f"key '{key.label}' on token '{session.label}' does not match its public key")
    try:
        key.sign(_PROBE)
    except (TokenError, AttributeError):  # python-pkcs11 gives a key without CKA_SIGN no sign method
        return
    raise InputError(
        f"key '{key.label}' on token '{session.label}' can sign; a station decryption key must be usable for ECDH only"
    )
