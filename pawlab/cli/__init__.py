"""The ``pawlab`` command line. It only parses flags into configs and calls the Python API.

Each subcommand is a `Command` (its name, help, flags and what it runs) in a module of its own
or of its family, and `COMMANDS` lists them in the order ``pawlab --help`` shows:

    command    `Command`
    options    `Parser` (one-line errors, the options it was given), the flags' types, the option
               groups several commands share
    demo       demo
    data       prepare, cache
    train      train, compare, and the recipe rules (--preset, --backbone, --resume)
    inference  predict, evaluate, submit
    unknown    calibrate-unknown, evaluate-unknown
    export     export
    archs      archs
    dashboard  dashboard
    serve      serve
    spec       spec (run by `pawlab.spec.commands`)

Nothing in pawlab imports it, and importing it imports no torch: commands import the API when
they run.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from pawlab._version import __version__
from pawlab.cli.archs import ARCHS
from pawlab.cli.command import Command
from pawlab.cli.dashboard import DASHBOARD
from pawlab.cli.data import CACHE, PREPARE
from pawlab.cli.demo import DEMO
from pawlab.cli.export import EXPORT
from pawlab.cli.inference import EVALUATE, PREDICT, SUBMIT
from pawlab.cli.options import Parser
from pawlab.cli.serve import SERVE
from pawlab.cli.spec import SPEC
from pawlab.cli.train import COMPARE, TRAIN
from pawlab.cli.unknown import CALIBRATE_UNKNOWN, EVALUATE_UNKNOWN
from pawlab.errors import PawlabError
from pawlab.terminal import PrintableStream

__all__ = ["COMMANDS", "EXIT_CODES", "Command", "build_parser", "main", "parse_args"]

COMMANDS: tuple[Command, ...] = (
    DEMO,
    PREPARE,
    TRAIN,
    COMPARE,
    PREDICT,
    EVALUATE,
    SUBMIT,
    CALIBRATE_UNKNOWN,
    EVALUATE_UNKNOWN,
    EXPORT,
    ARCHS,
    DASHBOARD,
    SERVE,
    SPEC,
    CACHE,
)
_BY_NAME = {command.name: command for command in COMMANDS}

EXIT_CODES = """exit status: 0 done; 1 a problem with data, a model file, a worker or the run itself;
2 a usage or configuration error (a flag, a field, a network description); 130 interrupted;
141 stdout closed by its reader (as when killed by SIGPIPE)."""


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The parser, and each subcommand's parser by name."""
    parser = Parser(
        prog="pawlab",
        description="Train and use image classifiers (Dogs vs. Cats and beyond).",
        epilog=EXIT_CODES,
    )
    parser.add_argument("--version", action="version", version=f"pawlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    parsers: dict[str, argparse.ArgumentParser] = {}
    for command in COMMANDS:
        parsers[command.name] = sub.add_parser(command.name, help=command.help)
        command.add_arguments(parsers[command.name])
    return parser, parsers


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``; ``args.given`` holds the options the user gave (click's
    ``ParameterSource``), also those given with their default value."""
    parser, commands = build_parser()
    defaults: dict[str, dict[str, Any]] = {}
    flags: dict[str, str] = {}
    for name, sub in commands.items():
        defaults[name] = {}
        for action in sub.options if isinstance(sub, Parser) else []:
            value = action.default
            if isinstance(value, str) and callable(action.type):
                value = action.type(value)  # as argparse converts a string default
            defaults[name][action.dest] = value
            flags[action.dest] = max(action.option_strings, key=len)
            action.default = argparse.SUPPRESS  # absent from the result unless given
    args = parser.parse_args(argv)
    given = set(vars(args)) - {"command"}
    for dest, value in defaults[args.command].items():
        if not hasattr(args, dest):
            setattr(args, dest, value)
    args.given = frozenset(given & set(defaults[args.command]))
    args.flags = flags  # dest -> its option, for messages
    return args


def _line_buffered() -> None:
    """Each line reaches a log file or a pipe when it is printed: Python block-buffers stdout
    that is not a terminal, and a long run's output would appear only at its end."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper) and not stream.isatty():
            stream.reconfigure(line_buffering=True)


def _reader_gone() -> int:
    """stdout was closed by its reader (``pawlab archs | head -1``): stop quietly, as Unix tools
    do, with the status of a process ended by SIGPIPE."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # the exit's own flush must not fail again
    return 128 + signal.SIGPIPE


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; the exit status is 0, or as `EXIT_CODES` says. Everything it prints goes
    through `pawlab.terminal.printable`: a name from data never drives the terminal."""
    _line_buffered()
    streams = sys.stdout, sys.stderr
    sys.stdout = PrintableStream(sys.stdout, carriage_return=False)
    sys.stderr = PrintableStream(sys.stderr)
    try:
        return _run(parse_args(argv))
    finally:
        sys.stdout, sys.stderr = streams


def _run(args: argparse.Namespace) -> int:
    try:
        return _BY_NAME[args.command].run(args)
    except BrokenPipeError:
        return _reader_gone()
    except OSError as exc:  # a full disk, a read-only folder met while working: one line
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"pawlab {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except PawlabError as exc:
        print(f"pawlab {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"pawlab {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if "torch" in sys.modules:  # only commands that ran torch can have joined a process group
            from pawlab.runtime import shutdown_distributed

            shutdown_distributed()
