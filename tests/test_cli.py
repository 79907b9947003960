"""End-to-end tests through the real entry point (`python -m pawlab`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pawlab import checkpoint
from tests.conftest import write_tree

ROOT = Path(__file__).resolve().parents[1]


def pawlab(
    *args: object, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m pawlab ARGS`` in a fresh process (``env``: variables set for it)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "pawlab", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


TINY_TOML = """
[[layers]]
type = "input"
size = 16
[[layers]]
type = "conv"
kernel = 3
filters = 8
pad = 1
[[layers]]
type = "relu"
[[layers]]
type = "max-pool"
[[layers]]
type = "linear"
[[layers]]
type = "softmax"
"""


@pytest.fixture(scope="module")
def workflow(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """prepare -> train once, shared by the tests that use the results."""
    root = tmp_path_factory.mktemp("cli")
    src = write_tree(root / "src", {"cat": 16, "dog": 16}, flat=True)
    (src / "readme.txt").write_text("not an image")
    (src / "dog.999.jpg").write_bytes(b"")  # zero bytes
    arch = root / "tiny.toml"
    arch.write_text(TINY_TOML)
    prep = pawlab("prepare", src, root / "prepared", "--size", 20, "--seed", 1, "--png", "--json", "-q")
    assert prep.returncode == 0, prep.stderr
    trained = pawlab(
        "train",
        root / "prepared",
        "--arch-file",
        arch,
        "--epochs",
        3,
        "--out",
        root / "model.safetensors",
        "--optimizer",
        "sgd",
        "--lr",
        "0.05",
        "--augment",
        "rotate=10,noise=0.05,flip",
        "-q",
        "--workers",
        1,
    )
    assert trained.returncode == 0, trained.stderr
    return {
        "root": root,
        "src": src,
        "model": root / "model.safetensors",
        "prepared": root / "prepared",
        "prep_json": Path(prep.stdout),
        "train_out": Path(trained.stdout),
    }


def test_prepare_output_and_manifest(workflow: dict[str, Path]) -> None:
    prepared = workflow["prepared"]
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert manifest["classes"] == ["cat", "dog"]
    assert manifest["size"] == 20 and manifest["seed"] == 1
    n_train = len(list((prepared / "train").glob("*/*.png")))
    n_val = len(list((prepared / "validation").glob("*/*.png")))
    assert n_train + n_val == 32
    assert sum(manifest["counts"]["validation"].values()) == n_val
    reasons = {s["name"]: s["reason"] for s in manifest["skipped"]}
    assert "not an image" in reasons["readme.txt"]
    assert "empty" in reasons["dog.999.jpg"]


def test_train_prints_epochs_and_best(workflow: dict[str, Path]) -> None:
    out = str(workflow["train_out"])
    assert out.count("epoch ") >= 3 and "val acc" in out
    assert "best: epoch" in out
    assert workflow["model"].is_file()


def test_predict_json(workflow: dict[str, Path]) -> None:
    image = next((workflow["prepared"] / "validation" / "dog").glob("*.png"))
    proc = pawlab("predict", workflow["model"], image, image, "--json")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(ln) for ln in proc.stdout.splitlines()]
    assert len(lines) == 2
    assert set(lines[0]["probability-map"]) == {"cat", "dog"}
    assert lines[0]["classification"] in ("cat", "dog")


def test_evaluate_json_and_figure(workflow: dict[str, Path]) -> None:
    proc = pawlab(
        "evaluate",
        workflow["model"],
        workflow["prepared"],
        "--json",
        "--report-dir",
        workflow["root"] / "report",
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert {"accuracy", "log_loss", "confusion_matrix", "classes", "count"} <= set(report)
    assert report["count"] == len(list((workflow["prepared"] / "validation").glob("*/*.png")))
    assert (workflow["root"] / "report" / "predictions.png").stat().st_size > 0


def test_evaluate_table(workflow: dict[str, Path]) -> None:
    proc = pawlab("evaluate", workflow["model"], workflow["prepared"], "-q")
    assert proc.returncode == 0, proc.stderr
    assert "accuracy" in proc.stdout and "confusion matrix" in proc.stdout


def test_submit(workflow: dict[str, Path]) -> None:
    test = workflow["root"] / "test"
    test.mkdir()
    for i, img in enumerate(sorted((workflow["prepared"] / "validation").glob("*/*.png")), 1):
        (test / f"{i * 10}.png").write_bytes(img.read_bytes())
    out = workflow["root"] / "sub.csv"
    proc = pawlab("submit", workflow["model"], test, "--out", out, "-q")
    assert proc.returncode == 0, proc.stderr
    lines = out.read_text().splitlines()
    assert lines[0] == "id,label"
    ids = [int(ln.split(",")[0]) for ln in lines[1:]]
    assert ids == sorted(ids) and len(ids) == len(list(test.iterdir()))


def test_archs_lists_and_describes() -> None:
    listing = pawlab("archs")
    assert listing.returncode == 0 and "cortex-cnn" in listing.stdout and "max-pool" in listing.stdout
    shown = pawlab("archs", "cortex-cnn")
    assert shown.returncode == 0 and "50x10x10" in shown.stdout


# ----------------------------------------------------------------------------- bad input


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert_one_line_error(
        pawlab("prepare", tmp_path / "empty", tmp_path / "out", "--size", 8), "no images found", "empty"
    )


def test_one_class_only(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"cat": 3, "dog": 0})
    assert_one_line_error(pawlab("train", src, "--epochs", 1), "1 class", "'cat'")


def test_missing_source(tmp_path: Path) -> None:
    assert_one_line_error(
        pawlab("prepare", tmp_path / "nope", tmp_path / "out", "--size", 8), "no such file or folder", "nope"
    )


def test_unknown_architecture(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"cat": 2, "dog": 2})
    assert_one_line_error(pawlab("train", src, "--arch", "resnet9000"), "unknown architecture", "resnet9000")


def test_layers_that_do_not_fit(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"cat": 2, "dog": 2})
    arch = tmp_path / "bad.yaml"
    arch.write_text(
        "layers:\n  - {type: input, size: 8}\n  - {type: conv, kernel: 5, filters: 4}\n"
        "  - {type: conv, kernel: 5, filters: 4}\n  - {type: linear}\n"
    )
    assert_one_line_error(pawlab("train", src, "--arch-file", arch), "layer 2", "conv", "4x4x4")


def test_missing_model_file(tmp_path: Path) -> None:
    img = write_tree(tmp_path / "src", {"cat": 1}) / "cat" / "cat.0.jpg"
    assert_one_line_error(pawlab("predict", tmp_path / "none.safetensors", img), "no such model file")


def test_bad_flag_value(tmp_path: Path) -> None:
    assert_one_line_error(pawlab("prepare", tmp_path, tmp_path / "o", "--size", "-3"), "--size")
    assert_one_line_error(pawlab("train", tmp_path, "--optimizer", "lbfgs"), "optimizer", "lbfgs")


def flat_beside_validation(root: Path) -> Path:
    """Kaggle-flat files beside a validation/ folder that has a class the files lack."""
    src = write_tree(root, {"cat": 8, "dog": 8}, flat=True)
    write_tree(src / "validation", {"cat": 3, "dog": 3, "owl": 2}, flat=True, start=100)
    return src


AMBIGUOUS = ("ambiguous layout", "validation/", "16 labelled files like cat.0.jpg", "--layout split")
NO_OWL = "warning: 1 class has no training image, so a model cannot learn it: owl"


def test_prepare_layout_flag_settles_an_ambiguous_tree(tmp_path: Path) -> None:
    src = flat_beside_validation(tmp_path / "src")
    assert_one_line_error(pawlab("prepare", src, tmp_path / "out", "--size", 8), *AMBIGUOUS)
    bad = pawlab("prepare", src, tmp_path / "out", "--size", 8, "--layout", "maybe")
    assert_one_line_error(bad, "--layout", "'maybe'")
    prepared = pawlab("prepare", src, tmp_path / "out", "--size", 8, "--layout", "split", "-q")
    assert prepared.returncode == 0, prepared.stderr
    assert prepared.stdout.splitlines()[1:4] == [
        "  train          16 images (cat 8, dog 8, owl 0)",
        "  validation      8 images (cat 3, dog 3, owl 2)",
        f"  {NO_OWL}",
    ]


@pytest.mark.slow
def test_train_layout_flag_settles_an_ambiguous_tree(tmp_path: Path) -> None:
    src = flat_beside_validation(tmp_path / "src")
    arch = tmp_path / "tiny.toml"
    arch.write_text(TINY_TOML)
    assert_one_line_error(pawlab("train", src, "--arch-file", arch, "--epochs", 1), *AMBIGUOUS)
    trained = pawlab(
        "train", src, "--arch-file", arch, "--epochs", 1, "--layout", "split", "-q", "--workers", 1
    )
    assert trained.returncode == 0, trained.stderr
    assert NO_OWL in trained.stdout.splitlines()


def test_class_folders_named_like_splits_in_a_zip(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "vehicles", {"bus": 3, "car": 3, "train": 3})
    zipped = shutil.make_archive(str(tmp_path / "vehicles"), "zip", tmp_path, "vehicles")
    proc = pawlab("prepare", zipped, tmp_path / "out", "--size", 8, "--json", "-q", "--workers", 1)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["classes"] == ["bus", "car", "train"] and report["skipped"] == []
    assert sum(sum(per.values()) for per in report["counts"].values()) == 9
    assert src.is_dir()


def test_forever_stops_cleanly_on_sigterm_and_resumes(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"cat": 12, "dog": 12})
    arch = tmp_path / "tiny.toml"
    arch.write_text(TINY_TOML)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pawlab",
            "train",
            str(src),
            "--arch-file",
            str(arch),
            "--forever",
            "--out",
            str(tmp_path / "m.safetensors"),
            "-q",
            "--workers",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:  # wait for two finished epochs
        seen.append(line)
        if sum(ln.startswith("epoch") for ln in seen) == 2:
            break
    proc.send_signal(signal.SIGTERM)
    rest, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "interrupted: stopped cleanly" in rest and "Traceback" not in err
    assert (tmp_path / "m.safetensors").is_file() and (tmp_path / "m-run" / "last.safetensors").is_file()
    # runtime flags are not part of the recipe: a resume takes them
    resumed = pawlab(
        "train", "--resume", tmp_path / "m-run", "--epochs", 4, "-q", "--workers", 1, "--device", "cpu"
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch" in resumed.stdout and "epoch     4/4" in resumed.stdout
    # the event log: the first run's start, epochs and clean end, then the resumed run's
    events = [json.loads(line) for line in (tmp_path / "m-run" / "events.jsonl").read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds.count("start") == 2 and kinds[-1] == "end"
    first_end = next(e for e in events if e["event"] == "end")
    assert first_end["interrupted"] is True and events[-1]["interrupted"] is False
    assert [int(e["epoch"]) for e in events if e["event"] == "epoch"][-1] == 4


def test_compare_optimizers(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"cat": 12, "dog": 12})
    arch = tmp_path / "tiny.toml"
    arch.write_text(TINY_TOML)
    proc = pawlab(
        "compare",
        src,
        "--arch-file",
        arch,
        "--optimizers",
        "sgd,adam",
        "--epochs",
        2,
        "--out-dir",
        tmp_path / "cmp",
        "-q",
        "--workers",
        1,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [
        ln.split()[0] for ln in proc.stdout.splitlines() if ln.split() and ln.split()[0] in ("sgd", "adam")
    ]
    assert rows == ["sgd", "adam"]
    assert (tmp_path / "cmp" / "accuracy.png").stat().st_size > 0
    assert (tmp_path / "cmp" / "sgd.safetensors").is_file() and (
        tmp_path / "cmp" / "adam.safetensors"
    ).is_file()
    # every figure of a row comes from one epoch: the saved one, as its model file records it
    for line in proc.stdout.splitlines():
        name, *cells = line.split()
        if name in ("sgd", "adam"):
            saved = checkpoint.load(tmp_path / "cmp" / f"{name}.safetensors").meta["metrics"]
            acc, loss, epoch = float(cells[0]), float(cells[1]), int(cells[2])
            assert (acc, loss, epoch) == (
                round(saved["val_accuracy"], 4),
                round(saved["val_loss"], 4),
                int(saved["epoch"]),
            )
    assert "the epoch with the best val_loss" in proc.stdout


def test_preset_runs_and_unknown_preset_is_an_error(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"cat": 10, "dog": 10})
    proc = pawlab(
        "train",
        src,
        "--preset",
        "cats-dogs-scratch",
        "--epochs",
        1,
        "--out",
        tmp_path / "m.safetensors",
        "-q",
        "--workers",
        1,
    )
    assert proc.returncode == 0, proc.stderr
    assert "64x64" in proc.stdout and "adamw" in proc.stdout and "one-cycle" in proc.stdout
    assert_one_line_error(pawlab("train", src, "--preset", "nope"), "unknown preset", "cats-dogs-scratch")
    assert "cats-dogs-scratch" in pawlab("archs").stdout


def test_resume_and_preset_refuse_flags_they_would_ignore(tmp_path: Path) -> None:
    assert_one_line_error(pawlab("train", "--resume", tmp_path / "run", "--lr", "0.1"), "--lr", "--resume")
    assert_one_line_error(
        pawlab("train", tmp_path, "--preset", "cats-dogs-scratch", "--batch-size", 8),
        "--batch-size",
        "--preset",
    )
    # a flag given with its default value is still given
    assert_one_line_error(pawlab("train", "--resume", tmp_path / "run", "--seed", "0"), "--seed", "--resume")


def test_parse_args_knows_which_flags_were_given() -> None:
    from pawlab.cli import parse_args

    args = parse_args(["train", "data", "--seed", "0", "--lr", "0.001", "--no-channels-last"])
    assert args.given == {"seed", "lr", "channels_last"}
    assert (args.seed, args.lr, args.batch_size, args.channels_last, args.data) == (
        0,
        0.001,
        64,
        False,
        "data",
    )
    assert parse_args(["train", "data"]).given == set()
    # --backbone without a name: the default the cross-validation chose
    assert parse_args(["train", "data", "--backbone"]).backbone == "efficientnet_lite2"
    assert parse_args(["train", "data", "--backbone", "efficientnet_lite0"]).backbone == "efficientnet_lite0"


def test_the_backbone_recipe_mirrors_below_its_size_unless_flips_are_asked_for() -> None:
    from pawlab.cli import parse_args
    from pawlab.cli.train import _recipe
    from pawlab.training.presets import TRANSFER

    _, config, _ = _recipe(parse_args(["train", "data", "--backbone"]))
    assert config.augment.flip and config.mirror_below == TRANSFER.mirror_below is not None
    _, config, _ = _recipe(parse_args(["train", "data", "--backbone", "--augment", "flip"]))
    assert config.augment.flip and config.mirror_below is None and config.mirrored_views(10**6)


def test_exit_codes(tmp_path: Path) -> None:
    """2 for usage and configuration errors, 1 for data, model-file and worker errors."""
    usage = pawlab("train", tmp_path, "--optimizer", "lbfgs")
    assert_one_line_error(usage, "optimizer")
    assert usage.returncode == 2
    src = write_tree(tmp_path / "src", {"cat": 3})
    data = pawlab("train", src, "--epochs", 1)
    assert_one_line_error(data, "1 class")
    assert data.returncode == 1
    # a runtime flag is accepted by --resume, which then finds no run: a model-file error
    missing = pawlab("train", "--resume", tmp_path / "run", "--device", "cpu", "--precision", "fp32", "-q")
    assert_one_line_error(missing, "no such model file")
    assert missing.returncode == 1


def test_transfer_learning_from_the_command_line(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"cat": 8, "dog": 8})
    proc = pawlab(
        "train",
        src,
        "--backbone",
        "efficientnet_lite0",
        "--size",
        32,
        "--epochs",
        1,
        "--fine-tune",
        "--out",
        tmp_path / "m.safetensors",
        "-q",
        "--workers",
        1,
    )
    assert proc.returncode == 0, proc.stderr
    # the head on cached features for an epoch, then the whole network for one more
    assert "head on cached backbone features" in proc.stdout
    assert "fine-tuning the whole network from epoch 2" in proc.stdout and "best: epoch" in proc.stdout
    model = tmp_path / "m.safetensors"
    shown = pawlab("predict", model, src / "dog" / "dog.1.jpg", "--json")
    assert json.loads(shown.stdout)["classification"] in ("cat", "dog")
    assert_one_line_error(pawlab("train", src, "--backbone", "vgg99"), "unknown backbone", "vgg99")
    # inference options: test-time augmentation and precision
    evaluated = pawlab("evaluate", model, src, "--tta", "-q", "--workers", 1, "--compile", "off")
    assert evaluated.returncode == 0, evaluated.stderr
    assert "test-time augmentation" in evaluated.stdout and "accuracy" in evaluated.stdout
    assert "top_losses:" in evaluated.stdout and (tmp_path / "m-eval" / "top_losses.png").is_file()
    image = src / "cat" / "cat.2.jpg"
    tta = pawlab("predict", model, image, "--tta", "--precision", "fp32", "--json")
    assert tta.returncode == 0, tta.stderr
    probs = json.loads(tta.stdout)["probability-map"]
    assert set(probs) == {"cat", "dog"} and abs(sum(probs.values()) - 1) < 1e-4
    assert_one_line_error(
        pawlab("predict", model, image, "--precision", "nonsense"), "--precision", "nonsense"
    )
    assert_one_line_error(pawlab("predict", model, image, "--compile", "maybe"), "--compile", "maybe")
    assert_one_line_error(pawlab("predict", model, image, "--device", "gpu"), "device", "gpu")


def test_one_head_over_several_backbones_from_the_command_line(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"cat": 8, "dog": 8})
    model, test = tmp_path / "m.safetensors", tmp_path / "test"
    common = ("--size", 32, "--epochs", 1, "-q", "--workers", 1)
    proc = pawlab(
        "train", src, "--backbone", "efficientnet_lite0,efficientnet_lite2", "--out", model, *common
    )
    assert proc.returncode == 0, proc.stderr
    assert "head on cached backbone features" in proc.stdout
    layer = checkpoint.read_meta(model)["architecture"][1]
    assert layer["name"] == ["efficientnet_lite0", "efficientnet_lite2"]
    test.mkdir()
    for i, p in enumerate(sorted(src.glob("*/*.jpg"))[:5], start=1):
        (test / f"{i}.jpg").write_bytes(p.read_bytes())
    done = pawlab("submit", model, test, "--out", tmp_path / "s.csv", "--tta", "-q", "--workers", 1)
    assert done.returncode == 0, done.stderr
    assert len((tmp_path / "s.csv").read_text().splitlines()) == 6
    assert_one_line_error(
        pawlab(
            "train", src, "--backbone", "efficientnet_lite0,efficientnet_lite1", "--weights", model, *common
        ),
        "one backbone, not several",
    )


def test_weights_flag_needs_a_backbone_and_a_backbone_without_weights_needs_it(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"cat": 4, "dog": 4})
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"unused")
    work = tmp_path / "work"
    work.mkdir()
    assert_one_line_error(
        pawlab("train", src, "--weights", weights, "--epochs", 1, cwd=work), "--weights", "--backbone"
    )
    assert_one_line_error(pawlab("train", src, "--fine-tune", cwd=work), "--fine-tune", "--backbone")
    assert_one_line_error(
        pawlab("train", src, "--backbone", "efficientnet_lite0", "--fine-tune-epochs", 2, cwd=work),
        "--fine-tune-epochs",
        "--fine-tune",
    )
    assert_one_line_error(
        pawlab("train", src, "--backbone", "efficientnet_lite0", "--fine-tune-lr", 1e-4, cwd=work),
        "--fine-tune-lr",
        "--fine-tune",
    )
    assert_one_line_error(
        pawlab("train", src, "--backbone", "efficientnet_lite0", "--freeze", "--fine-tune", cwd=work),
        "--fine-tune",
        "--freeze",
    )
    no_weights = pawlab(
        "train", src, "--backbone", "resnet18", "--size", 32, "--epochs", 1, "-q", "--workers", 1, cwd=work
    )
    assert_one_line_error(no_weights, "resnet18", "--weights")
    assert not (work / "runs").exists()  # refused before a run was started


def test_backbone_with_a_weights_file(tmp_path: Path) -> None:
    import torch

    from pawlab import checkpoint
    from pawlab.models.backbones import resnet18

    src = write_tree(tmp_path / "src", {"cat": 6, "dog": 6})
    weights = tmp_path / "resnet18.pth"
    torch.manual_seed(0)
    torch.save(resnet18().state_dict(), weights)
    model = tmp_path / "m.safetensors"
    proc = pawlab(
        "train",
        src,
        "--backbone",
        "resnet18",
        "--weights",
        weights,
        "--size",
        32,
        "--epochs",
        1,
        "--out",
        model,
        "-q",
        "--workers",
        1,
    )
    assert proc.returncode == 0, proc.stderr
    assert "best: epoch 1" in proc.stdout
    meta = checkpoint.load(model).meta
    assert meta["preprocessing"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert meta["preprocessing"]["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert meta["preprocessing"]["resize"] == "crop"
    state = checkpoint.load(model).model_state
    for name, tensor in torch.load(weights).items():  # frozen: the file's weights, unchanged
        assert torch.equal(state[f"body.0.net.{name}"], tensor), name
    weights.unlink()  # the model file holds every weight: the weights file is no longer needed
    shown = pawlab("predict", model, src / "dog" / "dog.1.jpg", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["classification"] in ("cat", "dog")


def test_train_with_the_dashboard_and_a_busy_port(tmp_path: Path) -> None:
    import socket

    src = write_tree(tmp_path / "src", {"cat": 8, "dog": 8})
    arch = tmp_path / "tiny.toml"
    arch.write_text(TINY_TOML)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        busy = pawlab("dashboard", tmp_path / "runs", "--port", port)
        assert_one_line_error(busy, "--port", str(port))
        assert busy.returncode == 2
    out = tmp_path / "m.safetensors"
    proc = pawlab(
        "train", src, "--arch-file", arch, "--epochs", 2, "--out", out, "-q", "--dashboard", "--port", port
    )
    assert proc.returncode == 0, proc.stderr
    assert f"dashboard: http://127.0.0.1:{port}/" in proc.stdout
    with socket.socket() as sock:  # the dashboard ended with the training
        sock.bind(("127.0.0.1", port))
    # resumed from the model file: the dashboard watches the run directory the file records
    resumed = pawlab("train", "--resume", out, "--epochs", 3, "-q", "--dashboard", "--port", port)
    assert resumed.returncode == 0, resumed.stderr
    assert f"`pawlab dashboard {(tmp_path / 'm-run').resolve()}` after" in resumed.stdout


def test_dashboard_stops_cleanly_on_ctrl_c_with_a_page_open(tmp_path: Path) -> None:
    """Also with a FIFO for an event log in a watched run: it is a damaged run, never waited on."""
    import socket
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (tmp_path / "runs" / "a").mkdir(parents=True)
    (tmp_path / "runs" / "a" / "events.jsonl").write_text('{"event": "start", "time": 1}\n')
    (tmp_path / "runs" / "b").mkdir(parents=True)
    (tmp_path / "runs" / "b" / "config.json").write_text("{}")
    os.mkfifo(tmp_path / "runs" / "b" / "events.jsonl")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pawlab", "dashboard", str(tmp_path / "runs"), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == f"dashboard: http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 20
        runs: list[dict[str, str]] = []
        while not runs and time.monotonic() < deadline:
            try:
                runs = json.loads(
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/api/runs", timeout=2).read()
                )
            except OSError:
                time.sleep(0.2)
        assert [(r["name"], r["state"]) for r in runs] == [("a", "running"), ("b", "damaged")]
        stream = urllib.request.urlopen(
            f"http://127.0.0.1:{port}/api/runs/{runs[0]['id']}/stream", timeout=10
        )
        assert stream.readline().startswith(b"retry:")  # a page is connected
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
        stream.close()
        assert proc.returncode in (0, 130) and "Traceback" not in err, err
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["dashboard", "--port", "70000"], ["--port", "not a port (1-65535): 70000"]),
        (["train", "data", "--dashboard", "--port", "70000"], ["--port", "not a port (1-65535): 70000"]),
        (["dashboard", "--host", ""], ["--host '': an empty address would listen on every interface"]),
    ],
)
def test_dashboard_address_usage_errors(args: list[str], needles: list[str]) -> None:
    proc = pawlab(*args)
    assert_one_line_error(proc, *needles)
    assert proc.returncode == 2


def _status(host: str, port: int, host_header: str) -> int:
    """The status of GET /api/runs on ``host``:``port`` naming ``host_header``, once it listens."""
    import http.client

    deadline = time.monotonic() + 20
    while True:
        conn = http.client.HTTPConnection(host, port, timeout=5)
        try:
            conn.request("GET", "/api/runs", headers={"Host": host_header})
            return conn.getresponse().status
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
        finally:
            conn.close()


@pytest.mark.parametrize(("host", "shown"), [("127.0.0.2", "127.0.0.2"), ("::1", "[::1]")])
def test_dashboard_on_any_loopback_address_keeps_the_host_check(
    tmp_path: Path, host: str, shown: str
) -> None:
    """127.0.0.2 and ::1 are this machine too: a foreign Host header is refused (DNS rebinding),
    and the printed address is a URL a browser opens."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
    (tmp_path / "runs").mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pawlab", "dashboard", str(tmp_path / "runs"), "--host", host,
         "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == f"dashboard: http://{shown}:{port}/"
        assert (
            _status(host, port, f"{shown}:{port}") == 200 and _status(host, port, f"localhost:{port}") == 200
        )
        assert _status(host, port, "evil.com") == 400 and _status(host, port, f"evil.com:{port}") == 400
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_closed_stdout_ends_quietly_as_unix_tools_do() -> None:
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line
    proc = subprocess.Popen(
        [sys.executable, "-m", "pawlab", "archs"],
        stdout=write,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    os.close(write)
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == ""


def test_output_to_a_pipe_is_line_buffered(tmp_path: Path) -> None:
    """The first line of a long command reaches a log file at once, not at exit."""
    code = "import time; from pawlab import cli; cli._line_buffered(); print('first'); time.sleep(30)"
    with open(tmp_path / "log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", code], stdout=log, env={**os.environ, "PYTHONPATH": str(ROOT)}
        )
        try:
            deadline = time.monotonic() + 60
            while (tmp_path / "log").read_text() != "first\n" and time.monotonic() < deadline:
                time.sleep(0.1)
            assert (tmp_path / "log").read_text() == "first\n"
        finally:
            proc.kill()


def test_outputs_are_checked_before_any_work(tree: Path, tmp_path: Path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    proc = pawlab("train", tree, "--out", folder, "--epochs", 1, "-q")
    assert_one_line_error(proc, str(folder), "is a folder")
    assert proc.returncode == 1 and not list(folder.iterdir())
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    assert_one_line_error(pawlab("train", tree, "--out", blocker / "m.safetensors", "-q"), "not-a-folder")
    assert_one_line_error(pawlab("prepare", tree, blocker / "prepared", "--size", 16, "-q"), "not-a-folder")
    assert_one_line_error(pawlab("submit", blocker, tree, "--out", folder), "is a folder")


def test_a_second_training_never_replaces_a_model_or_mixes_runs(tree: Path, tmp_path: Path) -> None:
    from pawlab import runlog

    out = tmp_path / "m.safetensors"
    first = pawlab(
        "train", tree, "--arch-file", _tiny_arch(tmp_path), "--out", out, "--epochs", 1, "-q", "--workers", 1
    )
    assert first.returncode == 0, first.stderr
    model, metrics = out.read_bytes(), (tmp_path / "m-run" / "metrics.jsonl").read_text()
    again = pawlab("train", tree, "--arch-file", _tiny_arch(tmp_path), "--out", out, "--epochs", 1, "-q")
    assert_one_line_error(again, str(out), "--overwrite")
    assert out.read_bytes() == model and (tmp_path / "m-run" / "metrics.jsonl").read_text() == metrics
    with runlog.locked(tmp_path / "m-run"):  # a training of this process holds the run directory
        busy = pawlab("train", tree, "--arch-file", _tiny_arch(tmp_path), "--out", out, "--overwrite", "-q")
    assert_one_line_error(busy, "another training", f"pid {os.getpid()}")
    replaced = pawlab(
        "train",
        tree,
        "--arch-file",
        _tiny_arch(tmp_path),
        "--out",
        out,
        "--epochs",
        1,
        "--overwrite",
        "-q",
        "--workers",
        1,
    )
    assert replaced.returncode == 0, replaced.stderr


def _tiny_arch(tmp_path: Path) -> Path:
    arch = tmp_path / "tiny.toml"
    arch.write_text(TINY_TOML)
    return arch


def test_a_malformed_class_map_is_a_usage_error(tmp_path: Path) -> None:
    proc = pawlab("evaluate", tmp_path / "m.safetensors", tmp_path, "--class-map", "cats")
    assert_one_line_error(proc, "--class-map", "DATA=MODEL")
    assert proc.returncode == 2


def test_prepare_quiet_prints_no_decoder_warnings_from_its_workers(tmp_path: Path) -> None:
    from tests.data.test_datasets import corrupt_exif_jpeg

    src = write_tree(tmp_path / "src", {"cat": 20, "dog": 20})
    for i in range(3):
        (src / "dog" / f"exif{i}.jpg").write_bytes(corrupt_exif_jpeg(i))
    proc = pawlab("prepare", src, tmp_path / "out", "--size", 16, "--workers", 2, "-q")
    assert proc.returncode == 0 and proc.stderr == ""
    assert "3 files used, with decoder warnings" in proc.stdout
