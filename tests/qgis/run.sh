#!/usr/bin/env bash
# The QGIS plugin tests, in real QGIS (Debian 12's QGIS 3.22), from a bare machine:
#   1. install QGIS with apt if it is missing (root or sudo; quiet, idempotent);
#   2. create .venv-qgis from QGIS's Python (/usr/bin/python3, --system-site-packages) with
#      onnxruntime, pytest-qgis and scipy (numpy held at Debian's version: GDAL needs it) and this
#      project (editable, --no-deps);
#   3. run pytest on tests/qgis in QGIS's Python;
#   4. unpack the plugin ZIP (dist/, built by `make qgis-plugin`) and run
#      `qgis_process.bin run swimdiffgeo:detectchange` on the sample pair with the vendored engine.
# Exits non-zero on any failure. See docs/qgis.md and /work/shared/docs/qgis-headless.md.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO"
VENV=.venv-qgis
PLUGIN=swimdiff_geo_qgis
APT_PACKAGES=(qgis python3-qgis qgis-providers python3-venv)
# setuptools >= 77 reads pyproject's SPDX license string (Debian's 66 in QGIS's Python does not)
PIP_PACKAGES=("onnxruntime>=1.17" "pytest-qgis>=5" "scipy>=1.10" "setuptools>=77")

export DEBIAN_FRONTEND=noninteractive
export QT_QPA_PLATFORM=offscreen  # every QGIS entry point aborts without a display otherwise
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/runtime-$(id -u)}"
mkdir -p -m 0700 "$XDG_RUNTIME_DIR"

step() { printf '\n== %s\n' "$*"; }

# -- 1. QGIS ---------------------------------------------------------------------------------
if ! dpkg -s "${APT_PACKAGES[@]}" >/dev/null 2>&1; then
  step "installing QGIS (apt, about 1 minute)"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}" >/dev/null
fi
QGIS_PROCESS=/usr/bin/qgis_process.bin  # the /usr/bin/qgis_process wrapper is broken in 3.22.16

# -- 2. QGIS's Python environment -------------------------------------------------------------
[ -x "$VENV/bin/python" ] || /usr/bin/python3 -m venv --system-site-packages "$VENV"
STAMP="$VENV/.installed"
KEY="$(cat pyproject.toml <(printf '%s\n' "${PIP_PACKAGES[@]}") | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$KEY" ]; then
  step "setting up $VENV"
  /usr/bin/python3 -c 'import numpy; print("numpy==" + numpy.__version__)' > "$VENV/constraints.txt"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
    -c "$VENV/constraints.txt" "${PIP_PACKAGES[@]}"
  # Editable: the tests import the working tree. --no-build-isolation: the venv's setuptools
  # builds it offline in a second.
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps \
    --no-build-isolation -e .
  echo "$KEY" > "$STAMP"
fi
SITE_PACKAGES=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

# -- 3. pytest in QGIS's Python ---------------------------------------------------------------
step "pytest tests/qgis (QGIS $("$VENV/bin/python" -c 'from qgis.core import Qgis; print(Qgis.QGIS_VERSION)'))"
"$VENV/bin/python" -m pytest -c tests/qgis/pytest.ini tests/qgis -q

# -- 4. qgis_process against the plugin unpacked from the ZIP ---------------------------------
VERSION=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' swimdiff_geo/__init__.py)
ZIP="dist/$PLUGIN-$VERSION.zip"
[ -f "$ZIP" ] || "$VENV/bin/python" qgis_plugin/build_zip.py --out dist
step "qgis_process smoke run with $ZIP"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/plugins" "$WORK/profile" "$WORK/out"
# Inputs are copied: QGIS writes .aux.xml statistics next to rasters it opens as layers.
cp sample_data/s2_pair/s2_date_a.tif sample_data/s2_pair/s2_date_b.tif "$WORK/"
"$VENV/bin/python" -m zipfile -e "$ZIP" "$WORK/plugins/"
# qgis_process finds plugins through QGIS_PLUGINPATH and runs enabled ones only; its embedded
# Python sees onnxruntime through PYTHONPATH, but not the editable swimdiff_geo install (.pth
# files are not read from PYTHONPATH), so the engine vendored in the ZIP is the one that runs.
export QGIS_PLUGINPATH="$WORK/plugins" QGIS_CUSTOM_CONFIG_PATH="$WORK/profile"
export PYTHONPATH="$SITE_PACKAGES"
"$QGIS_PROCESS" plugins enable "$PLUGIN" >/dev/null
"$QGIS_PROCESS" run swimdiffgeo:detectchange --json -- \
  INPUT_A="$WORK/s2_date_a.tif" INPUT_B="$WORK/s2_date_b.tif" \
  OUTPUT_PROBABILITY="$WORK/out/change_probability.tif" OUTPUT_MASK="$WORK/out/change_mask.tif" \
  OUTPUT_POLYGONS="$WORK/out/change_polygons.gpkg" > "$WORK/run.json"
unset PYTHONPATH
"$VENV/bin/python" - "$WORK/run.json" "$WORK/plugins/$PLUGIN/vendor" <<'EOF'
"""Check the qgis_process result: outputs exist on image A's grid, vendored engine ran."""
import json
import sys

from osgeo import gdal

result = json.load(open(sys.argv[1]))
log = "\n".join(result.get("log", {}).get("info", []))
assert sys.argv[2] in log, f"the vendored engine did not run:\n{log}"
outputs = result["results"]
a = gdal.Open(result["inputs"]["INPUT_A"])
for key in ("OUTPUT_PROBABILITY", "OUTPUT_MASK"):
    ds = gdal.Open(outputs[key])
    assert ds is not None, f"{key}: {outputs[key]} missing"
    assert ds.GetGeoTransform() == a.GetGeoTransform(), key
    assert (ds.RasterXSize, ds.RasterYSize) == (a.RasterXSize, a.RasterYSize), key
    ds = None
assert gdal.OpenEx(outputs["OUTPUT_POLYGONS"], gdal.OF_VECTOR) is not None
a = None
print(f"qgis_process OK: {result['results']['CHANGED_PERCENT']:.2f} % changed, "
      f"{result['results']['POLYGON_COUNT']} polygons")
EOF
