"""The raster I/O interface the engine talks to, and the grid geometry shared by the backends.

Two backends implement :class:`RasterBackend`: :mod:`.io_rasterio` (library and CLI) and
:mod:`.io_gdal` (QGIS, whose Python ships osgeo.gdal but not rasterio). The engine and the jobs
only ever see this interface, so both front ends produce identical pixels.

Conventions:
- Geotransforms are GDAL 6-tuples ``(x0, dx, rx, y0, ry, dy)``; ``dy`` is negative for north-up.
- CRS are WKT strings; ``None`` means "not georeferenced" (pixel space).
- Band indices are 1-based, as in GDAL.
- Arrays are ``(bands, rows, cols)``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

GeoTransform = tuple[float, float, float, float, float, float]
IDENTITY_TRANSFORM: GeoTransform = (0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
# GDAL's path of a file inside an archive: prefix, the archive's own path, the member's path
VSI_ARCHIVE = re.compile(r"^(/vsi(?:zip|tar|gzip)/)(.+?\.(?:zip|tar|tgz|tar\.gz|gz))(/.*)?$", re.I)


def is_gdal_name(path: str) -> bool:
    """Whether ``path`` names a dataset GDAL opens without a local file of that name: a virtual
    file system path (``/vsizip/...``, ``/vsicurl/...``) or a driver's connection string
    (``GPKG:/x.gpkg:table``, ``NETCDF:"x.nc":var``; a drive letter such as ``C:`` is not one)."""
    return path.startswith("/vsi") or re.match(r"^[A-Za-z][A-Za-z0-9_]+:", path) is not None


def archive_of(path: str) -> str | None:
    """The archive file behind GDAL's ``/vsizip/archive.zip/member.tif`` (also ``/vsitar/``,
    ``/vsigzip/``), else None."""
    match = VSI_ARCHIVE.match(path)
    return match.group(2) if match else None


@dataclass(frozen=True)
class Window:
    """A rectangle of pixels: column/row offset of its top-left corner and its size in pixels."""

    col_off: int
    row_off: int
    width: int
    height: int

    @property
    def row_slice(self) -> slice:
        return slice(self.row_off, self.row_off + self.height)

    @property
    def col_slice(self) -> slice:
        return slice(self.col_off, self.col_off + self.width)


@dataclass(frozen=True)
class Grid:
    """A raster grid: size in pixels, geotransform and CRS (``crs_wkt`` None = pixel space)."""

    width: int
    height: int
    transform: GeoTransform = IDENTITY_TRANSFORM
    crs_wkt: str | None = None

    @property
    def georeferenced(self) -> bool:
        return self.crs_wkt is not None

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in CRS units (north-up grids only)."""
        x0, dx, _, y0, _, dy = self.transform
        xs = (x0, x0 + dx * self.width)
        ys = (y0, y0 + dy * self.height)
        return min(xs), min(ys), max(xs), max(ys)

    def subgrid(self, window: Window) -> Grid:
        """The grid of ``window`` cut from this grid."""
        x0, dx, rx, y0, ry, dy = self.transform
        x = x0 + window.col_off * dx + window.row_off * rx
        y = y0 + window.col_off * ry + window.row_off * dy
        return Grid(window.width, window.height, (x, dx, rx, y, ry, dy), self.crs_wkt)

    def same_pixels(self, other: Grid) -> bool:
        """Same size and geotransform (to 1e-9 of the values); CRS not compared."""
        return (self.width, self.height) == (other.width, other.height) and all(
            math.isclose(p, q, rel_tol=0, abs_tol=1e-9 * max(1.0, abs(p)))
            for p, q in zip(self.transform, other.transform, strict=True)
        )

    @property
    def pixel_size(self) -> tuple[float, float]:
        """(|dx|, |dy|) in CRS units."""
        return abs(self.transform[1]), abs(self.transform[5])


@dataclass(frozen=True)
class CrsInfo:
    """What area computations need to know about a CRS."""

    is_geographic: bool
    linear_unit_m: float = 1.0  # metres per CRS unit (projected CRS)
    semi_major_m: float = 6378137.0  # ellipsoid (geographic CRS)
    inverse_flattening: float = 298.257223563


class RasterSource(Protocol):
    """An opened input raster, possibly warped onto another grid."""

    path: str
    grid: Grid
    count: int
    dtype: str
    band_descriptions: tuple[str | None, ...]
    nodata: float | None

    def read(self, window: Window, bands: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Read ``bands`` (1-based) inside ``window``.

        Returns ``(data, valid)``: data float32 ``(len(bands), h, w)`` in raw digital numbers,
        valid bool ``(h, w)``: False where any requested band is nodata (declared nodata value,
        internal mask, alpha band, or outside the source after warping). Raises InputError naming
        the file when the pixels cannot be read (truncated or corrupt file).
        """

    def close(self) -> None: ...


class RasterSink(Protocol):
    """A raster being written block by block under a temporary name."""

    path: str

    def write(self, data: np.ndarray, window: Window) -> None:
        """Write ``data`` ``(bands, h, w)`` at ``window``."""

    def read(self, window: Window, band: int = 1) -> np.ndarray:
        """Read back one band of what was written (for polygon statistics)."""

    def close(self) -> None:
        """Flush and close; the file is complete afterwards (not yet COG-ordered)."""


@dataclass
class RasterSpec:
    """How to create an output raster."""

    grid: Grid
    count: int
    dtype: str  # numpy dtype name: "uint8", "float32"
    nodata: float | None
    band_descriptions: Sequence[str] | None = None
    color_table: dict[int, tuple[int, int, int, int]] | None = None  # uint8 single-band only
    category_names: Sequence[str] | None = None  # index = pixel value
    tags: dict[str, str] = field(default_factory=dict)
    overview_resampling: str = "average"  # "nearest" for class ids and masks


@dataclass
class PolygonLayer:
    """Polygons to write: one polygon per label value > 0 of the raster at ``labels_path``.

    ``labels_path`` is a single-band int32 GeoTIFF on ``grid`` with nodata 0 (background), one
    label per 8-connected region (regions.label_scene_regions writes it strip by strip), so no
    backend ever holds a scene-sized label array.

    ``attributes[name]`` is an array indexed by label value (index 0 unused); ``field_types``
    maps the name to "int" | "float" | "str".
    """

    labels_path: str
    grid: Grid
    attributes: dict[str, np.ndarray]
    field_types: dict[str, str]
    layer_name: str


class RasterBackend(Protocol):
    """Everything the engine needs from a GIS library."""

    name: str

    def open(self, path: str) -> RasterSource:
        """Open a raster; InputError (naming ``path``) if missing, not a raster, or corrupt."""

    def open_on_grid(
        self, path: str, grid: Grid, nodata: float | None = None, resampling: str = "bilinear"
    ) -> RasterSource:
        """Open ``path`` warped onto ``grid``; pixels outside the source are invalid.

        ``nodata``: the source's nodata value where the file declares none (Sentinel-2's 0), so
        the bilinear kernel does not blend it into valid pixels. ``resampling``: ``"bilinear"``
        (images) or ``"nearest"`` (masks and classes).
        """

    def transform_bounds(
        self, bounds: tuple[float, float, float, float], src_crs_wkt: str, dst_crs_wkt: str
    ) -> tuple[float, float, float, float]:
        """Reproject (left, bottom, right, top), densifying edges. The CRS may be WKT or any
        user input the library parses (``EPSG:4326``)."""

    def same_crs(self, crs_a: str, crs_b: str) -> bool: ...

    def crs_info(self, crs_wkt: str) -> CrsInfo: ...

    def crs_name(self, crs_wkt: str | None) -> str | None:
        """A short readable name ("EPSG:32633"), None for pixel space."""

    def create(self, path: str, spec: RasterSpec) -> RasterSink:
        """Create a tiled, DEFLATE-compressed GeoTIFF for block-wise writing."""

    def to_cog(self, src_path: str, dst_path: str, spec: RasterSpec) -> None:
        """Copy a finished raster into Cloud-Optimized GeoTIFF layout with internal overviews."""

    def write_polygons(self, path: str, layer: PolygonLayer) -> None:
        """Polygonise ``layer.labels_path`` (8-connected) into a GeoPackage in the grid's CRS."""

    def describe(self, path: str) -> dict[str, Any]:
        """Readable facts about a raster for ``swimdiff-geo info``."""
