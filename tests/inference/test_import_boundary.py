"""The engine imports only numpy and onnxruntime at module level (the QGIS plugin relies on it)."""

from __future__ import annotations

import subprocess
import sys

ENGINE_MODULES = [
    "swimdiff_geo.inference", "swimdiff_geo.inference.change", "swimdiff_geo.inference.landcover",
    "swimdiff_geo.inference.engine", "swimdiff_geo.inference.contract",
    "swimdiff_geo.inference.tiling", "swimdiff_geo.inference.areas",
    "swimdiff_geo.inference.inputs", "swimdiff_geo.inference.outputs",
    "swimdiff_geo.inference.defaults", "swimdiff_geo.bands",
]  # fmt: skip
FORBIDDEN = ["torch", "rasterio", "osgeo", "lightning", "fiona", "scipy", "click"]


def test_engine_modules_import_without_heavy_dependencies():
    code = (
        "import sys\n"
        f"for m in {ENGINE_MODULES!r}: __import__(m)\n"
        f"bad = [m for m in {FORBIDDEN!r} if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "", f"engine imported: {proc.stdout.strip()}"


def test_cli_help_does_not_import_torch():
    code = (
        "import sys\nfrom click.testing import CliRunner\nfrom swimdiff_geo.cli.main import cli\n"
        "r = CliRunner().invoke(cli, ['--help'])\nassert r.exit_code == 0, r.output\n"
        "r = CliRunner().invoke(cli, ['detect-change', '--help'])\nassert r.exit_code == 0\n"
        "print('torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"
