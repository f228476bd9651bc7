"""QGIS layer styles (QML) for the engine's outputs, as text: no QGIS needed to write them.

The engine writes each styled raster's style next to it as ``<name>.qml``, the file QGIS applies
by default whenever it opens ``<name>.tif``: CLI outputs open styled in QGIS, and the QGIS plugin
uses the very same files.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
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


def _classes(class_names: dict[str, str], class_colors: dict[str, str]) -> list[tuple]:
    """(class id, name, ``"#rrggbb"``) by id from the model metadata's dicts (id as a string ->
    name / colour); classes without a colour get one from :data:`FALLBACK_COLORS`."""
    return [
        (
            int(class_id),
            str(class_names[class_id]),
            (class_colors.get(class_id) or FALLBACK_COLORS[index % len(FALLBACK_COLORS)]).lower(),
        )
        for index, class_id in enumerate(sorted(class_names, key=int))
    ]


def landcover_qml(class_names: dict[str, str], class_colors: dict[str, str]) -> str:
    """A paletted-renderer QML: one entry per class id with the model's colour and name."""
    entries = [
        f"        <paletteEntry value={quoteattr(str(class_id))} color={quoteattr(color)} "
        f'alpha="255" label={quoteattr(name)}/>'
        for class_id, name, color in _classes(class_names, class_colors)
    ]
    return _PALETTED_QML.format(entries="\n".join(entries))


# Polygon layers: a fill symbol per class (land cover) or one outlined symbol (change).
_VECTOR_QML = """<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.22.0" styleCategories="Symbology">
  <renderer-v2 {renderer} symbollevels="0" enableorderby="0" forceraster="0">
{categories}    <symbols>
{symbols}
    </symbols>
  </renderer-v2>
</qgis>
"""


def _fill_symbol(name: str, fill: str, outline: str, outline_style: str = "solid") -> str:
    """A simple fill symbol; colours as QGIS writes them, ``"r,g,b,a"``."""
    return f"""      <symbol type="fill" name="{name}" alpha="1" clip_to_extent="1" force_rhr="0">
        <layer class="SimpleFill" enabled="1" locked="0" pass="0">
          <Option type="Map">
            <Option type="QString" name="color" value="{fill}"/>
            <Option type="QString" name="style" value="solid"/>
            <Option type="QString" name="outline_color" value="{outline}"/>
            <Option type="QString" name="outline_style" value="{outline_style}"/>
            <Option type="QString" name="outline_width" value="0.4"/>
          </Option>
        </layer>
      </symbol>"""


def _rgba(color: str, alpha: int = 255) -> str:
    return ",".join(str(int(color[i : i + 2], 16)) for i in (1, 3, 5)) + f",{alpha}"


def landcover_polygons_qml(class_names: dict[str, str], class_colors: dict[str, str]) -> str:
    """A categorized renderer on ``class_id``: each class's polygons filled with its colour and
    labelled with its name, as in the class map."""
    classes = _classes(class_names, class_colors)
    categories = "".join(
        f"      <category value={quoteattr(str(class_id))} label={quoteattr(name)} "
        f'symbol="{i}" render="true"/>\n'
        for i, (class_id, name, _) in enumerate(classes)
    )
    return _VECTOR_QML.format(
        renderer='type="categorizedSymbol" attr="class_id"',
        categories=f"    <categories>\n{categories}    </categories>\n",
        symbols="\n".join(
            _fill_symbol(str(i), _rgba(color), _rgba(color), "no")
            for i, (_, _, color) in enumerate(classes)
        ),
    )


# Change regions: the change mask's red, outlined over a light fill, so the image shows through.
CHANGE_POLYGONS_QML = _VECTOR_QML.format(
    renderer='type="singleSymbol"',
    categories="",
    symbols=_fill_symbol("0", "230,30,30,50", "230,30,30,255"),
)


def embed_default_style(gpkg: str, layer: str, qml: str) -> None:
    """Store ``qml`` as ``layer``'s default style inside GeoPackage ``gpkg`` (its
    ``layer_styles`` table, where QGIS looks first): the polygons open styled in QGIS. A
    ``.qml`` beside the file cannot do it, as ``landcover.gpkg``'s would be ``landcover.qml``,
    the class map's style."""
    with contextlib.closing(sqlite3.connect(gpkg)) as db, db:
        geometry = db.execute(
            "SELECT column_name FROM gpkg_geometry_columns WHERE table_name = ?", (layer,)
        ).fetchone()[0]
        db.execute(_LAYER_STYLES_TABLE)
        db.execute(
            "INSERT OR IGNORE INTO gpkg_contents (table_name, data_type, identifier) "
            "VALUES ('layer_styles', 'attributes', 'layer_styles')"
        )
        db.execute(
            "INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, "
            "f_geometry_column, styleName, styleQML, styleSLD, useAsDefault, description, "
            "owner, ui, update_time) VALUES ('', '', ?, ?, ?, ?, '', 1, 'swimdiff-geo', '', '', "
            "strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
            (layer, geometry, layer, qml),
        )


# The table QGIS creates for styles saved in a GeoPackage ("Save as Default" in the database).
_LAYER_STYLES_TABLE = """CREATE TABLE IF NOT EXISTS layer_styles (
    id INTEGER PRIMARY KEY AUTOINCREMENT, f_table_catalog TEXT(256), f_table_schema TEXT(256),
    f_table_name TEXT(256), f_geometry_column TEXT(256), styleName TEXT(30), styleQML TEXT,
    styleSLD TEXT, useAsDefault BOOLEAN, description TEXT, owner TEXT(30), ui TEXT(30),
    update_time DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))"""


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
