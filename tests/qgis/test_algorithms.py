"""The Processing algorithms in real QGIS, compared with the CLI on the same inputs.

The CLI runs in the main virtualenv (rasterio backend, GDAL bundled with rasterio); the plugin
runs here on osgeo.gdal (QGIS's GDAL). Outputs must hold the same pixels.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, ogr
from qgis.core import (
    QgsPalettedRasterRenderer,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsRasterLayer,
    QgsSingleBandPseudoColorRenderer,
)

CHANGE_OUTPUTS = ("change_probability.tif", "change_mask.tif")


def _run(algorithm: str, parameters: dict, feedback: QgsProcessingFeedback | None = None) -> dict:
    import processing

    return processing.run(
        f"swimdiffgeo:{algorithm}",
        parameters,
        context=QgsProcessingContext(),
        feedback=feedback or QgsProcessingFeedback(),
    )


def _array(path: str) -> np.ndarray:
    ds = gdal.Open(path)
    try:
        return ds.ReadAsArray()
    finally:
        ds = None


def _grid(path: str) -> tuple:
    ds = gdal.Open(path)
    try:
        srs = ds.GetSpatialRef()
        srs.AutoIdentifyEPSG()
        return (ds.RasterXSize, ds.RasterYSize, ds.GetGeoTransform(), srs.GetAuthorityCode(None))
    finally:
        ds = None


def _polygons(path: str) -> list[tuple]:
    """(geometry area in CRS units, attributes...) per polygon, in a front-end-independent order:
    by the non-float attributes (ids, pixel counts, names), then by geometry area."""
    ds = ogr.Open(path)
    layer = ds.GetLayer(0)
    rows = []
    for feature in layer:
        values = tuple(feature.GetField(i) for i in range(feature.GetFieldCount()))
        rows.append((feature.GetGeometryRef().GetArea(), *values))
    ds = None
    return sorted(rows, key=lambda r: (tuple(str(v) for v in r[1:] if not isinstance(v, float)),
                                       r[0]))  # fmt: skip


def _assert_rows_match(ours: list, cli: list) -> None:
    """Equal row by row: exactly for counts, ids and names; to 1e-9 (relative) for floats.

    Pixels are identical, but areas of geographic-CRS pixels come from numpy's sin/log, whose
    last bits differ between QGIS's numpy (Debian's 1.24) and the CLI's (2.x).
    """
    assert len(ours) == len(cli)
    for row_ours, row_cli in zip(ours, cli, strict=True):
        assert len(row_ours) == len(row_cli)
        for a, b in zip(row_ours, row_cli, strict=True):
            if isinstance(b, float):
                assert a == pytest.approx(b, rel=1e-9, abs=1e-12), (row_ours, row_cli)
            else:
                assert a == b, (row_ours, row_cli)


@pytest.fixture(scope="module")
def plugin_change(tmp_path_factory, s2_pair, qgis_processing):
    """detectchange on the sample pair with the bundled model, all outputs."""
    from qgis.core import QgsApplication
    from swimdiff_geo_qgis.provider import SwimdiffGeoProvider

    registry = QgsApplication.processingRegistry()
    provider = SwimdiffGeoProvider()
    registry.addProvider(provider)
    out = tmp_path_factory.mktemp("plugin_change")
    feedback = QgsProcessingFeedback()
    progress: list[float] = []
    feedback.progressChanged.connect(progress.append)
    try:
        result = _run(
            "detectchange",
            {
                "INPUT_A": s2_pair[0],
                "INPUT_B": s2_pair[1],
                "OUTPUT_PROBABILITY": str(out / "change_probability.tif"),
                "OUTPUT_MASK": str(out / "change_mask.tif"),
                "OUTPUT_POLYGONS": str(out / "change_polygons.gpkg"),
            },
            feedback,
        )
    finally:
        registry.removeProvider(provider)
    result["progress"] = progress
    return out, result


def test_detectchange_matches_the_cli(plugin_change, cli_change, s2_pair):
    out, result = plugin_change
    assert result["OUTPUT_PROBABILITY"] == str(out / "change_probability.tif")
    for name in CHANGE_OUTPUTS:
        ours, cli = _array(str(out / name)), _array(str(cli_change / name))
        assert ours.dtype == cli.dtype
        np.testing.assert_array_equal(ours, cli, err_msg=name)
        # On image A's grid: same CRS, size and geotransform (the pair shares a footprint).
        assert _grid(str(out / name)) == _grid(s2_pair[0])
    _assert_rows_match(
        _polygons(str(out / "change_polygons.gpkg")),
        _polygons(str(cli_change / "change_polygons.gpkg")),
    )
    summary = json.loads((cli_change / "summary.json").read_text())
    assert result["CHANGED_PERCENT"] == pytest.approx(summary["changed_percent_of_valid"])
    assert result["POLYGON_COUNT"] == summary["polygons"]


def test_detectchange_reports_progress(plugin_change):
    _, result = plugin_change
    progress = result["progress"]
    assert progress and progress == sorted(progress)
    assert 0.0 <= progress[0] and progress[-1] == pytest.approx(100.0)


def test_detectchange_with_b_reprojected_matches_the_cli(provider, tmp_path, s2_pair, main_cli):
    """B in another CRS: both front ends warp it back onto A's grid (bilinear warped VRT, GDAL
    3.6 here, rasterio's bundled GDAL in the CLI) and must still agree pixel for pixel."""
    moved = str(tmp_path / "b_web_mercator.tif")
    gdal.Warp(moved, s2_pair[1], dstSRS="EPSG:3857", resampleAlg="near")
    ours = tmp_path / "ours"
    _run(
        "detectchange",
        {
            "INPUT_A": s2_pair[0],
            "INPUT_B": moved,
            "OUTPUT_PROBABILITY": str(ours / "change_probability.tif"),
            "OUTPUT_MASK": str(ours / "change_mask.tif"),
        },
    )
    cli = tmp_path / "cli"
    result = main_cli("detect-change", s2_pair[0], moved, "-o", str(cli), "-q", "--no-polygons")
    assert result.returncode == 0, result.stderr
    for name in CHANGE_OUTPUTS:
        assert _grid(str(ours / name)) == _grid(str(cli / name))
        np.testing.assert_array_equal(_array(str(ours / name)), _array(str(cli / name)), name)


def test_detectchange_reads_layers_inside_a_zip(provider, tmp_path, s2_pair, cli_change):
    """Layers QGIS opened inside a ZIP (/vsizip/): the algorithm reads the file in the archive,
    not the archive, and maps what the CLI maps from the unzipped pair."""
    import zipfile

    archive = tmp_path / "pair.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in s2_pair:
            zf.write(path, os.path.basename(path))
    layers = [
        QgsRasterLayer(f"/vsizip/{archive}/{os.path.basename(path)}", name) for path, name in
        zip(s2_pair, ("a", "b"), strict=True)
    ]  # fmt: skip
    assert all(layer.isValid() for layer in layers)
    ours = tmp_path / "ours"
    _run(
        "detectchange",
        {
            "INPUT_A": layers[0],
            "INPUT_B": layers[1],
            "OUTPUT_PROBABILITY": str(ours / "change_probability.tif"),
            "OUTPUT_MASK": str(ours / "change_mask.tif"),
        },
    )
    for name in CHANGE_OUTPUTS:
        np.testing.assert_array_equal(_array(str(ours / name)), _array(str(cli_change / name)))


def test_results_loaded_into_the_project_are_styled(provider, s2_pair, landsat_image):
    """The GUI path: temporary outputs loaded on completion get the plugin's styles."""
    import processing
    from qgis.core import QgsProject

    project = QgsProject.instance()
    try:
        change = processing.runAndLoadResults(
            "swimdiffgeo:detectchange",
            {
                "INPUT_A": s2_pair[0],
                "INPUT_B": s2_pair[1],
                "OUTPUT_PROBABILITY": "TEMPORARY_OUTPUT",
                "OUTPUT_MASK": "TEMPORARY_OUTPUT",
                "OUTPUT_POLYGONS": "TEMPORARY_OUTPUT",
            },
        )
        landcover = processing.runAndLoadResults(
            "swimdiffgeo:maplandcover",
            {
                "INPUT": landsat_image,
                "OUTPUT": "TEMPORARY_OUTPUT",
                "OUTPUT_AREAS": "TEMPORARY_OUTPUT",
            },
        )
        assert change["OUTPUT_POLYGONS"].endswith(".gpkg")
        renderers = {
            layer.source(): type(layer.renderer())
            for layer in project.mapLayers().values()
            if isinstance(layer, QgsRasterLayer)
        }
        assert renderers == {
            change["OUTPUT_MASK"]: QgsPalettedRasterRenderer,
            change["OUTPUT_PROBABILITY"]: QgsSingleBandPseudoColorRenderer,
            landcover["OUTPUT"]: QgsPalettedRasterRenderer,
        }
        others = {
            layer.source().split("|")[0]: layer.isSpatial()
            for layer in project.mapLayers().values()
            if not isinstance(layer, QgsRasterLayer)
        }
        # The polygons, and the class areas as a table (no geometry).
        assert others == {change["OUTPUT_POLYGONS"]: True, landcover["OUTPUT_AREAS"]: False}
    finally:
        project.clear()


def test_detectchange_outputs_are_styled(plugin_change):
    out, _ = plugin_change
    mask = QgsRasterLayer(str(out / "change_mask.tif"), "mask")
    probability = QgsRasterLayer(str(out / "change_probability.tif"), "probability")
    assert mask.isValid() and probability.isValid()
    # QGIS applies the .qml next to the file when it opens it.
    assert isinstance(mask.renderer(), QgsPalettedRasterRenderer)
    assert [(c.value, c.label) for c in mask.renderer().classes()] == [
        (0, "no change"), (1, "change")
    ]  # fmt: skip
    assert isinstance(probability.renderer(), QgsSingleBandPseudoColorRenderer)


def test_extent_in_another_crs_maps_what_the_cli_maps(provider, tmp_path, landsat_image, main_cli):
    """EXTENT as QGIS gives it (x/y minima and maxima, with its own CRS, here web Mercator)
    restricts the map as the CLI's --extent/--extent-crs do."""
    left, bottom, right, top = -8305000.0, -945000.0, -8285000.0, -930000.0  # EPSG:3857, metres
    result = _run(
        "maplandcover",
        {
            "INPUT": landsat_image,
            "EXTENT": f"{left},{right},{bottom},{top} [EPSG:3857]",
            "OUTPUT": str(tmp_path / "landcover.tif"),
        },
    )
    cli = tmp_path / "cli"
    extent = f"--extent={left},{bottom},{right},{top}"
    done = main_cli("map-landcover", landsat_image, "-o", str(cli), "-q", extent,
                    "--extent-crs", "EPSG:3857")  # fmt: skip
    assert done.returncode == 0, done.stderr
    ours, theirs = _array(result["OUTPUT"]), _array(str(cli / "landcover.tif"))
    assert ours.shape == theirs.shape and ours.shape != _array(landsat_image).shape[1:]
    np.testing.assert_array_equal(ours, theirs)
    assert _grid(result["OUTPUT"]) == _grid(str(cli / "landcover.tif"))
    assert json.loads(result["SUMMARY"])["extent"]["crs"] == "EPSG:3857"  # not its WKT


def test_extent_typed_without_crs_is_in_the_input_layers_crs(provider, tmp_path, s2_slovenia,
                                                             main_cli):  # fmt: skip
    """An EXTENT typed without a CRS is in the input layer's CRS, as for QGIS's own algorithms
    (here UTM 33N metres; read as longitude/latitude before, it held no pixel)."""
    from swimdiff_geo.inference.defaults import resolve_model_path

    model = resolve_model_path("s2_landcover_swimdiff")
    result = _run(
        "maplandcover",
        {
            "INPUT": s2_slovenia,
            "MODEL": model,
            "EXTENT": "465400,465900,5079500,5080000",
            "OUTPUT": str(tmp_path / "typed.tif"),
        },
    )
    assert json.loads(result["SUMMARY"])["extent"]["crs"] == "EPSG:32633"
    cli = tmp_path / "cli"
    extent = "--extent=465400,5079500,465900,5080000"
    done = main_cli("map-landcover", s2_slovenia, "-m", model, "-o", str(cli), "-q", extent,
                    "--extent-crs", "EPSG:32633")  # fmt: skip
    assert done.returncode == 0, done.stderr
    ours, theirs = _array(result["OUTPUT"]), _array(str(cli / "landcover.tif"))
    assert ours.shape == (50, 50)
    np.testing.assert_array_equal(ours, theirs)


def test_a_raster_table_of_a_geopackage_is_read_as_its_layer(provider, tmp_path, landsat_image):
    """A layer of one raster table of a GeoPackage (``GPKG:/x.gpkg:table``) is read as that
    table, as GDAL opens it, not as the file's path (which names no raster of its own)."""
    from qgis.core import QgsRasterLayer

    gpkg = tmp_path / "rasters.gpkg"
    for table in ("l2020", "other"):
        options = [f"RASTER_TABLE={table}", "TILE_FORMAT=PNG"]
        options += ["APPEND_SUBDATASET=YES"] if gpkg.exists() else []
        assert gdal.Translate(str(gpkg), landsat_image, format="GPKG", creationOptions=options)
    layer = QgsRasterLayer(f"GPKG:{gpkg}:l2020", "l2020")
    assert layer.isValid() and layer.bandCount() == 4
    from_table = _run("maplandcover", {"INPUT": layer, "OUTPUT": str(tmp_path / "gpkg.tif")})
    from_tif = _run("maplandcover", {"INPUT": landsat_image, "OUTPUT": str(tmp_path / "tif.tif")})
    np.testing.assert_array_equal(_array(from_table["OUTPUT"]), _array(from_tif["OUTPUT"]))


def test_maplandcover_matches_the_cli(provider, tmp_path, cli_landcover, landsat_image):
    result = _run(
        "maplandcover",
        {
            "INPUT": landsat_image,
            "OUTPUT": str(tmp_path / "landcover.tif"),
            "OUTPUT_AREAS": str(tmp_path / "class_areas.csv"),
        },
    )
    ours = _array(result["OUTPUT"])
    np.testing.assert_array_equal(ours, _array(str(cli_landcover / "landcover.tif")))
    assert _grid(result["OUTPUT"]) == _grid(landsat_image)
    with open(result["OUTPUT_AREAS"]) as f_ours, open(cli_landcover / "class_areas.csv") as f_cli:
        ours_rows, cli_rows = list(csv.reader(f_ours)), list(csv.reader(f_cli))
    assert ours_rows[0] == cli_rows[0]  # header

    def typed(row: list[str]) -> list:
        """Non-integer numbers as floats (compared to 1e-9), everything else as text."""
        out: list = []
        for v in row:
            try:
                int(v)
                out.append(v)
            except ValueError:
                try:
                    out.append(float(v))
                except ValueError:
                    out.append(v)
        return out

    _assert_rows_match([typed(r) for r in ours_rows[1:]], [typed(r) for r in cli_rows[1:]])

    # Styled with the model's class names and colours (modelinfo reads them from the model).
    info = json.loads(
        _run("modelinfo", {"MODEL": json.loads(result["SUMMARY"])["model"]["path"]})["METADATA"]
    )
    layer = QgsRasterLayer(result["OUTPUT"], "landcover")
    classes = layer.renderer().classes()
    assert [(c.value, c.label) for c in classes] == [
        (int(k), v) for k, v in sorted(info["class_names"].items(), key=lambda kv: int(kv[0]))
    ]
    for c in classes:
        expected = info["class_colors"].get(str(c.value))
        if expected:
            assert c.color.name() == expected.lower()


def test_maplandcover_minimum_mapping_unit_matches_the_cli(
    provider, tmp_path, landsat_image, main_cli, cli_landcover
):
    # The same minimum mapping unit through the GDAL backend and the CLI's rasterio backend:
    # the same sieved class map, class areas and polygons.
    cli_out = tmp_path / "cli"
    done = main_cli("map-landcover", landsat_image, "-o", str(cli_out), "-q", "--polygons",
                    "--min-area", "50000")  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = _run(
        "maplandcover",
        {
            "INPUT": landsat_image,
            "MIN_AREA": 50000,
            "OUTPUT": str(tmp_path / "landcover.tif"),
            "OUTPUT_AREAS": str(tmp_path / "class_areas.csv"),
            "OUTPUT_POLYGONS": str(tmp_path / "landcover.gpkg"),
        },
    )
    np.testing.assert_array_equal(_array(result["OUTPUT"]), _array(str(cli_out / "landcover.tif")))
    sieved = _array(result["OUTPUT"])
    assert (sieved != _array(str(cli_landcover / "landcover.tif"))).any()  # it did sieve
    with open(result["OUTPUT_AREAS"]) as f_ours, open(cli_out / "class_areas.csv") as f_cli:
        assert [r[:3] for r in csv.reader(f_ours)] == [r[:3] for r in csv.reader(f_cli)]
    ours, cli = _polygons(result["OUTPUT_POLYGONS"]), _polygons(str(cli_out / "landcover.gpkg"))
    _assert_rows_match(ours, cli)
    assert result["POLYGON_COUNT"] == len(ours) > 0
    assert json.loads(result["SUMMARY"])["min_area_m2"] == 50000


def test_modelinfo_reports_the_bundled_model(provider, main_cli):
    import onnxruntime

    result = _run("modelinfo", {})
    session = onnxruntime.InferenceSession(result["MODEL"], providers=["CPUExecutionProvider"])
    raw = session.get_modelmeta().custom_metadata_map
    assert result["MODEL_TYPE"] == json.loads(raw["model_type"]) == "change_detection"
    assert result["BANDS"].split(",") == json.loads(raw["bands"])
    assert result["TILE_SIZE"] == json.loads(raw["tile_size"])
    metadata = json.loads(result["METADATA"])
    assert metadata["input"]["name"] == session.get_inputs()[0].name
    # the description `swimdiff-geo info` prints, keys naming their units
    cli = main_cli("info", result["MODEL"], "--json")
    assert cli.returncode == 0, cli.stderr
    described = json.loads(cli.stdout)
    assert metadata.keys() == described.keys() and metadata["resolution_cm"] == 1000.0
    assert metadata["tiles_overlap_percent"] == described["tiles_overlap_percent"] == 25.0


def test_cancelling_leaves_no_output_files(provider, tmp_path, s2_pair):
    feedback = QgsProcessingFeedback()
    progress_reports = []

    def cancel_on_first_progress(value: float) -> None:
        progress_reports.append(value)
        feedback.cancel()

    feedback.progressChanged.connect(cancel_on_first_progress)
    out = tmp_path / "cancelled"
    with pytest.raises(QgsProcessingException, match="Cancelled"):
        _run(
            "detectchange",
            {
                "INPUT_A": s2_pair[0],
                "INPUT_B": s2_pair[1],
                "TILE_SIZE": 64,  # many small windows: cancellation lands mid-run
                "OUTPUT_PROBABILITY": str(out / "p.tif"),
                "OUTPUT_MASK": str(out / "m.tif"),
                "OUTPUT_POLYGONS": str(out / "c.gpkg"),
            },
            feedback,
        )
    assert progress_reports, "the engine never reported progress"
    assert not out.exists() or sorted(os.listdir(out)) == []


@pytest.fixture
def junk_model(tmp_path) -> str:
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"this is not an ONNX protobuf")
    return str(path)


def _cli_error(main_cli, *args: str) -> str:
    """The CLI's error output (it must fail), on one line."""
    result = main_cli(*args)
    assert result.returncode != 0
    return " ".join(result.stderr.split())


def test_bad_model_gives_the_cli_message(provider, tmp_path, s2_pair, junk_model, main_cli):
    with pytest.raises(QgsProcessingException) as caught:
        _run(
            "detectchange",
            {
                "INPUT_A": s2_pair[0],
                "INPUT_B": s2_pair[1],
                "MODEL": junk_model,
                "OUTPUT_PROBABILITY": str(tmp_path / "p.tif"),
                "OUTPUT_MASK": str(tmp_path / "m.tif"),
            },
        )
    message = str(caught.value)
    assert junk_model in message and "not a readable ONNX model" in message
    cli = _cli_error(
        main_cli, "detect-change", *s2_pair, "-o", str(tmp_path / "cli"), "-m", junk_model
    )
    assert message.split(" (")[0] in cli  # same text up to onnxruntime's own detail
    assert not (tmp_path / "p.tif").exists()


def test_wrong_model_type_is_named(provider, tmp_path, landsat_image, main_cli):
    from swimdiff_geo.inference.defaults import default_model_path

    change_model = default_model_path("change_detection")
    with pytest.raises(QgsProcessingException, match="is a change_detection model") as caught:
        _run(
            "maplandcover",
            {"INPUT": landsat_image, "MODEL": change_model, "OUTPUT": str(tmp_path / "lc.tif")},
        )
    assert " ".join(str(caught.value).split()) in _cli_error(
        main_cli, "map-landcover", landsat_image, "-o", str(tmp_path / "cli"), "-m", change_model
    )


def test_image_with_wrong_bands_is_named(provider, tmp_path, s2_pair, landsat_image):
    with pytest.raises(QgsProcessingException) as caught:
        _run(
            "detectchange",
            {
                "INPUT_A": s2_pair[0],
                "INPUT_B": landsat_image,
                "OUTPUT_PROBABILITY": str(tmp_path / "p.tif"),
                "OUTPUT_MASK": str(tmp_path / "m.tif"),
            },
        )
    message = str(caught.value)
    assert message.startswith(landsat_image) and "bands" in message
    # The CLI says "--bands"; in QGIS the same setting is the BANDS parameter.
    assert "map them with BANDS" in message and "--bands" not in message
    assert sorted(os.listdir(tmp_path)) == []


def test_image_describing_other_bands_is_refused(provider, tmp_path, naip_image, main_cli):
    """NAIP (RED GREEN BLUE NIR) has as many bands as the default Landsat land-cover model
    (SWIR1 NIR RED GREEN): refused with the CLI's message, not read in band order."""
    output = tmp_path / "lc.tif"
    with pytest.raises(QgsProcessingException, match="lacks band SWIR1") as caught:
        _run("maplandcover", {"INPUT": naip_image, "OUTPUT": str(output)})
    message = str(caught.value)
    assert message.startswith(naip_image) and "BANDS" in message and "--bands" not in message
    cli_message = _cli_error(main_cli, "map-landcover", naip_image, "-o", str(tmp_path / "cli"))
    assert " ".join(message.split()).replace("BANDS", "--bands") in cli_message
    assert not output.exists()


def test_bands_parameter_maps_raster_bands(provider, tmp_path, s2_pair, landsat_image):
    by_description = _run(
        "maplandcover", {"INPUT": landsat_image, "OUTPUT": str(tmp_path / "a.tif")}
    )
    explicit = _run(
        "maplandcover",
        {"INPUT": landsat_image, "BANDS": "1, 2,3,4", "OUTPUT": str(tmp_path / "b.tif")},
    )
    np.testing.assert_array_equal(_array(explicit["OUTPUT"]), _array(by_description["OUTPUT"]))
    swapped = _run(
        "maplandcover",
        {"INPUT": landsat_image, "BANDS": "2,1,3,4", "OUTPUT": str(tmp_path / "c.tif")},
    )
    assert not np.array_equal(_array(swapped["OUTPUT"]), _array(by_description["OUTPUT"]))
    for bad, expected in (("1,2", "BANDS lists 2 bands but the model takes 13"),
                          ("1,x", "BANDS: expected band numbers separated by commas or spaces"),
                          ("1 2 3", "BANDS lists 3 bands but the model takes 13")):  # fmt: skip
        with pytest.raises(QgsProcessingException, match=expected):
            _run(
                "detectchange",
                {
                    "INPUT_A": s2_pair[0],
                    "INPUT_B": s2_pair[1],
                    "BANDS": bad,
                    "OUTPUT_PROBABILITY": str(tmp_path / "p.tif"),
                    "OUTPUT_MASK": str(tmp_path / "m.tif"),
                },
            )


@pytest.mark.parametrize(
    ("outputs", "expected"),
    [
        ({"OUTPUT_POLYGONS": "c.shp"}, r"OUTPUT_POLYGONS: .*c\.shp: .*GeoPackage"),
        (
            {"OUTPUT_MASK": "m.img"},
            r"OUTPUT_MASK: .*m\.img: .*GeoTIFF; give a path ending in \.tif",
        ),
        ({"OUTPUT_MASK": "p.tif"}, r"OUTPUT_PROBABILITY and OUTPUT_MASK are the same file"),
        (  # what "Save to GeoPackage..." in the output widget gives
            {"OUTPUT_POLYGONS": "ogr:dbname='{tmp}/project.gpkg' table=\"changes\" (geom)"},
            r"OUTPUT_POLYGONS: ogr:.*a GeoPackage file of their own, not into a layer",
        ),
        ({"OUTPUT_MASK": "same.tiff", "OUTPUT_PROBABILITY": "same.tif"}, r"same\.qml: two outputs"),
    ],
)
def test_output_paths_the_engine_cannot_write_are_refused(
    provider, tmp_path, s2_pair, outputs, expected
):
    parameters = {
        "INPUT_A": s2_pair[0],
        "INPUT_B": s2_pair[1],
        "OUTPUT_PROBABILITY": "p.tif",
        "OUTPUT_MASK": "m.tif",
        **outputs,
    }
    for key in ("OUTPUT_PROBABILITY", "OUTPUT_MASK", "OUTPUT_POLYGONS"):
        if key in parameters and "{tmp}" in parameters[key]:
            parameters[key] = parameters[key].format(tmp=tmp_path)
        elif key in parameters:
            parameters[key] = str(tmp_path / parameters[key])
    with pytest.raises(QgsProcessingException, match=expected):
        _run("detectchange", parameters)
    assert sorted(os.listdir(tmp_path)) == []


def test_an_output_picked_on_an_input_is_refused_and_the_input_kept(provider, tmp_path, s2_pair):
    """QGIS passes overwrite (it asked already): an output on image A would have replaced it."""
    a = tmp_path / "a.tif"
    shutil.copy(s2_pair[0], a)
    before = a.read_bytes()
    with pytest.raises(QgsProcessingException, match=rf"{a}: is an input of this job"):
        _run("detectchange", {"INPUT_A": str(a), "INPUT_B": s2_pair[1],
                              "OUTPUT_PROBABILITY": str(a),
                              "OUTPUT_MASK": str(tmp_path / "m.tif")})  # fmt: skip
    assert a.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["a.tif"]


def test_the_plugin_never_imports_torch_or_rasterio(plugin_change):
    loaded = {name.split(".")[0] for name in sys.modules}
    assert not loaded & {"torch", "rasterio", "fiona", "lightning"}
    assert Path(sys.modules["swimdiff_geo.inference.io_gdal"].__file__).name == "io_gdal.py"


def test_graphical_modeler_chains_detectchange(provider, tmp_path, s2_pair):
    """qgis_plugin/examples/change_with_buffer.model3 (built in the graphical modeler's format):
    detectchange -> native:buffer on its polygons."""
    from qgis.core import QgsProcessingModelAlgorithm

    ds = gdal.Open(s2_pair[0])
    _, dx, _, _, _, dy = ds.GetGeoTransform()
    ds = None
    model = QgsProcessingModelAlgorithm()
    model_file = (
        Path(__file__).resolve().parents[2] / "qgis_plugin/examples/change_with_buffer.model3"
    )
    assert model.fromFile(str(model_file))
    ok, problems = model.validate()
    assert ok, problems
    result = _run_model(
        model,
        {
            "image_a": s2_pair[0],
            "image_b": s2_pair[1],
            "min_area": 0.0,
            "buffer": 2 * abs(dx),  # in image A's CRS units
            "detect:change_mask": str(tmp_path / "mask.tif"),
            "detect:change_probability": str(tmp_path / "probability.tif"),
            "buffer:buffered": str(tmp_path / "buffered.gpkg"),
        },
    )
    assert Path(result["detect:change_mask"]).is_file()
    buffered = _polygons(result["buffer:buffered"])
    changed_pixels = int((_array(result["detect:change_mask"]) == 1).sum())
    assert buffered, "no change polygons to buffer"
    # Buffering grows every polygon: together they exceed the changed area (CRS units).
    assert sum(row[0] for row in buffered) > changed_pixels * abs(dx * dy)


def _run_model(model, parameters: dict) -> dict:
    import processing

    return processing.run(
        model, parameters, context=QgsProcessingContext(), feedback=QgsProcessingFeedback()
    )


class _RecordingFeedback(QgsProcessingFeedback):
    """Keeps what the algorithm logs, by kind."""

    def __init__(self) -> None:
        super().__init__()
        self.infos: list[str] = []
        self.warnings: list[str] = []

    def pushInfo(self, info: str) -> None:  # noqa: N802 - QGIS API name
        self.infos.append(info)
        super().pushInfo(info)

    def pushWarning(self, warning: str) -> None:  # noqa: N802
        self.warnings.append(warning)
        super().pushWarning(warning)


def _without_georeferencing(src: str, dst: str) -> str:
    """A copy of ``src`` with its pixels and band descriptions but no CRS or geotransform."""
    ds = gdal.Open(src)
    out = gdal.GetDriverByName("GTiff").Create(
        dst, ds.RasterXSize, ds.RasterYSize, ds.RasterCount, ds.GetRasterBand(1).DataType
    )
    for i in range(1, ds.RasterCount + 1):
        out.GetRasterBand(i).WriteArray(ds.GetRasterBand(i).ReadAsArray())
        out.GetRasterBand(i).SetDescription(ds.GetRasterBand(i).GetDescription())
    out = None
    ds = None
    return dst


def test_engine_warnings_reach_the_log_as_warnings(provider, tmp_path, s2_pair):
    a = _without_georeferencing(s2_pair[0], str(tmp_path / "a.tif"))
    b = _without_georeferencing(s2_pair[1], str(tmp_path / "b.tif"))
    feedback = _RecordingFeedback()
    result = _run(
        "detectchange",
        {
            "INPUT_A": a,
            "INPUT_B": b,
            "MIN_AREA": 100.0,
            "OUTPUT_PROBABILITY": str(tmp_path / "out" / "p.tif"),
            "OUTPUT_MASK": str(tmp_path / "out" / "m.tif"),
            "OUTPUT_POLYGONS": str(tmp_path / "out" / "c.gpkg"),
        },
        feedback,
    )
    assert any("not georeferenced" in w for w in feedback.warnings), feedback.warnings
    # The CLI's "--min-area" is this algorithm's MIN_AREA.
    assert any(w.startswith("warning: MIN_AREA ignored") for w in feedback.warnings)
    assert not [m for m in feedback.warnings if "--" in m]
    assert result["CHANGED_AREA_HA"] is None  # no CRS: no areas
    assert Path(result["OUTPUT_MASK"]).is_file()


def _as_reflectance(src: str, dst: str) -> str:
    """A float32 copy of ``src`` with DN / 10000 (reflectance 0-1), georeferencing kept."""
    ds = gdal.Open(src)
    out = gdal.GetDriverByName("GTiff").Create(
        dst, ds.RasterXSize, ds.RasterYSize, ds.RasterCount, gdal.GDT_Float32
    )
    out.SetGeoTransform(ds.GetGeoTransform())
    out.SetProjection(ds.GetProjection())
    for i in range(1, ds.RasterCount + 1):
        out.GetRasterBand(i).WriteArray(ds.GetRasterBand(i).ReadAsArray() / 10000.0)
        out.GetRasterBand(i).SetDescription(ds.GetRasterBand(i).GetDescription())
    out = None
    ds = None
    return dst


def test_inputs_in_the_wrong_units_are_a_warning_naming_the_file(provider, tmp_path, s2_pair):
    """Reflectance 0-1 given to the bundled model of digital numbers: the GDAL backend's
    samples give the same units warning as the CLI, highlighted in the log."""
    a = _as_reflectance(s2_pair[0], str(tmp_path / "a_reflectance.tif"))
    feedback = _RecordingFeedback()
    result = _run(
        "detectchange",
        {
            "INPUT_A": a,
            "INPUT_B": str(s2_pair[1]),
            "OUTPUT_PROBABILITY": str(tmp_path / "out" / "p.tif"),
            "OUTPUT_MASK": str(tmp_path / "out" / "m.tif"),
        },
        feedback,
    )
    (warning,) = [w for w in feedback.warnings if "pixel values look" in w]
    assert warning.startswith(f"warning: {a}: pixel values look ") and "x smaller" in warning
    assert Path(result["OUTPUT_MASK"]).is_file()


def test_thin_cirrus_over_one_date_is_a_warning_naming_the_file(provider, tmp_path, s2_cirrus_pair):
    """Saclay's hazy second date: the GDAL backend's B10 samples give the CLI's cirrus warning,
    highlighted in the log, with the CLI's --mask-clouds named as the MASK_CLOUDS parameter."""
    feedback = _RecordingFeedback()
    result = _run(
        "detectchange",
        {
            "INPUT_A": s2_cirrus_pair[0],
            "INPUT_B": s2_cirrus_pair[1],
            "OUTPUT_PROBABILITY": str(tmp_path / "out" / "p.tif"),
            "OUTPUT_MASK": str(tmp_path / "out" / "m.tif"),
        },
        feedback,
    )
    (warning,) = [w for w in feedback.warnings if "thin cirrus" in w]
    assert warning.startswith(f"warning: {s2_cirrus_pair[1]}: thin cirrus over this date?")
    assert "median is 50 against 19" in warning and "MASK_CLOUDS" in warning
    assert "--" not in warning
    assert Path(result["OUTPUT_MASK"]).is_file()


def test_cli_polygons_open_styled_in_qgis(cli_change, landsat_image, main_cli, tmp_path):
    """The polygons carry their default style inside the GeoPackage: change regions outlined in
    the mask's red, land-cover regions filled with the model's class colours and names, as the
    class map shows them (a .qml beside landcover.gpkg would be the class map's landcover.qml)."""
    from qgis.core import (
        QgsCategorizedSymbolRenderer,
        QgsRasterLayer,
        QgsSingleSymbolRenderer,
        QgsVectorLayer,
    )

    change = QgsVectorLayer(str(cli_change / "change_polygons.gpkg"), "change", "ogr")
    assert change.isValid() and isinstance(change.renderer(), QgsSingleSymbolRenderer)
    assert change.renderer().symbol().symbolLayer(0).strokeColor().name() == "#e61e1e"
    out = tmp_path / "lc"
    result = main_cli("map-landcover", landsat_image, "-o", str(out), "-q", "--polygons")
    assert result.returncode == 0, result.stderr
    polygons = QgsVectorLayer(str(out / "landcover.gpkg"), "landcover", "ogr")
    renderer = polygons.renderer()
    assert polygons.isValid() and isinstance(renderer, QgsCategorizedSymbolRenderer)
    assert renderer.classAttribute() == "class_id"
    classes = QgsRasterLayer(str(out / "landcover.tif"), "classes")  # kept: owns its renderer
    expected = [(c.label, c.color.name()) for c in classes.renderer().classes()]
    got = [(c.label(), c.symbol().color().name()) for c in renderer.categories()]
    assert got == expected
