"""City-level cross-validation of the bundled change model's recipe on the 10 labelled OSCD cities.

The bundled model holds out bordeaux, mumbai and saclay_e (fold 1). Folds 2 and 3 hold out the
other seven cities, split by ``random.Random(0).shuffle`` of the bundled training cities (first
three / last four), so that every labelled city is scored once by a model that never saw it.
Each fold runs the bundled model's `swimdiff-geo finetune change` command (docs/models.md) with
its own --train-cities/--val-cities; finished folds are skipped (a fold's run folder with a
metrics.json), unfinished ones resume. Then every fold's best checkpoint is scored on its
held-out cities (PyTorch on 256 px tiles, threshold 0.5, as in docs/results.md) and the table
gives precision / recall / F1 per city, pooled per fold, and pooled over all ten cities.

    python benchmarks/change_cross_validation.py /path/to/shared/data/oscd \\
        --encoder runs/ablation/pretrain_swimdiff/encoder.pt --runs runs/cv
    # fold 1 is the bundled run: link it instead of training it again
    ln -s ../default/s2_change_swimdiff runs/cv/fold1
    # the same folds from random init (no --encoder)
    python benchmarks/change_cross_validation.py /path/to/shared/data/oscd --runs runs/cv_random
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from change_checkpoint_probes import validation_counts  # noqa: E402
from cva_otsu_oscd import score_cell, scores  # noqa: E402

BUNDLED_TRAIN = ["beihai", "beirut", "bercy", "cupertino", "paris", "pisa", "rennes"]
BUNDLED_VAL = ["bordeaux", "mumbai", "saclay_e"]
# The bundled model's recipe (docs/models.md), less the data, split, encoder and output.
RECIPE = (
    "--arch resnet18 --epochs 40 --lr 1e-3 --batch-size 8 --crop-size 96 --val-tile 256 "
    "--normalize standardize --loss bce+dice --pos-weight auto --seed 0"
).split()


def folds() -> list[tuple[list[str], list[str]]]:
    """(training cities, held-out cities) of folds 1, 2, 3, in the order the runs used them."""
    shuffled = list(BUNDLED_TRAIN)
    random.Random(0).shuffle(shuffled)
    return [
        (BUNDLED_TRAIN, BUNDLED_VAL),
        (BUNDLED_VAL + shuffled[3:], shuffled[:3]),
        (BUNDLED_VAL + shuffled[:3], shuffled[3:]),
    ]


def train_fold(data: Path, train: list[str], val: list[str], encoder: Path | None, out: Path,
               threads: int) -> None:  # fmt: skip
    if (out / "metrics.json").is_file():
        print(f"{out}: done, skipped", file=sys.stderr, flush=True)
        return
    cmd = [sys.executable, "-m", "swimdiff_geo.cli.main", "finetune", "change",
           "--data", str(data), "--train-cities", ",".join(train), "--val-cities", ",".join(val),
           *(["--encoder", str(encoder)] if encoder else []), *RECIPE, "--threads", str(threads),
           "--out", str(out), "--resume"]  # fmt: skip
    print(" ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)


def cell(c: np.ndarray) -> str:
    return score_cell(scores(c))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="the OSCD folder")
    parser.add_argument("--encoder", type=Path, help="pretrained encoder.pt (none: random init)")
    parser.add_argument("--runs", type=Path, required=True, help="fold run folders go here")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows, total = [], np.zeros(3, np.int64)
    for k, (train, val) in enumerate(folds(), start=1):
        run = args.runs / f"fold{k}"
        train_fold(args.data, train, val, args.encoder, run, args.threads)
        per_city = validation_counts(run / "best.ckpt")
        if sorted(per_city) != sorted(val):
            raise SystemExit(f"{run}: validated on {sorted(per_city)}, not {sorted(val)}")
        fold_total = np.zeros(3, np.int64)
        for name, c in per_city.items():
            rows.append(f"| {k} | {name} | {int(c[0] + c[2])} | {cell(c)} |")
            fold_total += c
        rows.append(f"| {k} | **pooled** | {int(fold_total[0] + fold_total[2])} | "
                    f"**{cell(fold_total)}** |")  # fmt: skip
        total += fold_total
    print("| fold | held-out city | changed px | F1 (precision / recall) |")
    print("|---|---|---|---|")
    print("\n".join(rows))
    print(f"| all | **pooled over the 10 cities** | {int(total[0] + total[2])} | "
          f"**{cell(total)}** |")  # fmt: skip


if __name__ == "__main__":
    main()
