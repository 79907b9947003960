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


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=gen.device) * (high - low) + low


def random_resized_crop(x: torch.Tensor, min_area: float, gen: torch.Generator) -> torch.Tensor:
    """Crop each image to a random box of at least ``min_area`` of its area (aspect ratio in
    [3/4, 4/3]) at a random place, resized back to the full size."""
    b = x.shape[0]
    area = _uniform(b, min_area, 1.0, gen)
    log_ratio = _uniform(b, math.log(3 / 4), math.log(4 / 3), gen)
    ratio = log_ratio.exp()
    w = (area * ratio).sqrt().clamp(max=1.0)  # fractions of the full width and height
    h = (area / ratio).sqrt().clamp(max=1.0)
    cx = (_uniform(b, -1.0, 1.0, gen) * (1 - w)).to(x)  # centre, in [-1, 1] coordinates
    cy = (_uniform(b, -1.0, 1.0, gen) * (1 - h)).to(x)
    zero = torch.zeros_like(cx)
    w, h = w.to(x), h.to(x)
    theta = torch.stack([torch.stack([w, zero, cx], 1), torch.stack([zero, h, cy], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def color_jitter(x: torch.Tensor, strength: float, gen: torch.Generator) -> torch.Tensor:
    """Scale brightness, contrast and saturation by factors in [1 - s, 1 + s] per image."""
    b = x.shape[0]
    brightness, contrast, saturation = (
        _uniform(b, 1 - strength, 1 + strength, gen).to(x).view(b, 1, 1, 1) for _ in range(3)
    )
    x = x * brightness
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean
    if x.shape[1] == 3:
        gray = (x * torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)).sum(
            1, keepdim=True
        )
        x = (x - gray) * saturation + gray
    return x.clamp(0.0, 1.0)


def random_affine(x: torch.Tensor, shift: float, scale: float, gen: torch.Generator) -> torch.Tensor:
    """Move each image by up to ``shift`` of its size each way and zoom it by a factor in
    [1 - scale, 1 + scale], reflecting at the edges."""
    b = x.shape[0]
    zoom = _uniform(b, 1 - scale, 1 + scale, gen).to(x)
    tx, ty = (_uniform(b, -2 * shift, 2 * shift, gen).to(x) for _ in range(2))  # [-1, 1] coordinates
    zero = torch.zeros_like(zoom)
    theta = torch.stack([torch.stack([1 / zoom, zero, tx], 1), torch.stack([zero, 1 / zoom, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    if cfg.crop > 0:
        x = random_resized_crop(x, cfg.crop, gen)
    if cfg.shift > 0 or cfg.scale > 0:
        x = random_affine(x, cfg.shift, cfg.scale, gen)
    if cfg.flip:
        x = random_flip(x, gen)
    if cfg.rotate > 0:
        x = random_rotate(x, cfg.rotate, gen)
    if cfg.jitter > 0:
        x = color_jitter(x, cfg.jitter, gen)
    if cfg.noise > 0:
        x = random_noise(x, cfg.noise, gen)
    return x
