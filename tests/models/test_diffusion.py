"""DDPM schedules and the conditional UNet denoiser."""

from __future__ import annotations

import math

import pytest
import torch

from swimdiff_geo.models.diffusion import ConditionalUNet, NoiseSchedule, timestep_embedding

STAGES = (64, 128, 256, 512)


def _features(n: int, size: int) -> list[torch.Tensor]:
    return [
        torch.randn(n, c, size // s, size // s) for c, s in zip(STAGES, (4, 8, 16, 32), strict=True)
    ]


def test_linear_schedule_is_ddpm() -> None:
    sched = NoiseSchedule(1000, "linear")
    assert float(sched.betas[0]) == pytest.approx(1e-4)
    assert float(sched.betas[-1]) == pytest.approx(0.02)
    # alpha_bar_t = prod_{s<=t} (1 - beta_s), checked for the first three steps by hand.
    b = [1e-4 + i * (0.02 - 1e-4) / 999 for i in range(3)]
    expected = (1 - b[0]) * (1 - b[1]) * (1 - b[2])
    assert float(sched.alphas_cumprod[2]) == pytest.approx(expected, rel=1e-6)


def test_cosine_schedule_follows_nichol_dhariwal() -> None:
    sched = NoiseSchedule(100, "cosine")
    f = [math.cos(((t / 100) + 0.008) / 1.008 * math.pi / 2) ** 2 for t in (0, 50)]
    assert float(sched.alphas_cumprod[49]) == pytest.approx(f[1] / f[0], rel=1e-4)
    assert torch.all(sched.alphas_cumprod[1:] < sched.alphas_cumprod[:-1])
    assert float(sched.betas.max()) <= 0.999 + 1e-6


def test_q_sample_mixes_signal_and_noise() -> None:
    sched = NoiseSchedule(10, "linear", beta_start=0.1, beta_end=0.5)
    x0, noise = torch.full((2, 1, 2, 2), 3.0), torch.full((2, 1, 2, 2), -1.0)
    t = torch.tensor([0, 9])
    abar = sched.alphas_cumprod[t]
    xt = sched.q_sample(x0, t, noise)
    for i in range(2):
        expected = math.sqrt(float(abar[i])) * 3 - math.sqrt(1 - float(abar[i]))
        assert float(xt[i, 0, 0, 0]) == pytest.approx(expected, rel=1e-6)


def test_unknown_schedule_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="noise schedule"):
        NoiseSchedule(10, "quadratic")


def test_timestep_embedding_shape_and_values() -> None:
    emb = timestep_embedding(torch.tensor([0, 5]), 8)
    assert emb.shape == (2, 8)
    torch.testing.assert_close(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))


@pytest.mark.parametrize("size", [64, 48])
@pytest.mark.parametrize("fusion", ["add", "concat"])
def test_multiscale_unet_shapes_and_conditioning(size: int, fusion: str) -> None:
    torch.manual_seed(0)
    unet = ConditionalUNet(13, STAGES, base_channels=8, cond_fusion=fusion)
    x = torch.randn(2, 13, size, size)
    t = torch.tensor([3, 700])
    feats = _features(2, size)
    eps = unet(x, t, feats)
    assert eps.shape == x.shape
    # Each stage's map reaches the output (pixel-level conditioning).
    for i in range(4):
        changed = [f.clone() for f in feats]
        changed[i] = changed[i] + 1.0
        assert not torch.allclose(unet(x, t, changed), eps), f"stage {i + 1} has no effect"


def test_pooled_unet_conditions_through_the_embedding() -> None:
    torch.manual_seed(0)
    unet = ConditionalUNet(4, STAGES, base_channels=8, cond_mode="pooled")
    x, t = torch.randn(2, 4, 32, 32), torch.tensor([1, 2])
    pooled = torch.randn(2, 512)
    eps = unet(x, t, pooled)
    assert eps.shape == x.shape
    assert not torch.allclose(unet(x, t, pooled + 1), eps)
    with pytest.raises(ValueError, match="pooled vector"):
        unet(x, t, _features(2, 32))
