"""The Processing algorithms of the swimdiffgeo provider."""

from .detect_change import DetectChangeAlgorithm
from .map_landcover import MapLandcoverAlgorithm
from .model_info import ModelInfoAlgorithm
from .stack_bands import StackBandsAlgorithm

ALGORITHMS = (DetectChangeAlgorithm, MapLandcoverAlgorithm, ModelInfoAlgorithm, StackBandsAlgorithm)

__all__ = [
    "ALGORITHMS",
    "DetectChangeAlgorithm",
    "MapLandcoverAlgorithm",
    "ModelInfoAlgorithm",
    "StackBandsAlgorithm",
]
