"""The esp32 adapter installs per-device secrets through the factory app (a stand-in, its own process, a pty).

The adapter's ``install_secret`` is driven as the station drives it, against the stand-in factory app of
``conftest.py``; one test runs a unit through a real station (SoftHSM2 tokens) whose secrets reach the
stand-in through the esp32 adapter.
"""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import forget_heads
from tests.verify.conftest import World
from tests.verify.devices.conftest import MAC, soon
from vault.errors import AdapterError, DeviceError, DeviceTimeoutError
from vault.manifest import open_manifest
from vault.verify import SimulatedDevice, Station
from vault.verify.devices import DEFAULT_TIMEOUTS, install_secret
from vault.verify.devices._run import FixtureRun, run_fixtures
from vault.verify.devices.esp32 import parse_secret_target
from vault.verify.devices.esp32._device import Esp32Device, Esp32Fixture
from vault.verify.devices.esp32._factory_app import FactoryApp
from vault.verify.devices.esp32._options import parse_options

App = tuple[FactoryApp, subprocess.Popen[str]]
SECRET = bytes(range(0x41, 0x61))  # 32 bytes


def device(factory: FactoryApp, *, dry_run: bool = False, timeout: float = 10.0) -> Esp32Device:
    """An esp32 device whose factory app already answered HELLO (the state after install-certificate)."""
    options = parse_options({"port": "/dev/ttyUSB0", "chip": "esp32s3", "lock-profile": "none"})
    timeouts = dict(DEFAULT_TIMEOUTS, **{"install-secret": timeout})
    fixture = Esp32Fixture(options, slot=1, timeouts=timeouts, dry_run=dry_run)
    unit = Esp32Device(fixture, None, bytes.fromhex(MAC))
    factory.hello(soon())
    unit._app = factory
    return unit


def stored(factory: FactoryApp, process: subprocess.Popen[str]) -> list[str]:
    """What the stand-in stored, one "secret TARGET HEX" line each."""
    factory.close()
    process.kill()
    _, err = process.communicate()
    return [line for line in err.splitlines() if line.startswith("secret ")]


def spellings(secret: bytes) -> list[str]:
    encoded = base64.b64encode(secret).decode()
    return [secret.hex(), secret.hex().upper(), encoded, encoded[:12], secret.hex()[:12]]


def test_a_psk_is_stored_where_its_target_says_and_a_dry_run_stores_nothing(app: App) -> None:
    factory, process = app
    install_secret(device(factory, dry_run=True), "backend-psk", "psk-256", "nvs:psk", os.urandom(32))
    install_secret(device(factory), "backend-psk", "psk-256", "nvs:psk", SECRET)
    install_secret(device(factory), "jtag-key", "kek-aes-256", "efuse:BLOCK_KEY3/HMAC_DOWN_JTAG", SECRET[::-1])
    assert stored(factory, process) == [  # exactly the bytes handed over; the dry run's secret was not kept
        f"secret nvs:vault/psk {SECRET.hex()}",
        f"secret efuse:BLOCK_KEY3/HMAC_DOWN_JTAG {SECRET[::-1].hex()}",
    ]


@pytest.mark.parametrize(
    ("app", "expected"),
    [
        ("bad-store", "install-secret: the factory app stored other bytes than secret 'backend-psk' sent"),
        ("refuse", "install-secret: the factory app says: no entropy source"),
        ("no-secrets", "the factory app says: unknown request (this factory app cannot install secrets: flash one"),
        ("echo", "install-secret: the factory app says: (its reason repeats the secret: not shown)"),
    ],
    indirect=["app"],
)
def test_a_refused_or_wrong_install_fails_the_step_in_one_line_without_the_secret(app: App, expected: str) -> None:
    factory, _ = app
    with pytest.raises(DeviceError) as failed:
        install_secret(device(factory), "backend-psk", "psk-256", "nvs:psk", SECRET)
    message = str(failed.value)
    assert expected in message and "\n" not in message
    chain = [message, str(failed.value.__cause__ or "")]
    assert not any(s in text for s in spellings(SECRET) for text in chain)


@pytest.mark.parametrize("app", ["mute-secrets"], indirect=True)
def test_an_app_that_never_answers_the_secret_times_out(app: App) -> None:
    factory, _ = app
    with pytest.raises(DeviceTimeoutError, match=r"^install-secret: the factory app did not answer 'SECRET' in time$"):
        install_secret(device(factory, timeout=1.0), "backend-psk", "psk-256", "nvs:psk", SECRET)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("otp:3", "the esp32 adapter has no secret target 'otp:3' (it takes nvs:<key>"),
        ("nvs:a-namespace-too-long/psk", "no secret target 'nvs:a-namespace-too-long/psk'"),
        ("efuse:BLOCK_KEY6/HMAC_UP", "no secret target 'efuse:BLOCK_KEY6/HMAC_UP'"),
        ("efuse:BLOCK_KEY1/USER", "burns a secret only with a read-protected purpose (HMAC_UP, "),
    ],
)
def test_a_target_the_adapter_does_not_know_fails_before_anything_is_sent(app: App, target: str, expected: str) -> None:
    factory, process = app
    with pytest.raises(DeviceError, match=rf"^install-secret: secret 'backend-psk': .*{expected[:30]}") as failed:
        install_secret(device(factory), "backend-psk", "psk-256", target, SECRET)
    assert expected in str(failed.value)
    assert stored(factory, process) == []


def test_the_target_forms_the_adapter_accepts() -> None:
    assert parse_secret_target("nvs:psk").wire() == "nvs:vault/psk"
    assert parse_secret_target("nvs:wifi/psk_2").wire() == "nvs:wifi/psk_2"
    efuse = parse_secret_target("efuse:BLOCK_KEY5/HMAC_UP")
    assert (efuse.store, efuse.block, efuse.purpose) == ("efuse", "BLOCK_KEY5", "HMAC_UP")


class Esp32Secrets(SimulatedDevice):
    """A simulated unit whose secrets go through the esp32 adapter to the stand-in (its other steps simulated)."""

    def __init__(self, esp32: Esp32Device, label: str) -> None:
        super().__init__(label=label)
        self.esp32 = esp32
        self.handed: dict[str, bytes] = {}

    def install_secret(self, name: str, kind: str, target: str, secret: bytes) -> None:
        self.handed[target] = bytes(secret)
        self.esp32.install_secret(name, kind, target, secret)


@pytest.fixture(scope="module")
def sworld(softhsm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> World:
    """An enrolled world whose release declares backend-psk (nvs:psk) and storage-key (otp:3)."""
    return World(tmp_path_factory.mktemp("esp32-secrets-world"), secrets_recipient=True)


@pytest.fixture
def station(sworld: World, tmp_path: Path) -> Iterator[Station]:
    forget_heads(sworld.tokens["station-1"])  # each test starts a new state folder
    with sworld.station(tmp_path / "state") as opened:
        opened.load(sworld.bundle_path, sworld.policy)
        yield opened


def test_a_station_unit_installs_its_psk_through_the_esp32_adapter_and_records_the_unusable_one(
    station: Station, app: App
) -> None:
    factory, process = app
    unit = Esp32Secrets(device(factory), label="SN-E1")
    with pytest.raises(DeviceError, match="no secret target 'otp:3'"):
        station.provision(unit, label=unit.label)
    rows = station.state.read().execute("SELECT envelope FROM log ORDER BY sequence").fetchall()
    trusted = {station.enrolled.signing.key_id: station.enrolled.signing.public_key}
    manifest = open_manifest(bytes(rows[-1][0]), trusted)
    assert manifest.failed_step == "install-secret"
    assert [(s.name, s.installed) for s in manifest.secrets] == [("backend-psk", True), ("storage-key", False)]
    assert stored(factory, process) == [f"secret nvs:vault/psk {unit.handed['nvs:psk'].hex()}"]


def test_a_run_on_an_esp32_fixture_stops_before_any_unit_when_a_secret_target_is_not_its_own(
    station: Station,
) -> None:
    options = parse_options({"port": "/dev/nonexistent-tty", "chip": "esp32s3", "lock-profile": "none", "wait": 1})
    fixture = Esp32Fixture(options, slot=3, timeouts=DEFAULT_TIMEOUTS, dry_run=False)
    with pytest.raises(AdapterError) as refused:
        run_fixtures(station, [FixtureRun(3, fixture)], count=1)
    assert station.state.read().execute("SELECT count(*) FROM log").fetchone()[0] == 0
    assert str(refused.value).startswith(
        "fixture 3 cannot install secret 'storage-key': the esp32 adapter has no secret target 'otp:3' (it takes"
    )
