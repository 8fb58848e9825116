"""``vault registry ...``: the allowed-devices list for the cloud, from audited evidence only; check one device.

``export`` reads the folder ``vault audit --cosign`` wrote, verifies every
device's proof against the trust policy and writes the list in generic and
cloud forms, with the excluded devices beside it. ``verify`` is the
onboarding server's check of one device: its certificate and its proof.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import click

from vault._files import read_capped
from vault.cli._options import force_option
from vault.errors import ProofError

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
_FORMS = ("json", "csv", "aws", "azure")  # vault.registry.FORMS
_MAX_CERTIFICATE = 64 * 1024
EXIT_REFUSED = 1
"""The exit status of ``verify`` when the proof does not admit the device."""


def _policy(policy_file: Path, root_cert: Path) -> Any:
    from vault.pki import read_certificate
    from vault.policy import MAX_POLICY_SIZE, load_policy

    root = read_certificate(root_cert)
    data = read_capped(policy_file, MAX_POLICY_SIZE, "trust policy")
    return load_policy(data, root, now=datetime.datetime.now(datetime.UTC))


def _trust(f: Any) -> Any:
    f = click.option("--root-cert", type=_FILE, required=True, help="The pinned root certificate (PEM or DER).")(f)
    return click.option(
        "--policy", "policy_file", type=_FILE, required=True, help="The current trust policy (its cosigners)."
    )(f)


@click.group()
def registry() -> None:
    """The cloud's allowed-devices list: only audited devices, each with a proof it can carry."""


@registry.command("export")
@click.argument("audited", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_trust
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), required=True, help="A new folder.")
@click.option(
    "--form",
    "forms",
    type=click.Choice(_FORMS),
    multiple=True,
    help="A form to write (repeat; default: all): generic json and csv, aws (IoT Core bulk registration), "
    "azure (DPS individual X.509 enrollments).",
)
@force_option
def export(audited: Path, policy_file: Path, root_cert: Path, out: Path, forms: tuple[str, ...], force: bool) -> None:
    """Write the allowed-devices list from AUDITED (the folder of 'vault audit --cosign').

    Every device's proof is verified against the trust policy first (station
    CA, log inclusion, enough auditor cosignatures, station not revoked); one
    that does not verify stops the export. Devices the audit left out are
    listed in excluded-devices.json with the finding that keeps each out.
    """
    from vault.registry import FORMS, read_audited, write_registry

    policy = _policy(policy_file, root_cert)
    found = read_audited(audited, policy)
    written = write_registry(found, out, forms=forms or FORMS, overwrite=force)
    click.echo(f"allowed     {len(found.devices)} device(s), every proof verified against policy v{policy.version}")
    listing = written["excluded-devices.json"]
    click.echo(f"excluded    {len(found.excluded)} device(s), each with its finding: {listing}")
    for item in found.excluded[:8]:
        who = item.get("serial") or item.get("hardware_id")
        click.echo(f"  {str(item.get('code')):<22} {who} ({item.get('station')} position {item.get('position')})")
    for name, path in written.items():
        if name != "excluded-devices.json":
            click.echo(f"wrote       {path}")


@registry.command("verify")
@click.argument("certificate", type=_FILE)
@click.argument("proof", type=_FILE)
@_trust
def verify(certificate: Path, proof: Path, policy_file: Path, root_cert: Path) -> None:
    """Say whether the device with CERTIFICATE may join: yes or no, and one line of reason.

    Yes when PROOF (its C2SP tlog-proof) shows the certificate issued by an
    enrolled station's CA, its manifest in that station's log at the proof's
    index, under a checkpoint with enough valid auditor cosignatures, and the
    station is not revoked in the policy. Exit status 0 for yes, 1 for no.
    """
    from vault.proof import MAX_PROOF_SIZE, verify_device_proof

    policy = _policy(policy_file, root_cert)
    cert = read_capped(certificate, _MAX_CERTIFICATE, "device certificate")
    data = read_capped(proof, MAX_PROOF_SIZE, "device proof")
    try:
        result = verify_device_proof(cert, data, policy)
    except ProofError as e:
        click.echo(f"no: {e}")
        click.get_current_context().exit(EXIT_REFUSED)
    click.echo(f"yes: {result.reason()}")
