"""The SwiMDiff pretraining model: MoCo with scene-wide matching plus a diffusion constraint.

One training step (``SwiMDiff.forward``), for a local batch of N windows with two views each:

1. EMA update of the key encoder/projector (momentum m), then keys k = normalise(g_k(f_k(view_k))).
2. Query encoder on view_q: stage 1-4 maps and the pooled vector; q = normalise(g_q(pooled)).
3. Keys and scene ids are all-gathered over processes (global batch of N * world keys).
4. L_C: scene-wide matching contrastive loss of q against its own key k+, the other keys of the
   global batch and the queue (:func:`swimdiff_geo.losses.scene_matching_contrastive_loss`).
5. L_D: DDPM noise-prediction MSE of the denoiser conditioned on the query encoder's features;
   the target x0 is view_q standardised per band. Skipped entirely when lambda_D = 0.
6. L = lambda_C * L_C + lambda_D * L_D; the gathered keys and ids are enqueued.

The queue and its scene ids, the EMA key encoder and the band statistics are buffers/parameters
of this module, so a checkpoint of it resumes training exactly.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from swimdiff_geo.losses import (
    SWM_MODES,
    diffusion_loss,
    scene_matching_contrastive_loss,
)
from swimdiff_geo.models.diffusion import ConditionalUNet, NoiseSchedule
from swimdiff_geo.models.encoder import ResNetEncoder, build_encoder

__all__ = ["ProjectionMLP", "SwiMDiff", "SwiMDiffOutput", "concat_all_gather"]


def concat_all_gather(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` (N, ...) from all processes along dim 0, in rank order.

    No gradient flows through the result. Identity when torch.distributed is not initialised.
    All processes must pass the same N (the data loaders drop incomplete last batches).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor.detach()
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor.detach().contiguous())
    return torch.cat(gathered, dim=0)


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class ProjectionMLP(nn.Module):
    """MoCo v2 projection head: Linear(in, hidden) - ReLU - Linear(hidden, out)."""

    def __init__(self, in_dim: int, hidden_dim: int = 512, out_dim: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@dataclass
class SwiMDiffOutput:
    """Losses and diagnostics of one step, all 0-d tensors (``loss`` carries the graph)."""

    loss: Tensor
    loss_c: Tensor
    loss_d: Tensor | None
    false_negatives_per_query: Tensor
    positive_similarity: Tensor


class SwiMDiff(nn.Module):
    """MoCo query/key encoders + projection heads, a queue of keys and scene ids, a denoiser.

    Args:
        arch: encoder architecture (``resnet18``/``resnet50``).
        in_channels: input bands C.
        band_mean, band_std: per-band statistics (C,) of the scaled input; used to standardise
            the diffusion target x0 and, if ``standardize_input``, the encoder input.
        standardize_input: feed the encoder standardised bands instead of the scaled ones.
        proj_hidden, proj_dim: projection MLP sizes (MoCo v2: 512 -> 128).
        queue_size: K, number of stored keys.
        momentum: EMA momentum m of the key encoder.
        swm_mode, tau, tau_prime, alpha: scene-wide matching loss settings.
        lambda_c, lambda_d: loss weights; lambda_d = 0 builds no denoiser at all.
        diffusion_steps, noise_schedule: DDPM T and beta schedule.
        cond_mode, cond_fusion, unet_base_channels: denoiser settings.
        init_weights: checkpoint for the query encoder (the key encoder starts as its copy).
    """

    def __init__(
        self,
        arch: str = "resnet18",
        in_channels: int = 13,
        band_mean: Tensor | list[float] | None = None,
        band_std: Tensor | list[float] | None = None,
        standardize_input: bool = False,
        proj_hidden: int = 512,
        proj_dim: int = 128,
        queue_size: int = 16384,
        momentum: float = 0.99,
        swm_mode: str = "soft",
        tau: float = 0.2,
        tau_prime: float = 0.1,
        alpha: float = 0.5,
        lambda_c: float = 1.0,
        lambda_d: float = 1.0,
        diffusion_steps: int = 1000,
        noise_schedule: str = "linear",
        cond_mode: str = "multiscale",
        cond_fusion: str = "add",
        unet_base_channels: int = 32,
        init_weights: str | None = None,
    ) -> None:
        super().__init__()
        if swm_mode not in SWM_MODES:
            raise ValueError(f"unknown --swm-mode {swm_mode!r}; choose from {SWM_MODES}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        if lambda_c < 0 or lambda_d < 0 or lambda_c + lambda_d == 0:
            raise ValueError(
                f"need lambda_c, lambda_d >= 0 and not both 0 ({lambda_c}, {lambda_d})"
            )
        self.swm_mode, self.tau, self.tau_prime, self.alpha = swm_mode, tau, tau_prime, alpha
        self.lambda_c, self.lambda_d = lambda_c, lambda_d
        self.momentum = momentum
        self.standardize_input = standardize_input

        mean = torch.zeros(in_channels) if band_mean is None else torch.as_tensor(band_mean)
        std = torch.ones(in_channels) if band_std is None else torch.as_tensor(band_std)
        if mean.shape != (in_channels,) or std.shape != (in_channels,):
            raise ValueError(f"band_mean/band_std need {in_channels} values")
        self.register_buffer("band_mean", mean.float().clone())
        self.register_buffer("band_std", std.float().clamp_min(1e-6).clone())

        self.encoder_q: ResNetEncoder = build_encoder(arch, in_channels, init_weights)
        self.projector_q = ProjectionMLP(self.encoder_q.out_channels, proj_hidden, proj_dim)
        self.encoder_k = copy.deepcopy(self.encoder_q)
        self.projector_k = copy.deepcopy(self.projector_q)
        for p in [*self.encoder_k.parameters(), *self.projector_k.parameters()]:
            p.requires_grad_(False)

        self.denoiser: ConditionalUNet | None = None
        self.noise_schedule = NoiseSchedule(diffusion_steps, noise_schedule)
        if lambda_d > 0:
            self.denoiser = ConditionalUNet(
                in_channels,
                self.encoder_q.stage_channels,
                base_channels=unet_base_channels,
                cond_mode=cond_mode,
                cond_fusion=cond_fusion,
            )

        self.queue_size = queue_size
        self.register_buffer("queue_keys", torch.zeros(queue_size, proj_dim))
        self.register_buffer("queue_ids", torch.full((queue_size,), -1, dtype=torch.long))
        self.register_buffer("queue_valid", torch.zeros(queue_size, dtype=torch.bool))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    # ------------------------------------------------------------------ MoCo parts
    @torch.no_grad()
    def momentum_update(self) -> None:
        """key <- m * key + (1 - m) * query, for encoder and projector parameters."""
        m = self.momentum
        pairs = [(self.encoder_q, self.encoder_k), (self.projector_q, self.projector_k)]
        for q_mod, k_mod in pairs:
            for p_q, p_k in zip(q_mod.parameters(), k_mod.parameters(), strict=True):
                p_k.mul_(m).add_(p_q.detach(), alpha=1.0 - m)

    @torch.no_grad()
    def enqueue(self, keys: Tensor, scene_ids: Tensor) -> None:
        """Write keys (B, D) and their scene ids (B,) at the queue pointer (ring buffer)."""
        if keys.shape[0] != scene_ids.shape[0]:
            raise ValueError("keys and scene ids must have the same length")
        if keys.shape[0] > self.queue_size:
            # Only the newest K fit: skip the oldest as if they had been written and overwritten.
            skipped = keys.shape[0] - self.queue_size
            self.queue_ptr.copy_((self.queue_ptr + skipped) % self.queue_size)
            keys, scene_ids = keys[skipped:], scene_ids[skipped:]
        n = keys.shape[0]
        idx = (self.queue_ptr + torch.arange(n, device=keys.device)) % self.queue_size
        self.queue_keys[idx] = keys.to(self.queue_keys.dtype)
        self.queue_ids[idx] = scene_ids.to(self.queue_ids.dtype)
        self.queue_valid[idx] = True
        self.queue_ptr.copy_((self.queue_ptr + n) % self.queue_size)

    def encoder_input(self, x: Tensor) -> Tensor:
        """The tensor the encoders see: scaled bands, standardised if ``standardize_input``."""
        return self.standardize(x) if self.standardize_input else x

    def standardize(self, x: Tensor) -> Tensor:
        """(x - mean) / std per band, x (N, C, H, W)."""
        return (x - self.band_mean[:, None, None]) / self.band_std[:, None, None]

    @torch.no_grad()
    def _keys(self, view_k: Tensor) -> Tensor:
        return F.normalize(self.projector_k(self.encoder_k(self.encoder_input(view_k))), dim=1)

    def forward(
        self,
        view_q: Tensor,
        view_k: Tensor,
        scene_ids: Tensor,
        t: Tensor | None = None,
        noise: Tensor | None = None,
        update_queue: bool | None = None,
    ) -> SwiMDiffOutput:
        """One SwiMDiff step on a local batch.

        Args:
            view_q, view_k: (N, C, H, W) the two views (scaled bands, e.g. DN / 10000).
            scene_ids: (N,) int64 scene id of each window.
            t, noise: optional diffusion timesteps (N,) and noise (N, C, H, W); drawn if None.
            update_queue: enqueue the keys (and EMA-update first); default ``self.training``.
        """
        update = self.training if update_queue is None else update_queue
        if update:
            self.momentum_update()
        k = self._keys(view_k)

        feats = self.encoder_q.forward_features(self.encoder_input(view_q))
        pooled = self.encoder_q.pool(feats[-1])
        q = F.normalize(self.projector_q(pooled), dim=1)

        # Global negatives: keys and ids of every process, then the queue.
        all_keys = concat_all_gather(k)
        all_ids = concat_all_gather(scene_ids)
        n, n_global = q.shape[0], all_keys.shape[0]
        own = torch.arange(n, device=q.device) + _rank() * n  # index of each query's own key
        not_own = torch.ones(n, n_global, dtype=torch.bool, device=q.device)
        not_own[torch.arange(n, device=q.device), own] = False
        candidates = torch.cat([all_keys, self.queue_keys.to(all_keys.dtype)], dim=0)
        candidate_ids = torch.cat([all_ids, self.queue_ids])
        valid = torch.cat([not_own, self.queue_valid[None].expand(n, -1)], dim=1)

        out_c = scene_matching_contrastive_loss(
            q, k, candidates, scene_ids, candidate_ids,
            mode=self.swm_mode, tau=self.tau, tau_prime=self.tau_prime, alpha=self.alpha,
            candidate_valid=valid,
        )  # fmt: skip
        loss = self.lambda_c * out_c.loss

        loss_d = None
        if self.denoiser is not None:
            x0 = self.standardize(view_q)
            if t is None:
                t = self.noise_schedule.sample_timesteps(n, x0.device)
            if noise is None:
                noise = torch.randn_like(x0)
            x_t = self.noise_schedule.q_sample(x0, t, noise)
            cond = feats if self.denoiser.cond_mode == "multiscale" else pooled
            loss_d = diffusion_loss(self.denoiser(x_t, t, cond), noise)
            loss = loss + self.lambda_d * loss_d

        if update:
            self.enqueue(all_keys, all_ids)
        return SwiMDiffOutput(
            loss=loss,
            loss_c=out_c.loss.detach(),
            loss_d=None if loss_d is None else loss_d.detach(),
            false_negatives_per_query=out_c.mean_false_negatives,
            positive_similarity=(q.detach().float() * k.float()).sum(dim=1).mean(),
        )
