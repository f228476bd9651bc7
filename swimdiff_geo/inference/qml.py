"""QGIS layer styles (QML) for the engine's outputs, as text: no QGIS needed to write them.

The engine writes each styled raster's style next to it as ``<name>.qml``, the file QGIS applies
by default whenever it opens ``<name>.tif``: CLI outputs open styled in QGIS, and the QGIS plugin
uses the very same files.
"""

from __future__ import annotations

import os
from xml.sax.saxutils import quoteattr

# The pieces of QGIS's raster style XML that the styles below share.
_QML_HEAD = """<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.22.0" styleCategories="Symbology">
  <pipe>
"""
_NEAREST_RESAMPLING = """    <provider>
      <resampling enabled="false" zoomedInResamplingMethod="nearestNeighbour" zoomedOutResamplingMethod="nearestNeighbour" maxOversampling="2"/>
    </provider>
"""  # pixels drawn as they are, never interpolated on screen
_MIN_MAX_ORIGIN = """      <rasterTransparency/>
      <minMaxOrigin>
        <limits>None</limits>
        <extent>WholeRaster</extent>
        <statAccuracy>Estimated</statAccuracy>
        <cumulativeCutLower>0.02</cumulativeCutLower>
        <cumulativeCutUpper>0.98</cumulativeCutUpper>
        <stdDevFactor>2</stdDevFactor>
      </minMaxOrigin>
"""
_QML_TAIL = """    </rasterrenderer>
    <brightnesscontrast contrast="0" gamma="1" brightness="0"/>
    <huesaturation colorizeOn="0" saturation="0" grayscaleMode="0" colorizeRed="255" colorizeGreen="128" colorizeBlue="128" invertColors="0" colorizeStrength="100"/>
    <rasterresampler maxOversampling="2"/>
    <resamplingStage>resamplingFilter</resamplingStage>
  </pipe>
  <blendMode>0</blendMode>
</qgis>
"""

CHANGE_MASK_QML = (
    _QML_HEAD
    + _NEAREST_RESAMPLING
    + """    <rasterrenderer opacity="1" type="paletted" nodataColor="" alphaBand="-1" band="1">
"""
    + _MIN_MAX_ORIGIN
    + """      <colorPalette>
        <paletteEntry color="#000000" value="0" alpha="0" label="no change"/>
        <paletteEntry color="#e61e1e" value="1" alpha="255" label="change"/>
      </colorPalette>
"""
    + _QML_TAIL
)

CHANGE_PROBABILITY_QML = (
    _QML_HEAD
    + _NEAREST_RESAMPLING
    + """    <rasterrenderer opacity="1" type="singlebandpseudocolor" nodataColor="" alphaBand="-1" classificationMin="0" classificationMax="1" band="1">
"""
    + _MIN_MAX_ORIGIN
    + """      <rastershader>
        <colorrampshader clip="0" labelPrecision="2" classificationMode="1" maximumValue="1" colorRampType="INTERPOLATED" minimumValue="0">
          <item color="#000004" value="0" alpha="255" label="0.00 (no change)"/>
          <item color="#3b0f70" value="0.2" alpha="255" label="0.20"/>
          <item color="#8c2981" value="0.4" alpha="255" label="0.40"/>
          <item color="#de4968" value="0.6" alpha="255" label="0.60"/>
          <item color="#fe9f6d" value="0.8" alpha="255" label="0.80"/>
          <item color="#fcfdbf" value="1" alpha="255" label="1.00 (change)"/>
        </colorrampshader>
      </rastershader>
"""
    + _QML_TAIL
)

# Used for classes the model gives no colour for (the "tab10" palette).
FALLBACK_COLORS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip

_PALETTED_QML = """<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.22.0" styleCategories="Symbology">
  <pipe>
    <rasterrenderer opacity="1" type="paletted" nodataColor="" alphaBand="-1" band="1">
      <rasterTransparency/>
      <colorPalette>
{entries}
      </colorPalette>
    </rasterrenderer>
    <brightnesscontrast contrast="0" gamma="1" brightness="0"/>
    <rasterresampler maxOversampling="2"/>
  </pipe>
  <blendMode>0</blendMode>
</qgis>
"""


def landcover_qml(class_names: dict[str, str], class_colors: dict[str, str]) -> str:
    """A paletted-renderer QML: one entry per class id with the model's colour and name.

    ``class_names`` / ``class_colors`` are the model metadata's dicts (id as a string ->
    name / ``"#rrggbb"``); classes without a colour get one from :data:`FALLBACK_COLORS`.
    """
    entries = []
    for index, class_id in enumerate(sorted(class_names, key=int)):
        color = class_colors.get(class_id) or FALLBACK_COLORS[index % len(FALLBACK_COLORS)]
        entries.append(
            f"        <paletteEntry value={quoteattr(str(int(class_id)))} "
            f'color={quoteattr(color.lower())} alpha="255" '
            f"label={quoteattr(str(class_names[class_id]))}/>"
        )
    return _PALETTED_QML.format(entries="\n".join(entries))


_MULTIBAND_QML = (
    _QML_HEAD
    + """    <rasterrenderer opacity="1" type="multibandcolor" nodataColor="" alphaBand="-1" redBand="{red}" greenBand="{green}" blueBand="{blue}">
"""
    + _MIN_MAX_ORIGIN
    + """{enhancements}
"""
    + _QML_TAIL
)


def rgb_qml(bands: tuple[int, int, int], ranges: list[tuple[float, float]]) -> str:
    """A multiband-colour QML: ``bands`` (1-based red, green, blue) each stretched linearly
    from its ``ranges`` entry's minimum to its maximum (e.g. the 2nd and 98th percentiles)."""
    enhancements = "\n".join(
        f"      <{colour}ContrastEnhancement>\n"
        f"        <minValue>{low:g}</minValue>\n"
        f"        <maxValue>{high:g}</maxValue>\n"
        "        <algorithm>StretchToMinimumMaximum</algorithm>\n"
        f"      </{colour}ContrastEnhancement>"
        for colour, (low, high) in zip(("red", "green", "blue"), ranges, strict=True)
    )
    red, green, blue = bands
    return _MULTIBAND_QML.format(red=red, green=green, blue=blue, enhancements=enhancements)


def sidecar_path(raster_path: str) -> str:
    """Where QGIS looks for a file's default style: ``name.tif`` -> ``name.qml``."""
    return os.path.splitext(raster_path)[0] + ".qml"
