"""Raster I/O backend on rasterio (and fiona for polygons): the library's and the CLI's backend."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import (
    NodataShadowWarning,
    NotGeoreferencedWarning,
    RasterioError,
    RasterioIOError,
)
from rasterio.transform import Affine
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window as RioWindow

from .errors import InputError, OutputError
from .io import CrsInfo, Grid, PolygonLayer, RasterSpec, Window, is_gdal_name

# Bounded GDAL block cache (MB): the engine streams and never needs a large cache, while GDAL's
# default (5% of RAM) would dominate peak memory on big machines. GDAL reads the variable when it
# first allocates its cache; a user's own GDAL_CACHEMAX wins.
os.environ.setdefault("GDAL_CACHEMAX", "256")


def _rio_window(window: Window) -> RioWindow:
    return RioWindow(window.col_off, window.row_off, window.width, window.height)


def _grid_of(ds: Any) -> Grid:
    crs = ds.crs
    georeferenced = crs is not None and not (ds.transform == Affine.identity() and not ds.gcps[0])
    return Grid(
        ds.width,
        ds.height,
        tuple(ds.transform.to_gdal()),
        crs.to_wkt() if (georeferenced and crs) else None,
    )


class RasterioSource:
    """A rasterio dataset (or WarpedVRT over one) behind the RasterSource interface."""

    def __init__(self, path: str, dataset: Any, owner: Any | None = None) -> None:
        self.path = path
        self._ds = dataset
        self._owner = owner  # the underlying file of a WarpedVRT, closed with it
        self.grid = _grid_of(dataset)
        self.count = dataset.count
        self.dtype = dataset.dtypes[0]
        self.band_descriptions = tuple(dataset.descriptions)
        self.nodata = dataset.nodata

    def read(self, window: Window, bands: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        rio_win = _rio_window(window)
        try:
            data = self._ds.read(list(bands), window=rio_win, out_dtype="float32")
            with warnings.catch_warnings():
                # A declared nodata value wins over an alpha band: that is the intended mask.
                warnings.simplefilter("ignore", NodataShadowWarning)
                masks = self._ds.read_masks(list(bands), window=rio_win)
        except (RasterioError, RasterioIOError) as exc:
            raise InputError(
                self.path, f"cannot read pixels (truncated or corrupt file?): {exc}"
            ) from exc
        return data, np.all(masks > 0, axis=0)

    def close(self) -> None:
        self._ds.close()
        if self._owner is not None:
            self._owner.close()


class RasterioSink:
    """A tiled DEFLATE GeoTIFF written window by window."""

    def __init__(self, path: str, spec: RasterSpec) -> None:
        self.path = path
        grid = spec.grid
        profile = {
            "driver": "GTiff",
            "width": grid.width,
            "height": grid.height,
            "count": spec.count,
            "dtype": spec.dtype,
            "nodata": spec.nodata,
            "transform": Affine.from_gdal(*grid.transform),
            "crs": CRS.from_wkt(grid.crs_wkt) if grid.crs_wkt else None,
            "compress": "DEFLATE",
            "tiled": True,
            "blockxsize": 256,
            "blockysize": 256,
            "BIGTIFF": "IF_SAFER",
        }
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self._ds = rasterio.open(path, "w+", **profile)
        except (RasterioError, OSError) as exc:
            raise OutputError(f"{path}: cannot create output raster: {exc}") from exc
        if spec.band_descriptions:
            for i, desc in enumerate(spec.band_descriptions, start=1):
                self._ds.set_band_description(i, desc)
        if spec.color_table:
            self._ds.write_colormap(1, spec.color_table)
            self._ds.colorinterp = [ColorInterp.palette]
        if spec.tags:
            self._ds.update_tags(**spec.tags)

    def write(self, data: np.ndarray, window: Window) -> None:
        try:
            self._ds.write(data, window=_rio_window(window))
        except (RasterioError, OSError) as exc:
            raise OutputError(f"{self.path}: cannot write (disk full?): {exc}") from exc

    def read(self, window: Window, band: int = 1) -> np.ndarray:
        return self._ds.read(band, window=_rio_window(window))

    def close(self) -> None:
        self._ds.close()


class RasterioBackend:
    """RasterBackend on rasterio + fiona."""

    name = "rasterio"

    def _open_dataset(self, path: str) -> Any:
        if not is_gdal_name(path):  # virtual file systems, connection strings: no local file
            if not os.path.exists(path):
                raise InputError(path, "file not found")
            if os.path.isdir(path):
                raise InputError(path, "is a folder, not a raster file")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                ds = rasterio.open(path)
        except (RasterioError, RasterioIOError) as exc:
            raise InputError(path, f"not a raster GDAL can read ({exc})") from exc
        if ds.count == 0:
            ds.close()
            raise InputError(path, "has no raster bands")
        return ds

    def open(self, path: str) -> RasterioSource:
        return RasterioSource(path, self._open_dataset(path))

    def open_on_grid(
        self, path: str, grid: Grid, nodata: float | None = None, resampling: str = "bilinear"
    ) -> RasterioSource:
        ds = self._open_dataset(path)
        if grid.crs_wkt is None:
            ds.close()
            raise ValueError("open_on_grid needs a georeferenced target grid")
        src_nodata = ds.nodata if ds.nodata is not None else nodata
        # Without a nodata value, an alpha band marks pixels outside the source footprint.
        nodata_options = {"src_nodata": src_nodata, "nodata": src_nodata}
        if src_nodata is None:
            nodata_options = {}
        vrt = WarpedVRT(
            ds,
            crs=CRS.from_wkt(grid.crs_wkt),
            transform=Affine.from_gdal(*grid.transform),
            width=grid.width,
            height=grid.height,
            resampling=Resampling[resampling],
            add_alpha=src_nodata is None,
            **nodata_options,
        )
        source = RasterioSource(path, vrt, owner=ds)
        source.count = ds.count  # the alpha band is not a data band
        source.band_descriptions = tuple(ds.descriptions)
        source.grid = grid
        return source

    def transform_bounds(
        self, bounds: tuple[float, float, float, float], src_crs_wkt: str, dst_crs_wkt: str
    ) -> tuple[float, float, float, float]:
        from rasterio.warp import transform_bounds

        return tuple(
            transform_bounds(
                CRS.from_user_input(src_crs_wkt),
                CRS.from_user_input(dst_crs_wkt),
                *bounds,
                densify_pts=21,
            )
        )

    def same_crs(self, crs_a: str, crs_b: str) -> bool:
        return CRS.from_wkt(crs_a) == CRS.from_wkt(crs_b)

    def crs_info(self, crs_wkt: str) -> CrsInfo:
        crs = CRS.from_wkt(crs_wkt)
        if crs.is_geographic:
            return CrsInfo(is_geographic=True)
        return CrsInfo(is_geographic=False, linear_unit_m=float(crs.linear_units_factor[1]))

    def crs_name(self, crs_wkt: str | None) -> str | None:
        if crs_wkt is None:
            return None
        crs = CRS.from_wkt(crs_wkt)
        epsg = crs.to_epsg()
        return f"EPSG:{epsg}" if epsg else crs.to_string()

    def create(self, path: str, spec: RasterSpec) -> RasterioSink:
        return RasterioSink(path, spec)

    def to_cog(self, src_path: str, dst_path: str, spec: RasterSpec) -> None:
        from rasterio.shutil import copy as rio_copy

        try:
            rio_copy(
                src_path,
                dst_path,
                driver="COG",
                COMPRESS="DEFLATE",
                BLOCKSIZE=512,
                OVERVIEW_RESAMPLING=spec.overview_resampling.upper(),
                BIGTIFF="IF_SAFER",
                NUM_THREADS="ALL_CPUS",
            )
        except (RasterioError, OSError) as exc:
            raise OutputError(f"{dst_path}: cannot write Cloud-Optimized GeoTIFF: {exc}") from exc
        if spec.category_names:
            # rasterio cannot set category names; GDAL (and so QGIS) reads them from a PAM
            # sidecar, which the output transaction moves along with the file.
            write_category_names_sidecar(dst_path, spec.category_names)

    def write_polygons(self, path: str, layer: PolygonLayer, band_rows: int = 512) -> None:
        """Polygonise ``layer`` band of rows by band of rows, so memory follows one band.

        rasterio's shapes() collects every polygon of its input in an in-memory layer before
        yielding the first one. So the labels are polygonised in bands of ``band_rows`` rows: a
        region that lies inside one band is traced there (the same polygon as over the whole
        raster: a polygon depends on its own pixels only); the few that cross a band edge are
        traced together at the end, over the whole raster with a mask of just them.
        """
        import fiona
        from rasterio.features import shapes

        grid = layer.grid
        fiona_types = {"int": "int", "float": "float", "str": "str"}
        schema = {
            "geometry": "Polygon",
            "properties": {k: fiona_types[layer.field_types[k]] for k in layer.attributes},
        }
        scratch_mask = path + ".mask.tif"
        try:
            with warnings.catch_warnings():  # labels in pixel space have no georeferencing
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                labels = rasterio.open(layer.labels_path)
            with labels, fiona.open(
                path, "w", driver="GPKG", layer=layer.layer_name, schema=schema,
                crs_wkt=grid.crs_wkt or "",
            ) as dst:  # fmt: skip
                first_band, last_band = _label_band_extents(labels, band_rows)
                in_one_band = first_band == last_band  # absent labels: -1 == -1, never read
                in_one_band[0] = False  # background

                def polygons():
                    for window in _row_windows(labels, band_rows):
                        band = labels.read(1, window=window)
                        yield from shapes(band, mask=in_one_band[band], connectivity=8,
                                          transform=_window_transform(labels, window))  # fmt: skip
                    crossing = first_band != last_band
                    crossing[0] = False  # background
                    if crossing.any():
                        # rasterio's shapes() takes a whole-raster mask only as a uint8 band:
                        # derive one, strip by strip, into a scratch file beside the output.
                        self._write_mask(labels, crossing, scratch_mask)
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore", NotGeoreferencedWarning)
                            keep = rasterio.open(scratch_mask)
                        with keep:
                            yield from shapes(rasterio.band(labels, 1), connectivity=8,
                                              mask=rasterio.band(keep, 1),
                                              transform=labels.transform)  # fmt: skip

                # In chunks: fiona's writerecords holds its whole argument in memory, and a
                # noisy scene has hundreds of thousands of polygons.
                chunk: list[dict] = []
                for geom, value in polygons():
                    label = int(value)
                    props = {k: _py(v[label]) for k, v in layer.attributes.items()}
                    chunk.append({"geometry": geom, "properties": props})
                    if len(chunk) == 10_000:
                        dst.writerecords(chunk)
                        chunk = []
                if chunk:
                    dst.writerecords(chunk)
        except Exception as exc:  # fiona raises several unrelated types
            raise OutputError(f"{path}: cannot write polygons: {exc}") from exc
        finally:
            if os.path.exists(scratch_mask):
                os.remove(scratch_mask)

    @staticmethod
    def _write_mask(
        labels: Any, keep_label: np.ndarray, mask_path: str, strip_rows: int = 1024
    ) -> None:
        """``keep_label[labels]`` (uint8) as a tiled scratch GeoTIFF, strip by strip."""
        profile = {
            "driver": "GTiff", "width": labels.width, "height": labels.height, "count": 1,
            "transform": labels.transform, "tiled": True, "blockxsize": 256,
            "blockysize": 256, "compress": "LZW", "BIGTIFF": "IF_SAFER", "dtype": "uint8",
        }  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(mask_path, "w", **profile) as mask:
                for window in _row_windows(labels, strip_rows):
                    strip = labels.read(1, window=window)
                    mask.write(keep_label[strip].astype(np.uint8)[None], window=window)

    def describe(self, path: str) -> dict[str, Any]:
        ds = self._open_dataset(path)
        try:
            grid = _grid_of(ds)
            return {
                "path": path,
                "driver": ds.driver,
                "width": ds.width,
                "height": ds.height,
                "count": ds.count,
                "dtypes": list(ds.dtypes),
                "band_descriptions": list(ds.descriptions),
                "crs": self.crs_name(grid.crs_wkt),
                "georeferenced": grid.georeferenced,
                "resolution": list(grid.pixel_size),
                "bounds": list(grid.bounds),
                "nodata": ds.nodata,
                "block_shapes": [list(s) for s in ds.block_shapes[:1]],
            }
        finally:
            ds.close()


def _row_windows(dataset: Any, rows: int) -> Iterator[RioWindow]:
    """Full-width windows of ``rows`` rows over ``dataset``, top to bottom (the last may be
    shorter)."""
    for row in range(0, dataset.height, rows):
        yield RioWindow(0, row, dataset.width, min(rows, dataset.height - row))


def _window_transform(dataset: Any, window: RioWindow) -> Affine:
    """The geotransform of ``window`` (rasterio's window_transform, without its deprecated
    ``*`` composition)."""
    return dataset.transform @ Affine.translation(window.col_off, window.row_off)


def _label_band_extents(labels: Any, band_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The first and last band of ``band_rows`` rows in which each label value occurs.

    Args:
        labels: an open rasterio dataset of non-negative integer labels (band 1).
        band_rows: rows per band.

    Returns ``(first, last)``, int64 arrays indexed by label value (0 included); -1 where the
    label does not occur.
    """
    first = np.full(1, -1, np.int64)
    last = np.full(1, -1, np.int64)
    for index, window in enumerate(_row_windows(labels, band_rows)):
        present = np.bincount(labels.read(1, window=window).ravel())
        if len(present) > len(first):
            grow = len(present) - len(first)
            first = np.concatenate([first, np.full(grow, -1, np.int64)])
            last = np.concatenate([last, np.full(grow, -1, np.int64)])
        occurs = np.flatnonzero(present)
        first[occurs[first[occurs] < 0]] = index
        last[occurs] = index
    return first, last


def _py(value: Any) -> Any:
    """numpy scalar -> Python scalar (fiona wants plain types); NaN -> None."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value


def write_category_names_sidecar(raster_path: str, names: Sequence[str]) -> None:
    """Write ``raster_path``.aux.xml holding band 1's category names (index = pixel value)."""
    from xml.sax.saxutils import escape

    categories = "".join(f"<Category>{escape(n)}</Category>" for n in names)
    with open(raster_path + ".aux.xml", "w", encoding="utf-8") as fh:
        fh.write(
            '<PAMDataset><PAMRasterBand band="1"><CategoryNames>'
            f"{categories}</CategoryNames></PAMRasterBand></PAMDataset>\n"
        )
