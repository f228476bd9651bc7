"""DDPM noise schedules and the conditional UNet denoiser of SwiMDiff's diffusion constraint.

The denoiser eps_theta(x_t, t, c) predicts the noise added to the (per-band standardised) query
view x0. Its conditioning c comes from the query encoder:

- ``cond_mode="multiscale"`` (default): the ResNet stage 1-4 feature maps (strides 4, 8, 16, 32)
  are projected by 1x1 convolutions and added to (``cond_fusion="add"``) or concatenated with
  (``"concat"``) the UNet's encoder-path activations at the level of the same stride. Pixel-level
  conditioning is what makes the encoder keep fine spatial detail.
- ``cond_mode="pooled"`` (ablation): the pooled stage-4 vector is added to the timestep
  embedding, which modulates every residual block through adaptive group norm (AdaGN).

The UNet has six levels at strides 1, 2, 4, 8, 16, 32 of the input; sizes that do not divide by
32 are handled by resizing skip connections and conditioning maps.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ConditionalUNet", "NoiseSchedule", "timestep_embedding"]

SCHEDULES = ("linear", "cosine")
COND_MODES = ("multiscale", "pooled")
COND_FUSIONS = ("add", "concat")
UNET_STRIDES = (1, 2, 4, 8, 16, 32)
ENCODER_STRIDES = (4, 8, 16, 32)


class NoiseSchedule(nn.Module):
    """DDPM forward process q(x_t | x0) with T steps (Ho et al. 2020).

    Args:
        num_steps: T.
        kind: ``"linear"`` (betas from ``beta_start`` to ``beta_end``, DDPM's 1e-4 .. 0.02) or
            ``"cosine"`` (Nichol & Dhariwal 2021, offset s = 0.008, betas clipped at 0.999).
    """

    def __init__(
        self,
        num_steps: int = 1000,
        kind: str = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
    ) -> None:
        super().__init__()
        if num_steps < 1:
            raise ValueError(f"the number of diffusion steps must be >= 1, got {num_steps}")
        if kind == "linear":
            betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
        elif kind == "cosine":
            s = 0.008
            steps = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
            f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
            alpha_bar = f / f[0]
            betas = (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
        else:
            raise ValueError(f"unknown noise schedule {kind!r}; choose from {SCHEDULES}")
        self.num_steps = num_steps
        self.kind = kind
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        # Not persistent: derived from (num_steps, kind), so checkpoints stay small and portable.
        self.register_buffer("betas", betas.float(), persistent=False)
        self.register_buffer("alphas_cumprod", alphas_cumprod.float(), persistent=False)

    def sample_timesteps(self, n: int, device: torch.device, generator=None) -> Tensor:
        """n timesteps drawn uniformly from {0, ..., T-1}, int64 (n,)."""
        return torch.randint(0, self.num_steps, (n,), device=device, generator=generator)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(abar_t) * x0 + sqrt(1 - abar_t) * noise, for x0 (N, C, H, W) and t (N,)."""
        abar = self.alphas_cumprod.to(x0.dtype)[t].view(-1, *([1] * (x0.ndim - 1)))
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding (N, dim) of integer timesteps t (N,), as in DDPM/Transformer."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _groups(channels: int) -> int:
    for g in (8, 4, 2, 1):
        if channels % g == 0:
            return g
    return 1


class ResBlock(nn.Module):
    """GN-SiLU-conv, AdaGN (scale/shift from the embedding), SiLU-conv, plus a residual path."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_ch), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = nn.GroupNorm(_groups(out_ch), out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return h + self.skip(x)


class ConditionalUNet(nn.Module):
    """Noise predictor eps_theta(x_t, t, c) conditioned on encoder features.

    Args:
        in_channels: bands C of the image being denoised.
        cond_channels: channels of the encoder's stage 1-4 maps (``encoder.stage_channels``).
        base_channels: width of the first level; level widths are ``base * channel_mults``.
        channel_mults: six multipliers, one per level (strides 1, 2, 4, 8, 16, 32).
        cond_mode: ``"multiscale"`` or ``"pooled"`` (see the module docstring).
        cond_fusion: ``"add"`` or ``"concat"`` (multiscale only).

    ``forward(x_t (N, C, H, W), t (N,), features)`` returns the predicted noise (N, C, H, W);
    ``features`` is the list of 4 encoder maps (multiscale) or the pooled vector (N, c4) (pooled).
    """

    def __init__(
        self,
        in_channels: int,
        cond_channels: tuple[int, int, int, int],
        base_channels: int = 32,
        channel_mults: tuple[int, ...] = (1, 1, 2, 2, 4, 4),
        cond_mode: str = "multiscale",
        cond_fusion: str = "add",
    ) -> None:
        super().__init__()
        if cond_mode not in COND_MODES:
            raise ValueError(f"unknown conditioning {cond_mode!r}; choose from {COND_MODES}")
        if cond_fusion not in COND_FUSIONS:
            raise ValueError(f"unknown fusion {cond_fusion!r}; choose from {COND_FUSIONS}")
        if len(channel_mults) != len(UNET_STRIDES):
            raise ValueError(f"channel_mults needs {len(UNET_STRIDES)} entries (one per level)")
        self.cond_mode = cond_mode
        self.cond_fusion = cond_fusion
        widths = [base_channels * m for m in channel_mults]
        self.widths = widths
        emb_dim = 4 * base_channels
        self.time_dim = base_channels
        self.time_mlp = nn.Sequential(
            nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1)

        self.down_blocks = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        prev = widths[0]
        for i, w in enumerate(widths):
            self.down_blocks.append(ResBlock(prev, w, emb_dim))
            prev = w
            if i < len(widths) - 1:
                self.downsamples.append(nn.Conv2d(w, widths[i + 1], 3, stride=2, padding=1))
                prev = widths[i + 1]

        # Conditioning projections, keyed by UNet level index.
        self.cond_proj = nn.ModuleDict()
        self.cond_pooled: nn.Module | None = None
        if cond_mode == "multiscale":
            for c_ch, stride in zip(cond_channels, ENCODER_STRIDES, strict=True):
                level = UNET_STRIDES.index(stride)
                w = widths[level]
                in_ch = c_ch if cond_fusion == "add" else c_ch + w
                self.cond_proj[str(level)] = nn.Conv2d(in_ch, w, 1)
        else:
            self.cond_pooled = nn.Sequential(
                nn.Linear(cond_channels[-1], emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
            )

        self.mid = ResBlock(widths[-1], widths[-1], emb_dim)
        self.up_blocks = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        for i in reversed(range(len(widths))):
            self.up_blocks.append(ResBlock(widths[i] * 2, widths[i], emb_dim))
            if i > 0:
                self.upsamples.append(nn.Conv2d(widths[i], widths[i - 1], 3, padding=1))
        self.out_norm = nn.GroupNorm(_groups(widths[0]), widths[0])
        self.out_conv = nn.Conv2d(widths[0], in_channels, 3, padding=1)

    def _inject(self, h: Tensor, level: int, feats: list[Tensor]) -> Tensor:
        key = str(level)
        if key not in self.cond_proj:
            return h
        f = feats[ENCODER_STRIDES.index(UNET_STRIDES[level])]
        if f.shape[-2:] != h.shape[-2:]:
            f = F.interpolate(f, size=h.shape[-2:], mode="bilinear", align_corners=False)
        if self.cond_fusion == "add":
            return h + self.cond_proj[key](f)
        return self.cond_proj[key](torch.cat([h, f], dim=1))

    def forward(self, x_t: Tensor, t: Tensor, features: list[Tensor] | Tensor) -> Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.time_dim))
        feats: list[Tensor] = []
        if self.cond_mode == "pooled":
            if not isinstance(features, Tensor) or features.ndim != 2:
                raise ValueError("pooled conditioning expects the pooled vector (N, c4)")
            assert self.cond_pooled is not None
            emb = emb + self.cond_pooled(features)
        else:
            if isinstance(features, Tensor) or len(features) != 4:
                raise ValueError("multiscale conditioning expects the 4 encoder feature maps")
            feats = list(features)

        h = self.stem(x_t)
        skips = []
        for i, block in enumerate(self.down_blocks):
            h = block(h, emb)
            h = self._inject(h, i, feats)
            skips.append(h)
            if i < len(self.downsamples):
                h = self.downsamples[i](h)
        h = self.mid(h, emb)
        n_levels = len(self.down_blocks)
        for j, block in enumerate(self.up_blocks):
            level = n_levels - 1 - j
            skip = skips[level]
            if h.shape[-2:] != skip.shape[-2:]:
                h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([h, skip], dim=1), emb)
            if level > 0:
                h = F.interpolate(h, scale_factor=2.0, mode="nearest")
                h = self.upsamples[j](h)
        return self.out_conv(F.silu(self.out_norm(h)))
