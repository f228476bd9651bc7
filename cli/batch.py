"""``swimdiff-geo batch MANIFEST -o OUTDIR``: many jobs, resumable, local pool or Dask."""

from __future__ import annotations

import os
import sys

import click

from swimdiff_geo.batch import (
    REPORT_NAME,
    STATUS_DONE,
    STATUS_FAILED,
    STATUS_SKIPPED,
    Job,
    JobResult,
    ManifestError,
    available_cores,
    check_job,
    count_statuses,
    load_manifest,
    plan,
    run_batch,
)
from swimdiff_geo.inference.errors import SwimdiffError

from .options import output_dir_option


@click.command("batch")
@click.argument("manifest", type=click.Path(dir_okay=False))
@output_dir_option(
    help="Folder with one sub-folder per job (OUTDIR/<job_id>/) and batch_report.csv."
)
@click.option(
    "--workers",
    "-w",
    type=click.IntRange(min=1),
    default=None,
    help="Jobs run in parallel on this machine, each in its own process. [default: 1]",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="onnxruntime threads per job. Default: cores // workers (on Dask: a host's cores // "
    "the task slots of all its workers).",
)
@click.option(
    "--scheduler",
    metavar="ADDRESS",
    default=None,
    help="Run each job as one task on this Dask distributed scheduler (e.g. "
    "tcp://10.0.0.5:8786); needs the 'distributed' extra and the same paths on every worker.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Validate the manifest, check the inputs of the jobs to run against their models, "
    "list what would run, stop (exit 1 if a job would fail).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar; only failures and the total.")
def batch(
    manifest: str,
    out_dir: str,
    workers: int | None,
    threads: int | None,
    scheduler: str | None,
    dry_run: bool,
    quiet: bool,
) -> None:
    """Run the change / land-cover jobs listed in MANIFEST (CSV or YAML), resumably.

    One job per row: job_id, task (change | landcover), image, image_b (change jobs), optional
    model and option columns (threshold, min_area, tile_size, overlap, batch_size, bands, ...).
    Each job writes what the single-job command writes into OUTDIR/<job_id>/. A rerun skips
    jobs that are done and redoes those whose inputs, model or options changed.

    Exit status: 0 all jobs done, 1 a job failed (see batch_report.csv), 2 bad manifest or usage.
    """
    if scheduler and workers is not None:
        raise click.UsageError("--workers runs jobs on this machine; it cannot go with --scheduler")
    workers = workers or 1
    try:
        jobs = load_manifest(manifest)
    except ManifestError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    if dry_run:
        _dry_run(jobs, out_dir)
        return
    bar = None
    if not quiet:
        from tqdm import tqdm

        where = f"Dask scheduler {scheduler}" if scheduler else _local_text(workers, threads)
        click.echo(f"{len(jobs)} jobs from {manifest} on {where}", err=True)
        bar = tqdm(total=len(jobs), desc="batch", unit="job", file=sys.stderr, dynamic_ncols=True)

    def on_result(result: JobResult) -> None:
        line = _result_line(result)
        if bar is not None:
            bar.update(1)
            if result.status != STATUS_SKIPPED:
                bar.write(line, file=sys.stderr)
        elif result.status == STATUS_FAILED:
            click.echo(line, err=True)

    try:
        results = run_batch(
            jobs,
            out_dir,
            workers=workers,
            threads=threads,
            scheduler=scheduler,
            on_result=on_result,
        )
    except SwimdiffError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo(
            "\ninterrupted: finished jobs are kept; run the same command to resume", err=True
        )
        sys.exit(130)
    finally:
        if bar is not None:
            bar.close()
    counts = count_statuses(results)
    click.echo(
        f"{len(jobs)} jobs: {counts[STATUS_DONE]} done, {counts[STATUS_SKIPPED]} already done "
        f"(skipped), {counts[STATUS_FAILED]} failed; report: "
        f"{os.path.join(os.path.abspath(out_dir), REPORT_NAME)}"
    )
    if counts[STATUS_FAILED]:
        sys.exit(1)


def _local_text(workers: int, threads: int | None) -> str:
    per_job = threads or (
        available_cores() if workers == 1 else max(1, available_cores() // workers)
    )
    return f"this machine: {workers} worker(s) x {per_job} thread(s)"


def _result_line(result: JobResult) -> str:
    if result.status == STATUS_FAILED:
        return f"job {result.job_id} failed: {result.error}"
    if result.changed_area_ha is not None:
        what = f"changed {result.changed_area_ha:,.2f} ha"
    elif result.changed_percent is not None:
        what = f"changed {result.changed_percent:.2f}%"
    elif result.class_areas_ha:
        what = ", ".join(f"{k} {v:,.1f} ha" for k, v in result.class_areas_ha.items())
    else:
        what = "done"
    state = "already done" if result.status == STATUS_SKIPPED else "done"
    return f"job {result.job_id} {state}: {what} ({result.runtime_s or 0:.1f} s)"


def _dry_run(jobs: list[Job], out_dir: str) -> None:
    """List each job as it would go (run / skip / fails) after checking the inputs of those
    that would run; exit 1 when one of them would fail."""
    out_root = os.path.abspath(out_dir)
    batch_plan = plan(jobs, out_root) if os.path.isdir(out_root) else None
    to_run = {j.job_id for j in batch_plan.to_run} if batch_plan else {j.job_id for j in jobs}
    failing = 0
    for job in jobs:
        inputs = " ".join(job.images)
        if job.job_id not in to_run:
            click.echo(f"{'skip (done)':12s} {job.job_id} [{job.task}] {inputs}")
            continue
        checked, error = check_job(job, out_root)
        if checked is None:
            failing += 1
            click.echo(f"{'fails':12s} {job.job_id} [{job.task}] {inputs}\n{'':13s}{error}")
            continue
        grid = checked["grid"]
        click.echo(
            f"{'run':12s} {job.job_id} [{job.task}] {inputs} "
            f"({grid['width']} x {grid['height']} px)"
        )
        for warning in checked["warnings"]:
            click.echo(f"{'':13s}{warning}")
    click.echo(
        f"{len(jobs)} jobs: {len(to_run) - failing} to run, {failing} would fail, "
        f"{len(jobs) - len(to_run)} done"
    )
    if failing:
        sys.exit(1)
