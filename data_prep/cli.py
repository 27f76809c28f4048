"""One command-line driver for every converter: ``generate | convert | validate`` (and a converter's extras).

A converter declares its subcommands as :class:`Command` values (name, help, the arguments it takes, the
function that runs it); :func:`run_cli` parses, runs, reports progress, and turns every
:class:`~data_prep.common.DataValidationError` into one ``error: ...`` line on stderr (the message names the
file and the field) and exit code 2. Converters import heavy packages inside their ``run`` functions, so
``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from src.data.validation import DataValidationError

__all__ = ["Command", "build_parser", "run_cli", "EXIT_INVALID"]

#: exit code of a command that stopped on invalid input (argparse uses the same for invalid arguments)
EXIT_INVALID = 2


@dataclass(frozen=True)
class Command:
    """One subcommand of a converter.

    Args:
        name: ``generate``, ``convert``, ``validate``, ... .
        help: one line shown by ``--help``.
        arguments: adds the subcommand's options to its parser.
        run: runs it from the parsed arguments; returns an exit code or None (0).
    """

    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]


def build_parser(prog: str, description: str, commands: Sequence[Command]) -> argparse.ArgumentParser:
    """The converter's parser: one sub-parser per command, the module docstring as description."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in commands:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        command.arguments(p)
        p.set_defaults(_command=command)
    return parser


def run_cli(
    prog: str,
    description: str,
    commands: Sequence[Command],
    argv: Sequence[str] | None = None,
    user_errors: tuple[type[Exception], ...] = (),
) -> int:
    """Parse ``argv``, run the chosen command, return its exit code.

    Args:
        user_errors: further exception types that mean bad input rather than a bug (reported like
            :class:`DataValidationError`, exit 2), e.g. ``ValueError`` for a converter whose argument checks raise it.
    """
    args = build_parser(prog, description, commands).parse_args(argv)
    command: Command = args._command
    start = time.perf_counter()
    try:
        code = command.run(args)
    except (DataValidationError, *user_errors) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INVALID
    print(f"{prog.split()[-1]} {command.name}: done in {time.perf_counter() - start:.1f} s", flush=True)
    return int(code or 0)
