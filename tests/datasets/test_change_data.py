"""Change-detection data: manifests of the user's own pairs, windows, scaling, OSCD scenes."""

from __future__ import annotations

from pathlib import Path

import fiona
import numpy as np
import pytest
import rasterio
import torch
import yaml
from rasterio.warp import Resampling, calculate_default_transform, reproject

from swimdiff_geo.data.change import (
    IGNORE_INDEX,
    BandScaling,
    ChangeDataError,
    ChangeScene,
    RandomChangeWindows,
    TiledChangeWindows,
    augment_d4,
    band_statistics,
    load_manifest_scenes,
    load_oscd_scenes,
    read_change_manifest,
    tile_origins,
)
from swimdiff_geo.data.oscd import OSCDCity
from swimdiff_geo.inference.contract import ModelContract
from tests.datasets.test_oscd import OSCD_MINI, build_oscd_labelled, read_own_labels

S2_BANDS = list(OSCDCity.bands)


def write_city_pair(city_name: str, folder: Path) -> tuple[Path, Path, Path]:
    """Date A and B of an oscd_mini city as 13-band GeoTIFFs on the common 10 m grid (uint16,
    band descriptions set) plus our own change mask raster; returns the three paths."""
    city = OSCDCity(OSCD_MINI, city_name)
    folder.mkdir(parents=True, exist_ok=True)
    profile = dict(
        driver="GTiff", height=city.shape[0], width=city.shape[1], crs=city.crs,
        transform=city.transform,
    )  # fmt: skip
    paths = []
    for date in (1, 2):
        path = folder / f"{city_name}_date{date}.tif"
        with rasterio.open(path, "w", count=13, dtype="uint16", **profile) as dst:
            dst.write(np.round(city.read(date)).astype(np.uint16))
            dst.descriptions = tuple(S2_BANDS)
        paths.append(path)
    mask = folder / f"{city_name}_mask.tif"
    with rasterio.open(mask, "w", count=1, dtype="uint8", **profile) as dst:
        dst.write(read_own_labels(city_name), 1)
    return paths[0], paths[1], mask


def test_band_scaling_matches_the_engine_contract() -> None:
    """Training must scale exactly as the engine will (ModelContract.scale)."""
    image = OSCDCity(OSCD_MINI, "beihai").read(1)
    mean, std = band_statistics([image], 1e-4)
    ours = BandScaling(1e-4, mean, std).apply(np.concatenate([image, image]))
    contract = ModelContract(
        "change_detection", S2_BANDS, 2, 32, input_scale=1e-4, standardization_mean=mean,
        standardization_std=std,
    )  # fmt: skip
    engine = contract.scale(np.concatenate([image, image]).copy())
    np.testing.assert_allclose(ours, engine, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours[:13].mean(axis=(1, 2)), 0, atol=1e-3)
    # read back from the contract, as export and the benchmarks do, and from its dict form
    for recorded in (contract, {"input_scale": 1e-4, "standardization_mean": mean,
                                "standardization_std": std}):  # fmt: skip
        again = BandScaling.from_contract(recorded).apply(np.concatenate([image, image]))
        np.testing.assert_array_equal(again, ours)
    plain = BandScaling.from_contract(ModelContract("change_detection", S2_BANDS, 2, 32))
    np.testing.assert_array_equal(plain.apply(image), image.astype(np.float32))


def test_oscd_scenes_keep_band_subset_and_labels(tmp_path: Path) -> None:
    root = build_oscd_labelled(tmp_path / "oscd")
    (scene,) = load_oscd_scenes(root, ["saclay_e"], ["B04", "B08"])
    city = OSCDCity(root, "saclay_e")
    np.testing.assert_array_equal(scene.image_b, city.read(2)[[3, 7]])
    np.testing.assert_array_equal(scene.labels, read_own_labels("saclay_e"))
    with pytest.raises(ChangeDataError, match="B13"):
        load_oscd_scenes(root, ["saclay_e"], ["B13"])
    with pytest.raises(ChangeDataError, match="no labels"):
        load_oscd_scenes(OSCD_MINI, ["beihai"])


def test_manifest_with_mask_raster_and_polygons(tmp_path: Path) -> None:
    a, b, mask = write_city_pair("beihai", tmp_path / "beihai")
    # Change polygons drawn from our own mask: its 8-connected regions, as a GeoPackage.
    from rasterio.features import shapes

    with rasterio.open(mask) as src:
        labels, transform, crs = src.read(1), src.transform, src.crs
    polygons = [g for g, v in shapes(labels, transform=transform) if v == 1]
    gpkg = tmp_path / "beihai_change.gpkg"
    schema = {"geometry": "Polygon", "properties": {"kind": "str"}}
    with fiona.open(gpkg, "w", driver="GPKG", crs=crs.to_wkt(), schema=schema) as dst:
        for poly in polygons:
            dst.write({"geometry": poly, "properties": {"kind": "new building"}})
    manifest = tmp_path / "pairs.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "pairs": [
                    {"name": "raster", "image_a": str(a), "image_b": str(b), "mask": str(mask),
                     "split": "train"},
                    {"name": "vector", "image_a": str(a), "image_b": str(b),
                     "polygons": gpkg.name, "split": "val"},
                ]
            }
        )
    )  # fmt: skip
    parsed = read_change_manifest(manifest)
    assert parsed.names("train") == ["raster"] and parsed.names("val") == ["vector"]
    raster, vector = load_manifest_scenes(parsed)
    np.testing.assert_array_equal(raster.labels, read_own_labels("beihai"))
    # Polygonised then rasterised again: the same pixels.
    np.testing.assert_array_equal(vector.labels, raster.labels)
    assert raster.image_a.shape == (13, 48, 48)


def test_manifest_pair_on_another_grid_is_warped_and_nodata_ignored(tmp_path: Path) -> None:
    a, b, mask = write_city_pair("beihai", tmp_path / "beihai")
    b_utm = tmp_path / "b_utm.tif"
    with rasterio.open(b) as src:
        transform, width, height = calculate_default_transform(
            src.crs, "EPSG:32649", src.width, src.height, *src.bounds
        )
        profile = src.profile | {"crs": "EPSG:32649", "transform": transform, "width": width,
                                 "height": height, "nodata": 0}  # fmt: skip
        with rasterio.open(b_utm, "w", **profile) as dst:
            for band in range(1, 14):
                reproject(rasterio.band(src, band), rasterio.band(dst, band),
                          resampling=Resampling.bilinear, dst_nodata=0)  # fmt: skip
    manifest = tmp_path / "pairs.csv"
    manifest.write_text(f"name,image_a,image_b,mask\nsite,{a},{b_utm},{mask}\n")
    (scene,) = load_manifest_scenes(read_change_manifest(manifest))
    with rasterio.open(b) as src:
        direct = src.read().astype(np.float32)
    valid = scene.labels != IGNORE_INDEX
    inner = np.zeros_like(valid)
    inner[3:-3, 3:-3] = True
    assert valid[inner].all()  # the reprojected image covers the interior
    # Warped back onto A's grid the values agree with the original date B closely.
    corr = np.corrcoef(scene.image_b[3][inner], direct[3][inner])[0, 1]
    assert corr > 0.9
    assert scene.image_b.shape == direct.shape


def test_manifest_errors_name_the_file(tmp_path: Path) -> None:
    manifest = tmp_path / "pairs.yaml"
    manifest.write_text(yaml.safe_dump({"pairs": [{"image_a": "a.tif", "image_b": "b.tif"}]}))
    with pytest.raises(ChangeDataError, match=r"pairs.yaml: pair 1 needs exactly one of"):
        read_change_manifest(manifest)
    manifest.write_text(
        yaml.safe_dump({"pairs": [{"image_a": "a.tif", "image_b": "b.tif", "mask": "m.tif"}]})
    )
    with pytest.raises(ChangeDataError, match=r"image_a file .*a.tif not found"):
        read_change_manifest(manifest)


def _scene(h: int, w: int) -> ChangeScene:
    image = OSCDCity(OSCD_MINI, "beihai").read(1)[:, :h, :w]
    return ChangeScene("s", image, image[::-1].copy(), read_own_labels("beihai")[:h, :w])


@pytest.mark.parametrize(("h", "w", "tile"), [(48, 48, 20), (45, 46, 64), (48, 40, 16)])
def test_tiles_count_every_labelled_pixel_once(h: int, w: int, tile: int) -> None:
    scene = _scene(h, w)
    tiles = TiledChangeWindows([scene], BandScaling(1e-4), tile)
    counted = np.zeros(2, np.int64)
    for i in range(len(tiles)):
        x, y, idx = tiles[i]
        assert x.shape == (26, tile, tile) and y.shape == (tile, tile) and idx == 0
        counted += np.bincount(y[y != IGNORE_INDEX].numpy(), minlength=2)
    np.testing.assert_array_equal(counted, np.bincount(scene.labels.ravel(), minlength=2))


def test_tile_origins_cover_and_stay_inside() -> None:
    for length in (1, 31, 32, 33, 100):
        origins = tile_origins(length, 32)
        covered = np.zeros(length, bool)
        for o in origins:
            covered[o : o + 32] = True
            assert o >= 0 and (o + 32 <= length or length < 32)
        assert covered.all()


def test_d4_augmentation_moves_images_and_labels_together() -> None:
    image = OSCDCity(OSCD_MINI, "beihai").read(1)[:, :32, :32]
    labels = (image[3] > np.median(image[3])).astype(np.uint8)
    seen = set()
    for seed in range(40):
        x, y = augment_d4([image, labels], np.random.default_rng(seed))
        np.testing.assert_array_equal(y, (x[3] > np.median(image[3])).astype(np.uint8))
        seen.add(x[3].tobytes())
    assert len(seen) == 8  # all 8 elements of the dihedral group occur


def test_random_windows_shapes_padding_and_labels() -> None:
    small = _scene(20, 24)
    ds = RandomChangeWindows([small], BandScaling(1e-4), crop_size=32, length=5)
    assert len(ds) == 5
    x, y = ds[0]
    assert x.shape == (26, 32, 32) and x.dtype.__str__() == "torch.float32"
    assert y.shape == (32, 32)
    # 20 x 24 real pixels in a 32 x 32 window: the rest is padding and ignored.
    assert int((y != IGNORE_INDEX).sum()) == 20 * 24
    assert set(np.unique(y.numpy())) <= {0, 1, IGNORE_INDEX}


def test_radiometric_jitter_is_a_per_date_per_band_affine_change() -> None:
    scene = _scene(32, 32)
    scene.image_b = scene.image_a.copy()  # identical dates: any difference is the jitter
    scaling = BandScaling(1e-4)
    plain = RandomChangeWindows([scene], scaling, crop_size=32, length=1, augment=False)
    x0, y0 = plain[0]
    assert torch.equal(x0[:13], x0[13:])
    jitter = 0.2
    jittered = RandomChangeWindows(
        [scene], scaling, 32, length=1, augment=False, radiometric_jitter=jitter
    )
    torch.manual_seed(0)
    x, y = jittered[0]
    assert torch.equal(y, y0)  # labels untouched
    assert not torch.equal(x[:13], x[13:])  # the two dates got different draws
    band_std = scaling.apply(scene.image_a).reshape(13, -1).std(1)
    for date in (x[:13], x[13:]):
        for band in range(13):
            original = x0[band].numpy().ravel().astype(np.float64)
            if original.std() < 1e-6:
                continue
            gain, offset = np.polyfit(original, date[band].numpy().ravel(), 1)
            assert 1 - jitter - 1e-4 <= gain <= 1 + jitter + 1e-4
            assert abs(offset) <= jitter * band_std[band] + 1e-4
