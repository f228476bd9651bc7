"""``swimdiff-geo batch``: real Landsat crops, real onnxruntime, real processes and a real Dask
cluster. Checks failure isolation, resume after ``kill -9``, fingerprint-driven reruns, and that
every way of running a batch writes the same outputs as the single-job commands."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import fiona
import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.windows import Window
from swimdiff_geo.cli.main import cli

import swimdiff_geo.batch
from swimdiff_geo.batch import MARKER_NAME, OWNER_NAME, REPORT_NAME, load_manifest

REPO = Path(__file__).resolve().parent.parent

# (job_id, column offset, row offset) of 160 x 128 px crops of the 697 x 377 px Pucallpa scenes
CHANGE_CROPS = [("c1", 0, 0), ("c2", 180, 40), ("c3", 360, 120), ("c4", 520, 240)]
LANDCOVER_CROPS = [("l1", 60, 200), ("l2", 400, 10)]
CROP_W, CROP_H = 160, 128
# a valid manifest row whose files need not exist (validation happens before any job runs)
GOOD = {"job_id": "a", "task": "change", "image": "a.tif", "image_b": "b.tif"}


def run_cli(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


def write_manifest(path: Path, rows: list[dict[str, object]]) -> Path:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_report(out: Path) -> dict[str, dict[str, str]]:
    with open(out / REPORT_NAME, newline="", encoding="utf-8") as fh:
        return {row["job_id"]: row for row in csv.DictReader(fh)}


def markers(out: Path) -> dict[str, int]:
    """job_id -> mtime (ns) of its done-marker."""
    return {p.parent.name: p.stat().st_mtime_ns for p in out.glob(f"*/{MARKER_NAME}")}


def _crop(src: Path, dst: Path, col: int, row: int) -> Path:
    with rasterio.open(src) as ds:
        window = Window(col, row, CROP_W, CROP_H)
        profile = ds.profile | {
            "width": CROP_W,
            "height": CROP_H,
            "transform": ds.window_transform(window),
            "blockxsize": 64,
            "blockysize": 64,
        }
        data = ds.read(window=window)
    with rasterio.open(dst, "w", **profile) as out:
        out.write(data)
    return dst


@pytest.fixture(scope="module")
def scenes(landsat_pair, landsat_change_model, landsat_segmentation_model, tmp_path_factory):
    """Crops of the real 1990 / 2020 scenes and the manifest rows of six jobs using them.

    Paths in the rows are relative to the manifest folder (the scenes folder), as users write
    them; options cover a per-job threshold, min_area, tile size, overlap and polygons flags.
    """
    folder = tmp_path_factory.mktemp("scenes")
    a, b = landsat_pair
    rows: list[dict[str, object]] = []
    for job_id, col, row in CHANGE_CROPS:
        _crop(a, folder / f"{job_id}_1990.tif", col, row)
        _crop(b, folder / f"{job_id}_2020.tif", col, row)
        rows.append(
            {
                "job_id": job_id,
                "task": "change",
                "image": f"{job_id}_1990.tif",
                "image_b": f"{job_id}_2020.tif",
                "model": str(landsat_change_model),
                "tile_size": 32,
                "threshold": 0.4 if job_id == "c2" else "",
                "min_area": 20000 if job_id == "c3" else "",
                "overlap": "",
                "polygons": "false" if job_id == "c4" else "",
            }
        )
    for job_id, col, row in LANDCOVER_CROPS:
        _crop(b, folder / f"{job_id}_2020.tif", col, row)
        rows.append(
            {
                "job_id": job_id,
                "task": "landcover",
                "image": f"{job_id}_2020.tif",
                "image_b": "",
                "model": str(landsat_segmentation_model),
                "tile_size": 32,
                "threshold": "",
                "min_area": "",
                "overlap": 50,
                "polygons": "true" if job_id == "l1" else "",
            }
        )
    return folder, rows


@pytest.fixture(scope="module")
def reference(scenes, tmp_path_factory) -> Path:
    """The six jobs run once, uninterrupted, in this process (``--workers 1``)."""
    folder, rows = scenes
    manifest = write_manifest(folder / "jobs.csv", rows)
    out = tmp_path_factory.mktemp("reference") / "out"
    result = run_cli("batch", manifest, "-o", out, "-q")
    assert result.exit_code == 0, result.output
    assert {r["status"] for r in read_report(out).values()} == {"done"}
    return out


def _summary_without_runtime(path: Path) -> dict:
    summary = json.loads(path.read_text())
    summary.pop("runtime_s")
    return summary


def assert_same_outputs(got: Path, want: Path) -> None:
    """Same files, same pixels and georeferencing, same summaries (runtimes aside), same
    polygons and class-area tables."""
    batch_files = (MARKER_NAME, OWNER_NAME)
    names = sorted(p.name for p in want.iterdir() if p.name not in batch_files)
    assert sorted(p.name for p in got.iterdir() if p.name not in batch_files) == names
    for name in names:
        g, w = got / name, want / name
        if name.endswith(".tif"):
            with rasterio.open(g) as gd, rasterio.open(w) as wd:
                assert gd.profile == wd.profile, name
                np.testing.assert_array_equal(gd.read(), wd.read(), err_msg=name)
        elif name == "summary.json":
            assert _summary_without_runtime(g) == _summary_without_runtime(w)
        elif name.endswith(".gpkg"):
            with fiona.open(g) as gl, fiona.open(w) as wl:
                got_features = [(dict(f.properties), f.geometry["coordinates"]) for f in gl]
                want_features = [(dict(f.properties), f.geometry["coordinates"]) for f in wl]
            assert got_features == want_features and len(want_features) > 0
        else:  # class_areas.csv and .aux.xml sidecars
            assert g.read_bytes() == w.read_bytes(), name


def assert_same_batch(got: Path, want: Path, job_ids: list[str]) -> None:
    for job_id in job_ids:
        assert_same_outputs(got / job_id, want / job_id)
    got_report, want_report = read_report(got), read_report(want)
    for job_id in job_ids:
        for column in ("changed_area_ha", "changed_percent", "class_areas_ha", "warnings"):
            assert got_report[job_id][column] == want_report[job_id][column], (job_id, column)


ALL_JOBS = [j for j, *_ in CHANGE_CROPS + LANDCOVER_CROPS]


def test_job_folders_hold_what_the_single_job_commands_write(scenes, reference, tmp_path):
    folder, rows = scenes
    by_id = {r["job_id"]: r for r in rows}
    c3, l1 = by_id["c3"], by_id["l1"]
    single = tmp_path / "c3"
    result = run_cli(
        "detect-change", folder / c3["image"], folder / c3["image_b"], "-o", single,
        "--model", c3["model"], "--tile-size", 32, "--min-area", 20000, "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert_same_outputs(reference / "c3", single)
    single = tmp_path / "l1"
    result = run_cli(
        "map-landcover", folder / l1["image"], "-o", single, "--model", l1["model"],
        "--tile-size", 32, "--overlap", 50, "--polygons", "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert_same_outputs(reference / "l1", single)
    # the report's numbers are the summaries' numbers
    report = read_report(reference)
    for job_id in ALL_JOBS:
        summary = json.loads((reference / job_id / "summary.json").read_text())
        assert report[job_id]["warnings"] == " | ".join(summary["warnings"])
        if job_id.startswith("c"):
            assert float(report[job_id]["changed_area_ha"]) == summary["changed_area_ha"]
            assert summary["changed_area_ha"] > 0
        else:
            areas = dict(kv.split("=") for kv in report[job_id]["class_areas_ha"].split(";"))
            want = {c["class_name"]: c["area_ha"] for c in summary["classes"]}
            assert areas.keys() == want.keys()
            for name, value in want.items():
                assert float(areas[name]) == pytest.approx(value, rel=1e-5)
    c2 = json.loads((reference / "c2" / "summary.json").read_text())
    assert c2["threshold"] == 0.4  # a per-job option column reached the engine


def test_corrupt_input_fails_only_its_job_with_two_workers(scenes, reference, tmp_path):
    folder, rows = scenes
    good = (folder / "c1_2020.tif").read_bytes()
    truncated = tmp_path / "truncated_2020.tif"
    truncated.write_bytes(good[: len(good) // 2])  # a download cut off halfway
    broken = dict(rows[0], job_id="broken", image_b=str(truncated))
    missing = dict(rows[-1], job_id="missing", image="no_such_scene.tif")
    manifest = write_manifest(folder / "with_broken.csv", [*rows[:3], broken, missing, *rows[3:]])
    out = tmp_path / "out"
    result = run_cli("batch", manifest, "-o", out, "--workers", 2, "-q")
    assert result.exit_code == 1, result.output
    report = read_report(out)
    assert list(report) == ["c1", "c2", "c3", "broken", "missing", "c4", "l1", "l2"]
    assert report["broken"]["status"] == "failed"
    assert str(truncated) in report["broken"]["error"]
    assert report["missing"]["status"] == "failed"
    assert str(folder / "no_such_scene.tif") in report["missing"]["error"]
    assert "job broken failed" in result.output and str(truncated) in result.output
    assert {report[j]["status"] for j in ALL_JOBS} == {"done"}
    assert not (out / "broken").exists() and not (out / "missing").exists()
    assert_same_batch(out, reference, ALL_JOBS)


def test_a_folder_batch_did_not_make_is_never_deleted(scenes, tmp_path):
    """A user's folder (or file) that bears a job's id in OUTDIR fails that job, untouched and
    named; the job folder of an earlier batch (stamped) and an empty one are reused; a failed
    job's report row names no folder that does not exist."""
    folder, rows = scenes
    out = tmp_path / "out"
    notes = out / "c1" / "sub" / "notes.txt"  # e.g. -o ~/project with a job_id "docs"
    notes.parent.mkdir(parents=True)
    notes.write_text("mine")
    (out / "c2").write_text("a file named like job c2")
    (out / "c3").mkdir()  # empty: what an old version's failed job could leave
    manifest = write_manifest(folder / "mixed.csv", rows[:4])
    dry = run_cli("batch", manifest, "-o", out, "--dry-run")  # says so before any run
    failing = [ln.split()[1] for ln in dry.output.splitlines() if ln.startswith("fails")]
    assert dry.exit_code == 1 and failing == ["c1", "c2"], dry.output
    assert "exists and was not made by swimdiff-geo batch" in dry.output
    result = run_cli("batch", manifest, "-o", out, "-q")
    assert result.exit_code == 1, result.output
    report = read_report(out)
    for job_id in ("c1", "c2"):
        assert report[job_id]["status"] == "failed"
        assert report[job_id]["error"].startswith(
            f"{out / job_id}: exists and was not made by swimdiff-geo batch"
        )
    assert notes.read_text() == "mine" and (out / "c2").read_text() == "a file named like job c2"
    assert report["c3"]["status"] == report["c4"]["status"] == "done"
    assert (out / "c3" / OWNER_NAME).read_text() == "c3\n"
    # the user moves their folder and file away: the jobs run, and a rerun replaces them
    shutil.rmtree(out / "c1")
    (out / "c2").unlink()
    assert run_cli("batch", manifest, "-o", out, "-q").exit_code == 0
    (out / "c1" / MARKER_NAME).unlink()  # not done any more: its (stamped) folder is redone
    assert run_cli("batch", manifest, "-o", out, "-q").exit_code == 0
    assert read_report(out)["c1"]["status"] == "done"
    missing = dict(rows[0], job_id="gone", image="no_such_scene.tif")
    run_cli("batch", write_manifest(folder / "gone.csv", [missing]), "-o", out, "-q")
    assert read_report(out)["gone"]["output_dir"] == "" and not (out / "gone").exists()


def test_kill_9_mid_batch_then_rerun_finishes_each_job_once(scenes, reference, tmp_path):
    folder, rows = scenes
    # every job twice (x_c1 is c1 again): a long enough batch that the kill lands mid-way
    copies = [dict(r, job_id=f"x_{r['job_id']}") for r in rows]
    manifest = write_manifest(folder / "jobs_twice.csv", rows + copies)
    jobs = ALL_JOBS + [f"x_{j}" for j in ALL_JOBS]
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "swimdiff_geo.cli.main", "batch", str(manifest), "-o", str(out),
         "-q", "--threads", "1"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    # Kill once a job is done and another is half-written (its outputs in the engine's
    # temporary folder): the worst moment for a resume.
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if markers(out) and list(out.glob("*/.swimdiff-tmp-*")):
                break
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    finished_before = markers(out)
    half_written = {p.parent.name for p in out.glob("*/.swimdiff-tmp-*")}
    assert 1 <= len(finished_before) < len(jobs), "the kill must land mid-batch"
    assert half_written and not half_written & set(finished_before)

    result = run_cli("batch", manifest, "-o", out, "-q")
    assert result.exit_code == 0, result.output
    report = read_report(out)
    after = markers(out)
    assert set(after) == set(jobs)
    for job_id in jobs:
        if job_id in finished_before:  # not recomputed: same marker, reported as skipped
            assert report[job_id]["status"] == "skipped_done"
            assert after[job_id] == finished_before[job_id]
        else:
            assert report[job_id]["status"] == "done"
    assert not list(out.glob("*/.swimdiff-tmp-*")), "a killed job's temporary files remain"
    assert not list(out.glob(".*.tmp")) and not list(out.glob("*/.*.tmp"))
    assert_same_batch(out, reference, ALL_JOBS)
    for job_id in ALL_JOBS:
        assert_same_outputs(out / f"x_{job_id}", reference / job_id)

    again = run_cli("batch", manifest, "-o", out, "-q")
    assert again.exit_code == 0
    assert {r["status"] for r in read_report(out).values()} == {"skipped_done"}
    assert markers(out) == after


def _children(pid: int) -> set[int]:
    """Live (not zombie) processes whose parent is ``pid`` (Linux /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_of_a_pool_batch_leaves_no_worker_writing(scenes, reference, tmp_path):
    """Pool workers outlive a killed parent only briefly: none may keep writing into folders
    that the rerun redoes. The rerun then completes every job with the reference outputs."""
    folder, rows = scenes
    copies = [dict(r, job_id=f"x_{r['job_id']}") for r in rows]
    manifest = write_manifest(folder / "jobs_twice.csv", rows + copies)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "swimdiff_geo.cli.main", "batch", str(manifest), "-o", str(out),
         "-q", "--workers", "2"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    workers: set[int] = set()
    try:
        while time.monotonic() < deadline and proc.poll() is None and not markers(out):
            workers |= _children(proc.pid)
            time.sleep(0.002)
        workers |= _children(proc.pid)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert len(workers) >= 2 and len(markers(out)) < 2 * len(ALL_JOBS)
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in workers), "orphaned pool workers still running"
    result = run_cli("batch", manifest, "-o", out, "-q", "--workers", 2)
    assert result.exit_code == 0, result.output
    for job_id in ALL_JOBS:
        assert_same_outputs(out / job_id, reference / job_id)
        assert_same_outputs(out / f"x_{job_id}", reference / job_id)


def test_ctrl_c_stops_a_pool_batch_without_running_the_queue(
    landsat_pair, landsat_change_model, tmp_path
):
    """Twelve whole-scene jobs (~0.3 s each, long next to the signal's delivery) on 2 workers:
    after Ctrl-C the running jobs stop, the 3 the pool has queued do not start, and no folder
    without a done-marker remains."""
    a, b = landsat_pair
    rows = [
        {"job_id": f"p{i:02d}", "task": "change", "image": a, "image_b": b,
         "model": landsat_change_model, "tile_size": 32}
        for i in range(12)
    ]  # fmt: skip
    manifest = write_manifest(tmp_path / "jobs.csv", rows)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "swimdiff_geo.cli.main", "batch", str(manifest), "-o", str(out),
         "-q", "--workers", "2"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        # A shell without job control starts background commands (`make test &`, CI runners)
        # with SIGINT ignored, and Python then never raises KeyboardInterrupt: give the batch
        # the disposition of a terminal's foreground process.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None and not markers(out):
        time.sleep(0.002)
    assert proc.poll() is None, "the batch finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    done_at_interrupt = len(markers(out))
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "run the same command to resume" in stderr
    # without the stop, the two running jobs and the three queued ones would all finish
    assert len(markers(out)) <= done_at_interrupt + 2, "queued jobs ran after Ctrl-C"
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(markers(out))
    report = read_report(out)  # jobs that finished while the pool stopped are reported too
    assert {j for j, r in report.items() if r["status"] == "done"} == set(markers(out))
    assert {r["status"] for r in report.values()} == {"done", "pending"}


def test_only_the_job_whose_option_input_or_outputs_changed_reruns(scenes, tmp_path, monkeypatch):
    folder, rows = scenes
    subset = [dict(r) for r in rows if r["job_id"] in ("c1", "c2", "l2")]
    for row in subset:  # own copies of the inputs: this test touches one
        for column in ("image", "image_b"):
            if row[column]:
                shutil.copy2(folder / str(row[column]), tmp_path / str(row[column]))
    manifest = write_manifest(tmp_path / "jobs.csv", subset)
    out = tmp_path / "out"

    def rerun() -> dict[str, str]:
        before = markers(out)
        result = run_cli("batch", manifest, "-o", out, "-q")
        assert result.exit_code == 0, result.output
        statuses = {j: r["status"] for j, r in read_report(out).items()}
        after = markers(out)
        rerun_ids = {j for j in after if after[j] != before.get(j)}
        assert rerun_ids == {j for j, s in statuses.items() if s == "done"}
        return statuses

    assert set(rerun().values()) == {"done"}
    assert set(rerun().values()) == {"skipped_done"}

    subset[1]["threshold"] = 0.7  # c2: a changed option
    write_manifest(manifest, subset)
    assert rerun() == {"c1": "skipped_done", "c2": "done", "l2": "skipped_done"}
    assert json.loads((out / "c2" / "summary.json").read_text())["threshold"] == 0.7

    image = tmp_path / str(subset[2]["image"])  # l2: a touched input (same bytes, newer mtime)
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    assert rerun() == {"c1": "skipped_done", "c2": "skipped_done", "l2": "done"}

    (out / "c1" / "change_mask.tif").unlink()  # c1: an output deleted behind the marker's back
    assert rerun() == {"c1": "done", "c2": "skipped_done", "l2": "skipped_done"}
    assert (out / "c1" / "change_mask.tif").is_file()

    monkeypatch.setattr(swimdiff_geo.batch, "__version__", "99.0.0")  # an upgraded swimdiff-geo
    assert set(rerun().values()) == {"done"}


def test_inputs_inside_zip_archives_resolve_and_rerun_when_the_archive_changes(scenes, tmp_path):
    """GDAL's /vsizip/ paths in a manifest: a relative archive is found beside the manifest, an
    absolute one keeps its leading slash, and replacing the archive redoes the job."""
    folder, rows = scenes
    archive = tmp_path / "pair.zip"

    def zip_crops(job_id: str) -> None:  # the crops of job_id under c1's names
        with zipfile.ZipFile(archive, "w") as zf:
            zf.write(folder / f"{job_id}_1990.tif", "c1_1990.tif")
            zf.write(folder / f"{job_id}_2020.tif", "c1_2020.tif")

    zip_crops("c1")
    relative = dict(rows[0], image="/vsizip/pair.zip/c1_1990.tif")
    relative["image_b"] = f"/vsizip/{archive}/c1_2020.tif"  # absolute: /vsizip//tmp/...
    manifest = write_manifest(tmp_path / "jobs.csv", [relative])
    out = tmp_path / "out"
    assert run_cli("batch", manifest, "-o", out, "-q").exit_code == 0
    summary = json.loads((out / "c1" / "summary.json").read_text())
    assert summary["inputs"]["image_a"] == f"/vsizip/{archive}/c1_1990.tif"
    first = read_report(out)["c1"]
    assert first["status"] == "done"
    assert run_cli("batch", manifest, "-o", out, "-q").exit_code == 0
    assert read_report(out)["c1"]["status"] == "skipped_done"
    time.sleep(0.01)  # a later mtime, whatever the file system's resolution
    zip_crops("c2")
    assert run_cli("batch", manifest, "-o", out, "-q").exit_code == 0
    second = read_report(out)["c1"]
    assert second["status"] == "done"
    assert second["changed_area_ha"] != first["changed_area_ha"]


def test_dask_local_cluster_gives_identical_outputs(scenes, reference, tmp_path):
    distributed = pytest.importorskip("distributed")
    folder, _ = scenes
    out = tmp_path / "out"
    with distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
    ) as cluster:
        result = run_cli("batch", folder / "jobs.csv", "-o", out, "--scheduler",
                         cluster.scheduler_address, "-q")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert {r["status"] for r in read_report(out).values()} == {"done"}
    assert_same_batch(out, reference, ALL_JOBS)


def test_dry_run_lists_what_would_run_and_writes_nothing(scenes, reference, tmp_path):
    folder, rows = scenes
    rows = [*rows, dict(rows[0], job_id="new_job")]
    rows = [  # this manifest lives elsewhere: absolute paths
        {**row, **{c: str(folder / str(row[c])) for c in ("image", "image_b") if row[c]}}
        for row in rows
    ]
    manifest = write_manifest(tmp_path / "jobs.csv", rows)
    before = {p: p.stat().st_mtime_ns for p in reference.rglob("*")}
    result = run_cli("batch", manifest, "-o", reference, "--dry-run")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert all(
        any(ln.startswith("skip (done)") and f" {j} " in ln for ln in lines) for j in ALL_JOBS
    )
    assert any(
        ln.startswith("run") and " new_job " in ln and f"({CROP_W} x {CROP_H} px)" in ln
        for ln in lines
    )
    assert "7 jobs: 1 to run, 0 would fail, 6 done" in result.output
    assert {p: p.stat().st_mtime_ns for p in reference.rglob("*")} == before


def test_dry_run_names_the_jobs_the_run_fails_and_why(scenes, tmp_path):
    """--dry-run checks each job's inputs against its model: the jobs it says would fail are
    the ones the run fails, with the same messages, and it writes nothing."""
    folder, rows = scenes
    by_id = {row["job_id"]: row for row in rows}
    renamed = tmp_path / "rgbn.tif"  # a Landsat crop whose band descriptions name other bands
    shutil.copy(folder / "l1_2020.tif", renamed)
    with rasterio.open(renamed, "r+") as ds:
        for i, name in enumerate(["RED", "GREEN", "BLUE", "NIR"], start=1):
            ds.set_band_description(i, name)
    jobs = [
        dict(by_id["c1"], job_id="fine"),
        dict(by_id["l1"], job_id="other_bands", image=str(renamed)),
        dict(by_id["c1"], job_id="apart", image_b="c4_2020.tif"),  # disjoint footprints
        dict(by_id["l2"], job_id="missing", image="no_such_scene.tif"),
    ]
    manifest = write_manifest(folder / "dry_run_jobs.csv", jobs)
    out = tmp_path / "out"
    dry = run_cli("batch", manifest, "-o", out, "--dry-run")
    assert dry.exit_code == 1, dry.output
    assert not out.exists()
    assert "4 jobs: 1 to run, 3 would fail, 0 done" in dry.output
    failing = [ln.split()[1] for ln in dry.output.splitlines() if ln.startswith("fails")]
    assert failing == ["other_bands", "apart", "missing"]
    assert "lacks band SWIR1" in dry.output and "does not overlap" in dry.output

    ran = run_cli("batch", manifest, "-o", out, "-q")
    assert ran.exit_code == 1
    report = read_report(out)
    assert [j for j, row in report.items() if row["status"] == "failed"] == failing
    for job_id in failing:  # the dry run gave the error the run records
        assert report[job_id]["error"] in dry.output


def test_a_second_batch_on_a_busy_output_folder_is_refused(tmp_path):
    fcntl = pytest.importorskip("fcntl")
    manifest = write_manifest(tmp_path / "jobs.csv", [GOOD])
    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".batch.lock", "a+") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running batch holds it
        result = run_cli("batch", manifest, "-o", out)
    assert result.exit_code == 1
    assert f"{out}: another swimdiff-geo batch is writing to this folder" in result.output
    assert sorted(p.name for p in out.iterdir()) == [".batch.lock"]


# --- manifest validation: exit 2, and the message names the manifest, the row and the column


@pytest.mark.parametrize(
    ("second_row", "column", "problem"),
    [
        ({"task": "segment"}, "task", "unknown task 'segment'"),
        ({"job_id": "a"}, "job_id", "duplicate job_id 'a'"),
        ({"job_id": "../escape"}, "job_id", "letters, digits"),
        ({"image_b": ""}, "image_b", "is required for change jobs"),
        ({"threshold": "1.5"}, "threshold", "expected a number in [0, 1], got '1.5'"),
        ({"tile_size": "big"}, "tile_size", "expected a whole number of pixels >= 8"),
        ({"bands": "0,1"}, "bands", "band numbers start at 1"),
        ({"task": "landcover", "threshold": "0.5"}, "threshold", "does not apply to landcover"),
    ],
)
def test_bad_cell_exits_2_naming_manifest_row_and_column(tmp_path, second_row, column, problem):
    row2 = {**GOOD, "job_id": "b", **second_row}
    if row2["task"] == "landcover":
        row2["image_b"] = ""
    manifest = write_manifest(tmp_path / "jobs.csv", [GOOD, row2])
    result = run_cli("batch", manifest, "-o", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert f"{manifest}, row 2 (line 3)" in result.output
    assert f"column '{column}'" in result.output and problem in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (["job_id", "image", "image_b"], "missing column 'task'"),
        (["job_id", "task", "image", "image_b", "treshold"], "did you mean 'threshold'?"),
        (["job_id", "task", "image", "image_b", "threads"], "set for the whole batch"),
    ],
)
def test_bad_header_exits_2(tmp_path, header, message):
    manifest = tmp_path / "jobs.csv"
    manifest.write_text(",".join(header) + "\n" + ",".join(["x"] * len(header)) + "\n")
    result = run_cli("batch", manifest, "-o", tmp_path / "out")
    assert result.exit_code == 2 and str(manifest) in result.output and message in result.output


def test_yaml_manifest_with_defaults_and_relative_paths(tmp_path):
    manifest = tmp_path / "sub" / "jobs.yaml"
    manifest.parent.mkdir()
    manifest.write_text(
        "defaults:\n  tile_size: 64\n  min_area: 2500\n  model: ../models/change.onnx\n"
        "jobs:\n"
        "  - {job_id: pucallpa, task: change, image: a.tif, image_b: /data/b.tif, bands: [4, 3]}\n"
        "  - {job_id: lc, task: landcover, image: c.tif, model: lc.onnx, polygons: true}\n"
    )
    change, landcover = load_manifest(str(manifest))
    assert change.images == (str(manifest.parent / "a.tif"), "/data/b.tif")
    assert change.options == {
        "tile_size": 64, "min_area": 2500.0, "model": str(tmp_path / "models" / "change.onnx"),
        "bands": [4, 3],
    }  # fmt: skip
    assert landcover.options["model"] == str(manifest.parent / "lc.onnx")
    assert landcover.layout == {"polygons": True}
    manifest.write_text("jobs:\n  - {job_id: x, task: change, image: a.tif, threshold: high}\n")
    result = run_cli("batch", manifest, "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert f"{manifest}, job 1 (job_id 'x'), column 'threshold'" in result.output
    assert "column 'image_b': is required" in result.output  # every problem, not just the first


def test_jobs_on_sentinel2_products_rerun_when_a_band_file_changes(s2_products, tmp_path):
    """Manifest rows may name a SAFE folder and a ZIP; the fingerprint covers the files inside
    the folder, whose own mtime does not change when a file in it is replaced."""
    product = tmp_path / s2_products["a"].name
    shutil.copytree(s2_products["a"], product)
    manifest = write_manifest(
        tmp_path / "jobs.csv",
        [{"job_id": "s2", "task": "change", "image": product, "image_b": s2_products["b_zip"]}],
    )
    out = tmp_path / "out"

    def run() -> str:
        result = run_cli("batch", manifest, "-o", out, "-q")
        assert result.exit_code == 0, result.output
        return read_report(out)["s2"]["status"]

    assert [run(), run()] == ["done", "skipped_done"]
    band = next(product.rglob("IMG_DATA/*_B11.jp2"))  # B11 replaced (same bytes, newer mtime)
    stat = band.stat()
    os.utime(band, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    assert run() == "done"
    with rasterio.open(out / "s2" / "change_probability.tif") as ds:
        assert ds.shape == (198, 198)


def test_extent_column_maps_the_area_as_the_command_does(
    landsat_pair, landsat_segmentation_model, tmp_path
):
    extent = "-74.6 -8.5 -74.4 -8.35"
    row = {"job_id": "lc", "task": "landcover", "image": landsat_pair[1],
           "model": landsat_segmentation_model, "extent": extent}  # fmt: skip
    manifest = write_manifest(tmp_path / "jobs.csv", [row])
    result = run_cli("batch", manifest, "-o", tmp_path / "out", "-q")
    assert result.exit_code == 0, result.output
    single = tmp_path / "single"
    result = run_cli("map-landcover", landsat_pair[1], "-o", single, "-m",
                     landsat_segmentation_model, "--extent", extent.replace(" ", ","))  # fmt: skip
    assert result.exit_code == 0, result.output
    with rasterio.open(tmp_path / "out" / "lc" / "landcover.tif") as got:
        with rasterio.open(single / "landcover.tif") as want:
            assert got.shape == want.shape and got.shape != (377, 697)
            np.testing.assert_array_equal(got.read(), want.read())

    write_manifest(manifest, [row | {"extent": "-74.4 -8.5 -74.6 -8.35"}])
    result = run_cli("batch", manifest, "-o", tmp_path / "out2", "-q")
    assert result.exit_code != 0
    assert "extent" in result.output and "left < right" in result.output
