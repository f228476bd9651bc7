"""Siamese change-detection network and the UNet-style decoder shared with the land-cover head.

The change network runs one shared :class:`~swimdiff_geo.models.encoder.ResNetEncoder` on both
dates, takes the absolute difference of their features at the stem (stride 2) and at each ResNet
stage (strides 4, 8, 16, 32) and decodes them with a UNet-style decoder, which also sees the
absolute difference of the inputs at full resolution, to a change logit at input resolution.
Any input size works: every upsampling goes to the exact size of the skip feature (and finally
of the input), so H and W need not be multiples of 32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .encoder import ResNetEncoder, build_encoder

DEFAULT_DECODER_CHANNELS = (256, 128, 64, 32, 16)


class ConvBlock(nn.Sequential):
    """Two 3x3 convolutions with batch norm and ReLU (the classic UNet block)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class UNetDecoder(nn.Module):
    """Decode the encoder pyramid to a map at input resolution, with a skip at every stride.

    Args:
        stage_channels: channels of the stage maps (c1, c2, c3, c4) at strides 4, 8, 16, 32.
        out_channels: channels of the final 1x1 convolution (1 for change, K for classes).
        decoder_channels: output channels of the 5 decoder blocks, at strides 16, 8, 4, 2, 1.
        stem_channels: channels of the stride-2 skip (the encoder's stem map; 64 for ResNets).
        input_channels: channels of the stride-1 skip (the input itself, or for change the
            difference of the two dates' inputs). Fine detail reaches the output through these
            two skips: changed buildings in 10 m imagery are often a few pixels across.

    ``forward(pyramid, full_res)``: ``pyramid`` = ``[(N, stem, H/2, W/2), (N, c1, H/4, W/4), ...,
    (N, c4, H/32, W/32)]``, ``full_res`` = ``(N, input_channels, H, W)``; returns
    ``(N, out_channels, H, W)`` logits. Sizes are rounded up as the strided convolutions do, so
    H and W need not be multiples of 32.
    """

    def __init__(
        self,
        stage_channels: tuple[int, int, int, int] | list[int],
        out_channels: int,
        decoder_channels: tuple[int, ...] | list[int] = DEFAULT_DECODER_CHANNELS,
        stem_channels: int = 64,
        input_channels: int = 0,
    ) -> None:
        super().__init__()
        if len(decoder_channels) != 5:
            raise ValueError(f"decoder_channels needs 5 values, got {list(decoder_channels)}")
        c1, c2, c3, c4 = stage_channels
        d16, d8, d4, d2, d1 = decoder_channels
        self.block16 = ConvBlock(c4 + c3, d16)
        self.block8 = ConvBlock(d16 + c2, d8)
        self.block4 = ConvBlock(d8 + c1, d4)
        self.block2 = ConvBlock(d4 + stem_channels, d2)
        self.block1 = ConvBlock(d2 + input_channels, d1)
        self.head = nn.Conv2d(d1, out_channels, kernel_size=1)

    @staticmethod
    def _up(x: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def forward(self, pyramid: list[Tensor], full_res: Tensor) -> Tensor:
        stem, f1, f2, f3, f4 = pyramid
        x = self.block16(torch.cat([self._up(f4, f3.shape[-2:]), f3], dim=1))
        x = self.block8(torch.cat([self._up(x, f2.shape[-2:]), f2], dim=1))
        x = self.block4(torch.cat([self._up(x, f1.shape[-2:]), f1], dim=1))
        x = self.block2(torch.cat([self._up(x, stem.shape[-2:]), stem], dim=1))
        x = self.block1(torch.cat([self._up(x, full_res.shape[-2:]), full_res], dim=1))
        return self.head(x)


class SiameseChangeNet(nn.Module):
    """Siamese ResNet + UNet decoder for bi-temporal change detection.

    Args:
        encoder: the shared encoder for both dates (``in_channels`` = C bands of one date).
        decoder_channels: see :class:`UNetDecoder`.

    ``forward(x)``: x ``(N, 2C, H, W)`` = date A's C bands then date B's, scaled as the model
    metadata says; returns change logits ``(N, 1, H, W)`` (apply a sigmoid for probabilities).
    """

    def __init__(
        self,
        encoder: ResNetEncoder,
        decoder_channels: tuple[int, ...] | list[int] = DEFAULT_DECODER_CHANNELS,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.bands_per_date = encoder.in_channels
        self.decoder = UNetDecoder(
            encoder.stage_channels,
            1,
            decoder_channels,
            stem_channels=encoder.stem_channels,
            input_channels=encoder.in_channels,
        )

    def forward(self, x: Tensor) -> Tensor:
        c = self.bands_per_date
        n = x.shape[0]
        a, b = x[:, :c], x[:, c:]
        # One encoder pass over both dates stacked on the batch axis: shared weights, and batch
        # norm sees both dates together (as in training).
        pyramid = self.encoder.forward_pyramid(torch.cat([a, b], dim=0))
        diffs = [torch.abs(f[:n] - f[n:]) for f in pyramid]
        return self.decoder(diffs, torch.abs(a - b))


def build_change_model(
    arch: str = "resnet18",
    bands_per_date: int = 13,
    encoder_weights: str | None = None,
    decoder_channels: tuple[int, ...] | list[int] = DEFAULT_DECODER_CHANNELS,
) -> SiameseChangeNet:
    """A :class:`SiameseChangeNet` with a new or pretrained (``encoder_weights``) encoder."""
    encoder = build_encoder(arch, in_channels=bands_per_date, init_weights=encoder_weights)
    return SiameseChangeNet(encoder, decoder_channels)
