"""``vault token ...``: see tokens and keys, make a key, sign with it."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path

import click
from cryptography.hazmat.primitives import serialization
from rich.measure import Measurement
from rich.table import Table

from vault._files import read_capped, write_new
from vault.cli._options import PKCS11_URI, console, echo_json, force_option, json_option
from vault.errors import InputError
from vault.token import Pkcs11Uri, list_tokens, open_token

MAX_SIGN_INPUT = 64 * 1024 * 1024


@click.group()
def token() -> None:
    """PKCS#11 tokens: list them, list their keys, make and use keys."""


@token.command("list")
@click.option("--module", "module_path", metavar="PATH", help="PKCS#11 module (default: $VAULT_PKCS11_MODULE).")
@json_option
def list_(module_path: str | None, as_json: bool) -> None:
    """List the tokens a PKCS#11 module offers."""
    infos = list_tokens(Pkcs11Uri(module_path=module_path))
    if as_json:
        echo_json([dict(dataclasses.asdict(i), state=i.state) for i in infos])
        return
    table = Table("label", "manufacturer", "model", "serial", "state")
    for i in sorted(infos, key=lambda i: (not i.initialized, i.label)):
        table.add_row(i.label or "-", i.manufacturer, i.model, i.serial, i.state)
    console().print(table)


@token.command("keys")
@click.argument("uri", type=PKCS11_URI)
@click.option("--full", is_flag=True, help="Show whole ids even if the table is wider than the terminal.")
@json_option
def keys(uri: Pkcs11Uri, full: bool, as_json: bool) -> None:
    """List the objects on the token URI names (never key material); ids are whole when they fit."""
    with open_token(uri) as session:
        objects = session.objects()
    if as_json:
        echo_json([dataclasses.asdict(o) for o in objects])
        return
    out = console()

    def table(cut: Callable[[str | None], str]) -> Table:
        made = Table("label", "type", "key type", "id", "key id", "extractable", "sensitive", title=session.label)
        for column in made.columns[3:5]:
            column.overflow = "fold"  # an id too wide for the terminal goes on over lines, never cut
        for o in objects:
            made.add_row(o.label, o.type, o.key_type or "-", cut(o.id), cut(o.key_id), _flag(o.extractable),
                         _flag(o.sensitive))  # fmt: skip
        return made

    whole = table(lambda value: value or "-")
    fits = Measurement.get(out, out.options.update(width=100_000), whole).maximum <= out.width
    out.print(whole if full or fits else table(_short))
    if not (full or fits):
        click.echo("ids cut to 16 digits to fit the terminal: --full or --json shows them whole", err=True)


@token.command("keygen")
@click.argument("uri", type=PKCS11_URI)
@click.option("--curve", default="P-256", show_default=True, help="P-256 or P-384.")
@click.option("--usage", type=click.Choice(["sign", "derive"]), default="sign", show_default=True)
def keygen(uri: Pkcs11Uri, curve: str, usage: str) -> None:
    """Generate a key pair inside the token; URI's object= is its label."""
    if not uri.object:
        raise InputError("name the new key with object=LABEL in the URI")
    with open_token(uri, rw=True) as session:
        key = session.generate_ec_key(uri.object, curve=curve, usage=usage)
    click.echo(f"generated {curve} key '{key.label}' on token '{session.label}'")
    click.echo(f"key id {key.key_id}")


@token.command("pubkey")
@click.argument("uri", type=PKCS11_URI)
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write PEM here (default: stdout)."
)
@force_option
def pubkey(uri: Pkcs11Uri, output: Path | None, force: bool) -> None:
    """Export the public key URI names as a PEM SubjectPublicKeyInfo."""
    with open_token(uri) as session:
        key = session.key_for(uri)
    pem = key.public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    if output is None:
        click.echo(pem.decode(), nl=False)
    else:
        write_new(output, pem, overwrite=force)
        click.echo(f"wrote {output}", err=True)


@token.command("sign")
@click.argument("uri", type=PKCS11_URI)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Signature file (DER ECDSA)."
)
@force_option
def sign(uri: Pkcs11Uri, file: Path, output: Path, force: bool) -> None:
    """Sign FILE with the token key URI names (DER ECDSA, the curve's hash)."""
    data = read_capped(file, MAX_SIGN_INPUT, "file to sign")
    with open_token(uri) as session:
        key = session.key_for(uri)
        signature = key.sign(data)
    write_new(output, signature, overwrite=force)
    click.echo(f"signed {file} with key {key.key_id} -> {output}", err=True)


@token.command("delete")
@click.argument("uri", type=PKCS11_URI)
@click.option("--yes", is_flag=True, help="Do not ask for the key's label to be typed (non-interactive runs).")
def delete(uri: Pkcs11Uri, yes: bool) -> None:
    """Delete the key pair URI names (object= or id=) from its token, for good.

    For a key vault refuses to use (made outside the token, extractable), or
    one a stopped ceremony left that the officers choose not to use. Asks
    for the key's label to be typed first; a token holding a root is refused.
    """
    if uri.object is None and uri.id is None:
        raise InputError("name the key to delete with object=LABEL or id=... in the URI")
    with open_token(uri, rw=True) as session:
        if not yes:
            if not sys.stdin.isatty() or uri.object is None:
                raise InputError("deleting a key needs its label (object=) typed on a terminal; or pass --yes")
            typed = click.prompt(
                f"Delete key '{uri.object}' from token '{session.label}' for good? Type its label to go on",
                default="",
                show_default=False,
            )
            if typed.strip() != uri.object:
                raise InputError("the label typed is not the key's: nothing was deleted")
        info = session.delete_key(label=uri.object, id=uri.id)
    click.echo(f"deleted key '{info.label}' (key id {info.key_id or '-'}) from token '{session.label}'")


def _short(value: str | None) -> str:
    if not value:
        return "-"
    return value if len(value) <= 16 else value[:16] + "…"


def _flag(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")
