"""The models that ship inside the package, so commands work without --model."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ModelError

DEFAULT_MODELS_DIR = Path(__file__).resolve().parent.parent / "default_models"

# model_type -> file name in swimdiff_geo/default_models/ (see its README.md and docs/models.md)
DEFAULT_MODEL_FILES = {
    "change_detection": "s2_change_swimdiff.onnx",
    "segmentation": "landsat_landcover_rules.onnx",
}


def bundled_models() -> list[str]:
    """Names (file stems) of every model in the package, e.g. ``s2_landcover_swimdiff``."""
    return sorted(p.stem for p in DEFAULT_MODELS_DIR.glob("*.onnx"))


def resolve_model_path(model: str) -> str:
    """``model`` itself when it is a file, else the bundled model of that name (with or without
    ``.onnx``), else ``model`` unchanged (loading it then reports the missing file)."""
    if os.path.isfile(model) or os.sep in model or "/" in model:
        return model
    bundled = DEFAULT_MODELS_DIR / (model if model.endswith(".onnx") else model + ".onnx")
    return str(bundled) if bundled.is_file() else model


def default_model_path(model_type: str) -> str:
    """Path of the bundled default model for ``model_type``."""
    try:
        name = DEFAULT_MODEL_FILES[model_type]
    except KeyError:
        raise ModelError(None, f"no bundled default model for {model_type}; pass --model") from None
    path = DEFAULT_MODELS_DIR / name
    if not path.is_file():
        raise ModelError(str(path), "the bundled default model is missing from this installation")
    return str(path)


def model_path(model: str | None, model_type: str) -> str:
    """The file a job runs: ``model`` (a path or a bundled model's name), else the bundled
    default for ``model_type``."""
    return resolve_model_path(model) if model else default_model_path(model_type)


def default_backend():
    """The rasterio backend (imported lazily: QGIS passes its GDAL backend instead)."""
    from .io_rasterio import RasterioBackend

    return RasterioBackend()
