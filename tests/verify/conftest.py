"""One enrolled world for the station tests: root, roles, two stations, and promoted bundles.

It is made once per session through the same CLI commands users type (a
rehearsal on fresh SoftHSM2 tokens); each test gets its own station state
folder, so tests do not share counts.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509

from tests.conftest import init_tokens, so_uri
from vault.cli import cli
from vault.token import Pkcs11Uri, format_uri
from vault.verify import Station

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "policies"
TOKENS = ["root", "officer-1", "officer-2", "officer-3", "release", "approver-1", "approver-2", "approver-3"]
TOKENS += ["auditor", "station-1", "station-2"]


def vault(*argv: str) -> str:
    """Run a vault command in-process; fail the test with its output when it fails."""
    result = CliRunner().invoke(cli, list(argv), catch_exceptions=False)
    assert result.exit_code == 0, f"vault {' '.join(argv[:2])}: {result.output}"
    return result.output


class World:
    """The outputs of the ceremonies and bundles every station test starts from."""

    def __init__(self, folder: Path, *, secrets_recipient: bool = False) -> None:
        """``secrets_recipient``: also enrol the device maker's secrets recipient (a ``backend`` token)."""
        self.folder = folder
        self.tokens = init_tokens(folder, TOKENS + (["backend"] if secrets_recipient else []))
        self.root_cert_path = folder / "root" / "root-ca.pem"
        creds = folder / "root-creds.yaml"
        lines = [f'root: "{format_uri(self.tokens["root"])}"']
        lines += [f'root_so: "{format_uri(so_uri(self.tokens["root"]))}"', "officers:"]
        lines += [f'  officer-{i}: "{format_uri(self.tokens[f"officer-{i}"])}"' for i in (1, 2, 3)]
        creds.write_text("\n".join(lines) + "\n")
        vault("ceremony", "run", str(POLICIES / "root-ceremony.yaml"), "--credentials", str(creds),
              "--out", str(folder / "root"), "--rehearsal", "--yes")  # fmt: skip
        quorum = folder / "creds.yaml"
        lines = [f'root: "{format_uri(Pkcs11Uri(token=self.tokens["root"].token))}"', "officers:"]
        lines += [f'  officer-{i}: "{format_uri(self.tokens[f"officer-{i}"])}"' for i in (1, 2)]
        lines += [f'release: "{format_uri(self.tokens["release"])}"', "approvers:"]
        lines += [f'  approver-{i}: "{format_uri(self.tokens[f"approver-{i}"])}"' for i in (1, 2, 3)]
        lines += [f'auditor: "{format_uri(self.tokens["auditor"])}"']
        if secrets_recipient:
            lines += [f'backend: "{format_uri(self.tokens["backend"])}"']
        quorum.write_text("\n".join(lines) + "\n")
        shares = ["--share", str(folder / "root" / "shares" / "officer-1.txt")]
        shares += ["--share", str(folder / "root" / "shares" / "officer-2.txt")]

        def ceremony(script: str, policy: Path, out: str, *extra: str) -> Path:
            vault("ceremony", "run", str(POLICIES / script), "--credentials", str(quorum), "--policy", str(policy),
                  "--root-cert", str(self.root_cert_path), *shares, "--out", str(folder / out), *extra,
                  "--rehearsal", "--yes")  # fmt: skip
            return next((folder / out).glob("policy-v*.json"))

        policy = ceremony("roles.yaml", folder / "root" / "policy-v1.json", "roles")
        for n in (1, 2):  # one script enrols every station: the id comes from the request
            request = folder / f"station-{n}-request.json"
            vault("station", "request", "--token", format_uri(self.tokens[f"station-{n}"]),
                  "--station-id", f"station-{n}", "-o", str(request))  # fmt: skip
            policy = ceremony("enrol-station.yaml", policy, f"enrol-{n}", "--request", str(request))
        if secrets_recipient:
            policy = ceremony("secrets-recipient.yaml", policy, "secrets")
        self.policy_path = policy
        self.policy = policy.read_bytes()
        self.images = folder / "images"
        self.images.mkdir()
        (self.images / "app.bin").write_bytes(os.urandom(300 * 1024 + 5))
        (self.images / "config.bin").write_bytes(b"serial-prefix=EXD\n")
        self.promotions = folder / "promotions.log"
        self._count = 0
        extra = self.SECRETS if secrets_recipient else ""
        self.bundle_path = self.bundle(allocation="{station-1: 20, station-2: 10}", extra=extra)

    SECRETS = (
        "secrets:\n  - {name: backend-psk, kind: psk-256, target: 'nvs:psk'}\n"
        "  - {name: storage-key, kind: aes-256, target: 'otp:3'}\n"
    )
    """The per-device secrets of the bundles of a world with a secrets recipient."""

    @property
    def root_cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.root_cert_path.read_bytes())

    def bundle(
        self, *, allocation: str, counter: int = 7, version: str = "1.4.0", expires: str = "2099-01-01T00:00:00Z",
        promote: bool = True, approvers: tuple[int, ...] = (1, 3), total: int = 1000, extra: str = "",
    ) -> Path:  # fmt: skip
        """Build, approve and (by default) promote a bundle; returns its path."""
        self._count += 1
        description = self.folder / f"release-{self._count}.yaml"
        description.write_text(
            f"product: example-sensor\nversion: {version}\nsecurity_counter: {counter}\n"
            f"not_before: 2026-01-01T00:00:00Z\nexpires: {expires}\n"
            f"production:\n  total: {total}\n  allocation: {allocation}\n"
            "images:\n  - name: app.bin\n    path: images/app.bin\n    load_address: \"0x08000000\"\n"
            "  - name: config.bin\n    path: images/config.bin\n    partition: config\n" + extra
        )
        out = self.folder / f"release-{self._count}.vbundle"
        policy = ["--policy", str(self.policy_path), "--root-cert", str(self.root_cert_path)]
        vault("bundle", "build", str(description), "-o", str(out), "--log", str(self.promotions), *policy)
        for i in approvers:
            key = self.key(f"approver-{i}", "approver-signing")
            vault("bundle", "approve", str(out), "--yes", "--key", key, *policy)
        if promote:
            vault("bundle", "promote", str(out), "--key", self.key("release", "release-signer"),
                  "--log", str(self.promotions), *policy)  # fmt: skip
        return out

    def key(self, holder: str, label: str) -> str:
        uri = self.tokens[holder]
        return format_uri(Pkcs11Uri(token=uri.token, object=label, pin_source=uri.pin_source))

    def station(self, state: Path, station_id: str = "station-1", **kwargs: object) -> Station:
        return Station(state, token=self.tokens[station_id], station_id=station_id, root=self.root_cert, **kwargs)


@pytest.fixture(scope="session")
def world(softhsm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> World:
    return World(tmp_path_factory.mktemp("world"))


@pytest.fixture
def station(world: World, tmp_path: Path) -> Iterator[Station]:
    """station-1 with a fresh state folder and the world's bundle loaded."""
    with world.station(tmp_path / "state") as opened:
        opened.load(world.bundle_path, world.policy)
        yield opened


def fixed_clock(when: str) -> Callable[[], tuple[datetime.datetime, str]]:
    moment = datetime.datetime.strptime(when, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    return lambda: (moment, "test")


