"""The Processing algorithms of the swimdiffgeo provider."""

from .detect_change import DetectChangeAlgorithm
from .map_landcover import MapLandcoverAlgorithm
from .model_info import ModelInfoAlgorithm

ALGORITHMS = (DetectChangeAlgorithm, MapLandcoverAlgorithm, ModelInfoAlgorithm)

__all__ = ["ALGORITHMS", "DetectChangeAlgorithm", "MapLandcoverAlgorithm", "ModelInfoAlgorithm"]
