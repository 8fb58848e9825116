"""``vault station ...``: a factory station's own steps, such as asking to be enrolled."""

from __future__ import annotations

import datetime
import functools
import hashlib
from pathlib import Path
from typing import Any

import click
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from vault._files import read_capped, write_new
from vault._words import readable_digest
from vault.cli._options import PKCS11_URI, echo_json, force_option, json_option
from vault.cli._station_config import StationConfig, load_station_config
from vault.crypto import CURVES, verify_signature
from vault.errors import (
    BundleClosedError,
    InputError,
    KeyNotFoundError,
    SignatureError,
    StateError,
    TokenError,
    TokenOperationError,
)
from vault.pki import read_certificate
from vault.policy import MAX_POLICY_SIZE, format_time
from vault.token import Need, Pkcs11Uri, TokenKey, TokenSession, open_token
from vault.verify import DECRYPTION_LABEL, ISSUING_CA_LABEL, SIGNING_LABEL, STEPS, Station
from vault.verify.devices._run import run_fixtures

_STATE = click.Path(file_okay=False, path_type=Path)
_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)

_PROBE = b"vault station key usage check"


@click.group()
def station() -> None:
    """Factory stations: enrolment requests, loading releases, provisioning, status and evidence export."""


_LONG_OPTIONS = {"state_dir": "--state", "uri": "--token", "station_id": "--station-id", "root_cert": "--root-cert",
                 "root_fingerprint": "--root-fingerprint"}  # fmt: skip


def _station_options(command: Any) -> Any:
    """The station's long options, or ``--config station.yaml`` in their place (its settings are then in
    ``click.get_current_context().meta["vault.station_config"]``)."""

    @functools.wraps(command)
    def resolved(config: Path | None, **kwargs: Any) -> Any:
        given = [name for name in _LONG_OPTIONS if kwargs[name] is not None]
        if config is not None:
            if given:
                raise InputError(f"--config names the station: leave out {', '.join(_LONG_OPTIONS[n] for n in given)}")
            loaded = load_station_config(config)
            click.get_current_context().meta["vault.station_config"] = loaded
            kwargs.update(state_dir=loaded.state, uri=loaded.token, station_id=loaded.station_id,
                          root_cert=loaded.root_cert, root_fingerprint=loaded.root_fingerprint)  # fmt: skip
        else:
            for name in ("state_dir", "uri", "station_id"):
                if kwargs[name] is None:
                    flag = _LONG_OPTIONS[name]
                    raise InputError(f"give {flag}, or --config with a station configuration")
        return command(**kwargs)

    f = resolved
    f = click.option(
        "--root-fingerprint", help="Or: the root certificate's SHA-256 (hex), checked against the policy."
    )(f)
    f = click.option("--root-cert", type=_FILE, help="The pinned root certificate (PEM or DER).")(f)
    f = click.option("--station-id", help="The id this station was enrolled as.")(f)
    f = click.option("--token", "uri", type=PKCS11_URI, help="The station's token (URI with its PIN source).")(f)
    f = click.option("--state", "state_dir", type=_STATE, help="The station's state folder (its count and log).")(f)
    f = click.option(
        "--config", type=_FILE, help="A station configuration (stations/*.yaml) in place of the options below."
    )(f)
    return f


def _config() -> StationConfig | None:
    """The station configuration given with --config, if any."""
    found: StationConfig | None = click.get_current_context().meta.get("vault.station_config")
    return found


def _root(root_cert: Path | None, root_fingerprint: str | None) -> x509.Certificate | str:
    if (root_cert is None) == (root_fingerprint is None):
        raise InputError("pin the root with exactly one of --root-cert and --root-fingerprint")
    if root_cert is None:
        assert root_fingerprint is not None
        return root_fingerprint
    return read_certificate(root_cert)


def _open_station(
    state_dir: Path,
    uri: Pkcs11Uri,
    station_id: str,
    root_cert: Path | None,
    root_fingerprint: str | None,
    operator: str = "operator",
    *,
    new: bool = False,
) -> Station:
    """The station on ``state_dir``; only ``load`` (``new``) may start a folder, the others need one."""
    root = _root(root_cert, root_fingerprint)
    if not new and not (state_dir / "station.sqlite").is_file():
        raise InputError(f"no station state in {state_dir}: run 'vault station load' first")
    opened = Station(state_dir, token=uri, station_id=station_id, root=root, operator=operator)
    config = _config()
    if config is not None and config.components:  # every unit's manifest records the lots in force
        opened.declare_components(config.components)
    return opened


@station.command("load")
@_station_options
@click.option("--policy", "policy_file", type=_FILE, required=True, help="The current trust policy.")
@click.option("--bundle", "bundle_file", type=_FILE, required=True, help="The promoted release bundle.")
@json_option
def load(
    state_dir: Path,
    uri: Pkcs11Uri,
    station_id: str,
    root_cert: Path | None,
    root_fingerprint: str | None,
    policy_file: Path,
    bundle_file: Path,
    as_json: bool,
) -> None:
    """Verify a promoted bundle for this station and decrypt every image against its allowlist."""
    policy = read_capped(policy_file, MAX_POLICY_SIZE, "trust policy")
    with _open_station(state_dir, uri, station_id, root_cert, root_fingerprint, new=True) as opened:
        loaded = opened.load(bundle_file, policy)
    r = loaded.release
    if as_json:
        echo_json(
            {
                "station_id": station_id,
                "bundle_id": r.bundle_id,
                "product": r.product,
                "version": r.version,
                "security_counter": r.security_counter,
                "policy_version": loaded.policy.version,
                "allocation": loaded.allocation,
                "used": loaded.used,
                "left": loaded.left,
                "expires": format_time(r.expires),
                "images": [{"name": i.name, "sha256": i.sha256} for i in loaded.images],
            }
        )
        return
    click.echo(f"loaded       {r.product} {r.version} (bundle {r.bundle_id}, security counter {r.security_counter})")
    click.echo(f"policy       v{loaded.policy.version}; approved and promoted; valid until {format_time(r.expires)}")
    for image in loaded.images:
        click.echo(f"image        {image.name}  {image.sha256}  {image.length} bytes  decrypted and matched")
    click.echo(f"allocation   {loaded.allocation} units for {station_id}: {loaded.used} used, {loaded.left} left")


EXIT_REFUSED = 4
"""``vault station provision``'s exit status when units were refused because the allocation was used up."""

EXIT_INTERRUPTED = 130
"""The exit status after Ctrl-C (128 + SIGINT), as shells report it."""

_REFUSALS = {"allocation": "over the allocation", "identity": "identity", "clone": "clone"}


@station.command("provision")
@_station_options
@click.option("--count", type=click.IntRange(1, 100000), required=True, help="Devices to provision (at most).")
@click.option(
    "--fixtures", type=click.IntRange(1, 64), help="Simulated fixtures at once (default 4; --config names its own)."
)
@click.option("--operator", help="Who runs the station, in each manifest (default 'operator'; --config: one allowed).")
@click.option(
    "--dry-run", is_flag=True, help="With --config: walk every step on the devices, writing and recording nothing."
)
@click.option(
    "--bundle-id", help="The loaded release to provision from: its bundle id or a prefix (default: the last loaded)."
)
@click.option(
    "--label-mismatch", type=int, multiple=True, metavar="N", help="Unit N's scanner reads unit N-1's label (N >= 2)."
)
@click.option("--fail", "failures", multiple=True, metavar="N:STEP", help=f"Unit N fails at STEP ({', '.join(STEPS)}).")
@click.option("--rework", type=int, multiple=True, metavar="N", help="Unit N comes back for rework after the run.")
@click.option(
    "--retry",
    type=int,
    multiple=True,
    metavar="N",
    help="Unit N, which failed, is tried again after the run.",
)
@click.option("--label-prefix", default="SN-", show_default=True, help="Simulated labels: prefix and 8 hex digits.")
@json_option
def provision(
    state_dir: Path,
    uri: Pkcs11Uri,
    station_id: str,
    root_cert: Path | None,
    root_fingerprint: str | None,
    count: int,
    fixtures: int | None,
    operator: str | None,
    dry_run: bool,
    bundle_id: str | None,
    label_mismatch: tuple[int, ...],
    failures: tuple[str, ...],
    rework: tuple[int, ...],
    retry: tuple[int, ...],
    label_prefix: str,
    as_json: bool,
) -> None:
    """Provision devices from a loaded release over several fixtures at once.

    With --config, the configured fixtures' adapters drive the devices
    (headless); without it, simulated devices, into which faults can be
    injected to see them refused and logged: a label swap, a failing step,
    a retry of a failed unit, a rework (also with --config when every
    fixture is simulated). Every unit ends with a signed manifest in the
    station log, whatever happened to it. Exit status: 0 when the run
    ended, 4 when units were refused because the allocation is used up
    (or the release was closed with 'vault station close'),
    130 after Ctrl-C (the units on the fixtures finish and are logged first).
    """
    from vault.verify._simulate import ProvisioningInterrupted, parse_failures, run_simulation

    config = _config()
    simulating = bool(label_mismatch or failures or rework or retry or label_prefix != "SN-")
    runs = None
    if config is None:
        if dry_run:
            raise InputError("--dry-run rehearses the fixtures of a station configuration: give --config")
        operator = operator or "operator"
        fixtures = fixtures or 4
    else:
        operator = config.check_operator(operator)
        if fixtures is not None:
            raise InputError("--config names the fixtures: leave out --fixtures")
        runs = config.make_fixtures(dry_run=dry_run)  # every adapter checks its options before a device is touched
        if simulating:
            others = sorted({f.adapter for f in config.fixtures} - {"simulated"})
            if others or dry_run:
                why = "--dry-run" if dry_run else f"the {', '.join(others)} adapter"
                raise InputError(f"fault injection (--fail, --label-mismatch, --rework, --retry) is not for {why}")
            fixtures, runs = len(config.fixtures), None
    plan = parse_failures(failures, count)
    for n in (*label_mismatch, *rework, *retry):
        if not 1 <= n <= count:
            raise InputError(f"unit {n} is not among the {count} simulated units")
    if 1 in label_mismatch:
        raise InputError(
            "--label-mismatch N gives unit N the label of unit N-1: unit 1 has none before it (use 2 or more)"
        )
    stop: ProvisioningInterrupted | None = None
    fixture_errors: list[tuple[int, str]] = []
    with _open_station(state_dir, uri, station_id, root_cert, root_fingerprint, operator) as opened:
        loaded = opened.resume(bundle_id)
        try:
            opened.check_not_closed()
        except BundleClosedError as e:  # refused like units over the allocation, before any is started
            click.echo(f"vault: error: {e}", err=True)
            click.get_current_context().exit(EXIT_REFUSED)
        try:
            if runs is not None:
                assert config is not None
                run = run_fixtures(opened, runs, count=count, label_source=config.label_source, dry_run=dry_run)
                results, fixture_errors = run.units, run.fixture_errors
            else:
                assert fixtures is not None
                results = run_simulation(
                    opened,
                    count=count,
                    fixtures=fixtures,
                    fail=plan,
                    label_mismatch=set(label_mismatch),
                    rework=list(rework),
                    retry=list(retry),
                    label_prefix=label_prefix,
                )
        except ProvisioningInterrupted as e:
            stop, results = e, e.results
        status = opened.status()
    left = next((a.left for a in status.releases if a.bundle_id == loaded.release.bundle_id), 0)
    over = [r for r in results if r.refusal == "allocation"]
    in_flight = [] if stop is None else [r for r in results if r.unit in stop.in_flight]
    if as_json:
        echo_json({
            "bundle_id": loaded.release.bundle_id, "units": [r.to_json() for r in results], "events": status.events,
            "refused": status.refused, "left": left,
            "interrupted": None if stop is None else {"in_flight": stop.in_flight, "not_started": stop.not_started},
            "dry_run": dry_run, "fixture_errors": [{"slot": slot, "error": why} for slot, why in fixture_errors],
        })  # fmt: skip
    else:
        r0 = loaded.release
        click.echo(f"release      {r0.product} {r0.version} (bundle {r0.bundle_id})")
        for r in results:
            click.echo(r.line())
            for m in r.measurements:
                passed = m.verdict()
                verdict = "" if passed is None else ("  pass" if passed else "  FAIL")
                click.echo(f"             {m.name} {m.value} {m.unit}{verdict}")
        if dry_run:
            click.echo(f"dry run      {len(results)} devices walked through every step; nothing written, counted "
                       "or logged")  # fmt: skip
        click.echo(f"log          {status.log_size} manifests: {_event_counts(status.events, status.refused)}; "
                   f"{left} units left")  # fmt: skip
    for slot, why in fixture_errors:
        click.echo(f"vault: fixture {slot} stopped: {why}", err=True)
    ctx = click.get_current_context()
    if stop is not None:
        for r in in_flight:
            click.echo(f"vault: on a fixture at Ctrl-C: {r.line()}", err=True)
        said = _run_counts(in_flight)
        counted = sum(1 for r in in_flight if r.event in ("provisioned", "retry", "rework", "failed"))
        click.echo(
            f"vault: interrupted: {len(in_flight)} units were on the fixtures and finished"
            + (f"; their manifests say {said} ({counted} counted against the allocation)" if in_flight else "")
            + f"; {stop.not_started} units were not started (nothing counted or logged)",
            err=True,
        )
        ctx.exit(EXIT_INTERRUPTED)
    if over:
        click.echo(f"vault: {len(over)} of {len(results)} units were refused: {over[0].error}", err=True)
        ctx.exit(EXIT_REFUSED)
    if dry_run and any(r.event != "dry-run" for r in results):
        bad = next(r for r in results if r.event != "dry-run")
        click.echo(f"vault: the dry run failed on fixture {bad.fixture}: {bad.error}", err=True)
        ctx.exit(1)


def _event_counts(events: dict[str, int], refused: dict[str, int]) -> str:
    """``20 provisioned, 4 refused: 4 over the allocation``: refusals apart from the failures they are logged as."""
    shown = dict(events)
    if refused:
        shown["failed"] = shown.get("failed", 0) - sum(refused.values())
    parts = [f"{n} {event}" for event, n in sorted(shown.items()) if n > 0]
    if refused:
        why = ", ".join(f"{n} {_REFUSALS.get(step, step)}" for step, n in sorted(refused.items()))
        parts.append(f"{sum(refused.values())} refused: {why}")
    return ", ".join(parts) or "empty"


def _run_counts(results: list[Any]) -> str:
    """``2 provisioned, 1 refused``: what a list of unit results say."""
    counts: dict[str, int] = {}
    for r in results:
        counts[r.event] = counts.get(r.event, 0) + 1
    return ", ".join(f"{n} {event}" for event, n in sorted(counts.items()))


@station.command("console")
@_station_options
@click.option(
    "--bundle-id", help="The loaded release to provision from: its bundle id or a prefix (default: the last loaded)."
)
def console(
    state_dir: Path,
    uri: Pkcs11Uri,
    station_id: str,
    root_cert: Path | None,
    root_fingerprint: str | None,
    bundle_id: str | None,
) -> None:
    """The operator's console (full screen): one panel per configured fixture, sign in and out, stops a
    supervisor acknowledges, labels, and export on one key (F5). Needs --config."""
    config = _config()
    if config is None:
        raise InputError("the console runs a station configuration: give --config station.yaml")
    if not config.supervisors:
        raise InputError(f"{config.path}: supervisors: the console needs the supervisors who may acknowledge a stop")
    try:
        from vault.console._app import make_console
    except ImportError as e:
        raise InputError(f"the console needs the console extra (pip install 'vault[console]'): {e}") from e
    runs = config.make_fixtures(dry_run=False)  # every adapter checks its options before a device is touched
    with _open_station(state_dir, uri, station_id, root_cert, root_fingerprint, config.operators[0]) as opened:
        opened.resume(bundle_id)
        opened.check_not_closed()
        app = make_console(
            opened, runs, adapters={f.slot: f.adapter for f in config.fixtures}, labels=config.labels,
            label_source=config.label_source, operators=config.operators, supervisors=config.supervisors,
            evidence=config.evidence, export_warning_hours=config.export_warning_hours,
        )  # fmt: skip
        app.run()
    if app.line is not None and app.line.fatal is not None:
        raise StateError(app.line.fatal)


@station.command("record")
@click.argument("serial")
@_station_options
@json_option
def record(
    serial: str,
    state_dir: Path,
    uri: Pkcs11Uri,
    station_id: str,
    root_cert: Path | None,
    root_fingerprint: str | None,
    as_json: bool,
) -> None:
    """What this station's log holds about one unit (SERIAL: its serial or hardware id): every event, the
    images programmed, its certificate, its measurements and labels, each from a verified manifest."""
    with _open_station(state_dir, uri, station_id, root_cert, root_fingerprint) as opened:
        history = opened.history(serial)
    from vault.cli._record import show_record

    show_record(history, as_json=as_json)


@station.command("label")
@click.argument("serials", nargs=-1)
@_station_options
@click.option("--operator", help="Who makes the labels (one of the configuration's operators).")
@click.option("--all", "every", is_flag=True, help="Every unit this station provisioned (in place of SERIALS).")
@json_option
def label(
    serials: tuple[str, ...],
    operator: str | None,
    every: bool,
    state_dir: Path,
    uri: Pkcs11Uri,
    station_id: str,
    root_cert: Path | None,
    root_fingerprint: str | None,
    as_json: bool,
) -> None:
    """Make the label of provisioned units again (SERIALS: serials or hardware ids), as the configuration
    says (PNG and ZPL, or its printer); each is recorded in the unit's log. Needs --config."""
    config = _config()
    if config is None:
        raise InputError("labels are made as a station configuration says: give --config station.yaml")
    from vault.cli._record import label_units

    if every == bool(serials):
        raise InputError("name the units' serials, or give --all")
    who = config.check_operator(operator)
    with _open_station(state_dir, uri, station_id, root_cert, root_fingerprint, who) as opened:
        opened.resume(None)
        label_units(opened, config.labels, serials or opened.provisioned_serials(), as_json=as_json)


@station.group("lot")
def lot() -> None:
    """Component lots: the reel of each component in use, recorded in every unit's manifest."""


@lot.command("set")
@click.argument("component")
@click.argument("code")
@_station_options
def lot_set(
    component: str,
    code: str,
    state_dir: Path,
    uri: Pkcs11Uri,
    station_id: str,
    root_cert: Path | None,
    root_fingerprint: str | None,
) -> None:
    """Set the lot CODE of COMPONENT (a reel just scanned) for every unit from the next one on.

    The component and its lot code pattern are declared under 'components:'
    in the station configuration (--config); a code that does not match the
    pattern is refused.
    """
    if _config() is None:
        raise InputError("give --config: the components and their lot code patterns are declared there")
    with _open_station(state_dir, uri, station_id, root_cert, root_fingerprint) as opened:
        opened.set_lot(component, code)
        lots = opened.lots() or {}
    click.echo(f"lot          {component} {code}: recorded in every unit's manifest from the next unit on")
    click.echo("in force     " + ", ".join(f"{name} {value}" for name, value in lots.items()))


@station.command("status")
@_station_options
@json_option
def status(
    state_dir: Path,
    uri: Pkcs11Uri,
    station_id: str,
    root_cert: Path | None,
    root_fingerprint: str | None,
    as_json: bool,
) -> None:
    """Allocation used and left per release, the log, and the last checkpoint exported."""
    with _open_station(state_dir, uri, station_id, root_cert, root_fingerprint) as opened:
        size, root = opened.verify_log()
        st = opened.status()
    last = st.last_export
    if as_json:
        echo_json(
            {
                "station_id": st.station_id,
                "policy_version": st.policy_version,
                "log_size": size,
                "root": root.hex(),
                "events": st.events,
                "refused": st.refused,
                "last_time": st.last_time,
                "token_head": None if st.token_head is None else st.token_head.to_value(),
                "releases": [
                    {
                        "bundle_id": a.bundle_id,
                        "product": a.product,
                        "version": a.version,
                        "allocation": a.allocation,
                        "used": a.used,
                        "left": a.left,
                        "expires": a.expires,
                        "closed": a.closed,
                    }
                    for a in st.releases
                ],
                "last_export": None
                if last is None
                else {
                    "sequence": last.sequence,
                    "path": str(last.path),
                    "size": last.to_size,
                    "root": last.root,
                    "checkpoint": last.checkpoint.decode(),
                },
            }
        )
        return
    click.echo(f"station      {st.station_id} (trust policy v{st.policy_version})")
    for a in st.releases:
        click.echo(
            f"release      {a.product} {a.version} (bundle {a.bundle_id}): "
            + (f"{a.used} of {a.allocation} used, closed" if a.closed else f"{a.used} of {a.allocation} used, "
               f"{a.left} left; until {a.expires}")
        )  # fmt: skip
    click.echo(f"log          {size} manifests: {_event_counts(st.events, st.refused)}; root {root.hex()}; verified")
    if st.token_head is not None:
        click.echo(f"token        holds this folder's head: {st.token_head.describe()}")
    if last is None:
        click.echo("checkpoint   none exported yet")
    else:
        click.echo(f"checkpoint   size {last.to_size}, root {last.root}, export {last.sequence}: {last.path}")


@station.command("export")
@_station_options
@click.option("--out", "out_dir", type=_STATE, help="The write-once evidence folder (with --config: its evidence).")
@json_option
def export(
    state_dir: Path,
    uri: Pkcs11Uri,
    station_id: str,
    root_cert: Path | None,
    root_fingerprint: str | None,
    out_dir: Path | None,
    as_json: bool,
) -> None:
    """Export the manifests since the last export, encrypted to the auditor, with a signed checkpoint."""
    config = _config()
    out_dir = out_dir or (config.evidence if config is not None else None)
    if out_dir is None:
        raise InputError("give --out, or --config with an evidence folder")
    with _open_station(state_dir, uri, station_id, root_cert, root_fingerprint) as opened:
        result = opened.export(out_dir)
    if as_json:
        echo_json({"path": str(result.path), "sequence": result.sequence, "from": result.from_size,
                   "to": result.to_size, "root": result.root})  # fmt: skip
        return
    click.echo(
        f"export       {result.sequence}: manifests {result.from_size} to {result.to_size - 1}"
        if result.to_size > result.from_size
        else f"export       {result.sequence}: no new manifests"
    )
    click.echo(f"checkpoint   size {result.to_size}, root {result.root}")
    click.echo(f"written      {result.path} (read-only, encrypted to the auditor key)")


@station.command("close")
@click.argument("bundle")
@_station_options
@click.option("--out", "out_dir", type=_STATE, required=True, help="The evidence folder (where 'export' writes).")
@json_option
def close(
    bundle: str,
    state_dir: Path,
    uri: Pkcs11Uri,
    station_id: str,
    root_cert: Path | None,
    root_fingerprint: str | None,
    out_dir: Path,
    as_json: bool,
) -> None:
    """Close a release (BUNDLE: its bundle file, or its bundle id or a prefix): no further unit of it.

    Exports what the log holds that no export carries yet, then signs a
    close-out (units used and how they ended, the log's final size and root,
    from the station token's head) and writes it, unencrypted, beside the
    exports in --out. Refused while a unit of the release is on a fixture.
    Interrupted, the same command completes it; run again, it shows it.
    """
    with _open_station(state_dir, uri, station_id, root_cert, root_fingerprint) as opened:
        result = opened.close(_bundle_id(bundle), out_dir)
    c = result.closeout
    if as_json:
        echo_json({**c.to_json(), "path": str(result.path), "already": result.already,
                   "export": None if result.export is None else str(result.export.path)})  # fmt: skip
        return
    if result.export is not None:
        e = result.export
        click.echo(f"export       {e.sequence}: manifests {e.from_size} to {e.to_size - 1} (the last before closing)")
    u = c.units
    click.echo(f"closed       {c.product} {c.version} (bundle {c.bundle_id}) at {station_id}"
               + (" (closed before; this is its close-out)" if result.already else ""))  # fmt: skip
    click.echo(f"units        {u.used} of {c.allocation} used: {u.provisioned} provisioned, {u.failed} failed, "
               f"{u.scrapped} scrapped, {u.unrecorded} unrecorded")  # fmt: skip
    click.echo(f"log          size {c.log_size}, root {c.log_root} (export {c.exports}'s checkpoint)")
    click.echo(f"written      {result.path} (signed by the station, not encrypted)")


def _bundle_id(bundle: str) -> str:
    """A bundle file's id (read from its header), or the id or prefix given."""
    path = Path(bundle)
    if not path.is_file():
        return bundle
    from vault.container import BundleReader

    with BundleReader(path) as reader:
        return reader.header.bundle_id


@station.command("recover")
@_station_options
@click.option(
    "--from",
    "sources",
    type=click.Path(exists=True, path_type=Path),
    multiple=True,
    required=True,
    help="An export folder (its *.station-copy files), one copy, or an older or damaged state folder; repeatable.",
)
@json_option
def recover(
    state_dir: Path,
    uri: Pkcs11Uri,
    station_id: str,
    root_cert: Path | None,
    root_fingerprint: str | None,
    sources: tuple[Path, ...],
    as_json: bool,
) -> None:
    """Rebuild a lost or damaged state folder (--state, a new one) from the station's own export copies and
    older folders; accepted only if it is exactly the log and counts the station token holds."""
    from vault.verify import recover_state

    result = recover_state(
        state_dir, token=uri, station_id=station_id, root=_root(root_cert, root_fingerprint), sources=sources
    )
    if as_json:
        echo_json({"state": str(result.state_dir), "size": result.size, "root": result.root,
                   "reserved": result.reserved, "exports": result.exports, "devices": result.devices,
                   "notes": list(result.notes)})  # fmt: skip
        return
    click.echo(f"recovered    {result.state_dir}: {result.size} log entries, root {result.root}")
    click.echo(f"             the station token's head, exactly; {result.exports} exports, {result.devices} devices")
    for bundle_id, count in sorted(result.reserved.items()):
        click.echo(f"reserved     {count} units of bundle {bundle_id}")
    for note in result.notes:
        click.echo(f"note         {note}")
    click.echo("next         load the release again: vault station load --state ... --bundle ... --policy ...")


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
        _require_station_capabilities(session)
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


def _require_station_capabilities(session: TokenSession) -> None:
    """Refuse a token that cannot be a station's, in one line naming what it lacks, before any key is made.

    A station signs (manifests, checkpoints, device certificates), unwraps a
    bundle's data key by ECDH inside the token, and keeps its log head and
    reservations in the token (data objects, or key carriers where the module
    keeps none); a key that is not there yet must be made there.
    """
    needs = [Need.ECDSA, Need.ECDH, Need.HEAD_RECORDS]
    labels = {info.label for info in session.objects() if info.type == "private"}
    if not {SIGNING_LABEL, ISSUING_CA_LABEL, DECRYPTION_LABEL} <= labels:
        needs.append(Need.EC_KEYGEN)
    session.capabilities().require(needs, role="station token")


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
