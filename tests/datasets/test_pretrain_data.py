"""Pretraining window datasets on real Sentinel-2 pixels in every supported layout."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine

from swimdiff_geo.bands import normalize_band_name
from swimdiff_geo.data.oscd import OSCDCity
from swimdiff_geo.data.pretrain import (
    PretrainDataError,
    PretrainWindowDataset,
    build_sources,
    compute_band_stats,
    detect_format,
    parse_date,
)

OSCD_MINI = Path(__file__).resolve().parents[1] / "data" / "oscd_mini"
S2 = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")


def _write_multiband(path: Path, data: np.ndarray, transform: Affine, crs, names=S2) -> Path:
    """A real-pixel multi-band GeoTIFF with band descriptions (the project's S2 convention)."""
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                   dtype="uint16", crs=crs, transform=transform)  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.round(data).astype(np.uint16))
        for i, name in enumerate(names, start=1):
            dst.set_band_description(i, name)
    return path


@pytest.fixture(scope="module")
def beihai() -> OSCDCity:
    return OSCDCity(OSCD_MINI, "beihai")


@pytest.fixture
def s2_folder(tmp_path, beihai) -> Path:
    """Both beihai dates as 13-band GeoTIFFs; date 2 cut 5 rows / 3 cols off its top-left."""
    folder = tmp_path / "s2"
    folder.mkdir()
    t = beihai.transform
    _write_multiband(folder / "beihai_20161209.tif", beihai.read(1), t, beihai.crs)
    shifted = t @ Affine.translation(3, 5)
    _write_multiband(folder / "beihai_20180309.tif", beihai.read(2)[:, 5:, 3:], shifted, beihai.crs)
    return folder


def test_band_names_and_dates_are_parsed() -> None:
    assert [normalize_band_name(b) for b in ("B1", "b01", "B8a", "B08A", "B12")] == [
        "B01", "B01", "B8A", "B8A", "B12"
    ]  # fmt: skip
    assert parse_date("T49QCD_20161209T031122") == "20161209"
    assert parse_date("2018-03-09_scene") == "20180309"
    assert parse_date("no_date_99999999") is None


def test_oscd_layout_windows_are_the_readers_pixels(beihai) -> None:
    assert detect_format(OSCD_MINI) == "oscd"
    sources = build_sources(OSCD_MINI)
    assert [(s.scene, s.date) for s in sources] == [
        ("beihai", "20161209"), ("beihai", "20180309"),
        ("saclay_e", "20160315"), ("saclay_e", "20170829"),
    ]  # fmt: skip
    ds = PretrainWindowDataset(sources, window_size=32, samples_per_epoch=12, seed=3)
    assert ds.scene_names == ["beihai", "saclay_e"] and ds.bands == S2
    for i in range(len(ds)):
        s = ds[i]
        src = sources[s["source"]]
        r, c = s["window"].tolist()
        assert s["view1"].shape == (13, 32, 32)
        assert s["scene_id"] == ds.scene_names.index(src.scene)
        city = OSCDCity(OSCD_MINI, src.scene)
        expected = city.read(src.date_index, (r, c, 32, 32)) * 1e-4
        np.testing.assert_allclose(s["view1"].numpy(), expected, rtol=1e-6)
        np.testing.assert_array_equal(s["view2"].numpy(), s["view1"].numpy())


def test_windows_are_reproducible_and_change_with_the_epoch() -> None:
    ds = PretrainWindowDataset(build_sources(OSCD_MINI), window_size=16, samples_per_epoch=8)
    first = [ds[i]["window"].tolist() + [ds[i]["source"]] for i in range(8)]
    assert first == [ds[i]["window"].tolist() + [ds[i]["source"]] for i in range(8)]
    ds.set_epoch(1)
    assert first != [ds[i]["window"].tolist() + [ds[i]["source"]] for i in range(8)]


def test_temporal_views_are_the_other_date_of_the_same_place(beihai) -> None:
    sources = [s for s in build_sources(OSCD_MINI) if s.scene == "beihai"]
    ds = PretrainWindowDataset(sources, window_size=24, samples_per_epoch=6, temporal=True)
    for i in range(len(ds)):
        s = ds[i]
        r, c = s["window"].tolist()
        assert {s["date1"], s["date2"]} == {"20161209", "20180309"}
        other = 2 if s["date1"] == "20161209" else 1
        np.testing.assert_allclose(s["view2"].numpy(), beihai.read(other, (r, c, 24, 24)) * 1e-4,
                                   rtol=1e-6)  # fmt: skip


def test_folder_layout_one_scene_per_file(s2_folder, beihai) -> None:
    assert detect_format(s2_folder) == "folder"
    sources = build_sources(s2_folder, bands=["B04", "B03", "B02", "B08"])
    assert [(s.scene, s.date) for s in sources] == [
        ("beihai_20161209", "20161209"), ("beihai_20180309", "20180309")
    ]  # fmt: skip
    ds = PretrainWindowDataset(sources, window_size=16, samples_per_epoch=6)
    assert ds.bands == ("B04", "B03", "B02", "B08")
    for i in range(len(ds)):
        s = ds[i]
        r, c = s["window"].tolist()
        if s["source"] == 0:
            full = beihai.read(1, (r, c, 16, 16))[[3, 2, 1, 7]]
            np.testing.assert_allclose(s["view1"].numpy(), np.round(full) * 1e-4, rtol=1e-6)


def test_manifest_pairs_dates_through_georeferencing(s2_folder, beihai) -> None:
    manifest = s2_folder / "manifest.csv"
    manifest.write_text(
        "path,scene_id,date\n"
        "beihai_20161209.tif,beihai,2016-12-09\n"
        "beihai_20180309.tif,beihai,2018-03-09\n"
    )
    assert detect_format(manifest) == "manifest"
    sources = build_sources(manifest)
    assert [s.scene for s in sources] == ["beihai", "beihai"]
    ds = PretrainWindowDataset(sources, window_size=16, samples_per_epoch=10, temporal=True)
    checked = 0
    for i in range(len(ds)):
        s = ds[i]
        r, c = s["window"].tolist()
        if s["source"] == 0 and s["date2"] == "2018-03-09":
            # Date 2's file starts 5 rows / 3 cols later: the same ground is (r-5, c-3) there.
            expected = np.round(beihai.read(2, (r, c, 16, 16))) * 1e-4
            np.testing.assert_allclose(s["view2"].numpy(), expected, rtol=1e-6)
            checked += 1
    assert checked > 0


def test_scene_grid_splits_rasters_into_cells(s2_folder) -> None:
    sources = build_sources(s2_folder)
    ds = PretrainWindowDataset(sources, window_size=16, samples_per_epoch=20, scene_grid=24)
    assert "beihai_20161209/r0c0" in ds.scene_names and "beihai_20161209/r1c1" in ds.scene_names
    for i in range(len(ds)):
        s = ds[i]
        r, c = s["window"].tolist()
        name = ds.scene_names[int(s["scene_id"])]
        assert name.endswith(f"/r{(r + 8) // 24}c{(c + 8) // 24}")


def test_mostly_nodata_windows_are_skipped(tmp_path, beihai) -> None:
    data = np.zeros((13, 48, 48), np.float32)
    data[:, :20, :20] = beihai.read(1)[:, :20, :20]  # real pixels in one corner, 0 = nodata
    path = _write_multiband(tmp_path / "corner.tif", data, beihai.transform, beihai.crs)
    ds = PretrainWindowDataset(
        build_sources(path.parent, "folder"),
        window_size=16,
        samples_per_epoch=10,
        max_nodata_fraction=0.5,
        max_tries=200,
    )
    for i in range(len(ds)):
        valid = ~(ds[i]["view1"].numpy() == 0).all(axis=0)
        assert valid.mean() >= 0.5


def test_rasters_without_valid_windows_are_dropped_up_front(tmp_path, beihai, caplog) -> None:
    # A real raster beside an all-fill one (a Sentinel-2 edge tile) and one whose only valid
    # pixels are a 6 px strip, too thin for any 16 px window to be half valid.
    good = _write_multiband(tmp_path / "good.tif", beihai.read(1), beihai.transform, beihai.crs)
    _write_multiband(tmp_path / "zeros.tif", np.zeros((13, 96, 96)), beihai.transform, beihai.crs)
    strip = np.zeros((13, 96, 96), np.float32)
    strip[:, :, :6] = beihai.read(1)[:, :, :6].repeat(2, axis=1)
    _write_multiband(tmp_path / "strip.tif", strip, beihai.transform, beihai.crs)
    ds = PretrainWindowDataset(build_sources(tmp_path), window_size=16, samples_per_epoch=40)
    assert [s.name for s in ds.sources] == [str(good)]
    assert "zeros.tif: every pixel is nodata (0); skipped" in caplog.text
    assert "strip.tif: no 16 px window is 50% valid; skipped" in caplog.text
    assert all(ds[i]["source"] == 0 for i in range(len(ds)))  # no draw lottery left

    # Nothing valid at all: a clear error before any window is drawn, naming the rasters.
    good.unlink()
    with pytest.raises(PretrainDataError, match=r"no raster has a 16 px window.*strip.tif"):
        PretrainWindowDataset(build_sources(tmp_path), window_size=16)


def _write_float(path: Path, data: np.ndarray, nodata: float | None, beihai: OSCDCity) -> Path:
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1],
                   count=data.shape[0], dtype="float32", crs=beihai.crs,
                   transform=beihai.transform, nodata=nodata)  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data.astype(np.float32))
        for i, name in enumerate(S2, start=1):
            dst.set_band_description(i, name)
    return path


def test_band_stats_leave_out_the_declared_nodata(tmp_path, beihai) -> None:
    # Real reflectances with the left half filled with a declared nodata of -9999.
    data = beihai.read(1).astype(np.float32)
    data[:, :, :20] = -9999
    path = _write_float(tmp_path / "nd.tif", data, -9999, beihai)
    sources = build_sources(tmp_path, "folder")
    assert sources[0].nodata == -9999
    ds = PretrainWindowDataset(sources, window_size=48, samples_per_epoch=1,
                               max_nodata_fraction=0.6)  # fmt: skip
    mean, std = compute_band_stats(ds, num_samples=1)
    valid = data[:, :, 20:] * 1e-4
    np.testing.assert_allclose(mean, valid.reshape(13, -1).mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(std, valid.reshape(13, -1).std(axis=1), rtol=1e-4)
    assert ds[0]["valid"].numpy()[:, :20].sum() == 0 and ds[0]["valid"].numpy()[:, 20:].all()

    # --nodata fills in for files that declare none; a file's own declaration wins.
    assert build_sources(path.parent, "folder", nodata=5)[0].nodata == -9999
    undeclared = tmp_path / "undeclared"
    undeclared.mkdir()
    _write_float(undeclared / "u.tif", data, None, beihai)
    assert build_sources(undeclared, "folder", nodata=-9999)[0].nodata == -9999
    assert build_sources(undeclared, "folder")[0].nodata is None


def test_undescribed_files_take_the_spec_or_the_bands_given(tmp_path, beihai) -> None:
    four = beihai.read(1)[[1, 2, 3, 7]]  # real B02, B03, B04, B08
    path = _write_multiband(tmp_path / "four.tif", four, beihai.transform, beihai.crs,
                            names=["", "", "", ""])  # fmt: skip
    with rasterio.open(path) as src:
        assert not any(src.descriptions)
    rgbn = ["B02", "B03", "B04", "B08"]
    (source,) = build_sources(tmp_path, "folder", bands=rgbn)
    assert source.bands == tuple(rgbn)
    landsat = ("SWIR1", "NIR", "RED", "GREEN")
    (source,) = build_sources(tmp_path, "folder", bands=list(landsat), default_bands=landsat)
    assert source.bands == landsat
    (source,) = build_sources(tmp_path, "folder", bands=["RED", "NIR"], default_bands=landsat)
    np.testing.assert_array_equal(source.read(rasterio.windows.Window(0, 0, 8, 8)),
                                  np.round(four[[2, 1], :8, :8]))  # fmt: skip
    with pytest.raises(PretrainDataError, match="4 bands without descriptions"):
        build_sources(tmp_path, "folder", bands=["B02", "B03", "B04"])


def test_ssl4eo_layout_resamples_coarse_bands(tmp_path) -> None:
    # Lay the real beihai band files out as SSL4EO-S12 does: s2c/<location>/<acquisition>/B1.tif
    acq = tmp_path / "s2c" / "0000042" / "20161209T031122_20161209T031122_T49QCD"
    acq.mkdir(parents=True)
    for f in (OSCD_MINI / "Onera Satellite Change Detection dataset - Images/beihai/imgs_1").glob(
        "*.tif"
    ):
        band = f.stem.rsplit("_", 1)[1]  # B01 .. B12, B8A
        shutil.copy(f, acq / f"B{band[1:].lstrip('0')}.tif")
    assert detect_format(tmp_path) == "ssl4eo"
    sources = build_sources(tmp_path)
    assert len(sources) == 1 and sources[0].scene == "0000042"
    assert sources[0].date == "20161209" and sources[0].bands == S2
    assert sources[0].shape == (48, 48)  # the 10 m grid
    ds = PretrainWindowDataset(sources, window_size=48, samples_per_epoch=1)
    view = ds[0]["view1"].numpy()
    reference = OSCDCity(OSCD_MINI, "beihai").read(1) * 1e-4
    np.testing.assert_allclose(view[[1, 2, 3, 7]], reference[[1, 2, 3, 7]], rtol=1e-6)  # 10 m
    # 20 m bands: rasterio's bilinear upsampling vs the OSCD reader's, same footprint.
    for b in (4, 5, 6, 8, 11, 12):
        corr = np.corrcoef(view[b].ravel(), reference[b].ravel())[0, 1]
        assert corr > 0.9, S2[b]


def test_band_stats_are_per_band(beihai) -> None:
    ds = PretrainWindowDataset(build_sources(OSCD_MINI), window_size=32, samples_per_epoch=8)
    mean, std = compute_band_stats(ds, num_samples=8)
    assert len(mean) == len(std) == 13
    data = beihai.read(1) * 1e-4
    # Same order of magnitude as the imagery itself (reflectance), and a real spread.
    assert all(0 < m < 1 for m in mean) and all(s > 0 for s in std)
    assert mean[1] == pytest.approx(float(data[1].mean()), rel=0.5)


def test_bad_inputs_name_the_file(tmp_path, s2_folder) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("file,scene\nx.tif,a\n")
    with pytest.raises(PretrainDataError, match=r"bad.csv.*path,scene_id"):
        build_sources(bad)
    missing = tmp_path / "missing.csv"
    missing.write_text("path,scene_id\nnope.tif,a\n")
    with pytest.raises(PretrainDataError, match=r"missing.csv:2.*nope.tif"):
        build_sources(missing)
    with pytest.raises(PretrainDataError, match="band B99 not found"):
        build_sources(s2_folder, bands=["B02", "B99"])
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(PretrainDataError, match="emptydir"):
        build_sources(tmp_path / "emptydir")
    with pytest.raises(PretrainDataError, match="smaller --crop-size"):
        PretrainWindowDataset(build_sources(s2_folder), window_size=64)


def test_sample_s2_pair_as_folder_and_as_temporal_manifest(tmp_path) -> None:
    folder = Path(__file__).resolve().parents[2] / "sample_data" / "s2_pair"
    sources = build_sources(folder, "folder")
    assert [s.scene for s in sources] == ["s2_date_a", "s2_date_b"] and sources[0].bands == S2
    manifest = tmp_path / "pair.csv"
    manifest.write_text(
        f"path,scene_id,date\n{folder / 's2_date_a.tif'},lasvegas,20150820\n"
        f"{folder / 's2_date_b.tif'},lasvegas,20180205\n"
    )
    ds = PretrainWindowDataset(build_sources(manifest), window_size=64, samples_per_epoch=5,
                               temporal=True)  # fmt: skip
    assert ds.scene_names == ["lasvegas"]
    with rasterio.open(folder / "s2_date_a.tif") as a, rasterio.open(folder / "s2_date_b.tif") as b:
        for i in range(len(ds)):
            s = ds[i]
            r, c = s["window"].tolist()
            win = rasterio.windows.Window(c, r, 64, 64)
            first, second = (a, b) if s["date1"] == "20150820" else (b, a)
            assert s["date2"] != s["date1"]
            np.testing.assert_allclose(s["view1"].numpy(), first.read(window=win) * 1e-4, rtol=1e-6)
            np.testing.assert_allclose(s["view2"].numpy(), second.read(window=win) * 1e-4,
                                       rtol=1e-6)  # fmt: skip


def test_ssl4eo_listing_trusts_the_first_patch_size_and_checks_it_on_read(tmp_path) -> None:
    images = OSCD_MINI / "Onera Satellite Change Detection dataset - Images"
    for loc, city in (("0000001", "beihai"), ("0000002", "saclay_e")):
        for date in (1, 2):
            folder = next((images / city / f"imgs_{date}").glob("*_B02.tif")).parent
            acq = tmp_path / loc / f"acq{date}_2017010{date}"
            acq.mkdir(parents=True)
            for band in ("B02", "B03", "B04", "B05"):
                shutil.copy(next(folder.glob(f"*_{band}.tif")), acq / f"{band}.tif")
    sources = build_sources(tmp_path, "ssl4eo")
    assert [(s.scene, s.date) for s in sources] == [
        ("0000001", "20170101"), ("0000001", "20170102"),
        ("0000002", "20170101"), ("0000002", "20170102"),
    ]  # fmt: skip
    assert all(s.shape == (48, 48) for s in sources)
    sources[0].read(rasterio.windows.Window(0, 0, 16, 16))
    # saclay_e's second date has larger pixels, so another size: reported when read, with the
    # file's name.
    with rasterio.open(tmp_path / "0000002" / "acq2_20170102" / "B02.tif") as other:
        assert (other.height, other.width) != (48, 48)
        size = f"{other.height} x {other.width} px"
    with pytest.raises(PretrainDataError, match=rf"0000002/acq2_20170102/B02.tif: {size}"):
        sources[3].read(rasterio.windows.Window(0, 0, 16, 16))


def test_open_file_cache_evicts_and_reopens(monkeypatch, s2_folder, beihai) -> None:
    import swimdiff_geo.data.pretrain as pretrain_data

    monkeypatch.setattr(pretrain_data, "_MAX_OPEN_FILES", 1)
    a, b = build_sources(s2_folder)
    win = rasterio.windows.Window(3, 5, 16, 16)
    first = a.read(win)
    b.read(win)  # evicts and closes a's handle
    np.testing.assert_array_equal(a.read(win), first)
    assert len(pretrain_data._open_files) == 1
