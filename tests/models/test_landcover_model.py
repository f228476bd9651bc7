"""Land-cover heads and the embedding wrapper on a real Sentinel-2 scene."""

from __future__ import annotations

from pathlib import Path

import pytest
import rasterio
import torch

from swimdiff_geo.models.encoder import build_encoder
from swimdiff_geo.models.landcover import (
    EmbeddingNet,
    PatchClassifier,
    build_patch_classifier,
    build_segmentation_model,
)

RASTER = (
    Path(__file__).resolve().parents[1] / "data" / "landcover_mini" / "slovenia_s2_l1c_scene3.tif"
)


def real_window(h: int, w: int) -> torch.Tensor:
    with rasterio.open(RASTER) as src:
        return torch.from_numpy(src.read(window=((0, h), (0, w))))[None]


@pytest.mark.parametrize(("h", "w"), [(64, 64), (51, 70)])
def test_segmentation_logits_cover_the_input(h: int, w: int) -> None:
    model = build_segmentation_model(num_classes=4, in_channels=13).eval()
    with torch.no_grad():
        out = model(real_window(h, w))
    assert out.shape == (1, 4, h, w)


def test_patch_classifier_heads() -> None:
    x = torch.cat([real_window(32, 32), real_window(32, 32).flip(-1)])
    for head in ("linear", "mlp"):
        model = build_patch_classifier(num_classes=5, in_channels=13, head=head).eval()
        with torch.no_grad():
            assert model(x).shape == (2, 5)
    assert isinstance(build_patch_classifier(3, head="linear").head, torch.nn.Linear)
    with pytest.raises(ValueError, match="head"):
        PatchClassifier(build_encoder(in_channels=13), 3, head="transformer")
    with pytest.raises(ValueError, match="2 classes"):
        build_segmentation_model(num_classes=1)


def test_embedding_is_the_pooled_stride32_map() -> None:
    net = EmbeddingNet(build_encoder("resnet18", in_channels=13)).eval()
    with torch.no_grad():
        pooled, fmap = net(real_window(64, 96))
    assert pooled.shape == (1, 512) and fmap.shape == (1, 512, 2, 3)
    torch.testing.assert_close(pooled, fmap.mean(dim=(2, 3)))
