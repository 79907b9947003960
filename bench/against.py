"""Run a benchmark on this working tree and on an earlier commit, interleaved, in one run.

    .venv/bin/python bench/against.py REV [--rounds 2] -- bench/train.py --epochs 2

For a change that must keep the figures (a refactor): the benchmark script of each tree runs
with that tree's pawlab (``PYTHONPATH``, so ``python -m pawlab`` inside it is that tree's too),
REV first, then this tree, for --rounds rounds; each run's output is printed under a heading.
Compare the ratios each benchmark prints (pawlab against its plain loop, measured in the same
process), not absolute figures: the machine is shared and drifts. REV is checked out once with
``git worktree`` beside this repository (``../.pawlab-bench-<rev>``, so ``../shared`` is found
from there too) and removed at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(tree: Path, script: str, args: list[str]) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(tree / script), *args], cwd=tree, env=env, capture_output=True, text=True
    )
    out = proc.stdout + (f"\n(exit {proc.returncode})\n{proc.stderr[-2000:]}" if proc.returncode else "")
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rev", help="the earlier commit, e.g. HEAD~1")
    ap.add_argument("--rounds", type=int, default=1)
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    a = ap.parse_args(argv[:cut])
    bench = argv[cut + 1 :]  # SCRIPT [ARGS...], the script relative to the repository
    if not bench:
        ap.error("name a benchmark script after --")
    sha = subprocess.run(
        ["git", "rev-parse", "--short", a.rev], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    old = ROOT.parent / f".pawlab-bench-{sha}"
    if old.exists():  # left by a run that was killed
        subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=False)
        shutil.rmtree(old, ignore_errors=True)
    subprocess.run(["git", "worktree", "prune"], cwd=ROOT, check=True)
    subprocess.run(["git", "worktree", "add", "--detach", "-f", str(old), sha], cwd=ROOT, check=True)
    try:
        for r in range(1, a.rounds + 1):
            for label, tree in ((f"{a.rev} ({sha})", old), ("this tree", ROOT)):
                seconds, out = run(tree, bench[0], bench[1:])
                print(f"===== round {r}: {label}: {' '.join(bench)} ({seconds:.0f} s)\n{out}", flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=False)


if __name__ == "__main__":
    main()
