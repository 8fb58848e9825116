"""``vault audit``: check evidence exports against the trust policy and the release, and report.

Exit status: 0 when no finding is at or above ``--fail-on`` (default: high),
3 when at least one is, 1 when the audit cannot start at all (the wrong
token, a policy or bundle that does not verify; one unreadable export is a
finding, not an error), and 2 for a usage error.
"""

from __future__ import annotations

import shutil
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from cryptography import x509

from vault._files import read_capped, write_new
from vault.cli._options import PKCS11_URI, force_option
from vault.errors import InputError
from vault.token import Pkcs11Uri

EXIT_FINDINGS = 3
"""The exit status when a finding is at or above ``--fail-on``."""

AUDITOR_LABEL = "auditor-decrypt"
COSIGN_LABEL = "auditor-cosign"
_SEVERITIES = ("critical", "high", "medium", "low", "info")  # vault.audit.SEVERITIES, without importing it here
_EXPORT_SUFFIX = ".vault-evidence"
_STATION_COPY_SUFFIX = ".station-copy"  # vault.verify.COPY_SUFFIX, without importing the station library here
_CLOSEOUT_SUFFIX = ".vault-closeout"  # vault.closeout.CLOSEOUT_SUFFIX
_PATH = click.Path(exists=True, dir_okay=False, path_type=Path)
_NEW = click.Path(dir_okay=False, path_type=Path)
_TOP = 8  # findings shown in the summary
_EVIDENCE_SHOWN = 2  # evidence items shown under each of them
_STDOUT = Path("-")
F = TypeVar("F", bound=Callable[..., Any])


def _exports(given: tuple[Path, ...]) -> list[Path]:
    """The export files: each file given, and every ``*.vault-evidence`` in each folder given.

    A station's own copy of an export (``*.station-copy``, sealed to the station for
    ``vault station recover``) travels in the same folder; given by name (``evidence/*``),
    it is left out with a note rather than reported as evidence the auditor cannot open.
    """
    paths: list[Path] = []
    for path in given:
        if path.is_dir():
            found = sorted(path.glob(f"*{_EXPORT_SUFFIX}"))
            if not found:
                raise InputError(f"{path} holds no {_EXPORT_SUFFIX} files")
            paths.extend(found)
        elif path.suffix == _CLOSEOUT_SUFFIX:
            continue  # a close-out: read by _closeouts
        elif path.suffix == _STATION_COPY_SUFFIX:
            note = "a station's own copy (for 'vault station recover'), not evidence"
            click.echo(f"skipped      {path}: {note}", err=True)
        else:
            paths.append(path)
    if given and not paths:
        raise InputError("no evidence exports given (only station copies)")
    return paths


def _closeouts(given: tuple[Path, ...]) -> list[Path]:
    """The stations' close-outs: each ``*.vault-closeout`` given, and those in each folder given."""
    found: list[Path] = []
    for path in given:
        found.extend(sorted(path.glob(f"*{_CLOSEOUT_SUFFIX}")) if path.is_dir() else [])
        found.extend([path] if path.is_file() and path.suffix == _CLOSEOUT_SUFFIX else [])
    return found


def _silence(_: click.Context, __: click.Parameter, value: str) -> Any:
    from vault.audit._closeout import parse_duration

    try:
        return parse_duration(value)
    except InputError as e:
        raise click.BadParameter(str(e)) from e


def _root(path: Path) -> x509.Certificate:
    from vault.pki import read_certificate

    return read_certificate(path)


def _wrapped(head: str, text: str, width: int) -> str:
    """A finding's whole message after ``head``, made safe for a terminal and wrapped under itself."""
    clean = "".join(c if c.isprintable() else "?" for c in text)
    indent = " " * len(head)
    lines = textwrap.wrap(clean, width - len(head), break_long_words=True, break_on_hyphens=False) or [""]
    return "\n".join((head if i == 0 else indent) + line for i, line in enumerate(lines))


def _shown(text: str, limit: int = 110) -> str:
    """Evidence text made safe for a terminal: no control characters, one line, cut to ``limit``."""
    clean = "".join(c if c.isprintable() else "?" for c in text)
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"


def _limit(name: str, kind: click.ParamType[Any], default: float, what: str) -> Callable[[F], F]:
    """An audit threshold option (docs/audit-report.md); the finding it sets is named in the help."""
    code = {"--min-cycle": "cycle-too-fast", "--max-clock-step": "clock-jump",
            "--operator-window": "operator-two-stations", "--max-reworks": "rework-repeated"}[name]  # fmt: skip
    return click.option(name, type=kind, default=default, show_default=True, help=f"{what} ({code}).")


def evidence_inputs(f: F) -> F:
    """What an audit reads: the EXPORTS, ``--root-cert``, ``--policy`` and ``--bundle`` (also 'vault secrets')."""
    f = click.option(
        "--bundle",
        "bundle_files",
        type=click.Path(exists=True, path_type=Path),
        required=True,
        multiple=True,
        help="A release bundle the stations used, or a folder whose every file is one; repeat for several releases.",
    )(f)
    f = click.option("--policy", "policy_file", type=_PATH, required=True, help="The trust policy to audit against.")(f)
    f = click.option("--root-cert", type=_PATH, required=True, help="The pinned root certificate (PEM or DER).")(f)
    return click.argument("exports", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))(f)


def audit_limits(f: F) -> F:
    """The audit's limits (``docs/audit-report.md``), ``--max-silence`` and ``--workers`` (also 'vault secrets')."""
    f = _limit("--max-reworks", click.IntRange(0, 10**9), 3, "Reworks of one device allowed")(f)
    f = _limit(
        "--operator-window", click.IntRange(1, 10**9), 600, "Seconds of overlap at two stations for one operator"
    )(f)
    f = _limit("--max-clock-step", click.IntRange(0, 10**9), 300, "Seconds a wall clock may run ahead within one run")(
        f
    )
    f = _limit("--min-cycle", click.FloatRange(0.01, 86400), 1.0, "Fastest a fixture finishes a unit, in seconds")(f)
    f = click.option("--workers", type=click.IntRange(1, 1024), help="Worker processes (default: one per CPU).")(f)
    return click.option(
        "--max-silence",
        default="7d",
        show_default=True,
        callback=_silence,
        help="How old (90m, 36h, 7d, 2w) a station's newest export may be when it has not closed the release.",
    )(f)


@click.command("audit")
@evidence_inputs
@click.option(
    "--token",
    "uri",
    type=PKCS11_URI,
    required=True,
    help=f"The auditor's token, with its PIN source; its key '{AUDITOR_LABEL}' unless the URI names one.",
)
@click.option("--json", "json_out", type=_NEW, help="Write the JSON report to this new file ('-': standard output).")
@click.option("--html", "html_out", type=_NEW, help="Write the HTML report to this new file.")
@click.option(
    "--fail-on",
    type=click.Choice(_SEVERITIES),
    default="high",
    show_default=True,
    help=f"Exit {EXIT_FINDINGS} when a finding is at this severity or worse.",
)
@click.option(
    "--cosign",
    "cosign_out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Cosign the verified station checkpoints and write them, with a proof per audited device, "
    "to this new folder (for 'vault registry export').",
)
@click.option(
    "--cosign-key",
    default=COSIGN_LABEL,
    show_default=True,
    help="The label of the cosigning key in the auditor's token (enrolled in the policy's cosigners).",
)
@click.option(
    "--cosign-severity",
    type=click.Choice(_SEVERITIES),
    default="high",
    show_default=True,
    help="Cosign no log entry, and give no proof to a device, that a finding at this severity or worse touches.",
)
@click.option(
    "--state",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep what was verified in this folder (made by the first run, authenticated by the token): "
    "later runs audit only the exports not audited yet, with the report of a full audit.",
)
@audit_limits
@force_option
def audit(
    exports: tuple[Path, ...],
    root_cert: Path,
    policy_file: Path,
    bundle_files: tuple[Path, ...],
    uri: Pkcs11Uri,
    json_out: Path | None,
    html_out: Path | None,
    fail_on: str,
    max_silence: Any,
    cosign_out: Path | None,
    cosign_key: str,
    cosign_severity: str,
    workers: int | None,
    min_cycle: float,
    max_clock_step: int,
    operator_window: int,
    max_reworks: int,
    state: Path | None,
    force: bool,
) -> None:
    """Audit evidence EXPORTS (files, or folders of *.vault-evidence and *.vault-closeout) from the stations.

    Decrypts them with the auditor's token key and checks every manifest,
    certificate and log against the trust policy and the release bundle it names;
    prints a summary and writes the reports. Exit status: 0 when no finding
    is at or above --fail-on, 3 when one is, 1 when the input cannot be audited.
    """
    from vault.audit import Thresholds
    from vault.audit import audit as run_audit
    from vault.policy import MAX_POLICY_SIZE
    from vault.token import open_token

    paths = _exports(exports)
    closeouts = _closeouts(exports)
    to_stdout = json_out == _STDOUT
    for out in (None if to_stdout else json_out, html_out, cosign_out):
        if out is not None and out.exists() and not force:
            raise InputError(f"{out} exists; vault does not write over files (remove it, or pass --force)")
    for out in (None if to_stdout else json_out, html_out):  # refused before the audit, not after it
        if out is not None and not out.absolute().parent.is_dir():
            raise InputError(f"cannot write {out}: no folder {out.parent} (make it first)")
    if state is not None and not state.exists() and not state.absolute().parent.is_dir():  # a typo, not a new state
        raise InputError(f"no folder {state.parent} for the audit state {state} (the first run makes only that folder)")
    root = _root(root_cert)
    policy = read_capped(policy_file, MAX_POLICY_SIZE, "trust policy")
    with open_token(uri) as session:
        key = session.key_for(uri) if uri.object or uri.id else session.key(label=AUDITOR_LABEL)
        # the cosigning key is found and checked before the audit, so a wrong one costs no audit
        cosigner = _cosigner(session, cosign_key, policy, root) if cosign_out is not None else None
        with _progress() as progress:
            report = run_audit(
                paths,
                policy=policy,
                root_certificate=root,
                bundle_path=bundle_files,
                decapsulator=key,
                workers=workers,
                progress=progress,
                thresholds=Thresholds(min_cycle, max_clock_step, operator_window, max_reworks),
                closeouts=closeouts,
                max_silence=max_silence,
                state=state,
            )
        if to_stdout:
            click.echo(report.to_json(fail_on), nl=False)
        elif json_out is not None:
            write_new(json_out, report.to_json(fail_on).encode("utf-8"), overwrite=force)
        if html_out is not None:
            write_new(html_out, report.to_html(fail_on).encode("utf-8"), overwrite=force)
        _summary(report, fail_on, None if to_stdout else json_out, html_out, err=to_stdout)
        if cosigner is not None and cosign_out is not None:  # after the reports: they are kept whatever happens
            cosigned = _cosign(report, paths, cosigner, key, cosign_severity)
            cosigned.write(cosign_out, overwrite=force)
            _cosign_summary(cosigned, cosign_out, err=to_stdout)
    if not report.passed(fail_on):
        click.get_current_context().exit(EXIT_FINDINGS)


def _cosigner(session: Any, label: str, policy: bytes, root: x509.Certificate) -> tuple[Any, Any]:
    """The cosigning key and the verified policy, refused before the audit if the policy does not enrol it."""
    from datetime import UTC, datetime

    from vault.audit import cosigner_holder
    from vault.policy import load_policy

    trust = load_policy(policy, root, now=datetime.now(UTC), allow_expired=True)
    signer = session.key(label=label)
    cosigner_holder(trust, signer)
    return signer, trust


def _cosign(report: Any, paths: list[Path], cosigner: tuple[Any, Any], decrypt: Any, severity: str) -> Any:
    """Cosign what the audit verified (vault.audit.cosign), against the policy the audit used."""
    from datetime import UTC, datetime

    from vault.audit import cosign

    signer, trust = cosigner
    return cosign(report, paths, trust, decapsulator=decrypt, signer=signer, severity=severity, now=datetime.now(UTC))


def _cosign_summary(cosigned: Any, folder: Path | None, *, err: bool) -> None:
    for log in cosigned.logs:
        if log.size is None:
            why = f": {log.blocked_by}" if log.blocked_by else ""
            click.echo(f"cosigned    {log.station_id}: nothing (verified {log.verified_size}){why}", err=err)
        else:
            stop = f", held at {log.blocked_by}" if log.blocked_by else ""
            click.echo(f"cosigned    {log.station_id} up to {log.size} of {log.verified_size}{stop}", err=err)
    excluded = len(cosigned.excluded)
    click.echo(f"proofs      {len(cosigned.devices)} device(s), {excluded} excluded, in {folder}", err=err)


def _summary(report: Any, fail_on: str, json_out: Path | None, html_out: Path | None, *, err: bool = False) -> None:
    """The summary, on standard output (on standard error when the JSON report goes to standard output)."""

    def echo(line: str) -> None:
        click.echo(line, err=err)

    echo(
        f"audited     {len(report.exports)} export(s) from {len(report.stations)} station(s): "
        f"{report.manifests:,} manifests, {report.verified:,} verified, in {report.seconds:.1f} s"
    )
    for item in report.bundles:
        bundle, used = item.bundle, item.totals
        promoted = "promoted" if bundle.promoted else "NOT promoted"
        echo(f"release     {_shown(bundle.product)} {_shown(bundle.version)}, bundle {bundle.bundle_id} ({promoted})")
        if len(report.bundles) > 1:  # one bundle: the totals are its own
            shares = ", ".join(f"{_shown(s, 32)} {r.reserved:,}/{r.allocation:,}" for s, r in item.stations)
            used_line = f"{used.reserved:,} of {used.allocation:,} units reserved, {used.provisioned:,} provisioned"
            echo(f"            {used_line}; {shares}")
    counts = report.counts()
    echo("findings    " + ", ".join(f"{counts[s]} {s}" for s in _SEVERITIES))
    width = max(80, shutil.get_terminal_size((100, 24)).columns)
    for finding in report.findings[:_TOP]:
        head = f"  {finding.severity:<9}{finding.code:<29}"
        echo(_wrapped(head, finding.message, width))
        for item in finding.evidence[:_EVIDENCE_SHOWN]:
            echo(_wrapped(" " * 11 + "at ", item.where(), width))
        if len(finding.evidence) > _EVIDENCE_SHOWN or finding.truncated:
            listed = len(finding.evidence)
            items = f"{listed}+ evidence items: the first {listed}" if finding.truncated else f"{listed} items: all"
            echo(" " * 14 + f"({items} in the JSON and HTML reports)")
    if len(report.findings) > _TOP:
        echo(f"  ... and {len(report.findings) - _TOP} more in the report")
    if json_out is not None:
        echo(f"json report {json_out}")
    if html_out is not None:
        echo(f"html report {html_out}")
    failing = report.at_or_above(fail_on)
    if failing:
        echo(f"FAIL: {len(failing)} finding(s) at or above {fail_on}")
    else:
        echo(f"PASS: no finding at or above {fail_on}")


class _progress:
    """A progress bar on stderr while the audit runs, when stderr is a terminal; otherwise nothing."""

    def __enter__(self) -> Any:
        if not sys.stderr.isatty():
            self._bar = None
            return None
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("auditing"),
            BarColumn(),
            DownloadColumn(),
            TextColumn("{task.fields[manifests]:,} manifests"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._bar.__enter__()
        self._task = self._bar.add_task("audit", total=None, manifests=0)
        bar, task = self._bar, self._task

        def update(state: Any) -> None:
            bar.update(task, completed=state.bytes_done, total=state.bytes_total, manifests=state.manifests)

        return update

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
