"""``vault bundle ...``: build, inspect, approve and promote release bundles; verify the promotion log."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from cryptography import x509

from vault._words import readable_digest
from vault.cli._options import PKCS11_URI, echo_json, json_option
from vault.errors import InputError
from vault.token import Pkcs11Uri

_PATH = click.Path(exists=True, dir_okay=False, path_type=Path)
_NEW = click.Path(dir_okay=False, path_type=Path)


def _policy_options(f: Any) -> Any:
    f = click.option("--root-cert", type=_PATH, required=True, help="The pinned root certificate.")(f)
    return click.option("--policy", "policy_file", type=_PATH, required=True, help="The current trust policy.")(f)


def _load_policy(policy_file: Path, root_cert: Path) -> Any:
    from vault.policy import load_policy

    data = root_cert.read_bytes()
    try:
        root = x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
    except ValueError as e:
        raise InputError(f"{root_cert} is not an X.509 certificate") from e
    return load_policy(policy_file.read_bytes(), root, now=datetime.now(UTC))


@click.group()
def bundle() -> None:
    """Release bundles: build, inspect, approve m of n, promote."""


@bundle.command("build")
@click.argument("release", type=_PATH)
@click.option("-o", "--out", type=_NEW, required=True, help="The new bundle file.")
@click.option("--log", type=click.Path(dir_okay=False, path_type=Path), help="Promotion log (refuses a rollback).")
@_policy_options
def build(release: Path, out: Path, log: Path | None, policy_file: Path, root_cert: Path) -> None:
    """Build a bundle from the RELEASE description (YAML) for the stations the policy enrols."""
    from vault.bundle import build_bundle, load_release_description

    description = load_release_description(release)
    result = build_bundle(description, _load_policy(policy_file, root_cert), out, log=log)
    click.echo(f"bundle      {result.path}")
    click.echo(f"bundle id   {result.bundle_id}")
    for name, digest, length in result.images:
        click.echo(f"image       {name}  {length} bytes  sha256 {digest}")
    click.echo(f"statement   {result.statement_sha256}")
    click.echo(f"            {readable_digest(result.statement_sha256)}")


@bundle.command("inspect")
@click.argument("path", type=_PATH)
@_policy_options
@json_option
def inspect(path: Path, policy_file: Path, root_cert: Path, as_json: bool) -> None:
    """Show everything a reviewer must see before approving (verifies the whole bundle first)."""
    from vault.bundle import verify_bundle

    policy = _load_policy(policy_file, root_cert)
    view = verify_bundle(path, policy)
    r, a = view.release, view.approvals
    if as_json:
        echo_json(
            {
                "bundle_id": r.bundle_id,
                "product": r.product,
                "version": r.version,
                "security_counter": r.security_counter,
                "not_before": f"{r.not_before:%Y-%m-%dT%H:%M:%SZ}",
                "expires": f"{r.expires:%Y-%m-%dT%H:%M:%SZ}",
                "production": {"total": r.total, "allocation": dict(r.allocation)},
                "images": [dataclasses.asdict(i) for i in r.images],
                "recipients": dict(r.recipients),
                "provenance": dict(r.provenance),
                "statement_sha256": r.statement_sha256,
                "approvals": {
                    "threshold": a.threshold,
                    "present": list(a.approvers),
                    "missing": a.missing,
                    "pending": sorted(set(policy.approvers) - set(a.approvers)),
                },
                "promoted": a.promoted,
                "policy_version": r.policy_version,
                "size": view.size,
            }
        )
        return
    click.echo(f"release       {r.product} {r.version}   security counter {r.security_counter}")
    click.echo(f"valid         {r.not_before:%Y-%m-%dT%H:%M:%SZ} to {r.expires:%Y-%m-%dT%H:%M:%SZ}")
    click.echo(f"bundle id     {r.bundle_id}   ({view.size} bytes, built under policy v{r.policy_version})")
    click.echo(f"production    {r.total} units in total")
    for station, count in sorted(r.allocation.items()):
        click.echo(f"  {station:<12}{count:>10} units   decryption key {r.recipients[station]}")
    for image in r.images:
        target = ", ".join(f"{k} {v}" for k, v in image.target.items()) or "no target given"
        click.echo(f"image         {image.name}   {image.length} bytes   {target}")
        click.echo(f"  sha256      {image.sha256}")
        click.echo(f"              {readable_digest(image.sha256)}")
        proof = r.provenance.get(image.name)
        if proof:
            click.echo(f"  provenance  verified offline: {proof.get('identity')} ({proof.get('issuer')})")
        else:
            click.echo("  provenance  none required")
    click.echo(f"statement     {r.statement_sha256}")
    click.echo(f"              {readable_digest(r.statement_sha256)}")
    pending = sorted(set(policy.approvers) - set(a.approvers))
    click.echo(
        f"approvals     {len(a.approvers)} of {a.threshold} needed: {', '.join(a.approvers) or 'none yet'}"
        + (f"; not yet: {', '.join(pending)}" if pending else "")
    )
    click.echo("promoted      " + ("yes, signed by the release signer" if a.promoted else "no"))


@bundle.command("approve")
@click.argument("path", type=_PATH)
@click.option("--key", type=PKCS11_URI, required=True, help="Your approver key (URI with object= and a PIN source).")
@_policy_options
def approve(path: Path, key: Pkcs11Uri, policy_file: Path, root_cert: Path) -> None:
    """Approve the bundle at PATH with your own token: sign its statement."""
    from vault.bundle import approve_bundle
    from vault.token import open_token

    policy = _load_policy(policy_file, root_cert)
    with open_token(key) as token:
        view = approve_bundle(path, token.key_for(key), policy, now=datetime.now(UTC))
    a = view.approvals
    click.echo(f"approved {view.release.product} {view.release.version}: {len(a.approvers)} of {a.threshold} approvals")


@bundle.command("promote")
@click.argument("path", type=_PATH)
@click.option("--key", type=PKCS11_URI, required=True, help="The release signer's key (in the release token).")
@click.option("--log", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The promotion log.")
@_policy_options
def promote(path: Path, key: Pkcs11Uri, log: Path, policy_file: Path, root_cert: Path) -> None:
    """Promote the bundle at PATH once the approvers' threshold is met; log it; advance the release token's head.

    Run the same command again after an interruption: it finishes what was left.
    """
    from vault.bundle import promote_bundle
    from vault.token import open_token

    policy = _load_policy(policy_file, root_cert)
    with open_token(key, rw=True) as token:
        done = promote_bundle(path, token.key_for(key), token, policy, log, now=datetime.now(UTC))
        label = token.label
    r, entry, head = done.view.release, done.entry, done.head
    if done.removed is not None:
        click.echo(
            f"removed the cut-short last line of {log} (line {done.removed.number}, {done.removed.length} bytes): "
            f"an append that stopped part-way; token '{label}' never held it, so it was never promoted"
        )
    if done.started == "adopted":
        adopted = _entries(done.adopted_entries)
        click.echo(f"token '{label}' held no promotion head: it adopts {log} ({adopted} verified)")
    elif done.started == "genesis":
        click.echo(f"token '{label}' held no promotion head and {log} holds no entry yet: a new promotion log starts")
    approved = f"(approved by {', '.join(entry.approvers)})"
    click.echo(
        {
            "promoted": f"promoted {r.product} {r.version} {approved}",
            "recorded": f"recorded {r.product} {r.version} {approved}: it was signed but missing from the log",
            "finished": f"finished the interrupted promotion of {r.product} {r.version} {approved}",
            "already": f"{r.product} {r.version} is already promoted; nothing left to do",
        }[done.outcome]
    )
    click.echo(f"log entry   {entry.index}  {entry.hash}")
    click.echo(f"log head    {head.log_head}  ({_entries(head.entries)})")
    click.echo(f"token       '{label}' holds this head; highest counter for {r.product}: {head.counters[r.product]}")


@bundle.group("log")
def log_group() -> None:
    """The promotion log."""


@log_group.command("verify")
@click.argument("log", type=_PATH)
@click.option(
    "--token",
    "--key",
    "token_uri",
    type=PKCS11_URI,
    help="The release signer's token: the log must be the one whose head it holds.",
)
@click.option("--head", "digest", metavar="HEX", help="A log head printed by promote: the log must hold it.")
@_policy_options
def log_verify(log: Path, token_uri: Pkcs11Uri | None, digest: str | None, policy_file: Path, root_cert: Path) -> None:
    """Check the promotion LOG: chain, hashes, signatures, and that it is the latest (with --token or --head)."""
    from vault.bundle import verify_log, verify_log_against_digest, verify_log_against_token
    from vault.bundle._log import release_signer_ids
    from vault.token import open_token

    ids = release_signer_ids(_load_policy(policy_file, root_cert))
    checked: list[str] = []
    if token_uri is not None:
        with open_token(token_uri) as token:
            report, _ = verify_log_against_token(log, ids, token)
            checked.append(f"it is the log whose head token '{token.label}' holds")
    if digest is not None:
        report, later = verify_log_against_digest(log, ids, digest)
        checked.append("it ends at the given head" if not later else f"it holds the given head, then {_entries(later)}")
    if not checked:
        report = verify_log(log, ids)
    for entry in report.entries:
        click.echo(f"{entry.index:>4}  {entry.time}  {entry.product} {entry.version}  counter {entry.security_counter}")
    click.echo(f"promotion log OK: {_entries(len(report.entries))}, head {report.head}")
    for line in checked:
        click.echo(f"  {line}")
    if not checked:
        click.echo(
            "  only the chain was checked, not that this is the latest log: "
            "pass --token (the release signer's token) or --head HEX"
        )


@log_group.command("abandon")
@click.argument("log", type=_PATH)
@click.argument("bundle_id")
@click.option(
    "--token",
    "--key",
    "token_uri",
    type=PKCS11_URI,
    required=True,
    help="The release signer's token: its head shows the entry was never promoted.",
)
@_policy_options
def log_abandon(log: Path, bundle_id: str, token_uri: Pkcs11Uri, policy_file: Path, root_cert: Path) -> None:
    """Give up the promotion of BUNDLE_ID that stopped before the release token recorded it (its bundle is gone).

    Only the one entry past the token's head can go: its bundle was never
    signed, so no station can load it. Its line is kept in LOG.abandoned and
    the log ends at the token's head again. An entry the token holds is
    permanent and its security counter stays used: refused. If the bundle
    file still exists, run 'vault bundle promote' on it instead.
    """
    from vault.bundle import abandon_promotion
    from vault.token import open_token

    policy = _load_policy(policy_file, root_cert)
    with open_token(token_uri) as token:
        done = abandon_promotion(log, bundle_id, token, policy)
        label = token.label
    e = done.entry
    click.echo(
        f"abandoned entry {e.index} ({e.product} {e.version}, bundle {e.bundle_id}): token '{label}' never held it, "
        f"so it was never promoted and security counter {e.security_counter} was not used"
    )
    click.echo(f"kept its line in {done.kept}; {log} no longer holds it")
    if done.removed is not None:
        click.echo(f"removed too: the cut-short line {done.removed.number} after it ({done.removed.length} bytes)")
    click.echo(f"log head    {done.head.log_head}  ({_entries(done.head.entries)}), the head token '{label}' holds")


def _entries(n: int) -> str:
    return f"{n} entr{'y' if n == 1 else 'ies'}"
