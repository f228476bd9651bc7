"""The Siamese change network on real Sentinel-2 windows (tests/data/oscd_mini)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from swimdiff_geo.data.change import BandScaling
from swimdiff_geo.data.oscd import OSCDCity
from swimdiff_geo.models.change import SiameseChangeNet, UNetDecoder, build_change_model
from swimdiff_geo.models.encoder import build_encoder
from tests.datasets.test_oscd import OSCD_MINI


def real_pair(h: int, w: int) -> torch.Tensor:
    """(1, 26, h, w): date A then date B of the beihai crop, DN / 10000."""
    city = OSCDCity(OSCD_MINI, "beihai")
    scaling = BandScaling(1e-4)
    a = scaling.apply(city.read(1, (0, 0, h, w)))
    b = scaling.apply(city.read(2, (0, 0, h, w)))
    return torch.from_numpy(np.concatenate([a, b]))[None]


@pytest.mark.parametrize(("h", "w"), [(48, 48), (45, 37), (33, 48)])
def test_output_is_one_logit_map_at_input_size(h: int, w: int) -> None:
    torch.manual_seed(0)
    model = build_change_model(bands_per_date=13).eval()
    with torch.no_grad():
        out = model(real_pair(h, w))
    assert out.shape == (1, 1, h, w)
    assert torch.isfinite(out).all()


def test_swapping_the_dates_gives_the_same_change() -> None:
    """Absolute feature differences make the network symmetric in the two dates."""
    torch.manual_seed(0)
    model = build_change_model(bands_per_date=13).eval()
    x = real_pair(48, 48)
    swapped = torch.cat([x[:, 13:], x[:, :13]], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(swapped), rtol=1e-5, atol=1e-5)
        same = torch.cat([x[:, :13], x[:, :13]], dim=1)
        assert not torch.allclose(model(x), model(same))


def test_encoder_is_shared_and_decoder_sees_all_stages() -> None:
    encoder = build_encoder("resnet18", in_channels=4)
    model = SiameseChangeNet(encoder)
    assert model.encoder is encoder and model.bands_per_date == 4
    assert isinstance(model.decoder, UNetDecoder)
    # Gradients reach the encoder through every stage difference.
    x = real_pair(48, 48)[:, [1, 2, 3, 7, 14, 15, 16, 20]]
    model(x).sum().backward()
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        grad = getattr(encoder, stage)[0].conv1.weight.grad
        assert grad is not None and grad.abs().sum() > 0


def test_resnet50_variant_builds_with_wider_stages() -> None:
    model = build_change_model("resnet50", bands_per_date=3).eval()
    with torch.no_grad():
        out = model(torch.from_numpy(real_pair(32, 32).numpy()[:, [3, 2, 1, 16, 15, 14]]))
    assert out.shape == (1, 1, 32, 32)


def test_decoder_has_a_skip_at_stride_2_and_at_full_resolution() -> None:
    """Small changes (a few 10 m pixels) need detail the stride-4 stages no longer hold."""
    torch.manual_seed(0)
    model = build_change_model(bands_per_date=13).eval()
    x = real_pair(45, 37)
    pyramid = model.encoder.forward_pyramid(x[:, :13])
    assert [tuple(f.shape[-2:]) for f in pyramid] == [(23, 19), (12, 10), (6, 5), (3, 3), (2, 2)]
    assert pyramid[0].shape[1] == model.encoder.stem_channels == 64
    for a, b in zip(pyramid[1:], model.encoder.forward_features(x[:, :13]), strict=True):
        torch.testing.assert_close(a, b)
    # block2 takes the stem difference, block1 the input difference (13 bands)
    assert model.decoder.block2[0].in_channels == 64 + 64
    assert model.decoder.block1[0].in_channels == 32 + 13
    # the input difference reaches the output without passing through the encoder
    x = x.clone().requires_grad_(True)
    model(x)[0, 0, 20, 20].backward()
    grad = x.grad[0, :13].abs().sum(0)
    assert grad[19:22, 19:22].sum() > 0
