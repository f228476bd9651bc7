"""Bi-temporal change-detection training data: scenes in memory, random and tiled windows.

Two sources produce the same :class:`ChangeScene` objects:

- :func:`load_oscd_scenes`: labelled OSCD cities (via :mod:`swimdiff_geo.data.oscd`).
- :func:`load_manifest_scenes`: the user's own pairs of GeoTIFFs with a change mask raster or
  change polygons, listed in a YAML or CSV manifest (see :func:`read_change_manifest`).

Scenes hold raw digital numbers; :class:`BandScaling` turns them into the model's input scale
exactly as the inference engine does (``(x * input_scale - mean) / std``), and the same values
go into the exported model's metadata.
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
import yaml
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from torch.utils.data import Dataset, Sampler

from .oscd import OSCD_BANDS, OSCDCity, find_oscd_root

IGNORE_INDEX = 255  # label value of pixels that take no part in the loss or the metrics


class ChangeDataError(ValueError):
    """Bad change-detection input; the message names the file and the problem."""


@dataclass
class ChangeScene:
    """One co-registered image pair with its labels.

    ``image_a``/``image_b``: float32 ``(C, H, W)`` raw digital numbers; ``labels``: uint8
    ``(H, W)``, 0 = no change, 1 = change, :data:`IGNORE_INDEX` = unknown (nodata, padding).
    """

    name: str
    image_a: np.ndarray
    image_b: np.ndarray
    labels: np.ndarray
    transform: rasterio.Affine | None = None
    crs: rasterio.crs.CRS | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.labels.shape  # type: ignore[return-value]


@dataclass
class BandScaling:
    """Raw DN -> model input: ``(x * input_scale - mean[b]) / std[b]`` per band ``b``.

    ``input_band_means``: the training inputs' band means of ``x * input_scale`` whether or not
    they are standardised; the exported model keeps them so that the engine can tell inputs
    on another scale (its units check).
    """

    input_scale: float = 1.0
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    input_band_means: list[float] = field(default_factory=list)

    @classmethod
    def from_contract(cls, contract: Mapping[str, Any] | Any) -> BandScaling:
        """The scaling a model contract records: a ``ModelContract`` or its dict form (the
        ``contract`` of a fine-tuning checkpoint)."""

        def get(key: str) -> Any:
            if isinstance(contract, Mapping):
                return contract.get(key)
            return getattr(contract, key, None)

        return cls(
            float(get("input_scale") or 1.0),
            list(get("standardization_mean") or []),
            list(get("standardization_std") or []),
            list(get("input_band_means") or []),
        )

    def apply(self, image: np.ndarray) -> np.ndarray:
        """Scale ``(..., C, H, W)`` raw values; C may be a multiple of the number of bands."""
        out = image.astype(np.float32) * np.float32(self.input_scale)
        if self.mean:
            reps = out.shape[-3] // len(self.mean)
            mean = np.tile(np.asarray(self.mean, np.float32), reps)[:, None, None]
            std = np.tile(np.asarray(self.std, np.float32), reps)[:, None, None]
            out = (out - mean) / std
        return out


def band_statistics(
    images: Sequence[np.ndarray], input_scale: float
) -> tuple[list[float], list[float]]:
    """Per-band mean and standard deviation of ``x * input_scale`` over ``(C, H, W)`` images."""
    channels = images[0].shape[0]
    total = np.zeros(channels, np.float64)
    total_sq = np.zeros(channels, np.float64)
    count = 0
    for image in images:
        scaled = image.reshape(channels, -1).astype(np.float64) * input_scale
        total += scaled.sum(1)
        total_sq += (scaled**2).sum(1)
        count += scaled.shape[1]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    std = np.where(std > 1e-6, std, 1.0)  # constant bands (e.g. B10 over water) stay finite
    return [float(v) for v in mean], [float(v) for v in std]


def positive_fraction(scenes: Sequence[ChangeScene]) -> float:
    """Fraction of labelled pixels (ignore excluded) that are change."""
    pos = sum(int((s.labels == 1).sum()) for s in scenes)
    known = sum(int((s.labels != IGNORE_INDEX).sum()) for s in scenes)
    return pos / known if known else 0.0


# ---------------------------------------------------------------------------------------------
# OSCD


def load_oscd_scenes(
    root: str | Path, cities: Sequence[str], bands: Sequence[str] | None = None
) -> list[ChangeScene]:
    """Read labelled OSCD cities into memory, optionally keeping only ``bands`` (names)."""
    root = find_oscd_root(root)
    band_index = _band_indices(bands, OSCD_BANDS, f"OSCD ({root})")
    scenes = []
    for name in cities:
        city = OSCDCity(root, name)
        if not city.has_labels:
            raise ChangeDataError(
                f"OSCD city {name!r} has no labels under {root}; labelled cities can train or "
                "validate, the others only serve as unlabelled imagery"
            )
        scenes.append(
            ChangeScene(
                name=name,
                image_a=city.read(1)[band_index],
                image_b=city.read(2)[band_index],
                labels=city.read_labels(),
                transform=city.transform,
                crs=city.crs,
            )
        )
    return scenes


def _band_indices(bands: Sequence[str] | None, available: Sequence[str], source: str) -> list[int]:
    if not bands:
        return list(range(len(available)))
    unknown = [b for b in bands if b not in available]
    if unknown:
        raise ChangeDataError(
            f"{source}: unknown band(s) {', '.join(unknown)}; available: {', '.join(available)}"
        )
    return [list(available).index(b) for b in bands]


# ---------------------------------------------------------------------------------------------
# Manifests of the user's own pairs


@dataclass
class ChangePairEntry:
    """One manifest row; paths are absolute. Exactly one of ``mask``/``polygons`` is set."""

    name: str
    image_a: Path
    image_b: Path
    mask: Path | None = None
    polygons: Path | None = None
    split: str | None = None  # "train" | "val" | None (chosen by --train-cities/--val-cities)


@dataclass
class ChangeManifest:
    path: Path
    entries: list[ChangePairEntry]
    bands: list[str] | None = None
    input_scale: float | None = None

    def names(self, split: str | None = None) -> list[str]:
        return [e.name for e in self.entries if split is None or e.split == split]


def read_change_manifest(path: str | Path) -> ChangeManifest:
    """Read a manifest of image pairs with change labels.

    YAML::

        bands: [B02, B03, B04, B08]     # optional: names of the raster bands, in file order
        input_scale: 0.0001             # optional: raw DN multiplier (default by dtype)
        pairs:
          - {name: site1, image_a: a.tif, image_b: b.tif, mask: change.tif, split: train}
          - {name: site2, image_a: c.tif, image_b: d.tif, polygons: change.gpkg, split: val}

    or CSV with the header ``name,image_a,image_b,mask,polygons,split`` (``mask``/``polygons``
    one of them per row; ``split`` optional). Relative paths are relative to the manifest.
    Mask rasters: 0 = no change, any other value = change, declared nodata = ignored. Polygons
    (any OGR vector) mark change; the rest of image A's footprint is "no change".
    """
    path = Path(path)
    if not path.is_file():
        raise ChangeDataError(f"{path}: manifest not found")
    bands: list[str] | None = None
    input_scale: float | None = None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            doc = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ChangeDataError(f"{path}: not valid YAML ({exc})") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("pairs"), list):
            raise ChangeDataError(f"{path}: expected a mapping with a 'pairs' list")
        rows = doc["pairs"]
        bands = doc.get("bands")
        input_scale = doc.get("input_scale")
    elif path.suffix.lower() == ".csv":
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        raise ChangeDataError(f"{path}: manifest must be .yaml, .yml or .csv")
    entries = []
    for i, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise ChangeDataError(f"{path}: pair {i} is not a mapping")
        missing = [k for k in ("image_a", "image_b") if not row.get(k)]
        if missing:
            raise ChangeDataError(f"{path}: pair {i} lacks {', '.join(missing)}")
        if bool(row.get("mask")) == bool(row.get("polygons")):
            raise ChangeDataError(f"{path}: pair {i} needs exactly one of 'mask' or 'polygons'")

        def resolve(key: str, row: dict = row, i: int = i) -> Path | None:
            if not row.get(key):
                return None
            p = Path(str(row[key])).expanduser()
            p = p if p.is_absolute() else path.parent / p
            if not p.exists():
                raise ChangeDataError(f"{path}: pair {i}: {key} file {p} not found")
            return p

        split = (row.get("split") or None) and str(row["split"]).strip().lower()
        if split not in (None, "train", "val"):
            raise ChangeDataError(f"{path}: pair {i}: split must be train or val, not {split!r}")
        entries.append(
            ChangePairEntry(
                name=str(row.get("name") or f"pair{i}"),
                image_a=resolve("image_a"),  # type: ignore[arg-type]
                image_b=resolve("image_b"),  # type: ignore[arg-type]
                mask=resolve("mask"),
                polygons=resolve("polygons"),
                split=split,
            )
        )
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ChangeDataError(f"{path}: pair names must be unique")
    return ChangeManifest(path, entries, bands, input_scale)


def _read_on_grid(
    path: Path, ref: rasterio.DatasetReader, resampling: Resampling
) -> tuple[np.ndarray, np.ndarray]:
    """Read all bands of ``path`` on ``ref``'s grid; returns (float32 data, valid mask)."""
    with rasterio.open(path) as src:
        same = src.crs == ref.crs and src.transform == ref.transform and src.shape == ref.shape
        if same:
            data = src.read().astype(np.float32)
            valid = src.dataset_mask() > 0
            return data, valid
        if src.crs is None or ref.crs is None:
            raise ChangeDataError(
                f"{path}: grid differs from {ref.name} and one of them has no CRS, so it cannot "
                "be aligned"
            )
        with WarpedVRT(
            src,
            crs=ref.crs,
            transform=ref.transform,
            width=ref.width,
            height=ref.height,
            resampling=resampling,
        ) as vrt:
            return vrt.read().astype(np.float32), vrt.dataset_mask() > 0


def load_manifest_scenes(
    manifest: ChangeManifest, names: Sequence[str] | None = None
) -> list[ChangeScene]:
    """Read the manifest's pairs (or those in ``names``) into memory on image A's grid.

    Image B and a mask raster on another grid are warped onto image A's grid (bilinear for
    images, nearest for masks); pixels that are nodata in either image become ignored labels.
    """
    from rasterio.features import rasterize

    wanted = set(names) if names is not None else None
    if wanted is not None:
        unknown = wanted - set(manifest.names())
        if unknown:
            raise ChangeDataError(
                f"{manifest.path}: no pair named {', '.join(sorted(unknown))} "
                f"(pairs: {', '.join(manifest.names())})"
            )
    scenes = []
    for entry in manifest.entries:
        if wanted is not None and entry.name not in wanted:
            continue
        try:
            ref = rasterio.open(entry.image_a)
        except rasterio.errors.RasterioIOError as exc:
            raise ChangeDataError(f"{entry.image_a}: not a readable raster ({exc})") from exc
        with ref:
            image_a = ref.read().astype(np.float32)
            valid = ref.dataset_mask() > 0
            image_b, valid_b = _read_on_grid(entry.image_b, ref, Resampling.bilinear)
            if image_b.shape[0] != image_a.shape[0]:
                raise ChangeDataError(
                    f"{entry.image_b}: {image_b.shape[0]} bands, but image A "
                    f"({entry.image_a.name}) has {image_a.shape[0]}"
                )
            valid &= valid_b
            if manifest.bands is not None and len(manifest.bands) != image_a.shape[0]:
                raise ChangeDataError(
                    f"{manifest.path}: 'bands' names {len(manifest.bands)} bands but "
                    f"{entry.image_a} has {image_a.shape[0]}"
                )
            if entry.mask is not None:
                with rasterio.open(entry.mask) as msrc:
                    mask_nodata = msrc.nodata
                mask, mask_valid = _read_on_grid(entry.mask, ref, Resampling.nearest)
                raw = mask[0]
                labels = (raw != 0).astype(np.uint8)
                if mask_nodata is not None:
                    mask_valid &= raw != mask_nodata
                valid &= mask_valid
            else:
                labels = _rasterize_polygons(entry.polygons, ref, rasterize)  # type: ignore[arg-type]
            labels[~valid] = IGNORE_INDEX
            scenes.append(ChangeScene(entry.name, image_a, image_b, labels, ref.transform, ref.crs))
    return scenes


def _rasterize_polygons(path: Path, ref: rasterio.DatasetReader, rasterize) -> np.ndarray:  # noqa: ANN001
    import fiona
    from fiona.transform import transform_geom

    try:
        with fiona.open(path) as layer:
            src_crs = layer.crs_wkt or None
            geoms = [f.geometry for f in layer if f.geometry is not None]
    except fiona.errors.DriverError as exc:
        raise ChangeDataError(f"{path}: not a readable vector file ({exc})") from exc
    if ref.crs is not None and src_crs:
        geoms = [transform_geom(src_crs, ref.crs.to_wkt(), g) for g in geoms]
    shapes = [(g, 1) for g in geoms]
    if not shapes:
        return np.zeros(ref.shape, np.uint8)
    return rasterize(shapes, out_shape=ref.shape, transform=ref.transform, fill=0, dtype="uint8")


def manifest_band_names(manifest: ChangeManifest, scene_path: Path) -> list[str]:
    """Band names for the model metadata: the manifest's, else the raster's descriptions."""
    if manifest.bands:
        return list(manifest.bands)
    with rasterio.open(scene_path) as src:
        desc = list(src.descriptions)
        if all(desc) and len(set(desc)) == len(desc):
            return [str(d) for d in desc]
        return [f"B{i}" for i in range(1, src.count + 1)]


def default_input_scale(path: Path) -> float:
    """1/255 for 8-bit rasters, else 1 (standardisation takes care of the rest)."""
    with rasterio.open(path) as src:
        return 1.0 / 255.0 if src.dtypes[0] == "uint8" else 1.0


# ---------------------------------------------------------------------------------------------
# Windows


def _pad_to(array: np.ndarray, height: int, width: int, value: float | None) -> np.ndarray:
    """Pad the last two axes at the bottom/right to at least ``height`` x ``width``.

    ``value`` None mirrors the image (so batch norm sees plausible pixels); otherwise constant.
    """
    ph, pw = max(0, height - array.shape[-2]), max(0, width - array.shape[-1])
    if ph == 0 and pw == 0:
        return array
    pad = [(0, 0)] * (array.ndim - 2) + [(0, ph), (0, pw)]
    if value is not None:
        return np.pad(array, pad, mode="constant", constant_values=value)
    while ph or pw:  # symmetric padding handles at most the array's size per round
        step_h, step_w = min(ph, array.shape[-2]), min(pw, array.shape[-1])
        pad = [(0, 0)] * (array.ndim - 2) + [(0, step_h), (0, step_w)]
        array = np.pad(array, pad, mode="symmetric")
        ph, pw = ph - step_h, pw - step_w
    return array


# A training item's key: its index, or (epoch, index) from :class:`EpochSampler`.
ItemKey = int | tuple[int, int]


def item_rng(seed: int, key: ItemKey) -> np.random.Generator:
    """The random generator of one training item: a function of (seed, epoch, index) only.

    Not drawn from torch's global generator: that one is reset by ``seed_everything`` when a run
    is resumed, so a resumed run would draw epoch 0's windows again; nor does it depend on the
    DataLoader worker that happens to load the item. A plain index counts as epoch 0.
    """
    epoch, index = key if isinstance(key, tuple) else (0, key)
    # SeedSequence entropy must be non-negative; --seed may be any integer.
    return np.random.default_rng([seed % 2**64, epoch, index])


class EpochSampler(Sampler):
    """Every index of a dataset once per epoch, as ``(epoch, index)`` keys, shuffled with a
    permutation that depends on (seed, epoch) only.

    Lightning calls :meth:`set_epoch` at the start of every epoch, also the first epoch of a
    resumed run, so an epoch's items and their order are the same whether or not the run was
    interrupted before it. The epoch travels in the key rather than as a dataset attribute
    because persistent DataLoader workers hold their own copy of the dataset.
    """

    def __init__(self, length: int, seed: int = 0, shuffle: bool = True) -> None:
        self.length = length
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = (
            np.random.default_rng([self.seed % 2**64, self.epoch]).permutation(self.length)
            if self.shuffle
            else np.arange(self.length)
        )
        return iter([(self.epoch, int(i)) for i in order])


def augment_d4(arrays: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """Apply the same random flip and 90-degree rotation to every ``(..., S, S)`` array."""
    k = int(rng.integers(4))
    flip_h, flip_v = bool(rng.integers(2)), bool(rng.integers(2))
    out = []
    for a in arrays:
        a = np.rot90(a, k, axes=(-2, -1))
        if flip_h:
            a = a[..., :, ::-1]
        if flip_v:
            a = a[..., ::-1, :]
        out.append(np.ascontiguousarray(a))
    return out


class RandomChangeWindows(Dataset):
    """Random square windows from change scenes, with flips and 90-degree rotations.

    Scenes are drawn with probability proportional to their area; ``length`` windows make an
    epoch. Items: ``x`` float32 ``(2C, S, S)`` scaled (date A then date B), ``y`` int64
    ``(S, S)`` with 0/1/:data:`IGNORE_INDEX`. Scenes smaller than ``S`` are mirror-padded and
    their padding ignored.

    ``radiometric_jitter`` j > 0: each date of a window gets its own per-band gain
    ``U(1 - j, 1 + j)`` and offset ``U(-j, j)`` times the band's standard deviation (in model
    input units), so that illumination, haze and water-colour differences between the dates
    look like what they are, not like change.

    Each item's window, augmentation and jitter depend only on ``seed`` and its key (an index,
    or ``(epoch, index)`` from :class:`EpochSampler`): see :func:`item_rng`.
    """

    def __init__(
        self,
        scenes: Sequence[ChangeScene],
        scaling: BandScaling,
        crop_size: int,
        length: int,
        augment: bool = True,
        radiometric_jitter: float = 0.0,
        seed: int = 0,
    ) -> None:
        if not scenes:
            raise ChangeDataError("no training scenes")
        self.scenes = list(scenes)
        self.scaling = scaling
        self.crop_size = crop_size
        self.length = length
        self.augment = augment
        areas = np.array([s.shape[0] * s.shape[1] for s in self.scenes], np.float64)
        self.probabilities = areas / areas.sum()
        self._scaled = [(scaling.apply(s.image_a), scaling.apply(s.image_b)) for s in self.scenes]
        self.radiometric_jitter = radiometric_jitter
        self.seed = seed
        if radiometric_jitter:  # a pass over every training pixel: only when it is used
            _, band_std = band_statistics([im for pair in self._scaled for im in pair], 1.0)
            self._band_std = np.asarray(band_std, np.float32)[:, None, None]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: ItemKey) -> tuple[torch.Tensor, torch.Tensor]:
        rng = item_rng(self.seed, index)
        i = int(rng.choice(len(self.scenes), p=self.probabilities))
        a, b = self._scaled[i]
        labels = self.scenes[i].labels
        s = self.crop_size
        h, w = labels.shape
        r0 = int(rng.integers(0, max(h - s, 0) + 1))
        c0 = int(rng.integers(0, max(w - s, 0) + 1))
        window = (slice(r0, r0 + s), slice(c0, c0 + s))
        dates = [a[:, window[0], window[1]], b[:, window[0], window[1]]]
        if self.radiometric_jitter:
            dates = [self._jitter(d, rng) for d in dates]
        x = np.concatenate(dates)
        y = labels[window]
        x, y = _pad_to(x, s, s, None), _pad_to(y, s, s, IGNORE_INDEX)
        if self.augment:
            x, y = augment_d4([x, y], rng)
        return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))

    def _jitter(self, date: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        j = self.radiometric_jitter
        bands = date.shape[0]
        gain = rng.uniform(1 - j, 1 + j, (bands, 1, 1)).astype(np.float32)
        offset = rng.uniform(-j, j, (bands, 1, 1)).astype(np.float32) * self._band_std
        return date * gain + offset


def tile_origins(length: int, tile: int) -> list[int]:
    """Offsets of tiles of size ``tile`` covering ``length`` pixels; the last one is flush with
    the end (it overlaps its neighbour) unless ``length < tile``."""
    if length <= tile:
        return [0]
    origins = list(range(0, length - tile + 1, tile))
    if origins[-1] + tile < length:
        origins.append(length - tile)
    return origins


class TiledChangeWindows(Dataset):
    """Windows covering every pixel of every scene exactly once in the labels.

    Tiles of ``tile_size`` are laid over each scene; where the last tile overlaps its neighbour
    the overlapping labels are set to :data:`IGNORE_INDEX` in the later tile, so pixel-wise
    metrics accumulated over all tiles count each pixel once. Items: ``x`` ``(2C, T, T)``, ``y``
    ``(T, T)``, and the scene index (for per-scene metrics).
    """

    def __init__(self, scenes: Sequence[ChangeScene], scaling: BandScaling, tile_size: int) -> None:
        self.scenes = list(scenes)
        self.scaling = scaling
        self.tile_size = tile_size
        self.items: list[tuple[int, int, int]] = []
        for i, scene in enumerate(self.scenes):
            h, w = scene.shape
            for r in tile_origins(h, tile_size):
                for c in tile_origins(w, tile_size):
                    self.items.append((i, r, c))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        i, r0, c0 = self.items[index]
        scene = self.scenes[i]
        t = self.tile_size
        window = (slice(r0, r0 + t), slice(c0, c0 + t))
        x = np.concatenate(
            [
                self.scaling.apply(scene.image_a[:, window[0], window[1]]),
                self.scaling.apply(scene.image_b[:, window[0], window[1]]),
            ]
        )
        y = scene.labels[window].copy()
        # Labels already covered by the regular tile before a flush-with-the-end tile.
        r_prev = (r0 // t) * t if r0 % t else r0
        c_prev = (c0 // t) * t if c0 % t else c0
        if r0 % t:
            y[: r_prev + t - r0] = IGNORE_INDEX
        if c0 % t:
            y[:, : c_prev + t - c0] = IGNORE_INDEX
        x, y = _pad_to(x, t, t, None), _pad_to(y, t, t, IGNORE_INDEX)
        return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64)), i


def warn_if_tiny(scenes: Sequence[ChangeScene], crop_size: int) -> None:
    small = [s.name for s in scenes if min(s.shape) < crop_size]
    if small:
        warnings.warn(
            f"scenes smaller than the crop size {crop_size} px are mirror-padded: "
            f"{', '.join(small)}",
            stacklevel=2,
        )
