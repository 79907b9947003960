"""Batch augmentation in torch, applied on the training device.

Inputs and outputs are float batches (B, C, H, W) with pixels in [0, 1]. Each image draws
its own parameters from the given generator, so a seeded run augments identically.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pawlab.config import AugmentConfig


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mirror a random half of the batch left-right."""
    mask = torch.rand(x.shape[0], generator=gen, device=gen.device) < 0.5
    return torch.where(mask.to(x.device)[:, None, None, None], x.flip(-1), x)


def random_rotate(x: torch.Tensor, max_degrees: float, gen: torch.Generator) -> torch.Tensor:
    """Rotate each image by a uniform angle in [-max, max] degrees, reflecting at the edges."""
    b = x.shape[0]
    angle = (torch.rand(b, generator=gen, device=gen.device) * 2 - 1) * math.radians(max_degrees)
    cos, sin = angle.cos().to(x), angle.sin().to(x)
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def random_noise(x: torch.Tensor, max_std: float, gen: torch.Generator) -> torch.Tensor:
    """Add Gaussian noise whose deviation each image draws uniformly in [0, max_std]."""
    std = torch.rand(x.shape[0], 1, 1, 1, generator=gen, device=gen.device).to(x) * max_std
    noise = torch.randn(x.shape, generator=gen, device=gen.device).to(x)
    return (x + noise * std).clamp_(0.0, 1.0)


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    if cfg.flip:
        x = random_flip(x, gen)
    if cfg.rotate > 0:
        x = random_rotate(x, cfg.rotate, gen)
    if cfg.noise > 0:
        x = random_noise(x, cfg.noise, gen)
    return x
