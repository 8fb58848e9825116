"""The esp32 tests' stand-in factory app: its own process, speaking over a pty pair (no ESP32-S3 here)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vault.verify.devices.esp32._factory_app import FactoryApp

STANDIN = Path(__file__).with_name("_factory_app_standin.py")
MAC = "f412fa000001"


@pytest.fixture
def app(request: pytest.FixtureRequest) -> Iterator[tuple[FactoryApp, subprocess.Popen[str]]]:
    mode = getattr(request, "param", "good")
    master, slave = os.openpty()
    name = os.ttyname(slave)
    process = subprocess.Popen(
        [sys.executable, str(STANDIN), str(master), MAC, mode], pass_fds=[master], stderr=subprocess.PIPE, text=True
    )
    os.close(master)
    factory = FactoryApp(name, 115200)
    os.close(slave)
    try:
        yield factory, process
    finally:
        factory.close()
        process.kill()
        process.wait()


def soon(seconds: float = 10.0) -> float:
    return time.monotonic() + seconds
