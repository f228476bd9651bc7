"""Batch augmentations on real multispectral windows of any band count."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from swimdiff_geo.data.augment import AugmentConfig, PerBandJitter, PretrainAugmentation
from swimdiff_geo.data.oscd import OSCDCity

OSCD_MINI = Path(__file__).resolve().parents[1] / "data" / "oscd_mini"


@pytest.fixture(scope="module")
def windows() -> torch.Tensor:
    """Four real 13-band 32 x 32 windows (DN / 10000) from the tiny OSCD crops."""
    out = []
    for name in ("beihai", "saclay_e"):
        city = OSCDCity(OSCD_MINI, name)
        for date in (1, 2):
            out.append(torch.from_numpy(city.read(date, (0, 0, 32, 32)) * 1e-4))
    return torch.stack(out)


@pytest.mark.parametrize("bands", [13, 4, 1])
def test_any_band_count_and_crop_size(windows, bands: int) -> None:
    torch.manual_seed(0)
    aug = PretrainAugmentation(AugmentConfig(crop_size=24))
    out = aug(windows[:, :bands])
    assert out.shape == (4, bands, 24, 24)
    assert torch.isfinite(out).all()


def test_views_differ_per_sample_and_per_call(windows) -> None:
    torch.manual_seed(0)
    aug = PretrainAugmentation(AugmentConfig(crop_size=32))
    a, b = aug(windows), aug(windows)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize(("flip_p", "rot90_p"), [(1.0, 0.0), (0.0, 1.0)])
def test_geometric_part_only_rearranges_pixels(windows, flip_p: float, rot90_p: float) -> None:
    # Full-size crop, no jitter or blur: both flips (= a half turn), or a 90/180/270-degree
    # turn, keep each band's values and move them.
    torch.manual_seed(1)
    cfg = AugmentConfig(crop_size=32, rrc_scale=(1.0, 1.0), rrc_ratio=(1.0, 1.0), jitter_p=0.0,
                        blur_p=0.0, flip_p=flip_p, rot90_p=rot90_p)  # fmt: skip
    out = PretrainAugmentation(cfg)(windows)
    for i in range(4):
        for c in range(13):
            torch.testing.assert_close(
                out[i, c].flatten().sort().values, windows[i, c].flatten().sort().values,
                atol=1e-5, rtol=1e-4,
            )  # fmt: skip
        assert not torch.allclose(out[i], windows[i])


def test_per_band_jitter_scales_bands_independently(windows) -> None:
    torch.manual_seed(0)
    out = PerBandJitter(brightness=0.3, contrast=0.0, p=1.0)(windows)
    ratio = out / windows.clamp_min(1e-6)
    per_band = ratio.flatten(2).median(dim=2).values  # (N, C) one factor per band
    assert ((per_band > 0.69) & (per_band < 1.31)).all()
    assert per_band.std(dim=1).min() > 0.01  # bands get different factors
    untouched = PerBandJitter(0.3, 0.3, p=0.0)(windows)
    torch.testing.assert_close(untouched, windows)
