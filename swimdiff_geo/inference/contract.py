"""The model contract: what an ONNX file must hold to run in the engine (docs/model-format.md).

One float32 input ``(N, D*C, H, W)`` (D dates stacked along channels), one output:
``(N, 1, H, W)`` change probability, ``(N, K, H, W)`` class probabilities, ``(N, K)`` patch class
probabilities, or (embedding models) ``(N, E)`` pooled vectors. Metadata lives in the ONNX
``metadata_props`` with JSON-encoded values; key names follow the Deepness QGIS plugin where it
has one.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelError

FORMAT_VERSION = 1
MODEL_TYPES = ("change_detection", "segmentation", "classification", "embedding")
NODATA_POLICIES = ("declared", "declared_or_zero")
REQUIRED_KEYS = ("model_type", "format_version", "bands", "num_dates", "tile_size")


@dataclass
class ModelContract:
    """The metadata of a model, decoded and validated.

    Units: ``resolution`` in cm per pixel (Deepness convention), ``tiles_overlap`` in percent of
    the tile size, ``tile_size`` in pixels. Scaling applied to raw digital numbers ``x`` of band
    ``b``: ``(x * input_scale - standardization_mean[b]) / standardization_std[b]``.
    """

    model_type: str
    bands: list[str]
    num_dates: int
    tile_size: int
    format_version: int = FORMAT_VERSION
    input_scale: float = 1.0
    standardization_mean: list[float] = field(default_factory=list)
    standardization_std: list[float] = field(default_factory=list)
    input_band_means: list[float] = field(default_factory=list)  # of the training inputs
    tiles_overlap: float = 25.0
    resolution: float | None = None
    threshold: float = 0.5
    class_names: dict[str, str] = field(default_factory=dict)
    class_colors: dict[str, str] = field(default_factory=dict)  # id -> "#rrggbb"
    nodata_policy: str = "declared"
    name: str = ""
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_bands(self) -> int:
        return len(self.bands)

    @property
    def in_channels(self) -> int:
        return self.num_bands * self.num_dates

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_ids(self) -> list[int]:
        return sorted(int(k) for k in self.class_names)

    def scale(self, data: np.ndarray) -> np.ndarray:
        """Scale raw digital numbers ``(..., C, H, W)`` in place (per-band over axis -3)."""
        data *= np.float32(self.input_scale)
        if self.standardization_mean:
            mean = np.asarray(self.standardization_mean, np.float32)[:, None, None]
            std = np.asarray(self.standardization_std, np.float32)[:, None, None]
            reps = data.shape[-3] // len(mean)
            data -= np.tile(mean, (reps, 1, 1))
            data /= np.tile(std, (reps, 1, 1))
        return data

    def to_metadata(self) -> dict[str, str]:
        """JSON-encode every field for ``onnx.ModelProto.metadata_props``."""
        out = {k: json.dumps(v) for k, v in asdict(self).items() if k != "extra"}
        out.update({k: json.dumps(v) for k, v in self.extra.items()})
        return out

    @classmethod
    def from_metadata(cls, meta: dict[str, str], source: str = "model") -> ModelContract:
        """Decode and validate metadata; ModelError names the bad key."""
        decoded: dict[str, Any] = {}
        for key, raw in meta.items():
            try:
                decoded[key] = json.loads(raw)
            except (TypeError, ValueError):
                decoded[key] = raw  # Deepness writes some plain strings
        missing = [k for k in REQUIRED_KEYS if k not in decoded]
        if missing:
            raise ModelError(
                source,
                f"not a swimdiff-geo model: metadata key(s) {', '.join(missing)} missing "
                "(see docs/model-format.md)",
            )
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        kwargs = {k: v for k, v in decoded.items() if k in known}
        extra = {k: v for k, v in decoded.items() if k not in known}
        try:
            contract = cls(**kwargs, extra=extra)
        except TypeError as exc:  # pragma: no cover - dataclass signature mismatch
            raise ModelError(source, f"bad metadata: {exc}") from exc
        contract.validate(source)
        return contract

    def validate(self, source: str = "model") -> None:
        def bad(key: str, why: str) -> ModelError:
            return ModelError(source, f"metadata key '{key}' {why}")

        if self.format_version != FORMAT_VERSION:
            raise bad(
                "format_version", f"is {self.format_version!r}; this engine reads {FORMAT_VERSION}"
            )
        if self.model_type not in MODEL_TYPES:
            raise bad(
                "model_type", f"is {self.model_type!r}; expected one of {', '.join(MODEL_TYPES)}"
            )
        if (
            not isinstance(self.bands, list)
            or not self.bands
            or not all(isinstance(b, str) for b in self.bands)
        ):
            raise bad("bands", "must be a non-empty JSON list of band names")
        if not isinstance(self.num_dates, int) or self.num_dates < 1:
            raise bad("num_dates", "must be a positive integer")
        if self.model_type == "change_detection" and self.num_dates != 2:
            raise bad("num_dates", f"is {self.num_dates}; a change_detection model takes 2 dates")
        if not isinstance(self.tile_size, int) or self.tile_size < 8:
            raise bad("tile_size", "must be an integer >= 8")
        if not (0 <= float(self.tiles_overlap) < 100):
            raise bad("tiles_overlap", "must be a percentage in [0, 100)")
        for key in ("standardization_mean", "standardization_std", "input_band_means"):
            values = getattr(self, key)
            if values and len(values) != self.num_bands:
                raise bad(key, f"has {len(values)} values for {self.num_bands} bands")
        if bool(self.standardization_mean) != bool(self.standardization_std):
            raise bad("standardization_std", "must be given together with standardization_mean")
        if any(float(s) <= 0 for s in self.standardization_std):
            raise bad("standardization_std", "must be positive")
        if not (0.0 <= float(self.threshold) <= 1.0):
            raise bad("threshold", "must lie in [0, 1]")
        if self.model_type in ("segmentation", "classification") and self.num_classes < 2:
            raise bad("class_names", "must name at least 2 classes for this model_type")
        if self.nodata_policy not in NODATA_POLICIES:
            raise bad(
                "nodata_policy", f"is {self.nodata_policy!r}; expected one of {NODATA_POLICIES}"
            )


@dataclass
class LoadedModel:
    """An onnxruntime session with its contract and the provider it runs on."""

    path: str
    contract: ModelContract
    session: Any  # onnxruntime.InferenceSession
    input_name: str
    providers: list[str]

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]

    def describe(self) -> dict[str, Any]:
        """The model's metadata for people (``swimdiff-geo info``, QGIS's Model information):
        keys name their units (``resolution_cm``, ``tiles_overlap_percent``)."""
        c = self.contract
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        return {
            "path": self.path,
            "name": c.name,
            "description": c.description,
            "model_type": c.model_type,
            "format_version": c.format_version,
            "bands": c.bands,
            "num_dates": c.num_dates,
            "input": {"name": inp.name, "shape": inp.shape},
            "output": {"name": out.name, "shape": out.shape},
            "input_scale": c.input_scale,
            "standardization_mean": c.standardization_mean,
            "standardization_std": c.standardization_std,
            "tile_size": c.tile_size,
            "tiles_overlap_percent": c.tiles_overlap,
            "resolution_cm": c.resolution,
            "threshold": c.threshold,
            "class_names": c.class_names,
            "class_colors": c.class_colors,
            "nodata_policy": c.nodata_policy,
            "providers": list(self.providers),
            **({"extra": c.extra} if c.extra else {}),
        }


def _providers(device: str) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise ModelError(
                None,
                "--device cuda: onnxruntime has no CUDA execution provider here "
                f"(available: {', '.join(available)}); install the 'gpu' extra "
                "(onnxruntime-gpu) on a machine with an NVIDIA GPU, or use --device cpu",
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "auto":
        return (
            ["CUDAExecutionProvider", "CPUExecutionProvider"]
            if "CUDAExecutionProvider" in available
            else ["CPUExecutionProvider"]
        )
    raise ValueError(f"device must be auto, cpu or cuda, not {device!r}")


def read_contract(path: str | Path) -> ModelContract:
    """Read and validate only the metadata (cheap: no session)."""
    return load_model(path, check_session=False).contract


def load_model(
    path: str | Path,
    device: str = "cpu",
    threads: int = 0,
    expected_type: str | tuple[str, ...] | None = None,
    check_session: bool = True,
) -> LoadedModel:
    """Open an ONNX model, validate its contract and its input/output shapes.

    ``threads`` = 0 lets onnxruntime choose (one per physical core). Raises ModelError naming the
    file and the problem.
    """
    import onnxruntime as ort

    path = str(path)
    if not Path(path).is_file():
        raise ModelError(path, "model file not found")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(path, options, providers=_providers(device))
    except ModelError:
        raise
    except Exception as exc:  # onnxruntime raises its own exception types
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(path, _not_onnx_problem(path, first_line)) from exc
    meta = session.get_modelmeta().custom_metadata_map
    contract = ModelContract.from_metadata(dict(meta), source=path)
    if expected_type is not None:
        allowed = (expected_type,) if isinstance(expected_type, str) else expected_type
        if contract.model_type not in allowed:
            raise ModelError(
                path,
                f"is a {contract.model_type} model; this command needs {' or '.join(allowed)}",
            )
    _check_io(session, contract, path)
    return LoadedModel(
        path, contract, session, session.get_inputs()[0].name, session.get_providers()
    )


def _not_onnx_problem(path: str, reason: str) -> str:
    """Why ``path`` did not load, with the way out when it is a training checkpoint."""
    # torch.save writes ZIP archives: a .ckpt/.pt/.pth or any ZIP is a checkpoint, not a model.
    suffix = Path(path).suffix.lower()
    if suffix in (".ckpt", ".pt", ".pth") or zipfile.is_zipfile(path):
        return (
            "is not an ONNX model but a PyTorch training checkpoint; export it to ONNX first: "
            f"swimdiff-geo export {path} -o model.onnx"
        )
    return f"not a readable ONNX model ({reason})"


def _check_io(session: Any, contract: ModelContract, path: str) -> None:
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1:
        raise ModelError(path, f"has {len(inputs)} inputs; the contract wants exactly one")
    if len(outputs) < 1:
        raise ModelError(path, "has no output")
    inp, out = inputs[0], outputs[0]
    if inp.type != "tensor(float)":
        raise ModelError(path, f"input '{inp.name}' is {inp.type}; the contract wants float32")
    if len(inp.shape) != 4:
        raise ModelError(path, f"input '{inp.name}' has shape {inp.shape}; want (N, D*C, H, W)")
    channels = inp.shape[1]
    if isinstance(channels, int) and channels != contract.in_channels:
        raise ModelError(
            path,
            f"input '{inp.name}' has {channels} channels but metadata says "
            f"{contract.num_dates} date(s) x {contract.num_bands} bands = {contract.in_channels}",
        )
    want_rank = {"change_detection": 4, "segmentation": 4, "classification": 2, "embedding": 2}
    rank = want_rank[contract.model_type]
    if len(out.shape) != rank:
        raise ModelError(
            path,
            f"output '{out.name}' has shape {out.shape}; a {contract.model_type} model "
            f"must output rank {rank}",
        )
    k = out.shape[1]
    if contract.model_type == "change_detection" and isinstance(k, int) and k != 1:
        raise ModelError(path, f"output '{out.name}' has {k} channels; want 1 (change probability)")
    if contract.model_type in ("segmentation", "classification") and isinstance(k, int):
        if k != contract.num_classes:
            raise ModelError(
                path,
                f"output '{out.name}' has {k} classes but class_names lists {contract.num_classes}",
            )
