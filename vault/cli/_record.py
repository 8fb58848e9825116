"""``vault station record`` and ``vault station label``: one unit as its manifests tell it, and its label."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from vault.cli._options import echo_json
from vault.console._labels import LabelData, LabelSpec, make_label
from vault.errors import IdentityError, LabelError
from vault.manifest import Manifest
from vault.policy import format_time
from vault.verify import Outcome, Station

_GOOD = ("provisioned", "retry", "rework")


def _certificate(certificate: x509.Certificate) -> dict[str, Any]:
    return {
        "serial": f"{certificate.serial_number:x}",
        "subject": certificate.subject.rfc4514_string(),
        "issuer": certificate.issuer.rfc4514_string(),
        "not_after": format_time(certificate.not_valid_after_utc),
        "sha256": certificate.fingerprint(hashes.SHA256()).hex(),
    }


def _measurements(m: Manifest) -> list[Any]:
    """The measurements a manifest carries, where its format has them (the test-records change adds them)."""
    found = getattr(m, "measurements", None) or ()
    return [x.to_json() if hasattr(x, "to_json") else x for x in found]


def show_record(history: Sequence[tuple[Manifest, x509.Certificate | None]], *, as_json: bool) -> None:
    """Print a unit's verified manifests: identity, then each event, images, certificate, measurements, labels."""
    first = history[0][0]
    serial = next((m.serial for m, _ in reversed(history) if m.serial), None)
    if as_json:
        echo_json({
            "hardware_id": first.hardware_id, "serial": serial, "station_id": first.station_id,
            "events": [
                {"sequence": m.sequence, "time": format_time(m.time), "event": m.event, "operator": m.operator,
                 "fixture": m.fixture, "unit": m.unit, "bundle_id": m.bundle_id, "product": m.product,
                 "version": m.version, "label": m.label, "failed_step": m.failed_step, "detail": m.detail,
                 "images": [{"name": i.name, "sha256": i.sha256, "measurement": i.measurement} for i in m.images],
                 "certificate": None if c is None else _certificate(c), "measurements": _measurements(m),
                 "secrets": [s.to_json() for s in m.secrets], "lots": m.lots}
                for m, c in history
            ],
        })  # fmt: skip
        return
    click.echo(f"unit         {serial or '(no serial bound)'}")
    click.echo(f"hardware id  {first.hardware_id}")
    click.echo(f"station      {first.station_id}: {len(history)} log entries, each verified")
    for m, certificate in history:
        what = m.event + (f" at {m.failed_step}" if m.failed_step else "")
        click.echo(f"{format_time(m.time)}  #{m.sequence:<5} {what:<22} {m.operator} on fixture {m.fixture}"
                   + (f", unit {m.unit}" if m.unit is not None else "")
                   + f"  ({m.product} {m.version})")  # fmt: skip
        if m.label is not None and m.label != m.serial:
            click.echo(f"             label read  {m.label}")
        if m.detail:
            click.echo(f"             {m.detail}")
        for image in m.images:
            check = "" if image.measurement is None else (
                "  read back: matches" if image.measurement == image.sha256 else f"  read back: {image.measurement}")
            click.echo(f"             image {image.name}  {image.sha256}{check}")  # fmt: skip
        for x in _measurements(m):
            click.echo(f"             measured {x}")
        for s in m.secrets:  # never the secret: its sealed copy's digest, for the device maker
            where = "installed" if s.installed else "never installed"
            click.echo(f"             secret {s.name} ({s.kind}) {where}, sealed {s.sealed_sha256[:16]}…")
        if m.lots:
            click.echo("             lots " + ", ".join(f"{c} {lot}" for c, lot in sorted(m.lots.items())))
        if certificate is not None:
            c = _certificate(certificate)
            click.echo(f"             certificate {c['serial']}  {c['subject']}  until {c['not_after']}")
            click.echo(f"                         sha256 {c['sha256']}")
    last_good = [m for m, _ in history if m.event in _GOOD]
    labels = [m for m, _ in history if m.event == "label"]
    state = "good (certified)" if last_good else "never provisioned"
    failed = len([m for m in labels if m.failed_step])
    printed = f"labels {len(labels) - failed} printed" + (f", {failed} not printed" if failed else "")
    click.echo(f"state        {state}; {printed}")


def label_units(station: Station, spec: LabelSpec, keys: Sequence[str], *, as_json: bool) -> None:
    """Make each unit's label again from its bound identity and record it; a printer failure is recorded too.

    Raises:
        IdentityError: a unit is unknown or was never provisioned (nothing is printed for it).
        LabelError: the first label that could not be made (those before it were made and recorded).
    """
    found = []
    for key in keys:
        history = station.history(key)
        good = [m for m, _ in history if m.event in _GOOD]
        if not good:
            raise IdentityError(f"unit {key!r} was never provisioned here: it gets no label")
        found.append((good[-1], any(h.event == "label" and not h.failed_step for h, _ in history)))
    made = []
    for m, labelled in found:
        assert m.serial is not None
        outcome = Outcome(m.event, m.hardware_id, m.serial, m.unit, m.sequence, m.id)
        data = LabelData.of(serial=m.serial, hardware_id=m.hardware_id, product=m.product, version=m.version,
                            station=m.station_id, when=m.time)  # fmt: skip
        try:
            printed = make_label(spec, data)
        except LabelError as e:
            station.record_label(outcome, fixture=m.fixture, detail=f"not printed: {e}", failed=True)
            raise
        again = "reprint" if labelled else "printed"  # the console prints a unit's first label as it passes
        station.record_label(outcome, fixture=m.fixture, detail=f"{again}: {printed.describe()}")
        made.append((m.serial, printed))
    if as_json:
        echo_json([{"serial": s, "content": p.content, "png": str(p.png), "zpl": str(p.zpl), "printed": p.printed}
                   for s, p in made])  # fmt: skip
        return
    for s, p in made:
        click.echo(f"label        {s}: {p.png}  {p.zpl}" + ("  (printed)" if p.printed else ""))
