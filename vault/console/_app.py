"""The operator's console: a Textual screen over :class:`vault.console._line.Line`.

Widgets hold what to show; the rules (PASS after the commit, stops, who may
acknowledge) are in the station library and the line. Every action has a
key, a button (the mouse) and, where a name is asked, a text field that a
barcode scanner typing like a keyboard fills (badges, labels) followed by
Enter.
"""

from __future__ import annotations

import datetime
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Footer, Input, Label, ProgressBar, RichLog, Static

from vault.console._line import Line, PanelState, age_text
from vault.errors import VaultError

__all__ = ["ConsoleApp"]

_TITLES = {
    "signed-out": "SIGN IN TO START",
    "waiting": "WAITING FOR A DEVICE",
    "scanning": "SCANNING",
    "programming": "PROGRAMMING",
    "pass": "PASS",
    "fail": "FAIL",
    "stopped": "STOPPED: SUPERVISOR NEEDED",
    "done": "DONE",
    "broken": "FIXTURE FAILED",
}


class FixturePanel(Vertical):
    """One fixture: its state in large words, the unit's serial and hardware id, progress, units left."""

    def __init__(self, state: PanelState) -> None:
        super().__init__(id=f"fixture-{state.slot}", classes="panel")
        self.state = state

    def compose(self) -> ComposeResult:
        yield Static(id=f"banner-{self.state.slot}", classes="banner")
        yield Static(id=f"body-{self.state.slot}", classes="body")
        yield ProgressBar(total=100, show_eta=False, id=f"progress-{self.state.slot}")

    def on_mount(self) -> None:
        self.show(self.state)

    def show(self, state: PanelState) -> None:
        self.state = state
        self.border_title = f"Fixture {state.slot} ({state.adapter})"
        for name in _TITLES:
            self.set_class(state.state == name, f"is-{name}")
        banner = _TITLES[state.state]
        if state.state == "fail" and state.step:
            banner = f"FAIL at {state.step}"
        self.query_one(f"#banner-{state.slot}", Static).update(Text(banner, style="bold"))
        lines = Text()
        lines.append(f"serial   {state.serial or '-'}\n")
        lines.append(f"hw id    {state.hardware_id or '-'}\n")
        if state.state == "programming" and state.step:
            lines.append(f"step     {state.step}\n")
        if state.reason and state.state in ("fail", "stopped", "done", "broken"):
            lines.append(f"reason   {state.reason}\n", style="bold")
        if state.state == "stopped":
            lines.append("click here or press F8: a supervisor acknowledges\n", style="bold")
        if state.last and state.state not in ("pass", "fail"):
            lines.append(f"last     {state.last}\n")
        if state.label:
            lines.append(f"{state.label}\n", style="" if state.label_ok else "bold red")
        lines.append(f"units left {state.left}   this shift {state.units}")
        self.query_one(f"#body-{state.slot}", Static).update(lines)
        self.query_one(f"#progress-{state.slot}", ProgressBar).update(progress=round(state.progress * 100))

    def on_click(self) -> None:
        if self.state.state == "stopped":
            app = self.app
            assert isinstance(app, ConsoleApp)
            app.action_acknowledge(self.state.slot)


class PeopleScreen(ModalScreen[tuple[str, str] | None]):
    """Pick a person (a button each, or a badge scanned into the field), and for a supervisor, a reason."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, people: Sequence[str], *, ask_reason: bool, prefix: str) -> None:
        super().__init__()
        self.title_text = title
        self.people = list(people)
        self.ask_reason = ask_reason
        self.prefix = prefix
        self.chosen: str | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.title_text, id="dialog-title")
            with Horizontal(id="people"):
                for i, person in enumerate(self.people):
                    yield Button(person, id=f"{self.prefix}-{i}", classes="person")
            yield Input(placeholder="or scan a badge / type a name, then Enter", id="badge")
            if self.ask_reason:
                yield Input(placeholder="why may this fixture go on? (required)", id="reason")
                yield Button("Acknowledge", id="confirm", variant="error")
            yield Label("", id="dialog-error")

    def on_mount(self) -> None:
        self.query_one("#badge", Input).focus()

    @on(Button.Pressed, ".person")
    def _person(self, event: Button.Pressed) -> None:
        self._choose(str(event.button.label))

    @on(Input.Submitted, "#badge")
    def _badge(self, event: Input.Submitted) -> None:
        self._choose(event.value.strip())

    @on(Input.Submitted, "#reason")
    @on(Button.Pressed, "#confirm")
    def _confirm(self) -> None:
        reason = self.query_one("#reason", Input).value.strip()
        if self.chosen is None:
            self.query_one("#dialog-error", Label).update("choose the supervisor first")
        elif len(reason) < 3:
            self.query_one("#dialog-error", Label).update("say why the fixture may go on")
        else:
            self.dismiss((self.chosen, reason))

    def _choose(self, name: str) -> None:
        if name not in self.people:
            self.query_one("#dialog-error", Label).update(f"'{name}' is not on this station's list")
            return
        self.chosen = name
        if not self.ask_reason:
            self.dismiss((name, ""))
            return
        self.query_one("#dialog-title", Label).update(f"{self.title_text}: {name}")
        self.query_one("#reason", Input).focus()

    def action_cancel(self) -> None:
        self.dismiss(None)


class LotScreen(ModalScreen[tuple[str, str] | None]):
    """A reel scanned (or typed): the component and its lot code, as ``COMPONENT CODE``."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, lots: dict[str, str]) -> None:
        super().__init__()
        self.lots = lots

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            shown = ", ".join(f"{name} {lot}" for name, lot in self.lots.items())
            yield Label(f"New reel. In force: {shown}", id="dialog-title")
            yield Input(placeholder="scan the reel, or type COMPONENT CODE (mcu L2312B), then Enter", id="lot")
            yield Label("", id="dialog-error")

    def on_mount(self) -> None:
        self.query_one("#lot", Input).focus()

    @on(Input.Submitted, "#lot")
    def _scanned(self, event: Input.Submitted) -> None:
        parts = event.value.split()
        if len(parts) != 2:
            self.query_one("#dialog-error", Label).update("give the component and the lot code: mcu L2312B")
            return
        self.dismiss((parts[0], parts[1]))

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConsoleApp(App[None]):
    """``vault station console``: one panel per fixture, the shift's people, stops, and export."""

    TITLE = "vault station console"
    CSS = """
    #top { height: 3; padding: 0 1; background: $boost; }
    #export-warning { height: auto; padding: 0 1; background: $warning; color: $text; display: none; }
    #export-warning.stale { display: block; }
    #fixtures { grid-size: 2; grid-gutter: 1; height: 1fr; }
    .panel { border: round $primary; padding: 0 1; height: 1fr; }
    .panel .banner { text-style: bold; height: 1; }
    .panel.is-pass { border: heavy $success; }
    .panel.is-pass .banner { background: $success; color: $text; }
    .panel.is-fail { border: heavy $error; }
    .panel.is-fail .banner { color: $error; }
    .panel.is-stopped { border: double red; background: $error 30%; }
    .panel.is-stopped .banner { background: red; color: white; }
    .panel.is-programming .banner { color: $accent; }
    #actions { height: 3; }
    #actions Button { margin: 0 1 0 0; }
    #log { height: 8; border: round $panel; }
    #dialog { width: 70; height: auto; border: thick $accent; background: $surface; padding: 1 2; }
    #people { height: auto; }
    #dialog-error { color: $error; }
    PeopleScreen { align: center middle; }
    LotScreen { align: center middle; }
    """
    BINDINGS = [
        Binding("f2", "sign_in", "Sign in"),
        Binding("f3", "sign_out", "Sign out"),
        Binding("f5", "export", "Export"),
        Binding("f6", "lot", "New reel"),
        Binding("f8", "acknowledge", "Acknowledge"),
        Binding("ctrl+q", "quit_console", "Quit"),
    ]

    def __init__(
        self,
        make_line: Callable[[Callable[[PanelState], None], Callable[[str, str], None]], Line],
        *,
        station_label: str,
        operators: Sequence[str],
        supervisors: Sequence[str],
        evidence: Path | None,
        export_warning_hours: int,
        last_export: datetime.datetime | None,
        now: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
    ) -> None:
        super().__init__()
        self._make_line = make_line
        self.station_label = station_label
        self.operators = list(operators)
        self.supervisors = list(supervisors)
        self.evidence = evidence
        self.export_warning = datetime.timedelta(hours=export_warning_hours)
        self.last_export = last_export
        self.now = now
        self.messages: list[str] = []  # every line shown in the log pane, for the record
        self._ui_thread = threading.get_ident()
        self.line: Line | None = None

    # --- layout -------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Static(id="top")
        yield Static(id="export-warning")
        yield Grid(id="fixtures")
        with Horizontal(id="actions"):
            yield Button("Sign in (F2)", id="sign-in", variant="primary")
            yield Button("Sign out (F3)", id="sign-out")
            yield Button("Export (F5)", id="export")
            yield Button("Acknowledge (F8)", id="acknowledge", variant="error")
        yield RichLog(id="log", markup=False, wrap=True)
        yield Footer()

    def on_mount(self) -> None:
        self._ui_thread = threading.get_ident()
        self.line = self._make_line(self._show_from_any, self._say_from_any)
        grid = self.query_one("#fixtures", Grid)
        for state in self.line.panels.values():
            grid.mount(FixturePanel(state))
        self._refresh_top()
        self.set_interval(30, self._refresh_top)
        self.line.start()
        self.say("sign in to start the shift (F2, the Sign in button, or scan your badge)", "info")

    # --- from the line's threads -----------------------------------------------------------------

    def _on_ui(self, call: Callable[..., Any], *args: Any) -> None:
        if threading.get_ident() == self._ui_thread:
            call(*args)
        else:
            try:
                self.call_from_thread(call, *args)
            except RuntimeError:  # the app has ended; the line is finishing its last units
                pass

    def _show_from_any(self, state: PanelState) -> None:
        self._on_ui(self._show, state)

    def _say_from_any(self, text: str, kind: str) -> None:
        self._on_ui(self.say, text, kind)

    def _show(self, state: PanelState) -> None:
        try:
            panel = self.query_one(f"#fixture-{state.slot}", FixturePanel)
        except Exception:  # not mounted yet: it shows the line's state when it is
            return
        panel.show(state)
        self._refresh_top()

    def say(self, text: str, kind: str) -> None:
        stamp = self.now().strftime("%H:%M:%S")
        self.messages.append(f"{stamp} {text}")
        style = {"error": "bold red", "warning": "yellow", "good": "green"}.get(kind, "")
        self.query_one("#log", RichLog).write(Text(f"{stamp} {text}", style=style))

    def _refresh_top(self) -> None:
        if self.line is None:
            return
        who = self.line.operator or "nobody signed in"
        left = min((p.left for p in self.line.panels.values()), default=0)
        stopped = self.line.stopped()
        parts = [self.station_label, f"operator: {who}", f"units left: {left}"]
        lots = self.line.station.lots()
        if lots:  # the reels in force (F6: a new one)
            parts.append("lots " + ", ".join(f"{name} {lot}" for name, lot in lots.items()))
        if stopped:
            parts.append(f"STOPPED: fixture {', '.join(map(str, stopped))}")
        warning = self.query_one("#export-warning", Static)
        if self.last_export is None:
            parts.append("no export yet")
            stale = f"No evidence exported yet: export (F5) at least every {self._hours()} hours."
        else:
            age = self.now() - self.last_export
            parts.append(f"last export {age_text(self.last_export, self.now())} ago")
            stale = (
                f"The last export is {age_text(self.last_export, self.now())} old, older than {self._hours()} hours: "
                "export now (F5)."
                if age > self.export_warning
                else ""
            )
        warning.update(stale)
        warning.set_class(bool(stale), "stale")
        self.query_one("#top", Static).update(Text("   ".join(parts), style="bold"))

    def _hours(self) -> int:
        return int(self.export_warning.total_seconds() // 3600)

    # --- the operator's actions -------------------------------------------------------------------

    def _in_background(self, name: str, work: Callable[[], Any], done: Callable[[Any], None] | None = None) -> None:
        def run() -> None:
            try:
                result = work()
            except VaultError as e:
                said = str(e)
                self._say_from_any(f"{name}: {said}", "error")
                self._on_ui(lambda: self.notify(said, severity="error", title=name))
                return
            if done is not None:
                self._on_ui(done, result)
            self._on_ui(self._refresh_top)

        self.run_worker(run, name=name, thread=True, group="actions")

    @on(Button.Pressed, "#sign-in")
    def action_sign_in(self) -> None:
        assert self.line is not None
        if self.line.operator is not None:
            self.notify(f"{self.line.operator} is signed in: sign out first", severity="warning")
            return

        def chosen(result: tuple[str, str] | None) -> None:
            if result is not None:
                line = self.line
                assert line is not None
                self._in_background("sign in", lambda: line.sign_in(result[0], self.operators))

        self.push_screen(PeopleScreen("Sign in", self.operators, ask_reason=False, prefix="operator"), chosen)

    @on(Button.Pressed, "#sign-out")
    def action_sign_out(self) -> None:
        assert self.line is not None
        if self.line.operator is None:
            self.notify("nobody is signed in", severity="warning")
            return
        busy = self.line.busy()
        if busy:
            self.say(f"signing out: {busy} unit(s) on the fixtures finish first", "info")
        line = self.line
        self._in_background("sign out", line.sign_out)

    @on(Button.Pressed, "#export")
    def action_export(self) -> None:
        assert self.line is not None
        if self.evidence is None:
            self.notify("the station configuration names no evidence folder", severity="error")
            return
        line, folder = self.line, self.evidence

        def exported(_: object) -> None:
            self.last_export = self.now()

        self._in_background("export", lambda: line.export(folder), exported)

    def action_lot(self) -> None:
        """A new reel: its component and lot code, recorded in every unit's manifest from the next unit on."""
        assert self.line is not None
        station = self.line.station
        if not station.components:
            self.notify("the station configuration declares no components", severity="warning")
            return

        def chosen(result: tuple[str, str] | None) -> None:
            if result is not None:
                component, code = result

                def recorded(_: object) -> None:
                    self.say(f"lot {component} {code} in force from the next unit", "good")

                self._in_background("lot", lambda: station.set_lot(component, code), recorded)

        self.push_screen(LotScreen(station.lots() or {}), chosen)

    @on(Button.Pressed, "#acknowledge")
    def _acknowledge_button(self) -> None:
        self.action_acknowledge()

    def action_acknowledge(self, slot: int | None = None) -> None:
        assert self.line is not None
        stopped = self.line.stopped()
        if not stopped:
            self.notify("no fixture is stopped", severity="information")
            return
        which = slot if slot is not None and slot in stopped else stopped[0]
        reason = self.line.panels[which].reason or ""

        def chosen(result: tuple[str, str] | None) -> None:
            if result is not None:
                line = self.line
                assert line is not None
                who, why = result
                self._in_background("acknowledge", lambda: line.acknowledge(which, who, why, self.supervisors))

        title = f"Fixture {which} stopped ({reason[:80]}). Supervisor"
        self.push_screen(PeopleScreen(title, self.supervisors, ask_reason=True, prefix="supervisor"), chosen)

    def action_quit_console(self) -> None:
        assert self.line is not None
        if self.line.operator is not None:
            self.notify("sign out first (F3): the shift's end goes in the log", severity="warning")
            return
        self.exit()

    def on_unmount(self) -> None:
        if self.line is not None:
            self.line.quit()


def make_console(
    station: Any,
    runs: Sequence[Any],
    *,
    adapters: dict[int, str],
    labels: Any,
    label_source: str,
    operators: Sequence[str],
    supervisors: Sequence[str],
    evidence: Path | None,
    export_warning_hours: int,
) -> ConsoleApp:
    """The console over an opened station whose release is loaded, and its configured fixtures.

    The last export's time is taken from its file (exports are written once and never touched again).
    """
    last = station.status().last_export
    last_time = None
    if last is not None:
        try:
            last_time = datetime.datetime.fromtimestamp(last.path.stat().st_mtime, datetime.UTC)
        except OSError:  # the evidence folder moved away: treated as never exported, which warns
            last_time = None
    release = station.release.release

    def make_line(show: Callable[[PanelState], None], say: Callable[[str, str], None]) -> Line:
        return Line(station, runs, adapters=adapters, labels=labels, label_source=label_source, show=show, say=say)

    return ConsoleApp(
        make_line,
        station_label=f"{station.station_id} · {release.product} {release.version}",
        operators=operators,
        supervisors=supervisors,
        evidence=evidence,
        export_warning_hours=export_warning_hours,
        last_export=last_time,
    )
