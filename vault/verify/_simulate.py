"""A production run on simulated devices: several fixtures at once, with faults injected on purpose.

``vault station provision`` and the benchmark use it; a real line drives
:meth:`Station.provision` from its own test software instead.
"""

from __future__ import annotations

import os
import queue
import threading
from dataclasses import dataclass
from typing import Any

from vault.errors import InputError, StateError, TokenError, VaultError
from vault.verify._device import STEPS, SimulatedDevice
from vault.verify._station import Station

__all__ = ["UnitResult", "parse_failures", "run_simulation"]


@dataclass(frozen=True)
class UnitResult:
    """What happened to one simulated unit."""

    unit: int
    fixture: int
    hardware_id: str
    label: str
    event: str
    serial: str | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "unit": self.unit, "fixture": self.fixture, "hardware_id": self.hardware_id, "label": self.label,
            "event": self.event, "serial": self.serial, "error": self.error,
        }  # fmt: skip

    def line(self) -> str:
        text = f"fixture {self.fixture}  unit {self.unit:>4}  {self.label:<14} {self.event}"
        return f"{text}: {self.error}" if self.error else text


def parse_failures(values: tuple[str, ...] | list[str], count: int) -> dict[int, str]:
    """``["3:program"]`` -> ``{3: "program"}``, checked against the steps and the unit count.

    Raises:
        InputError: not ``N:STEP``, an unknown step, or N outside 1..count.
    """
    plan = {}
    for value in values:
        number, _, step = value.partition(":")
        if not number.isdigit() or step not in STEPS or step == "certify":
            raise InputError(f"--fail takes UNIT:STEP with a device step ({', '.join(STEPS)}), not {value!r}")
        if not 1 <= int(number) <= count:
            raise InputError(f"unit {number} is not among the {count} simulated units")
        plan[int(number)] = step
    return plan


def run_simulation(
    station: Station,
    *,
    count: int,
    fixtures: int,
    fail: dict[int, str] | None = None,
    label_mismatch: set[int] | None = None,
    rework: list[int] | None = None,
    label_prefix: str = "SN-",
) -> list[UnitResult]:
    """Provision ``count`` simulated devices over ``fixtures`` threads; then rework the units in ``rework``.

    A refused or failed unit does not stop the run: each outcome is
    returned, and the station has logged a manifest for it.
    """
    fail = fail or {}
    label_mismatch = label_mismatch or set()
    devices = {n: SimulatedDevice(os.urandom(8), fail_at=fail.get(n)) for n in range(1, count + 1)}
    for device in devices.values():
        device.label = f"{label_prefix}{device.hardware_id.hex()[:8].upper()}"
    work: queue.Queue[int] = queue.Queue()
    for n in devices:
        work.put(n)
    results: dict[int, UnitResult] = {}

    def run(n: int, fixture: int, *, again: bool = False) -> UnitResult:
        device = devices[n]
        assert device.label is not None
        scanned = devices[n - 1].label if n in label_mismatch and n > 1 and not again else device.label
        assert scanned is not None
        try:
            outcome = station.provision(device, label=scanned, fixture=fixture, rework=again)
        except (StateError, TokenError):
            raise
        except VaultError as e:
            event = getattr(e, "event", None) or _event_of(e)
            return UnitResult(n, fixture, device.hardware_id.hex(), scanned, event, None, str(e))
        return UnitResult(n, fixture, device.hardware_id.hex(), scanned, outcome.event, outcome.serial)

    stopping = threading.Event()
    stopped: list[VaultError] = []

    finished = [threading.Event() for _ in range(fixtures)]

    def fixture_loop(fixture: int) -> None:
        try:
            while not stopping.is_set():
                try:
                    n = work.get_nowait()
                except queue.Empty:
                    return
                try:
                    results[n] = run(n, fixture)
                except (StateError, TokenError) as e:  # the station itself cannot go on: stop the line
                    stopped.append(e)
                    stopping.set()
        finally:
            finished[fixture - 1].set()

    threads = [threading.Thread(target=fixture_loop, args=(f,), name=f"fixture-{f}") for f in range(1, fixtures + 1)]
    for thread in threads:
        thread.start()
    try:
        _wait(finished)
    except KeyboardInterrupt:  # Ctrl-C: no new unit starts; the units on the fixtures finish and are logged
        stopping.set()
        while True:
            try:
                _wait(finished)  # (a Thread.join interrupted by Ctrl-C may return early; these events do not)
                break
            except KeyboardInterrupt:  # again: the units on the fixtures still finish first
                continue
        raise
    if stopped:
        raise stopped[0]
    ordered = [results[n] for n in sorted(results)]
    for n in rework or []:
        devices[n].unlock_for_rework()
        devices[n].fail_at = None
        ordered.append(run(n, 1, again=True))
    return ordered


def _wait(events: list[threading.Event]) -> None:
    """Wait until every event is set, in short steps so that Ctrl-C is seen at once."""
    for event in events:
        while not event.wait(0.1):
            pass


def _event_of(error: VaultError) -> str:
    name = type(error).__name__
    if name == "LabelMismatchError":
        return "label-mismatch"
    return (
        "refused" if name in ("AllocationError", "AlreadyProvisionedError", "CloneError", "IdentityError") else "failed"
    )
