"""The ``command`` adapter: each device step runs a vendor tool the factory already uses, without a shell.

Options (a station configuration's ``fixtures[].options``)::

    port: /dev/ttyUSB0                 # optional; the {port} placeholder
    vars: {chip: esp32s3}              # optional; more placeholders ({chip})
    steps:
      wait:        {run: [probe, "{port}"]}            # optional: exit 0 when a device is on the fixture
      read-id:     {run: [tool, "{port}", uid], hardware-id: {pattern: "UID: ([0-9a-fA-F]+)"}}
      read-label:  {run: [scanner], label: {pattern: "^(\\S+)$"}}                 # for label.source: adapter
      program:     {run: [tool, write, "{image}", "{target.load_address}"]}
      verify:      {run: [tool, sha256, "{image_name}"], sha256: {pattern: "([0-9a-f]{64})"}}
      generate-key: {run: [tool, keygen, -o, "{workdir}/device.csr"], csr: {file: "{workdir}/device.csr"}}
      install-certificate: {run: [tool, put-cert, "{certificate}"]}
      install-secret: {run: [tool, put-secret, "{secret_target}", "{secret}"]}   # optional
      lock:        {run: [tool, lock], dry-run: [tool, lock, --check-only]}

Every step but ``wait`` and ``read-label`` is required. Each is an argument
list (never a shell line), run with the step's timeout; placeholders are
``{name}`` (``{{`` for a brace) and are checked when the configuration is
loaded. The image reaches the tool through a FIFO ``{image}`` in a private
(0700) temporary folder, or through its standard input when ``program``
names no ``{image}``: the plaintext is never written to a disk, and a tool
that insists on seeking in its input file fails with its own error (wrap it
with a loader that reads a stream). An output (``hardware-id``, ``label``,
``sha256``, ``csr``) is taken from the tool's standard output by a
``pattern`` (its first group, or the whole match) or from a ``file`` the
tool writes. A non-zero exit, a timeout or a missing output fails the step
with the tool's last error line. In a dry run, the writing steps (program,
generate-key, install-certificate, install-secret, lock) run their
``dry-run`` command if they have one and are skipped if not.

``install-secret`` is needed only for a release that declares per-device
secrets; it runs once per secret. The secret reaches the tool like an image:
through a FIFO ``{secret}`` in the private folder, or on its standard input
when the command names no ``{secret}``; never on its command line, never in a
file. ``{secret_name}``, ``{secret_kind}`` and ``{secret_target}`` say which
secret and where it goes. Without the step, a unit of such a release fails
at ``install-secret``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import string
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from vault.errors import AdapterError, DeviceError, DeviceTimeoutError
from vault.verify.devices._protocol import WRITING_STEPS, ImageToProgram, check_option_names

__all__ = ["CommandDevice", "CommandFixture", "command_adapter"]

_COMMON = {"port", "fixture", "workdir"}
_IMAGE = {"image_name", "image_sha256", "image_length"}
_PLACEHOLDERS: dict[str, set[str]] = {
    "wait": _COMMON,
    "read-id": _COMMON,
    "read-label": _COMMON | {"hardware_id"},
    "program": _COMMON | {"hardware_id", "image"} | _IMAGE,
    "verify": _COMMON | {"hardware_id"} | _IMAGE,
    "generate-key": _COMMON | {"hardware_id"},
    "install-certificate": _COMMON | {"hardware_id", "certificate", "certificate_pem"},
    "install-secret": _COMMON | {"hardware_id", "secret", "secret_name", "secret_kind", "secret_target"},
    "lock": _COMMON | {"hardware_id"},
}
_OUTPUTS = {"read-id": "hardware-id", "read-label": "label", "verify": "sha256", "generate-key": "csr"}
_REQUIRED = ("read-id", "program", "verify", "generate-key", "install-certificate", "lock")
_MAX_OUTPUT = 1024 * 1024
_CHUNK_WAIT = 0.05


@dataclass(frozen=True)
class _Output:
    pattern: re.Pattern[str] | None
    file: list[str] | None  # a template, like an argument


@dataclass(frozen=True)
class _Step:
    name: str
    run: list[str]
    dry_run: list[str] | None
    output: _Output | None


def _fields(template: str, where: str) -> list[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise AdapterError(
            f"{template!r} is not a valid template ({e}); write a brace as '{{{{' or '}}}}'", where
        ) from e
    for _, name, spec, conversion in parsed:
        if spec or conversion:
            raise AdapterError(f"a placeholder is a plain {{name}}, not {{{name}!{conversion}:{spec}}}", where)
    return [name for _, name, _, _ in parsed if name is not None]


def _check_template(template: object, where: str, allowed: set[str]) -> str:
    if not isinstance(template, str | int) or isinstance(template, bool):
        raise AdapterError("an argument is text", where)
    text = str(template)
    for name in _fields(text, where):
        if name.startswith("target.") and len(name) > 7 and "image_name" in allowed:
            continue
        if name not in allowed:
            known = ", ".join("{" + n + "}" for n in sorted(allowed))
            raise AdapterError(f"unknown placeholder {{{name}}} (this step has {known})", where)
    return text


def _argv(value: object, where: str, allowed: set[str]) -> list[str]:
    if not isinstance(value, list) or not value:
        raise AdapterError("a command is a list of arguments: [tool, arg, ...] (no shell)", where)
    return [_check_template(a, f"{where}[{i}]", allowed) for i, a in enumerate(value)]


def _step(name: str, spec: object, allowed: set[str]) -> _Step:
    where = f"steps.{name}"
    if not isinstance(spec, dict):
        raise AdapterError("a step is a mapping with 'run' (and its output, 'dry-run')", where)
    output_key = _OUTPUTS.get(name)
    keys = {"run", "dry-run"} | ({output_key} if output_key else set())
    for key in spec:
        if key not in keys:
            raise AdapterError(
                f"step '{name}' has no field '{key}' (it has {', '.join(sorted(keys))})", f"{where}.{key}"
            )
    if "run" not in spec:
        raise AdapterError(f"step '{name}' needs 'run'", where)
    dry = spec.get("dry-run")
    if dry is not None and name not in WRITING_STEPS:
        raise AdapterError(f"'{name}' writes nothing, so it runs as it is in a dry run", f"{where}.dry-run")
    output = None
    if output_key is not None:
        if output_key not in spec:
            raise AdapterError(f"step '{name}' needs '{output_key}': a pattern or a file", where)
        output = _output(spec[output_key], f"{where}.{output_key}", allowed)
    return _Step(
        name,
        _argv(spec["run"], f"{where}.run", allowed),
        None if dry is None else _argv(dry, f"{where}.dry-run", allowed),
        output,
    )


def _output(spec: object, where: str, allowed: set[str]) -> _Output:
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in ("pattern", "file"):
        raise AdapterError("an output is {pattern: <regex>} or {file: <path>}", where)
    if "pattern" in spec:
        text = spec["pattern"]
        if not isinstance(text, str):
            raise AdapterError("a pattern is text", f"{where}.pattern")
        try:
            return _Output(re.compile(text, re.MULTILINE), None)
        except re.error as e:
            raise AdapterError(f"not a regular expression: {e}", f"{where}.pattern") from e
    return _Output(None, [_check_template(spec["file"], f"{where}.file", allowed)])


def command_adapter(
    options: Mapping[str, Any], *, fixture: int, timeouts: Mapping[str, float], dry_run: bool
) -> CommandFixture:
    """The ``command`` adapter's entry point: check the options (no tool is run) and make the fixture."""
    known = ("port", "vars", "steps")
    check_option_names("command", options, known)
    port = options.get("port")
    if port is not None and (not isinstance(port, str) or not port):
        raise AdapterError("a port is a device path such as /dev/ttyUSB0", "port")
    variables = options.get("vars", {})
    if not isinstance(variables, dict):
        raise AdapterError("vars is a mapping of placeholder names to text", "vars")
    for name, value in variables.items():
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", name) or name in set().union(*_PLACEHOLDERS.values()):
            raise AdapterError(
                f"'{name}' is not a free placeholder name (lower-case, not a built-in one)", f"vars.{name}"
            )
        if not isinstance(value, str | int) or isinstance(value, bool):
            raise AdapterError("a variable's value is text", f"vars.{name}")
    steps_spec = options.get("steps")
    if not isinstance(steps_spec, dict):
        raise AdapterError("the command adapter needs 'steps': a command per device step", "steps")
    for name in steps_spec:
        if name not in _PLACEHOLDERS:
            raise AdapterError(f"no step '{name}' (the steps are {', '.join(_PLACEHOLDERS)})", f"steps.{name}")
    missing = [name for name in _REQUIRED if name not in steps_spec]
    if missing:
        raise AdapterError(f"missing step{'s' if len(missing) > 1 else ''} {', '.join(missing)}", "steps")
    steps = {name: _step(name, spec, _PLACEHOLDERS[name] | set(variables)) for name, spec in steps_spec.items()}
    uses_port = any("port" in _fields(a, "") for s in steps.values() for a in s.run + (s.dry_run or []))
    if uses_port and port is None:
        raise AdapterError("the steps use {port}, but no port is given", "port")
    values = {k: str(v) for k, v in variables.items()}
    values.update(port=port or "", fixture=str(fixture))
    return CommandFixture(steps, values, dict(timeouts), dry_run)


def _last_line(*texts: bytes) -> str:
    for text in texts:
        for line in reversed(text.decode("utf-8", "replace").splitlines()):
            if line.strip():
                return line.strip()[:200]
    return "no output"


class CommandFixture:
    """A fixture driven by command-line tools; a private working folder lives while it is open."""

    def __init__(self, steps: dict[str, _Step], values: dict[str, str], timeouts: dict[str, float], dry_run: bool):
        self.steps = steps
        self.values = values
        self.timeouts = timeouts
        self.dry_run = dry_run
        self.reads_labels = "read-label" in steps
        self._folder: Path | None = None
        self._current: Path | None = None
        self._placed = 0

    def open(self) -> None:
        shm = Path("/dev/shm")
        base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None  # in memory where the system has it
        self._folder = Path(tempfile.mkdtemp(prefix="vault-fixture-", dir=base))  # mode 0700

    def close(self) -> None:
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def next_device(self) -> CommandDevice | None:
        if self._folder is None:
            raise DeviceError("the fixture is not open")
        if self._current is not None:
            shutil.rmtree(self._current, ignore_errors=True)
        self._placed += 1
        self._current = self._folder / f"unit-{self._placed}"
        self._current.mkdir(mode=0o700)
        device = CommandDevice(self, self._current)
        if "wait" in self.steps:
            try:
                device.run("wait")
            except DeviceTimeoutError:
                raise
            except DeviceError:
                return None  # the wait tool says no more devices will come
        return device


class CommandDevice:
    """The device on a :class:`CommandFixture`, each step one run of the configured tool."""

    def __init__(self, fixture: CommandFixture, workdir: Path) -> None:
        self.fixture = fixture
        self.workdir = workdir
        self.values = dict(fixture.values, workdir=str(workdir))

    def _render(self, template: str, extra: Mapping[str, str]) -> str:
        values = {**self.values, **extra}
        out = []
        for literal, name, _, _ in string.Formatter().parse(template):
            out.append(literal)
            if name is not None:
                if name not in values:
                    raise DeviceError(f"the release gives this image no '{name}' for the command")
                out.append(values[name])
        return "".join(out)

    def run(
        self,
        step: str,
        extra: Mapping[str, str] | None = None,
        feed: Iterable[bytes] | None = None,
        feed_as: str = "image",
    ) -> str | None:
        """Run ``step``'s command (its dry-run one in a dry run); returns its output, None if skipped.

        ``feed`` (an image, a secret) reaches the tool through a FIFO named by the placeholder ``feed_as``
        when the command has it, else on the tool's standard input.
        """
        spec = self.fixture.steps[step]
        argv = spec.run
        if self.fixture.dry_run and step in WRITING_STEPS:
            if spec.dry_run is None:
                return None
            argv = spec.dry_run
        extra = dict(extra or {})
        fifo = None
        if feed is not None and any(feed_as in _fields(a, "") for a in argv):
            fifo = self.workdir / f"{feed_as}.fifo"
            with contextlib.suppress(FileNotFoundError):
                fifo.unlink()
            os.mkfifo(fifo, 0o600)
            extra[feed_as] = str(fifo)
        command = [self._render(a, extra) for a in argv]
        timeout = self.fixture.timeouts.get(step, 60.0)
        tool = Path(command[1 if Path(command[0]).name.startswith("python") and len(command) > 1 else 0]).name
        pipe = os.pipe() if feed is not None and fifo is None else None  # the image on its standard input
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL if pipe is None else pipe[0],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=self.workdir,
                start_new_session=True,  # its own process group: a timeout ends the tool and its children
            )
        except OSError as e:
            if pipe is not None:
                os.close(pipe[1])
            raise DeviceError(f"{step}: cannot run {tool}: {e.strerror or e}") from e
        finally:
            if pipe is not None:
                os.close(pipe[0])
        fed: list[BaseException | int] = []
        writer = None
        if feed is not None:
            sink = None if pipe is None else pipe[1]
            writer = threading.Thread(target=_feed, args=(feed, process, fifo, sink, fed), daemon=True)
            writer.start()
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as e:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise DeviceTimeoutError(f"{step}: {tool} did not finish within {timeout:g} s") from e
        finally:
            if writer is not None:
                writer.join(timeout=5)
            if fifo is not None:
                with contextlib.suppress(OSError):
                    fifo.unlink()
        if process.returncode != 0:
            raise DeviceError(f"{step}: {tool} exited with status {process.returncode}: {_last_line(stderr, stdout)}")
        if feed is not None and (not fed or not isinstance(fed[0], int)):
            why = fed[0] if fed else "it never opened it"
            raise DeviceError(f"{step}: {tool} ended before it read the whole {feed_as} ({why})")
        return stdout[:_MAX_OUTPUT].decode("utf-8", "replace")

    def _output(self, step: str, stdout: str) -> str:
        output = self.fixture.steps[step].output
        assert output is not None
        what = _OUTPUTS[step]
        if output.pattern is not None:
            match = output.pattern.search(stdout)
            if match is None:
                raise DeviceError(f"{step}: no {what} in the tool's output ({_last_line(stdout.encode())})")
            return (match.group(1) if output.pattern.groups else match.group(0)).strip()
        assert output.file is not None
        path = Path(self._render(output.file[0], {}))
        try:
            return path.read_bytes()[:_MAX_OUTPUT].decode("latin-1")
        except OSError as e:
            raise DeviceError(f"{step}: the tool wrote no {what} to {path.name}: {e.strerror or e}") from e

    def read_hardware_id(self) -> bytes:
        text = self._output("read-id", self.run("read-id") or "")
        try:
            hardware_id = bytes.fromhex(text.replace(":", ""))
        except ValueError as e:
            raise DeviceError(f"read-id: the hardware id {text[:40]!r} is not hex") from e
        self.values["hardware_id"] = hardware_id.hex()
        return hardware_id

    def read_label(self) -> str:
        return self._output("read-label", self.run("read-label") or "")

    def _image(self, image: ImageToProgram) -> dict[str, str]:
        values = {"image_name": image.name, "image_sha256": image.sha256, "image_length": str(image.length)}
        values.update({f"target.{k}": str(v) for k, v in image.target.items()})
        return values

    def program(self, image: ImageToProgram, chunks: Iterable[bytes]) -> None:
        if self.run("program", self._image(image), chunks) is None:  # a dry run without a dry-run command
            for _ in chunks:
                pass

    def read_measurement(self, image: ImageToProgram) -> str | None:
        text = self._output("verify", self.run("verify", self._image(image)) or "").lower()
        if not re.fullmatch(r"[0-9a-f]{64}", text):
            raise DeviceError(f"verify: the read-back digest {text[:70]!r} is not a SHA-256")
        return text

    def generate_key(self) -> bytes:
        stdout = self.run("generate-key")
        if stdout is None:  # a dry run without a dry-run command: a throwaway request to rehearse the rest
            key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vault dry run")])
            request = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
            return request.public_bytes(serialization.Encoding.DER)
        text = self._output("generate-key", stdout)
        if "-----BEGIN" in text:
            try:
                return x509.load_pem_x509_csr(text.encode("latin-1")).public_bytes(serialization.Encoding.DER)
            except ValueError as e:
                raise DeviceError(f"generate-key: the tool's request does not parse: {e}") from e
        return text.encode("latin-1")

    def install_certificate(self, certificate_der: bytes) -> None:
        path = self.workdir / "device-cert.der"
        path.write_bytes(certificate_der)
        certificate = x509.load_der_x509_certificate(certificate_der)
        pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
        self.run("install-certificate", {"certificate": str(path), "certificate_pem": pem})

    def install_secret(self, name: str, kind: str, target: str, secret: bytes) -> None:
        if "install-secret" not in self.fixture.steps:
            raise DeviceError(
                f"install-secret: this fixture's command adapter has no install-secret step, so it cannot "
                f"install secret '{name}' (add one to its steps)"
            )
        values = {"secret_name": name, "secret_kind": kind, "secret_target": target}
        self.run("install-secret", values, [secret], feed_as="secret")

    def lock(self) -> None:
        self.run("lock")


def _feed(
    chunks: Iterable[bytes],
    process: subprocess.Popen[bytes],
    fifo: Path | None,
    pipe: int | None,
    fed: list[BaseException | int],
) -> None:
    """Hand the image to the tool: through the FIFO once the tool opens it, or the pipe to its standard input."""
    total = 0
    try:
        if pipe is not None:
            sink = pipe
        else:
            assert fifo is not None
            while True:  # opened for writing only once the tool opens it for reading; never block if it does not
                try:
                    sink = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                    break
                except OSError as e:
                    if e.errno != errno.ENXIO or process.poll() is not None:
                        raise
                    time.sleep(_CHUNK_WAIT)
            os.set_blocking(sink, True)
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(sink, view) :]
                total += len(chunk)
        finally:
            os.close(sink)
        fed.append(total)
    except BaseException as e:  # reported by the step: the tool ended early, or the image did not stream
        fed.append(e)
