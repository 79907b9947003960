"""The one inference path: views, batched outputs with test-time augmentation, bf16 agreement."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pawlab._infer import (
    AGREE_MAX_PROB_DIFF,
    AGREE_SAME_CLASS,
    TTA_VIEWS,
    VIEWS,
    check_agreement,
    predict_outputs,
    to_inputs,
    view,
)
from pawlab.preprocessing import Preprocessing

CPU = torch.device("cpu")
PRE = Preprocessing(size=(12, 12))
AGREEMENT_KEYS = {"precision", "images", "same_class", "max_prob_diff", "ok"}


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


def _check(result: dict[str, object], n: int) -> None:
    assert set(result) >= AGREEMENT_KEYS
    assert result["precision"] == "bf16"
    same, diff, seen = result["same_class"], result["max_prob_diff"], result["images"]
    assert isinstance(same, float) and isinstance(diff, float) and isinstance(seen, int)
    assert 0.0 <= same <= 1.0 and 0.0 <= diff <= 1.0 and 0 < seen <= n
    if result["ok"]:
        assert diff <= AGREE_MAX_PROB_DIFF and same >= AGREE_SAME_CLASS and seen == n


def test_check_agreement_of_a_tiny_network() -> None:
    net, batch = tiny_net(), images(20)
    result = check_agreement(net, batch, PRE, CPU)
    _check(result, 20)
    assert result["ok"] == (
        result["same_class"] >= AGREE_SAME_CLASS and result["max_prob_diff"] <= AGREE_MAX_PROB_DIFF
    )


def test_check_agreement_against_given_probabilities() -> None:
    net, batch = tiny_net(), images(20)
    fp32 = predict_outputs(net, batch, PRE, CPU, softmax=True)
    assert check_agreement(net, batch, PRE, CPU, fp32) == check_agreement(net, batch, PRE, CPU)
    # fp32 probabilities that bf16 cannot match: every class differs
    wrong = F.one_hot((fp32.argmax(1) + 1) % 3, 3).float()
    result = check_agreement(net, batch, PRE, CPU, wrong)
    _check(result, 20)
    assert result["ok"] is False
    assert result["same_class"] == 0.0 and result["max_prob_diff"] > 0.5
