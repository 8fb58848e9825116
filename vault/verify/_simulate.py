"""A production run on simulated devices: several fixtures at once, with faults injected on purpose.

``vault station provision`` and the benchmark use it; a real line drives
:meth:`Station.provision` from its own test software instead.
"""

from __future__ import annotations

import functools
import os
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vault.errors import (
    AllocationError,
    AlreadyProvisionedError,
    CloneError,
    IdentityError,
    InputError,
    LabelMismatchError,
    StateError,
    TokenError,
    VaultError,
)
from vault.verify._device import STEPS, SimulatedDevice
from vault.verify._station import Station
from vault.verify.devices._protocol import Measurement

__all__ = ["ProvisioningInterrupted", "UnitResult", "event_of", "parse_failures", "run_simulation", "run_threads"]


@dataclass(frozen=True)
class UnitResult:
    """What happened to one simulated unit.

    ``event`` is the manifest's event, or "refused" for a unit the station
    refused (``refusal`` says why: "allocation" when no unit was left,
    "identity" for a known, scrapped or unknown device, both before anything
    was reserved; "clone" for a device key that belongs to another device).
    """

    unit: int
    fixture: int
    hardware_id: str
    label: str
    event: str
    serial: str | None = None
    error: str | None = None
    refusal: str | None = None
    measurements: tuple[Measurement, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {
            "unit": self.unit, "fixture": self.fixture, "hardware_id": self.hardware_id, "label": self.label,
            "event": self.event, "serial": self.serial, "error": self.error, "refusal": self.refusal,
            "measurements": [m.to_json() for m in self.measurements],
        }  # fmt: skip

    def line(self) -> str:
        text = f"fixture {self.fixture}  unit {self.unit:>4}  {self.label or self.serial or '':<14} {self.event}"
        return f"{text}: {self.error}" if self.error else text


class ProvisioningInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`run_simulation`: no new unit started; the units on the fixtures finished and were logged.

    Attributes:
        results: every unit that ended, in unit order (those in flight included).
        in_flight: the unit numbers that were on a fixture when Ctrl-C came.
        not_started: how many units never started (nothing was reserved or logged for them).
    """

    def __init__(self, results: list[UnitResult], in_flight: list[int], not_started: int) -> None:
        super().__init__("interrupted")
        self.results = results
        self.in_flight = in_flight
        self.not_started = not_started


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
    retry: list[int] | None = None,
    label_prefix: str = "SN-",
) -> list[UnitResult]:
    """Provision ``count`` simulated devices over ``fixtures`` threads; then rework the units in ``rework``
    and try the units in ``retry`` again (without the fault they had).

    A refused or failed unit does not stop the run: each outcome is
    returned, and the station has logged a manifest for it. Unit ``n`` in
    ``label_mismatch`` is scanned with unit ``n - 1``'s label (so ``n`` is 2
    or more).

    Raises:
        InputError: a label swap asked for unit 1 (there is no unit before it).
        ProvisioningInterrupted: Ctrl-C (a ``KeyboardInterrupt``); the units
            on the fixtures finished first, and it says which they were.
        StateError, TokenError: the station cannot go on; the line stopped.
    """
    fail = fail or {}
    label_mismatch = label_mismatch or set()
    if 1 in label_mismatch:
        raise InputError("a label swap gives unit N the label of unit N-1: unit 1 has none before it (use 2 or more)")
    devices = {n: SimulatedDevice(os.urandom(8), fail_at=fail.get(n)) for n in range(1, count + 1)}
    for device in devices.values():
        device.label = f"{label_prefix}{device.hardware_id.hex()[:8].upper()}"
    results: dict[int, UnitResult] = {}
    reworked: list[UnitResult] = []

    def run(n: int, fixture: int, *, again: bool = False) -> UnitResult:
        device = devices[n]
        assert device.label is not None
        if again:  # back on the fixture for rework or a retry: unlocked, and without the fault it had
            device.unlock_for_rework()
            device.fail_at = None
        scanned = devices[n - 1].label if n in label_mismatch and not again else device.label
        assert scanned is not None
        try:
            outcome = station.provision(device, label=scanned, fixture=fixture, rework=again and n not in retrying)
        except (StateError, TokenError):
            raise
        except VaultError as e:
            event, refusal = event_of(e)
            return UnitResult(n, fixture, device.hardware_id.hex(), scanned, event, None, str(e), refusal)
        return UnitResult(n, fixture, device.hardware_id.hex(), scanned, outcome.event, outcome.serial)

    first: queue.Queue[int] = queue.Queue()
    for n in devices:
        first.put(n)
    again: queue.Queue[int] = queue.Queue()
    retrying = set(retry or [])
    for n in [*(rework or []), *(retry or [])]:
        again.put(n)
    stopping = threading.Event()
    stopped: list[VaultError] = []
    in_flight: dict[int, int] = {}  # unit -> fixture, while the unit is on it
    guard = threading.Lock()

    def fixture_loop(fixture: int, work: queue.Queue[int], redo: bool) -> None:
        while not stopping.is_set():
            try:
                n = work.get_nowait()
            except queue.Empty:
                return
            with guard:
                in_flight[n] = fixture
            try:
                result = run(n, fixture, again=redo)
                if redo:
                    reworked.append(result)
                else:
                    results[n] = result
            except (StateError, TokenError) as e:  # the station itself cannot go on: stop the line
                stopped.append(e)
                stopping.set()
            finally:
                with guard:
                    del in_flight[n]

    def phase(loops: list[tuple[int, queue.Queue[int], bool]]) -> None:
        """Run one thread per fixture; on Ctrl-C start no new unit, and wait for the ones on the fixtures."""
        interrupted: list[int] = []

        def on_interrupt() -> None:
            with guard:
                interrupted.extend(sorted(in_flight))

        try:
            work = [(f"fixture-{a[0]}", functools.partial(fixture_loop, *a)) for a in loops]
            run_threads(work, stopping, on_interrupt)
        except KeyboardInterrupt:
            done = [results[n] for n in sorted(results)] + reworked
            planned = count + len(rework or []) + len(retry or [])
            raise ProvisioningInterrupted(done, interrupted, planned - len(done)) from None
        if stopped:
            raise stopped[0]

    # the reworks and retries run after the first pass, on fixture 1, in a thread: Ctrl-C never lands inside a unit
    phase([(f, first, False) for f in range(1, fixtures + 1)])
    phase([(1, again, True)])
    return [results[n] for n in sorted(results)] + reworked


def run_threads(
    work: Sequence[tuple[str, Callable[[], None]]], stopping: threading.Event, on_interrupt: Callable[[], None]
) -> None:
    """Run each ``(name, target)`` in its own thread and wait for all; on Ctrl-C set ``stopping``, call
    ``on_interrupt`` (to note what is in flight), wait for every thread again, then raise ``KeyboardInterrupt``.

    The threads are waited for through events, not ``Thread.join``: on Python 3.11 a join that
    Ctrl-C interrupts can mark a running thread as stopped (bpo-45274), and the unit on its
    fixture would be cut off by the station closing under it.
    """
    ended = [threading.Event() for _ in work]

    def run(target: Callable[[], None], finished: threading.Event) -> None:
        try:
            target()
        finally:
            finished.set()

    for (name, target), finished in zip(work, ended, strict=True):
        threading.Thread(target=run, args=(target, finished), name=name).start()
    try:
        for finished in ended:
            finished.wait()
    except KeyboardInterrupt:
        stopping.set()
        on_interrupt()
        while not all(finished.is_set() for finished in ended):
            try:  # a second Ctrl-C does not abandon a unit on a fixture: it is being logged
                for finished in ended:
                    finished.wait()
            except KeyboardInterrupt:
                continue
        raise


def event_of(error: VaultError) -> tuple[str, str | None]:
    """The event to show for a unit that raised, and the refusal kind when nothing was reserved for it."""
    if isinstance(error, LabelMismatchError):
        return "label-mismatch", None
    if isinstance(error, AllocationError):
        return "refused", "allocation"
    if isinstance(error, CloneError):
        return "refused", "clone"
    if isinstance(error, (AlreadyProvisionedError, IdentityError)):
        return "refused", "identity"
    return "failed", None
