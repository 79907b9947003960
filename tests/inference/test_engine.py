"""The one inference path: views, batched outputs with test-time augmentation, bf16 agreement."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pawlab.inference.agreement import (
    AGREE_MAX_PROB_DIFF,
    AGREE_SAME_CLASS,
    GUARD_MAX,
    MAX_RERUN,
    check_agreement,
    choose_guard,
)
from pawlab.inference.engine import TTA_VIEWS, VIEWS, Compiled, predict_outputs, to_inputs, view
from pawlab.preprocessing import Preprocessing

CPU = torch.device("cpu")
PRE = Preprocessing(size=(12, 12))
AGREEMENT_KEYS = {
    "precision",
    "images",
    "calibration_images",
    "guard",
    "rerun",
    "same_class",
    "max_prob_diff",
    "unguarded_max_prob_diff",
    "ok",
    # the margin rule's: its name and setting, accuracy and log loss (None without labels)
    "rule",
    "margin",
    "accuracy",
    "accuracy_fp32",
    "log_loss",
    "log_loss_fp32",
}


def tiny_net(classes: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, classes),
    )


def images(n: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 12, 12, 3), dtype=np.uint8)


def test_every_view_keeps_the_shape() -> None:
    x = torch.rand(2, 3, 10, 14)
    assert set(TTA_VIEWS) <= set(VIEWS)
    for name in VIEWS:
        out = view(x, name)
        assert out.shape == x.shape, name
        assert out.dtype == x.dtype, name


def test_plain_is_identity_and_flip_mirrors() -> None:
    x = torch.rand(2, 3, 5, 7)
    assert torch.equal(view(x, "plain"), x)
    flipped = view(x, "flip")
    assert torch.equal(flipped[..., 0], x[..., -1]) and torch.equal(flipped[..., -1], x[..., 0])
    assert torch.equal(flipped, x.flip(-1))
    assert torch.equal(view(flipped, "flip"), x)  # mirroring twice gives the image back


def test_crops_take_their_corner() -> None:
    # 20x20 with a bright 2x2 top-left corner: a 90% (18x18) top-left crop keeps it, a
    # bottom-right one (from row and column 2) cuts it off
    x = torch.zeros(1, 1, 20, 20)
    x[..., :2, :2] = 1.0
    assert view(x, "crop-tl")[..., 0, 0].item() == pytest.approx(1.0)
    assert view(x, "crop-br").max().item() == 0.0
    constant = torch.full((1, 3, 9, 9), 0.25)
    for name in ("crop-tl", "crop-br", "crop-c"):
        assert torch.allclose(view(constant, name), constant), name


def test_to_inputs_normalises_on_the_device() -> None:
    batch = images(3)
    x = to_inputs(batch, PRE, CPU)
    expected = (torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    assert x.shape == (3, 3, 12, 12) and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(x, expected, atol=1e-6)
    assert torch.allclose(to_inputs(batch, PRE, CPU, view_name="flip"), expected.flip(-1), atol=1e-6)


def test_predict_outputs_logits_and_batches() -> None:
    net, batch = tiny_net(), images(10)
    with torch.inference_mode():
        expected = net((torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5)
    logits = predict_outputs(net, batch, PRE, CPU)
    assert logits.shape == (10, 3) and logits.dtype == torch.float32
    assert torch.allclose(logits, expected, atol=1e-5)
    assert torch.allclose(predict_outputs(net, batch, PRE, CPU, batch_size=3), logits, atol=1e-5)
    assert len(predict_outputs(net, batch[:0], PRE, CPU)) == 0


def test_predict_outputs_with_tta_averages_probabilities() -> None:
    net, batch = tiny_net(), images(7)
    probs = predict_outputs(net, batch, PRE, CPU, batch_size=4, views=TTA_VIEWS, softmax=True)
    assert probs.shape == (7, 3)
    assert torch.allclose(probs.sum(1), torch.ones(7), atol=1e-5)
    assert (probs >= 0).all()
    each = [predict_outputs(net, batch, PRE, CPU, views=(v,), softmax=True) for v in TTA_VIEWS]
    assert torch.allclose(probs, torch.stack(each).mean(0), atol=1e-5)
    plain = predict_outputs(net, batch, PRE, CPU, softmax=True)
    assert torch.allclose(plain, F.softmax(predict_outputs(net, batch, PRE, CPU), 1), atol=1e-5)
    assert not torch.allclose(plain, probs, atol=1e-6)  # the other views count


def test_guarded_bf16_runs_unsure_images_again_in_fp32() -> None:
    net, batch = tiny_net(), images(16)
    exact = predict_outputs(net, batch, PRE, CPU, softmax=True)
    fast = predict_outputs(net, batch, PRE, CPU, softmax=True, bf16=True)
    # guard 0: every image is unsure, so all probabilities are fp32's
    assert torch.allclose(
        predict_outputs(net, batch, PRE, CPU, softmax=True, bf16=True, guard=0.0), exact, atol=1e-6
    )
    # guard 1: none is, so they are bf16's
    assert torch.equal(predict_outputs(net, batch, PRE, CPU, softmax=True, bf16=True, guard=1.0), fast)
    # in between: fp32's exactly where bf16's top class is below 1 - guard
    guard = float((1 - fast.amax(1)).median())
    mixed = predict_outputs(net, batch, PRE, CPU, softmax=True, bf16=True, guard=guard)
    unsure = (1 - fast.amax(1)) > guard
    assert 0 < int(unsure.sum()) < len(batch)
    assert torch.allclose(mixed[unsure], exact[unsure], atol=1e-6)
    assert torch.equal(mixed[~unsure], fast[~unsure])


@pytest.mark.parametrize("views", [("plain",), TTA_VIEWS])
def test_reruns_are_queued_across_batches_and_results_keep_their_order(views: tuple[str, ...]) -> None:
    net, batch = tiny_net().eval(), images(23)
    fast = predict_outputs(net, batch, PRE, CPU, softmax=True, bf16=True, views=("plain",))
    guard = float((1 - fast.amax(1)).quantile(0.7))  # about a third of the images run again
    # reruns one batch at a time, as many as each batch has
    each = predict_outputs(
        net, batch, PRE, CPU, batch_size=5, softmax=True, bf16=True, guard=guard, views=views, rerun_batch=1
    )
    calls: list[int] = []

    def rerun(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        out: torch.Tensor = net(x)
        return out

    queued = predict_outputs(
        net, batch, PRE, CPU, batch_size=5, softmax=True, bf16=True, guard=guard, views=views,
        rerun=rerun, rerun_batch=4,
    )  # fmt: skip
    assert torch.allclose(queued, each, atol=1e-6)  # the same images, in the same order
    assert sum(calls) >= 4 and all(n == 4 for n in calls[:-1]) and 1 <= calls[-1] <= 4
    plain = predict_outputs(net, batch, PRE, CPU, softmax=True, views=views)
    unsure = (1 - fast.amax(1)) > guard
    if views == ("plain",):
        assert torch.allclose(queued[unsure], plain[unsure], atol=1e-6)


def test_choose_guard_keeps_bf16_where_it_stays_close() -> None:
    unsure = torch.tensor([0.001, 0.002, 0.004, 0.008, 0.016, 0.032])
    # differences grow with doubt; the limit is half the allowed difference
    diff = torch.tensor([0.0001, 0.0002, 0.001, 0.003, 0.007, 0.02])
    assert choose_guard(unsure, diff) == pytest.approx(0.008)  # 0.007 > 0.005 at 0.016
    assert choose_guard(unsure, diff, limit=0.01) == pytest.approx(0.016)
    # order does not matter; a changed class (inf) stops the guard below it
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    assert choose_guard(unsure[perm], diff[perm]) == pytest.approx(0.008)
    diff[2] = float("inf")
    assert choose_guard(unsure, diff) == pytest.approx(0.002)
    # all fine: the largest guard allowed; none fine: every image runs again in fp32
    assert choose_guard(unsure, torch.zeros(6)) == GUARD_MAX
    assert choose_guard(unsure, torch.ones(6)) == 0.0
    # ties: an image as unsure as the first that does not fit runs again too
    tied = torch.tensor([0.001, 0.004, 0.004, 0.004, 0.02])
    assert choose_guard(tied, torch.tensor([0.0, 0.0, 0.009, 0.0, 0.0])) == pytest.approx(0.001)
    assert choose_guard(tied, torch.tensor([0.0, 0.0, 0.0, 0.0, 0.009])) == pytest.approx(0.004)


def _check(result: dict[str, object], n: int) -> None:
    assert set(result) == AGREEMENT_KEYS
    assert result["precision"] == "bf16"
    same, diff, seen = result["same_class"], result["max_prob_diff"], result["images"]
    assert isinstance(same, float) and isinstance(diff, float) and isinstance(seen, int)
    assert 0.0 <= same <= 1.0 and 0.0 <= diff <= 1.0
    # the guard is chosen on the first half, agreement measured on the rest
    assert seen + result["calibration_images"] == n and seen == n // 2  # type: ignore[operator]
    assert 0 <= result["guard"] <= GUARD_MAX  # type: ignore[operator]
    assert diff <= result["unguarded_max_prob_diff"] + 1e-6  # type: ignore[operator]
    if result["ok"]:
        assert diff <= AGREE_MAX_PROB_DIFF and same >= AGREE_SAME_CLASS
        assert result["rerun"] <= MAX_RERUN  # type: ignore[operator]


def test_check_agreement_of_a_tiny_network() -> None:
    net, batch = tiny_net(), images(20)
    result = check_agreement(net, batch, PRE, CPU)
    _check(result, 20)
    assert result["ok"] == (
        result["same_class"] >= AGREE_SAME_CLASS
        and result["max_prob_diff"] <= AGREE_MAX_PROB_DIFF
        and result["rerun"] <= MAX_RERUN
    )


def test_check_agreement_against_given_logits() -> None:
    net, batch = tiny_net(), images(20)
    fp32 = predict_outputs(net, batch, PRE, CPU)
    assert check_agreement(net, batch, PRE, CPU, fp32) == check_agreement(net, batch, PRE, CPU)
    # fp32 outputs that bf16 cannot match: every class differs, confidently
    wrong = 20 * F.one_hot((fp32.argmax(1) + 1) % 3, 3).float()
    result = check_agreement(net, batch, PRE, CPU, wrong)
    _check(result, 20)
    assert result["ok"] is False
    # every image would run again in fp32: it agrees, but fp32 alone is faster
    assert result["guard"] == 0.0 and result["rerun"] == 1.0 and result["max_prob_diff"] < 1e-6
    assert result["unguarded_max_prob_diff"] > 0.5
    # an image with no room to be checked on is not agreement
    assert check_agreement(net, batch[:1], PRE, CPU)["ok"] is False


def test_compiled_pads_the_last_batch_and_matches_eager(capsys: pytest.CaptureFixture[str]) -> None:
    net, batch = tiny_net().eval(), images(10)
    eager = predict_outputs(net, batch, PRE, CPU, batch_size=4)
    compiled = Compiled(net, 4)
    calls: list[int] = []
    fn = compiled.fn
    compiled.fn = lambda x: (calls.append(len(x)), fn(x))[1]
    out = predict_outputs(net, batch, PRE, CPU, batch_size=4, forward=compiled)
    assert out.shape == (10, 3)
    if compiled.failed is None:
        assert calls == [4, 4, 4]  # 4 + 4 + 2 padded to 4: one shape, one graph
        assert torch.allclose(out, eager, atol=1e-4)
    else:  # no C++ compiler here: it ran eagerly and said so once
        assert torch.allclose(out, eager, atol=1e-6)
        assert capsys.readouterr().err.count("torch.compile failed") == 1


def test_compiled_runs_a_batch_under_half_its_size_eagerly() -> None:
    # a server's lone request: padding 1 image to 4 costs more than running it as it is
    net, batch = tiny_net().eval(), images(9)
    compiled = Compiled(net, 4)
    calls: list[int] = []
    fn = compiled.fn
    compiled.fn = lambda x: (calls.append(len(x)), fn(x))[1]
    out = predict_outputs(net, batch, PRE, CPU, batch_size=4, forward=compiled)
    if compiled.failed is None:
        assert calls == [4, 4]  # 4 + 4 compiled, the last 1 eager
    assert torch.allclose(out, predict_outputs(net, batch, PRE, CPU, batch_size=4), atol=1e-4)


def test_compiled_network_is_frozen() -> None:
    # Freezing makes the weights constants of the compiled graph (packed once, convolutions fused
    # with what follows them): it is for a copy that is not trained any further. Its mark: a
    # weight changed in place afterwards no longer reaches the compiled network.
    net, batch = tiny_net().eval(), images(4)
    compiled = Compiled(net, 4)
    before = predict_outputs(net, batch, PRE, CPU, batch_size=4, forward=compiled)
    if compiled.failed is not None:
        pytest.skip(f"torch.compile does not work here: {compiled.failed}")
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
    again = predict_outputs(net, batch, PRE, CPU, batch_size=4, forward=compiled)
    assert torch.allclose(again, before, atol=1e-4)
    assert not torch.allclose(predict_outputs(net, batch, PRE, CPU, batch_size=4), before, atol=1e-2)


def test_compiled_falls_back_to_eager_when_compiling_fails(capsys: pytest.CaptureFixture[str]) -> None:
    net, batch = tiny_net().eval(), images(6)
    compiled = Compiled(net, 4)

    def broken(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("no C++ compiler found\nmore detail")

    compiled.fn = broken
    out = predict_outputs(net, batch, PRE, CPU, batch_size=4, forward=compiled)
    assert torch.allclose(out, predict_outputs(net, batch, PRE, CPU), atol=1e-6)
    assert compiled.failed == "RuntimeError: no C++ compiler found"
    err = capsys.readouterr().err
    assert err.count("torch.compile failed (RuntimeError: no C++ compiler found); running uncompiled") == 1
