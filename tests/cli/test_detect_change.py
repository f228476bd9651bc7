"""``swimdiff-geo detect-change``: happy path, and every bad input the issue lists.

Each bad input must give exit code 1 (usage errors 2), a message naming the file and the
problem, and leave nothing behind in OUTDIR.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.transform import Affine
from swimdiff_geo.cli.main import cli

from swimdiff_geo.inference.outputs import TEMP_PREFIX
from tests.model_builders import change_contract, pointwise_change_model


def run_cli(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.rglob("*")) if out.exists() else []


def test_version_and_help():
    result = run_cli("--version")
    assert result.exit_code == 0 and "swimdiff-geo, version" in result.output
    assert "detect-change" in run_cli("--help").output


def test_console_script_runs_end_to_end(landsat_pair, landsat_change_model, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "swimdiff_geo.cli.main", "detect-change", *map(str, landsat_pair),
         "-o", str(out), "--model", str(landsat_change_model), "--quiet"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "change_mask.qml", "change_mask.tif", "change_mask.tif.aux.xml",  # style, class names
        "change_polygons.gpkg", "change_probability.qml", "change_probability.tif",
        "summary.json",
    ]  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["path"] == str(landsat_change_model)


def test_existing_outputs_need_overwrite(landsat_pair, landsat_change_model, tmp_path):
    out = tmp_path / "out"
    args = ["detect-change", *landsat_pair, "-o", out, "--model", landsat_change_model, "-q"]
    assert run_cli(*args).exit_code == 0
    before = (out / "change_mask.tif").stat().st_mtime_ns
    result = run_cli(*args)
    assert result.exit_code == 1
    assert "already exists" in result.output and "--overwrite" in result.output
    assert (out / "change_mask.tif").stat().st_mtime_ns == before
    assert run_cli(*args, "--overwrite").exit_code == 0
    assert not list(out.glob(".swimdiff-tmp-*"))


def test_overwrite_leaves_no_output_of_the_earlier_run(
    landsat_pair, landsat_change_model, tmp_path
):
    """A run with --overwrite replaces the folder's outputs as a whole: the polygons of an
    earlier run go when the new one is made without them, and statistics GDAL/QGIS cached for
    the old probability (.aux.xml) go with the old pixels; without --overwrite even the stale
    polygons alone refuse the run."""
    out = tmp_path / "out"
    args = ["detect-change", *landsat_pair, "-o", out, "--model", landsat_change_model, "-q"]
    assert run_cli(*args).exit_code == 0
    stats = out / "change_probability.tif.aux.xml"
    stats.write_text("<PAMDataset><Metadata><MDI key='STATISTICS_MAXIMUM'>0.2</MDI>")
    assert run_cli(*args, "--no-polygons", "--overwrite").exit_code == 0
    assert not (out / "change_polygons.gpkg").exists() and not stats.exists()
    assert json.loads((out / "summary.json").read_text())["polygons"] is None
    kept_mask = (out / "change_mask.tif.aux.xml").read_text()  # the new run's class names
    assert "change" in kept_mask
    # stale polygons of a run with them, the rest deleted by hand: refused without --overwrite
    assert run_cli(*args, "--overwrite").exit_code == 0
    for path in out.iterdir():
        if path.name != "change_polygons.gpkg":
            path.unlink()
    result = run_cli(*args, "--no-polygons")
    assert result.exit_code == 1 and "change_polygons.gpkg: output already exists" in result.output


SIGTERM_DURING_COMMIT = """
import os, signal, sys
from swimdiff_geo.inference import outputs

def commit(self):  # SIGTERM arrives with every output written, none renamed into place
    os.kill(os.getpid(), signal.SIGTERM)

outputs.OutputTransaction.commit = commit
from swimdiff_geo.cli.main import cli
cli(sys.argv[1:])
"""


def test_sigterm_leaves_nothing_behind(landsat_pair, landsat_change_model, tmp_path):
    """SIGTERM (a scheduler's timeout) rolls the job back as Ctrl-C does: exit 143, and neither
    the output folder it created nor a temporary folder is left."""
    out = tmp_path / "out"
    args = ["detect-change", *map(str, landsat_pair), "-o", str(out), "-m",
            str(landsat_change_model), "-q"]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", SIGTERM_DURING_COMMIT, *args], capture_output=True, text=True
    )
    assert proc.returncode == 143, proc.stderr
    assert not out.exists()


def test_temporary_folders_of_killed_runs_are_removed(landsat_pair, landsat_change_model, tmp_path):
    """A run killed outright (SIGKILL) cannot clean up; the next run into the folder removes
    the temporary folders of this host's processes that are gone, and keeps a running one's."""
    out = tmp_path / "out"
    host = socket.gethostname()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        abandoned = out / f"{TEMP_PREFIX}{host}-{int(gone.stdout)}-x1y2z3"
        live = out / f"{TEMP_PREFIX}{host}-{running.pid}-a1b2c3"
        elsewhere = out / f"{TEMP_PREFIX}other-host-{int(gone.stdout)}-q1w2e3"
        for folder in (abandoned, live, elsewhere):
            folder.mkdir(parents=True)
            (folder / "change_probability.tiled.tif").write_bytes(b"partial")
        args = ["detect-change", *landsat_pair, "-o", out, "-m", landsat_change_model, "-q"]
        assert run_cli(*args).exit_code == 0
        assert not abandoned.exists() and live.exists() and elsewhere.exists()
    finally:
        running.kill()
        running.wait()


def _georef_copy(src: Path, dst: Path, **changes) -> Path:
    with rasterio.open(src) as ds:
        profile, data = ds.profile, ds.read()
    profile.update(changes)
    with rasterio.open(dst, "w", **profile) as out:
        out.write(data)
    return dst


def _truncated(src: Path, dst: Path) -> Path:
    raw = src.read_bytes()
    dst.write_bytes(raw[: len(raw) // 3])
    return dst


def _bad_cases(tmp: Path, a: Path, b: Path, model: Path, s2_a: Path):
    """(name, args, words the message must contain, path the message must name)."""
    text = tmp / "notes.tif"
    text.write_text("this is not a raster\n")
    far = _georef_copy(b, tmp / "far.tif", transform=Affine.translation(100.0, 40.0) @ Affine.scale(
        0.0008, -0.0008))  # fmt: skip
    with rasterio.open(b) as ds:
        plain_profile = ds.profile
        data = ds.read()
    plain_profile.pop("crs"), plain_profile.pop("transform")
    plain = tmp / "plain.png"
    with rasterio.open(plain, "w", **(plain_profile | {"driver": "PNG"})) as dst:
        dst.write(data)
    plain_small = tmp / "plain_small.png"
    with rasterio.open(plain_small, "w", **(plain_profile | {"driver": "PNG", "width": 50,
                                                            "height": 40})) as dst:  # fmt: skip
        dst.write(data[:, :40, :50])
    empty = _georef_copy(b, tmp / "empty.tif")
    with rasterio.open(empty, "r+") as ds:
        ds.write(np.zeros((ds.count, ds.height, ds.width), ds.dtypes[0]))  # nodata is 0
    empty_a = _georef_copy(a, tmp / "empty_a.tif")
    with rasterio.open(empty_a, "r+") as ds:
        ds.write(np.zeros((ds.count, ds.height, ds.width), ds.dtypes[0]))
    garbage_model = tmp / "garbage.onnx"
    garbage_model.write_bytes(np.random.default_rng(0).bytes(4096))
    no_meta = tmp / "no_meta.onnx"
    import onnx

    proto = onnx.load(str(model))
    del proto.metadata_props[:]
    onnx.save(proto, str(no_meta))
    wrong_channels = tmp / "wrong_channels.onnx"
    pointwise_change_model(str(wrong_channels), change_contract(["R", "G", "B"]), 1.0, 0.0)
    proto = onnx.load(str(wrong_channels))
    for entry in proto.metadata_props:
        if entry.key == "bands":
            entry.value = json.dumps(["SWIR1", "NIR", "RED", "GREEN"])
    onnx.save(proto, str(wrong_channels))
    seg_model = tmp / "segmentation.onnx"
    from tests.model_builders import pointwise_segmentation_model, segmentation_contract

    pointwise_segmentation_model(
        str(seg_model), segmentation_contract(["SWIR1", "NIR", "RED", "GREEN"], ["a", "b"]),
        np.ones((2, 4)),
    )  # fmt: skip
    blocker = tmp / "a_file"
    blocker.write_text("x")
    return [
        ("missing A", [tmp / "nope.tif", b], ["file not found"], tmp / "nope.tif"),
        ("missing B", [a, tmp / "nope_b.tif"], ["file not found"], tmp / "nope_b.tif"),
        ("not a raster", [a, text], ["not a raster"], text),
        ("truncated", [a, _truncated(b, tmp / "truncated.tif")], [], tmp / "truncated.tif"),
        ("band count", [a, s2_a], ["13 bands", "--bands"], s2_a),
        ("no overlap", [a, far], ["does not overlap"], far),
        ("one georeferenced", [a, plain], ["not georeferenced"], plain),
        ("sizes differ, no georef", [plain, plain_small], ["sizes differ"], plain_small),
        ("all nodata B", [a, empty], ["no valid pixels"], a),
        ("all nodata A", [empty_a, b], ["no valid pixels"], empty_a),
        ("missing model", [a, b, "--model", tmp / "none.onnx"], ["model file not found"],
         tmp / "none.onnx"),
        ("corrupt model", [a, b, "--model", garbage_model], ["not a readable ONNX model"],
         garbage_model),
        ("model without metadata", [a, b, "--model", no_meta], ["metadata key", "missing"],
         no_meta),
        ("model shape vs metadata", [a, b, "--model", wrong_channels], ["channels"],
         wrong_channels),
        ("wrong model type", [a, b, "--model", seg_model], ["segmentation model"], seg_model),
        ("unwritable output", [a, b, "--output-override", blocker / "sub"], ["cannot"],
         blocker / "sub"),
    ]  # fmt: skip


def test_bad_inputs_fail_clearly_and_leave_nothing(landsat_pair, landsat_change_model, s2_pair,
                                                   tmp_path):  # fmt: skip
    cases = _bad_cases(tmp_path, *landsat_pair, landsat_change_model, s2_pair[0])
    for name, args, words, named in cases:
        out = tmp_path / f"out_{name.replace(' ', '_')}"
        args = list(args)
        if "--output-override" in args:
            i = args.index("--output-override")
            out = args[i + 1]
            del args[i : i + 2]
        if "--model" not in args:
            args += ["--model", landsat_change_model]
        result = run_cli("detect-change", *args, "-o", out, "-q")
        assert result.exit_code == 1, (name, result.output)
        message = result.output
        assert str(named) in message, (name, message)
        for word in words:
            assert word in message, (name, word, message)
        assert "Traceback" not in message
        assert leftovers(Path(out)) == [], (name, leftovers(Path(out)))


def test_usage_errors_exit_2(landsat_pair, tmp_path):
    result = run_cli("detect-change", *landsat_pair, "-o", tmp_path / "o", "--bands", "0,1")
    assert result.exit_code == 2 and "band numbers start at 1" in result.output
    result = run_cli("detect-change", *landsat_pair, "-o", tmp_path / "o", "--threshold", "2")
    assert result.exit_code == 2
    result = run_cli("detect-change", *landsat_pair, "-o", tmp_path / "o", "--extent",
                     "-75,-9,-74,-8", "--extent-crs", "EPSG:99999")  # fmt: skip
    assert result.exit_code == 2 and "'EPSG:99999' is not a CRS GDAL knows" in result.output
    result = run_cli("detect-change", *landsat_pair, "-o", tmp_path / "change.tif")
    assert result.exit_code == 2 and "change.tif' looks like a file name" in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_device_choice_runs_on_cpu_here(landsat_pair, landsat_change_model, tmp_path, device):
    out = tmp_path / device
    result = run_cli("detect-change", *landsat_pair, "-o", out, "--model", landsat_change_model,
                     "--device", device, "-q", "--no-polygons")  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["providers"][-1] == "CPUExecutionProvider"
