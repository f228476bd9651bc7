"""detect-change on real rasters: georeferencing, alignment, nodata, bands, polygons, areas."""

from __future__ import annotations

import json
import math
import os
import re

import fiona
import numpy as np
import pytest
import rasterio
import rasterio.windows
from click.testing import CliRunner
from rasterio.features import rasterize
from rasterio.warp import Resampling, calculate_default_transform, reproject, transform_bounds
from swimdiff_geo.cli.main import cli

from swimdiff_geo.inference.change import ChangeOptions, ChangeOutputs, detect_change
from swimdiff_geo.inference.errors import InputError


def _run(a, b, out, model, **options):
    outputs = ChangeOutputs.in_dir(str(out))
    summary = detect_change(str(a), str(b), outputs, ChangeOptions(model=str(model), **options))
    return outputs, summary


def test_outputs_keep_a_georeferencing_and_cog_layout(landsat_pair, landsat_change_model, tmp_path):
    outputs, summary = _run(*landsat_pair, tmp_path / "out", landsat_change_model)
    with rasterio.open(landsat_pair[0]) as a:
        a_crs, a_transform, a_shape = a.crs, a.transform, a.shape
    for path, dtype, nodata in (
        (outputs.probability, "float32", -1.0),
        (outputs.mask, "uint8", 255),
    ):
        with rasterio.open(path) as ds:
            assert ds.crs == a_crs and ds.transform.almost_equals(a_transform)
            assert ds.shape == a_shape and ds.dtypes[0] == dtype and ds.nodata == nodata
            assert ds.profile["tiled"] and ds.compression.name == "deflate"
            if max(ds.shape) > 512:
                assert ds.overviews(1), "COG layout needs internal overviews"
            assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == summary
    assert not list((tmp_path / "out").glob(".swimdiff-tmp-*"))


def _reproject(src_path, dst_path, dst_crs):
    with rasterio.open(src_path) as src:
        transform, width, height = calculate_default_transform(
            src.crs, dst_crs, src.width, src.height, *src.bounds
        )
        profile = src.profile | {"crs": dst_crs, "transform": transform, "width": width,
                                 "height": height}  # fmt: skip
        with rasterio.open(dst_path, "w", **profile) as dst:
            for band in range(1, src.count + 1):
                reproject(rasterio.band(src, band), rasterio.band(dst, band),
                          resampling=Resampling.bilinear)  # fmt: skip


def test_b_in_another_crs_is_warped_onto_a(landsat_pair, landsat_change_model, tmp_path):
    """B reprojected to UTM and back gives nearly the probabilities of the same-grid run, and
    far better than a B displaced by 3 pixels: so the alignment is right, not just present."""
    a, b = landsat_pair
    b_utm = tmp_path / "b_utm.tif"
    _reproject(b, b_utm, "EPSG:32718")
    ref, ref_summary = _run(a, b, tmp_path / "ref", landsat_change_model)
    got, summary = _run(a, b_utm, tmp_path / "utm", landsat_change_model)
    with rasterio.open(ref.probability) as r, rasterio.open(got.probability) as g:
        assert g.crs == r.crs  # A's CRS, not B's
        assert g.res == pytest.approx(r.res)
        # the output is A's grid cut to the intersection: same pixel lattice
        col = (g.transform.c - r.transform.c) / r.res[0]
        row = (r.transform.f - g.transform.f) / r.res[1]
        assert abs(col - round(col)) < 1e-6 and abs(row - round(row)) < 1e-6
        col, row = round(col), round(row)
        ref_p = r.read(1)[row : row + g.height, col : col + g.width]
        got_p = g.read(1)
    valid = (ref_p >= 0) & (got_p >= 0)
    assert valid.mean() > 0.9
    aligned_error = np.abs(ref_p - got_p)[valid].mean()
    shifted_error = np.abs(ref_p[3:, 3:] - got_p[:-3, :-3])[valid[3:, 3:] & valid[:-3, :-3]].mean()
    assert aligned_error < shifted_error / 3
    # an info line, not a warning: the log keeps it, the summary's warnings do not
    assert any(m.startswith("info:") and "reprojected" in m for m in summary["messages"])
    assert not [w for w in summary["warnings"] if not w.startswith("warning:")]


def test_naip_grids_one_pixel_apart_are_aligned(naip_pair, tmp_path, models_dir):
    from tests.model_builders import change_contract, pointwise_change_model

    model = pointwise_change_model(
        str(models_dir / "naip.onnx"),
        change_contract(["RED", "GREEN", "BLUE", "NIR"], input_scale=1 / 255, tile_size=64),
        40.0, -3.0,
    )  # fmt: skip
    outputs, summary = _run(*naip_pair, tmp_path / "out", model)
    with rasterio.open(naip_pair[0]) as a, rasterio.open(outputs.mask) as m:
        assert m.crs == a.crs and m.res == pytest.approx(a.res)
        assert m.width <= a.width and m.height <= a.height
    assert summary["pixels"]["valid"] > 0.9 * summary["pixels"]["total"]


def test_polygon_areas_add_up_to_the_changed_area(landsat_pair, landsat_change_model, tmp_path):
    outputs, summary = _run(*landsat_pair, tmp_path / "out", landsat_change_model)
    with fiona.open(outputs.polygons) as layer:
        features = list(layer)
        assert layer.crs_wkt  # written in the raster's CRS
        fields = set(layer.schema["properties"])
    assert {"area_m2", "mean_probability"} <= fields
    assert len(features) == summary["polygons"] > 0
    polygon_pixels = sum(f["properties"]["pixels"] for f in features)
    polygon_area = sum(f["properties"]["area_m2"] for f in features)
    assert polygon_pixels == summary["pixels"]["changed"]
    assert polygon_area == pytest.approx(summary["changed_area_m2"], rel=1e-9)
    assert all(0.5 <= f["properties"]["mean_probability"] <= 1.0 for f in features)
    # Independent check of the geodesic pixel area: a spherical-earth estimate within 0.5%.
    with rasterio.open(outputs.mask) as m:
        mask = m.read(1)
        t = m.transform
    rows = np.arange(m.height) + 0.5
    lat = np.radians(t.f + rows * t.e)
    r = 6371008.8
    row_area = (r * math.radians(abs(t.e))) * (r * np.cos(lat) * math.radians(t.a))
    spherical = float(((mask == 1).sum(axis=1) * row_area).sum())
    assert polygon_area == pytest.approx(spherical, rel=5e-3)


def test_min_area_drops_small_regions(landsat_pair, landsat_change_model, tmp_path):
    every, all_regions = _run(*landsat_pair, tmp_path / "all", landsat_change_model)
    outputs, large = _run(*landsat_pair, tmp_path / "large", landsat_change_model,
                          min_area=200_000.0)  # fmt: skip
    assert 0 < large["polygons"] < all_regions["polygons"]
    with fiona.open(outputs.polygons) as layer:
        features = list(layer)
        assert min(f["properties"]["area_m2"] for f in features) >= 200_000.0
    # the small changes are "no change" in the mask and the changed area too; the probability
    # keeps them, and the polygons cover exactly the mask's changed pixels
    with rasterio.open(every.mask) as a, rasterio.open(outputs.mask) as b:
        mask_all, mask_large, transform = a.read(1), b.read(1), b.transform
    with rasterio.open(every.probability) as a, rasterio.open(outputs.probability) as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))
    np.testing.assert_array_equal(mask_large == 255, mask_all == 255)
    assert ((mask_large == 1) <= (mask_all == 1)).all() and (mask_large != mask_all).any()
    burnt = rasterize([(f["geometry"], 1) for f in features], out_shape=mask_large.shape,
                      transform=transform, fill=0, dtype="uint8")  # fmt: skip
    np.testing.assert_array_equal(burnt == 1, mask_large == 1)
    assert large["pixels"]["changed"] == int((mask_large == 1).sum())
    polygon_area = sum(f["properties"]["area_m2"] for f in features)
    assert large["changed_area_m2"] == pytest.approx(polygon_area)
    assert large["pixels"]["valid"] == all_regions["pixels"]["valid"]
    # without polygons, the same mask and summary numbers
    no_polygons = ChangeOutputs.in_dir(str(tmp_path / "mask_only"), polygons=False)
    options = ChangeOptions(model=str(landsat_change_model), min_area=200_000.0)
    summary = detect_change(*map(str, landsat_pair), no_polygons, options)
    with rasterio.open(no_polygons.mask) as c:
        np.testing.assert_array_equal(c.read(1), mask_large)
    assert summary["pixels"] == large["pixels"] and summary["polygons"] is None


def test_nodata_in_either_date_is_nodata_in_every_output(
    landsat_pair, landsat_change_model, copy_of, tmp_path
):
    b = copy_of(landsat_pair[1], "b_holes.tif")
    with rasterio.open(b, "r+") as ds:
        nodata = ds.nodata
        assert nodata is not None
        data = ds.read()
        data[:, 50:120, 100:300] = nodata
        ds.write(data)
    outputs, summary = _run(landsat_pair[0], b, tmp_path / "out", landsat_change_model)
    with rasterio.open(outputs.probability) as p, rasterio.open(outputs.mask) as m:
        prob, mask = p.read(1), m.read(1)
    assert (prob[50:120, 100:300] == -1.0).all()
    assert (mask[50:120, 100:300] == 255).all()
    assert ((prob == -1.0) == (mask == 255)).all()
    assert summary["pixels"]["nodata"] >= 70 * 200


def test_band_descriptions_order_the_bands(s2_pair, s2_change_model, tmp_path):
    """A copy with shuffled bands but correct descriptions gives identical outputs, with the
    descriptions spelled as Earth Engine exports spell them (b1 ... b8a ... b12 for the model's
    B01 ... B8A ... B12)."""
    shuffled = []
    rng = np.random.default_rng(0)
    order = rng.permutation(13)
    for i, path in enumerate(s2_pair):
        with rasterio.open(path) as src:
            data, names = src.read(), list(src.descriptions)
            profile = src.profile
        dst_path = tmp_path / f"shuffled_{i}.tif"
        with rasterio.open(dst_path, "w", **profile) as dst:
            dst.write(data[order])
            for j, k in enumerate(order, start=1):
                dst.set_band_description(j, names[k].replace("B0", "B").lower())
        shuffled.append(dst_path)
    ref, _ = _run(*s2_pair, tmp_path / "ref", s2_change_model)
    got, _ = _run(*shuffled, tmp_path / "shuffled", s2_change_model)
    with rasterio.open(ref.probability) as r, rasterio.open(got.probability) as g:
        np.testing.assert_array_equal(r.read(), g.read())
    # explicit --bands undoing the shuffle gives the same again
    undo = [int(np.flatnonzero(order == k)[0]) + 1 for k in range(13)]
    explicit, _ = _run(*shuffled, tmp_path / "explicit", s2_change_model, bands=undo)
    with rasterio.open(ref.probability) as r, rasterio.open(explicit.probability) as e:
        np.testing.assert_array_equal(r.read(), e.read())


def test_equal_size_rasters_without_georeferencing_run_in_pixel_space(
    landsat_pair, landsat_change_model, tmp_path
):
    plain = []
    for i, path in enumerate(landsat_pair):
        with rasterio.open(path) as src:
            data, profile = src.read(), src.profile
        profile.pop("crs"), profile.pop("transform")
        dst = tmp_path / f"plain_{i}.png"
        with rasterio.open(dst, "w", **(profile | {"driver": "PNG"})) as out:
            out.write(data)
        plain.append(dst)
    outputs, summary = _run(*plain, tmp_path / "out", landsat_change_model)
    assert any("neither input is georeferenced" in w for w in summary["warnings"])
    assert summary["changed_area_m2"] is None
    with rasterio.open(outputs.mask) as m:
        assert m.crs is None


def as_reflectance(path, dst_path):
    """The same pixels as float32 reflectance (DN / 10000): a common mix-up with L1C numbers."""
    with rasterio.open(path) as src:
        profile = src.profile | {"dtype": "float32", "nodata": None}
        data = src.read().astype(np.float32) / 10000.0
        names = src.descriptions
    with rasterio.open(dst_path, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = names
    return dst_path


def test_inputs_on_another_scale_than_the_training_data_warn(s2_pair, tmp_path):
    """The bundled change model (standardised on OSCD digital numbers) runs without a word on
    the real sample pair, and warns, naming each file, when the same pixels come as
    reflectance 0-1; the run still completes (a warning, not an error)."""

    def scale_warnings(a, b, out):
        outputs = ChangeOutputs.in_dir(str(out), polygons=False)
        summary = detect_change(str(a), str(b), outputs, ChangeOptions())
        assert os.path.exists(outputs.mask)
        return [w for w in summary["warnings"] if "pixel values look" in w]

    assert scale_warnings(*s2_pair, tmp_path / "dn") == []
    reflectance = [as_reflectance(p, tmp_path / f"refl_{i}.tif") for i, p in enumerate(s2_pair)]
    found = scale_warnings(*reflectance, tmp_path / "refl")
    assert len(found) == 2
    for path, warning in zip(reflectance, found, strict=True):
        assert warning.startswith(f"warning: {path}: pixel values look ")
        factor = float(re.search(r"look ([\d,]+)x smaller", warning)[1].replace(",", ""))
        assert 3_000 < factor < 30_000  # DN / 10000 against a model of DN x 1e-4
    # one date in reflectance: its B10 differs by the units, which is not taken for cirrus
    outputs = ChangeOutputs.in_dir(str(tmp_path / "mixed"), polygons=False)
    warnings = detect_change(str(s2_pair[0]), str(reflectance[1]), outputs)["warnings"]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: {reflectance[1]}: pixel")


def test_thin_cirrus_over_one_date_warns_naming_that_date(s2_cirrus_pair, s2_pair, tmp_path):
    """Saclay's second date (2017-08-29) lies under thin cirrus, under which the bundled model
    misses change: the run warns and names that file whichever order the dates come in. The
    same pair with date B's B10 (cirrus band) taken from date A, and the clear Las Vegas pair,
    run without the warning."""

    def cirrus_warnings(a, b, out):
        outputs = ChangeOutputs.in_dir(str(out), polygons=False)
        summary = detect_change(str(a), str(b), outputs, ChangeOptions())
        assert os.path.exists(outputs.mask)  # a warning, not an error
        return [w for w in summary["warnings"] if "thin cirrus" in w]

    clear, hazy = s2_cirrus_pair
    for k, (a, b) in enumerate(((clear, hazy), (hazy, clear))):
        found = cirrus_warnings(a, b, tmp_path / f"order_{k}")
        assert len(found) == 1 and found[0].startswith(f"warning: {hazy}: thin cirrus")
        assert re.search(r"B10 \(cirrus band\) median is 50 against 19 ", found[0])

    b10 = 11
    same_b10 = tmp_path / "same_b10.tif"
    with rasterio.open(hazy) as src:
        profile, data = src.profile, src.read()
        descriptions = src.descriptions
    with rasterio.open(clear) as src:  # both crops are 48 x 48 px of the same place
        data[b10 - 1] = src.read(b10)
    with rasterio.open(same_b10, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = descriptions
    assert cirrus_warnings(clear, same_b10, tmp_path / "same") == []
    assert cirrus_warnings(*s2_pair, tmp_path / "clear") == []


def _window_bounds(path, col, row, width, height, inset=0.25):
    """Bounds of a pixel window of ``path`` in its CRS, ``inset`` pixels inside its edges (so
    which pixels it holds does not hang on rounding at their edges)."""
    with rasterio.open(path) as ds:
        t = ds.transform
    left, top = t * (col + inset, row + inset)
    right, bottom = t * (col + width - inset, row + height - inset)
    return left, bottom, right, top


def test_extent_maps_only_that_area_in_any_crs(landsat_pair, landsat_change_model, tmp_path):
    """An extent gives the window of the whole-scene run holding it (the model is pointwise,
    so tiling makes no difference), whether it is given in the image's CRS or in web
    Mercator."""
    full, _ = _run(*landsat_pair, tmp_path / "full", landsat_change_model)
    col, row, width, height = 100, 60, 150, 90
    lonlat = _window_bounds(landsat_pair[0], col, row, width, height)
    mercator = transform_bounds("EPSG:4326", "EPSG:3857", *lonlat)
    with rasterio.open(full.probability) as ds:
        expected = ds.read(1, window=rasterio.windows.Window(col, row, width, height))
        expected_transform = ds.window_transform(rasterio.windows.Window(col, row, width, height))
    for name, extent, crs in (("lonlat", lonlat, "EPSG:4326"), ("mercator", mercator, "EPSG:3857")):
        outputs, summary = _run(*landsat_pair, tmp_path / name, landsat_change_model,
                                extent=extent, extent_crs=crs)  # fmt: skip
        with rasterio.open(outputs.probability) as ds:
            assert ds.shape == (height, width)
            assert ds.transform.almost_equals(expected_transform)
            # equal but for float rounding in the blending (weights sum to 1 in another order)
            np.testing.assert_allclose(ds.read(1), expected, rtol=0, atol=1e-6)
        assert summary["extent"] == {"bounds": list(extent), "crs": crs}


# inside; touching the left edge; near the right edge, less than a window from it
@pytest.mark.parametrize("col, row, width, height",
                         [(70, 45, 60, 50), (0, 110, 60, 50), (165, 150, 30, 40)])  # fmt: skip
def test_extent_of_a_model_that_sees_context_gives_the_whole_runs_pixels(
    s2_pair, tmp_path, col, row, width, height
):
    """The bundled ResNet-18 UNet's prediction at a pixel depends on the pixels around it and
    on where it lies in its window: an extent is run on the whole run's window lattice, with
    context around it, so it comes out as the same pixels of a whole-image run (64 px windows
    here, so that the 198 px sample holds several; before, 0.85 apart near the extent's edge)."""
    options = {"tile_size": 64, "overlap": 25}
    full, _ = _run(*s2_pair, tmp_path / "full", "s2_change_swimdiff", **options)
    extent = _window_bounds(s2_pair[0], col, row, width, height)
    part, _ = _run(*s2_pair, tmp_path / "part", "s2_change_swimdiff", extent=extent, **options)
    with rasterio.open(full.probability) as f, rasterio.open(part.probability) as p:
        expected = f.read(1, window=rasterio.windows.Window(col, row, width, height))
        np.testing.assert_allclose(p.read(1), expected, rtol=0, atol=1e-6)


def test_extent_outside_the_image_names_it_and_writes_nothing(
    landsat_pair, landsat_change_model, tmp_path
):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, [
        "detect-change", str(landsat_pair[0]), str(landsat_pair[1]), "-o", str(out),
        "-m", str(landsat_change_model), "--extent", "10,50,11,51",
    ])  # fmt: skip
    assert result.exit_code == 1
    assert f"{landsat_pair[0]}: holds no pixel of the extent 10, 50, 11, 51" in result.output
    assert not out.exists() or not list(out.iterdir())
    result = CliRunner().invoke(cli, [
        "detect-change", str(landsat_pair[0]), str(landsat_pair[1]), "-o", str(out),
        "--extent", "11,50,10,51",
    ])  # fmt: skip
    assert result.exit_code == 2 and "left < right" in result.output


def test_a_band_without_description_is_named_in_the_refusal(s2_pair, tmp_path):
    """A raster whose band 4 lost its description (B04) is refused naming the missing band and
    the band that has no description, not only the twelve that have one."""
    blanked = tmp_path / "a_blank_b4.tif"
    with rasterio.open(s2_pair[0]) as src:
        profile, data, names = src.profile, src.read(), list(src.descriptions)
    with rasterio.open(blanked, "w", **profile) as dst:
        dst.write(data)
        for i, name in enumerate(names, 1):
            dst.set_band_description(i, "" if i == 4 else name)
    outputs = ChangeOutputs.in_dir(str(tmp_path / "out"))
    with pytest.raises(InputError, match=r"lacks band B04 \(its band descriptions: B01, B02, "
                       r"B03, B05, .*; none on band 4\)"):  # fmt: skip
        detect_change(str(blanked), str(s2_pair[1]), outputs)
    assert not (tmp_path / "out").exists()
