"""The osgeo.gdal raster backend: what the QGIS plugin runs the engine on.

QGIS's Python ships osgeo.gdal but not rasterio, so this module implements
:class:`~swimdiff_geo.inference.io.RasterBackend` with the GDAL Python bindings only (gdal, ogr,
osr, gdal_array). It follows the same conventions as :mod:`.io_rasterio` so that both front ends
produce identical pixels: warping onto a target grid is a bilinear warped VRT, outputs are tiled
DEFLATE GeoTIFFs written block by block and then copied into COG layout with internal overviews,
and polygons come from ``gdal.Polygonize`` with 8-connectivity into a GeoPackage.

Error handling does not touch the process-wide ``gdal.UseExceptions()`` switch (QGIS and other
plugins share it, and the engine reads from a worker thread): every call runs under a quiet error
handler pushed on the calling thread, and failures are detected from return values and the
thread-local last error, then raised as :class:`~.errors.InputError` / :class:`~.errors.OutputError`
naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from osgeo import gdal, gdal_array, ogr, osr

from .errors import InputError, OutputError
from .io import IDENTITY_TRANSFORM, CrsInfo, Grid, PolygonLayer, RasterSpec, Window, is_gdal_name

# GDAL resampling names accepted by RasterSpec.overview_resampling, as the COG driver spells them.
_OVERVIEW_RESAMPLING = {
    "nearest": "NEAREST",
    "average": "AVERAGE",
    "bilinear": "BILINEAR",
    "cubic": "CUBIC",
    "mode": "MODE",
}
_CREATION_OPTIONS = [
    "TILED=YES",
    "BLOCKXSIZE=256",
    "BLOCKYSIZE=256",
    "COMPRESS=DEFLATE",
    "BIGTIFF=IF_SAFER",
]
_COG_BLOCK_SIZE = 512
_OGR_FIELD_TYPES = {"int": ogr.OFTInteger64, "float": ogr.OFTReal, "str": ogr.OFTString}


class _GdalFailure(Exception):
    """Internal: a GDAL call failed; carries GDAL's own message."""


@contextmanager
def _gdal_errors() -> Iterator[None]:
    """Silence GDAL's error printing on this thread and reset the thread-local last error.

    Works whether or not the process has called ``gdal.UseExceptions()``: with exceptions on, a
    failing call raises RuntimeError, which is turned into :class:`_GdalFailure` as well.
    """
    gdal.PushErrorHandler("CPLQuietErrorHandler")
    gdal.ErrorReset()
    try:
        yield
    except RuntimeError as exc:
        raise _GdalFailure(str(exc)) from exc
    finally:
        gdal.PopErrorHandler()


def _check(result: Any, what: str) -> Any:
    """Raise :class:`_GdalFailure` if ``result`` is None or GDAL recorded a failure."""
    if result is None or gdal.GetLastErrorType() >= gdal.CE_Failure:
        raise _GdalFailure(gdal.GetLastErrorMsg().strip() or f"{what} failed")
    return result


def _numpy_dtype(gdal_type: int) -> str:
    return np.dtype(gdal_array.GDALTypeCodeToNumericTypeCode(gdal_type)).name


def _gdal_type(dtype: str) -> int:
    code = gdal_array.NumericTypeCodeToGDALTypeCode(np.dtype(dtype))
    if code is None:
        raise ValueError(f"no GDAL data type for numpy dtype {dtype!r}")
    return code


def _srs(crs_wkt: str) -> osr.SpatialReference:
    """An osr SpatialReference with x/y (easting/northing, lon/lat) axis order, as GDAL grids."""
    srs = osr.SpatialReference()
    if srs.SetFromUserInput(crs_wkt) != 0:
        raise ValueError(f"not a CRS GDAL understands: {crs_wkt[:80]!r}")
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def _dataset_grid(ds: gdal.Dataset) -> Grid:
    """The dataset's grid; pixel space (``crs_wkt`` None) without a CRS or a geotransform."""
    projection = ds.GetProjection() or None
    transform = ds.GetGeoTransform(can_return_null=True)
    if transform is None:
        transform = IDENTITY_TRANSFORM
    transform = tuple(float(v) for v in transform)
    if transform == IDENTITY_TRANSFORM and ds.GetGCPCount() == 0:
        projection = None  # as rasterio: an identity transform means "not georeferenced"
    return Grid(ds.RasterXSize, ds.RasterYSize, transform, projection)


class GdalSource:
    """An opened input raster (:class:`~.io.RasterSource`), optionally warped onto a grid.

    ``count`` is the number of data bands: an alpha band added by :meth:`GdalBackend.open_on_grid`
    is not one of them.
    """

    def __init__(self, path: str, ds: gdal.Dataset, data_band_count: int) -> None:
        self.path = path
        self._ds = ds
        self.grid = _dataset_grid(ds)
        self.count = data_band_count
        first = ds.GetRasterBand(1)
        self.dtype = _numpy_dtype(first.DataType)
        self.band_descriptions = tuple(
            ds.GetRasterBand(i).GetDescription() or None for i in range(1, data_band_count + 1)
        )
        self.nodata = first.GetNoDataValue()

    def read(self, window: Window, bands: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Read ``bands`` (1-based) in ``window``: float32 ``(len(bands), h, w)``, valid ``(h, w)``.

        A pixel is invalid where any requested band's GDAL mask band is 0: declared nodata,
        internal mask, alpha band, or outside the source footprint of a warped VRT (the same
        rule as rasterio's ``read_masks``).
        """
        bands = [int(b) for b in bands]
        for b in bands:
            if not 1 <= b <= self.count:
                raise InputError(self.path, f"has {self.count} band(s); band {b} does not exist")
        xoff, yoff, w, h = window.col_off, window.row_off, window.width, window.height
        try:
            with _gdal_errors():
                data = _check(
                    self._ds.ReadAsArray(
                        xoff, yoff, w, h, band_list=bands, buf_type=gdal.GDT_Float32
                    ),
                    "reading pixels",
                )
                valid = np.ones((h, w), dtype=bool)
                seen_masks: set[int] = set()
                for b in bands:
                    band = self._ds.GetRasterBand(b)
                    flags = band.GetMaskFlags()
                    if flags & gdal.GMF_ALL_VALID:
                        continue
                    key = -1 if flags & gdal.GMF_PER_DATASET else b  # one read per dataset mask
                    if key in seen_masks:
                        continue
                    seen_masks.add(key)
                    mask = _check(band.GetMaskBand().ReadAsArray(xoff, yoff, w, h), "reading mask")
                    valid &= mask > 0
        except _GdalFailure as exc:
            raise InputError(
                self.path, f"cannot read pixels in window {window} (corrupt or truncated? {exc})"
            ) from exc
        data = np.asarray(data, dtype=np.float32)
        if data.ndim == 2:  # GDAL drops the band axis for a single band
            data = data[None]
        return data, valid

    def close(self) -> None:
        self._ds = None


class GdalSink:
    """A raster being written block by block (:class:`~.io.RasterSink`)."""

    def __init__(self, path: str, ds: gdal.Dataset) -> None:
        self.path = path
        self._ds = ds

    def write(self, data: np.ndarray, window: Window) -> None:
        """Write ``data`` ``(bands, h, w)`` with its top-left pixel at ``window``."""
        if data.ndim == 2:
            data = data[None]
        try:
            with _gdal_errors():
                for i in range(data.shape[0]):
                    band = self._ds.GetRasterBand(i + 1)
                    err = band.WriteArray(data[i], window.col_off, window.row_off)
                    if err != 0 or gdal.GetLastErrorType() >= gdal.CE_Failure:
                        raise _GdalFailure(gdal.GetLastErrorMsg() or "WriteArray failed")
        except _GdalFailure as exc:
            raise OutputError(f"{self.path}: cannot write (disk full? {exc})") from exc

    def read(self, window: Window, band: int = 1) -> np.ndarray:
        """Read back ``band`` in ``window`` as written, shape ``(h, w)``, the sink's dtype."""
        with _gdal_errors():
            return _check(
                self._ds.GetRasterBand(band).ReadAsArray(
                    window.col_off, window.row_off, window.width, window.height
                ),
                "reading back",
            )

    def close(self) -> None:
        """Flush to disk and close; raises OutputError if the flush fails."""
        if self._ds is None:
            return
        try:
            with _gdal_errors():
                self._ds.FlushCache()
                _check(True, "flushing")
        except _GdalFailure as exc:
            raise OutputError(f"{self.path}: cannot write (disk full? {exc})") from exc
        finally:
            self._ds = None


class GdalBackend:
    """:class:`~.io.RasterBackend` on osgeo.gdal (QGIS's Python)."""

    name = "gdal"

    # -- inputs -----------------------------------------------------------------------------
    def _open_dataset(self, path: str) -> gdal.Dataset:
        if not is_gdal_name(path):  # virtual file systems, connection strings: no local file
            if not Path(path).exists():
                raise InputError(path, "file not found")
            if Path(path).is_dir():
                raise InputError(path, "is a folder, not a raster file")
        try:
            with _gdal_errors():
                ds = gdal.OpenEx(path, gdal.OF_RASTER | gdal.OF_READONLY)
                _check(ds, "opening")
        except _GdalFailure as exc:
            raise InputError(path, f"not a raster GDAL can read ({exc})") from exc
        if ds.RasterCount < 1:
            raise InputError(path, "has no raster bands")
        return ds

    def open(self, path: str) -> GdalSource:
        """Open a raster; InputError naming ``path`` if missing, not a raster, or corrupt."""
        path = str(path)
        ds = self._open_dataset(path)
        count = ds.RasterCount
        return GdalSource(path, ds, count)

    def open_on_grid(
        self, path: str, grid: Grid, nodata: float | None = None, resampling: str = "bilinear"
    ) -> GdalSource:
        """Open ``path`` as a warped VRT on ``grid`` (``resampling``: ``"bilinear"`` or
        ``"nearest"``); outside the source is invalid.

        Same warp as :mod:`.io_rasterio`'s ``WarpedVRT``: the source nodata value (declared, else
        ``nodata``) is the source and destination nodata, so pixels outside the footprint read
        as nodata; without one, an alpha band marks them.
        """
        path = str(path)
        if grid.crs_wkt is None:
            raise ValueError("open_on_grid needs a georeferenced target grid")
        src = self._open_dataset(path)
        count = src.RasterCount
        if not src.GetProjection():
            src = None
            raise InputError(
                path,
                "has no CRS, so it cannot be reprojected onto the first image's grid "
                "(give two images on the same pixel grid, or georeference it)",
            )
        declared = src.GetRasterBand(1).GetNoDataValue()
        nodata = declared if declared is not None else nodata
        x0, dx, rx, y0, ry, dy = grid.transform
        if rx != 0 or ry != 0 or dy >= 0:
            src = None
            raise InputError(path, "target grid is rotated or not north-up; cannot warp onto it")
        left, bottom, right, top = grid.bounds
        options = gdal.WarpOptions(
            format="VRT",
            outputBounds=(left, bottom, right, top),
            xRes=dx,
            yRes=abs(dy),
            dstSRS=grid.crs_wkt,
            resampleAlg=resampling,
            srcNodata=nodata,
            dstNodata=nodata,
            dstAlpha=nodata is None,
            multithread=False,
        )
        try:
            with _gdal_errors():
                vrt = _check(gdal.Warp("", src, options=options), "warping")
        except _GdalFailure as exc:
            raise InputError(path, f"cannot be warped onto the first image's grid ({exc})") from exc
        # The warped VRT keeps a reference to ``src`` internally; drop ours.
        src = None
        warped = GdalSource(path, vrt, count)
        if (warped.grid.width, warped.grid.height) != (grid.width, grid.height):
            raise InputError(
                path,
                f"warped to {warped.grid.width}x{warped.grid.height} pixels instead of "
                f"{grid.width}x{grid.height} (GDAL rounding); please report this",
            )
        warped.grid = grid
        return warped

    # -- CRS ------------------------------------------------------------------------------
    def transform_bounds(
        self, bounds: tuple[float, float, float, float], src_crs_wkt: str, dst_crs_wkt: str
    ) -> tuple[float, float, float, float]:
        """Reproject (left, bottom, right, top) with 21 densified points per edge."""
        transform = osr.CoordinateTransformation(_srs(src_crs_wkt), _srs(dst_crs_wkt))
        left, bottom, right, top = bounds
        out = transform.TransformBounds(left, bottom, right, top, 21)
        return tuple(float(v) for v in out)  # type: ignore[return-value]

    def same_crs(self, crs_a: str, crs_b: str) -> bool:
        """True when both describe the same CRS (axis order of geographic CRS ignored)."""
        if crs_a == crs_b:
            return True
        if not crs_a or not crs_b:
            return False
        return bool(
            _srs(crs_a).IsSame(
                _srs(crs_b),
                [
                    "IGNORE_DATA_AXIS_TO_SRS_AXIS_MAPPING=YES",
                    "CRITERION=EQUIVALENT_EXCEPT_AXIS_ORDER_GEOGCRS",
                ],
            )
        )

    def crs_name(self, crs_wkt: str | None) -> str | None:
        """A short readable name ("EPSG:32633"), None for pixel space."""
        if crs_wkt is None:
            return None
        srs = _srs(crs_wkt)
        if srs.GetAuthorityName(None) != "EPSG":
            srs.AutoIdentifyEPSG()
        if srs.GetAuthorityName(None) == "EPSG" and srs.GetAuthorityCode(None):
            return f"EPSG:{srs.GetAuthorityCode(None)}"
        return srs.ExportToProj4().strip() or srs.GetName()

    def crs_info(self, crs_wkt: str) -> CrsInfo:
        srs = _srs(crs_wkt)
        if srs.IsGeographic():
            return CrsInfo(
                is_geographic=True,
                semi_major_m=float(srs.GetSemiMajor()),
                inverse_flattening=float(srs.GetInvFlattening()),
            )
        return CrsInfo(is_geographic=False, linear_unit_m=float(srs.GetLinearUnits()))

    # -- outputs --------------------------------------------------------------------------
    def create(self, path: str, spec: RasterSpec) -> GdalSink:
        """Create a tiled (256 px), DEFLATE-compressed GeoTIFF for block-wise writing."""
        path = str(path)
        driver = gdal.GetDriverByName("GTiff")
        try:
            with _gdal_errors():
                ds = _check(
                    driver.Create(
                        path,
                        spec.grid.width,
                        spec.grid.height,
                        spec.count,
                        _gdal_type(spec.dtype),
                        options=_CREATION_OPTIONS,
                    ),
                    "creating",
                )
                self._apply_spec(ds, spec)
        except _GdalFailure as exc:
            raise OutputError(f"{path}: cannot create output raster ({exc})") from exc
        return GdalSink(path, ds)

    @staticmethod
    def _apply_spec(ds: gdal.Dataset, spec: RasterSpec) -> None:
        grid = spec.grid
        if grid.georeferenced or grid.transform != IDENTITY_TRANSFORM:
            ds.SetGeoTransform(list(grid.transform))
        if grid.crs_wkt:
            ds.SetProjection(grid.crs_wkt)
        if spec.tags:
            ds.SetMetadata({str(k): str(v) for k, v in spec.tags.items()})
        for i in range(1, spec.count + 1):
            band = ds.GetRasterBand(i)
            if spec.nodata is not None:
                band.SetNoDataValue(float(spec.nodata))
            if spec.band_descriptions is not None and i <= len(spec.band_descriptions):
                band.SetDescription(str(spec.band_descriptions[i - 1]))
        if spec.color_table and spec.count == 1:
            table = gdal.ColorTable()
            for value, rgba in sorted(spec.color_table.items()):
                table.SetColorEntry(int(value), tuple(int(c) for c in rgba))
            band = ds.GetRasterBand(1)
            band.SetRasterColorTable(table)
            band.SetRasterColorInterpretation(gdal.GCI_PaletteIndex)
        # Category names are written by to_cog only: GeoTIFF keeps them in a .aux.xml side-car.

    def to_cog(self, src_path: str, dst_path: str, spec: RasterSpec) -> None:
        """Copy ``src_path`` into a COG (512 px tiles, DEFLATE, internal overviews).

        The COG driver copies georeferencing, nodata, descriptions, colour table and metadata;
        category names go into the ``.aux.xml`` side-car (TIFF has no tag for them), which is
        written next to ``dst_path``.
        """
        resampling = _OVERVIEW_RESAMPLING.get(spec.overview_resampling.lower())
        if resampling is None:
            raise ValueError(f"unknown overview resampling {spec.overview_resampling!r}")
        options = [
            "COMPRESS=DEFLATE",
            f"BLOCKSIZE={_COG_BLOCK_SIZE}",
            f"OVERVIEW_RESAMPLING={resampling}",
            "BIGTIFF=IF_SAFER",
        ]
        try:
            with _gdal_errors():
                src = gdal.OpenEx(str(src_path), gdal.OF_RASTER | gdal.OF_READONLY)
                _check(src, "opening")
                dst = _check(
                    gdal.GetDriverByName("COG").CreateCopy(str(dst_path), src, 0, options),
                    "writing COG",
                )
                if spec.category_names and spec.count == 1:
                    dst.GetRasterBand(1).SetCategoryNames([str(n) for n in spec.category_names])
                dst.FlushCache()
                _check(True, "writing COG")
                dst = None
                src = None
        except _GdalFailure as exc:
            raise OutputError(f"{dst_path}: cannot write Cloud-Optimized GeoTIFF ({exc})") from exc

    def write_polygons(self, path: str, layer: PolygonLayer) -> None:
        """Polygonise ``layer.labels_path`` (8-connected) into a GeoPackage layer in the grid's CRS.

        Each polygon carries the attributes of its label (``layer.attributes[name][label]``),
        fields in the order of ``layer.attributes``; NaN becomes NULL.
        """
        path = str(path)
        names = list(layer.attributes)
        scratch_path = path + ".polygons.gpkg"
        labels = band = scratch = scratch_layer = None
        try:
            with _gdal_errors():
                labels = _check(gdal.Open(layer.labels_path), "opening the label raster")
                band = labels.GetRasterBand(1)  # nodata 0: its mask keeps out the background
                # Polygonise into a scratch GeoPackage on disk first (a memory layer would hold
                # every polygon of the scene), then copy with the attributes: GeoPackage layers
                # are not safely updated while being iterated.
                scratch = _check(
                    ogr.GetDriverByName("GPKG").CreateDataSource(scratch_path),
                    "creating the scratch polygon layer",
                )
                scratch_layer = scratch.CreateLayer("labels", geom_type=ogr.wkbPolygon)
                scratch_layer.CreateField(ogr.FieldDefn("label", ogr.OFTInteger))
                scratch_layer.StartTransaction()  # one transaction, not one per polygon
                err = gdal.Polygonize(band, band.GetMaskBand(), scratch_layer, 0, ["8CONNECTED=8"])
                if err != 0:
                    raise _GdalFailure(gdal.GetLastErrorMsg() or "Polygonize failed")
                scratch_layer.CommitTransaction()

                srs = _srs(layer.grid.crs_wkt) if layer.grid.crs_wkt else None
                if os.path.exists(path):
                    os.remove(path)
                out = _check(
                    ogr.GetDriverByName("GPKG").CreateDataSource(path), "creating GeoPackage"
                )
                out_layer = _check(
                    out.CreateLayer(layer.layer_name, srs=srs, geom_type=ogr.wkbPolygon),
                    "creating layer",
                )
                for name in names:
                    kind = layer.field_types[name]
                    out_layer.CreateField(ogr.FieldDefn(name, _OGR_FIELD_TYPES[kind]))
                definition = out_layer.GetLayerDefn()
                out_layer.StartTransaction()
                for polygon in scratch_layer:
                    label = polygon.GetFieldAsInteger(0)
                    feature = ogr.Feature(definition)
                    feature.SetGeometry(polygon.GetGeometryRef())
                    for name in names:
                        _set_field(
                            feature, name, layer.field_types[name], layer.attributes[name][label]
                        )
                    if out_layer.CreateFeature(feature) != 0:
                        raise _GdalFailure(gdal.GetLastErrorMsg() or "writing a polygon failed")
                out_layer.CommitTransaction()
                _check(True, "writing GeoPackage")
                out_layer = None
                out = None
        except _GdalFailure as exc:
            raise OutputError(f"{path}: cannot write polygons ({exc})") from exc
        finally:
            labels = band = scratch_layer = scratch = None  # close them before removing
            if os.path.exists(scratch_path):
                gdal.GetDriverByName("GPKG").Delete(scratch_path)

    # -- info -----------------------------------------------------------------------------
    def describe(self, path: str) -> dict[str, Any]:
        """Readable facts about a raster for ``swimdiff-geo info`` (the rasterio backend's keys,
        plus ``overviews`` and ``compression``)."""
        path = str(path)
        ds = self._open_dataset(path)
        try:
            grid = _dataset_grid(ds)
            bands = [ds.GetRasterBand(i) for i in range(1, ds.RasterCount + 1)]
            block = bands[0].GetBlockSize()
            return {
                "path": path,
                "driver": ds.GetDriver().ShortName,
                "width": grid.width,
                "height": grid.height,
                "count": ds.RasterCount,
                "dtypes": [_numpy_dtype(b.DataType) for b in bands],
                "band_descriptions": [b.GetDescription() or None for b in bands],
                "crs": self.crs_name(grid.crs_wkt),
                "georeferenced": grid.georeferenced,
                "resolution": list(grid.pixel_size),
                "bounds": list(grid.bounds),
                "nodata": bands[0].GetNoDataValue(),
                "block_shapes": [[int(block[1]), int(block[0])]],  # (rows, cols) as rasterio
                "overviews": [
                    [bands[0].GetOverview(i).XSize, bands[0].GetOverview(i).YSize]
                    for i in range(bands[0].GetOverviewCount())
                ],
                "compression": ds.GetMetadataItem("COMPRESSION", "IMAGE_STRUCTURE"),
            }
        finally:
            bands = []
            ds = None


def _set_field(feature: ogr.Feature, name: str, kind: str, value: Any) -> None:
    """Set one attribute: numpy scalars as Python values, NaN/None as NULL."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, float) and value != value):
        feature.SetFieldNull(name)
    elif kind == "int":
        feature.SetField(name, int(value))
    elif kind == "float":
        feature.SetField(name, float(value))
    else:
        feature.SetField(name, str(value))
