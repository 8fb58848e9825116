"""The bundle tests' world: a root, the roles, one enrolled station, and the release commands run against them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.ceremony.test_quorum_ceremonies import POLICIES, Setup, setup  # noqa: F401
from tests.cli.test_token_cli import run
from vault.token import Pkcs11Uri, format_uri


class Release:
    """A root, roles and one enrolled station, and a helper to run bundle commands against them."""

    def __init__(self, setup: Setup) -> None:  # noqa: F811
        self.setup = setup
        code, _, err = setup.ceremony(POLICIES / "roles.yaml", setup.root / "policy-v1.json", "roles")
        assert code == 0, err
        request = setup.tmp / "request.json"
        code, _, err = run(
            setup.capsys, "station", "request", "--token", format_uri(setup.tokens["station"]),
            "--station-id", "station-1", "-o", str(request),
        )  # fmt: skip
        assert code == 0, err
        code, _, err = setup.ceremony(
            POLICIES / "enrol-station.yaml", setup.tmp / "roles" / "policy-v2.json", "enrol",
            extra=("--request", str(request)),
        )  # fmt: skip
        assert code == 0, err
        self.policy = setup.tmp / "enrol" / "policy-v3.json"
        self.log = setup.tmp / "promotions.log"
        images = setup.tmp / "images"
        images.mkdir()
        (images / "app.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
        (images / "config.bin").write_bytes(b"")

    def description(self, name: str = "release.yaml", **changes: str) -> Path:
        fields = {
            "product": "example-sensor",
            "version": "1.4.0",
            "security_counter": "7",
            "not_before": "2026-01-01T00:00:00Z",
            "expires": "2099-01-01T00:00:00Z",
            "allocation": "{station-1: 600}",
            "total": "1000",
            **changes,
        }
        text = "\n".join(
            [
                f"product: {fields['product']}",
                f"version: {fields['version']}",
                f"security_counter: {fields['security_counter']}",
                f"not_before: {fields['not_before']}",
                f"expires: {fields['expires']}",
                "production:",
                f"  total: {fields['total']}",
                f"  allocation: {fields['allocation']}",
                "images:",
                "  - name: app.bin",
                "    path: images/app.bin",
                '    load_address: "0x08000000"',
                "  - name: config.bin",
                "    path: images/config.bin",
                "    partition: config",
                fields.get("extra", ""),
            ]
        )
        path = self.setup.tmp / name
        path.write_text(text + "\n")
        return path

    def key(self, holder: str, label: str) -> str:
        uri = self.setup.tokens[holder]
        return format_uri(Pkcs11Uri(token=uri.token, object=label, pin_source=uri.pin_source))

    def bundle(self, *argv: str) -> tuple[int, str, str]:
        policy = ["--policy", str(self.policy), "--root-cert", str(self.setup.root / "root-ca.pem")]
        return run(self.setup.capsys, "bundle", *argv, *policy)

    def approve(self, path: Path, approver: int) -> tuple[int, str, str]:
        return self.bundle("approve", str(path), "--yes", "--key", self.key(f"approver-{approver}", "approver-signing"))

    def promote(self, path: Path, log: Path | None = None) -> tuple[int, str, str]:
        return run(self.setup.capsys, *self.promote_argv(path, log))

    def promote_argv(self, path: Path, log: Path | None = None) -> list[str]:
        """``bundle promote ...`` as a release manager types it (for a subprocess too)."""
        policy = ["--policy", str(self.policy), "--root-cert", str(self.setup.root / "root-ca.pem")]
        key = self.key("release", "release-signer")
        return ["bundle", "promote", str(path), "--key", key, "--log", str(log or self.log), *policy]

    def approved(self, name: str, counter: int, version: str | None = None) -> Path:
        """A new bundle with this security counter, approved by approver-1 and approver-3 (not promoted)."""
        out = self.setup.tmp / f"{name}.vbundle"
        description = self.description(
            f"{name}.yaml", security_counter=str(counter), version=version or f"1.{counter}.0"
        )
        code, _, err = self.bundle("build", str(description), "-o", str(out))
        assert code == 0, err
        for approver in (1, 3):
            code, _, err = self.approve(out, approver)
            assert code == 0, err
        return out


@pytest.fixture
def release(setup: Setup) -> Release:  # noqa: F811
    return Release(setup)
