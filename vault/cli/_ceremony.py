"""``vault ceremony ...`` and ``vault shares ...``: run and verify key ceremonies, check custodian shares."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import click
from cryptography import x509

from vault._words import readable_digest
from vault.cli._options import PKCS11_URI, echo_json, json_option
from vault.errors import InputError
from vault.token import Pkcs11Uri

_PATH = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.group()
def ceremony() -> None:
    """Key ceremonies: run a reviewed script, verify its transcript."""


def _confirmer(yes: bool) -> Callable[[str], None]:
    def confirm(message: str) -> None:
        step, *shown = message.splitlines()
        if yes:
            click.echo(f"-> {step}", err=True)
            for line in shown:
                click.echo(f"   {line}", err=True)
            return
        if not sys.stdin.isatty():
            raise InputError("this ceremony step needs a typed confirmation; run on a terminal or pass --yes")
        for line in shown:
            click.echo(line, err=True)
        typed = click.prompt(f"About to {step}. Type 'yes' to go on", default="", show_default=False)
        if typed.strip() != "yes":
            raise InputError(f"stopped before: {step}")

    return confirm


@ceremony.command("run")
@click.argument("script", type=_PATH)
@click.option("--credentials", type=_PATH, required=True, help="Token URIs and PIN sources (YAML).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="New folder for outputs.")
@click.option("--policy", "policy_file", type=_PATH, help="The current trust policy (every ceremony after the root).")
@click.option("--root-cert", type=_PATH, help="The pinned root certificate (every ceremony after the root).")
@click.option(
    "--share", "share_files", type=_PATH, multiple=True, help="A custodian's root share file (repeat m times)."
)
@click.option("--request", type=_PATH, help="The station's enrolment request (enrol-station).")
@click.option("--station-id", help="The station the request must be for (enrol-station; default: the request's).")
@click.option("--backup", type=_PATH, help="The root key backup file (recover).")
@click.option("--backup-share", "backup_share_files", type=_PATH, multiple=True, help="A backup KEK share (recover).")
@click.option("--rehearsal", is_flag=True, help="Mark every output as a rehearsal (required on SoftHSM2).")
@click.option("--yes", is_flag=True, help="Confirm every irreversible step (non-interactive runs).")
def run(
    script: Path,
    credentials: Path,
    out: Path,
    policy_file: Path | None,
    root_cert: Path | None,
    share_files: tuple[Path, ...],
    request: Path | None,
    station_id: str | None,
    backup: Path | None,
    backup_share_files: tuple[Path, ...],
    rehearsal: bool,
    yes: bool,
) -> None:
    """Run the ceremony SCRIPT (policies/*.yaml) against the tokens in --credentials.

    The root ceremony needs only the script and credentials. Every later one
    (enrol-station, roles, policy, revoke, backup, recover) also needs the
    current --policy, the pinned --root-cert and m custodians' shares (--share
    files, or typed hidden on a terminal).
    """
    from vault.ceremony import (
        CeremonyInputs,
        RootScript,
        check_ceremony_inputs,
        load_credentials,
        load_script,
        run_operation_ceremony,
        run_root_ceremony,
    )
    from vault.token import module_path_for

    parsed = load_script(script)
    creds = load_credentials(credentials)
    if "softhsm" in module_path_for(creds.root).lower() and not rehearsal:
        raise InputError("the root token is a SoftHSM2 software token: a ceremony on it must be run with --rehearsal")
    if rehearsal:
        click.secho(
            "*** REHEARSAL: outputs are marked REHEARSAL and must never be trusted ***", fg="red", bold=True, err=True
        )
    if isinstance(parsed, RootScript):
        given = {
            "--policy": policy_file, "--root-cert": root_cert, "--share": share_files, "--request": request,
            "--station-id": station_id, "--backup": backup, "--backup-share": backup_share_files,
        }  # fmt: skip
        unused = [option for option, value in given.items() if value]
        if unused:
            raise InputError(f"the root ceremony takes no {', '.join(unused)}; it starts from the script alone")
        result = run_root_ceremony(parsed, creds, out, rehearsal=rehearsal, confirm=_confirmer(yes))
        click.echo(f"root certificate   {result.out / 'root-ca.pem'}")
        click.echo(f"trust policy v1    {result.policy}")
        click.echo(f"transcript         {result.transcript}  (printable: {result.html})")
        for officer, path in result.shares.items():
            click.echo(f"share for {officer:<10} {path}  (hand over, then delete this copy)")
    else:
        if policy_file is None or root_cert is None:
            raise InputError(f"a '{parsed.kind}' ceremony needs the current --policy and the pinned --root-cert")
        request_data = _read(request, "enrolment request") if request else None
        backup_data = _read(backup, "key backup") if backup else None
        # Refused before anyone types a share: an input this ceremony does not take, a request for another station.
        check_ceremony_inputs(
            parsed, request=request_data, station_id=station_id, backup=backup_data,
            backup_shares=[str(f) for f in backup_share_files],
        )  # fmt: skip
        inputs = CeremonyInputs(
            root_certificate=_load_cert(root_cert),
            policy=_read(policy_file, "trust policy"),
            shares=_shares_from(share_files, "root token share", creds.officers),
        )
        outcome = run_operation_ceremony(
            parsed,
            creds,
            inputs,
            out,
            rehearsal=rehearsal,
            confirm=_confirmer(yes),
            request=request_data,
            backup=backup_data,
            backup_shares=_shares_from(backup_share_files, "backup KEK share", {}) if backup_data else (),
            station_id=station_id,
        )
        for what, path in outcome.outputs.items():
            click.echo(f"{what:<34} {path}")
        if outcome.policy is not None:
            click.echo(f"{'trust policy':<34} {outcome.policy}")
        click.echo(f"{'transcript':<34} {outcome.transcript}  (printable: {outcome.html})")
    if rehearsal:
        click.secho("*** REHEARSAL complete ***", fg="red", bold=True, err=True)


def _shares_from(files: tuple[Path, ...], what: str, tokens: Mapping[str, Pkcs11Uri]) -> list[str]:
    """Shares from files (sealed ones opened in their custodian's token), or typed on a terminal."""
    from vault.ceremony import read_share

    if files:
        return [read_share(_read(f, "share"), tokens) for f in files]
    if not _on_terminal():
        return []
    typed: list[str] = []
    while True:
        text = _type_share(f"{what} {len(typed) + 1}", first=not typed)
        if text is None:
            return typed
        typed.append(text)


def _on_terminal() -> bool:
    return sys.stdin.isatty()


def _type_share(what: str, *, first: bool = True) -> str | None:
    """One share typed hidden, word by word, each word checked against the SLIP-39 list as it is typed.

    Nothing typed is shown or repeated: a word off the list is named by its
    position only. Several words, or the whole share, may be typed on one
    line. An empty entry at word 1 means no more shares (``None``); an empty
    entry later ends the share early, and the check then says how many words
    are missing. A share whose checksum fails is typed again from word 1.
    """
    from vault.ceremony._shares import SHARE_WORDS, check_typed_word, check_words
    from vault.errors import ShareError

    words: list[str] = []
    while len(words) < SHARE_WORDS:
        hint = "; empty when done" if not words and not first else ("; or the whole share" if not words else "")
        entry = click.prompt(
            f"{what}, word {len(words) + 1} of {SHARE_WORDS} (hidden{hint})",
            hide_input=True, default="", show_default=False, err=True,
        )  # fmt: skip
        typed = entry.split()
        if not typed:
            if not words:
                return None
            break
        for word in typed:
            try:
                words.append(check_typed_word(word, len(words) + 1))
            except ShareError as e:
                click.echo(f"  {e}; type word {len(words) + 1} again", err=True)
                break
        if len(words) == SHARE_WORDS:
            try:
                check_words(" ".join(words))
            except ShareError as e:
                click.echo(f"  {e}; type the share again from word 1", err=True)
                words = []
    return " ".join(words)


@ceremony.command("verify")
@click.argument("transcript", type=_PATH)
@click.option("--root-cert", type=_PATH, help="Pin the root: the transcript's root key must be this certificate's.")
@json_option
def verify(transcript: Path, root_cert: Path | None, as_json: bool) -> None:
    """Verify a ceremony TRANSCRIPT: root and officer signatures, hash chain."""
    from vault.ceremony import verify_transcript

    pinned = _load_cert(root_cert) if root_cert else None
    report = verify_transcript(_read(transcript, "transcript"), root_certificate=pinned)
    if as_json:
        echo_json(dataclasses.asdict(report))
        return
    if report.rehearsal:
        click.secho("REHEARSAL transcript", fg="red", bold=True)
    click.echo(f"transcript OK: {report.name} ({report.type} ceremony), {report.steps} steps")
    click.echo(f"signed by root {report.root_key_id[:16]}... and officers {', '.join(report.officers)}")
    click.echo(f"head {report.head}")
    click.echo(f"     {readable_digest(report.head)}")
    if not report.root_pinned:
        click.echo("note: root not pinned; pass --root-cert to check it is your root", err=True)


@click.group()
def shares() -> None:
    """Custodian shares (SLIP-39)."""


@shares.command("check")
@click.argument("transcript", type=_PATH)
@click.option("--share", "share_file", type=_PATH, help="Share file (default: type it, hidden).")
@click.option("--token", type=PKCS11_URI, help="Your token, to open a share sealed to it.")
@click.option("--root-cert", type=_PATH, help="Pin the root certificate.")
def check(transcript: Path, share_file: Path | None, token: Pkcs11Uri | None, root_cert: Path | None) -> None:
    """Prove a share is valid and belongs to the ceremony's share set, revealing nothing else."""
    from vault.ceremony import check_share_against_transcript, read_share
    from vault.ceremony._sealed import is_sealed_share, read_sealed_share

    if share_file is not None:
        data = _read(share_file, "share")
        tokens = {}
        if is_sealed_share(data):
            if token is None:
                raise InputError("this share is sealed to a token: give the token with --token URI")
            tokens[read_sealed_share(data).custodian] = token
        text = read_share(data, tokens)
    elif _on_terminal():
        typed = _type_share("your share")
        if typed is None:
            raise InputError("no share typed")
        text = typed
    else:
        text = _piped_share()
    pinned = _load_cert(root_cert) if root_cert else None
    result = check_share_against_transcript(_read(transcript, "transcript"), text, root_certificate=pinned)
    click.echo(f"share OK: {result}")


def _piped_share() -> str:
    """A whole share piped on stdin (``echo WORDS | vault shares check T``)."""
    from vault.ceremony._shares import MAX_SHARE_INPUT

    try:
        text = sys.stdin.read(MAX_SHARE_INPUT + 1)
    except (OSError, UnicodeDecodeError) as e:
        raise InputError("give the share with --share FILE, pipe it on stdin, or run on a terminal to type it") from e
    if not text.strip():
        raise InputError("no share on stdin: give it with --share FILE, or run on a terminal to type it")
    if len(text) > MAX_SHARE_INPUT:
        raise InputError(f"stdin holds more than {MAX_SHARE_INPUT} characters; a share is far shorter")
    from vault.ceremony import share_text

    return share_text(text)


def _read(path: Path, what: str) -> bytes:
    """A whole input file, read in bounded memory (each kind of input has its cap)."""
    from vault._files import read_capped
    from vault.ceremony import MAX_BACKUP, MAX_SHARE_FILE, MAX_TRANSCRIPT
    from vault.enrolment import MAX_REQUEST_SIZE
    from vault.policy import MAX_POLICY_SIZE

    caps = {
        "trust policy": MAX_POLICY_SIZE,
        "enrolment request": MAX_REQUEST_SIZE,
        "key backup": MAX_BACKUP,
        "share": MAX_SHARE_FILE,
        "transcript": MAX_TRANSCRIPT,
    }
    return read_capped(path, caps[what], what)


def _load_cert(path: Path) -> x509.Certificate:
    from vault.pki import read_certificate

    return read_certificate(path)
