"""``vault bundle ...``: build, inspect, approve and promote release bundles; verify the promotion log."""

from __future__ import annotations

import dataclasses
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

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
    from vault._files import read_capped
    from vault.pki import read_certificate
    from vault.policy import MAX_POLICY_SIZE, load_policy

    root = read_certificate(root_cert)
    return load_policy(read_capped(policy_file, MAX_POLICY_SIZE, "trust policy"), root, now=datetime.now(UTC))


@click.group()
def bundle() -> None:
    """Release bundles: build, inspect, approve m of n, promote."""


@bundle.command("build")
@click.argument("release", type=_PATH)
@click.option("-o", "--out", type=_NEW, required=True, help="The new bundle file.")
@click.option("--log", type=click.Path(dir_okay=False, path_type=Path), help="Promotion log (refuses a rollback).")
@_policy_options
@json_option
def build(release: Path, out: Path, log: Path | None, policy_file: Path, root_cert: Path, as_json: bool) -> None:
    """Build a bundle from the RELEASE description (YAML; see docs/release-description.md)."""
    from vault.bundle import build_bundle, load_release_description

    description = load_release_description(release)
    result = build_bundle(description, _load_policy(policy_file, root_cert), out, log=log)
    if as_json:
        echo_json(
            {
                "bundle": str(result.path),
                "bundle_id": result.bundle_id,
                "images": [{"name": n, "sha256": d, "length": length} for n, d, length in result.images],
                "statement_sha256": result.statement_sha256,
                "statement_words": readable_digest(result.statement_sha256),
            }
        )
        return
    click.echo(f"bundle      {result.path}")
    click.echo(f"bundle id   {result.bundle_id}")
    for name, digest, length in result.images:
        click.echo(f"image       {name}  {length} bytes  sha256 {digest}")
    click.echo(f"statement   {result.statement_sha256}")
    click.echo(f"            {readable_digest(result.statement_sha256)}")


@bundle.command("inspect")
@click.argument("path", type=_PATH)
@click.option(
    "--export-statement",
    type=_NEW,
    metavar="FILE",
    help="Also write the statement (and the signatures so far) to FILE, for detached approvals.",
)
@_policy_options
@json_option
def inspect(path: Path, export_statement: Path | None, policy_file: Path, root_cert: Path, as_json: bool) -> None:
    """Show everything a reviewer must see before approving (verifies the whole bundle first)."""
    from vault.bundle import verify_bundle
    from vault.bundle._approval import export_statement as write_statement

    policy = _load_policy(policy_file, root_cert)
    view = verify_bundle(path, policy)
    if export_statement is not None:
        write_statement(view, export_statement)
    r, a = view.release, view.approvals
    if as_json:
        echo_json(
            {
                **_release_json(r),
                "approvals": _approvals_json(a, policy),
                "promoted": a.promoted,
                "policy_version": r.policy_version,
                "size": view.size,
                "exported_statement": None if export_statement is None else str(export_statement),
            }
        )
        return
    _show_release(r, err=False)
    click.echo(f"  (bundle of {view.size} bytes, built under policy v{r.policy_version})")
    click.echo(f"approvals     {_approvals_line(a, policy)}")
    click.echo("promoted      " + ("yes, signed by the release signer" if a.promoted else "no"))
    if export_statement is not None:
        click.echo(f"statement written to {export_statement}: approvers can approve it with --detached")


def _release_json(r: Any) -> dict[str, Any]:
    return {
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
        "lock_profiles": dict(r.lock_profiles),
        "secrets": None
        if not r.secrets
        else {"recipient": r.secrets_recipient, "items": [s.to_json() for s in r.secrets]},
        "statement_sha256": r.statement_sha256,
        "statement_words": readable_digest(r.statement_sha256),
    }


def _approvals_json(a: Any, policy: Any) -> dict[str, Any]:
    return {
        "threshold": a.threshold,
        "present": list(a.approvers),
        "missing": a.missing,
        "pending": sorted(set(policy.approvers) - set(a.approvers)),
    }


def _approvals_line(a: Any, policy: Any) -> str:
    from vault.bundle._approval import approval_count

    pending = sorted(set(policy.approvers) - set(a.approvers))
    line = approval_count(a)
    if a.approvers:
        line += f"; approved by {', '.join(a.approvers)}"
    if pending and a.missing:
        line += f"; not yet: {', '.join(pending)}"
    return line


def _show_release(r: Any, *, err: bool) -> None:
    """What a statement says, as a reviewer reads it: the same lines for inspect and approve."""

    def echo(line: str) -> None:
        click.echo(line, err=err)

    echo(f"release       {r.product} {r.version}   security counter {r.security_counter}")
    echo(f"valid         {r.not_before:%Y-%m-%dT%H:%M:%SZ} to {r.expires:%Y-%m-%dT%H:%M:%SZ}")
    echo(f"bundle id     {r.bundle_id}")
    echo(f"production    {r.total} units in total")
    for station, count in sorted(r.allocation.items()):
        echo(f"  {station:<12}{count:>10} units   decryption key {r.recipients[station]}")
    for image in r.images:
        target = ", ".join(f"{k} {v}" for k, v in image.target.items()) or "no target given"
        echo(f"image         {image.name}   {image.length} bytes   {target}")
        echo(f"  sha256      {image.sha256}")
        echo(f"              {readable_digest(image.sha256)}")
        proof = r.provenance.get(image.name)
        if proof:
            echo(f"  provenance  verified offline: {proof.get('identity')} ({proof.get('issuer')})")
        else:
            echo("  provenance  none required")
    for name, profile in sorted(r.lock_profiles.items()):
        burns = [f"{efuse}={value}" for efuse, value in sorted(profile.get("efuses", {}).items())]
        burns += [f"{k['block']} {k['purpose']} {k['digest']}" for k in profile.get("keys", [])]
        echo(f"lock profile  {name} ({profile.get('chip')}): {', '.join(burns)}")
    for spec in r.secrets:
        echo(f"secret        {spec.name} ({spec.kind}, {spec.length} bytes) installed at {spec.target}, per device")
    if r.secrets:
        echo(f"  sealed to   secrets recipient {r.secrets_recipient}")
    echo(f"statement     {r.statement_sha256}")
    echo(f"              {readable_digest(r.statement_sha256)}")


@bundle.command("approve")
@click.argument("path", type=_PATH)
@click.option("--key", type=PKCS11_URI, required=True, help="Your approver key (URI with object= and a PIN source).")
@click.option(
    "--expect-statement",
    metavar="SHA256",
    help="The statement digest you inspected: any other statement is refused.",
)
@click.option(
    "--detached", is_flag=True, help="Write the approval to a file of its own (-o); the bundle is not changed."
)
@click.option("-o", "--out", type=_NEW, help="The approval file to write (with --detached).")
@click.option("--yes", is_flag=True, help="Sign without the typed confirmation (for scripts).")
@_policy_options
@json_option
def approve(
    path: Path,
    key: Pkcs11Uri,
    expect_statement: str | None,
    detached: bool,
    out: Path | None,
    yes: bool,
    policy_file: Path,
    root_cert: Path,
    as_json: bool,
) -> None:
    """Approve the bundle (or the exported statement) at PATH with your own token: sign its statement.

    Shows what is signed and asks you to type 'yes' first. With --detached
    -o FILE the signature goes to FILE (for 'vault bundle add-approvals'),
    and PATH may be the statement 'vault bundle inspect --export-statement'
    wrote instead of the bundle.
    """
    from vault.bundle._approval import approve_detached, approve_in_place, prepare_approval
    from vault.bundle._detached import write_approval
    from vault.token import open_token

    if detached and out is None:
        raise InputError("--detached writes the approval to a file of its own: name it with -o FILE")
    if out is not None and not detached:
        raise InputError("-o names a detached approval's file: add --detached (or leave -o out to sign the bundle)")
    if out is not None and out.exists():
        raise InputError(f"{out} exists; vault does not write over files")
    policy = _load_policy(policy_file, root_cert)
    with open_token(key) as token:
        signer = token.key_for(key)
        request = prepare_approval(
            path, signer.key_id, policy, now=datetime.now(UTC), expect_statement=expect_statement, detached=detached
        )
        r = request.release
        if not yes and not sys.stdin.isatty():
            raise InputError(
                "approving needs a typed confirmation on a terminal; or pass --yes "
                "(with --expect-statement SHA256 to sign only the statement you inspected)"
            )
        if not yes:
            click.echo(f"You are about to approve, as {request.holder} (key {signer.key_id}):", err=as_json)
            _show_release(r, err=as_json)
            click.echo(f"approvals     {_approvals_line(request.approvals, policy)}", err=as_json)
            where = f"into {out}" if out is not None else f"into {path}"
            typed = click.prompt(
                f"Type 'yes' to sign statement {readable_digest(r.statement_sha256)} {where}",
                default="",
                show_default=False,
                err=as_json,
            )
            if typed.strip() != "yes":
                raise InputError("not approved: nothing was signed")
        if out is not None:
            signature = approve_detached(request, signer)
            write_approval(request, signature, out)
            approvals = request.approvals
        else:
            approvals = approve_in_place(request, signer, policy).approvals
    if as_json:
        echo_json(
            {
                "approver": request.holder,
                "key_id": signer.key_id,
                "bundle_id": r.bundle_id,
                "product": r.product,
                "version": r.version,
                "security_counter": r.security_counter,
                "statement_sha256": r.statement_sha256,
                "statement_words": readable_digest(r.statement_sha256),
                "detached": out is not None,
                "approval_file": None if out is None else str(out),
                "approvals": _approvals_json(approvals, policy),
            }
        )
        return
    if out is not None:
        click.echo(
            f"wrote {out}: {request.holder} approves {r.product} {r.version} "
            f"(statement {readable_digest(r.statement_sha256)})" + ("; the bundle is unchanged" if request.view else "")
        )
        click.echo(f"give it to the release manager: vault bundle add-approvals BUNDLE {out} ...")
    else:
        click.echo(f"approved {r.product} {r.version} as {request.holder}: {_approvals_line(approvals, policy)}")


@bundle.command("add-approvals")
@click.argument("path", type=_PATH)
@click.argument("approvals", nargs=-1, required=True, type=_PATH)
@_policy_options
@json_option
def add_approvals(path: Path, approvals: tuple[Path, ...], policy_file: Path, root_cert: Path, as_json: bool) -> None:
    """Merge the detached APPROVALS (files from 'approve --detached') into the bundle at PATH: all or none."""
    from vault.bundle._detached import add_approvals as merge

    policy = _load_policy(policy_file, root_cert)
    done = merge(path, list(approvals), policy, now=datetime.now(UTC))
    r, a = done.view.release, done.view.approvals
    if as_json:
        echo_json(
            {
                "bundle_id": r.bundle_id,
                "product": r.product,
                "version": r.version,
                "added": list(done.added),
                "approvals": _approvals_json(a, policy),
            }
        )
        return
    click.echo(f"added the approvals of {', '.join(done.added)} to {r.product} {r.version}")
    click.echo(f"approvals     {_approvals_line(a, policy)}")


@bundle.command("promote")
@click.argument("path", type=_PATH)
@click.option("--key", type=PKCS11_URI, required=True, help="The release signer's key (in the release token).")
@click.option("--log", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The promotion log.")
@_policy_options
@json_option
def promote(path: Path, key: Pkcs11Uri, log: Path, policy_file: Path, root_cert: Path, as_json: bool) -> None:
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
    if as_json:
        echo_json(
            {
                "outcome": done.outcome,
                "started": done.started,
                "adopted_entries": done.adopted_entries,
                "removed_torn_line": None
                if done.removed is None
                else {"line": done.removed.number, "bytes": done.removed.length},
                "bundle_id": r.bundle_id,
                "product": r.product,
                "version": r.version,
                "security_counter": r.security_counter,
                "statement_sha256": r.statement_sha256,
                "approvers": list(entry.approvers),
                "log": str(log),
                "log_entry": {"index": entry.index, "hash": entry.hash},
                "log_head": head.log_head,
                "log_entries": head.entries,
                "token": label,
                "counters": dict(head.counters),
            }
        )
        return
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
@json_option
def log_verify(
    log: Path, token_uri: Pkcs11Uri | None, digest: str | None, policy_file: Path, root_cert: Path, as_json: bool
) -> None:
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
    if as_json:
        echo_json(
            {
                "ok": True,
                "entries": [
                    {
                        "index": e.index,
                        "time": e.time,
                        "product": e.product,
                        "version": e.version,
                        "security_counter": e.security_counter,
                        "bundle_id": e.bundle_id,
                        "statement_sha256": e.statement_sha256,
                        "approvers": list(e.approvers),
                        "hash": e.hash,
                    }
                    for e in report.entries
                ],
                "head": report.head,
                "checked_token": token_uri is not None,
                "checked_head": digest,
                "latest_checked": bool(checked),
                "notes": checked,
            }
        )
        return
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


@bundle.command("closeout")
@click.argument("path", type=_PATH)
@_policy_options
@click.option("--bundle", "bundle_file", type=_PATH, help="Also check that the close-out is of this release bundle.")
@json_option
def closeout(path: Path, policy_file: Path, root_cert: Path, bundle_file: Path | None, as_json: bool) -> None:
    """Read a station's close-out (PATH, a *.vault-closeout file): verified, without the auditor's key.

    It is checked against the signing key the trust policy enrols for the
    station it names; a forged or altered one, or one of another station's
    key, is refused. It shows the units used and how they ended, and the
    log's final size and root, which the auditor checks against the evidence.
    """
    from vault._files import read_capped
    from vault.closeout import MAX_CLOSEOUT_SIZE, verify_closeout
    from vault.errors import VerificationError

    policy = _load_policy(policy_file, root_cert)
    c = verify_closeout(read_capped(path, MAX_CLOSEOUT_SIZE, "close-out"), policy)
    if bundle_file is not None:
        from vault.container import BundleReader

        with BundleReader(bundle_file) as reader:
            expected = reader.header.bundle_id
        if expected != c.bundle_id:
            raise VerificationError(f"{path} closes bundle {c.bundle_id}, not {bundle_file} (bundle {expected})")
    if as_json:
        echo_json(c.to_json())
        return
    u = c.units
    click.echo(f"close-out   station {c.station_id}: signed by its key in trust policy v{policy.version}; verified")
    click.echo(f"release     {c.product} {c.version} (bundle {c.bundle_id}, security counter {c.security_counter})")
    click.echo(f"units       {u.used} of {c.allocation} used: {u.provisioned} provisioned, {u.failed} failed, "
               f"{u.scrapped} scrapped, {u.unrecorded} unrecorded")  # fmt: skip
    click.echo(f"log         size {c.log_size}, root {c.log_root}, after {c.exports} export(s)")
    click.echo(f"closed      {c.time.strftime('%Y-%m-%dT%H:%M:%SZ')} ({c.clock} clock)")
