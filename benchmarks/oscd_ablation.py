"""The SwiMDiff ablation on OSCD at our scale: pretrain 4 encoders, fine-tune 5 change models.

    python benchmarks/oscd_ablation.py /path/to/shared/data/oscd --runs runs/ablation \\
        --out docs/results.md

Rows (docs/results.md): random init; MoCo (swm-mode none, lambda_D 0); MoCo + scene-wide
matching; MoCo + diffusion; full SwiMDiff; and change-vector analysis + Otsu. Every encoder is
pretrained with the same settings (steps, batch, crop, learning rate, seed) on the images of all
24 OSCD cities (labels unused); every change model is fine-tuned with the same recipe on the
training cities and scored on the validation cities at threshold 0.5.

Resumable: each pretraining resumes from its last.ckpt, each fine-tuning from its last.ckpt, and
finished runs (encoder.pt / metrics.json present) are skipped; run it again after an interruption.
``--phase table`` only rewrites the table from finished runs. The table scores each run's
best.ckpt anew on the validation cities as the OSCD reader reads them now (PyTorch on 256 px
tiles, threshold 0.5), so it follows fixes to the reader; which epoch is the best one was chosen
by the run itself.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from change_checkpoint_probes import validation_counts  # noqa: E402
from cva_otsu_oscd import counts, cva_otsu_mask, score_cell, scores  # noqa: E402
from doc_markers import replace_between  # noqa: E402

TRAIN_CITIES = "beihai,beirut,bercy,cupertino,paris,pisa,rennes"
VAL_CITIES = "bordeaux,mumbai,saclay_e"

# name -> (label in the table, pretraining flags; None = no pretraining)
VARIANTS: dict[str, tuple[str, list[str] | None]] = {
    "random": ("random init", None),
    "moco": ("MoCo (swm none, lambda_D 0)", ["--swm-mode", "none", "--lambda-d", "0"]),
    "moco_swm": ("MoCo + scene-wide matching", ["--swm-mode", "soft", "--lambda-d", "0"]),
    "moco_diffusion": ("MoCo + diffusion", ["--swm-mode", "none", "--lambda-d", "1"]),
    "swimdiff": ("full SwiMDiff", ["--swm-mode", "soft", "--lambda-d", "1"]),
}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "swimdiff_geo.cli.main", *args]


def _timed(cmd: list[str], run_dir: Path) -> None:
    """Run ``cmd``; add its wall time to run_dir/wall_time.json (summed over resumptions)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    record = run_dir / "wall_time.json"
    spent = json.loads(record.read_text())["seconds"] if record.exists() else 0.0
    print("+", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    try:
        subprocess.run(cmd, check=True)
    finally:
        spent += time.perf_counter() - t0
        record.write_text(json.dumps({"seconds": round(spent, 1)}))


def pretrain_args(args: argparse.Namespace) -> list[str]:
    return [
        "--data", str(args.oscd), "--format", "oscd", "--arch", "resnet18",
        "--crop-size", str(args.crop), "--batch-size", str(args.pretrain_batch),
        "--max-steps", str(args.steps), "--lr", str(args.pretrain_lr), "--warmup-steps", "20",
        "--threads", str(args.threads), "--num-workers", "1", "--checkpoint-every", "50",
        "--seed", str(args.pretrain_seed), "--resume", "auto", "--no-progress-bar",
    ]  # fmt: skip


def finetune_args(args: argparse.Namespace, seed: int) -> list[str]:
    return [
        "--data", str(args.oscd), "--train-cities", TRAIN_CITIES, "--val-cities", VAL_CITIES,
        "--arch", "resnet18", "--epochs", str(args.epochs), "--lr", "1e-3", "--batch-size", "8",
        "--crop-size", "96", "--val-tile", "256", "--normalize", args.normalize,
        "--loss", "bce+dice", "--pos-weight", "auto", "--seed", str(seed), "--resume",
        "--threads", str(args.threads),
    ]  # fmt: skip


def run_pretraining(args: argparse.Namespace) -> None:
    for name in args.only:
        flags = VARIANTS[name][1]
        if flags is None:
            continue
        run_dir = args.runs / f"pretrain_{name}"
        if (run_dir / "encoder.pt").exists() and _finished_steps(run_dir) >= args.steps:
            continue
        _timed(_cli("pretrain", *pretrain_args(args), *flags, "--out", str(run_dir)), run_dir)


def _finished_steps(run_dir: Path) -> int:
    metrics = run_dir / "metrics.csv"
    if not metrics.exists():
        return 0
    rows = metrics.read_text().strip().splitlines()[1:]
    return int(rows[-1].split(",")[0]) if rows else 0


def run_finetuning(args: argparse.Namespace) -> None:
    for seed in args.seeds:
        for name in args.only:  # in the order given
            flags = VARIANTS[name][1]
            run_dir = args.runs / f"finetune_{name}_s{seed}"
            if (run_dir / "metrics.json").exists():
                continue
            encoder_pt = args.runs / f"pretrain_{name}" / "encoder.pt"
            if flags is not None and _finished_steps(encoder_pt.parent) < args.steps:
                print(f"skipping {run_dir.name}: pretrain_{name} has not finished", flush=True)
                continue
            encoder = [] if flags is None else ["--encoder", str(encoder_pt)]
            cmd = _cli(
                "finetune", "change", *finetune_args(args, seed), *encoder, "--out", str(run_dir)
            )
            _timed(cmd, run_dir)


def cva_otsu_counts(oscd: Path) -> dict[str, np.ndarray]:
    """(tp, fp, fn) of CVA + per-city Otsu on each validation city."""
    from swimdiff_geo.data.oscd import OSCDCity, find_oscd_root

    root = find_oscd_root(oscd)
    out = {}
    for name in VAL_CITIES.split(","):
        city = OSCDCity(root, name)
        out[name] = counts(cva_otsu_mask(city), city.read_labels().astype(bool))
    return out


def cached_validation_counts(run_dir: Path) -> dict[str, np.ndarray]:
    """:func:`validation_counts` of ``run_dir/best.ckpt``, kept in
    ``run_dir/validation_counts.json`` until the checkpoint changes (scoring takes a while)."""
    checkpoint = run_dir / "best.ckpt"
    cache = run_dir / "validation_counts.json"
    stamp = checkpoint.stat().st_mtime_ns
    if cache.exists():
        cached = json.loads(cache.read_text())
        if cached["checkpoint_mtime_ns"] == stamp:
            return {c: np.array(v, np.int64) for c, v in cached["counts"].items()}
    counts_by_city = validation_counts(checkpoint)
    record = {c: [int(x) for x in v] for c, v in counts_by_city.items()}
    cache.write_text(json.dumps({"checkpoint_mtime_ns": stamp, "counts": record}))
    return counts_by_city


def pooled_f1_by_run(runs: Path, names: list[str], seeds: list[int]) -> dict[str, dict[int, dict]]:
    """row name -> fine-tuning seed -> {city: F1, "all": pooled F1} of the finished runs."""
    cities = VAL_CITIES.split(",")
    out: dict[str, dict[int, dict]] = {}
    for name in names:
        for seed in seeds:
            run_dir = runs / f"finetune_{name}_s{seed}"
            if not (run_dir / "metrics.json").exists():
                continue
            per_city = cached_validation_counts(run_dir)
            out.setdefault(name, {})[seed] = {
                **{c: scores(per_city[c])["f1"] for c in cities},
                "all": scores(sum(per_city.values()))["f1"],
            }
    return out


def across_pretraining_seeds_rows(
    folders: list[Path], names: list[str], seeds: list[int]
) -> list[str]:
    """Markdown table: each row over every encoder (one per --runs folder, i.e. per pretraining
    seed) and fine-tuning seed; the mean per encoder; and the difference to random init and to
    MoCo, averaged per encoder (the unit a pretraining variant is judged by), mean and standard
    error over the encoders. Runs with the same pretraining seed share the encoder's
    initialisation and the order of its batches; random init has no encoder, its runs are the
    same in every folder."""
    cities = VAL_CITIES.split(",")
    by_folder = [pooled_f1_by_run(folder, names, seeds) for folder in folders]

    def encoder_means(name: str) -> list[float]:
        """Per folder, the pooled F1 averaged over the fine-tuning seeds run in every row."""
        return [
            float(np.mean([runs[name][s]["all"] for s in seeds]))
            for runs in by_folder
            if all(s in runs.get(name, {}) for s in seeds)
        ]

    def versus(name: str, other: str) -> str:
        pairs = [
            np.mean([runs[name][s]["all"] - runs[other][s]["all"] for s in seeds])
            for runs in by_folder
            if all(s in runs.get(name, {}) and s in runs.get(other, {}) for s in seeds)
        ]
        if name == other or len(pairs) < 2:
            return "-"
        se = np.std(pairs, ddof=1) / np.sqrt(len(pairs))
        return f"{np.mean(pairs):+.3f} ({se:.3f}, {len(pairs)} encoders)"

    header = (
        "| row | encoders x fine-tuning seeds | " + " | ".join(cities)
        + " | **all**: mean | sd | mean per encoder | vs random init (s.e.) | vs MoCo (s.e.) |"
    )  # fmt: skip
    lines = [header, "|" + "---|" * (len(cities) + 7)]
    for name in names:
        # random init has no encoder: its runs are the same in every folder, counted once
        folders_of_row = by_folder[:1] if VARIANTS[name][1] is None else by_folder
        runs = [r[name][s] for r in folders_of_row for s in seeds if s in r.get(name, {})]
        if not runs:
            continue
        pooled = np.array([r["all"] for r in runs])
        means = encoder_means(name)
        n_encoders = 1 if VARIANTS[name][1] is None else len(means)
        per_encoder = "-" if VARIANTS[name][1] is None else " / ".join(f"{m:.3f}" for m in means)
        lines.append(
            f"| {VARIANTS[name][0]} | {n_encoders} x {len(seeds)} | "
            + " | ".join(f"{np.mean([r[c] for r in runs]):.3f}" for c in cities)
            + f" | **{pooled.mean():.3f}** | {pooled.std(ddof=1):.3f} | {per_encoder} | "
            + f"{versus(name, 'random')} | "
            + f"{versus(name, 'moco') if name not in ('random', 'moco') else '-'} |"
        )
    return lines


def table_rows(args: argparse.Namespace) -> list[str]:
    """The Markdown table of every row and seed (finished runs; "not run" for the others),
    then, with more than one seed, each row's F1 over its seeds (:func:`seed_summary_rows`)."""
    cities = VAL_CITIES.split(",")
    header = "| row | seed | " + " | ".join(cities) + " | **all** | pretrain s | fine-tune s |"
    lines = [header, "|" + "---|" * (len(cities) + 5)]
    f1_by_row: dict[str, dict[int, dict[str, float]]] = {}  # label -> seed -> city/"all" -> F1
    for name in args.only:
        label, flags = VARIANTS[name]
        pre = args.runs / f"pretrain_{name}" / "wall_time.json"
        pre_s = f"{json.loads(pre.read_text())['seconds']:.0f}" if flags and pre.exists() else "-"
        for seed in args.seeds:
            run_dir = args.runs / f"finetune_{name}_s{seed}"
            if not (run_dir / "metrics.json").exists():
                lines.append(
                    f"| {label} | {seed} | " + " | ".join("not run" for _ in cities) + " | | | |"
                )
                continue
            per_city = cached_validation_counts(run_dir)
            ft_s = json.loads((run_dir / "wall_time.json").read_text())["seconds"]
            city_scores = {c: scores(per_city[c]) for c in cities}
            cells = [score_cell(city_scores[c]) for c in cities]
            pooled = scores(sum(per_city.values()))
            f1_by_row.setdefault(label, {})[seed] = {
                **{c: city_scores[c]["f1"] for c in cities},
                "all": pooled["f1"],
            }
            lines.append(
                f"| {label} | {seed} | " + " | ".join(cells)
                + f" | **{score_cell(pooled)}** | {pre_s} | {ft_s:.0f} |"
            )  # fmt: skip
    cva = cva_otsu_counts(args.oscd)
    total = sum(cva.values())
    cells = [score_cell(scores(cva[c])) for c in cities]
    lines.append(
        "| CVA + Otsu (per city) | - | "
        + " | ".join(cells)
        + f" | **{score_cell(scores(total))}** | - | - |"
    )
    if len(args.seeds) > 1:
        lines += ["", *seed_summary_rows(f1_by_row, cities)]
    return lines


def seed_summary_rows(
    f1_by_row: dict[str, dict[int, dict[str, float]]], cities: list[str]
) -> list[str]:
    """Markdown table: per row, the mean F1 of each city and of the pooled score over its
    finished seeds, the pooled score's sample standard deviation and range, and its difference
    to random init paired by seed (when its runs are there).

    A seed fixes the decoder's initialisation and the sequence of training windows, so two rows'
    runs with one seed differ only in the encoder: the paired difference (mean and its standard
    error, sd / sqrt(n)) compares the encoders with that part of the noise taken out.
    """
    header = (
        "| row | seeds | " + " | ".join(cities)
        + " | **all**: mean | sd | min - max | vs random init, paired: mean (s.e.) |"
    )  # fmt: skip
    lines = [header, "|" + "---|" * (len(cities) + 6)]
    baseline_label = VARIANTS["random"][0]
    baseline = f1_by_row.get(baseline_label, {})
    for label, by_seed in f1_by_row.items():
        pooled = np.array([f1s["all"] for f1s in by_seed.values()])
        sd = f"{pooled.std(ddof=1):.3f}" if len(pooled) > 1 else "-"
        paired = np.array(
            [f1s["all"] - baseline[s]["all"] for s, f1s in by_seed.items() if s in baseline]
        )
        if label == baseline_label or len(paired) < 2:
            versus = "-"
        else:
            se = paired.std(ddof=1) / np.sqrt(len(paired))
            versus = f"{paired.mean():+.3f} ({se:.3f}, {len(paired)} seeds)"
        lines.append(
            f"| {label} | {len(pooled)} | "
            + " | ".join(f"{np.mean([f1s[c] for f1s in by_seed.values()]):.3f}" for c in cities)
            + f" | **{pooled.mean():.3f}** | {sd} | {pooled.min():.3f} - {pooled.max():.3f}"
            + f" | {versus} |"
        )
    return lines


def write_doc(path: Path, name: str, rows: list[str]) -> None:
    """Put the table between the ``<!-- table: NAME -->`` and ``<!-- /table -->`` markers of
    ``path`` (NAME = the --runs folder's name; the prose around it is kept); a file that does
    not exist yet is created with just the markers."""
    begin, end = f"<!-- table: {name} -->", "<!-- /table -->"
    if not path.exists():
        path.write_text(f"# Results\n\n{begin}\n{end}\n")
    replace_between(path, begin, end, "\n".join(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("oscd", type=Path, help="the OSCD folder (Images + Train Labels)")
    parser.add_argument("--runs", type=Path, default=Path("runs/ablation"))
    parser.add_argument(
        "--out", type=Path, default=None, help="Markdown table, e.g. docs/results.md"
    )
    parser.add_argument(
        "--phase", choices=["all", "pretrain", "finetune", "table", "across"], default="all"
    )
    parser.add_argument(
        "--across",
        type=Path,
        nargs="+",
        default=[],
        help="--phase across: --runs folders of the same rows with other pretraining seeds; "
        "writes the table 'pretraining_seeds' (each row over every encoder and --seeds)",
    )
    parser.add_argument("--steps", type=int, default=400, help="pretraining steps per encoder")
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--pretrain-batch", type=int, default=16)
    parser.add_argument("--pretrain-lr", type=float, default=0.01)
    parser.add_argument("--epochs", type=int, default=16, help="fine-tuning epochs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--only",
        nargs="+",
        choices=list(VARIANTS),
        default=list(VARIANTS),
        help="pretrain / fine-tune / tabulate only these rows (two processes can share the work)",
    )
    parser.add_argument(
        "--pretrain-seed",
        type=int,
        default=0,
        help="seed of every pretraining (use another --runs folder for another seed)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--normalize",
        choices=["scale", "standardize"],
        default="scale",
        help="fine-tuning input scaling: scale = what the encoders saw in pretraining",
    )
    args = parser.parse_args()
    if args.phase in ("all", "pretrain"):
        run_pretraining(args)
    if args.phase in ("all", "finetune"):
        run_finetuning(args)
    import torch  # scoring the checkpoints (the pretraining and fine-tuning run as commands)

    torch.set_num_threads(args.threads)
    if args.phase == "across":
        rows = across_pretraining_seeds_rows([args.runs, *args.across], args.only, args.seeds)
        name = "pretraining_seeds"
    else:
        rows, name = table_rows(args), args.runs.name
    print("\n".join(rows))
    if args.out:
        write_doc(args.out, name, rows)


if __name__ == "__main__":
    main()
