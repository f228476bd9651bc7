"""Recipe ideas for the change model that were tried and not adopted (docs/results.md, "After
the table"): each is the bundled model's fine-tuning recipe with one thing changed, run through
``finetune_change`` with that one thing patched in here rather than kept as an option.

    python benchmarks/change_recipe_probes.py change-windows /path/to/shared/data/oscd \\
        --encoder runs/ablation/pretrain_swimdiff/encoder.pt --out runs/exp/probe_biased
    python benchmarks/change_recipe_probes.py per-date /path/to/oscd --encoder ... --out ...
    python benchmarks/change_recipe_probes.py weight-decay /path/to/oscd --encoder ... --out ...
    python benchmarks/change_recipe_probes.py no-input-difference /path/to/oscd --encoder ... \
        --out ...
    python benchmarks/change_recipe_probes.py weight-ema /path/to/oscd --encoder ... --out ...
    python benchmarks/change_recipe_probes.py fc-siam-diff /path/to/oscd --out ...
    python benchmarks/change_recipe_probes.py pseudo-labels /path/to/oscd --encoder ... --out ...
    python benchmarks/change_recipe_probes.py cirrus-shifts /path/to/oscd --encoder ... --out ...

- ``change-windows``: half of the training windows are placed to contain a changed pixel (drawn
  uniformly from the scene's changed pixels), the other half uniformly, as usual.
- ``per-date``: every date of every scene is standardised per band on its own statistics before
  the usual global standardisation (a relative radiometric normalisation of the two dates).
- ``weight-decay``: AdamW weight decay 0.05 instead of 1e-4.
- ``no-input-difference``: the decoder's full-resolution skip gets zeros instead of the absolute
  difference of the two dates' inputs, so change is decoded from the encoder's features alone
  (the raw spectral difference is a shortcut to calling any spectral change, a river's colour or
  a harvested field, a change).
- ``weight-ema``: validation, checkpoints and the exported weights use an exponential moving
  average of the weights (decay 0.998 per step, about 500 steps or 10 epochs; Lightning's
  EMAWeightAveraging, batch-norm statistics averaged too) rather than the last step's.
- ``fc-siam-diff``: the OSCD authors' own network instead of the Siamese ResNet-18 UNet: FC-Siam-
  diff (Daudt, Le Saux and Boulch, "Fully convolutional Siamese networks for change detection",
  ICIP 2018): four small conv stages (16-32-64-128 channels, 1.35 M parameters against about
  14 M), absolute feature differences as skips, transposed-convolution decoder, dropout 0.2;
  random init (there is no encoder to load). Does a network 10x smaller generalise better from
  7 cities?
- ``cirrus-shifts``: half of the training windows get one date's B10 (cirrus band) raised by up
  to 8 standard deviations, as thin cirrus over one date raises it (OSCD's Paris scene of
  2017-08-29, second date of bercy and saclay_e: +5 to +7), so the network cannot learn a B10
  difference as "no change" (docs/results.md, "The atmospheric bands").
- ``pseudo-labels``: self-training on the 14 unlabelled OSCD cities: the bundled model (the
  teacher, water mask included) is run through the engine on each of them, and its confident
  pixels become labels (probability >= 0.9: change, <= 0.1: no change, the rest ignored, as
  FixMatch-style self-training does); the student trains on the 7 labelled cities plus these 14
  with the same recipe and the same number of steps (414 windows per epoch, drawn from all 21
  cities by area). The teacher never saw a validation label; the validation cities stay out.

40 epochs, one CPU thread, resumable (``--resume`` semantics); scores in ``OUT/metrics.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

import swimdiff_geo.train.finetune as finetune
from swimdiff_geo.data import change
from swimdiff_geo.models.change import SiameseChangeNet

sys.path.insert(0, str(Path(__file__).resolve().parent))

TRAIN = "beihai,beirut,bercy,cupertino,paris,pisa,rennes".split(",")
VAL = "bordeaux,mumbai,saclay_e".split(",")


def standardise_each_date() -> None:
    load = finetune.load_oscd_scenes

    def per_date(path, names, bands=None):  # noqa: ANN001, ANN202
        scenes = load(path, names, bands)
        for scene in scenes:
            for attr in ("image_a", "image_b"):
                image = getattr(scene, attr)
                mean = image.mean(axis=(1, 2), keepdims=True)
                std = image.std(axis=(1, 2), keepdims=True) + 1e-6
                # back on a DN-like scale, so that input_scale and the global step still apply
                setattr(scene, attr, ((image - mean) / std * 1000.0 + 1000.0).astype(np.float32))
        return scenes

    finetune.load_oscd_scenes = per_date


def half_the_windows_on_change() -> None:
    uniform = change.RandomChangeWindows.__getitem__

    def on_change(self, index):  # noqa: ANN001, ANN202
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
        if rng.random() >= 0.5:
            return uniform(self, index)
        i = int(rng.choice(len(self.scenes), p=self.probabilities))
        labels = self.scenes[i].labels
        changed = np.argwhere(labels == 1)
        if len(changed) == 0:
            return uniform(self, index)
        r, c = changed[rng.integers(len(changed))]
        s = self.crop_size
        h, w = labels.shape
        r0 = int(np.clip(r - rng.integers(0, s), 0, max(h - s, 0)))
        c0 = int(np.clip(c - rng.integers(0, s), 0, max(w - s, 0)))
        a, b = self._scaled[i]
        rows, cols = slice(r0, r0 + s), slice(c0, c0 + s)
        x = np.concatenate([a[:, rows, cols], b[:, rows, cols]])
        y = labels[rows, cols]
        x, y = change._pad_to(x, s, s, None), change._pad_to(y, s, s, change.IGNORE_INDEX)
        x, y = change.augment_d4([x, y], rng)
        return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))

    change.RandomChangeWindows.__getitem__ = on_change


def with_cirrus_shifts(max_shift: float = 8.0, probability: float = 0.5) -> None:
    """With ``probability``, one date of a training window (either, at random) gets its B10
    raised by a constant ``U(0, max_shift)`` standard deviations of the training B10, as thin
    cirrus over that date does (OSCD's Paris scene of 2017-08-29: +5 to +7), so that a B10
    difference between the dates is no longer a cue for "no change"."""
    plain = change.RandomChangeWindows.__getitem__

    def with_cirrus(self, index):  # noqa: ANN001, ANN202
        x, y = plain(self, index)
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
        if rng.random() < probability:
            c = x.shape[0] // 2
            b10 = change.OSCD_BANDS.index("B10") + c * int(rng.integers(2))
            x[b10] += float(rng.uniform(0, max_shift))
        return x, y

    change.RandomChangeWindows.__getitem__ = with_cirrus


def without_input_difference() -> None:
    def forward(self, x):  # noqa: ANN001, ANN202
        c, n = self.bands_per_date, x.shape[0]
        a, b = x[:, :c], x[:, c:]
        pyramid = self.encoder.forward_pyramid(torch.cat([a, b], dim=0))
        diffs = [torch.abs(f[:n] - f[n:]) for f in pyramid]
        return self.decoder(diffs, torch.zeros_like(a))

    SiameseChangeNet.forward = forward


def with_weight_ema(decay: float = 0.998) -> None:
    from lightning.pytorch.callbacks import EMAWeightAveraging

    trainer_class = finetune.L.Trainer

    def trainer(*args, callbacks=(), **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        ema = EMAWeightAveraging(decay=decay)
        return trainer_class(*args, callbacks=[*callbacks, ema], **kwargs)

    finetune.L.Trainer = trainer


def with_pseudo_labels(
    oscd: str, out: Path, teacher: str | None = None, confidence: float = 0.9
) -> None:
    """Add the unlabelled OSCD cities, labelled by the confident pixels of ``teacher`` (an ONNX
    change model; default: the bundled one), to the training split (cached as
    ``OUT/pseudo_labels/<city>.npy``)."""
    import tempfile

    import rasterio
    from cva_otsu_oscd import run_detect_change, write_stacks

    from swimdiff_geo.data.oscd import OSCDCity, find_oscd_root, list_oscd_cities
    from swimdiff_geo.inference.defaults import default_model_path

    root = find_oscd_root(oscd)
    unlabelled = [n for n in list_oscd_cities(root) if n not in list_oscd_cities(root, True)]
    cache = out / "pseudo_labels"
    cache.mkdir(parents=True, exist_ok=True)
    teacher = teacher or default_model_path("change_detection")
    for name in unlabelled:
        if (cache / f"{name}.npy").is_file():
            continue
        with tempfile.TemporaryDirectory() as tmp:
            a, b = write_stacks(OSCDCity(root, name), Path(tmp))
            outputs = run_detect_change(a, b, teacher, Path(tmp) / "out")
            with rasterio.open(outputs.probability) as src:
                probability = src.read(1, masked=True)
        labels = np.full(probability.shape, change.IGNORE_INDEX, np.uint8)
        labels[probability.filled(0.5) >= confidence] = 1
        labels[probability.filled(0.5) <= 1 - confidence] = 0
        np.save(cache / f"{name}.npy", labels)
        known = labels != change.IGNORE_INDEX
        changed = (labels == 1).sum() / max(known.sum(), 1)
        print(f"pseudo labels {name}: {known.mean():.3f} of the pixels confident, "
              f"{changed:.4f} of those change", flush=True)  # fmt: skip
    load = finetune.load_oscd_scenes

    def with_unlabelled(path, names, bands=None):  # noqa: ANN001, ANN202
        scenes = load(path, names, bands)
        if list(names) != TRAIN:
            return scenes
        for name in unlabelled:
            city = OSCDCity(root, name)
            scenes.append(change.ChangeScene(
                name=f"{name} (pseudo)", image_a=city.read(1), image_b=city.read(2),
                labels=np.load(cache / f"{name}.npy"), transform=city.transform, crs=city.crs,
            ))  # fmt: skip
        return scenes

    finetune.load_oscd_scenes = with_unlabelled


def _conv_block(channels: list[int]) -> nn.Sequential:
    """3x3 conv + BN + ReLU + dropout 0.2 for each step of ``channels`` (FC-Siam-diff's unit)."""
    layers: list[nn.Module] = []
    for c_in, c_out in zip(channels[:-1], channels[1:], strict=True):
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
                   nn.Dropout2d(0.2)]  # fmt: skip
    return nn.Sequential(*layers)


class FCSiamDiff(nn.Module):
    """FC-Siam-diff (Daudt et al. 2018) for ``bands`` per date; input ``(N, 2C, H, W)``, output
    change logits ``(N, 1, H, W)``; H and W multiples of 16. ``encoder`` is the shared
    contracting path (what HeadTask's optimiser groups and freezing look for)."""

    def __init__(self, bands: int) -> None:
        super().__init__()
        self.bands = bands
        self.encoder = nn.ModuleList([
            _conv_block([bands, 16, 16]), _conv_block([16, 32, 32]),
            _conv_block([32, 64, 64, 64]), _conv_block([64, 128, 128, 128]),
        ])  # fmt: skip
        self.up = nn.ModuleList([
            nn.ConvTranspose2d(c, c, 3, stride=2, padding=1, output_padding=1)
            for c in (128, 64, 32, 16)
        ])  # fmt: skip
        self.decode = nn.ModuleList([
            _conv_block([256, 128, 128, 64]), _conv_block([128, 64, 64, 32]),
            _conv_block([64, 32, 16]),
            nn.Sequential(_conv_block([32, 16]), nn.Conv2d(16, 1, 3, padding=1)),
        ])  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        h = torch.cat([x[:, : self.bands], x[:, self.bands :]], dim=0)
        skips = []
        for stage in self.encoder:
            h = stage(h)
            skips.append(torch.abs(h[:n] - h[n:]))
            h = nn.functional.max_pool2d(h, 2)
        h = h[n:]  # the decoder starts from date B's deepest map, as in the authors' code
        for up, decode, skip in zip(self.up, self.decode, reversed(skips), strict=True):
            h = decode(torch.cat([up(h), skip], dim=1))
        return h


def with_fc_siam_diff() -> None:
    build = finetune.build_head_model

    def build_head_model(model_cfg):  # noqa: ANN001, ANN202
        if model_cfg["task"] != "change":
            return build(model_cfg)
        return FCSiamDiff(model_cfg["in_channels"])

    finetune.build_head_model = build_head_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ideas = ["change-windows", "per-date", "weight-decay", "no-input-difference", "weight-ema",
             "fc-siam-diff", "pseudo-labels", "cirrus-shifts"]  # fmt: skip
    parser.add_argument("idea", choices=ideas)
    parser.add_argument("oscd", help="the OSCD folder")
    parser.add_argument("--encoder", default=None, help="encoder.pt (default: random init)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--teacher", default=None, help="pseudo-labels: ONNX change model")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.idea == "change-windows":
        half_the_windows_on_change()
    elif args.idea == "per-date":
        standardise_each_date()
    elif args.idea == "cirrus-shifts":
        with_cirrus_shifts()
    elif args.idea == "no-input-difference":
        without_input_difference()
    elif args.idea == "weight-ema":
        with_weight_ema()
    elif args.idea == "fc-siam-diff":
        if args.encoder:
            parser.error("fc-siam-diff starts from random init: no --encoder")
        with_fc_siam_diff()
    elif args.idea == "pseudo-labels":
        with_pseudo_labels(args.oscd, Path(args.out), args.teacher)
    summary = finetune.finetune_change(
        args.oscd, args.out, train_cities=TRAIN, val_cities=VAL, encoder=args.encoder,
        epochs=args.epochs, lr=1e-3, weight_decay=0.05 if args.idea == "weight-decay" else 1e-4,
        batch_size=8, crop_size=96, val_tile=256, normalize="standardize", loss="bce+dice",
        pos_weight="auto", seed=args.seed, resume=True,
        samples_per_epoch=414 if args.idea == "pseudo-labels" else None,
    )  # fmt: skip
    print(summary["best"], summary["per_scene"])


if __name__ == "__main__":
    main()
