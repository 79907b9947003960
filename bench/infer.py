"""Benchmark: each inference path of pawlab on two models, against fp32 and a plain loop, in one run.

    .venv/bin/python bench/infer.py [--models cats,flowers] [--submission 10000] [--n 1000] [--repeat 1]
        [--work DIR] [--cats-model M] [--flowers-model M] [--baseline-root DIR [--baseline-python PY]]
        [--quick]

For each model (issue 25, "How it is measured"):

* cats/dogs: --cats-model, the default ``--backbone`` transfer model of
  ``../shared/data/cats_and_dogs_filtered`` (trained into --work if missing); its held-back images
  are the ``validation/`` folder.
* flowers: --flowers-model, the default ``--backbone`` model of ``../shared/data/flowers5/train``
  (pawlab splits a validation set off it; trained into --work/flowers if missing); its held-back
  images are ``flowers5/test``, never seen in training.

1. A whole ``pawlab submit MODEL TEST --out F -q`` of --submission numbered JPEGs (copies of the
   model's own kind of photo, built by bench/prepare.py's ``build_set`` and kept in --work), wall
   time with process start and compiling, for each path of ``PATHS`` (the defaults, today's fp32
   fallback, ONNX Runtime fp32 and int8) and, with --baseline-root, today's defaults (a clean
   checkout of main, run in the same pass): images/s and the ratio to the fp32 path. A path whose
   flags this pawlab lacks is skipped with a line saying so. Every job writes a fresh CSV (never a
   resumed job). Each run says whether it found the caches warm or wrote into them (cold): the
   pawlab cache (``$PAWLAB_CACHE_DIR``, where ONNX Runtime's one-time export goes) and inductor's
   (compiled graphs); for a user's first job, point both at new folders.
2. The plain eager loop of the same backbone on --n of those images, in this process (Pillow
   decoding, fp32, NCHW, batches of 32, no compile): images/s, and the default's ratio to it.
3. Accuracy and log loss of each path on the held-back images, against the fp32 path's: the
   images as ``pawlab evaluate`` reads them, run in a process of the path's pawlab by
   ``load_model`` with the path's flags as its arguments (``--precision fp32``: ``precision=
   "fp32"``), not by ``pawlab evaluate`` itself, whose frozen-backbone models read cached fp32
   features whatever the flags; the plain loop's in this process. Then issue 25's goals, beside
   the CPU class they depend on.

Repeats (--repeat) run every path in turn, so that a slow spell of the machine hits them all;
medians are reported, each run's figure in brackets. --quick: small numbers, to check the script.
--breakeven: also the in-process cost of compiling fp32 and the images it takes to pay off
(``engine.COMPILE_MIN_IMAGES`` is set from it).
"""

from __future__ import annotations

import argparse
import getpass
import inspect
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from prepare import SHARED, build_set  # noqa: E402  (bench/prepare.py)

from pawlab.data.cache import cache_root  # noqa: E402
from pawlab.inference import Model, load_model, submit  # noqa: E402
from pawlab.inference.evaluation import metrics_from_probs  # noqa: E402

FLOWERS = SHARED.parent / "flowers5"
BATCH = 32
# the paths timed and scored: (label, the extra flags of `pawlab submit`; `load_model`'s arguments)
PATHS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("default", ()),
    ("torch fp32", ("--runtime", "torch", "--precision", "fp32")),
    ("onnxruntime fp32", ("--runtime", "onnxruntime", "--precision", "fp32")),
    ("onnxruntime int8", ("--runtime", "onnxruntime", "--precision", "int8")),
)
FP32 = "torch fp32"  # every ratio is against this path: today's fallback, compiled fp32
TODAY = "today's default"
PLAIN = "plain eager loop"


@dataclass(frozen=True)
class Pawlab:
    """A pawlab to run as ``PYTHON -m pawlab``: its interpreter and source tree."""

    python: str
    root: Path

    def run(self, args: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
        """(wall seconds, the finished process) of one ``pawlab ARGS``."""
        return self.python_run(["-m", "pawlab", *args])

    def python_run(self, args: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
        """(wall seconds, the finished process) of ``PYTHON ARGS`` with this pawlab on the path."""
        env = {**os.environ, "PYTHONPATH": str(self.root)}
        t0 = time.perf_counter()
        proc = subprocess.run([self.python, *args], env=env, capture_output=True, text=True, check=False)
        return time.perf_counter() - t0, proc

    def commit(self) -> str:
        """The tree's commit, ``+changes`` when tracked files differ from it."""
        git = ["git", "-C", str(self.root)]
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True)
        return head.stdout.strip() + (" +changes" if dirty.stdout.strip() else "")


@dataclass(frozen=True)
class InferencePath:
    """One path timed and evaluated: ``extra`` flags for this ``pawlab``, or why it is skipped."""

    label: str
    pawlab: Pawlab
    extra: tuple[str, ...] = ()
    skipped: str = ""


@dataclass(frozen=True)
class Task:
    """One model benchmarked: its file, the photos its test set is built from, its held-back images."""

    key: str
    model: Path
    photos: Path
    held_back: Path
    work: Path


@dataclass
class Outcome:
    """One model's figures, filled in as the runs finish."""

    seconds: dict[str, list[float]] = field(default_factory=dict)  # label -> wall seconds of each run
    caches: dict[str, list[str]] = field(default_factory=dict)  # label -> each run's cache state
    failed: dict[str, str] = field(default_factory=dict)  # label -> its submit's failure, last line
    eval_failed: dict[str, str] = field(default_factory=dict)  # label -> its scoring's failure
    metrics: dict[str, tuple[float, float]] = field(default_factory=dict)  # label -> accuracy, log loss
    held_back: int = 0  # images scored
    classes: int = 0
    # the first job of the defaults, before the timed rounds: where auto measures its route (and
    # makes the ONNX graphs) once per model and CPU; (wall seconds, cache state)
    first: tuple[float, str] | None = None


# -- the CPU class -----------------------------------------------------------------------------


def _cpuinfo() -> list[dict[str, str]]:
    """/proc/cpuinfo's blocks, one per logical CPU this process may run on."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    allowed = os.sched_getaffinity(0)
    blocks = []
    for chunk in text.split("\n\n"):
        fields = dict(
            (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in chunk.splitlines())
        )
        if fields.get("processor", "").isdigit() and int(fields["processor"]) in allowed:
            blocks.append(fields)
    return blocks


def fast_bf16() -> bool:
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_class() -> str:
    """One line naming the CPU class that every figure depends on."""
    blocks = _cpuinfo()
    first = blocks[0] if blocks else {}
    flags = set(first.get("flags", "").split())
    cores = len({(b.get("physical id"), b.get("core id")) for b in blocks}) or os.cpu_count()
    amx = ", ".join(sorted(f for f in flags if f.startswith("amx"))) or "no"
    isa = "AVX-512" if "avx512f" in flags else "AVX2-only" if "avx2" in flags else "no AVX2"
    return (
        f"CPU: {first.get('model name', 'unknown')}, {cores} cores / {len(blocks)} threads "
        f"(torch uses {torch.get_num_threads()}); {isa}; fast bf16: {'yes' if fast_bf16() else 'no'}; "
        f"avx512_vnni: {'yes' if 'avx512_vnni' in flags else 'no'}; amx: {amx}"
    )


# -- which paths this pawlab has ---------------------------------------------------------------


def cli_flags(pawlab: Pawlab, command: str) -> str:
    """``pawlab COMMAND --help``, to see which flags and choices it has."""
    _, proc = pawlab.run([command, "--help"])
    return proc.stdout


def usable(extra: tuple[str, ...], help_text: str) -> tuple[tuple[str, ...], str]:
    """(the flags to pass, "") or ((), why not). A pawlab without ``--runtime`` runs everything in
    torch, so ``--runtime torch`` is dropped there; any other flag or choice it lacks skips the path."""
    if "--runtime" not in help_text and extra[:2] == ("--runtime", "torch"):
        extra = extra[2:]
    for flag, value in zip(extra[::2], extra[1::2], strict=True):
        if flag not in help_text:
            return (), f"this pawlab has no {flag}"
        choices = re.search(re.escape(flag) + r" \{([^}]*)\}", help_text)
        if choices and value not in choices.group(1).split(","):
            return (), f"this pawlab's {flag} has no {value}"
    return extra, ""


def paths_for(args: argparse.Namespace) -> list[InferencePath]:
    """Today's default (with --baseline-root) and each of ``PATHS`` this pawlab can run."""
    here = Pawlab(sys.executable, ROOT)
    helps = cli_flags(here, "submit")
    out: list[InferencePath] = []
    if args.baseline_root:
        base = Pawlab(args.baseline_python or sys.executable, args.baseline_root.resolve())
        out.append(InferencePath(f"{TODAY} (main {base.commit()})", base))
    for label, extra in PATHS:
        flags, why = usable(extra, helps)
        out.append(InferencePath(label, here, flags, why))
    return out


# -- caches --------------------------------------------------------------------------------------


def cache_dirs() -> dict[str, Path]:
    """The caches a job may fill: pawlab's (ONNX exports, features) and inductor's (compiled graphs)."""
    user = re.sub(r'[\\/:*?"<>|]', "_", getpass.getuser())  # as inductor names its default folder
    inductor = os.environ.get("TORCHINDUCTOR_CACHE_DIR") or f"{tempfile.gettempdir()}/torchinductor_{user}"
    return {"pawlab": cache_root(), "inductor": Path(inductor)}


def cache_files() -> dict[str, set[str]]:
    return {
        name: {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()} for name, d in cache_dirs().items()
    }


def cache_state(before: dict[str, set[str]], after: dict[str, set[str]]) -> str:
    """``warm`` when a job wrote nothing into the caches, else which it filled: ``cold: pawlab +2 (onnx)``."""
    cold = []
    for name, files in after.items():
        new = files - before[name]
        if new:
            tops = sorted({f.split(os.sep)[0] for f in new})
            cold.append(f"{name} +{len(new)} ({', '.join(tops[:2])}{', ...' if len(tops) > 2 else ''})")
    return "cold: " + "; ".join(cold) if cold else "warm"


# -- the pawlab jobs -----------------------------------------------------------------------------


def last_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    return f"exit {proc.returncode}: {lines[-1] if lines else ''}"


def timed_submit(path: InferencePath, model: Path, test: Path, out: Path) -> tuple[float, str, str]:
    """(wall seconds, cache state, failure or "") of one whole ``pawlab submit``, never resumed."""
    out.unlink(missing_ok=True)
    out.with_name(out.name + ".pawlab-job.json").unlink(missing_ok=True)
    before = cache_files()
    seconds, proc = path.pawlab.run(["submit", str(model), str(test), "--out", str(out), "-q", *path.extra])
    state = cache_state(before, cache_files())
    if proc.returncode:
        return seconds, state, last_line(proc)
    rows = len(out.read_text().splitlines()) - 1
    expected = len(list(test.glob("*.jpg")))
    return seconds, state, "" if rows == expected else f"{rows} rows for {expected} images"


# A path's accuracy and log loss, in a process of its own pawlab: the held-back images as
# `pawlab evaluate` reads them, run by the path's network. Not `pawlab evaluate` itself: on a
# frozen backbone it reads cached fp32 features, the same probabilities whatever the flags.
SCORE = """
import json, sys
from pawlab.inference import load_model
from pawlab.inference.evaluation import eval_set_for, metrics_from_probs
m = load_model(sys.argv[1], device="cpu", **json.loads(sys.argv[3]))
ev = eval_set_for(m, sys.argv[2], progress=False)
m.prepare_for(len(ev.images))
probs, _ = m.predict_scored(ev.images.images)
print(json.dumps(metrics_from_probs(probs, ev.images.labels, m.classes)))
"""


def score(path: InferencePath, model: Path, data: Path) -> tuple[float, float] | str:
    """(accuracy, log loss) of the path on labelled ``data``, or its failure. The path's flags
    are `load_model`'s arguments: ``--precision fp32`` is ``precision="fp32"``."""
    kwargs = {
        flag.removeprefix("--"): value for flag, value in zip(path.extra[::2], path.extra[1::2], strict=True)
    }
    _, proc = path.pawlab.python_run(["-c", SCORE, str(model), str(data), json.dumps(kwargs)])
    if proc.returncode:
        return last_line(proc)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return float(report["accuracy"]), float(report["log_loss"])


# -- the plain loop ------------------------------------------------------------------------------


def plain_decode(f: Path, size: int) -> np.ndarray:
    im = Image.open(f).convert("RGB")
    w, h = im.size
    s = min(w, h)
    box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
    return np.asarray(im.resize((size, size), Image.Resampling.BILINEAR, box=box))


def torch_model(model: Path, compile: str = "off") -> Model:
    """The model in fp32 in torch (``runtime="torch"`` where `load_model` has a runtime)."""
    runtime = {"runtime": "torch"} if "runtime" in inspect.signature(load_model).parameters else {}
    return load_model(model, device="cpu", precision="fp32", compile=compile, **runtime)


def plain_network(model: Path) -> tuple[torch.nn.Module, Model]:
    """The model's network in fp32, eager, NCHW, and its `Model` (classes, preprocessing)."""
    m = torch_model(model)
    return m.network.to(memory_format=torch.contiguous_format), m


def plain_loop(net: torch.nn.Module, m: Model, files: list[Path]) -> tuple[float, np.ndarray]:
    """(seconds, probabilities (N, classes)) of a minimal hand-written loop: decode, fp32, NCHW."""
    size = m.preprocessing.size[0]
    mean = torch.tensor(m.preprocessing.mean).view(1, -1, 1, 1)
    std = torch.tensor(m.preprocessing.std).view(1, -1, 1, 1)
    out = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(files), BATCH):
            batch = np.stack([plain_decode(f, size) for f in files[start : start + BATCH]])
            x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div(255)
            out.append(torch.softmax(net((x - mean) / std), 1))
    return time.perf_counter() - t0, torch.cat(out).numpy()


def plain_metrics(net: torch.nn.Module, m: Model, data: Path) -> tuple[tuple[float, float], int]:
    """((accuracy, log loss), images) of the plain loop on a folder of class folders."""
    files = sorted(data.glob("*/*.jpg"))
    labels = np.array([m.classes.index(f.parent.name) for f in files])
    _, probs = plain_loop(net, m, files)
    metrics = metrics_from_probs(probs, labels, m.classes)
    return (metrics["accuracy"], metrics["log_loss"]), len(files)


# -- the models and their images -----------------------------------------------------------------


def train_backbone(data: Path, out: Path, run_dir: Path) -> Path:
    """``out``, trained first with the default ``--backbone`` recipe on ``data`` if missing."""
    if not out.exists():
        print(f"training the default --backbone model of {data} (cold feature cache: minutes)", flush=True)
        cmd = [sys.executable, "-m", "pawlab", "train", str(data), "--backbone", "--out", str(out)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        subprocess.run([*cmd, "--run-dir", str(run_dir), "-q"], check=True, env=env)
    return out


def trained_model(work: Path) -> Path:
    """The cats/dogs model (bench/unknown.py and bench/serve.py use it too)."""
    return train_backbone(SHARED, work / "model.safetensors", work / "run")


def tasks(args: argparse.Namespace) -> list[Task]:
    """The models of --models. flowers5/train holds only class folders, so pawlab splits a
    validation set off it by seed; flowers5/test stays unseen."""
    out = []
    for key in args.models.split(","):
        work = args.work / key
        work.mkdir(parents=True, exist_ok=True)
        if key == "cats":
            model = args.cats_model or trained_model(args.work)
            out.append(Task(key, model, SHARED, SHARED / "validation", work))
        elif key == "flowers":
            model = args.flowers_model or train_backbone(
                FLOWERS / "train", work / "model.safetensors", work / "run"
            )
            out.append(Task(key, model, FLOWERS, FLOWERS / "test", work))
        else:
            sys.exit(f"--models: unknown model {key!r} (cats, flowers)")
    return out


def held_back(task: Task, per_class: int) -> Path:
    """The held-back folder, or (per_class > 0, --quick) a copy of its first images of each class."""
    if not per_class:
        return task.held_back
    dest = task.work / f"held-back-{per_class}"
    if not dest.exists():
        part = dest.with_name(dest.name + ".part")
        shutil.rmtree(part, ignore_errors=True)
        for folder in sorted(d for d in task.held_back.iterdir() if d.is_dir()):
            (part / folder.name).mkdir(parents=True)
            for f in sorted(folder.glob("*.jpg"))[:per_class]:
                shutil.copy2(f, part / folder.name / f.name)
        part.rename(dest)
    return dest


def about(task: Task, m: Model) -> str:
    layers = m.meta["architecture"]
    backbone = ", ".join(str(x.get("name")) for x in layers if x.get("type") == "backbone") or "?"
    size = m.preprocessing.size[0]
    classes = f"{len(m.classes)} classes ({', '.join(m.classes)})"
    return f"{task.key}: {backbone} at {size}x{size}, {classes}; {task.model}"


# -- one model's runs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PlainSet:
    """The plain loop's network, its model and the images it is timed on."""

    net: torch.nn.Module
    model: Model
    files: list[Path]


def time_paths(task: Task, paths: list[InferencePath], args: argparse.Namespace, plain: PlainSet) -> Outcome:
    """Whole submits of every path and the plain loop, --repeat rounds, interleaved."""
    test = build_set(
        task.work / f"test-{args.submission}", args.submission, numbered=True, source=task.photos
    )
    r = Outcome()
    default = next((p for p in paths if p.label == "default" and not p.skipped), None)
    if default is not None:  # the one-time choice, kept out of the rounds' figures
        seconds, state, failure = timed_submit(default, task.model, test, task.work / "submission.csv")
        r.first = None if failure else (seconds, state)
    for _ in range(args.repeat):
        r.seconds.setdefault(PLAIN, []).append(plain_loop(plain.net, plain.model, plain.files)[0])
        for p in paths:
            if p.skipped or p.label in r.failed:
                continue
            seconds, state, failure = timed_submit(p, task.model, test, task.work / "submission.csv")
            if failure:
                r.failed[p.label] = failure
                continue
            r.seconds.setdefault(p.label, []).append(seconds)
            r.caches.setdefault(p.label, []).append(state)
    return r


def score_paths(task: Task, paths: list[InferencePath], data: Path, plain: PlainSet, r: Outcome) -> None:
    """Accuracy and log loss of every path and the plain loop on the held-back images."""
    for p in paths:
        if p.skipped:
            continue
        got = score(p, task.model, data)
        if isinstance(got, str):
            r.eval_failed[p.label] = got
        else:
            r.metrics[p.label] = got
    r.metrics[PLAIN], r.held_back = plain_metrics(plain.net, plain.model, data)


def bench_model(task: Task, paths: list[InferencePath], args: argparse.Namespace) -> tuple[str, Outcome]:
    """(the model in words, its figures)."""
    net, m = plain_network(task.model)
    small = build_set(task.work / f"test-{args.n}", args.n, numbered=True, source=task.photos)
    plain = PlainSet(net, m, sorted(small.glob("*.jpg"), key=lambda p: int(p.stem)))
    r = time_paths(task, paths, args, plain)
    score_paths(task, paths, held_back(task, args.held_back), plain, r)
    r.classes = len(m.classes)
    return about(task, m), r


# -- the report ----------------------------------------------------------------------------------


def rate(r: Outcome, label: str, images: int) -> float | None:
    """Median images/s of a path's runs, None when it has none."""
    runs = r.seconds.get(label)
    return images / statistics.median(runs) if runs else None


def print_speed(paths: list[InferencePath], r: Outcome, args: argparse.Namespace) -> None:
    k = args.submission
    fp32 = rate(r, FP32, k)
    print(
        f"  whole `pawlab submit` of {k} JPEGs, process start and compiling included, median of {args.repeat}"
    )
    print("  (each run's img/s and whether it found the caches warm, in brackets)")
    for p in paths:
        flags = " ".join(p.extra) or "no flags"
        speed = rate(r, p.label, k)
        if p.skipped or speed is None:
            why = f"skipped: {p.skipped}" if p.skipped else f"failed: {r.failed[p.label]}"
            print(f"    {p.label:<34} {why}")
            continue
        ratio = f"x{speed / fp32:.2f} fp32" if fp32 else "  (no fp32)"
        runs = ", ".join(
            f"{k / s:.1f} {c}" for s, c in zip(r.seconds[p.label], r.caches[p.label], strict=True)
        )
        print(f"    {p.label:<34} {k / speed:6.1f}s {speed:7.1f} img/s  {ratio}  [{flags}]  ({runs})")
    if r.first is not None:
        seconds, state = r.first
        print(
            f"    (before them, the defaults' first job of this model on this CPU: {seconds:.1f}s, "
            f"{k / seconds:.1f} img/s, {state}: auto measures its route once and records it)"
        )
    plain, default = statistics.median(r.seconds[PLAIN]), rate(r, "default", k)
    runs = ", ".join(f"{args.n / s:.1f}" for s in r.seconds[PLAIN])
    vs = f"; the default's whole job x{default * plain / args.n:.2f} this" if default else ""
    print(f"  {PLAIN} (fp32, NCHW, Pillow decoding inline, {args.n} images in this process):")
    print(f"    {args.n / plain:.1f} img/s{vs} ({runs})")


def print_accuracy(paths: list[InferencePath], r: Outcome, data: Path) -> None:
    print(
        f"  held-back images ({r.held_back} of {data}, never trained on): accuracy, log loss; vs fp32's"
    )
    ref = r.metrics.get(FP32)
    for label in [p.label for p in paths if not p.skipped] + [PLAIN]:
        got = r.metrics.get(label)
        if got is None:
            print(f"    {label:<34} failed: {r.eval_failed.get(label, '?')}")
            continue
        diff = f"{(got[0] - ref[0]) * 100:+6.2f} pts  {got[1] - ref[1]:+.5f}" if ref else ""
        print(f"    {label:<34} {got[0]:7.2%}  {got[1]:.5f}   {diff}")


def check(what: str, value: float | None, fmt: str, goal: str, ok: Callable[[float], bool]) -> str:
    if value is None:
        return f"    {what}: not measured (goal: {goal})"
    return f"    {what}: {value:{fmt}} (goal: {goal}): {'met' if ok(value) else 'NOT met'}"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def goals(paths: list[InferencePath], r: Outcome, args: argparse.Namespace) -> list[str]:
    """Issue 25's goals for one model: speed (multi-class: against fp32; two classes: against
    today's default), and the default's accuracy and log loss against fp32's."""
    k = args.submission
    default = rate(r, "default", k)
    if r.classes > 2:
        need = 1.6 if fast_bf16() else 1.3
        vs = ratio(default, rate(r, FP32, k))
        speed = check(
            "default, x the fp32 path's img/s",
            vs,
            ".2f",
            f">= {need} on this CPU class",
            lambda v: v >= need,
        )
    else:
        today = next((rate(r, p.label, k) for p in paths if p.label.startswith(TODAY)), None)
        vs = ratio(default, today)
        speed = check("default, x today's default img/s", vs, ".2f", ">= 1.00, no slower", lambda v: v >= 1.0)
    got, ref = r.metrics.get("default"), r.metrics.get(FP32)
    acc = (got[0] - ref[0]) * 100 if got and ref else None
    loss = got[1] - ref[1] if got and ref else None
    return [
        speed,
        check("default accuracy - fp32's, pts", acc, "+.2f", "within 0.5", lambda v: abs(v) <= 0.5),
        check("default log loss - fp32's", loss, "+.4f", "within 0.005", lambda v: abs(v) <= 0.005),
    ]


# -- compiling's break-even (--breakeven) --------------------------------------------------------


def in_process_submit(model: Model, test: Path, out: Path) -> float:
    """Seconds of one in-process `pawlab.submit`, from scratch."""
    out.unlink(missing_ok=True)
    out.with_name(out.name + ".pawlab-job.json").unlink(missing_ok=True)  # never a resumed job
    t0 = time.perf_counter()
    submit(model, test, out, progress=False)
    return time.perf_counter() - t0


def breakeven(task: Task, args: argparse.Namespace) -> None:
    """The cost of compiling fp32 once in a process, the time it saves an image, and the images
    after which it pays off (run the script with TORCHINDUCTOR_CACHE_DIR set to a new folder for a
    cold disk cache, as a user's first job)."""
    exact, compiled = torch_model(task.model), torch_model(task.model, compile="on")
    warm = build_set(task.work / "test-64", 64, numbered=True, source=task.photos)
    test = build_set(task.work / f"test-{args.n}", args.n, numbered=True, source=task.photos)
    warm_eager = in_process_submit(exact, warm, task.work / "warm-eager.csv")
    cost = max(in_process_submit(compiled, warm, task.work / "warm-compiled.csv") - warm_eager, 0.0)
    eager = in_process_submit(exact, test, task.work / "eager.csv")
    saved = (eager - in_process_submit(compiled, test, task.work / "compiled.csv")) / args.n
    pays = f"{cost / saved:,.0f} images" if saved > 0 else "never (compiled is not faster)"
    print(
        f"  compiling fp32 costs {cost:.1f}s once and saves {saved * 1000:.1f} ms an image: "
        f"it pays off after {pays} (engine.COMPILE_MIN_IMAGES is set from this)"
    )


# -- main ----------------------------------------------------------------------------------------


def options() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="cats,flowers", help="cats, flowers or both, comma-separated")
    ap.add_argument("--submission", type=int, default=10000, help="images of each whole `pawlab submit`")
    ap.add_argument("--n", type=int, default=1000, help="images of the plain loop")
    ap.add_argument(
        "--repeat", type=int, default=1, help="rounds of every path, interleaved; medians reported"
    )
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "pawlab-bench-infer")
    ap.add_argument("--cats-model", type=Path, default=None, help="default: WORK/model.safetensors")
    ap.add_argument(
        "--flowers-model", type=Path, default=None, help="default: WORK/flowers/model.safetensors"
    )
    ap.add_argument(
        "--baseline-root", type=Path, default=None, help="a clean checkout of main: today's default"
    )
    ap.add_argument("--baseline-python", default=None, help="its Python (default: this one)")
    ap.add_argument("--breakeven", action="store_true", help="also compiling's break-even, in this process")
    ap.add_argument("--quick", action="store_true", help="small numbers, to check the script")
    args = ap.parse_args()
    args.held_back = 0  # images of each class of the held-back folder; 0: all
    if args.quick:
        args.submission, args.n, args.repeat, args.held_back = 300, 64, 1, 25
    return args


def main() -> None:
    args = options()
    paths = paths_for(args)
    cpu = cpu_class()
    verdicts = []
    for task in tasks(args):
        print(f"\n{task.key}: running (the figures follow when all its paths are done)", flush=True)
        title, r = bench_model(task, paths, args)
        print(f"{title}\n{cpu}")
        print_speed(paths, r, args)
        print_accuracy(paths, r, held_back(task, args.held_back))
        if args.breakeven:
            breakeven(task, args)
        verdicts.append((f"  {task.key} ({r.classes} classes):", goals(paths, r, args)))
    print(f"\nissue 25's goals; {cpu}")
    for head, lines in verdicts:
        print(head, *lines, sep="\n")


if __name__ == "__main__":
    main()
