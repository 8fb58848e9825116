"""Where a token's PIN comes from. A PIN is never printed, logged or written.

In order: ``pin-value`` in the URI (tests only), ``pin-source`` in the URI
(``file:PATH``, a bare absolute path, or ``env:NAME``), and otherwise a
prompt without echo on the terminal.
"""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

from vault._files import open_to_read
from vault.errors import PinSourceError
from vault.token._uri import Pkcs11Uri

MAX_PIN_FILE = 1024


def resolve_pin(uri: Pkcs11Uri, token_label: str) -> str:
    """The PIN for ``token_label`` as ``uri`` says to find it.

    Raises:
        PinSourceError: the named file or variable is missing or unusable, or
            no PIN is given and there is no terminal to ask on.
    """
    if uri.pin_value is not None:
        return uri.pin_value
    if uri.pin_source is not None:
        return _read_source(uri.pin_source)
    if not sys.stdin.isatty():
        raise PinSourceError(
            f"no PIN for token '{token_label}': the URI has no pin-source and there is no terminal to ask on"
        )
    return getpass.getpass(f"PIN for token '{token_label}': ")


def _read_source(source: str) -> str:
    if source.startswith("env:"):
        name = source[len("env:") :]
        value = os.environ.get(name)
        if not name or value is None:
            raise PinSourceError(f"pin-source names environment variable '{name}', which is not set")
        return value
    if source.startswith("file:"):
        path = source[len("file:") :]
        if path.startswith("//"):
            # file://host/path: only the local host (empty or "localhost") makes sense.
            host, _, rest = path[2:].partition("/")
            if host not in ("", "localhost"):
                raise PinSourceError(f"pin-source file URI names a remote host '{host}'")
            path = "/" + rest
    elif source.startswith("/"):
        path = source
    else:
        raise PinSourceError("pin-source must be file:PATH, an absolute path, or env:NAME (got an unsupported form)")
    return _read_pin_file(Path(path))


def _read_pin_file(path: Path) -> str:
    try:
        with os.fdopen(open_to_read(path), "rb") as f:  # a FIFO with no writer reads empty, never waits
            data = f.read(MAX_PIN_FILE + 1)
    except OSError as e:
        raise PinSourceError(f"cannot read PIN file {path}: {e.strerror}") from e
    if len(data) > MAX_PIN_FILE:
        raise PinSourceError(f"PIN file {path} is larger than {MAX_PIN_FILE} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PinSourceError(f"PIN file {path} is not UTF-8 text") from e
    pin = text.rstrip("\r\n")
    if not pin:
        raise PinSourceError(f"PIN file {path} is empty")
    return pin
