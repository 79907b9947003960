from __future__ import annotations

import pytest
import torch

from pawlab.preprocessing import Preprocessing


@pytest.mark.parametrize(
    ("mean", "std"),
    [((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))],
)
def test_normalize_gives_the_same_values_in_either_memory_layout(
    mean: tuple[float, ...], std: tuple[float, ...]
) -> None:
    pre = Preprocessing((6, 5), mean=mean, std=std)
    x = torch.rand(2, 3, 6, 5)
    expected = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    plain = pre.normalize(x)
    last = pre.normalize(x.contiguous(memory_format=torch.channels_last))
    assert torch.equal(plain, expected) and torch.equal(last, expected)
    assert last.is_contiguous(memory_format=torch.channels_last)  # the layout is kept
    # the per-width constants do not leak between sizes
    wide = torch.rand(1, 3, 2, 9).contiguous(memory_format=torch.channels_last)
    assert torch.equal(pre.normalize(wide), pre.normalize(wide.contiguous()))


def test_normalize_one_channel() -> None:
    pre = Preprocessing((4, 4), channels=1, mean=(0.25,), std=(0.5,))
    x = torch.rand(3, 1, 4, 4)
    assert torch.equal(pre.normalize(x.contiguous(memory_format=torch.channels_last)), (x - 0.25) / 0.5)


def test_normalize_with_one_value_for_every_channel() -> None:
    pre = Preprocessing((4, 4), mean=(0.5,), std=(0.25,))
    x = torch.rand(2, 3, 4, 4)
    assert torch.equal(pre.normalize(x.contiguous(memory_format=torch.channels_last)), (x - 0.5) / 0.25)


def test_constants_first_made_for_inference_still_serve_training() -> None:
    """Predicting before training in one process: the cached mean and std must not be inference
    tensors, or autograd cannot save them (``Inference tensors cannot be saved for backward``)."""
    pre = Preprocessing(size=(4, 4), channels=1, mean=(0.25,), std=(0.75,))
    with torch.inference_mode():
        pre.normalize(torch.rand(2, 1, 4, 4))
    x = torch.rand(2, 1, 4, 4, requires_grad=True)
    pre.normalize(x).square().sum().backward()
    assert x.grad is not None and torch.allclose(x.grad, 2 * (x.detach() - 0.25) / 0.75**2)
