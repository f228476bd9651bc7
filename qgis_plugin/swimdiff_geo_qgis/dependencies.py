"""Finding the engine and telling the user how to install what QGIS's Python lacks.

The plugin ZIP vendors the torch-free engine package (``vendor/swimdiff_geo``); it is put on
``sys.path`` only when no ``swimdiff_geo`` is importable already (a developer's install or a
``pip install swimdiff-geo`` into QGIS's Python wins). onnxruntime cannot be vendored (a
platform-specific binary wheel), so its absence is detected and explained instead.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys

VENDOR_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vendor")

#: Modules the engine needs that QGIS does not always ship (import name -> pip name).
REQUIRED_MODULES = {"onnxruntime": "onnxruntime"}
#: Needed only for polygons and minimum-area filtering (scipy.ndimage labelling).
POLYGON_MODULES = {"scipy": "scipy"}


def ensure_engine_importable() -> str:
    """Make ``import swimdiff_geo`` work; returns where it will be imported from.

    Adds the vendored copy to ``sys.path`` only if no other ``swimdiff_geo`` is importable.
    """
    spec = importlib.util.find_spec("swimdiff_geo")
    if spec is None and os.path.isdir(os.path.join(VENDOR_DIR, "swimdiff_geo")):
        if VENDOR_DIR not in sys.path:
            sys.path.append(VENDOR_DIR)
        importlib.invalidate_caches()
        spec = importlib.util.find_spec("swimdiff_geo")
    if spec is None or not spec.origin:
        return ""
    return os.path.dirname(spec.origin)


def missing_modules(modules: dict[str, str]) -> list[str]:
    """pip names of the ``modules`` (import name -> pip name) that cannot be imported."""
    return [pip for name, pip in modules.items() if importlib.util.find_spec(name) is None]


def _numpy_pin() -> str:
    """``numpy==<the version QGIS runs>``: pip must not replace QGIS's numpy (GDAL needs it)."""
    try:
        import numpy

        return f"numpy=={numpy.__version__}"
    except ImportError:  # pragma: no cover - QGIS always ships numpy
        return ""


def _macos_python() -> str:
    """QGIS.app's own python3, derived from where this Python runs (QGIS.app, QGIS-LTR.app...)."""
    prefix = sys.executable or sys.prefix
    marker = ".app/"
    if marker in prefix:
        app = prefix[: prefix.index(marker) + len(marker) - 1]
        return f"{app}/Contents/MacOS/bin/python3"
    return "/Applications/QGIS.app/Contents/MacOS/bin/python3"


def _linux_python() -> str:
    """The interpreter QGIS embeds: sys.executable when it is a python, else the system one."""
    executable = sys.executable or ""
    if os.path.basename(executable).startswith("python"):
        return executable
    return "/usr/bin/python3"


def install_instructions(packages: list[str], system: str | None = None) -> str:
    """The exact commands that install ``packages`` into the Python that runs QGIS.

    ``system`` is ``platform.system()`` ("Windows", "Darwin", "Linux"); defaults to this one.
    numpy is pinned to the running version so pip cannot upgrade it behind GDAL's back.
    """
    system = system or platform.system()
    pin = _numpy_pin()
    wanted = " ".join([*packages, pin]).strip()
    python_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    lines = [
        f"The swimdiff-geo plugin needs the Python package(s) {', '.join(packages)}, which "
        "QGIS's Python does not have. Install them, then restart QGIS:",
    ]
    if system == "Windows":
        lines += [
            "  1. Close QGIS.",
            "  2. Start menu > QGIS > 'OSGeo4W Shell' (run as administrator if QGIS is "
            "installed for all users).",
            f"  3. python -m pip install {wanted}",
        ]
    elif system == "Darwin":
        python = _macos_python()
        lines += [
            "  In Terminal:",
            f'  "{python}" -m pip install --user {wanted}',
        ]
    else:
        python = _linux_python()
        lines.append(f"  In a terminal (QGIS runs Python {python_version}: {python}):")
        if sys.prefix != sys.base_prefix:  # QGIS started from a virtualenv: install into it
            lines.append(f"  {python} -m pip install {wanted}")
        else:
            lines += [
                f"  {python} -m pip install --user --break-system-packages {wanted}",
                "  (--break-system-packages is needed on Debian 12 / Ubuntu 23.04 and later and "
                "only touches your user's site-packages; drop it on older systems. If pip is "
                "missing: sudo apt install python3-pip.)",
            ]
    lines.append(
        "Check from the QGIS Python console: import onnxruntime; print(onnxruntime.__version__)"
    )
    return "\n".join(lines)
