"""``vault secrets``: the device maker's side of per-device secrets.

``vault secrets export`` audits the evidence exports (with the auditor's
token), opens the per-device secrets of the devices the audit passed (with
the secrets recipient's token) and writes the backend's rows. Exit status:
0 when every device with secrets was exported, 3 when the audit refused some
(they are listed) or failed (an export it could not read), 1 when it cannot
run, 2 for a usage error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from vault._files import read_capped
from vault.cli._audit import (
    AUDITOR_LABEL,
    EXIT_FINDINGS,
    _closeouts,
    _exports,
    _root,
    audit_limits,
    evidence_inputs,
)
from vault.cli._options import PKCS11_URI, force_option
from vault.token import Pkcs11Uri

_SEVERITIES = ("critical", "high", "medium", "low", "info")
_RECIPIENT_LABEL = "secrets-decrypt"  # vault.secrets.RECIPIENT_LABEL, without importing it for --help


@click.group("secrets")
def secrets() -> None:
    """Per-device secrets for the device maker's backend (only for audited devices)."""


@secrets.command("export")
@evidence_inputs
@click.option(
    "--auditor-token",
    "auditor_uri",
    type=PKCS11_URI,
    required=True,
    help=f"The auditor's token (opens the exports); its key '{AUDITOR_LABEL}' unless the URI names one.",
)
@click.option(
    "--token",
    "uri",
    type=PKCS11_URI,
    required=True,
    help=f"The device maker's token; its key '{_RECIPIENT_LABEL}' unless the URI names one.",
)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="The folder for the rows (0600 files).")
@click.option("--stdout", "to_stdout", is_flag=True, help="DANGEROUS: print the rows (CSV) instead of writing files.")
@click.option(
    "--fail-on",
    type=click.Choice(_SEVERITIES),
    default="high",
    show_default=True,
    help="Refuse a device touched by a finding at this severity or worse.",
)
@audit_limits
@force_option
def export(
    exports: tuple[Path, ...],
    root_cert: Path,
    policy_file: Path,
    bundle_files: tuple[Path, ...],
    auditor_uri: Pkcs11Uri,
    uri: Pkcs11Uri,
    out: Path | None,
    to_stdout: bool,
    fail_on: str,
    max_silence: Any,
    workers: int | None,
    min_cycle: float,
    max_clock_step: int,
    operator_window: int,
    max_reworks: int,
    force: bool,
) -> None:
    """Write the backend's rows (serial, hardware id, secret) for the devices an audit of EXPORTS passed.

    Audits the exports as 'vault audit' does (with the same limits); a device
    touched by a finding at --fail-on or worse is refused and listed (serial,
    hardware id, station, finding) on standard error and in
    refused-devices.csv. The others' secrets are opened with the device
    maker's token and written to --out as backend-secrets.csv and
    backend-secrets.json, mode 0600. Secrets go to standard output only with
    --stdout. Exit status: 0 when no device was refused and the audit passed
    at --fail-on, 3 when some were refused or the audit failed.
    """
    from vault.audit import Thresholds
    from vault.errors import InputError
    from vault.policy import MAX_POLICY_SIZE
    from vault.secrets import check_free, export_secrets, rows_csv, write_export
    from vault.token import open_token

    if out is not None and to_stdout:
        raise InputError("give either --out FOLDER or --stdout, not both")
    if out is None and not to_stdout:
        raise InputError("give --out FOLDER for the rows (or --stdout to print them)")
    if out is not None:
        check_free(out, overwrite=force)  # before the audit: a refusal then costs nothing
    paths = _exports(exports)
    root = _root(root_cert)
    policy = read_capped(policy_file, MAX_POLICY_SIZE, "trust policy")
    with open_token(auditor_uri) as auditor_session, open_token(uri) as session:
        auditor = (
            auditor_session.key_for(auditor_uri)
            if auditor_uri.object or auditor_uri.id
            else auditor_session.key(label=AUDITOR_LABEL)
        )
        recipient = session.key_for(uri) if uri.object or uri.id else session.key(label=_RECIPIENT_LABEL)
        result = export_secrets(
            paths,
            policy=policy,
            root_certificate=root,
            bundle_path=bundle_files,
            auditor=auditor,
            recipient=recipient,
            fail_on=fail_on,
            closeouts=_closeouts(exports),
            workers=workers,
            audit_options={
                "thresholds": Thresholds(min_cycle, max_clock_step, operator_window, max_reworks),
                "max_silence": max_silence,
            },
        )
    report = result.report
    click.echo(
        f"audited      {len(report.exports)} export(s), {report.manifests:,} manifests; "
        f"{'PASS' if report.passed(fail_on) else 'FAIL'} at {fail_on}",
        err=True,
    )
    if to_stdout:
        click.echo(rows_csv(result.rows), nl=False)
    else:
        assert out is not None
        write_export(result, out, overwrite=force, say=lambda line: click.echo(line, err=True))
    click.echo(
        f"exported     {len(result.rows)} secret(s) of {result.devices} audited device(s); "
        f"refused {len(result.refused)}",
        err=True,
    )
    for device, code in result.refused:
        click.echo(f"  refused    {device.serial or '-'}  {device.hardware_id}  {device.station_id}  {code}", err=True)
    failing = report.at_or_above(fail_on)
    if failing and not result.refused:  # e.g. an export that cannot be read: its devices are not even seen
        first = failing[0]
        click.echo(f"FAIL         {len(failing)} finding(s) at or above {fail_on}, first {first.code}: "
                   "run 'vault audit' for the report", err=True)  # fmt: skip
    if result.refused or failing:
        click.get_current_context().exit(EXIT_FINDINGS)
