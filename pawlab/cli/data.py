"""``pawlab prepare`` (a source decoded, resized and split into the packed cache) and
``pawlab cache`` (the user cache listed or cleared)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pawlab.cli.command import Command
from pawlab.cli.options import Parser, days, layout_option, positive_int, quiet_option
from pawlab.config import DataConfig


def _prepare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="class-per-folder tree, Kaggle-style flat folder (cat.1.jpg), or a .zip")
    p.add_argument("out", help="output folder: packed arrays per split + manifest.json")
    p.add_argument("--size", type=positive_int, required=True, help="output images are SIZE x SIZE RGB")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="decoding processes (default: one per core)")
    p.add_argument("--strict", action="store_true", help="fail instead of skipping unreadable files")
    p.add_argument(
        "--png",
        action="store_true",
        help="also write the tutorials' tree OUT/{train,validation}/<class>/<id>.png "
        "(slower than decoding at large sizes; train reads the arrays)",
    )
    p.add_argument(
        "--dedupe", action="store_true", help="remove validation images byte-identical to training images"
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    quiet_option(p)
    layout_option(p)
    p.add_argument(
        "--follow-links",
        action="store_true",
        help="follow links that lead outside SRC (default: skipped, listed)",
    )


def _run_prepare(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from pawlab.data import prepare

    cfg = DataConfig(
        size=args.size,
        val_fraction=args.val_fraction,
        seed=args.seed,
        workers=args.workers,
        follow_links=args.follow_links,
        layout=args.layout,
    )
    report = prepare(
        args.src,
        args.out,
        cfg,
        progress=not args.quiet,
        dedupe=args.dedupe,
        strict=args.strict,
        png=args.png,
    )
    print(json.dumps(asdict(report), indent=2) if args.json else report.summary())
    return 0


PREPARE = Command(
    "prepare", "decode, resize and split a folder or zip of images", _prepare_arguments, _run_prepare
)


def _cache_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="cache_command", required=True, parser_class=Parser)
    sub.add_parser("info", help="each entry's kind, size and last use, the total, and what is not pawlab's")
    s = sub.add_parser(
        "clear", help="remove pawlab's entries (all, or those not used for DAYS); nothing else is touched"
    )
    s.add_argument("--older-than", type=days, metavar="DAYS", help="only entries not used for DAYS days")
    s.add_argument("--dry-run", action="store_true", help="remove nothing; list what would be removed")


def _run_cache(args: argparse.Namespace) -> int:
    from pawlab.data.cache import clear_cache, human, list_cache

    if args.cache_command == "info":
        listing = list_cache(adopt=False)  # info changes nothing on disk
        what = "cache" if listing.is_cache else "not a pawlab cache (nothing in it is pawlab's)"
        print(f"{what}: {listing.root} ({_entries(len(listing.entries))}, {human(listing.size)})")
        for e in listing.entries:
            print(f"  {e.kind:<12} {human(e.size):>9}  used {e.age_days():5.1f} days ago  {e.name}")
        _foreign(listing.foreign)
        return 0
    cleared = clear_cache(args.older_than, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for e in cleared.removed:
        print(f"  {verb} {e.kind:<12} {human(e.size):>9}  {e.name}")
    for e in cleared.busy:
        print(f"  kept {e.name}: a run is using it")
    for e, why in cleared.failed:
        print(f"  could not remove {e.name}: {why}")
    size = human(sum(e.size for e in cleared.removed))
    print(f"{verb} {_entries(len(cleared.removed))}, {size} from {cleared.listing.root}")
    _foreign(cleared.listing.foreign)
    return 0


def _entries(n: int) -> str:
    return f"{n} {'entry' if n == 1 else 'entries'}"


def _foreign(items: list[Any], most: int = 20) -> None:
    """The things in the cache that are not pawlab's (`pawlab.data.cache.Foreign`)."""
    if items:
        print(f"not pawlab's, left alone ({len(items)}):")
        for f in items[:most]:
            print(f"  {f.name}  ({f.why})")
        if len(items) > most:
            print(f"  ... and {len(items) - most} more")


CACHE = Command(
    "cache",
    "what the user cache holds (packed data, features, digit models), or clear it",
    _cache_arguments,
    _run_cache,
)
