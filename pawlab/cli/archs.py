"""``pawlab archs``: the architectures, layers and presets, or one network's shapes."""

from __future__ import annotations

import argparse
from pathlib import Path

from pawlab.cli.command import Command
from pawlab.cli.options import positive_int


def _archs_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("arch", nargs="?", help="an architecture name or file")
    p.add_argument("--classes", type=positive_int, default=2)


def _run_archs(args: argparse.Namespace) -> int:
    from pawlab.models import ARCHITECTURES, LAYERS, build, get_architecture, load_arch_file
    from pawlab.training.presets import PRESETS

    if args.arch is None:
        print("architectures:")
        for name in ARCHITECTURES.names():
            doc = (ARCHITECTURES.get(name).__doc__ or "").strip().splitlines()[0]
            print(f"  {name:<16} {doc}")
        print("layers:")
        for name in LAYERS.names():
            doc = (LAYERS.get(name).__doc__ or "").strip().splitlines()[0]
            print(f"  {name:<16} {doc}")
        print("presets (pawlab train DATA --preset NAME):")
        for name in PRESETS.names():
            preset = PRESETS.get(name)
            print(f"  {name:<20} {preset.arch} at {preset.size}x{preset.size}: {preset.description}")
        return 0
    is_file = Path(args.arch).suffix.lower() in (".toml", ".yaml", ".yml", ".json")
    spec = load_arch_file(args.arch) if is_file else get_architecture(args.arch)
    print(build(spec, args.classes, where=args.arch).summary())
    return 0


ARCHS = Command(
    "archs", "list architectures and layers, or show one network's shapes", _archs_arguments, _run_archs
)
