"""Sentinel-2 products and folders of single-band files, read as one multi-band input.

A Sentinel-2 product, as downloaded, is one JPEG 2000 file per band at 10, 20 or 60 m. The
engine takes it as it is, wherever it takes an input raster:

- a SAFE folder (``S2B_MSIL1C_..._T33UVP_....SAFE``), its ``MTD_MSIL1C.xml`` / ``MTD_MSIL2A.xml``,
  or the ZIP that Copernicus Data Space serves (read in place through GDAL's ``/vsizip/``);
- one granule folder of a SAFE (``GRANULE/L1C_T33UVP_.../``, which holds ``IMG_DATA``);
- any folder of single-band rasters whose names end in the band (``..._B01.tif``,
  ``..._B8A.jp2``, ``..._B02_10m.jp2``), such as OSCD's ``imgs_1``.

The bands become one :class:`~.io.RasterSource` on the grid of the finest band (10 m for
Sentinel-2; coarser bands resampled bilinearly), band descriptions = band names, so the model's
bands are matched by name. From processing baseline 04.00 on (products since 25 January 2022)
ESA adds 1000 to every L1C digital number and records ``RADIO_ADD_OFFSET = -1000`` (L2A:
``BOA_ADD_OFFSET``) in the product metadata; the offset is applied here, so a 2023 product reads
on the same scale as a 2017 one (and as the training data of the bundled models). A raster
stacked by hand from such a product carries no metadata, so nothing can correct it: that is
the main reason to give the product itself.

Pure Python + numpy: both raster backends (rasterio, osgeo.gdal) use it.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from xml.etree import ElementTree

import numpy as np

from ..bands import normalize_band_name
from .errors import InputError
from .io import Grid, RasterBackend, RasterSource, Window

# Sentinel-2's 13 bands in the order of the product metadata's band_id 0..12 (and the bundled
# models' input order).
SENTINEL2_BAND_ORDER = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12",
)  # fmt: skip
PRODUCT_METADATA = ("MTD_MSIL1C.xml", "MTD_MSIL2A.xml")
# Since processing baseline 04.00 each granule's QI_DATA holds this 60 m raster: band 1 opaque
# clouds, band 2 cirrus, band 3 snow and ice (1 = flagged). Before, the masks were GML vectors.
CLOUD_MASK_FILE = "MSK_CLASSI_B00.jp2"
CLOUD_MASK_BANDS = (1, 2)  # opaque clouds, cirrus: what changes top-of-atmosphere reflectance
RASTER_EXTENSIONS = ("jp2", "tif", "tiff")
BAND_FOLDER = "folder of band files"  # BandFiles.kind of a folder that is no product
# "..._B01.jp2", "B8A.tif", L2A's "..._B02_10m.jp2" (group 1: band, group 2: resolution in m)
BAND_FILE = re.compile(
    r"(?:^|[_\-.])(B(?:0?[1-9]|1[0-2]|8A))(?:_(\d+)m)?\.(?:" + "|".join(RASTER_EXTENSIONS) + r")$",
    re.IGNORECASE,
)


@dataclass
class BandFiles:
    """The single-band files of one input, by band name.

    ``files`` maps band names (``B01`` ... ``B12``, ``B8A``: normalised, Sentinel-2 order first)
    to paths GDAL opens (``/vsizip/...`` inside a ZIP). ``offsets`` are added to the digital
    numbers of the named bands (``RADIO_ADD_OFFSET``); ``nodata`` is the product's NODATA
    value (0 for Sentinel-2) where the files declare none.
    """

    path: str
    kind: str
    files: dict[str, str]
    offsets: dict[str, float] = field(default_factory=dict)
    nodata: float | None = None
    processing_baseline: str | None = None
    warning: str | None = None  # what the reader could not do, for the job's log
    cloud_mask: str | None = None  # QI_DATA/MSK_CLASSI_B00.jp2 (baseline 04.00+), if present

    def summary(self) -> str:
        """One line for the log: what was found and what is done to it."""
        what = self.kind
        if self.processing_baseline:
            what += f", processing baseline {self.processing_baseline}"
        text = f"{what}: {len(self.files)} band files ({', '.join(self.files)})"
        applied = sorted({v for v in self.offsets.values() if v})
        if applied:
            values = ", ".join(f"{v:+g}" for v in applied)
            text += f"; radiometric offset {values} added to the digital numbers"
        return text


def _band_order_key(name: str) -> tuple[int, str]:
    return (SENTINEL2_BAND_ORDER.index(name), "") if name in SENTINEL2_BAND_ORDER else (99, name)


def _pick_band_files(display: str, names: Sequence[str], to_path: Callable[[str], str]) -> dict:
    """Band name -> path among ``names`` (file names or relative paths), the finest resolution
    where a band comes at several (L2A's ``_B02_10m`` / ``_20m`` / ``_60m``)."""
    found: dict[str, tuple[int, str]] = {}
    for name in names:
        match = BAND_FILE.search(os.path.basename(name))
        if not match:
            continue
        band = normalize_band_name(match.group(1))
        resolution = int(match.group(2)) if match.group(2) else 0
        if band in found:
            other_resolution, other = found[band]
            if resolution == other_resolution:
                raise InputError(
                    display,
                    f"holds two files for band {band} ({os.path.basename(other)}, "
                    f"{os.path.basename(name)}): give a folder with one file per band",
                )
            if resolution > other_resolution:
                continue
        found[band] = (resolution, name)
    return {band: to_path(found[band][1]) for band in sorted(found, key=_band_order_key)}


def _metadata(xml: bytes, display: str) -> tuple[str, str | None, dict[str, float], float]:
    """(kind, processing baseline, offsets by band name, nodata) from a product's MTD XML."""
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as exc:
        raise InputError(display, f"its product metadata is not valid XML ({exc})") from exc

    def local(element: ElementTree.Element) -> str:
        return element.tag.rsplit("}", 1)[-1]

    level = "L2A" if "Level-2A" in root.tag else "L1C" if "Level-1C" in root.tag else None
    kind = f"Sentinel-2 {level} product" if level else "Sentinel-2 product"
    band_of_id = dict(enumerate(SENTINEL2_BAND_ORDER))
    baseline = None
    offsets_by_id: dict[int, float] = {}
    nodata = 0.0
    for element in root.iter():
        tag = local(element)
        if tag == "Spectral_Information" and element.get("physicalBand"):
            band_of_id[int(element.get("bandId", -1))] = normalize_band_name(
                element.get("physicalBand", "")
            )
        elif tag == "PROCESSING_BASELINE" and element.text:
            baseline = element.text.strip()
        elif tag in ("RADIO_ADD_OFFSET", "BOA_ADD_OFFSET") and element.get("band_id"):
            offsets_by_id[int(element.get("band_id", -1))] = float(element.text or 0)
        elif tag == "Special_Values":
            values = {local(child): (child.text or "").strip() for child in element}
            if values.get("SPECIAL_VALUE_TEXT") == "NODATA":
                nodata = float(values.get("SPECIAL_VALUE_INDEX", 0))
    offsets = {band_of_id[i]: v for i, v in offsets_by_id.items() if i in band_of_id}
    return kind, baseline, offsets, nodata


def _in_image_data(relative: str) -> bool:
    """Whether a path inside a product lies in a granule's IMG_DATA (QI_DATA's masks also end
    in ``_B01.jp2``)."""
    parts = relative.replace("\\", "/").split("/")
    return "IMG_DATA" in parts[:-1]


def _granule_of(relative: str) -> str:
    parts = relative.replace("\\", "/").split("/")
    return "/".join(parts[: parts.index("IMG_DATA")])


def _granule_of_qi(relative: str) -> str | None:
    parts = relative.replace("\\", "/").split("/")
    return "/".join(parts[: parts.index("QI_DATA")]) if "QI_DATA" in parts[:-1] else None


def _product(
    display: str,
    relatives: Sequence[str],
    read_metadata: Callable[[], tuple[str, bytes] | None],
    to_path: Callable[[str], str],
) -> BandFiles:
    """The band files of a SAFE product given its file list (paths relative to its root)."""
    image_files = [r for r in relatives if _in_image_data(r)]
    granules = sorted({_granule_of(r) for r in image_files})
    if not granules:
        raise InputError(display, "is a Sentinel-2 product without GRANULE/*/IMG_DATA band files")
    if len(granules) > 1:
        names = ", ".join(g.rsplit("/", 1)[-1] for g in granules[:3])
        raise InputError(
            display,
            f"holds {len(granules)} granules ({names}{', ...' if len(granules) > 3 else ''}), "
            "an old multi-tile product: give one granule's folder (GRANULE/<name>)",
        )
    files = _pick_band_files(display, image_files, to_path)
    masks = [
        r for r in relatives
        if os.path.basename(r) == CLOUD_MASK_FILE and _granule_of_qi(r) == granules[0]
    ]  # fmt: skip
    cloud_mask = to_path(masks[0]) if masks else None
    metadata = read_metadata()
    if metadata is None:
        return BandFiles(
            display,
            "Sentinel-2 granule",
            files,
            nodata=0.0,
            cloud_mask=cloud_mask,
            warning="no product metadata (MTD_MSIL1C.xml two folders up), so the +1000 that "
            "products of processing baseline 04.00 and later (since January 2022) add to the "
            "digital numbers cannot be removed; if this granule is that recent, give the whole "
            "product (SAFE folder or ZIP)",
        )
    name, xml = metadata
    kind, baseline, offsets, nodata = _metadata(xml, f"{display} ({name})")
    return BandFiles(display, kind, files, offsets, nodata, baseline, cloud_mask=cloud_mask)


def _from_zip(path: str) -> BandFiles:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(path, f"is not a readable ZIP archive ({exc})") from exc
    with archive:
        members = [m for m in archive.namelist() if not m.endswith("/")]
        roots = [m for m in members if os.path.basename(m) in PRODUCT_METADATA]
        if not roots and any(os.path.basename(m) == "data.pkl" for m in members):
            raise InputError(  # torch.save writes a ZIP holding data.pkl
                path,
                "is a PyTorch checkpoint, not imagery or an ONNX model: export it to ONNX "
                "first (swimdiff-geo export CHECKPOINT -o model.onnx) and use that file as the "
                "model",
            )
        if not roots:
            raise InputError(
                path,
                "is a ZIP without a Sentinel-2 product in it (no MTD_MSIL1C.xml); for a raster "
                f"inside a ZIP give its GDAL path, /vsizip/{path}/<file in the archive>",
            )
        root = os.path.dirname(min(roots, key=len))
        prefix = f"{root}/" if root else ""
        relatives = [m[len(prefix) :] for m in members if m.startswith(prefix)]
        metadata_name = min(roots, key=len)
        xml = archive.read(metadata_name)
    vsi_root = f"/vsizip/{os.path.abspath(path)}/{prefix}"
    return _product(
        path,
        relatives,
        lambda: (os.path.basename(metadata_name), xml),
        lambda relative: vsi_root + relative,
    )


def _product_metadata_in(folder: str) -> str | None:
    for name in PRODUCT_METADATA:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return None


def _read_file(path: str | None) -> tuple[str, bytes] | None:
    if path is None:
        return None
    with open(path, "rb") as fh:
        return os.path.basename(path), fh.read()


def _walk(folder: str) -> list[str]:
    out = []
    for dirpath, _, filenames in os.walk(folder):
        rel = os.path.relpath(dirpath, folder)
        out.extend(os.path.normpath(os.path.join(rel, f)).replace("\\", "/") for f in filenames)
    return sorted(out)


# GDAL's name for a subdataset of a Sentinel-2 product, which is what QGIS has as the source of
# a layer loaded from one: SENTINEL2_L1C:/data/S2B_....SAFE/MTD_MSIL1C.xml:10m:EPSG_32633
# (inside a ZIP: SENTINEL2_L1C:/vsizip//data/S2B_....zip/S2B_....SAFE/MTD_MSIL1C.xml:...).
GDAL_SENTINEL2_SUBDATASET = re.compile(r"^SENTINEL2_L[12][ABC]:(.+?\.xml)(?::[^:]*)*$", re.I)


def find_band_files(path: str) -> BandFiles | None:
    """The band files ``path`` stands for, or None when it is an ordinary raster file.

    ``path`` may also be GDAL's name of a Sentinel-2 product's subdataset (a QGIS layer loaded
    from a product): the whole product is read, all bands.

    Raises InputError naming ``path`` for a folder or product it cannot read as bands (no band
    files, two files for one band, several granules, a ZIP without a product).
    """
    subdataset = GDAL_SENTINEL2_SUBDATASET.match(path)
    if subdataset:
        metadata = subdataset.group(1)
        if metadata.startswith("/vsizip/"):
            archive = re.match(r"/vsizip/(.+?\.zip)(?:/|$)", metadata, re.I)
            if archive:
                return _from_zip(archive.group(1))
        path = metadata
    if path.startswith("/vsi") or not os.path.exists(path):
        return None  # a GDAL virtual path or a missing file: the backend's open says what is wrong
    if os.path.isfile(path):
        if os.path.basename(path) in PRODUCT_METADATA:
            path = os.path.dirname(os.path.abspath(path))
        elif zipfile.is_zipfile(path):
            return _from_zip(path)
        else:
            return None
    metadata = _product_metadata_in(path)
    if metadata is not None or os.path.isdir(os.path.join(path, "GRANULE")):  # a SAFE folder
        granules = os.path.join(path, "GRANULE")
        return _product(
            path,
            [f"GRANULE/{r}" for r in _walk(granules)] if os.path.isdir(granules) else [],
            lambda: _read_file(metadata),
            lambda relative: os.path.join(path, relative),
        )
    if os.path.isdir(os.path.join(path, "IMG_DATA")):  # one granule of a product
        product_root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
        return _product(
            path,
            _walk(path),
            lambda: _read_file(_product_metadata_in(product_root)),
            lambda r: os.path.join(path, r),
        )
    names = sorted(f for f in os.listdir(path) if os.path.isfile(os.path.join(path, f)))
    files = _pick_band_files(path, names, lambda f: os.path.join(path, f))
    if not files:
        raise InputError(
            path,
            "is a folder without band files: give a raster file, a Sentinel-2 product (SAFE "
            "folder or ZIP), or a folder of single-band rasters named ..._B01.tif, ..._B8A.jp2",
        )
    return BandFiles(path, BAND_FOLDER, files)


def product_of_band_file(path: str) -> str | None:
    """The Sentinel-2 product (``....SAFE`` folder, or the ZIP holding it) that band file
    ``path`` belongs to (``.../GRANULE/<granule>/IMG_DATA/..._B04.jp2``), else None."""
    parts = path.replace("\\", "/").split("/")
    if "IMG_DATA" not in parts[:-1] or "GRANULE" not in parts:
        return None
    root = "/".join(parts[: parts.index("GRANULE")])
    archive = re.match(r"/vsizip/(.+?\.zip)(?:/|$)", root, re.I)
    return archive.group(1) if archive else root


def folder_of_band_file(path: str) -> str | None:
    """The folder of band files (OSCD's ``imgs_1``: ``..._B01.tif`` ... ``..._B12.tif``) that
    band file ``path`` lies in, else None: for a file whose name names no band, for one in a
    product (:func:`product_of_band_file` says which), and for the only band file of its
    folder."""
    if (
        path.startswith("/vsi")
        or not os.path.isfile(path)
        or not BAND_FILE.search(os.path.basename(path))
        or product_of_band_file(path) is not None
    ):
        return None
    folder = os.path.dirname(os.path.abspath(path))
    try:
        files = find_band_files(folder)
    except InputError:  # e.g. two files for one band: not a folder that stands for one image
        return None
    if files is None or files.kind != BAND_FOLDER or len(files.files) < 2:
        return None
    return folder


class BandStackSource:
    """Single-band rasters read as one :class:`~.io.RasterSource`, one band per file.

    Band ``i`` is ``files.files``'s ``i``-th file, on ``grid`` (as is where the file lies on it,
    else a bilinear warp); its description is the band name. ``read`` adds the band's offset to
    valid pixels and marks ``files.nodata`` invalid where the file itself declares no nodata.
    """

    def __init__(
        self,
        files: BandFiles,
        sources: list[RasterSource],
        grid: Grid,
        grid_band: str | None,
        cloud_mask: RasterSource | None = None,
    ) -> None:
        self.files = files
        self.mask_clouds = cloud_mask is not None
        self._cloud_mask = cloud_mask
        self.path = files.path
        self.grid_band = grid_band  # the band whose file's grid this is; None: a given grid
        self.grid = grid
        self.count = len(sources)
        self.dtype = "float32" if any(files.offsets.values()) else sources[0].dtype
        self.band_descriptions = tuple(files.files)
        self.nodata = files.nodata
        self._sources = sources
        self._offsets = [float(files.offsets.get(name, 0.0)) for name in files.files]

    def read(self, window: Window, bands: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        data = np.empty((len(bands), window.height, window.width), np.float32)
        valid = np.ones((window.height, window.width), bool)
        for i, band in enumerate(bands):
            if not 1 <= band <= self.count:
                raise InputError(self.path, f"has {self.count} bands; band {band} does not exist")
            values, band_valid = self._sources[band - 1].read(window, [1])
            data[i] = values[0]
            valid &= band_valid
            if self.nodata is not None:
                valid &= values[0] != self.nodata
            if self._offsets[band - 1]:
                data[i] += self._offsets[band - 1]
        if self._cloud_mask is not None:
            bands = CLOUD_MASK_BANDS[: self._cloud_mask.count]
            flags, _ = self._cloud_mask.read(window, bands)
            valid &= ~np.any(flags > 0, axis=0)
        return data, valid

    def close(self) -> None:
        for source in self._sources:
            source.close()
        if self._cloud_mask is not None:
            self._cloud_mask.close()


def open_band_stack(
    backend: RasterBackend, files: BandFiles, grid: Grid | None = None, mask_clouds: bool = False
) -> BandStackSource:
    """Open ``files`` as one source on ``grid``, or on the grid of the finest band file;
    ``mask_clouds``: pixels flagged by ``files.cloud_mask`` (if any) are invalid."""
    opened: list[RasterSource] = []
    try:
        for name, path in files.files.items():
            source = backend.open(path)
            opened.append(source)
            if source.count != 1:
                raise InputError(
                    files.path,
                    f"band file {os.path.basename(path)} ({name}) has "
                    f"{source.count} bands; band files must hold one band each",
                )
        georeferenced = {s.grid.georeferenced for s in opened}
        if len(georeferenced) > 1:
            raise InputError(files.path, "some of its band files are georeferenced, some not")
        if georeferenced == {True}:
            first = opened[0]
            for name, source in zip(files.files, opened, strict=True):
                if not backend.same_crs(first.grid.crs_wkt, source.grid.crs_wkt):
                    raise InputError(
                        files.path,
                        f"its band files are in different CRS ({next(iter(files.files))}: "
                        f"{backend.crs_name(first.grid.crs_wkt)}, {name}: "
                        f"{backend.crs_name(source.grid.crs_wkt)})",
                    )
        grid_band = None
        if grid is None:
            finest = min(range(len(opened)), key=lambda i: opened[i].grid.pixel_size[0])
            grid, grid_band = opened[finest].grid, list(files.files)[finest]
        for i, (path, source) in enumerate(zip(files.files.values(), opened, strict=True)):
            if source.grid.same_pixels(grid):
                continue
            if not grid.georeferenced:
                raise InputError(
                    files.path,
                    f"its band files differ in size ({os.path.basename(path)}: "
                    f"{source.grid.width}x{source.grid.height}, not {grid.width}x"
                    f"{grid.height}) and are not georeferenced, so they cannot be aligned",
                )
            source.close()
            opened[i] = backend.open_on_grid(path, grid, nodata=files.nodata)
        cloud_mask = None
        if mask_clouds and files.cloud_mask and grid.georeferenced:
            cloud_mask = backend.open_on_grid(files.cloud_mask, grid, resampling="nearest")
            opened.append(cloud_mask)  # closed with the others if what follows fails
        return BandStackSource(files, opened[: len(files.files)], grid, grid_band, cloud_mask)
    except BaseException:
        for source in opened:
            source.close()
        raise
