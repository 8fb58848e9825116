"""A fixture process for the race and crash tests: its own Station on a shared state folder and token.

Run as ``python -m tests.verify._station_child '<json>'`` from the repository
root, with the SoftHSM2 environment (``SOFTHSM2_CONF``,
``VAULT_PKCS11_MODULE``) inherited from the test. It imports the station
library only, never pytest or the CLI. The JSON argument names::

    {"mode": "race" | "loop", "state": ..., "token": "<pkcs11 URI>", "station_id": ...,
     "root": "<root-ca.pem>", "bundle": ..., "policy": "<policy.json>",
     "devices": 8,          # race: how many devices to try
     "fixture": 1,          # the fixture slot recorded in the manifests
     "delay": 0.0,          # loop: seconds each image takes to program
     "hang_at": null,       # loop: the device number whose programming never ends
     "limit": null}         # loop: stop after this many devices (prints {"done": true})

It prints one JSON line per event, flushed as soon as it is known:
``{"ready": true}`` once the bundle is loaded; then per device
``{"hwid", "event", "unit", "manifest"}`` after :meth:`Station.provision`
returned (so the manifest is committed), or ``{"hwid", "error"}`` with the
error's class name. In "race" mode it waits for a line on stdin after
"ready", so that every process starts provisioning at the same moment. In
"loop" mode it provisions until the allocation is used up and then prints
``{"exhausted": true}``.

:class:`Child` is the test's side: it starts this module and reads its lines
on a thread, so the test never blocks on a process that hangs.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography import x509

from vault.errors import AllocationError, VaultError
from vault.token import parse_uri
from vault.verify import ImageToProgram, SimulatedDevice, Station


class SlowDevice(SimulatedDevice):
    """A simulated device whose flash takes ``delay`` seconds per image, or never finishes."""

    def __init__(self, *, delay: float, hang: bool) -> None:
        super().__init__(os.urandom(8))
        self.delay = delay
        self.hang = hang

    def program(self, image: ImageToProgram, chunks: Iterable[bytes]) -> None:
        if self.hang:
            say({"programming": self.hardware_id.hex()})
            while True:
                time.sleep(60)
        time.sleep(self.delay)
        super().program(image, chunks)


REPOSITORY = Path(__file__).resolve().parents[2]


class Child:
    """This module running as a separate process with ``config``, and every line it printed so far."""

    def __init__(self, config: dict[str, Any], *, stdin: bool = False) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.verify._station_child", json.dumps(config)],
            cwd=REPOSITORY,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[dict[str, Any]] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._errors: list[str] = []
        self._threads = [
            threading.Thread(target=self._pump, daemon=True),
            threading.Thread(target=lambda: self._errors.extend(self.process.stderr or ()), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _pump(self) -> None:
        for line in self.process.stdout or ():
            self._queue.put(line)
        self._queue.put(None)

    @property
    def stderr(self) -> str:
        return "".join(self._errors)

    def next_line(self, timeout: float = 60) -> dict[str, Any]:
        """The next line the process prints (it must print one within ``timeout`` seconds)."""
        try:
            line = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the process printed nothing for {timeout} s") from None
        if line is None:
            self.wait()
            raise AssertionError(f"the process ended (exit {self.process.returncode}): {self.stderr}")
        self.lines.append(json.loads(line))
        return self.lines[-1]

    def drain(self) -> list[dict[str, Any]]:
        """Every line printed so far, without waiting."""
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return self.lines
            if line is None:
                self._queue.put(None)  # the end stays for next_line and wait
                return self.lines
            self.lines.append(json.loads(line))

    def send(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text)
        self.process.stdin.flush()

    def wait(self, timeout: float = 60) -> int:
        """Wait for the process to end and collect the rest of its lines; returns its exit status."""
        try:
            status = self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        for thread in self._threads:
            thread.join(timeout=10)
        while not self._queue.empty():
            line = self._queue.get()
            if line is not None:
                self.lines.append(json.loads(line))
        if self.process.stdin is not None:
            self.process.stdin.close()
        return status

    def kill(self) -> int:
        """SIGKILL, as a power cut or the OOM killer would; returns the exit status."""
        self.process.kill()
        return self.wait()


def say(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def attempt(station: Station, device: SimulatedDevice, fixture: int) -> dict[str, Any]:
    try:
        outcome = station.provision(device, fixture=fixture)
    except VaultError as e:
        return {"hwid": device.hardware_id.hex(), "error": type(e).__name__, "message": str(e)}
    return {"hwid": outcome.hardware_id, "event": outcome.event, "unit": outcome.unit, "manifest": outcome.manifest_id}


def main(config: dict[str, Any]) -> int:
    root = x509.load_pem_x509_certificate(Path(config["root"]).read_bytes())
    token = parse_uri(config["token"])
    fixture = int(config.get("fixture", 1))
    with Station(config["state"], token=token, station_id=config["station_id"], root=root) as station:
        station.load(config["bundle"], Path(config["policy"]).read_bytes())
        say({"ready": True})
        if config["mode"] == "race":
            sys.stdin.readline()  # the start signal
            for _ in range(int(config["devices"])):
                say(attempt(station, SimulatedDevice(os.urandom(8)), fixture))
            return 0
        number = 0
        while True:
            if number == config.get("limit"):
                say({"done": True})
                return 0
            number += 1
            device = SlowDevice(delay=float(config.get("delay", 0.0)), hang=number == config.get("hang_at"))
            result = attempt(station, device, fixture)
            if result.get("error") == AllocationError.__name__:
                say({"exhausted": True})
                return 0
            say(result)


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1])))
