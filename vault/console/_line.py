"""The console's line: one thread per fixture driving the station library, and what each panel shows.

No Textual here: the screen (:mod:`vault.console._app`) is given a
:class:`PanelState` each time a fixture changes and calls :class:`Line`'s
methods for what the operator does. The rules stay in the station library:
a unit is shown PASS only after :meth:`Station.provision` returned, that is
after its manifest was committed to the log; a label mismatch, a clone or a
clock problem stops that fixture until a supervisor acknowledges it (the
acknowledgement is a manifest); the other fixtures go on.
"""

from __future__ import annotations

import dataclasses
import datetime
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vault.console._labels import LabelData, LabelSpec, make_label
from vault.errors import (
    AlreadyProvisionedError,
    ClockError,
    CloneError,
    InputError,
    LabelError,
    LabelMismatchError,
    StateError,
    TokenError,
    VaultError,
)
from vault.manifest import Manifest
from vault.verify import ExportResult, Outcome, Station
from vault.verify.devices import Device
from vault.verify.devices._run import FixtureRun

__all__ = ["Line", "PanelState"]

_STOPPING = (LabelMismatchError, CloneError, AlreadyProvisionedError, ClockError)
"""What stops a fixture until a supervisor acknowledges it. A device presenting a hardware id the station
already provisioned is refused as already provisioned: on a line that does not declare reworks that is a
clone (or a good unit back on a fixture), and a person must look before the fixture goes on."""

_STOP_NAMES: tuple[tuple[type[Exception], str], ...] = (
    (LabelMismatchError, "label mismatch"),
    (CloneError, "clone"),
    (AlreadyProvisionedError, "clone"),
    (ClockError, "clock problem"),
)


@dataclass(frozen=True)
class PanelState:
    """What one fixture's panel shows.

    ``state`` is one of: ``signed-out`` (no operator: the fixture waits),
    ``waiting`` (for a device), ``scanning`` (reading its label and id),
    ``programming`` (``progress`` from 0 to 1), ``pass``, ``fail`` (``step``
    and ``reason``), ``stopped`` (a red banner, ``reason``, until a
    supervisor acknowledges), ``done`` (no more devices or units) and
    ``broken`` (the fixture itself failed).
    """

    slot: int
    adapter: str
    state: str = "signed-out"
    step: str | None = None
    reason: str | None = None
    serial: str | None = None
    hardware_id: str | None = None
    progress: float = 0.0
    left: int = 0
    label: str | None = None  # the last label made, or why it was not
    label_ok: bool = True
    units: int = 0  # units ended on this fixture this shift
    last: str | None = None  # the previous unit's result, kept in view while the next one starts


class Line:
    """The fixtures of one station run from the console.

    Args:
        station: the opened station, its release loaded (``resume``).
        fixtures: the configured fixtures (:meth:`StationConfig.make_fixtures`).
        adapters: each slot's adapter name, shown on its panel.
        labels: how labels are made for units that pass (None: no labels).
        label_source: ``adapter`` (the fixture reads the label) or ``none`` (the station assigns serials).
        show: called (from any thread) with a panel's new state.
        say: called (from any thread) with one line for the console's log pane.
    """

    def __init__(
        self,
        station: Station,
        fixtures: Sequence[FixtureRun],
        *,
        adapters: dict[int, str],
        labels: LabelSpec | None,
        label_source: str,
        show: Callable[[PanelState], None],
        say: Callable[[str, str], None],
    ) -> None:
        self.station = station
        self.fixtures = list(fixtures)
        self.labels = labels
        self.label_source = label_source
        self._show = show
        self._say = say
        self._cv = threading.Condition()
        self.operator: str | None = None
        self._quitting = False
        self._in_flight = 0
        self._stops: dict[int, tuple[str, str | None, str | None]] = {}  # slot -> (what, hardware id, serial)
        self._threads: list[threading.Thread] = []
        left = station.units_left()
        self.panels = {f.slot: PanelState(f.slot, adapters.get(f.slot, "?"), left=left) for f in self.fixtures}
        self.fatal: str | None = None

    # --- what the operator does ------------------------------------------------------------

    def start(self) -> None:
        """Start one thread per fixture (each waits for a signed-in operator)."""
        for run in self.fixtures:
            thread = threading.Thread(target=self._fixture, args=(run,), name=f"fixture-{run.slot}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def sign_in(self, operator: str, allowed: Sequence[str]) -> Outcome:
        """Sign ``operator`` in (one of ``allowed``) and record it; the fixtures start.

        Raises:
            InputError: not an operator of this station, or someone is signed in.
        """
        if operator not in allowed:
            raise InputError(f"'{operator}' is not an operator of this station ({', '.join(allowed)})")
        with self._cv:
            if self.operator is not None:
                raise InputError(f"{self.operator} is signed in: sign out first")
            outcome = self.station.sign_in(operator)
            self.operator = operator
            self._cv.notify_all()
        self._say(f"{operator} signed in (log entry {outcome.sequence})", "info")
        return outcome

    def sign_out(self) -> Outcome:
        """Stop taking devices, let the units on the fixtures finish, and record the sign-out.

        Raises:
            InputError: nobody is signed in.
        """
        with self._cv:
            if self.operator is None:
                raise InputError("nobody is signed in")
            who = self.operator
            self.operator = None  # the fixtures take no further device
            self._cv.notify_all()
            while self._in_flight:
                self._cv.wait()
            self.station.operator = who  # the sign-out names who ends the shift
            outcome = self.station.sign_out()
        for slot, panel in self.panels.items():
            if panel.state not in ("stopped", "done", "broken"):
                self._update(slot, state="signed-out")
        self._say(f"{who} signed out (log entry {outcome.sequence})", "info")
        return outcome

    def acknowledge(self, slot: int, supervisor: str, reason: str, allowed: Sequence[str]) -> Outcome:
        """A supervisor acknowledges the stop on fixture ``slot``; it is recorded, and the fixture goes on.

        Raises:
            InputError: the fixture is not stopped, the supervisor is not one of ``allowed`` or is the
                operator signed in (a second person acknowledges), or no reason was given.
        """
        if supervisor not in allowed:
            shown = ", ".join(allowed) or "none configured: add supervisors: to the station configuration"
            raise InputError(f"'{supervisor}' is not a supervisor of this station ({shown})")
        if supervisor == self.operator:
            raise InputError("the operator signed in cannot acknowledge their own stop: a supervisor must")
        if len(reason.strip()) < 3:
            raise InputError("say why the fixture may go on (a few words)")
        with self._cv:
            if slot not in self._stops:
                raise InputError(f"fixture {slot} is not stopped")
            what, hwid, serial = self._stops[slot]
            outcome = self.station.acknowledge(
                supervisor, reason, stopped=f"fixture {slot}: {what}", fixture=slot, hardware_id=hwid, serial=serial
            )
            del self._stops[slot]
            self._cv.notify_all()
        self._update(slot, state="waiting" if self.operator else "signed-out", reason=None)
        self._say(f"fixture {slot}: {supervisor} acknowledged the stop: {reason.strip()}", "info")
        return outcome

    def stopped(self) -> list[int]:
        """The fixtures waiting for a supervisor."""
        with self._cv:
            return sorted(self._stops)

    def export(self, folder: Path) -> ExportResult:
        """Export the evidence not exported yet (the units on the fixtures go into the next export)."""
        result = self.station.export(folder)
        self._say(f"export {result.sequence}: log entries {result.from_size} to {result.to_size - 1}: {result.path}",
                  "info")  # fmt: skip
        return result

    def quit(self, timeout: float = 30.0) -> None:
        """Stop the fixtures; the units on them finish first (their manifests land)."""
        with self._cv:
            self._quitting = True
            self._cv.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    def busy(self) -> int:
        """Units on the fixtures now."""
        with self._cv:
            return self._in_flight

    # --- one fixture -----------------------------------------------------------------------

    def _update(self, slot: int, **changes: object) -> PanelState:
        with self._cv:
            panel = self.panels[slot] = dataclasses.replace(self.panels[slot], **changes)  # type: ignore[arg-type]
        self._show(panel)
        return panel

    def _wait_turn(self, slot: int) -> bool:
        """Wait until an operator is signed in and the fixture is not stopped; False when quitting."""
        with self._cv:
            while not self._quitting and (self.operator is None or slot in self._stops):
                self._cv.wait()
            if self._quitting:
                return False
            self._in_flight += 1
            return True

    def _done_unit(self) -> None:
        with self._cv:
            self._in_flight -= 1
            self._cv.notify_all()

    def _fixture(self, run: FixtureRun) -> None:
        slot = run.slot
        try:
            run.fixture.open()
        except Exception as e:
            self._update(slot, state="broken", reason=f"cannot open: {e}")
            self._say(f"fixture {slot}: cannot open: {e}", "error")
            return
        try:
            while True:
                with self._cv:
                    while not self._quitting and (self.operator is None or slot in self._stops):
                        self._cv.wait()
                    if self._quitting:
                        return
                if self.station.units_left() <= 0:
                    self._finished(slot, "the allocation is used up")
                    return
                if self.panels[slot].state not in ("pass", "fail"):  # a result stays in view until the next unit
                    self._update(slot, state="waiting", progress=0.0)
                try:
                    device = run.fixture.next_device()
                except Exception as e:
                    self._update(slot, state="broken", reason=str(e) or type(e).__name__)
                    self._say(f"fixture {slot} stopped: {e}", "error")
                    return
                if device is None:
                    self._finished(slot, "no more devices on this fixture")
                    return
                if not self._wait_turn(slot):
                    return
                try:
                    self._unit(slot, device)
                finally:
                    self._done_unit()
                if self.fatal is not None:
                    return
        finally:
            try:
                run.fixture.close()
            except Exception as e:
                self._say(f"fixture {slot}: cannot close: {e}", "error")

    def _finished(self, slot: int, why: str) -> None:
        before = self.panels[slot]
        last = before.last
        if before.state == "pass":
            last = f"PASS {before.serial}"
        elif before.state == "fail":
            last = f"FAIL at {before.step} {before.serial or before.hardware_id or ''}".strip()
        self._update(slot, state="done", reason=why, last=last, left=self.station.units_left(), progress=0.0)

    def _unit(self, slot: int, device: Device) -> None:
        before = self.panels[slot]
        if before.state in ("pass", "fail", "stopped"):
            result = {"pass": "PASS", "fail": f"FAIL at {before.step}"}.get(before.state, "stop")
            self._update(slot, last=f"{result} {before.serial or before.hardware_id or ''}".strip())
        self._update(slot, state="scanning", step=None, reason=None, serial=None, hardware_id=None, progress=0.0,
                     label=None, label_ok=True)  # fmt: skip
        label: str | None = None
        try:
            if self.label_source == "adapter":
                read = getattr(device, "read_label", None)
                if read is None:
                    raise InputError("this adapter reads no labels (the configuration says label: adapter)")
                label = read()
                if not isinstance(label, str):
                    raise InputError("the adapter's label is not text")
                self._update(slot, serial=label)
            self._update(slot, state="programming")

            def progress(name: str, done: int, length: int) -> None:
                self._update(slot, step=f"program {name}", progress=done / length if length else 1.0)

            outcome = self.station.provision(device, label=label, fixture=slot, progress=progress)
        except (StateError, TokenError) as e:
            self.fatal = str(e)
            for other in self.panels:
                self._update(other, state="stopped", reason=f"the station stopped: {e}")
            self._say(f"the station stopped: {e}", "error")
            with self._cv:
                self._quitting = True
                self._cv.notify_all()
            return
        except _STOPPING as e:
            hwid = self._hardware_id(device)
            kind = next(name for cls, name in _STOP_NAMES if isinstance(e, cls))
            serial = self._bound_serial(hwid)
            with self._cv:
                self._stops[slot] = (f"{kind}: {e}", hwid, serial)
            self._update(slot, state="stopped", step=kind, reason=str(e), hardware_id=hwid, serial=serial or label,
                         left=self.station.units_left())  # fmt: skip
            self._say(f"fixture {slot} STOPPED ({kind}): {e}; a supervisor must acknowledge", "error")
            return
        except VaultError as e:
            hwid = self._hardware_id(device)
            step = self._failed_step(hwid) or "unknown"
            self._update(slot, state="fail", step=step, reason=str(e), hardware_id=hwid,
                         serial=self._bound_serial(hwid) or label, left=self.station.units_left(),
                         units=self.panels[slot].units + 1)  # fmt: skip
            self._say(f"fixture {slot}: FAIL at {step}: {e}", "warning")
            return
        except Exception as e:  # an adapter bug (reading the label): the unit fails, the fixture goes on
            self._update(slot, state="fail", step="read-label", reason=f"{type(e).__name__}: {e}")
            self._say(f"fixture {slot}: FAIL: {type(e).__name__}: {e}", "warning")
            return
        # the manifest is committed: only now is the unit shown as good
        self._update(slot, state="pass", step=None, serial=outcome.serial, hardware_id=outcome.hardware_id,
                     progress=1.0, left=self.station.units_left(), units=self.panels[slot].units + 1)  # fmt: skip
        self._say(f"fixture {slot}: PASS {outcome.serial} ({outcome.event}, log entry {outcome.sequence})", "good")
        if self.labels is not None:
            self._label(slot, outcome)

    def _label(self, slot: int, outcome: Outcome) -> None:
        release = self.station.release.release
        when, _ = self.station.clock()
        assert outcome.serial is not None
        data = LabelData.of(serial=outcome.serial, hardware_id=outcome.hardware_id, product=release.product,
                            version=release.version, station=self.station.station_id, when=when)  # fmt: skip
        assert self.labels is not None
        try:
            printed = make_label(self.labels, data)
        except LabelError as e:
            self.station.record_label(outcome, fixture=slot, detail=f"not printed: {e}", failed=True)
            self._update(slot, label=f"label not printed: {e}", label_ok=False)
            self._say(f"fixture {slot}: label for {outcome.serial} not printed: {e}", "error")
            return
        self.station.record_label(outcome, fixture=slot, detail=printed.describe())
        self._update(slot, label=f"label {printed.png.name}" + (" printed" if printed.printed else ""))

    def _hardware_id(self, device: Device) -> str | None:
        try:
            value = device.read_hardware_id()
        except Exception:
            return None
        return value.hex() if isinstance(value, bytes) and 1 <= len(value) <= 32 else None

    def _manifests(self, hwid: str | None) -> list[Manifest]:
        """The device's committed manifests (what a panel shows of a unit that ended is the evidence)."""
        if hwid is None:
            return []
        try:
            return [m for m, _ in self.station.history(hwid)]
        except VaultError:
            return []

    def _bound_serial(self, hwid: str | None) -> str | None:
        return next((m.serial for m in reversed(self._manifests(hwid)) if m.serial is not None), None)

    def _failed_step(self, hwid: str | None) -> str | None:
        """The failed step the unit's last manifest names."""
        last = self._manifests(hwid)[-1:]
        return None if not last else last[0].failed_step if last[0].event == "failed" else last[0].event


def age_text(since: datetime.datetime, now: datetime.datetime) -> str:
    """``3 h 12 min`` from ``since`` to ``now``."""
    minutes = max(0, int((now - since).total_seconds() // 60))
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"
