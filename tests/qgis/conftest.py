"""Shared fixtures of the QGIS tests: plugin import path, provider registration, sample data,
and reference runs of the CLI in the main virtualenv.

These tests run in QGIS's own Python (``tests/qgis/run.sh``), never in the main suite.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PLUGIN_PARENT = REPO / "qgis_plugin"
SAMPLE_DATA = REPO / "sample_data"
MAIN_VENV = REPO / ".venv"

# The plugin is imported from the source tree (the ZIP is exercised by run.sh's qgis_process run).
if str(PLUGIN_PARENT) not in sys.path:
    sys.path.insert(0, str(PLUGIN_PARENT))
# processing's Python package ships with QGIS's plugins.
for qgis_plugins in ("/usr/share/qgis/python/plugins", "/usr/lib/qgis/python/plugins"):
    if os.path.isdir(qgis_plugins) and qgis_plugins not in sys.path:
        sys.path.append(qgis_plugins)


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.fail(f"{what} missing: {path}")
    return path


@pytest.fixture(scope="session")
def sample_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of sample_data/ to work on: QGIS writes .aux.xml statistics next to the rasters it
    opens as layers, which must not land in the repository."""
    _require(SAMPLE_DATA, "sample data folder")
    target = tmp_path_factory.mktemp("sample_data")
    for folder in ("s2_pair", "landsat_pucallpa", "naip_nd", "s2_cirrus_saclay", "s2_slovenia"):
        shutil.copytree(SAMPLE_DATA / folder, target / folder)
    return target


@pytest.fixture(scope="session")
def s2_pair(sample_copy: Path) -> tuple[str, str]:
    """The 13-band Sentinel-2 L1C sample pair (earlier, later), copied."""
    folder = sample_copy / "s2_pair"
    return (
        str(_require(folder / "s2_date_a.tif", "sample image")),
        str(_require(folder / "s2_date_b.tif", "sample image")),
    )


@pytest.fixture(scope="session")
def s2_slovenia(sample_copy: Path) -> str:
    """A 13-band Sentinel-2 L1C scene in UTM 33N (EPSG:32633), copied."""
    return str(_require(sample_copy / "s2_slovenia" / "s2_slovenia_scene3.tif", "sample image"))


@pytest.fixture(scope="session")
def s2_cirrus_pair(sample_copy: Path) -> tuple[str, str]:
    """The 48 px Sentinel-2 L1C pair from Saclay whose second date lies under thin cirrus."""
    folder = sample_copy / "s2_cirrus_saclay"
    return (
        str(_require(folder / "s2_cirrus_a.tif", "sample image")),
        str(_require(folder / "s2_cirrus_b.tif", "sample image")),
    )


@pytest.fixture(scope="session")
def landsat_image(sample_copy: Path) -> str:
    """The first 4-band Landsat sample image, copied."""
    images = sorted((sample_copy / "landsat_pucallpa").glob("*.tif"))
    if not images:
        pytest.fail(f"no sample Landsat images in {SAMPLE_DATA / 'landsat_pucallpa'}")
    return str(images[0])


@pytest.fixture(scope="session")
def naip_image(sample_copy: Path) -> str:
    """The 2015 NAIP sample image (bands described RED, GREEN, BLUE, NIR), copied."""
    return str(_require(sample_copy / "naip_nd" / "naip_2015.tif", "sample image"))


@pytest.fixture
def provider(qgis_processing: None) -> Iterator[object]:
    """A fresh swimdiffgeo provider, registered for one test and removed after it.

    (Registering a provider id twice makes QGIS delete the new C++ object, so never share one.)
    """
    from qgis.core import QgsApplication
    from swimdiff_geo_qgis.provider import SwimdiffGeoProvider

    registry = QgsApplication.processingRegistry()
    assert registry.providerById("swimdiffgeo") is None, "a swimdiffgeo provider leaked"
    instance = SwimdiffGeoProvider()
    assert registry.addProvider(instance)
    yield instance
    registry.removeProvider(instance)


CliRunner = Callable[..., subprocess.CompletedProcess]


@pytest.fixture(scope="session")
def main_cli() -> CliRunner:
    """Runs ``.venv/bin/swimdiff-geo ARGS`` (main virtualenv, rasterio backend)."""
    exe = MAIN_VENV / "bin" / "swimdiff-geo"
    if not exe.exists():
        pytest.fail(f"{exe} missing: run `make setup` first (the tests compare with the CLI)")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(exe), *args], capture_output=True, text=True, env=env, timeout=300, check=False
        )

    return run


@pytest.fixture(scope="session")
def cli_change(
    tmp_path_factory: pytest.TempPathFactory, s2_pair: tuple[str, str], main_cli: CliRunner
) -> Path:
    """The CLI's detect-change outputs on the sample pair with the bundled model."""
    out = tmp_path_factory.mktemp("cli_change")
    result = main_cli("detect-change", *s2_pair, "-o", str(out), "-q", "--overwrite")
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="session")
def cli_landcover(
    tmp_path_factory: pytest.TempPathFactory, landsat_image: str, main_cli: CliRunner
) -> Path:
    """The CLI's map-landcover outputs on the Landsat sample with the bundled model."""
    out = tmp_path_factory.mktemp("cli_landcover")
    result = main_cli("map-landcover", landsat_image, "-o", str(out), "-q", "--overwrite")
    assert result.returncode == 0, result.stderr
    return out
