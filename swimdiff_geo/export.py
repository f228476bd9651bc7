"""Export of trained models to self-describing ONNX (docs/export.md, docs/model-format.md).

:func:`export_model` turns a fine-tuning checkpoint (change, segmentation, classification) or a
pretrained ``encoder.pt`` (embedding) into one ONNX file that the torch-free engine runs:

- the activation is inside the graph (sigmoid for change, softmax for classes), so the output is
  probabilities;
- N, H and W are dynamic (any batch, any window size);
- the model contract (:class:`swimdiff_geo.inference.contract.ModelContract`) is written into
  ``metadata_props`` from the checkpoint: bands, scaling, classes, colours, tile size, threshold;
- ``onnx.checker`` (full check) must pass;
- parity with PyTorch is measured on real windows (the checkpoint's validation data, or
  ``data``) at two window sizes and two batch sizes, printed, and enforced (max abs difference
  <= 1e-4 in fp32);
- ``int8=True`` adds a statically quantised copy (onnxruntime QDQ, calibrated on real training
  windows) and reports its change in F1 / accuracy and in speed against fp32;
- ``compress=True`` adds a copy with int8/fp16 weights and float32 arithmetic
  (:func:`compress_weights`, how the bundled default models fit in 25 MB), reported the same way.

Exporter: torch.onnx's dynamo exporter (``torch.export``-based, the default of torch >= 2.9) with
``torch.export.Dim`` dynamic shapes; ``exporter="torchscript"`` selects the legacy exporter
(faster to run, deprecated upstream). Both give identical graphs semantically; see docs/export.md.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from .bands import SENTINEL2_L1C
from .data.change import BandScaling, RandomChangeWindows, TiledChangeWindows
from .inference.contract import ModelContract, load_model
from .inference.errors import OutputError
from .inference.outputs import OutputTransaction
from .models.encoder import ResNetEncoder, build_encoder
from .models.landcover import EmbeddingNet

EXPORTERS = ("dynamo", "torchscript")
PARITY_TOLERANCE = 1e-4
INPUT_NAME = "input"


class ExportError(ValueError):
    """The export failed a check (parity, onnx.checker) or got unusable input."""


class WithActivation(nn.Module):
    """``model`` followed by its output activation: sigmoid (change) or softmax over dim 1."""

    def __init__(self, model: nn.Module, activation: str) -> None:
        super().__init__()
        self.model = model
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        logits = self.model(x)
        return torch.sigmoid(logits) if self.activation == "sigmoid" else logits.softmax(dim=1)


@dataclass
class ExportSource:
    """What is being exported: the network (with activation), its contract and output names."""

    module: nn.Module
    contract: ModelContract
    output_names: list[str]
    data_cfg: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Loading what to export


def _is_lightning_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and "state_dict" in obj and "hyper_parameters" in obj


def _infer_arch(state: dict[str, Tensor]) -> str:
    """resnet50 blocks have a conv3; resnet18 blocks do not."""
    return "resnet50" if any(k.endswith("layer1.0.conv3.weight") for k in state) else "resnet18"


def _pretraining_metadata(path: Path, in_channels: int) -> tuple[Path, dict[str, Any]]:
    """The ``<stem>.json`` pretraining wrote beside an encoder file (``encoder.pt`` ->
    ``encoder.json``: bands, input scale, standardisation) and its content, ``{}`` if none."""
    meta_path = path.with_suffix(".json")
    if not meta_path.is_file():
        return meta_path, {}
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{meta_path}: not readable pretraining metadata ({exc})") from exc
    if not isinstance(meta, dict):
        raise ExportError(f"{meta_path}: not pretraining metadata (a JSON object expected)")
    described = meta.get("in_channels", len(meta.get("bands") or []) or in_channels)
    if described != in_channels:
        raise ExportError(
            f"{meta_path}: describes an encoder of {described} bands, but {path} takes "
            f"{in_channels}: it belongs to another encoder (move it away or fix it)"
        )
    for key in ("band_mean", "band_std"):
        values = meta.get(key)
        if values is not None and len(values) != in_channels:
            raise ExportError(
                f"{meta_path}: {key} has {len(values)} values for {in_channels} bands"
            )
    return meta_path, meta


def load_export_source(
    checkpoint: str | Path,
    embedding: bool = False,
    bands: Sequence[str] | None = None,
    input_scale: float | None = None,
    tile_size: int | None = None,
    print_fn: Callable[[str], None] = print,
) -> ExportSource:
    """Read a fine-tuning checkpoint or an encoder ``state_dict`` and prepare it for export.

    ``embedding=True`` exports only the encoder of a fine-tuning checkpoint. An encoder file is
    always exported as an embedding model. Its bands, input scale and standardisation come from
    the metadata pretraining wrote beside it (``encoder.json`` for ``encoder.pt``), so that the
    engine feeds the model what it was pretrained on; ``bands`` and ``input_scale`` override
    them, with a warning through ``print_fn`` where they disagree. Without that file the bands
    default to the 13 Sentinel-2 L1C bands (DN / 10000) when the encoder takes 13 channels,
    otherwise ``bands`` must name them, and inputs are not standardised.
    """
    from .train.finetune import load_head_checkpoint

    path = Path(checkpoint)
    if not path.is_file():
        raise ExportError(f"{path}: checkpoint not found")
    what = "a .ckpt from `swimdiff-geo finetune` or an encoder .pt"
    if path.suffix.lower() == ".onnx":
        raise ExportError(
            f"{path}: is an ONNX model already; export takes a training checkpoint ({what}); "
            "`swimdiff-geo info` describes an ONNX file"
        )
    if not zipfile.is_zipfile(path):  # torch.save has written ZIP archives since torch 1.6
        raise ExportError(f"{path}: not a torch checkpoint ({what}): not a ZIP archive")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch's own text advises weights_only=False: unsafe, not repeated
        raise ExportError(
            f"{path}: not a torch checkpoint that loads safely ({what}); torch says: "
            f"{str(exc).splitlines()[0][:200]}"
        ) from exc
    if _is_lightning_checkpoint(obj) and "model_cfg" in obj["hyper_parameters"]:
        task = load_head_checkpoint(path)
        hp = task.hparams
        fields = dict(hp.contract)
        if tile_size:
            fields["tile_size"] = tile_size
        extra = {
            "source_checkpoint": path.name,
            "task": hp.model_cfg["task"],
            "encoder_arch": hp.model_cfg.get("arch", "resnet18"),
            "freeze_encoder": bool(hp.freeze_encoder),
        }
        if not embedding:
            activation = "sigmoid" if hp.model_cfg["task"] == "change" else "softmax"
            contract = ModelContract(**fields, extra=extra)
            return ExportSource(
                WithActivation(task.model, activation).eval(),
                contract,
                ["probabilities"],
                dict(hp.data_cfg),
                extra,
            )
        encoder = task.model.encoder
        fields["num_dates"] = 1
        data_cfg = dict(hp.data_cfg)
        return _embedding_source(encoder, fields, extra, data_cfg)
    # A bare encoder state_dict (pretraining's encoder.pt) or any checkpoint holding one.
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not any(str(k).endswith("conv1.weight") for k in state):
        raise ExportError(
            f"{path}: neither a fine-tuning checkpoint nor an encoder state_dict "
            "(no conv1.weight found)"
        )
    # The stem convolution: "conv1.weight" under any wrapper prefix, not a block's conv1.
    stems = [
        v
        for k, v in state.items()
        if (str(k) == "conv1.weight" or str(k).endswith(".conv1.weight"))
        and "layer" not in str(k)
        and getattr(v, "ndim", 0) == 4
    ]
    if not stems:
        raise ExportError(f"{path}: no ResNet stem convolution (conv1.weight) found")
    conv1 = stems[0]
    in_channels = int(conv1.shape[1])
    encoder = build_encoder(_infer_arch(state), in_channels=in_channels, init_weights=state)
    meta_path, meta = _pretraining_metadata(path, in_channels)
    meta_bands = [str(b) for b in meta.get("bands") or []]
    if bands:
        band_names = list(bands)
        if meta_bands and band_names != meta_bands:
            print_fn(
                f"warning: --bands {','.join(band_names)} differs from the bands in {meta_path} "
                f"({','.join(meta_bands)}), which the encoder was pretrained on; using --bands"
            )
    elif meta_bands:
        band_names = meta_bands
    elif in_channels == len(SENTINEL2_L1C.bands):
        band_names = list(SENTINEL2_L1C.bands)
    else:
        raise ExportError(f"{path}: the encoder takes {in_channels} bands; name them with --bands")
    if len(band_names) != in_channels:
        raise ExportError(f"--bands names {len(band_names)} bands; the encoder takes {in_channels}")
    meta_scale = meta.get("input_scale")
    if input_scale is not None:
        scale = input_scale
        if meta_scale is not None and not math.isclose(scale, meta_scale, rel_tol=1e-6):
            print_fn(
                f"warning: --input-scale {scale:g} differs from {meta_path} ({meta_scale:g}, "
                "what the encoder was pretrained on); using --input-scale"
            )
    elif meta_scale is not None:
        scale = float(meta_scale)
    else:
        scale = SENTINEL2_L1C.input_scale if band_names == list(SENTINEL2_L1C.bands) else 1.0
    fields = {
        "model_type": "embedding",
        "bands": band_names,
        "num_dates": 1,
        "tile_size": tile_size or 256,
        "input_scale": scale,
        "name": f"swimdiff-geo encoder {encoder.arch}",
        "description": f"SwiMDiff-pretrained {encoder.arch} encoder from {path.name}",
    }
    if meta.get("band_mean") is not None:
        # Pretraining's band statistics are of the scaled inputs: the units check's reference.
        fields["input_band_means"] = [float(v) for v in meta["band_mean"]]
    if meta.get("input_standardized"):
        if meta.get("band_mean") is None or meta.get("band_std") is None:
            raise ExportError(f"{meta_path}: input_standardized without band_mean and band_std")
        # The encoder saw (x * input_scale - band_mean) / band_std: the engine must do the same.
        fields["standardization_mean"] = [float(v) for v in meta["band_mean"]]
        fields["standardization_std"] = [float(v) for v in meta["band_std"]]
    extra = {"source_checkpoint": path.name, "task": "embedding", "encoder_arch": encoder.arch}
    if meta:
        extra["pretraining_metadata"] = meta_path.name
    return _embedding_source(encoder, fields, extra, None)


def _embedding_source(
    encoder: ResNetEncoder,
    fields: dict[str, Any],
    extra: dict[str, Any],
    data_cfg: dict[str, Any] | None,
) -> ExportSource:
    fields = dict(fields)
    fields["model_type"] = "embedding"
    fields["num_dates"] = 1
    fields["class_names"], fields["class_colors"] = {}, {}
    fields["threshold"] = 0.5
    extra = dict(extra)
    extra.update(
        {
            "task": "embedding",
            "embedding_dim": int(encoder.stage_channels[-1]),
            "feature_stride": 32,
            "outputs": ["embedding", "feature_map"],
        }
    )
    contract = ModelContract(**fields, extra=extra)
    return ExportSource(
        EmbeddingNet(encoder).eval(), contract, ["embedding", "feature_map"], data_cfg, extra
    )


# ---------------------------------------------------------------------------------------------
# ONNX export


def read_metadata(model: onnx.ModelProto) -> dict[str, str]:
    """``model``'s ``metadata_props`` as a dict (values JSON-encoded, as the contract writes)."""
    return {p.key: p.value for p in model.metadata_props}


def write_metadata(model: onnx.ModelProto, meta: dict[str, str]) -> None:
    """Replace ``model``'s ``metadata_props`` with ``meta`` (values already JSON-encoded)."""
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def _dynamic_axes(output_names: list[str], rank2_outputs: set[str]) -> dict[str, dict[int, str]]:
    axes = {INPUT_NAME: {0: "N", 2: "H", 3: "W"}}
    for name in output_names:
        axes[name] = {0: "N"} if name in rank2_outputs else {0: "N", 2: "H", 3: "W"}
        if name == "feature_map":
            axes[name] = {0: "N", 2: "h32", 3: "w32"}
    return axes


def export_onnx(
    source: ExportSource,
    out: str | Path,
    exporter: str = "dynamo",
    opset: int = 18,
    sample_size: int = 64,
) -> Path:
    """Write ``source`` as one self-contained ONNX file with the contract's metadata."""
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, not {exporter!r}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    contract = source.contract
    contract.validate(str(out))
    # A sample window of the model's own size (within reason): small patch classifiers see
    # 16-64 px windows, and the traced shapes must admit them.
    sample_size = int(min(max(contract.tile_size, 16), sample_size))
    sample = torch.randn(2, contract.in_channels, sample_size, sample_size)
    rank2 = {"probabilities"} if contract.model_type == "classification" else set()
    rank2 |= {"embedding"}
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        # The dynamo exporter logs one warning per torchvision op it cannot register
        # (torchvision is not a dependency) and deprecation notices: not the user's concern.
        registration_log = logging.getLogger("torch.onnx._internal.exporter._registration")
        previous_level = registration_log.level
        registration_log.setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if exporter == "dynamo":
                    n = torch.export.Dim("N", min=1, max=4096)
                    h = torch.export.Dim("H", min=8, max=16384)
                    w = torch.export.Dim("W", min=8, max=16384)
                    torch.onnx.export(
                        source.module,
                        (sample,),
                        str(raw),
                        dynamo=True,
                        external_data=False,
                        input_names=[INPUT_NAME],
                        output_names=source.output_names,
                        dynamic_shapes={"x": {0: n, 2: h, 3: w}},
                        opset_version=opset,
                        verbose=False,
                    )
                else:
                    torch.onnx.export(
                        source.module,
                        (sample,),
                        str(raw),
                        dynamo=False,
                        input_names=[INPUT_NAME],
                        output_names=source.output_names,
                        dynamic_axes=_dynamic_axes(source.output_names, rank2),
                        opset_version=min(opset, 17),
                    )
        finally:
            registration_log.setLevel(previous_level)
        model = onnx.load(str(raw))
    write_metadata(model, contract.to_metadata() | {"exporter": json.dumps(exporter)})
    model.producer_name = "swimdiff-geo"
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(out))
    return out


# Water on every date is not the change a change model is for (OSCD labels urban change), but a
# river or lake whose colour changed (sediment, algae, sun glint) looks changed to the network.
# Water: green brighter than near infrared (McFeeters' NDWI > 0) and shortwave infrared below
# 5 % reflectance (water absorbs it). NDWI alone also takes dark roofs and shadows in hazy
# top-of-atmosphere images for water (a third of OSCD's Paris); their SWIR is 6-12 %.
WATER_MASK_BANDS = ("B03", "B08", "B11")  # green, near infrared, shortwave infrared 1
WATER_SWIR_MAX = 0.05  # B11 reflectance (Sentinel-2 digital number x 1e-4)
WATER_RULE = f"B03 > B08 (NDWI > 0) and B11 < {WATER_SWIR_MAX} reflectance"


def _water_mask_refusal(contract: ModelContract, source: str | Path) -> str | None:
    """Why ``contract``'s model cannot take a water mask, or None."""
    if contract.model_type != "change_detection":
        return f"{source}: a water mask is for change models, not {contract.model_type}"
    missing = [b for b in WATER_MASK_BANDS if b not in contract.bands]
    if missing:
        return f"{source}: a water mask needs Sentinel-2 bands {', '.join(missing)}"
    return None


def add_water_mask(src: str | Path, dst: str | Path) -> None:
    """Copy the Sentinel-2 change model ``src`` to ``dst`` with a water mask inside its graph:
    the change probability becomes 0 wherever every date is water, ``B03 > B08`` (NDWI > 0)
    and ``B11 < 0.05`` reflectance, computed from the model's own input with its
    standardisation undone (inputs in digital numbers = reflectance x 10,000, as Sentinel-2
    L1C/L2A and the engine's units check have them). A pixel that is water on only one date
    (land reclaimed from the sea, a new reservoir) keeps its probability. Records the rule as
    the metadata key ``water_mask``; everything else, the output name and shape included, is
    unchanged, so the engine, QGIS and any ONNX runtime run it as before."""
    model = onnx.load(str(src))
    meta = read_metadata(model)
    contract = ModelContract.from_metadata(meta, str(src))
    refusal = _water_mask_refusal(contract, src)
    if refusal:
        raise ExportError(refusal)
    if "water_mask" in meta:
        raise ExportError(f"{src}: already has a water mask")
    graph = model.graph
    probability = graph.output[0].name
    unmasked = f"{probability}_before_water_mask"
    for node in graph.node:
        node.output[:] = [unmasked if o == probability else o for o in node.output]
    channels = len(contract.bands)
    mean = contract.standardization_mean or [0.0] * channels
    std = contract.standardization_std or [1.0] * channels
    nodes, constants = [], []

    def constant(name: str, value: Any, dtype: type) -> str:
        constants.append(onnx.numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def node(op: str, inputs: list[str], output: str, **attributes: Any) -> str:
        nodes.append(onnx.helper.make_node(op, inputs, [output], **attributes))
        return output

    def band_value(date: int, band: str) -> str:
        """``(N, 1, H, W)``: the band as the engine read it (raw x input_scale)."""
        b = contract.bands.index(band)
        tag = f"water_mask_d{date}_{band}"
        c = date * channels + b
        bounds = [constant(f"{tag}_{name}", [value], np.int64)
                  for name, value in (("start", c), ("end", c + 1), ("axis", 1))]  # fmt: skip
        sliced = node("Slice", [graph.input[0].name, *bounds], f"{tag}_input")
        times_std = node("Mul", [sliced, constant(f"{tag}_std", std[b], np.float32)],
                         f"{tag}_times_std")  # fmt: skip
        return node("Add", [times_std, constant(f"{tag}_mean", mean[b], np.float32)],
                    f"{tag}_value")  # fmt: skip

    swir_max = constant("water_mask_swir_max", WATER_SWIR_MAX * 1e4 * contract.input_scale,
                        np.float32)  # fmt: skip
    water = []  # per date, bool (N, 1, H, W)
    for date in range(contract.num_dates):
        green, nir, swir = (band_value(date, band) for band in WATER_MASK_BANDS)
        water.append(node("And", [node("Greater", [green, nir], f"water_mask_d{date}_ndwi"),
                                  node("Less", [swir, swir_max], f"water_mask_d{date}_dark_swir")],
                          f"water_mask_d{date}_water"))  # fmt: skip
    every_date = water[0]
    for date in range(1, contract.num_dates):
        every_date = node("And", [every_date, water[date]], f"water_mask_to_d{date}")
    keep = node("Cast", [node("Not", [every_date], "water_mask_land")], "water_mask_keep",
                to=onnx.TensorProto.FLOAT)  # fmt: skip
    node("Mul", [unmasked, keep], probability)
    graph.node.extend(nodes)
    graph.initializer.extend(constants)
    meta["water_mask"] = json.dumps(
        {"water": WATER_RULE, "dates": "all", "effect": "change probability 0"}
    )
    write_metadata(model, meta)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(dst))


# ---------------------------------------------------------------------------------------------
# Real windows for parity, calibration and evaluation


def _raster_windows(path: Path, contract: ModelContract, count: int, size: int) -> np.ndarray:
    """Up to ``count`` scaled windows ``(n, C, size, size)`` from a GeoTIFF with C bands."""
    import rasterio

    with rasterio.open(path) as src:
        if src.count != contract.num_bands:
            raise ExportError(
                f"{path}: {src.count} bands; the model takes {contract.num_bands} "
                f"({', '.join(contract.bands)})"
            )
        h, w = src.height, src.width
        size = min(size, h, w)
        rows = np.linspace(0, h - size, num=max(1, int(np.sqrt(count))), dtype=int)
        cols = np.linspace(0, w - size, num=max(1, int(np.sqrt(count))), dtype=int)
        out = [
            src.read(window=rasterio.windows.Window(c, r, size, size)).astype(np.float32)
            for r in sorted(set(rows.tolist()))
            for c in sorted(set(cols.tolist()))
        ]
    data = np.stack(out[:count])
    return contract.scale(data)


def _oscd_windows(root: Path, contract: ModelContract, count: int, size: int) -> np.ndarray:
    from .data.oscd import OSCDCity, list_oscd_cities

    windows = []
    idx = [list(OSCDCity.bands).index(b) for b in contract.bands]
    for name in list_oscd_cities(root):
        city = OSCDCity(root, name)
        s = min(size, *city.shape)
        for date in range(1, contract.num_dates + 1) if contract.num_dates == 1 else [None]:
            if date is None:
                x = np.concatenate(
                    [city.read(1, (0, 0, s, s))[idx], city.read(2, (0, 0, s, s))[idx]]
                )
            else:
                x = city.read(date, (0, 0, s, s))[idx]
            windows.append(x)
        if len(windows) >= count:
            break
    size = min(w.shape[-1] for w in windows)
    data = np.stack([w[:, :size, :size] for w in windows[:count]])
    return contract.scale(data)


def real_windows(
    source: ExportSource,
    split: str,
    count: int,
    data: str | Path | None = None,
) -> np.ndarray:
    """Scaled real windows ``(n, D*C, T, T)`` for parity, calibration or speed measurements.

    From ``data`` when given (an OSCD folder, a change manifest, a GeoTIFF, a patch folder),
    else from the data the checkpoint was trained on (``split`` = "train" or "val").
    """
    contract = source.contract
    size = contract.tile_size
    cfg = dict(source.data_cfg or {})
    if data is not None:
        path = Path(data)
        is_raster = path.is_file() and path.suffix.lower() in (".tif", ".tiff", ".vrt")
        if is_raster and contract.num_dates == 1 and cfg.get("kind") != "raster":
            return _raster_windows(path, contract, count, size)
        if cfg:
            cfg["path"] = str(path)
        elif path.is_dir():
            return _oscd_windows(path, contract, count, size)
        else:
            raise ExportError(
                f"{path}: cannot read windows for this model from it (want a GeoTIFF with "
                f"{contract.num_bands} bands or an OSCD folder)"
            )
    if not cfg:
        raise ExportError(
            "no real data to check the export on: pass --data (a GeoTIFF with the model's bands "
            "or an OSCD folder)"
        )
    missing = Path(cfg["path"])
    if not missing.exists():
        raise ExportError(
            f"{missing}: the training data recorded in the checkpoint is not here; pass --data"
        )
    scaling = BandScaling.from_contract(contract)
    kind = cfg["kind"]
    model_data_type = source.extra.get("task")
    if kind in ("oscd", "manifest"):
        from .train.finetune import load_change_split

        scenes = load_change_split(cfg, split)
        if split == "train":
            ds = RandomChangeWindows(scenes, scaling, min(size, *scenes[0].shape), count, False)
        else:
            ds = TiledChangeWindows(scenes, scaling, size)
        xs = [ds[i][0].numpy() for i in range(min(count, len(ds)))]
        x = np.stack(xs)
        if model_data_type == "embedding":
            return x[:, : contract.num_bands]
        return x
    if kind == "raster":
        from .data.landcover import read_training_labels

        raster = read_training_labels(cfg["labels"], cfg["path"], cfg["class_field"], cfg["layer"])
        image = scaling.apply(raster.image)
        s = min(size, *image.shape[-2:])
        h, w = image.shape[-2:]
        rng = np.random.default_rng(0 if split == "val" else 1)
        out = []
        for _ in range(count):
            r, c = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
            out.append(image[:, r : r + s, c : c + s])
        return np.stack(out)
    from .data.landcover import PatchDataset
    from .train.finetune import _patch_split

    files, labels, _ = _patch_split(cfg, list(contract.class_names.values()) or None, split)
    ds = PatchDataset(files[:count], labels[:count], scaling, size)
    return np.stack([ds[i][0].numpy() for i in range(len(ds))])


# ---------------------------------------------------------------------------------------------
# Checks


def _torch_outputs(module: nn.Module, x: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        out = module(torch.from_numpy(x))
    out = out if isinstance(out, (tuple, list)) else (out,)
    return [o.numpy() for o in out]


def check_parity(
    source: ExportSource,
    onnx_path: Path,
    windows: np.ndarray,
    tolerance: float = PARITY_TOLERANCE,
    print_fn: Callable[[str], None] = print,
    name: str | Path | None = None,
) -> dict[str, Any]:
    """Compare PyTorch and onnxruntime on ``windows``, at their size, at an odd smaller size and
    with a batch of 1; raise ExportError when a difference exceeds ``tolerance``. ``name``: the
    model's name in that error (default ``onnx_path``; the export checks a temporary file).

    The criterion is ``max |torch - onnx| <= tolerance * max(1, max |torch|)``: the absolute
    difference for probabilities (which never exceed 1), and relative to the output's magnitude
    for unbounded outputs (embeddings reach tens), where fp32 accumulation error scales with it.
    """
    loaded = load_model(onnx_path, device="cpu")
    session = loaded.session
    h, w = windows.shape[-2:]
    cases = [("full windows", windows)]
    if h > 40 and w > 40 and source.contract.model_type != "classification":
        cases.append(("odd-size crop", np.ascontiguousarray(windows[:2, :, 3 : h - 2, 1 : w - 4])))
    cases.append(("single window", windows[:1]))
    results = []
    worst = 0.0
    worst_abs = 0.0
    for label, x in cases:
        ref = _torch_outputs(source.module, x)
        got = session.run(None, {loaded.input_name: x})
        shapes_ok = len(ref) == len(got) and all(
            r.shape == g.shape for r, g in zip(ref, got, strict=False)
        )
        diff = max(float(np.abs(r - g).max()) for r, g in zip(ref, got, strict=False))
        scale = max(1.0, max(float(np.abs(r).max()) for r in ref))
        results.append(
            {
                "case": label,
                "input_shape": list(x.shape),
                "max_abs_diff": diff,
                "output_scale": scale,
                "shapes_match": shapes_ok,
            }
        )
        worst = max(worst, diff / scale if shapes_ok else float("inf"))
        worst_abs = max(worst_abs, diff)
        shown = f" (outputs up to {scale:.3g})" if scale > 1 else ""
        print_fn(f"parity {label} {tuple(x.shape)}: max |torch - onnxruntime| = {diff:.2e}{shown}")
    report = {
        "max_abs_diff": worst_abs,
        "max_scaled_diff": worst,
        "tolerance": tolerance,
        "cases": results,
    }
    if not worst <= tolerance:
        raise ExportError(
            f"{name or onnx_path}: parity check failed: max difference {worst:.3e} (relative "
            f"to max(1, |output|)) > {tolerance:.0e}"
        )
    return report


def _ort_predictor(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    loaded = load_model(path, device="cpu")
    return lambda batch: loaded.session.run(None, {loaded.input_name: batch})[0]


def quantize_int8(
    source: ExportSource,
    fp32_path: Path,
    int8_path: Path,
    calibration: np.ndarray,
) -> Path:
    """Static QDQ int8 quantisation (per-channel weights), calibrated on ``calibration``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter([{INPUT_NAME: calibration[i : i + 1]} for i in range(len(calibration))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        except Exception:  # pre-processing only helps; quantise the plain model without it
            prepared = fp32_path
        quantize_static(
            str(prepared),
            str(int8_path),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
        )
    model = onnx.load(str(int8_path))
    meta = read_metadata(onnx.load(str(fp32_path)))
    write_metadata(
        model, meta | {"quantization": json.dumps("int8 static QDQ, per-channel weights")}
    )
    onnx.save(model, str(int8_path))
    return int8_path


INT8_MIN_ELEMENTS = 1_000_000  # Conv weights this large are stored as int8, the rest fp16
FP16_MIN_ELEMENTS = 4096  # smaller initializers (biases, norms) stay float32


def compress_weights(
    fp32_path: Path, out_path: Path, int8_min_elements: int = INT8_MIN_ELEMENTS
) -> Path:
    """Smaller weights, float32 arithmetic: int8 for the largest Conv weights, fp16 for others.

    A Conv weight ``w`` (C_out, C_in, kh, kw) with at least ``int8_min_elements`` values (in a
    ResNet-18 + UNet: layer4 and the first decoder block, about 70 % of the parameters) becomes
    int8 ``q`` with one symmetric scale per output channel (``max|w| / 127``) and a
    ``DequantizeLinear`` node that restores ``q * scale`` under the original name. Every other
    float32 initializer of at least 4096 values is stored as float16 with a ``Cast`` back to
    float32. Activations and arithmetic stay float32 (no calibration, and any execution provider
    runs it); onnxruntime folds the casts at load time. Rounding the deep, low-resolution layers
    to int8 costs far less than rounding the first layers, whose errors every later layer
    amplifies: measured on real windows in docs/export.md.
    """
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(fp32_path))
    graph = model.graph
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < 13:
        raise ExportError(f"{fp32_path}: weight compression needs opset >= 13, not {opset}")
    meta = read_metadata(model)
    if "quantization" in meta:
        raise ExportError(f"{fp32_path}: already quantised")
    conv_weights = {n.input[1] for n in graph.node if n.op_type == "Conv" and len(n.input) > 1}
    kept, restore = [], []
    n_int8 = n_fp16 = 0
    for init in graph.initializer:
        w = numpy_helper.to_array(init)
        if w.dtype != np.float32 or w.size < FP16_MIN_ELEMENTS:
            kept.append(init)
        elif init.name in conv_weights and w.ndim == 4 and w.size >= int8_min_elements:
            peak = np.abs(w).reshape(w.shape[0], -1).max(axis=1)
            scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
            q = np.clip(np.round(w / scale[:, None, None, None]), -127, 127).astype(np.int8)
            names = [f"{init.name}__int8", f"{init.name}__scale", f"{init.name}__zero"]
            kept += [
                numpy_helper.from_array(q, names[0]),
                numpy_helper.from_array(scale, names[1]),
                numpy_helper.from_array(np.zeros(w.shape[0], np.int8), names[2]),
            ]
            restore.append(helper.make_node("DequantizeLinear", names, [init.name], axis=0))
            n_int8 += w.size
        else:
            kept.append(numpy_helper.from_array(w.astype(np.float16), f"{init.name}__fp16"))
            restore.append(
                helper.make_node("Cast", [f"{init.name}__fp16"], [init.name], to=TensorProto.FLOAT)
            )
            n_fp16 += w.size
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = restore + list(graph.node)  # the restoring nodes first: topological order holds
    del graph.node[:]
    graph.node.extend(nodes)
    quantization = (
        f"weights only: {n_int8} int8 (per-channel symmetric, Conv weights >= "
        f"{int8_min_elements} values), {n_fp16} float16; float32 activations"
    )
    write_metadata(model, meta | {"quantization": json.dumps(quantization)})
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(out_path))
    return out_path


def _time_predictor(predict: Callable[[np.ndarray], np.ndarray], windows: np.ndarray) -> float:
    """Seconds per window, best of 3 passes over ``windows`` in batches of 4."""
    best = float("inf")
    predict(windows[:1])  # warm-up
    for _ in range(3):
        start = time.perf_counter()
        for i in range(0, len(windows), 4):
            predict(windows[i : i + 4])
        best = min(best, (time.perf_counter() - start) / len(windows))
    return best


def compare_with_fp32(
    source: ExportSource,
    fp32_path: Path,
    small_path: Path,
    data: str | Path | None,
    windows: np.ndarray,
    print_fn: Callable[[str], None] = print,
    name: str = "int8",
) -> dict[str, Any]:
    """Validation quality (F1 / accuracy) and speed of a smaller model against fp32.

    Keys are suffixed with ``name`` (``f1_int8``, ``size_mb_compressed``, ...); every kind of
    model also gets ``max_abs_diff``, the largest output difference on ``windows``.
    """
    from .train.finetune import (
        evaluate_change,
        evaluate_classes,
        load_change_split,
        load_landcover_split,
    )

    fp32, small = _ort_predictor(fp32_path), _ort_predictor(small_path)
    contract = source.contract
    cfg = dict(source.data_cfg or {})
    if data is not None and cfg:
        cfg["path"] = str(data)
    report: dict[str, Any] = {}
    scaling = BandScaling.from_contract(contract)
    if contract.model_type == "change_detection" and cfg:
        scenes = load_change_split(cfg, "val")
        q32 = evaluate_change(fp32, scenes, scaling, contract.tile_size, contract.threshold)["all"]
        q8 = evaluate_change(small, scenes, scaling, contract.tile_size, contract.threshold)["all"]
        report.update(
            {"f1_fp32": q32["f1"], f"f1_{name}": q8["f1"], "f1_change": q8["f1"] - q32["f1"]}
        )
    elif contract.model_type in ("segmentation", "classification") and cfg:
        ds = load_landcover_split(
            cfg,
            scaling,
            contract.tile_size,
            [contract.class_names[str(i)] for i in contract.class_ids()],
        )
        q32 = evaluate_classes(fp32, ds, contract.num_classes)
        q8 = evaluate_classes(small, ds, contract.num_classes)
        report.update(
            {
                "accuracy_fp32": q32["overall_accuracy"],
                f"accuracy_{name}": q8["overall_accuracy"],
                "accuracy_change": q8["overall_accuracy"] - q32["overall_accuracy"],
                "macro_f1_fp32": q32["macro_f1"],
                f"macro_f1_{name}": q8["macro_f1"],
            }
        )
    a, b = fp32(windows), small(windows)
    report["max_abs_diff"] = float(np.abs(a - b).max())
    if "f1_fp32" not in report and "accuracy_fp32" not in report:
        # embeddings: agreement of the pooled vectors
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
        report["embedding_cosine_min"] = float(cos.min())
    t32, t8 = _time_predictor(fp32, windows), _time_predictor(small, windows)
    report.update(
        {
            "seconds_per_window_fp32": t32,
            f"seconds_per_window_{name}": t8,
            "speedup": t32 / t8 if t8 > 0 else None,
            "window_shape": list(windows.shape[1:]),
            "size_mb_fp32": fp32_path.stat().st_size / 1e6,
            f"size_mb_{name}": small_path.stat().st_size / 1e6,
        }
    )
    shown = ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in report.items()
    )
    print_fn(f"{name} vs fp32: {shown}")
    return report


# ---------------------------------------------------------------------------------------------
# The whole export


def export_model(
    checkpoint: str | Path,
    out: str | Path,
    embedding: bool = False,
    int8: bool = False,
    compress: bool = False,
    data: str | Path | None = None,
    bands: Sequence[str] | None = None,
    input_scale: float | None = None,
    tile_size: int | None = None,
    exporter: str = "dynamo",
    parity_windows: int = 4,
    calibration_windows: int = 32,
    tolerance: float = PARITY_TOLERANCE,
    water_mask: bool = False,
    overwrite: bool = False,
    print_fn: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Export ``checkpoint`` to ``out`` (+ ``<stem>.int8.onnx`` with ``int8``,
    ``<stem>.compressed.onnx`` with ``compress``: see :func:`compress_weights`), check it, and
    write a report ``<stem>.export.json``; returns the report. ``water_mask`` (change models):
    every file written gets :func:`add_water_mask`, after the checks, which compare the
    network itself with PyTorch.

    All or nothing: the real windows the checks need are read before anything is exported, the
    files are written under temporary names in ``out``'s folder and renamed into place only
    after every check passed. Existing outputs (and an earlier export's ``.int8`` /
    ``.compressed`` files this export does not write) are refused unless ``overwrite``, and
    replaced only then; a failed export leaves them as they were.
    """
    out = Path(out)
    source = load_export_source(checkpoint, embedding, bands, input_scale, tile_size, print_fn)
    refusal = _water_mask_refusal(source.contract, checkpoint) if water_mask else None
    if refusal:  # before the export, not after it and the checks
        raise ExportError(refusal)
    # Missing or unusable data is an input error: find it before the (slow) export.
    windows = real_windows(source, "val", parity_windows, data)
    if int8 or compress:  # validation windows for both comparisons' speed and max difference
        speed_windows = real_windows(source, "val", max(parity_windows, 8), data)
    if int8:
        calibration = real_windows(source, "train", calibration_windows, data)
    int8_path = out.with_name(out.stem + ".int8.onnx")
    small_path = out.with_name(out.stem + ".compressed.onnx")
    report_path = out.with_name(out.stem + ".export.json")
    written = [out, report_path] + [int8_path] * int8 + [small_path] * compress
    stale = [int8_path] * (not int8) + [small_path] * (not compress)
    try:
        with OutputTransaction(
            [str(p) for p in written], overwrite, [str(p) for p in stale], [str(checkpoint)]
        ) as tx:
            temp = {p: Path(tx.temp(str(p))) for p in written}
            report = _export_checked(
                source, checkpoint, out, temp, exporter, windows, tolerance, print_fn
            )
            if int8:
                quantize_int8(source, temp[out], temp[int8_path], calibration)
                load_model(temp[int8_path])  # the quantised model must honour the contract too
                print_fn(f"int8 model: {temp[int8_path].stat().st_size / 1e6:.1f} MB")
                report["int8"] = {"onnx": str(int8_path)} | compare_with_fp32(
                    source, temp[out], temp[int8_path], data, speed_windows, print_fn
                )
            if compress:
                compress_weights(temp[out], temp[small_path])
                load_model(temp[small_path])
                print_fn(f"compressed model: {temp[small_path].stat().st_size / 1e6:.1f} MB")
                report["compressed"] = {"onnx": str(small_path)} | compare_with_fp32(
                    source, temp[out], temp[small_path], data, speed_windows, print_fn,
                    name="compressed",
                )  # fmt: skip
            if water_mask:
                for model_path in [p for p in written if p != report_path]:
                    masked = temp[model_path].with_name(temp[model_path].stem + ".masking.onnx")
                    add_water_mask(temp[model_path], masked)
                    masked.replace(temp[model_path])
                report["water_mask"] = True
                print_fn(
                    f"water mask added: change probability 0 where every date is water "
                    f"({WATER_RULE})"
                )
            temp[report_path].write_text(json.dumps(report, indent=2))
            tx.commit()
    except OutputError as exc:  # an existing output without overwrite, an unwritable folder
        raise ExportError(str(exc)) from exc
    print_fn(f"wrote {', '.join(str(p) for p in written)}")
    return report


def _export_checked(
    source: ExportSource,
    checkpoint: str | Path,
    out: Path,
    temp: dict[Path, Path],
    exporter: str,
    windows: np.ndarray,
    tolerance: float,
    print_fn: Callable[[str], None],
) -> dict[str, Any]:
    """Export ``source`` to ``out``'s temporary file and check its parity; the report."""
    started = time.monotonic()
    export_onnx(source, temp[out], exporter=exporter)
    size_mb = temp[out].stat().st_size / 1e6
    print_fn(
        f"exported {source.contract.model_type} model ({size_mb:.1f} MB, {exporter} exporter, "
        f"{time.monotonic() - started:.1f} s); onnx.checker passed"
    )
    try:
        parity = check_parity(source, temp[out], windows, tolerance, print_fn, name=out)
    except ExportError as exc:
        kept = "the existing file is kept" if out.exists() else "nothing was written"
        raise ExportError(f"{exc}; {kept}") from exc
    return {
        "checkpoint": str(checkpoint),
        "onnx": str(out),
        "exporter": exporter,
        "model_type": source.contract.model_type,
        "size_mb": size_mb,
        "parity": parity,
    }
