"""Load PKCS#11 modules, find tokens by URI, open sessions, translate errors.

python-pkcs11 does the PKCS#11 calls; this module decides which module and
token a URI means and turns the module's error codes into vault's one-line
errors.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pkcs11
import pkcs11.exceptions as p11e
from pkcs11.constants import TokenFlag

from vault.errors import (
    MechanismNotSupportedError,
    ModuleLoadError,
    PinIncorrectError,
    PinLockedError,
    TokenError,
    TokenNotFoundError,
    TokenOperationError,
    UriError,
)
from vault.token import _p11kit
from vault.token._ckr import ckr_name
from vault.token._pin import resolve_pin
from vault.token._quirks import ModuleProfile, profile_for
from vault.token._uri import Pkcs11Uri

T = TypeVar("T")

MODULE_ENV = "VAULT_PKCS11_MODULE"

# Where module-name=NAME is looked for, as lib<NAME>.so or <NAME>.so.
_MODULE_DIRS = (
    "/usr/lib/x86_64-linux-gnu/pkcs11",
    "/usr/lib/aarch64-linux-gnu/pkcs11",
    "/usr/lib/pkcs11",
    "/usr/lib64/pkcs11",
    "/usr/local/lib/pkcs11",
    "/usr/lib/softhsm",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/local/lib",
)

_modules: dict[str, Any] = {}  # path -> pkcs11.lib (untyped in python-pkcs11)
_modules_lock = threading.Lock()
_open_sessions: dict[str, int] = {}  # module path -> sessions open through open_session


def module_path_for(uri: Pkcs11Uri) -> str:
    """The module file ``uri`` means: module-path, module-name, or $VAULT_PKCS11_MODULE.

    Raises:
        ModuleLoadError: none is given, or the named module is not found.
    """
    if uri.module_path:
        return uri.module_path
    if uri.module_name:
        if "/" in uri.module_name:
            raise UriError("module-name must be a bare name; use module-path for a file path")
        for directory in _MODULE_DIRS:
            for candidate in (f"lib{uri.module_name}.so", f"{uri.module_name}.so"):
                path = Path(directory) / candidate
                if path.is_file():
                    return str(path)
        raise ModuleLoadError(f"no PKCS#11 module named '{uri.module_name}' in the usual library folders")
    from_env = os.environ.get(MODULE_ENV)
    if from_env:
        return from_env
    raise ModuleLoadError(f"no PKCS#11 module given: add module-path=... to the URI or set {MODULE_ENV}")


def load_module(path: str) -> Any:
    """Load (once per process) the PKCS#11 module at ``path``.

    Raises:
        ModuleLoadError: the file is missing or is not a PKCS#11 module.
    """
    with _modules_lock:
        lib = _modules.get(path)
        if lib is not None:
            return lib
        if not Path(path).is_file():
            raise ModuleLoadError(f"PKCS#11 module not found: {path}")
        _p11kit.prepare(path)
        try:
            lib = pkcs11.lib(path)
        except p11e.ArgumentsBad as e:
            raise ModuleLoadError(
                f"{path} needs arguments at C_Initialize (NSS softoken does): load it through p11-kit's proxy "
                f"with a module configuration, as nss/setup.sh writes one (${_p11kit.CONFIG_ENV})"
            ) from e
        except p11e.PKCS11Error as e:
            detail = ckr_name(e)
            reason = str(e) if detail == "PKCS11Error" else detail
            raise ModuleLoadError(f"cannot load PKCS#11 module {path}: {reason}") from e
        except (RuntimeError, OSError) as e:
            raise ModuleLoadError(f"cannot load PKCS#11 module {path}: {e}") from e
        _modules[path] = lib
        return lib


def module_profile(token: pkcs11.Token, uri: Pkcs11Uri) -> ModuleProfile:
    """The measured profile of the module behind ``token`` (found through ``uri``'s module)."""
    library = _text(load_module(module_path_for(uri)).manufacturer_id)
    return profile_for(_text(token.manufacturer_id), _text(token.model), library)


@dataclass(frozen=True)
class TokenInfo:
    """What ``vault token list`` shows of a slot's token."""

    label: str
    manufacturer: str
    model: str
    serial: str
    initialized: bool
    slot_description: str

    @property
    def state(self) -> str:
        """``initialised`` or ``free`` (an empty slot that can take a new token)."""
        return "initialised" if self.initialized else "free"


def _text(value: str | bytes) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return value.rstrip(" \x00")


def _info(token: pkcs11.Token) -> TokenInfo:
    return TokenInfo(
        label=_text(token.label),
        manufacturer=_text(token.manufacturer_id),
        model=_text(token.model),
        serial=_text(token.serial),
        initialized=bool(token.flags & TokenFlag.TOKEN_INITIALIZED),
        slot_description=_text(token.slot.slot_description),
    )


def list_tokens(uri: Pkcs11Uri) -> list[TokenInfo]:
    """Every token present in the module ``uri`` names, matching ``uri``'s token attributes."""
    lib = load_module(module_path_for(uri))
    with translate_errors("listing tokens"):
        return [_info(t) for t in _matching_tokens(lib, uri)]


def _matching_tokens(lib: Any, uri: Pkcs11Uri) -> list[pkcs11.Token]:
    if uri.library_manufacturer is not None and _text(lib.manufacturer_id) != uri.library_manufacturer:
        return []
    if uri.library_description is not None and _text(lib.library_description) != uri.library_description:
        return []
    if uri.library_version is not None:
        major, _, minor = uri.library_version.partition(".")
        if lib.library_version != (int(major), int(minor or 0)):
            return []
    found = []
    for slot in lib.get_slots(token_present=True):
        if uri.slot_id is not None and slot.slot_id != uri.slot_id:
            continue
        if uri.slot_description is not None and _text(slot.slot_description) != uri.slot_description:
            continue
        if uri.slot_manufacturer is not None and _text(slot.manufacturer_id) != uri.slot_manufacturer:
            continue
        token = slot.get_token()
        info = _info(token)
        wanted = (
            (uri.token, info.label),
            (uri.serial, info.serial),
            (uri.manufacturer, info.manufacturer),
            (uri.model, info.model),
        )
        if all(want is None or want == have for want, have in wanted):
            found.append(token)
    return found


def find_token(uri: Pkcs11Uri) -> pkcs11.Token:
    """The one initialised token ``uri`` selects.

    Raises:
        TokenNotFoundError: no token, or more than one, matches.
    """
    lib = load_module(module_path_for(uri))

    def initialised() -> list[pkcs11.Token]:
        found = [t for t in _matching_tokens(lib, uri) if t.flags & TokenFlag.TOKEN_INITIALIZED]
        if not found:  # SoftHSM2 leaves out a token whose files another process is writing: ask again
            raise _NotListed
        return found

    with translate_errors("looking for the token"):
        try:
            tokens = _busy_retry(initialised, lambda: _reload_if_idle(module_path_for(uri)))
        except _NotListed:
            tokens = []
    if not tokens:
        what = f"labelled '{uri.token}'" if uri.token is not None else "matching the URI"
        raise TokenNotFoundError(f"no token {what} in module {module_path_for(uri)}")
    if len(tokens) > 1:
        labels = ", ".join(sorted(_text(t.label) for t in tokens))
        raise TokenNotFoundError(f"the URI matches {len(tokens)} tokens ({labels}); add token=LABEL")
    return tokens[0]


_BUSY_TRIES = 20


class _NotListed(Exception):
    """Internal: no token matched; maybe only for the moment (see :func:`_busy_retry`)."""


def _busy_retry(call: Callable[[], T], reload: Callable[[], None] | None = None) -> T:
    """``call()``, tried again a few times when the module answers CKR_GENERAL_ERROR.

    SoftHSM2 keeps each token in files it locks while reading them; a process
    that lists the tokens while another one reads or writes the same files
    gets CKR_GENERAL_ERROR now and then (several fixture processes opening
    one station token at once). The error is transient, so listing is tried
    again with a short, growing pause before it is reported. A token whose
    files are being written (or were left half-written by a process killed in
    a write, until SoftHSM2 reads them again) is also left out of the list for
    a moment, so an empty answer is asked again the same way.

    A process that met such a token while first reading the token folder may
    keep it as unusable; from the third try on, ``reload`` (if given)
    reinitialises the module so that it reads the folder afresh.
    """
    for attempt in range(_BUSY_TRIES - 1):
        try:
            return call()
        except (p11e.GeneralError, _NotListed):
            _pause(attempt)
            if reload is not None and attempt >= 2:
                reload()
    return call()


def _pause(attempt: int) -> None:
    """The short, growing wait before try ``attempt + 2`` of a call SoftHSM2 refused for the moment."""
    time.sleep(min(0.02 * (attempt + 1), 0.2))


def _reload_if_idle(path: str) -> None:
    """Reinitialise the module at ``path`` if this process has no session open on it."""
    with _modules_lock:
        if _open_sessions.get(path, 0) == 0 and path in _modules:
            with contextlib.suppress(p11e.PKCS11Error):
                _modules[path].reinitialize()


@contextlib.contextmanager
def translate_errors(what: str, token_label: str = "") -> Iterator[None]:
    """Turn python-pkcs11's exceptions raised inside into vault's TokenErrors."""
    on = f" on token '{token_label}'" if token_label else ""
    try:
        yield
    except TokenError:
        raise
    except (p11e.PinIncorrect, p11e.PinInvalid, p11e.PinLenRange) as e:
        raise PinIncorrectError(f"wrong PIN for token '{token_label}'") from e
    except p11e.PinLocked as e:
        raise PinLockedError(
            f"the PIN of token '{token_label}' is locked after too many wrong tries; its security officer must reset it"
        ) from e
    except p11e.PinExpired as e:
        raise PinLockedError(f"the PIN of token '{token_label}' has expired and must be changed") from e
    except (p11e.MechanismInvalid, p11e.FunctionNotSupported, p11e.MechanismParamInvalid) as e:
        raise MechanismNotSupportedError(f"{what}: mechanism not supported by this token{on} ({ckr_name(e)})") from e
    except (p11e.TokenNotPresent, p11e.DeviceRemoved, p11e.TokenNotRecognised) as e:
        raise TokenNotFoundError(f"{what}: the token{on} is not present") from e
    except p11e.PKCS11Error as e:
        raise TokenOperationError(f"{what}{on} failed: the token reported {ckr_name(e)}") from e


@contextlib.contextmanager
def open_session(uri: Pkcs11Uri, *, rw: bool = False, login: bool = True, so: bool = False) -> Iterator[pkcs11.Session]:
    """Open a session on the token ``uri`` selects, logged in as its user
    (or, with ``so``, as its security officer: the URI's PIN is then the SO PIN).

    The PIN is found as :func:`vault.token._pin.resolve_pin` says; a token
    with a PIN pad (protected authentication path) asks on its own pad.

    Raises:
        TokenError: the module, token or PIN is wrong, or the token failed.
        PinSourceError: the PIN could not be read.
    """
    token = find_token(uri)
    label = _text(token.label)
    pin: object | None = None
    if login:
        no_pin_given = uri.pin_value is None and uri.pin_source is None
        if no_pin_given and token.flags & TokenFlag.PROTECTED_AUTHENTICATION_PATH:
            pin = pkcs11.PROTECTED_AUTH
        else:
            pin = resolve_pin(uri, label)
    path = module_path_for(uri)
    with translate_errors("opening a session", label):
        for attempt in range(_BUSY_TRIES):
            try:
                session = _login(token, rw=rw, pin=pin, so=so)
                break
            except p11e.UserAlreadyLoggedIn:
                # Login state is shared by every session of this process on the token.
                session = token.open(rw=rw)
                break
            except (p11e.GeneralError, p11e.UserPinNotInitialized):
                # SoftHSM2 read the token's own file while another process wrote it (its flags
                # come back empty): no PIN was checked, so trying again costs no PIN try.
                _drop_leaked_session(path)
                if attempt == _BUSY_TRIES - 1:
                    raise
                _pause(attempt)
                token = find_token(uri)  # the module may have been reloaded
            except p11e.PKCS11Error:
                _drop_leaked_session(path)
                raise
    with _modules_lock:
        _open_sessions[path] = _open_sessions.get(path, 0) + 1
    try:
        yield session
    finally:
        with _modules_lock:
            _open_sessions[path] -= 1
        with contextlib.suppress(p11e.PKCS11Error):
            session.close()


def _login(token: pkcs11.Token, *, rw: bool, pin: object | None, so: bool) -> pkcs11.Session:
    if so:
        return token.open(rw=rw, so_pin=pin)
    return token.open(rw=rw, user_pin=pin)


def _drop_leaked_session(path: str) -> None:
    """After a failed login python-pkcs11 keeps the session it opened (it has no
    handle to give back). A leaked read-only session would later stop a security
    officer's login, so when no other session is open, reinitialise the module,
    which closes it."""
    _reload_if_idle(path)
