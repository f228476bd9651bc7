"""Reader for the Onera Satellite Change Detection (OSCD) dataset, as it is distributed.

Layout (Daudt et al., 2018)::

    <root>/Onera Satellite Change Detection dataset - Images/<city>/imgs_1/<tile>_<date>_B01.tif
                                                              /imgs_2/...
                                                              /dates.txt   ("date_1: 20161209")
    <root>/Onera Satellite Change Detection dataset - Images/train.txt, test.txt   (comma lists)
    <root>/Onera Satellite Change Detection dataset - Train Labels/<city>/cm/<city>-cm.tif

Quirks handled here (see /work/shared/data/README.md):

- One GeoTIFF per band at its native 10/20/60 m; the pre-resampled ``imgs_*_rect`` folders are
  not used. Every band of both dates is resampled (bilinear, pixel centres mapped through the
  geotransforms) onto the 10 m grid of date 1's B02, the grid of the labels.
- For some cities (saclay_e, abudhabi, hongkong) the second date has 2-9 px fewer rows and
  columns than the first over the same footprint: its pixels are larger (saclay_e: 679 x 631
  against 688 x 639, 1.3 % larger). Resampling through the geotransforms registers it. Cropping
  both dates by pixel index to the smaller shape, as the original benchmark's loader does (it
  pads date 2 instead), shifts date 2 against date 1 by up to 7 px at saclay_e's far corner
  (phase correlation of B08 in 96 px windows: 0 px at the top left, 7 px at the bottom right;
  0 px everywhere once resampled).
- Label rasters hold 1 = no change, 2 = change (the dataset README says 0/1; it is wrong) and
  carry no georeferencing; they lie on date 1's 10 m grid. They are returned as 0/1.
"""

from __future__ import annotations

import re
import warnings
from functools import cached_property
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from ..bands import SENTINEL2_L1C

IMAGES_DIRNAME = "Onera Satellite Change Detection dataset - Images"
LABELS_DIRNAME = "Onera Satellite Change Detection dataset - Train Labels"
OSCD_BANDS: tuple[str, ...] = SENTINEL2_L1C.bands

WindowLike = Window | tuple[int, int, int, int]


class OSCDError(ValueError):
    """The OSCD folder is missing a file or holds something unexpected (the message names it)."""


def _images_dir(root: Path) -> Path:
    """The folder holding one sub-folder per city."""
    if (root / IMAGES_DIRNAME).is_dir():
        return root / IMAGES_DIRNAME
    if any((child / "imgs_1").is_dir() for child in root.iterdir() if child.is_dir()):
        return root
    raise OSCDError(
        f"{root}: not an OSCD folder: it holds neither '{IMAGES_DIRNAME}' nor city folders "
        "with imgs_1/ and imgs_2/"
    )


def find_oscd_root(path: str | Path) -> Path:
    """The dataset root: the folder holding the Images (and Train Labels) folders.

    Accepts that folder or the Images folder itself; returns the folder that holds the Images
    folder (so the labels are found as its sibling). Raises OSCDError naming ``path`` otherwise.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise OSCDError(f"{path}: OSCD folder not found")
    images = _images_dir(path)
    if images == path and path.name == IMAGES_DIRNAME:
        return path.parent
    return images.parent if images != path else path


def _labels_dir(root: Path) -> Path | None:
    for candidate in (root / LABELS_DIRNAME, root.parent / LABELS_DIRNAME):
        if candidate.is_dir():
            return candidate
    return None


def list_oscd_cities(root: str | Path, labelled_only: bool = False) -> list[str]:
    """Sorted names of the cities that have both ``imgs_1`` and ``imgs_2``.

    ``labelled_only`` keeps the cities whose ``<city>-cm.tif`` exists.
    """
    root = find_oscd_root(root)
    images = _images_dir(root)
    cities = sorted(
        c.name for c in images.iterdir() if (c / "imgs_1").is_dir() and (c / "imgs_2").is_dir()
    )
    if labelled_only:
        labels = _labels_dir(root)
        cities = [c for c in cities if labels and (labels / c / "cm" / f"{c}-cm.tif").is_file()]
    return cities


def read_oscd_split(root: str | Path, split: str = "train") -> list[str]:
    """City names listed in the dataset's ``train.txt`` or ``test.txt`` (comma separated)."""
    images = _images_dir(find_oscd_root(root))
    path = images / f"{split}.txt"
    if not path.is_file():
        raise OSCDError(f"{path}: split file not found")
    return [c.strip() for c in path.read_text().replace("\n", ",").split(",") if c.strip()]


def _as_window(window: WindowLike | None, shape: tuple[int, int], city: str) -> Window:
    """A rasterio Window from a Window or ``(row_off, col_off, height, width)``, checked."""
    if window is None:
        return Window(0, 0, shape[1], shape[0])
    if not isinstance(window, Window):
        row_off, col_off, height, width = (int(v) for v in window)
        window = Window(col_off, row_off, width, height)
    r0, c0 = int(window.row_off), int(window.col_off)
    h, w = int(window.height), int(window.width)
    if r0 < 0 or c0 < 0 or h <= 0 or w <= 0 or r0 + h > shape[0] or c0 + w > shape[1]:
        raise OSCDError(
            f"OSCD city {city!r}: window rows {r0}:{r0 + h}, cols {c0}:{c0 + w} lies outside "
            f"the common 10 m grid of shape {shape}"
        )
    return Window(c0, r0, w, h)


def _axis_sampling(
    start: int, count: int, scale: float, offset: float, n_src: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear sampling positions along one axis.

    Target pixel ``i`` has its centre at source index ``(i + 0.5) * scale + offset - 0.5``
    (``scale`` = target/source pixel size, ``offset`` = origin shift in source pixels); edges
    are clamped. Returns the lower and upper source indices and the upper weight.
    """
    pos = (np.arange(start, start + count, dtype=np.float64) + 0.5) * scale + offset - 0.5
    pos = np.clip(pos, 0.0, n_src - 1.0)
    lower = np.floor(pos).astype(np.int64)
    upper = np.minimum(lower + 1, n_src - 1)
    return lower, upper, (pos - lower).astype(np.float32)


class OSCDCity:
    """One OSCD city: two dates of 13 Sentinel-2 bands on a common 10 m grid, maybe labels.

    Args:
        root: the dataset root or its Images folder (see :func:`find_oscd_root`).
        name: the city folder name, e.g. ``"beihai"``.
    """

    bands: tuple[str, ...] = OSCD_BANDS

    def __init__(self, root: str | Path, name: str) -> None:
        self.root = find_oscd_root(root)
        self.name = name
        self.city_dir = _images_dir(self.root) / name
        if not self.city_dir.is_dir():
            known = ", ".join(list_oscd_cities(self.root))
            raise OSCDError(f"{self.city_dir}: no such OSCD city (cities here: {known})")
        labels = _labels_dir(self.root)
        self.label_path = labels / name / "cm" / f"{name}-cm.tif" if labels else None
        self._band_paths = {d: self._find_band_files(d) for d in (1, 2)}
        self._grids = {d: self._band_grid(d, "B02") for d in (1, 2)}

    def __repr__(self) -> str:
        return f"OSCDCity({self.name!r}, shape={self.shape}, labels={self.has_labels})"

    def _find_band_files(self, date: int) -> dict[str, Path]:
        folder = self.city_dir / f"imgs_{date}"
        if not folder.is_dir():
            raise OSCDError(f"{folder}: folder missing (each OSCD city has imgs_1 and imgs_2)")
        files: dict[str, Path] = {}
        for band in self.bands:
            matches = sorted(folder.glob(f"*_{band}.tif"))
            if not matches:
                raise OSCDError(f"{folder}: band file '*_{band}.tif' missing")
            if len(matches) > 1:
                names = ", ".join(m.name for m in matches)
                raise OSCDError(f"{folder}: several files for band {band}: {names}")
            files[band] = matches[0]
        return files

    def _band_grid(self, date: int, band: str) -> tuple[tuple[int, int], rasterio.Affine]:
        path = self._band_paths[date][band]
        try:
            with rasterio.open(path) as src:
                return (src.height, src.width), src.transform
        except rasterio.errors.RasterioIOError as exc:
            raise OSCDError(f"{path}: not a readable GeoTIFF ({exc})") from exc

    @cached_property
    def dates(self) -> tuple[str, str]:
        """Acquisition dates ``("YYYYMMDD", "YYYYMMDD")`` from ``dates.txt``."""
        path = self.city_dir / "dates.txt"
        if not path.is_file():
            raise OSCDError(f"{path}: dates.txt missing")
        found = dict(re.findall(r"date_([12])\s*:\s*(\d{8})", path.read_text()))
        if set(found) != {"1", "2"}:
            raise OSCDError(f"{path}: expected lines 'date_1: YYYYMMDD' and 'date_2: YYYYMMDD'")
        return found["1"], found["2"]

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` of the common 10 m grid: date 1's B02 grid, which both dates are read on."""
        return self._grids[1][0]

    @property
    def transform(self) -> rasterio.Affine:
        """Geotransform of the common grid (date 1's B02 grid; degrees for EPSG:4326)."""
        return self._grids[1][1]

    @cached_property
    def crs(self) -> rasterio.crs.CRS:
        with rasterio.open(self._band_paths[1]["B02"]) as src:
            return src.crs

    def read(self, date: int = 1, window: WindowLike | None = None) -> np.ndarray:
        """Raw digital numbers of date 1 or 2 on the common 10 m grid.

        Args:
            date: 1 or 2.
            window: a rasterio Window or ``(row_off, col_off, height, width)`` on the common grid;
                None reads the whole common extent.

        Returns:
            float32 ``(13, h, w)``, bands in :attr:`bands` order; every band whose grid is not
            date 1's B02 grid (20 m and 60 m bands, and date 2 where its grid differs)
            bilinearly resampled onto it.
        """
        if date not in (1, 2):
            raise ValueError(f"date must be 1 or 2, not {date!r}")
        win = _as_window(window, self.shape, self.name)
        r0, c0, h, w = int(win.row_off), int(win.col_off), int(win.height), int(win.width)
        ref_transform = self.transform
        out = np.empty((len(self.bands), h, w), np.float32)
        for i, band in enumerate(self.bands):
            path = self._band_paths[date][band]
            with rasterio.open(path) as src:
                t = src.transform
                if src.transform == ref_transform:
                    out[i] = src.read(1, window=Window(c0, r0, w, h)).astype(np.float32)
                    continue
                # Map 10 m pixel centres into this band's pixel space (north-up grids).
                rows = _axis_sampling(
                    r0, h, ref_transform.e / t.e, (ref_transform.f - t.f) / t.e, src.height
                )
                cols = _axis_sampling(
                    c0, w, ref_transform.a / t.a, (ref_transform.c - t.c) / t.a, src.width
                )
                rs, re_ = int(rows[0].min()), int(rows[1].max()) + 1
                cs, ce = int(cols[0].min()), int(cols[1].max()) + 1
                block = src.read(1, window=Window(cs, rs, ce - cs, re_ - rs)).astype(np.float32)
            lo, hi, wr = rows[0] - rs, rows[1] - rs, rows[2][:, None]
            by_rows = block[lo] * (1.0 - wr) + block[hi] * wr
            lo, hi, wc = cols[0] - cs, cols[1] - cs, cols[2][None, :]
            out[i] = by_rows[:, lo] * (1.0 - wc) + by_rows[:, hi] * wc
        return out

    @property
    def has_labels(self) -> bool:
        return self.label_path is not None and self.label_path.is_file()

    @cached_property
    def _labels(self) -> np.ndarray:
        if not self.has_labels:
            where = self.label_path or f"{self.root}/{LABELS_DIRNAME}"
            raise FileNotFoundError(
                f"OSCD city {self.name!r} has no change labels ({where} not found); only "
                "the 10 released training cities are labelled"
            )
        path = self.label_path
        with warnings.catch_warnings():  # OSCD label rasters carry no georeferencing
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                raw = src.read(1)
        values = set(np.unique(raw).tolist())
        if values <= {1, 2}:  # the files as distributed: 1 = no change, 2 = change
            labels = (raw == 2).astype(np.uint8)
        elif values <= {0, 1}:  # what the dataset README claims
            labels = raw.astype(np.uint8)
        else:
            raise OSCDError(f"{path}: label values {sorted(values)}; expected 1/2 (or 0/1)")
        h, w = self.shape
        if labels.shape[0] < h or labels.shape[1] < w:
            raise OSCDError(
                f"{path}: label raster is {labels.shape} pixels, smaller than the image grid "
                f"{self.shape}"
            )
        return labels[:h, :w]

    def read_labels(self, window: WindowLike | None = None) -> np.ndarray:
        """Change labels on the common grid: uint8 ``(h, w)``, 0 = no change, 1 = change.

        Raises FileNotFoundError (naming the expected file) for an unlabelled city.
        """
        labels = self._labels
        win = _as_window(window, self.shape, self.name)
        r0, c0 = int(win.row_off), int(win.col_off)
        return labels[r0 : r0 + int(win.height), c0 : c0 + int(win.width)].copy()
