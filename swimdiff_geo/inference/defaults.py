"""The models that ship inside the package, so commands work without --model."""

from __future__ import annotations

from pathlib import Path

from .errors import ModelError

DEFAULT_MODELS_DIR = Path(__file__).resolve().parent.parent / "default_models"

# model_type -> file name in swimdiff_geo/default_models/ (see its README.md and docs/models.md)
DEFAULT_MODEL_FILES = {
    "change_detection": "s2_change_cva.onnx",
    "segmentation": "landsat_landcover_rules.onnx",
}


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


def default_backend():
    """The rasterio backend (imported lazily: QGIS passes its GDAL backend instead)."""
    from .io_rasterio import RasterioBackend

    return RasterioBackend()
