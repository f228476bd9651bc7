"""Land-cover training data: sparse labels from polygons/points, spatial blocks, patch folders.

Segmentation: a raster and training polygons or points (any OGR vector: GeoPackage, shapefile,
GeoJSON) with a class attribute are rasterised onto the raster's grid as sparse labels
(:data:`IGNORE_INDEX` where unlabelled). Validation pixels are whole square blocks held out
(:func:`spatial_block_split`), never random pixels: neighbouring pixels are nearly identical, so
a random pixel split measures memorisation, not mapping skill.

Classification: a folder per class of patches (EuroSAT layout), GeoTIFF/PNG/JPEG.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from ..bands import SENTINEL2_L1C
from .change import (
    IGNORE_INDEX,
    BandScaling,
    ItemKey,
    _pad_to,
    augment_d4,
    item_rng,
    tile_origins,
)

PATCH_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
# Default class colours (ColorBrewer-like, distinguishable on a map), used in order.
DEFAULT_PALETTE = (
    "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666",
    "#1f78b4", "#b2df8a", "#fb9a99", "#cab2d6", "#ffff99", "#6a3d9a", "#b15928", "#8dd3c7",
)  # fmt: skip


class LandcoverDataError(ValueError):
    """Bad land-cover input; the message names the file and the problem."""


@dataclass
class LabelledRaster:
    """A raster in memory with sparse class labels.

    ``image``: float32 ``(C, H, W)`` raw values; ``labels``: uint8 ``(H, W)`` class ids
    ``0..K-1`` or :data:`IGNORE_INDEX`; ``class_values``: the attribute value of each class id.
    """

    path: Path
    image: np.ndarray
    labels: np.ndarray
    class_values: list[str]
    band_names: list[str]
    transform: rasterio.Affine
    crs: rasterio.crs.CRS | None
    dtype: str


def raster_band_names(path: Path, count: int) -> list[str]:
    """Band descriptions if all set and unique; Sentinel-2 names for 13 bands; else B1..Bn."""
    with rasterio.open(path) as src:
        desc = list(src.descriptions)
    if all(desc) and len(set(desc)) == len(desc):
        return [str(d) for d in desc]
    if count == 13:
        return list(SENTINEL2_L1C.bands)
    if count == 3 and path.suffix.lower() in (".png", ".jpg", ".jpeg"):
        return ["RED", "GREEN", "BLUE"]
    return [f"B{i}" for i in range(1, count + 1)]


def default_input_scale(dtype: str) -> float:
    """1/255 for 8-bit data; 1 otherwise (per-band standardisation does the rest)."""
    return 1.0 / 255.0 if dtype == "uint8" else 1.0


def _class_key(value: object) -> tuple[int, float | str]:
    """Sort numbers numerically, then strings."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value))
    return (1, str(value))


def read_training_labels(
    vector_path: str | Path,
    raster_path: str | Path,
    class_field: str,
    layer: str | None = None,
    class_values: Sequence[str] | None = None,
) -> LabelledRaster:
    """Read a raster and rasterise training polygons/points onto its grid.

    Args:
        vector_path: polygons or points (GeoPackage, shapefile, ...), reprojected to the
            raster's CRS if they differ.
        raster_path: the image (all bands are used).
        class_field: the attribute holding the class (text or number).
        layer: the vector layer (default: the first).
        class_values: the class list in id order (default: the sorted distinct values). Features
            whose value is empty or not in the list are skipped.

    Pixels touched by features of two different classes are ignored (conflicting labels);
    points label the pixel that contains them.
    """
    import fiona
    from fiona.transform import transform_geom
    from rasterio.features import rasterize

    vector_path, raster_path = Path(vector_path), Path(raster_path)
    try:
        src = rasterio.open(raster_path)
    except rasterio.errors.RasterioIOError as exc:
        raise LandcoverDataError(f"{raster_path}: not a readable raster ({exc})") from exc
    with src:
        image = src.read().astype(np.float32)
        valid = src.dataset_mask() > 0
        transform, crs, shape, dtype = src.transform, src.crs, src.shape, src.dtypes[0]
    try:
        with fiona.open(vector_path, layer=layer) as features:
            if class_field not in features.schema["properties"]:
                raise LandcoverDataError(
                    f"{vector_path}: no attribute {class_field!r} "
                    f"(attributes: {', '.join(features.schema['properties'])})"
                )
            vec_crs = features.crs_wkt or None
            records = [
                (f.geometry, f.properties[class_field]) for f in features if f.geometry is not None
            ]
    except fiona.errors.DriverError as exc:
        raise LandcoverDataError(f"{vector_path}: not a readable vector file ({exc})") from exc
    records = [(g, v) for g, v in records if v is not None and str(v).strip() != ""]
    if not records:
        raise LandcoverDataError(f"{vector_path}: no feature has a value in {class_field!r}")
    if crs is not None and vec_crs:
        records = [(transform_geom(vec_crs, crs.to_wkt(), g), v) for g, v in records]
    if class_values is None:
        distinct = sorted({v for _, v in records}, key=_class_key)
        class_values = [str(v) for v in distinct]
    class_values = [str(v) for v in class_values]
    if len(class_values) < 2:
        raise LandcoverDataError(
            f"{vector_path}: {class_field!r} has {len(class_values)} class(es); need at least 2"
        )
    hits = np.zeros(shape, np.uint8)
    labels = np.full(shape, IGNORE_INDEX, np.uint8)
    for class_id, value in enumerate(class_values):
        shapes = [(g, 1) for g, v in records if str(v) == value]
        if not shapes:
            continue
        burned = rasterize(shapes, out_shape=shape, transform=transform, fill=0, dtype="uint8")
        hits += burned.astype(bool)
        labels[burned > 0] = class_id
    labels[hits > 1] = IGNORE_INDEX
    labels[~valid] = IGNORE_INDEX
    if not (labels != IGNORE_INDEX).any():
        raise LandcoverDataError(
            f"{vector_path}: no training feature falls on the raster {raster_path} "
            "(different areas or CRS?)"
        )
    return LabelledRaster(
        raster_path,
        image,
        labels,
        class_values,
        raster_band_names(raster_path, image.shape[0]),
        transform,
        crs,
        dtype,
    )


def spatial_block_split(
    labels: np.ndarray,
    block_size: int,
    val_fraction: float = 0.2,
    seed: int = 0,
    buffer: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Hold out whole square blocks of labelled pixels for validation.

    Blocks of ``block_size`` px are shuffled (``seed``) and moved to validation until they hold
    at least ``val_fraction`` of the labelled pixels. Training labels within ``buffer`` px of a
    validation block are dropped so that no training pixel touches a validation pixel.

    Returns ``(train_labels, val_labels)``, copies of ``labels`` with the other part ignored.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    h, w = labels.shape
    labelled = labels != IGNORE_INDEX
    total = int(labelled.sum())
    rows, cols = -(-h // block_size), -(-w // block_size)
    block_id = (np.arange(h)[:, None] // block_size) * cols + np.arange(w)[None, :] // block_size
    counts = np.bincount(block_id[labelled], minlength=rows * cols)
    candidates = np.flatnonzero(counts)
    if len(candidates) < 2:
        raise LandcoverDataError(
            f"all labelled pixels fall in one {block_size} px block: use a smaller --block-size"
        )
    order = np.random.default_rng(seed).permutation(candidates)
    val_blocks: list[int] = []
    held = 0
    for b in order[:-1]:  # always leave at least one block for training
        if held >= val_fraction * total:
            break
        val_blocks.append(int(b))
        held += int(counts[b])
    in_val = np.isin(block_id, val_blocks)
    train, val = labels.copy(), labels.copy()
    val[~in_val] = IGNORE_INDEX
    near_val = ndimage.binary_dilation(in_val, iterations=buffer) if buffer > 0 else in_val
    train[near_val] = IGNORE_INDEX
    if not (train != IGNORE_INDEX).any():
        raise LandcoverDataError("no training labels left after the block split")
    return train, val


class RandomLabelledWindows(Dataset):
    """Random square windows, each containing at least one labelled pixel, with D4 augmentation.

    Items: ``x`` float32 ``(C, S, S)`` scaled, ``y`` int64 ``(S, S)`` class ids or ignore. Each
    item depends only on ``seed`` and its key (index or ``(epoch, index)``; see ``item_rng``).
    """

    def __init__(
        self,
        image: np.ndarray,
        labels: np.ndarray,
        scaling: BandScaling,
        crop_size: int,
        length: int,
        augment: bool = True,
        seed: int = 0,
    ) -> None:
        self.image = scaling.apply(image)
        self.labels = labels
        self.crop_size = crop_size
        self.length = length
        self.augment = augment
        self.seed = seed
        self.labelled = np.argwhere(labels != IGNORE_INDEX)
        if len(self.labelled) == 0:
            raise LandcoverDataError("no labelled pixels to train on")

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: ItemKey) -> tuple[torch.Tensor, torch.Tensor]:
        rng = item_rng(self.seed, index)
        r, c = self.labelled[int(rng.integers(len(self.labelled)))]
        s = self.crop_size
        h, w = self.labels.shape
        r0 = int(np.clip(r - rng.integers(s), 0, max(h - s, 0)))
        c0 = int(np.clip(c - rng.integers(s), 0, max(w - s, 0)))
        x = _pad_to(self.image[:, r0 : r0 + s, c0 : c0 + s], s, s, None)
        y = _pad_to(self.labels[r0 : r0 + s, c0 : c0 + s], s, s, IGNORE_INDEX)
        if self.augment:
            x, y = augment_d4([x, y], rng)
        return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))


class TiledLabelledWindows(Dataset):
    """Tiles covering the raster; each labelled pixel counted once (overlaps ignored).

    Only tiles holding labelled pixels are kept. Items: ``x`` ``(C, T, T)``, ``y`` ``(T, T)``.
    """

    def __init__(
        self, image: np.ndarray, labels: np.ndarray, scaling: BandScaling, tile_size: int
    ) -> None:
        self.image = scaling.apply(image)
        self.labels = labels
        self.tile_size = t = tile_size
        h, w = labels.shape
        self.items = []
        for r0 in tile_origins(h, t):
            for c0 in tile_origins(w, t):
                y = labels[r0 : r0 + t, c0 : c0 + t].copy()
                if r0 % t:
                    y[: (r0 // t) * t + t - r0] = IGNORE_INDEX
                if c0 % t:
                    y[:, : (c0 // t) * t + t - c0] = IGNORE_INDEX
                if (y != IGNORE_INDEX).any():
                    self.items.append((r0, c0, y))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        r0, c0, y = self.items[index]
        t = self.tile_size
        x = _pad_to(self.image[:, r0 : r0 + t, c0 : c0 + t], t, t, None)
        y = _pad_to(y, t, t, IGNORE_INDEX)
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64))


# ---------------------------------------------------------------------------------------------
# Patch folders (EuroSAT layout)


@dataclass
class PatchFolder:
    """Patches found under ``root/<class>/*``; ``labels[i]`` is the class id of ``files[i]``."""

    root: Path
    class_values: list[str]
    files: list[Path]
    labels: list[int]


def list_patch_folder(root: str | Path, class_values: Sequence[str] | None = None) -> PatchFolder:
    """Find the class folders and their GeoTIFF/PNG/JPEG patches (sorted class names)."""
    root = Path(root)
    if not root.is_dir():
        raise LandcoverDataError(f"{root}: patch folder not found")
    found = sorted(
        d.name
        for d in root.iterdir()
        if d.is_dir() and any(f.suffix.lower() in PATCH_SUFFIXES for f in d.iterdir())
    )
    classes = list(class_values) if class_values is not None else found
    if len(classes) < 2:
        raise LandcoverDataError(
            f"{root}: need at least 2 class folders holding {'/'.join(PATCH_SUFFIXES)} files, "
            f"found {found}"
        )
    files, labels = [], []
    for class_id, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            raise LandcoverDataError(f"{folder}: class folder missing")
        for f in sorted(folder.iterdir()):
            if f.suffix.lower() in PATCH_SUFFIXES:
                files.append(f)
                labels.append(class_id)
    return PatchFolder(root, classes, files, labels)


def read_patch(path: Path) -> np.ndarray:
    """float32 ``(C, H, W)`` raw values of one patch (GeoTIFF, PNG or JPEG)."""
    try:
        with warnings.catch_warnings():  # PNG/JPEG patches carry no georeferencing
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                return src.read().astype(np.float32)
    except rasterio.errors.RasterioIOError as exc:
        raise LandcoverDataError(f"{path}: not a readable image ({exc})") from exc


def patch_dtype(path: Path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            return src.dtypes[0]


def stratified_split(
    labels: Sequence[int], val_fraction: float, seed: int = 0
) -> tuple[list[int], list[int]]:
    """Indices of a per-class random split (at least one patch of each class for training)."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(int(y), []).append(i)
    for _, idx in sorted(by_class.items()):
        idx = list(rng.permutation(idx))
        n_val = min(int(round(val_fraction * len(idx))), len(idx) - 1)
        val += idx[:n_val]
        train += idx[n_val:]
    return sorted(train), sorted(val)


class PatchDataset(Dataset):
    """Patches in memory, resized (bilinear) to ``size`` if needed, optional D4 augmentation.

    Items: ``x`` float32 ``(C, size, size)`` scaled, ``y`` int64 class id. The key is an index or
    ``(epoch, index)``; the augmentation depends only on ``seed`` and the key (see ``item_rng``).
    """

    def __init__(
        self,
        files: Sequence[Path],
        labels: Sequence[int],
        scaling: BandScaling,
        size: int,
        augment: bool = False,
        seed: int = 0,
    ) -> None:
        self.labels = list(labels)
        self.augment = augment
        self.seed = seed
        patches = []
        channels = None
        for f in files:
            patch = read_patch(f)
            if channels is None:
                channels = patch.shape[0]
            elif patch.shape[0] != channels:
                raise LandcoverDataError(
                    f"{f}: {patch.shape[0]} bands, but the other patches have {channels}"
                )
            x = torch.from_numpy(scaling.apply(patch))
            if x.shape[-2:] != (size, size):
                x = torch.nn.functional.interpolate(
                    x[None], size=(size, size), mode="bilinear", align_corners=False
                )[0]
            patches.append(x.numpy())
        self.patches = patches

    def __len__(self) -> int:
        return len(self.patches)

    def __getitem__(self, index: ItemKey) -> tuple[torch.Tensor, torch.Tensor]:
        i = index[1] if isinstance(index, tuple) else index
        x = self.patches[i]
        if self.augment:
            (x,) = augment_d4([x], item_rng(self.seed, index))
        return torch.from_numpy(np.ascontiguousarray(x)), torch.tensor(self.labels[i])


def common_patch_size(files: Sequence[Path]) -> int:
    """The most common patch side (height) among the first 200 files."""
    sizes = Counter()
    for f in files[:200]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(f) as src:
                sizes[src.height] += 1
    return sizes.most_common(1)[0][0]
