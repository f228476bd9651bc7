"""Batch augmentations for multispectral pretraining (kornia; any number of bands).

Applied on the device to a batch (N, C, H, W) of scaled bands, independently for each sample
and each view: random resized crop to ``crop_size``, horizontal/vertical flips, 90-degree
rotations, per-band brightness/contrast jitter, Gaussian blur. Colour jitter in RGB terms
(hue, saturation) has no meaning for 13 bands, so jitter acts on every band separately.
"""

from __future__ import annotations

from dataclasses import dataclass

import kornia.augmentation as K
import torch
from torch import Tensor, nn

__all__ = ["AugmentConfig", "PerBandJitter", "PretrainAugmentation"]


class PerBandJitter(nn.Module):
    """Random per-sample, per-band contrast and brightness.

    With probability ``p`` per sample: ``x_c <- (mean_c + (x_c - mean_c) * u_c) * v_c`` where
    ``mean_c`` is the sample's band mean, ``u_c ~ U(1 - contrast, 1 + contrast)`` and
    ``v_c ~ U(1 - brightness, 1 + brightness)`` (multiplicative: reflectance stays >= 0 when
    contrast <= 1).
    """

    def __init__(self, brightness: float = 0.2, contrast: float = 0.2, p: float = 0.8) -> None:
        super().__init__()
        self.brightness, self.contrast, self.p = brightness, contrast, p

    def forward(self, x: Tensor) -> Tensor:
        n, c = x.shape[:2]
        apply = (torch.rand(n, 1, 1, 1, device=x.device) < self.p).to(x.dtype)
        u = 1 + (torch.rand(n, c, 1, 1, device=x.device) * 2 - 1) * self.contrast
        v = 1 + (torch.rand(n, c, 1, 1, device=x.device) * 2 - 1) * self.brightness
        mean = x.mean(dim=(2, 3), keepdim=True)
        jittered = (mean + (x - mean) * u) * v
        return apply * jittered + (1 - apply) * x


@dataclass
class AugmentConfig:
    """Augmentation settings (defaults in docs/pretraining.md)."""

    crop_size: int = 64
    rrc_scale: tuple[float, float] = (0.5, 1.0)
    rrc_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    rot90_p: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    jitter_p: float = 0.8
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 1.0)


class PretrainAugmentation(nn.Module):
    """The two-view augmentation pipeline: ``forward(x (N, C, h, w)) -> (N, C, crop, crop)``."""

    def __init__(self, cfg: AugmentConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or AugmentConfig()
        self.cfg = cfg
        s = cfg.crop_size
        kernel = 5 if s >= 32 else 3
        self.geometric = K.AugmentationSequential(
            K.RandomResizedCrop((s, s), scale=cfg.rrc_scale, ratio=cfg.rrc_ratio),
            K.RandomHorizontalFlip(p=cfg.flip_p),
            K.RandomVerticalFlip(p=cfg.flip_p),
            K.RandomRotation90(times=(1, 3), p=cfg.rot90_p),
        )
        self.jitter = PerBandJitter(cfg.brightness, cfg.contrast, cfg.jitter_p)
        self.blur = K.RandomGaussianBlur((kernel, kernel), cfg.blur_sigma, p=cfg.blur_p)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        x = self.geometric(x)
        x = self.jitter(x)
        return self.blur(x)
