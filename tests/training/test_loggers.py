"""Loggers: TensorBoard, MLflow and W&B as callbacks, each read back with its tracker's own reader."""

from __future__ import annotations

import io
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from pawlab.config import TrainConfig
from pawlab.errors import ConfigError
from pawlab.models import build
from pawlab.preprocessing import Preprocessing
from pawlab.training import Callback, Trainer
from pawlab.training.loggers import LOGGERS, loggers_for
from pawlab.training.loggers.mlflow import MLflowLogger
from pawlab.training.loggers.tensorboard import TensorBoardLogger
from pawlab.training.loggers.wandb import WandbLogger
from tests.conftest import TINY, write_tree
from tests.test_cli import assert_one_line_error, pawlab
from tests.training.test_callbacks import _sets
from tests.training.test_loop import QUIET, _train

ROOT = Path(__file__).resolve().parents[2]
CONFIG = TrainConfig(epochs=2, optimizer="adam", lr=3e-3, batch_size=8)


def _fit(callbacks: list[Callback], config: TrainConfig = CONFIG, after: Trainer | None = None) -> Trainer:
    """Two epochs of `TINY` on 24 random 16x16 images, validated on 8 (``after``: a phase
    that goes on from that trainer's epochs, as fine-tuning does)."""
    torch.manual_seed(0)
    train_set, val_set = _sets()
    pre = Preprocessing.for_input((3, 16, 16))
    trainer = Trainer(build(TINY, 2), train_set, val_set, config, pre, callbacks, None, io.StringIO(), QUIET)
    if after is not None:
        history = after.state.history
        trainer.load_state_dict({"loop": {"epoch": len(history), "history": history, "metrics": history[-1]}})
    trainer.fit()
    return trainer


def test_names_are_parsed_and_checked(tmp_path: Path) -> None:
    assert LOGGERS.names() == ["mlflow", "tensorboard", "wandb"]
    assert loggers_for("", tmp_path) == [] and loggers_for(" , ", tmp_path) == []
    built = loggers_for("tensorboard, MLflow", tmp_path)
    assert [type(cb) for cb in built] == [TensorBoardLogger, MLflowLogger]
    with pytest.raises(
        ConfigError, match=r"^--log: unknown logger 'tensorbored' \(known: mlflow, tensorboard"
    ):
        loggers_for("tensorbored", tmp_path)
    with pytest.raises(ConfigError, match="^--log: tensorboard is named twice$"):
        loggers_for("tensorboard,TensorBoard", tmp_path)


@pytest.mark.parametrize(
    ("name", "module"),
    [("tensorboard", "torch.utils.tensorboard"), ("mlflow", "mlflow.tracking"), ("wandb", "wandb")],
)
def test_a_missing_tracker_names_its_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, module: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # importing it now raises ImportError
    with pytest.raises(ConfigError) as info:
        loggers_for(name, tmp_path)
    assert str(info.value) == f"--log {name} needs the {name} extra: pip install 'pawlab[{name}]'"


def test_no_tracker_is_imported_without_log() -> None:
    code = (
        "import sys; from pawlab.training.loggers import loggers_for; import pawlab.training.runs; "
        "loggers_for('', 'run'); "
        "print([m for m in ('tensorboard', 'mlflow', 'wandb') if m in sys.modules])"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"


def _tensorboard(folder: Path) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    return events.Reload()


def _hparams(events: Any) -> dict[str, Any]:
    """The recipe as the HParams plugin reads it."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = events.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}


def test_tensorboard_writes_scalars_images_and_the_recipe(tmp_path: Path) -> None:
    trainer = _fit([TensorBoardLogger(tmp_path)])
    events = _tensorboard(tmp_path / "tensorboard")
    tags = events.Tags()
    history = trainer.state.history
    for name in ("train_loss", "val_loss", "val_accuracy", "lr", "images_per_s"):
        logged = events.Scalars(name)
        assert [e.step for e in logged] == [1, 2]
        assert [e.value for e in logged] == pytest.approx([m[name] for m in history], rel=1e-6)
    # 3 batches an epoch, every one sampled; steps are optimizer steps
    assert [e.step for e in events.Scalars("batch/lr")] == [1, 2, 3, 4, 5, 6]
    assert events.Scalars("batch/lr")[0].value == pytest.approx(3e-3)
    assert all(e.value > 0 for e in events.Scalars("batch/images_per_s"))
    assert {"confusion_matrix", "seen/train", "seen/validation"} <= set(tags["images"])
    assert [e.step for e in events.Images("confusion_matrix")] == [1, 2]
    assert [e.step for e in events.Images("seen/train")] == [1, 2]
    seen = events.Images("seen/validation")
    assert len(seen) == 1 and (seen[0].width, seen[0].height) == (8 * 98, 98)  # 8 images, one row
    hparams = _hparams(events)
    assert hparams["lr"] == pytest.approx(3e-3) and hparams["optimizer"] == "adam"
    assert hparams["batch_size"] == 8 and hparams["augment.flip"] == 0  # torch's writer: bools as numbers
    assert hparams["patience"] == "null"
    assert trainer.callbacks[0].writer is None  # closed by after_fit


def test_tensorboard_a_new_run_replaces_an_earlier_runs_files(tmp_path: Path) -> None:
    _fit([TensorBoardLogger(tmp_path)])
    _fit([TensorBoardLogger(tmp_path)])
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert [e.step for e in _tensorboard(tmp_path / "tensorboard").Scalars("val_loss")] == [1, 2]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # SQLAlchemy's, inside MLflow's store
def test_mlflow_logs_params_metrics_and_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    tree, run = write_tree(tmp_path / "src", {"cat": 12, "dog": 12}), tmp_path / "run"
    result: Any = _train(
        tree, tmp_path / "best.safetensors", CONFIG, run_dir=run, callbacks=[MLflowLogger(run)]
    )
    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow.db'}")
    [found] = client.search_runs([client.get_experiment_by_name("pawlab").experiment_id])
    assert found.info.status == "FINISHED" and found.info.run_name == "run"
    assert found.data.params["lr"] == "0.003" and found.data.params["augment.rotate"] == "0.0"
    for name in ("train_loss", "val_loss", "val_accuracy"):
        logged = client.get_metric_history(found.info.run_id, name)
        assert [m.step for m in logged] == [1, 2]
        assert [m.value for m in logged] == pytest.approx([m[name] for m in result.history])
    [artifact] = client.list_artifacts(found.info.run_id)
    assert artifact.path == "best.safetensors"  # the --out file, beside the database
    stored = Path(client.download_artifacts(found.info.run_id, artifact.path, str(tmp_path / "dl")))
    assert stored.read_bytes() == (tmp_path / "best.safetensors").read_bytes()
    assert str(run / "mlartifacts") in found.info.artifact_uri


def _wandb_records(path: Path) -> list[Any]:
    """The records of a W&B run file: a LevelDB-style log (32 KiB blocks, each record's
    pieces with a 7-byte header: CRC, length, kind) after a 7-byte ``:W&B`` header."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, records, pending = 7, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack_from("<HB", data, pos + 4)
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or a record's last piece
            records.append(wandb_internal_pb2.Record.FromString(pending))
            pending = b""
    return records


def test_wandb_logs_offline_into_the_run_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    trainer = _fit([WandbLogger(tmp_path)])
    [path] = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    records = _wandb_records(path)
    [run] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["lr"] == 3e-3 and config["optimizer"] == "adam" and config["epochs"] == 2
    history = [
        {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    assert [h["_step"] for h in history] == [1, 2]
    for name in ("train_loss", "val_loss", "val_accuracy"):
        assert [h[name] for h in history] == pytest.approx([m[name] for m in trainer.state.history])


def test_a_second_phase_goes_on_in_the_same_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    loggers = loggers_for("tensorboard,mlflow,wandb", tmp_path)
    _fit(loggers, after=_fit(loggers), config=CONFIG.with_(epochs=4))
    assert [e.step for e in _tensorboard(tmp_path / "tensorboard").Scalars("val_loss")] == [1, 2, 3, 4]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    [found] = client.search_runs([client.get_experiment_by_name("pawlab").experiment_id])
    assert found.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(found.info.run_id, "val_loss")] == [1, 2, 3, 4]
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))  # one W&B run, resumed by its id
    # offline-run-<time>-<id>, with "-1" after a second folder begun within the same second
    ids = {re.fullmatch(r"offline-run-\d{8}_\d{6}-([a-z0-9]+)(-\d+)?", p.name).group(1) for p in runs}  # type: ignore[union-attr]
    assert len(runs) == 2 and len(ids) == 1


def test_train_help_lists_the_loggers() -> None:
    shown = " ".join(pawlab("train", "--help").stdout.split())
    listed = shown.split("trackers too: ", 1)[1].split(" (", 1)[0]
    assert sorted(listed.split(", ")) == LOGGERS.names()


def test_cli_logs_to_tensorboard_and_mlflow(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    tree, run = write_tree(tmp_path / "src", {"cat": 12, "dog": 12}), tmp_path / "run"
    env = {"MLFLOW_TRACKING_URI": "", "MLFLOW_EXPERIMENT_NAME": ""}
    proc = pawlab(
        "train", tree, "--arch", "keras-mlp", "--size", "16", "--epochs", "2", "--batch-size", "8",
        "--run-dir", run, "--log", "tensorboard,mlflow", "--workers", "1", "-q", cwd=tmp_path, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    events = _tensorboard(run / "tensorboard")
    assert [e.step for e in events.Scalars("val_accuracy")] == [1, 2]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e.value for e in events.Scalars("val_loss")] == pytest.approx([m["val_loss"] for m in metrics])
    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow.db'}")
    [found] = client.search_runs([client.get_experiment_by_name("pawlab").experiment_id])
    logged = client.get_metric_history(found.info.run_id, "val_loss")
    assert [m.value for m in logged] == pytest.approx([m["val_loss"] for m in metrics])
    assert [a.path for a in client.list_artifacts(found.info.run_id)] == ["model.safetensors"]

    assert not (tmp_path / "mlruns").exists()  # nothing in the working folder
    proc = pawlab("train", tree, "--log", "tensorboard,nope", "--run-dir", tmp_path / "other")
    assert proc.returncode == 2
    assert_one_line_error(proc, "--log: unknown logger 'nope' (known: mlflow, tensorboard, wandb)")


def test_a_resumed_run_logs_on_in_the_same_tracker_runs(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    tree, run = write_tree(tmp_path / "src", {"cat": 12, "dog": 12}), tmp_path / "run"
    env = {"MLFLOW_TRACKING_URI": "", "MLFLOW_EXPERIMENT_NAME": "", "WANDB_MODE": "offline"}
    common = ("--log", "mlflow,wandb", "--workers", "1", "-q")
    first = pawlab(
        "train", tree, "--arch", "keras-mlp", "--size", "16", "--epochs", "1", "--batch-size", "8",
        "--run-dir", run, *common, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    again = pawlab("train", "--resume", run, "--epochs", "2", *common, cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr
    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow.db'}")
    [found] = client.search_runs([client.get_experiment_by_name("pawlab").experiment_id])
    assert found.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(found.info.run_id, "val_loss")] == [1, 2]
    runs = sorted((run / "wandb").glob("offline-run-*"))  # a folder per process, one run id
    ids = {re.fullmatch(r"offline-run-\d{8}_\d{6}-([a-z0-9]+)(-\d+)?", p.name).group(1) for p in runs}  # type: ignore[union-attr]
    assert len(runs) == 2 and len(ids) == 1
