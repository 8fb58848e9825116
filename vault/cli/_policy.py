"""``vault policy ...``: show a trust policy, or what changes between two versions."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click
from cryptography import x509

from vault._words import readable_digest
from vault.cli._ceremony import _load_cert, _read
from vault.cli._options import echo_json, json_option
from vault.errors import VaultError

if TYPE_CHECKING:
    from vault.ceremony._policy_view import PolicyView

_PATH = click.Path(exists=True, dir_okay=False, path_type=Path)
_ROOT = click.option(
    "--root-cert", type=_PATH, help="Pin the root: the policy must be signed by this certificate's key."
)


@click.group()
def policy() -> None:
    """Trust policies: what one says, what changes from one version to the next."""


@policy.command("show")
@click.argument("policy_file", metavar="POLICY", type=_PATH)
@_ROOT
@json_option
def show(policy_file: Path, root_cert: Path | None, as_json: bool) -> None:
    """Verify POLICY and show its roles, keys by holder, stations, revocations, expiry and digests."""
    pinned = _load_cert(root_cert) if root_cert else None
    view = _view(policy_file, pinned, datetime.datetime.now(datetime.UTC))
    if as_json:
        echo_json(view.to_dict())
        return
    for line in view.lines():
        click.echo(line, err=line.startswith("note:"))


@policy.command("diff")
@click.argument("old", type=_PATH)
@click.argument("new", type=_PATH)
@_ROOT
@json_option
def diff(old: Path, new: Path, root_cert: Path | None, as_json: bool) -> None:
    """Verify OLD and NEW and show what changes: keys, stations, revocations, thresholds, dates."""
    from vault.ceremony._policy_view import diff_policies
    from vault.errors import InputError

    pinned = _load_cert(root_cert) if root_cert else None
    now = datetime.datetime.now(datetime.UTC)
    before = _view(old, pinned, now)
    after = _view(new, pinned, now)
    if before.root_key_id != after.root_key_id:
        raise InputError(f"{old} and {new} are signed by different roots: they are not versions of one policy")
    changes = diff_policies(before, after)
    if as_json:
        echo_json(changes.to_dict())
        return
    for line in changes.lines():
        click.echo(line)
    click.echo(f"new statement sha256 {after.statement_sha256}")
    click.echo(f"                     {readable_digest(after.statement_sha256)}")
    if pinned is None:
        click.echo("note: root not pinned; pass --root-cert to check it is your root", err=True)


def _view(path: Path, root: x509.Certificate | None, now: datetime.datetime) -> PolicyView:
    """The verified view of the policy file at ``path``; an error names the file."""
    from vault.ceremony._policy_view import read_policy_view

    try:
        return read_policy_view(_read(path, "trust policy"), root_certificate=root, now=now)
    except VaultError as e:
        raise type(e)(f"{path}: {e}") from e
