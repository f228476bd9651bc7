"""The torch-free inference engine: numpy + onnxruntime only at import time.

Raster I/O goes through a backend (:mod:`.io_rasterio` for the library and CLI, :mod:`.io_gdal`
for QGIS), imported lazily so that importing this package never pulls in rasterio or osgeo.
"""

from .contract import ModelContract, load_model, read_contract
from .errors import CancelledError, InputError, ModelError, OutputError, SwimdiffError

__all__ = [
    "CancelledError",
    "InputError",
    "ModelContract",
    "ModelError",
    "OutputError",
    "SwimdiffError",
    "load_model",
    "read_contract",
]
