"""A SoftHSM2 without some mechanisms, for the refusals a token that lacks them must meet.

SoftHSM2's own ``slots.mechanisms`` setting leaves mechanisms out of what the
module offers (as a TPM leaves out ECDH): the same token folder, read through
a configuration that disables them, in a process of its own. No mock: the
module is asked, and answers as a module without them would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, read_env_file


def limited_env(softhsm_dir: Path, tmp: Path, *disabled: str) -> dict[str, str]:
    """The environment of a vault process whose SoftHSM2 offers every mechanism but ``disabled``."""
    conf_path = read_env_file(softhsm_dir / "env")["SOFTHSM2_CONF"]
    conf = Path(conf_path).read_text()
    assert "slots.mechanisms = ALL" in conf
    limited = tmp / f"softhsm2-without-{'-'.join(disabled)}.conf"
    # "-" makes the list the disabled mechanisms; SoftHSM2 2.6.1 skips the list's first entry, hence "-,".
    limited.write_text(conf.replace("slots.mechanisms = ALL", "slots.mechanisms = -," + ",".join(disabled)))
    return {**os.environ, "SOFTHSM2_CONF": str(limited)}


def vault_process(env: dict[str, str], *argv: str) -> tuple[int, str, str]:
    """Run ``vault ARGV`` in a process of its own with ``env``; (exit code, stdout, stderr)."""
    done = subprocess.run(
        [sys.executable, "-m", "vault", *argv], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    return done.returncode, done.stdout, done.stderr


def error_lines(err: str) -> list[str]:
    """stderr without the banner a rehearsal always prints."""
    return [line for line in err.splitlines() if line.strip() and not line.startswith("*** REHEARSAL")]
