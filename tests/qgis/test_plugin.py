"""The plugin shell: metadata, provider registration, algorithm definitions, missing runtime."""

from __future__ import annotations

import configparser
import sys
import zipfile
from pathlib import Path

import pytest
from qgis.core import (
    QgsApplication,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterVectorDestination,
)
from swimdiff_geo_qgis import classFactory, dependencies
from swimdiff_geo_qgis.algorithms import ModelInfoAlgorithm

import swimdiff_geo

REPO = Path(__file__).resolve().parents[2]
PLUGIN_DIR = REPO / "qgis_plugin" / "swimdiff_geo_qgis"


def _metadata() -> configparser.SectionProxy:
    parser = configparser.ConfigParser()
    parser.read(PLUGIN_DIR / "metadata.txt", encoding="utf-8")
    return parser["general"]


def test_metadata_has_the_keys_qgis_requires():
    meta = _metadata()
    for key in ("name", "qgisMinimumVersion", "description", "about", "version", "author",
                "email", "repository"):  # fmt: skip
        assert meta.get(key, "").strip(), f"metadata.txt lacks {key}"
    assert meta["qgisMinimumVersion"] == "3.22"
    assert meta["hasProcessingProvider"] == "yes"
    assert meta["version"] == swimdiff_geo.__version__
    assert (PLUGIN_DIR / meta["icon"]).is_file()


def test_init_processing_registers_the_provider_and_unload_removes_it(qgis_processing):
    registry = QgsApplication.processingRegistry()
    plugin = classFactory(None)
    plugin.initProcessing()
    try:
        provider = registry.providerById("swimdiffgeo")
        assert provider is not None
        assert sorted(a.name() for a in provider.algorithms()) == [
            "detectchange", "maplandcover", "modelinfo", "stackbands"
        ]  # fmt: skip
    finally:
        plugin.unload()
    assert registry.providerById("swimdiffgeo") is None


def test_detectchange_parameters(provider):
    alg = provider.algorithm("detectchange")
    kinds = {
        "INPUT_A": QgsProcessingParameterRasterLayer,
        "INPUT_B": QgsProcessingParameterRasterLayer,
        "MODEL": QgsProcessingParameterFile,
        "THRESHOLD": QgsProcessingParameterNumber,
        "TILE_SIZE": QgsProcessingParameterNumber,
        "OVERLAP": QgsProcessingParameterNumber,
        "MIN_AREA": QgsProcessingParameterNumber,
        "OUTPUT_PROBABILITY": QgsProcessingParameterRasterDestination,
        "OUTPUT_MASK": QgsProcessingParameterRasterDestination,
        "OUTPUT_POLYGONS": QgsProcessingParameterVectorDestination,
    }
    for name, kind in kinds.items():
        assert isinstance(alg.parameterDefinition(name), kind), name
    optional = {p.name() for p in alg.parameterDefinitions() if p.flags() & p.FlagOptional}
    assert {"MODEL", "THRESHOLD", "TILE_SIZE", "OVERLAP", "OUTPUT_POLYGONS"} <= optional
    assert not {"INPUT_A", "INPUT_B", "OUTPUT_PROBABILITY", "OUTPUT_MASK"} & optional
    assert alg.parameterDefinition("MODEL").fileFilter() == "ONNX models (*.onnx)"


def test_maplandcover_and_modelinfo_parameters(provider):
    landcover = provider.algorithm("maplandcover")
    assert isinstance(landcover.parameterDefinition("INPUT"), QgsProcessingParameterRasterLayer)
    assert isinstance(
        landcover.parameterDefinition("OUTPUT"), QgsProcessingParameterRasterDestination
    )
    areas = landcover.parameterDefinition("OUTPUT_AREAS")
    assert areas.flags() & areas.FlagOptional
    polygons = landcover.parameterDefinition("OUTPUT_POLYGONS")
    assert polygons.flags() & polygons.FlagOptional and not polygons.createByDefault()
    assert landcover.parameterDefinition("MIN_AREA").defaultValue() == 0.0
    info = provider.algorithm("modelinfo")
    assert [p.name() for p in info.parameterDefinitions()] == ["MODEL"]
    assert {o.name() for o in info.outputDefinitions()} >= {"METADATA", "MODEL_TYPE", "BANDS"}


def test_outputs_restricted_to_formats_the_engine_writes(provider):
    assert provider.supportedOutputRasterLayerExtensions() == ["tif"]
    assert provider.supportedOutputVectorLayerExtensions() == ["gpkg"]


class _NeedsAbsentRuntime(ModelInfoAlgorithm):
    """modelinfo as it behaves where onnxruntime is not installed: a module that cannot be
    imported stands in for it (the real onnxruntime cannot be uninstalled under the test)."""

    required_modules = {"swimdiff_test_absent_runtime": "onnxruntime"}


def test_missing_runtime_blocks_the_algorithm_with_install_steps(qgis_processing):
    alg = _NeedsAbsentRuntime()
    alg.initAlgorithm()
    ok, message = alg.canExecute()
    assert not ok
    assert "onnxruntime" in message and "pip install" in message
    numpy_version = sys.modules["numpy"].__version__
    assert f"numpy=={numpy_version}" in message  # pip must not replace QGIS's numpy
    with pytest.raises(QgsProcessingException, match=r"-m pip install .*onnxruntime"):
        alg.processAlgorithm({}, QgsProcessingContext(), QgsProcessingFeedback())


@pytest.mark.parametrize(
    ("system", "expected"),
    [
        ("Windows", "OSGeo4W Shell"),
        ("Darwin", '/Contents/MacOS/bin/python3" -m pip install --user onnxruntime'),
        ("Linux", f"{sys.executable} -m pip install "),
    ],
)
def test_install_instructions_per_platform(system, expected):
    text = dependencies.install_instructions(["onnxruntime"], system=system)
    assert expected in text
    assert f"onnxruntime numpy=={sys.modules['numpy'].__version__}" in text
    assert "restart QGIS" in text


def test_zip_vendors_the_engine_without_torch_or_rasterio(tmp_path):
    sys.path.insert(0, str(REPO / "qgis_plugin"))
    try:
        import build_zip
    finally:
        sys.path.remove(str(REPO / "qgis_plugin"))
    target = build_zip.build(tmp_path)
    assert target.name == f"swimdiff_geo_qgis-{swimdiff_geo.__version__}.zip"
    with zipfile.ZipFile(target) as archive:
        names = set(archive.namelist())
        metadata = archive.read("swimdiff_geo_qgis/metadata.txt").decode()
    vendor = "swimdiff_geo_qgis/vendor/swimdiff_geo/"
    assert {
        "swimdiff_geo_qgis/__init__.py",
        "swimdiff_geo_qgis/metadata.txt",
        vendor + "__init__.py",
        vendor + "bands.py",
        vendor + "inference/__init__.py",
        vendor + "inference/io_gdal.py",
        vendor + "inference/contract.py",
    } <= names
    assert vendor + "inference/io_rasterio.py" not in names
    assert not any("__pycache__" in n for n in names)
    shipped_models = {n.rsplit("/", 1)[1] for n in names if n.endswith(".onnx")}
    repo_models = {p.name for p in (REPO / "swimdiff_geo" / "default_models").glob("*.onnx")}
    assert repo_models and shipped_models == repo_models
    assert f"version={swimdiff_geo.__version__}" in metadata
    # Every archive entry sits inside the one plugin folder (what "Install from ZIP" expects).
    assert {n.split("/", 1)[0] for n in names} == {"swimdiff_geo_qgis"}


_BARE_QGIS_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
from qgis.core import QgsApplication
app = QgsApplication([], False)
app.initQgis()
import swimdiff_geo_qgis
plugin = swimdiff_geo_qgis.classFactory(None)
plugin.initProcessing()
import swimdiff_geo
registry = QgsApplication.processingRegistry()
ok, message = registry.algorithmById("swimdiffgeo:detectchange").canExecute()
print(json.dumps({
    "engine": swimdiff_geo.__file__,
    "algorithms": sorted(a.id() for a in registry.providerById("swimdiffgeo").algorithms()),
    "can_execute": ok,
    "message": message,
}), flush=True)
plugin.unload()
app.exitQgis()
"""


def test_zip_plugin_in_a_bare_qgis_python(tmp_path):
    """The ZIP unpacked for QGIS's own Python as installed (no swimdiff_geo, no onnxruntime):
    the vendored engine is used, the provider loads, and the algorithms refuse to run with the
    install command for this platform."""
    import json
    import subprocess

    # -I: no PYTHONPATH, no user site-packages, no current folder on sys.path.
    python = ["/usr/bin/python3", "-I", "-c"]
    probe = subprocess.run(
        [*python, "import importlib.util as u; "
                  "print(u.find_spec('swimdiff_geo') or u.find_spec('onnxruntime'))"],
        capture_output=True, text=True, cwd=tmp_path, check=True,
    )  # fmt: skip
    assert probe.stdout.strip() == "None", "QGIS's system Python must lack swimdiff_geo/onnxruntime"

    sys.path.insert(0, str(REPO / "qgis_plugin"))
    try:
        import build_zip
    finally:
        sys.path.remove(str(REPO / "qgis_plugin"))
    with zipfile.ZipFile(build_zip.build(tmp_path / "dist")) as archive:
        archive.extractall(tmp_path / "plugins")
    result = subprocess.run(
        [*python, _BARE_QGIS_SCRIPT, str(tmp_path / "plugins")],
        capture_output=True, text=True, cwd=tmp_path, timeout=120, check=False,
    )  # fmt: skip
    report = json.loads(result.stdout.strip().splitlines()[-1])
    vendor = tmp_path / "plugins" / "swimdiff_geo_qgis" / "vendor" / "swimdiff_geo"
    assert Path(report["engine"]).parent == vendor
    assert report["algorithms"] == [
        "swimdiffgeo:detectchange", "swimdiffgeo:maplandcover", "swimdiffgeo:modelinfo",
        "swimdiffgeo:stackbands",
    ]  # fmt: skip
    assert report["can_execute"] is False
    assert "-m pip install --user --break-system-packages onnxruntime numpy==" in report["message"]
