"""Land-cover heads on the ResNet encoder: per-pixel segmentation and per-patch classification."""

from __future__ import annotations

from torch import Tensor, nn

from .change import DEFAULT_DECODER_CHANNELS, UNetDecoder
from .encoder import ResNetEncoder, build_encoder


class SegmentationNet(nn.Module):
    """ResNet encoder + UNet decoder: x ``(N, C, H, W)`` -> class logits ``(N, K, H, W)``."""

    def __init__(
        self,
        encoder: ResNetEncoder,
        num_classes: int,
        decoder_channels: tuple[int, ...] | list[int] = DEFAULT_DECODER_CHANNELS,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a segmentation model needs >= 2 classes, got {num_classes}")
        self.encoder = encoder
        self.num_classes = num_classes
        self.decoder = UNetDecoder(
            encoder.stage_channels,
            num_classes,
            decoder_channels,
            stem_channels=encoder.stem_channels,
            input_channels=encoder.in_channels,
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder.forward_pyramid(x), x)


class PatchClassifier(nn.Module):
    """ResNet encoder + global average pooling + head: x ``(N, C, H, W)`` -> logits ``(N, K)``.

    ``head="linear"`` is the linear probe of the self-supervised literature (used with a frozen
    encoder); ``head="mlp"`` adds one hidden layer of 256 units with dropout.
    """

    def __init__(self, encoder: ResNetEncoder, num_classes: int, head: str = "linear") -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a classifier needs >= 2 classes, got {num_classes}")
        self.encoder = encoder
        self.num_classes = num_classes
        width = encoder.stage_channels[-1]
        if head == "linear":
            self.head: nn.Module = nn.Linear(width, num_classes)
        elif head == "mlp":
            self.head = nn.Sequential(
                nn.Linear(width, 256),
                nn.ReLU(inplace=True),
                nn.Dropout(0.2),
                nn.Linear(256, num_classes),
            )
        else:
            raise ValueError(f"head must be 'linear' or 'mlp', not {head!r}")

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder.pool(self.encoder.forward_features(x)[-1]))


class EmbeddingNet(nn.Module):
    """The encoder alone, for export: x ``(N, C, H, W)`` -> ``(pooled (N, E), map (N, E, h, w))``.

    ``pooled`` is the global average of the stride-32 stage-4 map ``map`` (h = ceil(H/32)).
    """

    def __init__(self, encoder: ResNetEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        fmap = self.encoder.forward_features(x)[-1]
        return self.encoder.pool(fmap), fmap


def build_segmentation_model(
    num_classes: int,
    arch: str = "resnet18",
    in_channels: int = 13,
    encoder_weights: str | None = None,
    decoder_channels: tuple[int, ...] | list[int] = DEFAULT_DECODER_CHANNELS,
) -> SegmentationNet:
    encoder = build_encoder(arch, in_channels=in_channels, init_weights=encoder_weights)
    return SegmentationNet(encoder, num_classes, decoder_channels)


def build_patch_classifier(
    num_classes: int,
    arch: str = "resnet18",
    in_channels: int = 13,
    encoder_weights: str | None = None,
    head: str = "linear",
) -> PatchClassifier:
    encoder = build_encoder(arch, in_channels=in_channels, init_weights=encoder_weights)
    return PatchClassifier(encoder, num_classes, head)
