"""The bf16 agreement rule: the margin guard, its tolerances, and the records it writes and reads."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pawlab import checkpoint
from pawlab.config import RuntimeConfig, TrainConfig
from pawlab.data.decode import load_image
from pawlab.inference import load_model
from pawlab.inference.agreement import (
    AGREE_ACCURACY,
    AGREE_LOG_LOSS,
    AGREE_MAX_PROB_DIFF,
    GUARD_MAX,
    MARGIN_SAFETY,
    MAX_RERUN,
    agreement_figures,
    agrees,
    choose_margin,
    describe,
    guarded_agreement,
)
from pawlab.inference.engine import predict_outputs
from pawlab.inference.guard import Guard, agreed, margins
from pawlab.preprocessing import Preprocessing
from pawlab.training import train
from tests.conftest import TINY, write_tree

FAST_BF16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
needs_fast_bf16 = pytest.mark.skipif(
    not FAST_BF16, reason="this CPU has no fast bf16: training records no agreement"
)
# An agreement record as pawlab wrote them before the margin rule: the confidence rule, unnamed.
OLD_RECORD: dict[str, Any] = {
    "precision": "bf16",
    "images": 500,
    "calibration_images": 500,
    "guard": 0.02,
    "rerun": 0.1,
    "same_class": 1.0,
    "max_prob_diff": 0.003,
    "unguarded_max_prob_diff": 0.01,
    "ok": True,
}


def unsure_probs(n: int, classes: int = 5, seed: int = 0) -> torch.Tensor:
    """(n, classes) probabilities of a model that is rarely sure: top class 0.4-0.9."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=g)
    logits[torch.arange(n), torch.randint(classes, (n,), generator=g)] += 1 + 2 * torch.rand(n, generator=g)
    return logits.softmax(1)


def bf16_like(p: torch.Tensor, error: float, seed: int = 1) -> torch.Tensor:
    """``p`` with bf16-sized noise: logits moved by up to ``error`` (relative, as bf16 rounds)."""
    g = torch.Generator().manual_seed(seed)
    logits = p.log()
    return (logits * (1 + error * (2 * torch.rand(p.shape, generator=g) - 1))).softmax(1)


def test_margins_and_the_margin_rule() -> None:
    p = torch.tensor([[0.5, 0.25, 0.25], [0.375, 0.3125, 0.3125], [0.875, 0.0625, 0.0625]])
    assert margins(p).tolist() == [0.25, 0.0625, 0.8125]
    assert Guard("margin", 0.25).rerun(p).tolist() == [False, True, False]  # below, not at
    assert Guard("margin", 0.0).rerun(p).tolist() == [False, False, False]
    assert margins(torch.tensor([[1.0]])).tolist() == [1.0]  # one class: its probability
    # the confidence rule, as the engine always ran it: 1 - top probability above the guard
    assert Guard("confidence", 0.2).rerun(p).tolist() == [True, True, False]
    with pytest.raises(ValueError, match="guard rule"):
        Guard("nonsense", 0.1)


def test_choose_margin_keeps_what_was_seen_close_and_a_safety_margin() -> None:
    margin = torch.tensor([0.9, 0.6, 0.3, 0.1, 0.05, 0.01])
    diff = torch.tensor([0.0001, 0.0005, 0.001, 0.002, 0.003, 0.004])
    # all within the limit: only the margin a class could change within (safety x 2 x error)
    assert choose_margin(margin, diff) == pytest.approx(MARGIN_SAFETY * 2 * 0.004)
    assert choose_margin(margin, diff, safety=1.0) == pytest.approx(0.008)
    # a class changed at 0.1: it and every image less sure run again; the error of those kept
    # (at most 0.001) asks for less
    diff[3] = float("inf")
    chosen = choose_margin(margin, diff)
    assert 0.1 < chosen < 0.1001 and (margin < chosen).tolist() == [False, False, False, True, True, True]
    # order does not matter
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    assert choose_margin(margin[perm], diff[perm]) == chosen
    # ties with the first that does not fit run again too
    tied = torch.tensor([0.9, 0.3, 0.3, 0.3])
    assert choose_margin(tied, torch.tensor([0.0, 0.0, float("inf"), 0.0]), safety=0.0) > 0.3
    # a difference beyond the bound counts as a changed class does
    over = torch.tensor([0.0, 0.0, 2 * AGREE_MAX_PROB_DIFF, 0.0])
    assert choose_margin(tied, over, safety=0.0) == choose_margin(
        tied, over.where(over == 0, float("inf")), safety=0.0
    )
    # none fits: every image runs again, however sure
    assert bool((Guard("margin", choose_margin(margin, torch.ones(6))).rerun(torch.eye(3))).all())


def test_a_task_of_unsure_images_keeps_bf16_with_few_reruns() -> None:
    # as five-class flowers: most images under 95% sure, bf16 moving probabilities by < 0.004
    p_ref = unsure_probs(1000)
    p_fast = bf16_like(p_ref, 0.004)
    labels = p_ref.argmax(1)  # fp32 right on all but some
    labels[::7] = (labels[::7] + 1) % 5
    record = guarded_agreement(p_ref, p_fast, labels)
    assert record["ok"] is True and record["rule"] == "margin"
    assert record["rerun"] < 0.05 and record["same_class"] == 1.0
    assert record["max_prob_diff"] <= AGREE_MAX_PROB_DIFF
    assert abs(record["accuracy"] - record["accuracy_fp32"]) <= AGREE_ACCURACY
    assert abs(record["log_loss"] - record["log_loss_fp32"]) <= AGREE_LOG_LOSS
    # the confidence rule (recorded for older pawlab) would have run most of them twice
    held = p_fast[1::2]
    assert float(((1 - held.amax(1)) > record["guard"]).float().mean()) > MAX_RERUN
    # the guard measured is the one inference runs
    again = Guard.from_record(record)
    assert again == Guard("margin", record["margin"])
    assert float(again.rerun(held).float().mean()) == record["rerun"]


def test_bf16_that_changes_confident_classes_does_not_agree() -> None:
    p_ref = unsure_probs(1000, seed=3)
    p_fast = bf16_like(p_ref, 0.004)
    # one image in 20 gets another class, by far: no margin can catch it
    flip = torch.arange(0, 1000, 20)
    p_fast[flip] = p_fast[flip].roll(1, 1)
    record = guarded_agreement(p_ref, p_fast, p_ref.argmax(1))
    assert record["ok"] is False
    # calibration saw the changes among its most sure images: (almost) all run again in fp32
    assert record["rerun"] > MAX_RERUN and record["same_class"] == 1.0


def test_every_tolerance_counts() -> None:
    p_ref = unsure_probs(200)
    labels = p_ref.argmax(1)
    fine = agreement_figures(p_ref, p_ref, labels)
    assert agrees(fine) and fine["accuracy"] == fine["accuracy_fp32"] == 1.0
    base: dict[str, Any] = {**fine}
    assert not agrees({**base, "same_class": 0.99})
    assert not agrees({**base, "max_prob_diff": 2 * AGREE_MAX_PROB_DIFF})
    assert not agrees({**base, "accuracy": 1.0 - 2 * AGREE_ACCURACY})
    assert not agrees({**base, "log_loss": base["log_loss_fp32"] + 2 * AGREE_LOG_LOSS})
    assert not agrees({**base, "log_loss": base["log_loss_fp32"] - 2 * AGREE_LOG_LOSS})
    assert not agrees(agreement_figures(p_ref[:0], p_ref[:0], labels[:0]))  # nothing checked
    # the true class's probability moved by 0.005 where it is 0.01 (fp32 wrong, and sure): the
    # class and probabilities agree, the log loss does not
    sure = torch.tensor([[0.97, 0.02, 0.01]]).repeat(200, 1)
    truth = torch.zeros(200, dtype=torch.int64)
    truth[:20] = 2
    low = sure.clone()
    low[:20] = torch.tensor([0.975, 0.02, 0.005])
    moved = agreement_figures(sure, low, truth)
    assert moved["same_class"] == 1.0 and moved["max_prob_diff"] <= AGREE_MAX_PROB_DIFF
    assert moved["accuracy"] == moved["accuracy_fp32"] == pytest.approx(0.9)
    assert moved["log_loss"] - moved["log_loss_fp32"] > AGREE_LOG_LOSS and not agrees(moved)
    # without labels, the class and probabilities alone
    unlabelled = agreement_figures(sure, low, None)
    assert unlabelled["accuracy"] is None and unlabelled["log_loss_fp32"] is None and agrees(unlabelled)


def test_guard_from_records_old_and_new() -> None:
    # a record written before the margin rule: the confidence guard
    old = OLD_RECORD
    assert Guard.from_record(old) == Guard("confidence", 0.02) and agreed(old)
    assert Guard.from_record({**old, "ok": False}) is None and not agreed({**old, "ok": False})
    # older still, without a guard: bf16 unguarded, as then
    bare = {k: v for k, v in old.items() if k != "guard"}
    assert Guard.from_record(bare) is None and agreed(bare)
    new = {**old, "rule": "margin", "margin": 0.013}
    assert Guard.from_record(new) == Guard("margin", 0.013) and agreed(new)
    # a rule this pawlab does not know: no bf16 by default
    future = {**old, "rule": "something-newer", "setting": 1.0}
    assert Guard.from_record(future) is None and not agreed(future)
    assert not agreed({})


def test_a_record_in_a_line() -> None:
    p_ref = unsure_probs(400)
    record = guarded_agreement(p_ref, bf16_like(p_ref, 0.004), p_ref.argmax(1))
    line = describe(record)
    assert line.startswith("agrees with fp32: bf16 for inference (200 validation images")
    assert "accuracy 100.00% (fp32 100.00%)" in line and f"top-two margin < {record['margin']:.3g}" in line
    old = describe({**OLD_RECORD, "rerun": 0.6, "ok": False})
    assert old.startswith("would run too many images twice") and "p < 0.98" in old
    assert "accuracy" not in old  # it had no labels
    assert describe({**OLD_RECORD, "same_class": 0.9, "ok": False}).startswith("does not agree")


def test_the_engine_runs_the_margin_rule() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 12 * 12, 4)).eval()
    batch = np.random.default_rng(0).integers(0, 256, (24, 12, 12, 3), dtype=np.uint8)
    pre = Preprocessing(size=(12, 12))
    cpu = torch.device("cpu")
    exact = predict_outputs(net, batch, pre, cpu, softmax=True)
    fast = predict_outputs(net, batch, pre, cpu, softmax=True, bf16=True)
    setting = float(margins(fast).median())
    guard = Guard("margin", setting)
    mixed = predict_outputs(net, batch, pre, cpu, batch_size=5, softmax=True, bf16=True, guard=guard)
    sent = margins(fast) < setting
    assert 0 < int(sent.sum()) < len(batch)
    assert torch.allclose(mixed[sent], exact[sent], atol=1e-6)
    assert torch.equal(mixed[~sent], fast[~sent])


# --- a three-class model, trained -----------------------------------------------------------

CLASSES = {"cat": 30, "dog": 30, "bird": 30}


@pytest.fixture(scope="module")
def unsure_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """(source, model file, training log): `TINY` on three classes, with label smoothing 0.3,
    so no image is much more than 80% sure (as flowers: over half under 95%)."""
    root = tmp_path_factory.mktemp("agree")
    src = write_tree(root / "src", CLASSES)
    out = root / "model.safetensors"
    log = io.StringIO()
    config = TrainConfig(epochs=4, lr=3e-3, batch_size=8, label_smoothing=0.3)
    runtime = RuntimeConfig(progress=False)
    train(src, out, TINY, config, val_fraction=0.5, workers=1, stream=log, runtime=runtime)
    return src, out, log.getvalue()


def _images(src: Path, size: tuple[int, int]) -> np.ndarray:
    return np.stack([load_image(p, size) for p in sorted(src.rglob("*.jpg"))])


@needs_fast_bf16
def test_training_a_multi_class_model_of_unsure_images_records_bf16_agreeing(
    unsure_model: tuple[Path, Path, str],
) -> None:
    src, out, log = unsure_model
    record = checkpoint.load(out).meta["inference"]
    assert record["rule"] == "margin" and record["ok"] is True, log
    assert "guarded bf16 inference agrees with fp32: bf16 for inference" in log
    assert record["rerun"] <= 0.1 and record["accuracy"] is not None
    assert abs(record["log_loss"] - record["log_loss_fp32"]) <= AGREE_LOG_LOSS
    auto = load_model(out)
    assert auto.bf16 and auto.guard == Guard("margin", record["margin"])
    assert "top-two margin <" in repr(auto)
    exact = load_model(out, precision="fp32")
    images = _images(src, exact.preprocessing.size)
    p32, fast = exact.predict_proba(images), auto.predict_proba(images)
    # the confidence rule's largest guard would have sent most of them back
    assert float((p32.max(1) < 1 - GUARD_MAX).mean()) > MAX_RERUN
    assert (fast.argmax(1) == p32.argmax(1)).all()
    assert float(np.abs(fast - p32).max()) <= AGREE_MAX_PROB_DIFF


def test_a_model_file_recorded_before_the_margin_rule_runs_as_it_did(
    unsure_model: tuple[Path, Path, str], tmp_path: Path
) -> None:
    src, out, _ = unsure_model
    ck = checkpoint.load(out, with_optimizer=True)
    images = _images(src, load_model(out, precision="fp32").preprocessing.size)
    plain = load_model(out, precision="bf16")
    plain.guard = None
    fast = torch.from_numpy(plain.predict_proba(images))
    exact = torch.from_numpy(load_model(out, precision="fp32").predict_proba(images))
    guard = float((1 - fast.amax(1)).median())
    # the record as pawlab wrote it before (the confidence rule; no rule's name)
    old = {**OLD_RECORD, "guard": guard}
    path = checkpoint.save(
        tmp_path / "old.safetensors", ck.model_state, {**ck.meta, "inference": old}, extra=ck.extra
    )
    model = load_model(path, precision="bf16")
    assert model.guard == Guard("confidence", guard)
    assert f"p < {1 - guard:g} re-run in fp32" in repr(model)
    assert load_model(path).bf16 == FAST_BF16  # auto follows its "ok", as before
    # fp32's probabilities exactly where bf16's top class is below 1 - guard; bf16's elsewhere
    got = torch.from_numpy(model.predict_proba(images))
    unsure = (1 - fast.amax(1)) > guard
    assert 0 < int(unsure.sum()) < len(images)
    assert torch.allclose(got[unsure], exact[unsure], atol=1e-6)
    assert torch.equal(got[~unsure], fast[~unsure])
