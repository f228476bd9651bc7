"""ResNet-18/50 encoders for any number of input bands, with torchvision's state_dict keys.

The modules are written by hand (no torchvision/timm dependency) but mirror torchvision's
``ResNet`` attribute names exactly (``conv1``, ``bn1``, ``layer1`` .. ``layer4``, ``fc``), so
checkpoints from torchvision, timm and TorchGeo (e.g. the SSL4EO-S12 13-band ResNet weights) load
as they are. Blocks are ResNet v1.5 (the stride of a Bottleneck sits on its 3x3 convolution), as
in torchvision and timm.

Usage::

    enc = build_encoder("resnet18", in_channels=13, init_weights="ssl4eo_resnet18.pth")
    feats = enc.forward_features(x)   # 4 maps at strides 4, 8, 16, 32
    pooled = enc(x)                   # (N, 512) global-average-pooled vector
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

__all__ = [
    "ARCHITECTURES",
    "BasicBlock",
    "Bottleneck",
    "LoadReport",
    "ResNetEncoder",
    "adapt_first_conv_weight",
    "build_encoder",
    "load_encoder_weights",
]


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(
                _conv1x1(inplanes, planes * self.expansion, stride),
                nn.BatchNorm2d(planes * self.expansion),
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 - 3x3 - 1x1 bottleneck with the stride on the 3x3 convolution (ResNet v1.5, -50/101)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(
                _conv1x1(inplanes, planes * self.expansion, stride),
                nn.BatchNorm2d(planes * self.expansion),
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


# name -> (block class, number of blocks per stage)
ARCHITECTURES: dict[str, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}


class ResNetEncoder(nn.Module):
    """A torchvision-compatible ResNet trunk for ``in_channels`` input bands.

    Args:
        arch: ``"resnet18"`` or ``"resnet50"``.
        in_channels: number of input bands C.
        num_classes: when given, a ``fc`` classification layer is created (so that a full
            torchvision checkpoint round-trips); by default there is none and ``state_dict()``
            holds only the trunk.
        zero_init_residual: zero the last BN of each block (torchvision's option).

    ``forward_features(x)`` maps x (N, C, H, W) to the stage 1-4 feature maps
    ``[(N, c1, H/4, W/4), (N, c2, H/8, W/8), (N, c3, H/16, W/16), (N, c4, H/32, W/32)]``
    (sizes rounded up as the strided convolutions do); ``forward(x)`` returns the
    global-average-pooled stage-4 vector (N, c4).
    """

    def __init__(
        self,
        arch: str = "resnet18",
        in_channels: int = 13,
        num_classes: int | None = None,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ValueError(
                f"unknown encoder architecture {arch!r}; known: {sorted(ARCHITECTURES)}"
            )
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        block, layers = ARCHITECTURES[arch]
        self.arch = arch
        self.in_channels = in_channels
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self._inplanes = 64
        self.layer1 = self._make_layer(block, 64, layers[0], stride=1)
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        expansion: int = block.expansion  # type: ignore[attr-defined]
        self.stage_channels: tuple[int, int, int, int] = (
            64 * expansion,
            128 * expansion,
            256 * expansion,
            512 * expansion,
        )
        self.stem_channels = 64  # the stride-2 map of forward_pyramid
        self.out_channels = self.stage_channels[-1]
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc: nn.Linear | None = (
            nn.Linear(self.out_channels, num_classes) if num_classes is not None else None
        )
        self._init_weights(zero_init_residual)

    def _make_layer(
        self, block: type[nn.Module], planes: int, blocks: int, stride: int
    ) -> nn.Sequential:
        mods = [block(self._inplanes, planes, stride)]
        self._inplanes = planes * block.expansion  # type: ignore[attr-defined]
        mods += [block(self._inplanes, planes, 1) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def _init_weights(self, zero_init_residual: bool) -> None:
        # torchvision's initialisation, so a randomly initialised encoder trains the same way.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """x (N, C, H, W) -> the 4 stage outputs at strides 4, 8, 16, 32 (see class docstring)."""
        return self.forward_pyramid(x)[1:]

    def forward_pyramid(self, x: Tensor) -> list[Tensor]:
        """x (N, C, H, W) -> the stem map (N, 64, H/2, W/2) then the 4 stage outputs.

        The stem map (first convolution, batch norm, ReLU, before max pooling) is the stride-2
        skip connection of UNet decoders, as in segmentation_models_pytorch.
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected input of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        stem = self.relu(self.bn1(self.conv1(x)))
        f1 = self.layer1(self.maxpool(stem))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        return [stem, f1, f2, f3, f4]

    def pool(self, f4: Tensor) -> Tensor:
        """Global average pooling of the stage-4 map (N, c4, h, w) -> (N, c4)."""
        return torch.flatten(self.avgpool(f4), 1)

    def forward(self, x: Tensor) -> Tensor:
        """x (N, C, H, W) -> pooled (N, c4), or class logits (N, num_classes) if ``fc`` exists."""
        pooled = self.pool(self.forward_features(x)[-1])
        return self.fc(pooled) if self.fc is not None else pooled


def build_encoder(
    arch: str = "resnet18",
    in_channels: int = 13,
    init_weights: str | Path | Mapping[str, Tensor] | None = None,
    strict: bool = False,
    in_channel_indices: list[int] | None = None,
) -> ResNetEncoder:
    """Create a :class:`ResNetEncoder`, optionally loading a checkpoint into it.

    ``init_weights`` is a path (or an already-loaded state_dict) of a torchvision / timm /
    TorchGeo / swimdiff-geo ``encoder.pt`` or Lightning checkpoint; see
    :func:`load_encoder_weights`.
    """
    enc = ResNetEncoder(arch, in_channels)
    if init_weights is not None:
        load_encoder_weights(
            enc, init_weights, strict=strict, in_channel_indices=in_channel_indices
        )
    return enc


@dataclass
class LoadReport:
    """What :func:`load_encoder_weights` did: keys loaded, missing, ignored; conv1 adaptation."""

    source: str
    prefix: str = ""
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    conv1_adapted: tuple[int, int] | None = None  # (bands in checkpoint, bands in model)


# Wrappers whose keys we strip (DataParallel/DDP, smp/TorchGeo/Lightning/MoCo containers).
_KNOWN_PREFIXES = (
    "module.",
    "model.",
    "encoder.",
    "backbone.",
    "encoder_q.",
    "query_encoder.",
    "net.",
    "base_encoder.",
)
# Sub-modules we never want when several candidate trunks are in one checkpoint (MoCo's key
# encoder, EMA teachers): the query/online encoder is the one transferred downstream.
_DISPREFERRED = ("encoder_k", "key_encoder", "momentum", "ema", "teacher", "target")
# Top-level containers of a checkpoint file.
_CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "encoder", "net")


def _unwrap_checkpoint(obj: object, source: str) -> dict[str, Tensor]:
    """Find the tensor dict inside a checkpoint (plain state_dict, Lightning, {'model': ...})."""
    for _ in range(3):
        if isinstance(obj, Mapping) and obj and all(isinstance(v, Tensor) for v in obj.values()):
            return dict(obj)
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in _CONTAINER_KEYS if k in obj), None)
            if inner is not None:
                obj = inner
                continue
            # A mapping that mixes tensors and metadata: keep the tensors.
            tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
            if tensors:
                return tensors
        break
    raise ValueError(f"{source}: no state_dict of tensors found in this checkpoint")


def _find_trunk_prefix(keys: list[str]) -> str:
    """The key prefix under which the ResNet trunk sits ('' for a plain torchvision state_dict).

    A trunk is recognised by its stem ``<prefix>conv1.weight`` next to ``<prefix>layer1.``
    keys. Among several candidates (e.g. MoCo's query and key encoders) the one with the most
    keys wins, query/online encoders before key/EMA ones, shorter prefixes first.
    """
    keyset = set(keys)
    candidates = []
    for k in keys:
        if not k.endswith("conv1.weight"):
            continue
        prefix = k[: -len("conv1.weight")]
        if re.search(r"layer\d+\.\d+\.$", prefix):
            continue  # a block's conv1 (layer1.0.conv1.weight), not the stem
        if not any(kk.startswith(prefix + "layer1.") for kk in keyset):
            continue
        n = sum(kk.startswith(prefix) for kk in keys)
        dispreferred = any(tag in prefix.lower() for tag in _DISPREFERRED)
        candidates.append((dispreferred, -n, len(prefix), prefix))
    if not candidates:
        # Fall back to stripping known wrapper prefixes.
        for p in _KNOWN_PREFIXES:
            if any(k.startswith(p) for k in keys):
                return p
        return ""
    return sorted(candidates)[0][3]


def adapt_first_conv_weight(
    weight: Tensor, new_in_channels: int, in_channel_indices: list[int] | None = None
) -> Tensor:
    """Adapt a first-convolution weight (O, C_src, k, k) to ``new_in_channels`` input bands.

    - ``in_channel_indices`` given: pick those checkpoint channels in that order (exact, no
      rescaling), e.g. ``[3, 2, 1]`` takes R, G, B out of a 13-band Sentinel-2 checkpoint.
    - fewer bands than the checkpoint (e.g. 3 -> 1): checkpoint channel j is summed into model
      channel ``j % new_in`` (for one band this is segmentation_models_pytorch's sum).
    - more bands (e.g. 3 -> 13): checkpoint channels are repeated cyclically and the weight is
      rescaled by ``C_src / new_in`` (segmentation_models_pytorch's ``patch_first_conv``).

    The summing rule, and the repeating rule when ``new_in`` is a multiple of ``C_src``, keep the
    sum of the weights over input channels, so an image whose bands are all equal produces the
    same first activation as before; otherwise it is preserved approximately.
    """
    out_ch, src_in = weight.shape[:2]
    if in_channel_indices is not None:
        if len(in_channel_indices) != new_in_channels:
            raise ValueError(
                f"in_channel_indices has {len(in_channel_indices)} entries, the model has "
                f"{new_in_channels} input bands"
            )
        bad = [i for i in in_channel_indices if not 0 <= i < src_in]
        if bad:
            raise ValueError(f"in_channel_indices {bad} out of range for {src_in} checkpoint bands")
        return weight[:, in_channel_indices].clone()
    if new_in_channels == src_in:
        return weight.clone()
    new = torch.zeros((out_ch, new_in_channels, *weight.shape[2:]), dtype=weight.dtype)
    if new_in_channels < src_in:
        for j in range(src_in):
            new[:, j % new_in_channels] += weight[:, j]
        return new
    for i in range(new_in_channels):
        new[:, i] = weight[:, i % src_in]
    return new * (src_in / new_in_channels)


def load_encoder_weights(
    encoder: ResNetEncoder,
    weights: str | Path | Mapping[str, Tensor],
    strict: bool = False,
    in_channel_indices: list[int] | None = None,
) -> LoadReport:
    """Load a torchvision / timm / TorchGeo / swimdiff-geo checkpoint into ``encoder``.

    Accepts a path (``.pt``/``.pth``/``.ckpt``; Lightning ``state_dict`` containers included) or a
    state_dict. Wrapper prefixes (``module.``, ``encoder.``, ``backbone.``, ``model.``, MoCo's
    ``encoder_q.``, ...) are stripped; the classifier ``fc.*`` is ignored unless the encoder has
    one; ``conv1.weight`` is adapted with :func:`adapt_first_conv_weight` when the checkpoint has a
    different number of bands. Shape mismatches elsewhere raise. Missing and unexpected keys are
    logged and returned in the :class:`LoadReport`; ``strict=True`` raises on missing keys.
    """
    source = str(weights) if isinstance(weights, (str, Path)) else "state_dict"
    if isinstance(weights, (str, Path)):
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"encoder weights not found: {path}")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle error, not a torch file, non-tensor objects
            raise ValueError(f"{path}: cannot read as a torch checkpoint ({exc})") from exc
    else:
        obj = weights
    state = _unwrap_checkpoint(obj, source)
    prefix = _find_trunk_prefix(list(state))
    stripped = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}

    own = encoder.state_dict()
    report = LoadReport(source=source, prefix=prefix)
    to_load: dict[str, Tensor] = {}
    for key, value in stripped.items():
        if key not in own:
            if not key.startswith("fc."):
                report.unexpected.append(key)
            continue
        if key == "conv1.weight" and value.shape[1] != own[key].shape[1]:
            value = adapt_first_conv_weight(value, own[key].shape[1], in_channel_indices)
            report.conv1_adapted = (int(stripped[key].shape[1]), int(own[key].shape[1]))
        elif key == "conv1.weight" and in_channel_indices is not None:
            value = adapt_first_conv_weight(value, own[key].shape[1], in_channel_indices)
        if value.shape != own[key].shape:
            raise ValueError(
                f"{source}: {prefix}{key} has shape {tuple(value.shape)}, the "
                f"{encoder.arch} encoder expects {tuple(own[key].shape)} (wrong architecture?)"
            )
        to_load[key] = value
    report.loaded = sorted(to_load)
    report.missing = [k for k in own if k not in to_load]
    if not to_load:
        raise ValueError(
            f"{source}: none of its keys match a {encoder.arch} encoder "
            f"(first keys: {list(state)[:5]})"
        )
    if strict and report.missing:
        raise ValueError(f"{source}: missing encoder keys {report.missing[:10]}")
    encoder.load_state_dict(to_load, strict=False)
    if report.missing:
        logger.warning(
            "%s: %d encoder keys not in checkpoint: %s",
            source,
            len(report.missing),
            report.missing[:10],
        )
    if report.unexpected:
        logger.warning(
            "%s: ignored %d unexpected keys: %s",
            source,
            len(report.unexpected),
            report.unexpected[:10],
        )
    if report.conv1_adapted:
        logger.info("%s: conv1 adapted from %d to %d bands", source, *report.conv1_adapted)
    return report
