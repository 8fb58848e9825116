"""A root ceremony on fresh SoftHSM2 tokens, shared by the tests of every later ceremony."""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from tests.cli.test_token_cli import assert_one_line_error as _one_line
from tests.cli.test_token_cli import run
from tests.conftest import so_uri
from vault.ceremony import (
    CeremonyInputs,
    CeremonyResult,
    load_credentials,
    load_script,
    read_share,
    run_operation_ceremony,
)
from vault.ceremony._common import root_pins
from vault.ceremony._custody import share_text
from vault.ceremony._policy_head import POLICY_HEAD
from vault.ceremony._quorum import quorum_secret
from vault.ceremony._script import OperationScript
from vault.policy import TrustPolicy, load_policy
from vault.token import Pkcs11Uri, TokenSession, format_uri, open_token

POLICIES = Path(__file__).resolve().parents[2] / "policies"
NOW = datetime.datetime.now(datetime.UTC)
TOKENS = ["root", "officer-1", "officer-2", "officer-3", "release", "approver-1", "approver-2", "approver-3"]
TOKENS += ["auditor", "station", "recovery"]


@dataclass
class Setup:
    """A root ceremony's outputs and the tokens around it."""

    tmp: Path
    tokens: dict[str, Pkcs11Uri]
    root: Path  # the root ceremony's folder
    capsys: pytest.CaptureFixture[str]

    @property
    def root_cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate((self.root / "root-ca.pem").read_bytes())

    def share(self, officer: int) -> Path:
        """officer-3 keeps their share sealed to their token (policies/root-ceremony.yaml)."""
        if officer == 3:
            return self.root / "shares" / "officer-3.sealed.json"
        return self.root / "shares" / f"officer-{officer}.txt"

    def credentials(self, name: str, officers: tuple[int, ...] = (1, 2), **extra: Pkcs11Uri) -> Path:
        lines = [f'root: "{format_uri(Pkcs11Uri(token=self.tokens["root"].token))}"', "officers:"]
        lines += [f'  officer-{i}: "{format_uri(self.tokens[f"officer-{i}"])}"' for i in officers]
        lines += [f'release: "{format_uri(self.tokens["release"])}"', "approvers:"]
        lines += [f'  approver-{i}: "{format_uri(self.tokens[f"approver-{i}"])}"' for i in (1, 2, 3)]
        lines += [f'auditor: "{format_uri(self.tokens["auditor"])}"']
        lines += [f'{field}: "{format_uri(uri)}"' for field, uri in extra.items()]
        path = self.tmp / f"creds-{name}.yaml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def ceremony(
        self,
        script: Path,
        policy: Path,
        out: str,
        *,
        shares: tuple[int, ...] = (1, 3),
        creds: Path | None = None,
        extra: tuple[str, ...] = (),
    ) -> tuple[int, str, str]:
        # the officers present are the custodians who bring their shares (a sealed one opens in its token)
        present = shares if len(shares) >= 2 else (1, 2)
        argv = ["ceremony", "run", str(script), "--credentials", str(creds or self.credentials(out, present))]
        argv += ["--policy", str(policy), "--root-cert", str(self.root / "root-ca.pem"), "--out", str(self.tmp / out)]
        for i in shares:
            argv += ["--share", str(self.share(i))]
        return run(self.capsys, *argv, *extra, "--rehearsal", "--yes")

    def policy(self, path: Path, highest_seen: int = 0) -> TrustPolicy:
        return load_policy(path.read_bytes(), self.root_cert, now=NOW, highest_seen=highest_seen)

    @contextlib.contextmanager
    def root_token(self, name: str = "root") -> Iterator[TokenSession]:
        """The root token (or the one a recovery made), opened read-write with two officers' shares."""
        policy = self.policy(self.root / "policy-v1.json")
        secret = quorum_secret(policy, [share_text(self.share(i).read_text()) for i in (1, 2)])
        with open_token(Pkcs11Uri(token=self.tokens[name].token, pin_value=root_pins(secret)[0]), rw=True) as token:
            yield token

    def policy_head(self, name: str = "root") -> tuple[int, str] | None:
        """(version, sha256) of the root token's ``root-policy`` head, or None."""
        with self.root_token(name) as token:
            head = token.head(POLICY_HEAD)
            return None if head is None else (head.value["version"], head.value["sha256"])


@pytest.fixture
def setup(
    fresh_tokens: Callable[[list[str]], dict[str, Pkcs11Uri]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> Setup:
    tokens = fresh_tokens(TOKENS)
    creds = tmp_path / "root-creds.yaml"
    lines = [f'root: "{format_uri(tokens["root"])}"', f'root_so: "{format_uri(so_uri(tokens["root"]))}"', "officers:"]
    lines += [f'  officer-{i}: "{format_uri(tokens[f"officer-{i}"])}"' for i in (1, 2, 3)]
    creds.write_text("\n".join(lines) + "\n")
    out = tmp_path / "root"
    code, _, err = run(
        capsys, "ceremony", "run", str(POLICIES / "root-ceremony.yaml"), "--credentials", str(creds),
        "--out", str(out), "--rehearsal", "--yes",
    )  # fmt: skip
    assert code == 0, err
    return Setup(tmp_path, tokens, out, capsys)


def assert_one_line_error(err: str, expected: str) -> None:
    """One error line, after the rehearsal banner a rehearsal always prints."""
    _one_line("\n".join(line for line in err.splitlines() if not line.startswith("*** REHEARSAL")), expected)


def run_ceremony(
    setup: Setup,
    script: Path,
    policy: Path,
    out: str,
    *,
    shares: tuple[int, ...] = (1, 3),
    creds: Path | None = None,
    **kwargs: Any,
) -> CeremonyResult:
    """Run a ceremony through the library (for hooks a terminal cannot give: a confirm that raises, a clock)."""
    present = shares if len(shares) >= 2 else (1, 2)
    credentials = load_credentials(creds or setup.credentials(out, present))
    parsed = load_script(script)
    assert isinstance(parsed, OperationScript)
    inputs = CeremonyInputs(
        root_certificate=setup.root_cert,
        policy=policy.read_bytes(),
        shares=[read_share(setup.share(i).read_bytes(), credentials.officers) for i in shares],
    )
    return run_operation_ceremony(parsed, credentials, inputs, setup.tmp / out, rehearsal=True, **kwargs)
