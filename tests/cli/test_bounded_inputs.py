"""Every input file, given as 1 GiB or as an endless stream, is one line and exit 1 in bounded memory.

The commands run in one child process whose address space is capped at
512 MiB (``RLIMIT_AS``): before inputs were read with their cap, ``/dev/zero``
given as a policy or a transcript ended in ``MemoryError`` (exit 70), and a
512 MiB policy made vault hold all of it before refusing it.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "policies"
LIMIT = 512 * 1024 * 1024

_CHILD = """
import contextlib, io, json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
from vault.cli import main
results = []
for argv in json.loads(sys.stdin.read()):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    results.append((code, err.getvalue()))
print(json.dumps(results))
"""


def _certificate(folder: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "root-ca")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    path = folder / "root-ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _cases(folder: Path, big: str) -> list[tuple[str, list[str]]]:
    """(what the error names, argv) for each input file, with ``big`` in its place."""
    cert = str(_certificate(folder))
    some = folder / "some-file"
    some.write_text("{}")
    share = folder / "share.txt"
    share.write_text("academic acid acrobat\n")
    creds = str(POLICIES / "credentials.softhsm.yaml")
    enrol = str(POLICIES / "enrol-station.yaml")
    out = str(folder / "out")
    policy = ["--policy", str(some), "--root-cert", cert]
    operation = ["ceremony", "run", enrol, "--credentials", creds, *policy, "--share", str(share)]
    operation += ["--out", out, "--rehearsal", "--yes"]
    return [
        ("trust policy", ["bundle", "inspect", str(some), "--policy", big, "--root-cert", cert]),
        ("root certificate", ["bundle", "inspect", str(some), "--policy", str(some), "--root-cert", big]),
        ("transcript", ["ceremony", "verify", big]),
        ("share", ["shares", "check", str(some), "--share", big]),
        ("release description", ["bundle", "build", big, "-o", str(folder / "b.vbundle"), *policy]),
        ("ceremony script", ["ceremony", "run", big, "--credentials", creds, "--out", out, "--rehearsal", "--yes"]),
        ("credentials file", ["ceremony", "run", enrol, "--credentials", big, "--out", out, "--rehearsal", "--yes"]),
        ("enrolment request", [*operation, "--request", big]),
        ("key backup", [*operation, "--backup", big]),
        ("file to sign", ["token", "sign", "pkcs11:token=none;object=none", big, "-o", str(folder / "sig")]),
        ("trust policy", ["station", "load", "--state", str(folder / "state"), "--token", "pkcs11:token=none",
                          "--station-id", "station-1", "--root-cert", cert, "--policy", big, "--bundle", str(some)]),
        ("trust policy", ["audit", str(some), "--root-cert", cert, "--policy", big, "--bundle", str(some),
                          "--token", "pkcs11:token=none"]),
    ]  # fmt: skip


@pytest.mark.parametrize("kind", ["dev-zero", "sparse-1GiB"])
def test_every_input_is_refused_in_bounded_memory(softhsm_dir: Path, tmp_path: Path, kind: str) -> None:
    if kind == "dev-zero":
        big = "/dev/zero"
    else:
        sparse = tmp_path / "big"
        with sparse.open("wb") as f:
            f.truncate(1024**3)  # a sparse file: costs no disk
        big = str(sparse)
    cases = _cases(tmp_path, big)
    child = subprocess.run(
        [sys.executable, "-c", _CHILD.format(limit=LIMIT)],
        input=json.dumps([argv for _, argv in cases]),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert child.returncode == 0, child.stderr
    results = json.loads(child.stdout)
    for (what, argv), (code, err) in zip(cases, results, strict=True):
        lines = [line for line in err.strip().splitlines() if not line.startswith("*** REHEARSAL")]
        assert code == 1 and len(lines) == 1, (argv, code, err)
        assert f"{big}: {what} is larger than the" in lines[0], (argv, lines[0])
