"""Probe change checkpoints on their validation cities: thresholds, flip TTA, soups, ensembles.

    # F1 per validation city and pooled, at several thresholds
    python benchmarks/change_checkpoint_probes.py runs/default/s2_change_swimdiff/best.ckpt \\
        --thresholds 0.3,0.4,0.5,0.6,0.7
    # the same with flip test-time augmentation (mean of the 4 flips of every tile)
    python benchmarks/change_checkpoint_probes.py runs/default/s2_change_swimdiff/best.ckpt --tta
    # a uniform weight average ("model soup") of several checkpoints of one architecture
    python benchmarks/change_checkpoint_probes.py A/best.ckpt B/best.ckpt --soup
    # each checkpoint, then the mean of their probabilities (an ensemble)
    python benchmarks/change_checkpoint_probes.py A/best.ckpt B/best.ckpt --ensemble
    # one Markdown row per checkpoint at threshold 0.5: F1 per city, pooled P / R / F1 (the
    # attempts table of docs/results.md); --patch for checkpoints of a change_recipe_probes idea
    python benchmarks/change_checkpoint_probes.py A/best.ckpt B/best.ckpt --rows
    python benchmarks/change_checkpoint_probes.py runs/exp/fc_siam_diff/best.ckpt --rows \
        --patch fc-siam-diff

The validation cities, bands and scaling are the first checkpoint's (its data description and
model contract), read from the data folder it was trained on. PyTorch, not the engine: these are
questions about the network (docs/results.md), scored with the same tiling as training.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cva_otsu_oscd import counts, scores  # noqa: E402

from swimdiff_geo.data.change import IGNORE_INDEX, BandScaling  # noqa: E402
from swimdiff_geo.train.finetune import (  # noqa: E402
    change_probability_maps,
    evaluate_change,
    load_change_split,
    load_head_checkpoint,
    torch_predictor,
)

FLIPS = [(), (-1,), (-2,), (-2, -1)]


def probabilities(model: torch.nn.Module, scene, scaling: BandScaling, tta: bool) -> np.ndarray:
    """Change probability ``(H, W)`` of one scene, tile by tile (tiles of 256 px, as
    ``finetune`` scores its validation cities: ``change_probability_maps``)."""
    model.eval()

    def predict(batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch)
        flips = FLIPS if tta else [()]
        with torch.no_grad():
            return (
                sum(torch.sigmoid(model(x.flip(d))).flip(d) for d in flips) / len(flips)
            ).numpy()

    [(_, prob)] = change_probability_maps(predict, [scene], scaling, 256)
    return prob


def validation_counts(checkpoint: Path) -> dict[str, np.ndarray]:
    """Confusion counts (tp, fp, fn) per validation scene of a fine-tuning checkpoint, scored
    now, on the data as the reader reads it today (PyTorch on 256 px tiles, threshold 0.5)."""
    task = load_head_checkpoint(checkpoint)
    scaling = BandScaling.from_contract(task.hparams.contract)
    scenes = load_change_split(task.hparams.data_cfg, "val")
    per_scene = evaluate_change(torch_predictor(task.model, torch.sigmoid), scenes, scaling, 256)
    return {s.name: np.array([per_scene[s.name][k] for k in ("tp", "fp", "fn")]) for s in scenes}


def f1_table(maps: dict[str, tuple[np.ndarray, np.ndarray]], thresholds: list[float]) -> str:
    names = list(maps)
    lines = ["| threshold | " + " | ".join(names) + " | pooled |", "|---" * (len(names) + 2) + "|"]
    for t in thresholds:
        cells, total = [], np.zeros(3, np.int64)
        for prob, labels in maps.values():
            valid = labels != IGNORE_INDEX
            city = counts((prob >= t) & valid, (labels == 1) & valid)
            total += city
            cells.append(f"{scores(city)['f1']:.3f}")
        lines.append(f"| {t} | " + " | ".join(cells) + f" | {scores(total)['f1']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--thresholds", default="0.5")
    parser.add_argument("--tta", action="store_true", help="mean over the 4 flips of each tile")
    parser.add_argument("--soup", action="store_true", help="average the checkpoints' weights")
    parser.add_argument(
        "--ensemble", action="store_true", help="also score the mean of the probabilities"
    )
    parser.add_argument("--rows", action="store_true", help="one table row per checkpoint")
    parser.add_argument(
        "--patch", choices=["no-input-difference", "fc-siam-diff"], default=None,
        help="the change_recipe_probes idea the checkpoints were trained with",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.patch:
        import change_recipe_probes

        {"no-input-difference": change_recipe_probes.without_input_difference,
         "fc-siam-diff": change_recipe_probes.with_fc_siam_diff}[args.patch]()  # fmt: skip
    if args.rows:
        for checkpoint in args.checkpoints:
            per_city = validation_counts(Path(checkpoint))
            pooled = scores(sum(per_city.values()))
            cells = " | ".join(f"{scores(c)['f1']:.3f}" for c in per_city.values())
            print(f"| {checkpoint} | {cells} | {pooled['precision']:.3f} | "
                  f"{pooled['recall']:.3f} | {pooled['f1']:.3f} |", flush=True)  # fmt: skip
        return
    tasks = [load_head_checkpoint(c) for c in args.checkpoints]
    scenes = load_change_split(tasks[0].hparams.data_cfg, "val")
    thresholds = [float(t) for t in args.thresholds.split(",")]
    if args.soup:
        states = [t.model.state_dict() for t in tasks]
        soup = {
            key: torch.stack([s[key].float() for s in states]).mean(0).to(value.dtype)
            if value.is_floating_point()
            else value
            for key, value in states[0].items()
        }
        tasks[0].model.load_state_dict(soup)
        tasks = tasks[:1]
        names = ["soup of " + ", ".join(args.checkpoints)]
    else:
        names = list(args.checkpoints)
    suffix = " (flip TTA)" if args.tta else ""
    all_maps = []
    for name, task in zip(names, tasks, strict=False):
        scaling = BandScaling.from_contract(task.hparams.contract)  # each model with its own inputs
        maps = {s.name: (probabilities(task.model, s, scaling, args.tta), s.labels) for s in scenes}
        all_maps.append(maps)
        print(f"### {name}{suffix}\n")
        print(f1_table(maps, thresholds) + "\n")
    if args.ensemble and len(all_maps) > 1:
        mean = {
            s.name: (np.mean([m[s.name][0] for m in all_maps], axis=0), s.labels) for s in scenes
        }
        print(f"### mean probability of {len(all_maps)} checkpoints{suffix}\n")
        print(f1_table(mean, thresholds) + "\n")


if __name__ == "__main__":
    main()
