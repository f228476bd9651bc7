"""Many change / land-cover jobs from one manifest: validation, done-markers, report, execution.

A manifest (CSV or YAML) lists one job per row. Each job writes into ``OUTDIR/<job_id>/`` exactly
what the single-job command writes, through the same job functions the CLI calls
(:func:`~swimdiff_geo.inference.change.detect_change`,
:func:`~swimdiff_geo.inference.landcover.map_landcover`).

Resumability rests on one rule: a job is done if and only if ``OUTDIR/<job_id>/.done.json`` is
valid, i.e. it parses, its fingerprint (input and model sizes and mtimes, task, options) equals the
job's current fingerprint, and every output it lists exists. The marker is written atomically
(temporary file, fsync, ``os.replace``) only after the engine has renamed every output into
place, so a ``kill -9`` at any moment leaves either a valid marker over complete outputs or a
folder without one, which the next run wipes and recomputes.

Jobs run in this process (``workers=1``), in a pool of spawned processes (``workers>1``) or as one
task each on a Dask distributed cluster (``scheduler=ADDRESS``; the ``distributed`` extra).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as _dt
import functools
import inspect
import io
import json
import math
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .inference.errors import OutputError, SwimdiffError
from .inference.io import VSI_ARCHIVE, archive_of, is_gdal_name
from .inference.outputs import TEMP_PREFIX

MARKER_NAME = ".done.json"
# Written into a job's folder before its first output: the folder is batch's to replace. A folder
# without it (or a marker) is the user's, and is never deleted.
OWNER_NAME = ".swimdiff-batch-job"
REPORT_NAME = "batch_report.csv"
LOCK_NAME = ".batch.lock"
MARKER_FORMAT = 1

STATUS_DONE = "done"
STATUS_SKIPPED = "skipped_done"
STATUS_FAILED = "failed"
STATUS_PENDING = "pending"  # only in the report of a run that was interrupted

REPORT_COLUMNS = [
    "job_id",
    "task",
    "status",
    "runtime_s",
    "changed_area_ha",
    "changed_percent",
    "class_areas_ha",
    "warnings",
    "error",
    "output_dir",
    "finished_at",
]

# Option fields set for the whole batch (or by it), never per job.
BATCH_WIDE_FIELDS = {
    "threads": "is set for the whole batch with --threads",
    "overwrite": "is implied: a job without a valid done-marker is always redone with overwrite",
    "read_ahead": "is an engine internal",
}
BASE_COLUMNS = ("job_id", "task", "image", "image_b")
JOB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
DEVICES = ("auto", "cpu", "cuda")


class ManifestError(SwimdiffError):
    """The manifest is unreadable or invalid; the message lists every problem found."""


class BatchError(SwimdiffError):
    """The batch as a whole cannot run (output folder locked, scheduler unreachable, ...)."""


# --------------------------------------------------------------------------------------------
# Tasks


@dataclass(frozen=True)
class TaskKind:
    """How one ``task`` value of the manifest maps onto an engine job function."""

    name: str  # "change" | "landcover"
    model_type: str  # the contract's model_type of its default model
    image_columns: tuple[str, ...]  # manifest columns holding the input rasters, in call order
    options_cls: type
    outputs_cls: type
    run: Callable[..., dict[str, Any]]

    def option_fields(self) -> dict[str, dataclasses.Field]:
        return {
            f.name: f
            for f in dataclasses.fields(self.options_cls)
            if f.name not in BATCH_WIDE_FIELDS
        }

    def layout_flags(self) -> dict[str, bool]:
        """Boolean keyword arguments of ``outputs_cls.in_dir`` (e.g. ``polygons``): columns too."""
        params = inspect.signature(self.outputs_cls.in_dir).parameters
        return {
            name: p.default
            for name, p in params.items()
            if name not in ("cls", "out_dir") and isinstance(p.default, bool)
        }


@functools.cache
def task_kinds() -> dict[str, TaskKind]:
    """The manifest's ``task`` values and the engine job each runs."""
    from .inference.change import ChangeOptions, ChangeOutputs, detect_change
    from .inference.landcover import LandcoverOptions, LandcoverOutputs, map_landcover

    return {
        "change": TaskKind(
            "change",
            "change_detection",
            ("image", "image_b"),
            ChangeOptions,
            ChangeOutputs,
            detect_change,
        ),
        "landcover": TaskKind(
            "landcover",
            "segmentation",
            ("image",),
            LandcoverOptions,
            LandcoverOutputs,
            map_landcover,
        ),
    }


# --------------------------------------------------------------------------------------------
# The manifest


@dataclass(frozen=True)
class Job:
    """One validated manifest row. Paths are absolute; ``options`` holds parsed option values."""

    job_id: str
    task: str
    images: tuple[str, ...]  # absolute paths, in the job function's argument order
    options: dict[str, Any] = field(default_factory=dict)  # option field -> value (set ones)
    layout: dict[str, bool] = field(default_factory=dict)  # in_dir flags, e.g. polygons
    source: str = ""  # "jobs.csv row 3" for messages

    @property
    def kind(self) -> TaskKind:
        return task_kinds()[self.task]


class _Problems:
    """Collects manifest problems so that one run reports all of them."""

    def __init__(self, manifest: str) -> None:
        self.manifest = manifest
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(
            f"{self.manifest}, {where}: {message}" if where else f"{self.manifest}: {message}"
        )

    def raise_if_any(self) -> None:
        if self.items:
            shown = self.items[:20]
            more = len(self.items) - len(shown)
            text = "invalid manifest:\n  " + "\n  ".join(shown)
            if more:
                text += f"\n  ... and {more} more problems"
            raise ManifestError(text)


def _normalise_column(name: Any) -> str:
    return str(name).strip().lower().replace("-", "_").replace(" ", "_")


def read_manifest_rows(path: str) -> tuple[list[tuple[str, dict[str, Any]]], list[str] | None]:
    """Raw rows of a CSV or YAML manifest as ``(where, {column: value})``.

    Also returns the CSV header (None for YAML, whose rows each carry their own keys). YAML may be
    a list of mappings, or a mapping with ``jobs:`` (that list) and optional ``defaults:`` (values
    every job gets unless it sets its own).
    """
    if not os.path.isfile(path):
        raise ManifestError(f"{path}: manifest not found")
    suffix = Path(path).suffix.lower()
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: cannot read the manifest: {exc}") from exc
    if suffix in (".yaml", ".yml"):
        return _yaml_rows(path, text), None
    if suffix in (".csv", ".txt", ".tsv"):
        return _csv_rows(path, text, "\t" if suffix == ".tsv" else ",")
    raise ManifestError(f"{path}: unknown manifest type {suffix!r}; use .csv or .yaml")


def _csv_rows(path: str, text: str, delimiter: str):
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    rows: list[tuple[str, dict[str, Any]]] = []
    problems = _Problems(path)
    for cells in reader:
        line = reader.line_num
        if not cells or all(not c.strip() for c in cells) or cells[0].lstrip().startswith("#"):
            continue
        if header is None:
            header = [_normalise_column(c) for c in cells]
            dupes = sorted({c for c in header if header.count(c) > 1})
            if dupes:
                problems.add("header", f"column {dupes[0]!r} appears more than once")
            if any(not c for c in header):
                problems.add("header", "a column has no name")
            continue
        if len(cells) > len(header):
            problems.add(
                f"row {len(rows) + 1} (line {line})",
                f"{len(cells)} cells but the header names {len(header)} columns",
            )
            continue
        cells = cells + [""] * (len(header) - len(cells))
        values = {h: c.strip() for h, c in zip(header, cells, strict=True) if c.strip() != ""}
        rows.append((f"row {len(rows) + 1} (line {line})", values))
    problems.raise_if_any()
    if header is None:
        raise ManifestError(f"{path}: the manifest is empty (no header row)")
    return rows, header


def _yaml_rows(path: str, text: str) -> list[tuple[str, dict[str, Any]]]:
    import yaml

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: not valid YAML: {exc}") from exc
    defaults: dict[str, Any] = {}
    if isinstance(doc, dict):
        unknown = sorted(set(doc) - {"jobs", "defaults"})
        if unknown:
            raise ManifestError(
                f"{path}: unknown top-level key {unknown[0]!r}; expected 'jobs' and 'defaults'"
            )
        defaults = doc.get("defaults") or {}
        if not isinstance(defaults, dict):
            raise ManifestError(f"{path}: 'defaults' must be a mapping of column: value")
        doc = doc.get("jobs")
    if not isinstance(doc, list):
        raise ManifestError(
            f"{path}: expected a list of jobs (or a mapping with a 'jobs' list), "
            f"got {type(doc).__name__}"
        )
    rows = []
    problems = _Problems(path)
    for i, item in enumerate(doc, start=1):
        if not isinstance(item, dict):
            problems.add(f"job {i}", f"expected a mapping of column: value, got {item!r}")
            continue
        merged = {_normalise_column(k): v for k, v in defaults.items()}
        merged.update({_normalise_column(k): v for k, v in item.items()})
        rows.append((f"job {i}", {k: v for k, v in merged.items() if v is not None and v != ""}))
    problems.raise_if_any()
    return rows


def load_manifest(path: str) -> list[Job]:
    """Read and validate a manifest; raises :class:`ManifestError` listing every problem.

    Checks: required columns, known task, job ids unique (case-insensitively: job folders must
    not collide on case-insensitive file systems) and usable as folder names, option columns known
    to the task, values of the right type and range. Input files are *not* checked here: a
    missing or corrupt input fails its own job and the others go on.
    """
    rows, header = read_manifest_rows(path)
    kinds = task_kinds()
    base = os.path.dirname(os.path.abspath(path))
    problems = _Problems(path)
    known_columns = set(BASE_COLUMNS)
    for kind in kinds.values():
        known_columns |= set(kind.option_fields()) | set(kind.layout_flags())
    if header is not None:
        for column in ("job_id", "task", "image"):
            if column not in header:
                problems.add("header", f"missing column {column!r}")
        for column in header:
            if column in BATCH_WIDE_FIELDS:
                problems.add(
                    f"column {column!r}", f"cannot be set per job: it {BATCH_WIDE_FIELDS[column]}"
                )
            elif column not in known_columns:
                problems.add(f"column {column!r}", _unknown_column_message(column, known_columns))
        problems.raise_if_any()
    if not rows:
        raise ManifestError(f"{path}: the manifest lists no jobs")
    jobs: list[Job] = []
    seen: dict[str, str] = {}
    for where, values in rows:
        job = _parse_row(where, values, kinds, known_columns, base, problems, header is None)
        if job is None:
            continue
        folded = job.job_id.casefold()
        if folded in seen:
            problems.add(
                f"{where}, column 'job_id'",
                f"duplicate job_id {job.job_id!r} (first used in {seen[folded]})",
            )
            continue
        seen[folded] = where
        jobs.append(job)
    problems.raise_if_any()
    return jobs


def _unknown_column_message(column: str, known: set[str]) -> str:
    import difflib

    close = difflib.get_close_matches(column, sorted(known), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown column {column!r}{hint} (known: {', '.join(sorted(known))})"


def _parse_row(
    where: str,
    values: dict[str, Any],
    kinds: dict[str, TaskKind],
    known_columns: set[str],
    base: str,
    problems: _Problems,
    check_columns: bool,
) -> Job | None:
    n_before = len(problems.items)
    job_id = values.get("job_id")
    label = where if job_id is None else f"{where} (job_id {str(job_id)!r})"
    if job_id is None:
        problems.add(where, "column 'job_id' is empty")
    else:
        job_id = str(job_id).strip()
        if job_id.casefold() == REPORT_NAME:
            problems.add(f"{label}, column 'job_id'", f"{REPORT_NAME} is the report's file name")
        elif not JOB_ID_PATTERN.match(job_id):
            problems.add(
                f"{label}, column 'job_id'",
                "must start with a letter or digit and hold only letters, digits, '.', '_' and "
                "'-' (it names the job's output folder)",
            )
    task = values.get("task")
    kind = None
    if task is None:
        problems.add(f"{label}, column 'task'", "is empty; expected one of: " + ", ".join(kinds))
    else:
        task = str(task).strip().lower()
        kind = kinds.get(task)
        if kind is None:
            problems.add(
                f"{label}, column 'task'",
                f"unknown task {task!r}; expected one of: {', '.join(kinds)}",
            )
    if kind is None:
        return None
    images = []
    for column in kind.image_columns:
        value = values.get(column)
        if value is None:
            problems.add(f"{label}, column {column!r}", f"is required for {task} jobs")
            continue
        if not isinstance(value, str):
            problems.add(f"{label}, column {column!r}", f"expected a file path, got {value!r}")
            continue
        images.append(_resolve(value, base))
    for column in BASE_COLUMNS:
        if column in values and column not in ("job_id", "task") + kind.image_columns:
            problems.add(f"{label}, column {column!r}", f"does not apply to {task} jobs")
    option_fields = kind.option_fields()
    flags = kind.layout_flags()
    options: dict[str, Any] = {}
    layout: dict[str, bool] = {}
    for column, raw in values.items():
        if column in BASE_COLUMNS:
            continue
        cell = f"{label}, column {column!r}"
        if column in BATCH_WIDE_FIELDS:
            problems.add(cell, f"cannot be set per job: it {BATCH_WIDE_FIELDS[column]}")
        elif column in option_fields:
            try:
                options[column] = parse_option(column, raw, option_fields[column], base)
            except ValueError as exc:
                problems.add(cell, str(exc))
        elif column in flags:
            try:
                layout[column] = _parse_bool(raw)
            except ValueError as exc:
                problems.add(cell, str(exc))
        elif column in known_columns:
            problems.add(cell, f"does not apply to {task} jobs")
        elif check_columns:
            problems.add(cell, _unknown_column_message(column, known_columns))
    if len(problems.items) > n_before:
        return None
    return Job(str(job_id), task, tuple(images), options, layout, where)


def _resolve(path: str, base: str) -> str:
    """A manifest path made absolute against the manifest's folder ``base``; in GDAL's
    ``/vsizip/archive.zip/member.tif`` the archive's path is (other GDAL dataset names, such as
    ``/vsicurl/...`` or ``GPKG:/x.gpkg:table``, are kept as written)."""
    path = os.path.expanduser(path.strip())
    archive = VSI_ARCHIVE.match(path)
    if archive:
        prefix, archive_path, member = archive.groups()
        return prefix + _resolve(archive_path, base) + (member or "")
    if is_gdal_name(path):
        return path
    return os.path.normpath(path if os.path.isabs(path) else os.path.join(base, path))


def _parse_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "y", "on"):
        return True
    if text in ("0", "false", "no", "n", "off"):
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def _number(raw: Any, kind: type, what: str) -> float | int:
    if isinstance(raw, bool):
        raise ValueError(f"expected {what}, got {raw!r}")
    try:
        if kind is int:
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError
            value: float | int = int(raw) if not isinstance(raw, str) else int(raw.strip())
        else:
            value = float(raw)
    except (TypeError, ValueError):
        raise ValueError(f"expected {what}, got {raw!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"expected {what}, got {raw!r}")
    return value


# Per-option parsing and the ranges the single-job commands enforce (cli/options.py).
def parse_option(name: str, raw: Any, spec: dataclasses.Field | None, base: str) -> Any:
    """Parse one option cell (string from CSV, or typed from YAML); ``ValueError`` if bad."""
    if name == "model":
        if not isinstance(raw, str):
            raise ValueError(f"expected a file path, got {raw!r}")
        return _resolve(raw, base)
    if name == "bands":
        from .inference.inputs import parse_band_numbers

        return parse_band_numbers(raw)
    if name == "extent":
        from .inference.inputs import parse_extent

        return parse_extent(raw)
    if name == "device":
        value = str(raw).strip().lower()
        if value not in DEVICES:
            raise ValueError(f"expected one of {', '.join(DEVICES)}, got {raw!r}")
        return value
    ranges: dict[str, tuple[type, float | None, float | None, bool, str]] = {
        # name: (type, min, max, max_open, description)
        "threshold": (float, 0.0, 1.0, False, "a number in [0, 1]"),
        "tile_size": (int, 8, None, False, "a whole number of pixels >= 8"),
        "overlap": (float, 0.0, 100.0, True, "a percentage in [0, 100)"),
        "batch_size": (int, 1, None, False, "a whole number >= 1"),
        "min_area": (float, 0.0, None, False, "an area in m^2 >= 0"),
        "stride": (int, 1, None, False, "a whole number of pixels >= 1"),
    }
    if name in ranges:
        kind, low, high, high_open, what = ranges[name]
        value = _number(raw, kind, what)
        if (low is not None and value < low) or (
            high is not None and (value >= high if high_open else value > high)
        ):
            raise ValueError(f"expected {what}, got {raw!r}")
        return value
    # Options added to the engine later: parse by the type of their default.
    default = spec.default if spec is not None else None
    if isinstance(default, bool):
        return _parse_bool(raw)
    if isinstance(default, int):
        return _number(raw, int, "a whole number")
    if isinstance(default, float):
        return _number(raw, float, "a number")
    return raw if not isinstance(raw, str) else raw.strip()


# --------------------------------------------------------------------------------------------
# Fingerprints and done-markers


def file_stamp(path: str | None) -> dict[str, Any] | None:
    """``{"path", "size", "mtime_ns"}`` of a file; ``exists: False`` if it is missing.

    A folder (a Sentinel-2 SAFE product, a folder of band files) is stamped by the files in it:
    their count, total size and latest modification, so replacing a band file redoes the job.
    A file inside an archive (``/vsizip/...``) is stamped by its archive; another GDAL dataset
    name (``/vsicurl/...``, ``GPKG:x.gpkg:table``) is stamped by its name alone.
    """
    if path is None:
        return None
    archive = archive_of(path)
    if archive:
        return {"path": path, "archive": file_stamp(archive)}
    if is_gdal_name(path):
        return {"path": path, "virtual": True}
    try:
        st = os.stat(path)
    except OSError:
        return {"path": os.path.abspath(path), "exists": False}
    if os.path.isdir(path):
        files = [os.stat(os.path.join(d, f)) for d, _, names in os.walk(path) for f in names]
        return {
            "path": os.path.abspath(path),
            "files": len(files),
            "size": sum(f.st_size for f in files),
            "mtime_ns": max((f.st_mtime_ns for f in files), default=st.st_mtime_ns),
        }
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def model_path_of(job: Job) -> str | None:
    """The model file the job runs: its ``model`` column, else the bundled default."""
    from .inference.defaults import model_path

    try:
        return model_path(job.options.get("model"), job.kind.model_type)
    except SwimdiffError:  # no bundled default for this kind: the job itself will say so
        return None


def fingerprint(job: Job) -> dict[str, Any]:
    """What the job's outputs depend on; a change to any of it makes the job run again.

    Inputs and model by size and modification time (ns), the options that shape outputs
    (everything but ``threads``, which only sets speed), the output layout, and the version of
    swimdiff-geo (a new version may make other outputs from the same inputs).
    """
    kind = job.kind
    return _json_round_trip(
        {
            "task": job.task,
            "software": __version__,
            "inputs": {
                column: file_stamp(path)
                for column, path in zip(kind.image_columns, job.images, strict=True)
            },
            "model": file_stamp(model_path_of(job)),
            "options": {k: job.options[k] for k in sorted(job.options)},
            "layout": {k: job.layout.get(k, d) for k, d in sorted(kind.layout_flags().items())},
        }
    )


def _json_round_trip(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True))


def job_dir(out_root: str, job: Job) -> str:
    return os.path.join(out_root, job.job_id)


def output_paths(job: Job, out_root: str) -> list[str]:
    outputs = job.kind.outputs_cls.in_dir(job_dir(out_root, job), **job.layout)
    return list(outputs.paths())


def read_marker(out_root: str, job: Job) -> dict[str, Any] | None:
    """The job's done-marker if it is valid for the job as it is now, else None."""
    folder = job_dir(out_root, job)
    try:
        with open(os.path.join(folder, MARKER_NAME), encoding="utf-8") as fh:
            marker = json.load(fh)
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("format") != MARKER_FORMAT:
        return None
    if marker.get("fingerprint") != fingerprint(job):
        return None
    names = marker.get("outputs")
    if not isinstance(names, list) or not names:
        return None
    # Existence only: viewers (QGIS opening a GeoPackage) may legitimately touch outputs.
    if not all(os.path.exists(os.path.join(folder, name)) for name in names):
        return None
    return marker


def _fsync_path(path: str) -> None:
    """Flush a file (or folder entry) to disk so that a power cut cannot undo it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def write_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file, fsync and ``os.replace``."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}-{uuid.uuid4().hex}.tmp")
    # os.open with 0o666 (not mkstemp's 0o600): the file gets the permissions the umask allows.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_path(folder)


def write_marker(out_root: str, job: Job, stamp: dict[str, Any], result: dict[str, Any]) -> None:
    folder = job_dir(out_root, job)
    outputs = output_paths(job, out_root)
    for path in outputs:  # the outputs reach the disk before the marker that vouches for them
        _fsync_path(path)
    _fsync_path(folder)
    marker = {
        "format": MARKER_FORMAT,
        "job_id": job.job_id,
        "software": f"swimdiff-geo {__version__}",
        "fingerprint": stamp,
        "outputs": [os.path.relpath(p, folder) for p in outputs],
        "result": result,
    }
    write_atomic(os.path.join(folder, MARKER_NAME), json.dumps(marker, indent=2) + "\n")


# --------------------------------------------------------------------------------------------
# Running one job


@dataclass
class JobResult:
    """The outcome of one job, as it goes into ``batch_report.csv``."""

    job_id: str
    task: str
    status: str
    runtime_s: float | None = None
    changed_area_ha: float | None = None
    changed_percent: float | None = None
    class_areas_ha: dict[str, float] | None = None
    warnings: list[str] = field(default_factory=list)
    error: str = ""
    output_dir: str = ""
    finished_at: str = ""

    @classmethod
    def from_marker(cls, job: Job, out_root: str, marker: dict[str, Any]) -> JobResult:
        result = marker.get("result", {})
        return cls(
            job.job_id,
            job.task,
            STATUS_SKIPPED,
            runtime_s=result.get("runtime_s"),
            changed_area_ha=result.get("changed_area_ha"),
            changed_percent=result.get("changed_percent"),
            class_areas_ha=result.get("class_areas_ha"),
            warnings=result.get("warnings", []),
            output_dir=job_dir(out_root, job),
            finished_at=result.get("finished_at", ""),
        )


def summary_numbers(task: str, summary: dict[str, Any]) -> dict[str, Any]:
    """The report's numbers from a job summary: changed area, or area per class (ha), and the
    engine's warnings (e.g. --min-area ignored, a B10 offset left in a stack)."""
    warnings = [str(w) for w in summary.get("warnings", [])]
    if task == "change":
        return {
            "changed_area_ha": summary.get("changed_area_ha"),
            "changed_percent": summary.get("changed_percent_of_valid"),
            "warnings": warnings,
        }
    return {"class_areas_ha": _class_areas_ha(summary), "warnings": warnings}


def _class_areas_ha(summary: dict[str, Any]) -> dict[str, float] | None:
    """Class name -> area (ha) from a land-cover summary's ``classes`` table; None when the
    image is not georeferenced (no areas)."""
    areas = {
        str(entry.get("class_name") or entry["class_id"]): float(entry["area_ha"])
        for entry in summary.get("classes", [])
        if entry.get("area_ha") is not None
    }
    return areas or None


def _prepare_folder(folder: str, job_id: str) -> None:
    """Remove a previous attempt: the marker first (so nothing vouches for what follows), then
    stale outputs and the engine's temporary folders left by a killed run; then make the folder
    anew, stamped as batch's. Raises OutputError, touching nothing, for a path batch did not
    make (a user's folder or file that happens to bear the job's id)."""
    refuse_foreign_folder(folder)
    marker = os.path.join(folder, MARKER_NAME)
    with contextlib.suppress(FileNotFoundError):
        os.remove(marker)
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)
    with open(os.path.join(folder, OWNER_NAME), "w", encoding="utf-8") as fh:
        fh.write(f"{job_id}\n")


def refuse_foreign_folder(folder: str) -> None:
    """OutputError when ``folder`` exists but batch did not make it (see :func:`_made_by_batch`):
    the job would have to delete it."""
    if os.path.lexists(folder) and not _made_by_batch(folder):
        raise OutputError(
            f"{folder}: exists and was not made by swimdiff-geo batch (it holds no {OWNER_NAME} "
            f"or {MARKER_NAME}); a job replaces only a folder it made: move this one away, or "
            "choose another output folder or job_id"
        )


def _made_by_batch(folder: str) -> bool:
    """Whether ``folder`` is a job folder batch made: stamped, marked done, or holding nothing
    but the engine's temporary folders (a killed run of a version before the stamp)."""
    if os.path.islink(folder) or not os.path.isdir(folder):
        return False
    names = os.listdir(folder)
    if OWNER_NAME in names or MARKER_NAME in names:
        return True
    return all(name.startswith(TEMP_PREFIX) for name in names)  # True when empty


def default_threads_on_this_worker() -> int:
    """Threads per job on a Dask worker: its cores shared among its task slots."""
    try:
        from distributed import get_worker

        slots = get_worker().state.nthreads
    except (ImportError, ValueError, AttributeError):
        slots = 1
    return max(1, available_cores() // max(1, slots))


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def job_call_arguments(job: Job, folder: str, threads: int) -> tuple[Any, Any]:
    """The options and outputs a job's engine function is called with (run and check alike):
    the manifest's option columns, ``threads``, overwrite (a job that is not done is redone),
    and the job's output files in ``folder``."""
    kind = job.kind
    options = kind.options_cls(**job.options, threads=threads, overwrite=True)
    return options, kind.outputs_cls.in_dir(folder, **job.layout)


def run_job(
    job: Job,
    out_root: str,
    threads: int | None = None,
    is_cancelled: Callable[[], bool] | None = None,
) -> JobResult:
    """Run one job into ``out_root/<job_id>/`` and mark it done; never raises for a job error.

    ``threads`` = onnxruntime intra-op threads (None: this machine's cores over its Dask task
    slots, 1 slot outside Dask). A failure is returned as a ``failed`` result with the message;
    the job's folder is then absent or holds no marker. ``is_cancelled`` is polled by the engine
    between window batches (a cancelled job removes its partial outputs and fails).
    """
    folder = job_dir(out_root, job)
    started = time.perf_counter()
    if threads is None:
        threads = default_threads_on_this_worker()
    try:
        stamp = fingerprint(job)  # before the run: an input edited meanwhile reruns next time
        _prepare_folder(folder, job.job_id)
        options, outputs = job_call_arguments(job, folder, threads)
        summary = job.kind.run(*job.images, outputs, options, is_cancelled=is_cancelled)
        runtime = round(time.perf_counter() - started, 3)
        finished = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")
        numbers = summary_numbers(job.task, summary)
        record = {"runtime_s": runtime, "finished_at": finished, **numbers}
        write_marker(out_root, job, stamp, record)
        return JobResult(
            job.job_id,
            job.task,
            STATUS_DONE,
            runtime_s=runtime,
            output_dir=folder,
            finished_at=finished,
            **numbers,
        )
    except Exception as exc:  # noqa: BLE001 - failure isolation: any job error is recorded
        with contextlib.suppress(OSError):
            if os.path.isdir(folder) and set(os.listdir(folder)) <= {OWNER_NAME}:
                shutil.rmtree(folder)  # a failed job's empty folder would only confuse
        return JobResult(
            job.job_id,
            job.task,
            STATUS_FAILED,
            runtime_s=round(time.perf_counter() - started, 3),
            error=error_message(exc),
            output_dir=folder if os.path.isdir(folder) else "",
        )


def check_job(job: Job, out_root: str) -> tuple[dict[str, Any] | None, str | None]:
    """Check one job's inputs against its model without running it (``batch --dry-run``).

    The engine's own job function runs with ``check_only``: the model loads, the inputs open,
    their bands are matched to the model's and a change pair is aligned, as the run would do;
    nothing is written. Returns ``(checked_summary, None)``, or ``(None, message)`` with the
    error the run would fail with.
    """
    try:
        refuse_foreign_folder(job_dir(out_root, job))  # as the run would, before writing
        options, outputs = job_call_arguments(job, job_dir(out_root, job), threads=1)
        return job.kind.run(*job.images, outputs, options, check_only=True), None
    except Exception as exc:  # noqa: BLE001 - as in run_job: any job error is the answer
        return None, error_message(exc)


def error_message(exc: BaseException) -> str:
    """One line for the report: engine errors as they are, others with their type."""
    if isinstance(exc, (SwimdiffError, ValueError)):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())


# --------------------------------------------------------------------------------------------
# The report


def format_report(jobs: Sequence[Job], results: dict[str, JobResult]) -> str:
    """``batch_report.csv``: one row per job in manifest order (``pending`` = not run yet)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, REPORT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for job in jobs:
        r = results.get(job.job_id) or JobResult(job.job_id, job.task, STATUS_PENDING)
        writer.writerow(
            {
                "job_id": r.job_id,
                "task": r.task,
                "status": r.status,
                "runtime_s": _fmt(r.runtime_s),
                "changed_area_ha": _fmt(r.changed_area_ha),
                "changed_percent": _fmt(r.changed_percent),
                "class_areas_ha": ";".join(
                    f"{name}={value!r}" for name, value in (r.class_areas_ha or {}).items()
                ),
                "warnings": " | ".join(" ".join(w.split()) for w in r.warnings),
                "error": r.error,
                "output_dir": r.output_dir,
                "finished_at": r.finished_at,
            }
        )
    return buffer.getvalue()


def _fmt(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def write_report(out_root: str, jobs: Sequence[Job], results: dict[str, JobResult]) -> str:
    path = os.path.join(out_root, REPORT_NAME)
    write_atomic(path, format_report(jobs, results))
    return path


# --------------------------------------------------------------------------------------------
# Running a batch


@contextlib.contextmanager
def output_lock(out_root: str):
    """An exclusive lock on ``out_root``: two batches writing one folder would race."""
    path = os.path.join(out_root, LOCK_NAME)
    fh = open(path, "a+")  # noqa: SIM115 - held for the whole batch
    try:
        try:
            import fcntl

            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - Windows: no lock
            pass
        except OSError:
            raise BatchError(
                f"{out_root}: another swimdiff-geo batch is writing to this folder"
            ) from None
        yield
    finally:
        fh.close()


@dataclass
class BatchPlan:
    """Which jobs are done already (their results) and which must run."""

    done: dict[str, JobResult]
    to_run: list[Job]


def plan(jobs: Iterable[Job], out_root: str) -> BatchPlan:
    """Split ``jobs`` by their done-markers in ``out_root`` (read only, no lock needed)."""
    done: dict[str, JobResult] = {}
    to_run: list[Job] = []
    for job in jobs:
        marker = read_marker(out_root, job)
        if marker is not None:
            done[job.job_id] = JobResult.from_marker(job, out_root, marker)
        else:
            to_run.append(job)
    return BatchPlan(done, to_run)


def run_batch(
    jobs: Sequence[Job],
    out_root: str,
    workers: int = 1,
    threads: int | None = None,
    scheduler: str | None = None,
    on_result: Callable[[JobResult], None] | None = None,
) -> dict[str, JobResult]:
    """Run every job not already done; returns job_id -> result for all jobs.

    ``batch_report.csv`` is rewritten atomically after every finished job (unfinished ones show
    as ``pending``) and at the end. ``on_result`` sees each result, skipped ones first.
    """
    out_root = os.path.abspath(out_root)
    # Connect first: an unreachable scheduler should not leave a report of pending jobs behind.
    client = connect_dask(scheduler) if scheduler else None
    try:
        return _run_batch(jobs, out_root, workers, threads, client, on_result)
    finally:
        if client is not None:
            client.close()


def _run_batch(
    jobs: Sequence[Job],
    out_root: str,
    workers: int,
    threads: int | None,
    client: Any,
    on_result: Callable[[JobResult], None] | None,
) -> dict[str, JobResult]:
    try:
        os.makedirs(out_root, exist_ok=True)
    except OSError as exc:
        raise BatchError(f"{out_root}: cannot create the output folder: {exc}") from exc
    with output_lock(out_root):
        for stale in Path(out_root).glob(f".{REPORT_NAME}.*.tmp"):  # a report write killed
            stale.unlink(missing_ok=True)
        batch_plan = plan(jobs, out_root)
        results = dict(batch_plan.done)
        for result in batch_plan.done.values():
            if on_result:
                on_result(result)
        write_report(out_root, jobs, results)

        def record(result: JobResult) -> None:
            results[result.job_id] = result
            write_report(out_root, jobs, results)
            if on_result:
                on_result(result)

        if batch_plan.to_run:
            if client is not None:
                _run_dask(batch_plan.to_run, out_root, client, threads, record)
            elif workers <= 1:
                local_threads = threads if threads is not None else available_cores()
                for job in batch_plan.to_run:
                    record(run_job(job, out_root, local_threads))
            else:
                workers = min(workers, len(batch_plan.to_run))  # no idle worker holds cores
                local_threads = threads or max(1, available_cores() // workers)
                _run_pool(batch_plan.to_run, out_root, workers, local_threads, record)
        write_report(out_root, jobs, results)
    return results


_POOL_CANCEL: Any = None  # in a pool worker: the batch's multiprocessing Event "stop now"


def _init_pool_worker(parent_pid: int, cancel: Any) -> None:
    global _POOL_CANCEL
    _POOL_CANCEL = cancel
    _watch_parent(parent_pid)


def _run_job_in_pool(job: Job, out_root: str, threads: int) -> JobResult | None:
    """The pool task: None without running when the batch was interrupted meanwhile (the pool
    hands out queued jobs that can no longer be cancelled from the parent)."""
    if _POOL_CANCEL is not None and _POOL_CANCEL.is_set():
        return None
    return run_job(job, out_root, threads, _POOL_CANCEL.is_set if _POOL_CANCEL else None)


def _watch_parent(parent_pid: int) -> None:
    """Exit when the batch process dies (e.g. ``kill -9``), so that no orphaned pool worker
    keeps writing into a folder that a rerun is about to redo."""

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="swimdiff-parent-watch", daemon=True).start()


def _run_pool(
    jobs: Sequence[Job],
    out_root: str,
    workers: int,
    threads: int,
    record: Callable[[JobResult], None],
) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    context = multiprocessing.get_context("spawn")
    cancel = context.Event()
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=context,
        initializer=_init_pool_worker,
        initargs=(os.getpid(), cancel),
    ) as pool:
        futures = {pool.submit(_run_job_in_pool, job, out_root, threads): job for job in jobs}
        recorded: set[str] = set()
        try:
            for future in as_completed(futures):
                job = futures[future]
                try:
                    result = future.result()
                except Exception as exc:  # noqa: BLE001 - a worker died (OOM kill, crash)
                    result = JobResult(
                        job.job_id,
                        job.task,
                        STATUS_FAILED,
                        error=f"worker process failed: {error_message(exc)}; "
                        "rerun the batch to retry",
                        output_dir=job_dir(out_root, job),
                    )
                record(result)
                recorded.add(job.job_id)
        except BaseException:
            # Ctrl-C: running jobs stop at their next window batch (removing partial outputs),
            # queued ones do not start. Without this, leaving the pool's context would first
            # run every queued job.
            cancel.set()
            pool.shutdown(wait=True, cancel_futures=True)
            for future, job in futures.items():  # jobs that finished meanwhile are reported
                if job.job_id in recorded or not future.done() or future.cancelled():
                    continue
                result = None if future.exception() else future.result()
                if result is not None and result.status == STATUS_DONE:
                    record(result)
            raise


def connect_dask(scheduler: str, timeout_s: float = 20.0) -> Any:
    """A ``distributed.Client`` for ``scheduler``, or :class:`BatchError` saying what is wrong."""
    try:
        from distributed import Client
    except ImportError:
        raise BatchError(
            "--scheduler needs Dask distributed: pip install 'swimdiff-geo[distributed]'"
        ) from None
    from distributed.comm.addressing import parse_address, parse_host_port

    try:  # a malformed address would otherwise surface only as a hang at interpreter exit
        scheme, location = parse_address(scheduler)
        if scheme in ("tcp", "tls"):
            parse_host_port(location)
    except ValueError as exc:
        raise BatchError(
            f"--scheduler {scheduler}: not a Dask scheduler address ({exc}); "
            "expected e.g. tcp://10.0.0.5:8786"
        ) from None
    try:
        return Client(scheduler, timeout=f"{timeout_s}s", set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise BatchError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from exc


def _run_dask(
    jobs: Sequence[Job],
    out_root: str,
    client: Any,
    threads: int | None,
    record: Callable[[JobResult], None],
) -> None:
    from distributed import as_completed

    threads_by_host = _threads_by_host(client) if threads is None else {}
    token = f"{os.getpid()}-{time.time_ns()}"
    futures = {}
    for job in jobs:
        future = client.submit(
            _run_job_on_dask_worker,
            job,
            out_root,
            threads,
            threads_by_host,
            key=f"swimdiff-batch-{job.job_id}-{token}",
            pure=False,
            retries=0,
        )
        futures[future] = job
    try:
        for future in as_completed(list(futures), loop=client.loop):
            job = futures[future]
            try:
                result = future.result()
            except Exception as exc:  # noqa: BLE001 - worker lost, unpicklable, ...
                result = JobResult(
                    job.job_id,
                    job.task,
                    STATUS_FAILED,
                    error=f"Dask task failed: {error_message(exc)}",
                    output_dir=job_dir(out_root, job),
                )
            record(result)
    except BaseException:
        client.cancel(list(futures))  # Ctrl-C: queued tasks must not run unrecorded
        raise


def _threads_by_host(client: Any) -> dict[str, int]:
    """Host -> onnxruntime threads per job: the host's cores over all task slots of all its
    workers (two 1-thread workers on a 2-core host get 1 thread per job, not 2)."""
    try:
        workers = client.scheduler_info(n_workers=-1)["workers"]
    except TypeError:  # distributed before 2025: no n_workers argument, lists every worker
        workers = client.scheduler_info()["workers"]
    cores = client.run(available_cores)
    slots: dict[str, int] = {}
    host_cores: dict[str, int] = {}
    for address, info in workers.items():
        host = info["host"]
        slots[host] = slots.get(host, 0) + int(info["nthreads"])
        host_cores[host] = int(cores.get(address, 1))
    return {host: max(1, host_cores[host] // max(1, slots[host])) for host in slots}


def _run_job_on_dask_worker(
    job: Job, out_root: str, threads: int | None, threads_by_host: dict[str, int]
) -> JobResult:
    """The Dask task: :func:`run_job` with this host's share of cores unless ``threads`` is set."""
    if threads is None:
        from distributed import get_worker
        from distributed.comm import get_address_host

        threads = threads_by_host.get(get_address_host(get_worker().address))
    return run_job(job, out_root, threads)


def count_statuses(results: dict[str, JobResult]) -> dict[str, int]:
    counts = {STATUS_DONE: 0, STATUS_SKIPPED: 0, STATUS_FAILED: 0}
    for r in results.values():
        counts[r.status] = counts.get(r.status, 0) + 1
    return counts
