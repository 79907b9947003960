"""`Command`: one subcommand of ``pawlab`` as a small object; `pawlab.cli.COMMANDS` lists them."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    """A subcommand: ``name`` and ``help`` (its line in ``pawlab --help``), ``add_arguments``
    (its flags, added to its own parser) and ``run`` (the parsed flags -> the exit status)."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
