"""Options and parameter types shared by the command groups."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.console import Console

from vault.errors import UriError
from vault.token import Pkcs11Uri, parse_uri

F = TypeVar("F", bound=Callable[..., Any])


class UriParam(click.ParamType):  # type: ignore[type-arg]
    """A PKCS#11 URI argument, parsed (RFC 7512) before the command runs."""

    name = "PKCS11-URI"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Pkcs11Uri:
        if isinstance(value, Pkcs11Uri):
            return value
        try:
            return parse_uri(value)
        except UriError as e:
            self.fail(str(e), param, ctx)


PKCS11_URI = UriParam()


def json_option(f: F) -> F:
    """``--json``: print machine-readable JSON instead of a table."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for tools instead of a table.")(f)


def force_option(f: F) -> F:
    """``--force``: allow writing over an existing output file."""
    return click.option("--force", is_flag=True, help="Write over an existing output file.")(f)


def echo_json(value: Any) -> None:
    """Print ``value`` as indented, key-sorted JSON."""
    click.echo(json.dumps(value, indent=2, sort_keys=True))


def console() -> Console:
    """A rich console for tables; wide when stdout is a file or pipe so nothing is cut."""
    return Console(width=None if sys.stdout.isatty() else 250)
