"""The ``vault`` command line: thin click commands over the library.

One module per command group; each command parses its arguments, calls a
library function and prints the result. Every :class:`vault.errors.VaultError`
reaches :func:`main`, which prints its one-line diagnosis and exits non-zero;
``--verbose`` adds the traceback.
"""

from __future__ import annotations

import inspect
import sys
import traceback
from collections.abc import Sequence

import click

from vault import __version__
from vault.cli import _audit, _bundle, _ceremony, _policy, _registry, _secrets, _station, _token
from vault.errors import VaultError

__all__ = ["cli", "main"]

_state = {"verbose": False}


class _Interrupted(Exception):
    """Ctrl-C while a command ran, carried past click (which would print a blank line and 'Aborted')."""


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as e:
            raise _Interrupted from e


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120})
@click.version_option(__version__, prog_name="vault")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks with errors.")
def cli(verbose: bool) -> None:
    """vault: offline, HSM-backed signing and release promotion for factory provisioning."""
    _state["verbose"] = verbose


cli.add_command(_token.token)
cli.add_command(_ceremony.ceremony)
cli.add_command(_ceremony.shares)
cli.add_command(_policy.policy)
cli.add_command(_station.station)
cli.add_command(_bundle.bundle)
cli.add_command(_audit.audit)
cli.add_command(_registry.registry)
cli.add_command(_secrets.secrets)


def _first_sentence(text: str) -> str:
    """A command's summary for its group's ``--help``: the first sentence of its help, whole."""
    paragraph = inspect.cleandoc(text).split("\n\n")[0].replace("\b", "")
    words: list[str] = []
    for word in paragraph.split():
        words.append(word)
        if word.endswith("."):
            break
    return " ".join(words).rstrip(".")


def _full_summaries(group: click.Group) -> None:
    """Give every command a summary click wraps instead of cutting short with '...'."""
    for command in group.commands.values():
        if command.short_help is None and command.help:
            command.short_help = _first_sentence(command.help)
        if isinstance(command, click.Group):
            _full_summaries(command)


_full_summaries(cli)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the CLI; exit 0 on success, 1 on a vault error, 2 on a usage error."""
    try:
        result = cli.main(args=list(argv) if argv is not None else None, prog_name="vault", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("vault: aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except VaultError as e:
        if _state["verbose"]:
            traceback.print_exc()
        click.echo(f"vault: error: {e}", err=True)
        sys.exit(1)
    except (KeyboardInterrupt, _Interrupted):
        click.echo("vault: interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # a bug: say so in one line, keep the traceback for --verbose
        if _state["verbose"]:
            traceback.print_exc()
        click.echo(f"vault: internal error: {type(e).__name__}: {e} (rerun with --verbose and report it)", err=True)
        sys.exit(70)
    sys.exit(result if isinstance(result, int) else 0)
