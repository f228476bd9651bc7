"""ResNet encoders: torchvision key names, shapes, weight loading, conv1 adaptation."""

from __future__ import annotations

import pytest
import torch

from swimdiff_geo.models.encoder import (
    ResNetEncoder,
    adapt_first_conv_weight,
    build_encoder,
    load_encoder_weights,
)

# The state_dict key names of torchvision.models.resnet18() (the external standard that
# torchvision, timm and TorchGeo checkpoints use), in torchvision's order.
TORCHVISION_RESNET18_KEYS = [
    "conv1.weight",
    "bn1.weight",
    "bn1.bias",
    "bn1.running_mean",
    "bn1.running_var",
    "bn1.num_batches_tracked",
    "layer1.0.conv1.weight",
    "layer1.0.bn1.weight",
    "layer1.0.bn1.bias",
    "layer1.0.bn1.running_mean",
    "layer1.0.bn1.running_var",
    "layer1.0.bn1.num_batches_tracked",
    "layer1.0.conv2.weight",
    "layer1.0.bn2.weight",
    "layer1.0.bn2.bias",
    "layer1.0.bn2.running_mean",
    "layer1.0.bn2.running_var",
    "layer1.0.bn2.num_batches_tracked",
    "layer1.1.conv1.weight",
    "layer1.1.bn1.weight",
    "layer1.1.bn1.bias",
    "layer1.1.bn1.running_mean",
    "layer1.1.bn1.running_var",
    "layer1.1.bn1.num_batches_tracked",
    "layer1.1.conv2.weight",
    "layer1.1.bn2.weight",
    "layer1.1.bn2.bias",
    "layer1.1.bn2.running_mean",
    "layer1.1.bn2.running_var",
    "layer1.1.bn2.num_batches_tracked",
    "layer2.0.conv1.weight",
    "layer2.0.bn1.weight",
    "layer2.0.bn1.bias",
    "layer2.0.bn1.running_mean",
    "layer2.0.bn1.running_var",
    "layer2.0.bn1.num_batches_tracked",
    "layer2.0.conv2.weight",
    "layer2.0.bn2.weight",
    "layer2.0.bn2.bias",
    "layer2.0.bn2.running_mean",
    "layer2.0.bn2.running_var",
    "layer2.0.bn2.num_batches_tracked",
    "layer2.0.downsample.0.weight",
    "layer2.0.downsample.1.weight",
    "layer2.0.downsample.1.bias",
    "layer2.0.downsample.1.running_mean",
    "layer2.0.downsample.1.running_var",
    "layer2.0.downsample.1.num_batches_tracked",
    "layer2.1.conv1.weight",
    "layer2.1.bn1.weight",
    "layer2.1.bn1.bias",
    "layer2.1.bn1.running_mean",
    "layer2.1.bn1.running_var",
    "layer2.1.bn1.num_batches_tracked",
    "layer2.1.conv2.weight",
    "layer2.1.bn2.weight",
    "layer2.1.bn2.bias",
    "layer2.1.bn2.running_mean",
    "layer2.1.bn2.running_var",
    "layer2.1.bn2.num_batches_tracked",
    "layer3.0.conv1.weight",
    "layer3.0.bn1.weight",
    "layer3.0.bn1.bias",
    "layer3.0.bn1.running_mean",
    "layer3.0.bn1.running_var",
    "layer3.0.bn1.num_batches_tracked",
    "layer3.0.conv2.weight",
    "layer3.0.bn2.weight",
    "layer3.0.bn2.bias",
    "layer3.0.bn2.running_mean",
    "layer3.0.bn2.running_var",
    "layer3.0.bn2.num_batches_tracked",
    "layer3.0.downsample.0.weight",
    "layer3.0.downsample.1.weight",
    "layer3.0.downsample.1.bias",
    "layer3.0.downsample.1.running_mean",
    "layer3.0.downsample.1.running_var",
    "layer3.0.downsample.1.num_batches_tracked",
    "layer3.1.conv1.weight",
    "layer3.1.bn1.weight",
    "layer3.1.bn1.bias",
    "layer3.1.bn1.running_mean",
    "layer3.1.bn1.running_var",
    "layer3.1.bn1.num_batches_tracked",
    "layer3.1.conv2.weight",
    "layer3.1.bn2.weight",
    "layer3.1.bn2.bias",
    "layer3.1.bn2.running_mean",
    "layer3.1.bn2.running_var",
    "layer3.1.bn2.num_batches_tracked",
    "layer4.0.conv1.weight",
    "layer4.0.bn1.weight",
    "layer4.0.bn1.bias",
    "layer4.0.bn1.running_mean",
    "layer4.0.bn1.running_var",
    "layer4.0.bn1.num_batches_tracked",
    "layer4.0.conv2.weight",
    "layer4.0.bn2.weight",
    "layer4.0.bn2.bias",
    "layer4.0.bn2.running_mean",
    "layer4.0.bn2.running_var",
    "layer4.0.bn2.num_batches_tracked",
    "layer4.0.downsample.0.weight",
    "layer4.0.downsample.1.weight",
    "layer4.0.downsample.1.bias",
    "layer4.0.downsample.1.running_mean",
    "layer4.0.downsample.1.running_var",
    "layer4.0.downsample.1.num_batches_tracked",
    "layer4.1.conv1.weight",
    "layer4.1.bn1.weight",
    "layer4.1.bn1.bias",
    "layer4.1.bn1.running_mean",
    "layer4.1.bn1.running_var",
    "layer4.1.bn1.num_batches_tracked",
    "layer4.1.conv2.weight",
    "layer4.1.bn2.weight",
    "layer4.1.bn2.bias",
    "layer4.1.bn2.running_mean",
    "layer4.1.bn2.running_var",
    "layer4.1.bn2.num_batches_tracked",
    "fc.weight",
    "fc.bias",
]

# Parameter counts torchvision documents for its ImageNet models (3 bands, 1000 classes).
TORCHVISION_PARAMS = {"resnet18": 11_689_512, "resnet50": 25_557_032}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_resnet18_keys_equal_torchvision() -> None:
    with_fc = ResNetEncoder("resnet18", in_channels=3, num_classes=1000)
    assert list(with_fc.state_dict()) == TORCHVISION_RESNET18_KEYS
    trunk = ResNetEncoder("resnet18", in_channels=13)
    assert list(trunk.state_dict()) == [
        k for k in TORCHVISION_RESNET18_KEYS if not k.startswith("fc.")
    ]


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_parameter_count_matches_torchvision(arch: str) -> None:
    model = ResNetEncoder(arch, in_channels=3, num_classes=1000)
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_PARAMS[arch]


@pytest.mark.parametrize(
    ("arch", "channels"),
    [("resnet18", (64, 128, 256, 512)), ("resnet50", (256, 512, 1024, 2048))],
)
def test_forward_shapes(arch: str, channels: tuple[int, ...]) -> None:
    enc = build_encoder(arch, in_channels=5).eval()
    x = torch.randn(2, 5, 64, 96)
    feats = enc.forward_features(x)
    assert enc.stage_channels == channels
    expected = [(2, c, 64 // s, 96 // s) for c, s in zip(channels, (4, 8, 16, 32), strict=True)]
    assert [tuple(f.shape) for f in feats] == expected
    pooled = enc(x)
    assert pooled.shape == (2, channels[-1])
    torch.testing.assert_close(pooled, feats[-1].mean(dim=(2, 3)))


def test_wrong_band_count_is_a_clear_error() -> None:
    enc = build_encoder("resnet18", in_channels=13)
    with pytest.raises(ValueError, match=r"\(N, 13, H, W\)"):
        enc.forward_features(torch.zeros(1, 4, 32, 32))


def test_three_band_checkpoint_loads_into_13_band_model(tmp_path) -> None:
    rgb = ResNetEncoder("resnet18", in_channels=3, num_classes=1000)
    path = tmp_path / "rgb.pt"
    torch.save(rgb.state_dict(), path)

    ms = build_encoder("resnet18", in_channels=13, init_weights=path)
    w_src = rgb.conv1.weight.detach()
    w_new = ms.conv1.weight.detach()
    assert w_new.shape == (64, 13, 7, 7)
    # smp's patch_first_conv: cyclic repetition of the 3 channels, rescaled by 3/13.
    for i in range(13):
        torch.testing.assert_close(w_new[:, i], w_src[:, i % 3] * 3 / 13)
    # Every other tensor is copied unchanged.
    src_sd, new_sd = rgb.state_dict(), ms.state_dict()
    for key in new_sd:
        if key != "conv1.weight":
            torch.testing.assert_close(new_sd[key], src_sd[key], msg=key)


def test_repeating_to_a_multiple_of_three_bands_keeps_the_response_to_equal_bands() -> None:
    rgb = ResNetEncoder("resnet18", in_channels=3)
    six = ResNetEncoder("resnet18", in_channels=6)
    load_encoder_weights(six, rgb.state_dict())
    img = torch.rand(1, 1, 32, 32)
    torch.testing.assert_close(
        six.conv1(img.expand(1, 6, 32, 32)), rgb.conv1(img.expand(1, 3, 32, 32))
    )


def test_load_report_and_fewer_bands() -> None:
    src = ResNetEncoder("resnet18", in_channels=13)
    one_band = ResNetEncoder("resnet18", in_channels=1)
    report = load_encoder_weights(one_band, src.state_dict())
    assert report.conv1_adapted == (13, 1)
    assert report.missing == [] and report.unexpected == []
    torch.testing.assert_close(one_band.conv1.weight[:, 0], src.conv1.weight.sum(dim=1))

    two_band = ResNetEncoder("resnet18", in_channels=2)
    load_encoder_weights(two_band, src.state_dict())
    w = src.conv1.weight.detach()
    torch.testing.assert_close(two_band.conv1.weight[:, 0], w[:, 0::2].sum(dim=1))
    torch.testing.assert_close(two_band.conv1.weight[:, 1], w[:, 1::2].sum(dim=1))


def test_channel_selection_takes_rgb_out_of_sentinel2() -> None:
    s2 = ResNetEncoder("resnet18", in_channels=13)
    rgb = ResNetEncoder("resnet18", in_channels=3)
    load_encoder_weights(rgb, s2.state_dict(), in_channel_indices=[3, 2, 1])
    torch.testing.assert_close(rgb.conv1.weight, s2.conv1.weight[:, [3, 2, 1]])
    with pytest.raises(ValueError, match="out of range"):
        load_encoder_weights(rgb, s2.state_dict(), in_channel_indices=[3, 2, 13])


@pytest.mark.parametrize(
    "prefix", ["module.", "encoder.", "backbone.", "model.", "module.encoder_q."]
)
def test_wrapper_prefixes_are_stripped(prefix: str) -> None:
    src = ResNetEncoder("resnet18", in_channels=4, num_classes=10)
    wrapped = {prefix + k: v for k, v in src.state_dict().items()}
    dst = ResNetEncoder("resnet18", in_channels=4)
    report = load_encoder_weights(dst, {"state_dict": wrapped, "epoch": 3})
    assert report.prefix == prefix
    assert report.missing == [] and report.unexpected == []
    torch.testing.assert_close(dst.layer4[1].bn2.running_var, src.layer4[1].bn2.running_var)


def test_moco_checkpoint_picks_the_query_encoder() -> None:
    query, key = ResNetEncoder("resnet18", 3), ResNetEncoder("resnet18", 3)
    state = {f"module.encoder_k.{k}": v for k, v in key.state_dict().items()}
    state |= {f"module.encoder_q.{k}": v for k, v in query.state_dict().items()}
    dst = ResNetEncoder("resnet18", 3)
    load_encoder_weights(dst, state)
    torch.testing.assert_close(dst.conv1.weight, query.conv1.weight)


def test_bad_checkpoints_name_the_file(tmp_path) -> None:
    enc = ResNetEncoder("resnet18", 3)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_encoder_weights(enc, tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        load_encoder_weights(enc, junk)
    r50 = ResNetEncoder("resnet50", 3)
    with pytest.raises(ValueError, match="wrong architecture"):
        load_encoder_weights(enc, r50.state_dict())


def test_adapt_first_conv_identity_when_bands_match() -> None:
    w = torch.randn(8, 4, 3, 3)
    torch.testing.assert_close(adapt_first_conv_weight(w, 4), w)
