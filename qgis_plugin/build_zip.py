"""Build the installable QGIS plugin ZIP: ``dist/swimdiff_geo_qgis-<version>.zip``.

The ZIP holds one folder, ``swimdiff_geo_qgis/`` (what QGIS's "Install from ZIP" expects), with:

- the plugin sources (``qgis_plugin/swimdiff_geo_qgis/``), ``metadata.txt`` stamped with the
  package version;
- ``vendor/swimdiff_geo/``: the torch-free engine (``__init__.py``, ``bands.py``,
  ``inference/`` without ``io_rasterio.py``) and the bundled default models
  (``default_models/*.onnx`` and their ``.json``/``.qml`` companions).

Standard library only; the archive is reproducible (sorted entries, fixed timestamps).

Usage: ``python qgis_plugin/build_zip.py --out dist``
"""

from __future__ import annotations

import argparse
import re
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PLUGIN_NAME = "swimdiff_geo_qgis"
PLUGIN_DIR = REPO / "qgis_plugin" / PLUGIN_NAME
PACKAGE_DIR = REPO / "swimdiff_geo"
VENDOR = f"{PLUGIN_NAME}/vendor/swimdiff_geo"

# The engine files QGIS needs, relative to swimdiff_geo/ (glob patterns).
ENGINE_FILES = ("__init__.py", "bands.py", "inference/*.py")
MODEL_FILES = ("default_models/*.onnx", "default_models/*.json", "default_models/*.qml")
# Never shipped: the rasterio backend (QGIS has no rasterio; the plugin uses io_gdal.py).
EXCLUDED = {"inference/io_rasterio.py"}
# Modules the plugin must never import (checked in the vendored sources' top-level imports).
FORBIDDEN_IMPORTS = ("torch", "rasterio", "fiona", "lightning")

FIXED_DATE = (2024, 1, 1, 0, 0, 0)  # reproducible archive: no build-time timestamps


def package_version() -> str:
    text = (PACKAGE_DIR / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__\s*=\s*["\']([^"\']+)["\']', text, re.MULTILINE)
    if match is None:
        raise SystemExit(f"{PACKAGE_DIR / '__init__.py'}: no __version__ found")
    return match.group(1)


def plugin_files() -> list[tuple[Path, str]]:
    """(source file, name in the archive) for the plugin sources."""
    out = []
    for path in sorted(PLUGIN_DIR.rglob("*")):
        rel = path.relative_to(PLUGIN_DIR)
        if path.is_dir() or "__pycache__" in rel.parts or path.suffix in (".pyc", ".pyo"):
            continue
        if rel.parts[0] == "vendor":  # a developer's leftover: always rebuilt from the package
            continue
        out.append((path, f"{PLUGIN_NAME}/{rel.as_posix()}"))
    return out


def engine_files() -> list[tuple[Path, str]]:
    """(source file, name in the archive) for the vendored engine and default models."""
    out = []
    for pattern in ENGINE_FILES + MODEL_FILES:
        for path in sorted(PACKAGE_DIR.glob(pattern)):
            rel = path.relative_to(PACKAGE_DIR).as_posix()
            if rel not in EXCLUDED:
                out.append((path, f"{VENDOR}/{rel}"))
    return out


def check_no_forbidden_imports(files: list[tuple[Path, str]]) -> None:
    """Fail the build if a shipped module imports torch/rasterio at module level."""
    pattern = re.compile(
        r"^(?:import|from)\s+(" + "|".join(FORBIDDEN_IMPORTS) + r")\b", re.MULTILINE
    )
    for path, _name in files:
        if path.suffix == ".py":
            match = pattern.search(path.read_text(encoding="utf-8"))
            if match:
                raise SystemExit(
                    f"{path}: imports {match.group(1)} at module level; the QGIS plugin must "
                    "not need it"
                )


def build(out_dir: Path) -> Path:
    version = package_version()
    files = plugin_files() + engine_files()
    check_no_forbidden_imports(files)
    names = {name for _, name in files}
    for required in (f"{PLUGIN_NAME}/metadata.txt", f"{PLUGIN_NAME}/__init__.py",
                     f"{VENDOR}/inference/io_gdal.py"):  # fmt: skip
        if required not in names:
            raise SystemExit(f"cannot build the plugin: {required} is missing")
    if not any(name.endswith(".onnx") for name in names):
        print("warning: no default models in swimdiff_geo/default_models/", file=sys.stderr)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{PLUGIN_NAME}-{version}.zip"
    tmp = target.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path, name in sorted(files, key=lambda item: item[1]):
            data = path.read_bytes()
            if name == f"{PLUGIN_NAME}/metadata.txt":
                data = re.sub(
                    rb"^version=.*$", f"version={version}".encode(), data, flags=re.MULTILINE
                )
            info = zipfile.ZipInfo(name, FIXED_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    tmp.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="dist", help="output folder (default: dist)")
    args = parser.parse_args(argv)
    target = build(Path(args.out))
    with zipfile.ZipFile(target) as archive:
        entries = archive.namelist()
    size_mb = target.stat().st_size / 1e6
    print(f"{target}: {len(entries)} files, {size_mb:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
