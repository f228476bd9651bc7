"""Fine-tuning of the downstream heads: change detection, land-cover segmentation, patch
classification (Lightning).

:func:`finetune_change` and :func:`finetune_landcover` read the data, build the model around a
(pretrained or new) encoder, train with Lightning, keep ``best.ckpt`` (by validation F1) and
``last.ckpt`` (for resuming) in the output folder and write ``metrics.json``. Everything the
export needs to fill the ONNX model contract (bands, scaling, classes, colours, tile size,
threshold) travels in the checkpoint's hyper-parameters, as does a description of the data so
that the export can check parity on real validation windows.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    BinaryF1Score,
    BinaryJaccardIndex,
    BinaryPrecision,
    BinaryRecall,
    MulticlassAccuracy,
    MulticlassF1Score,
)

from ..data.change import (
    IGNORE_INDEX,
    BandScaling,
    ChangeDataError,
    ChangeScene,
    EpochSampler,
    RandomChangeWindows,
    TiledChangeWindows,
    band_statistics,
    load_manifest_scenes,
    load_oscd_scenes,
    manifest_band_names,
    positive_fraction,
    read_change_manifest,
    warn_if_tiny,
)
from ..data.landcover import (
    DEFAULT_PALETTE,
    LandcoverDataError,
    PatchDataset,
    RandomLabelledWindows,
    TiledLabelledWindows,
    common_patch_size,
    list_patch_folder,
    patch_dtype,
    raster_band_names,
    read_patch,
    read_training_labels,
    spatial_block_split,
    stratified_split,
)
from ..data.oscd import OSCD_BANDS
from ..models.change import DEFAULT_DECODER_CHANNELS, SiameseChangeNet
from ..models.encoder import build_encoder, load_encoder_weights
from ..models.landcover import PatchClassifier, SegmentationNet
from .quiet import lightning_noise_filtered

logger = logging.getLogger(__name__)

TASKS = ("change", "segmentation", "classification")
NORMALIZATIONS = ("scale", "standardize")


# ---------------------------------------------------------------------------------------------
# Model construction from a plain config (stored in the checkpoint)


def build_head_model(model_cfg: dict[str, Any]) -> nn.Module:
    """Build the network described by ``model_cfg`` (random weights; load a state_dict after).

    Keys: ``task`` (change | segmentation | classification), ``arch``, ``in_channels`` (bands of
    one date), ``num_classes``, ``head`` (classification: linear | mlp), ``decoder_channels``.
    """
    task = model_cfg["task"]
    encoder = build_encoder(model_cfg.get("arch", "resnet18"), in_channels=model_cfg["in_channels"])
    decoder = model_cfg.get("decoder_channels", list(DEFAULT_DECODER_CHANNELS))
    if task == "change":
        return SiameseChangeNet(encoder, decoder)
    if task == "segmentation":
        return SegmentationNet(encoder, model_cfg["num_classes"], decoder)
    if task == "classification":
        return PatchClassifier(encoder, model_cfg["num_classes"], model_cfg.get("head", "linear"))
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


# ---------------------------------------------------------------------------------------------
# Losses


def masked_bce_dice(
    logits: Tensor,
    target: Tensor,
    mode: str = "bce+dice",
    pos_weight: float = 1.0,
) -> Tensor:
    """Loss of change logits ``(N, 1, H, W)`` against labels ``(N, H, W)`` in {0, 1, ignore}.

    ``mode``: ``bce`` (binary cross-entropy with ``pos_weight`` on change pixels), ``dice``
    (soft Dice of the change class over the whole batch) or ``bce+dice`` (their sum).
    """
    logits = logits[:, 0]
    valid = target != IGNORE_INDEX
    y = (target == 1).float()
    loss = logits.new_zeros(())
    if "bce" in mode:
        weight = torch.where(y > 0, torch.full_like(y, pos_weight), torch.ones_like(y)) * valid
        bce = F.binary_cross_entropy_with_logits(logits, y, weight=weight, reduction="sum")
        loss = loss + bce / valid.sum().clamp(min=1)
    if "dice" in mode:
        p = torch.sigmoid(logits) * valid
        yv = y * valid
        dice = 1 - (2 * (p * yv).sum() + 1.0) / (p.sum() + yv.sum() + 1.0)
        loss = loss + dice
    if mode not in ("bce", "dice", "bce+dice"):
        raise ValueError(f"loss must be bce, dice or bce+dice, not {mode!r}")
    return loss


# ---------------------------------------------------------------------------------------------
# The Lightning module


class HeadTask(L.LightningModule):
    """Training of one downstream head.

    Args:
        model_cfg: see :func:`build_head_model`.
        contract: the model-contract fields for export (bands, input_scale, ...).
        data_cfg: how the data was read (used by export for parity and int8 calibration).
        lr, weight_decay: AdamW settings; the learning rate follows a cosine schedule over
            ``epochs``.
        encoder_lr_mult: the encoder learns at ``lr * encoder_lr_mult`` (the decoder at ``lr``);
            below 1 keeps a pretrained encoder closer to its pretraining on few labels.
        freeze_encoder: keep the encoder's weights and batch-norm statistics fixed.
        loss: change: bce | dice | bce+dice; land cover: ce.
        pos_weight: change-class weight of the BCE.
        class_weights: per-class cross-entropy weights (land cover) or None.
    """

    def __init__(
        self,
        model_cfg: dict[str, Any],
        contract: dict[str, Any],
        data_cfg: dict[str, Any],
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        epochs: int = 20,
        freeze_encoder: bool = False,
        loss: str = "bce+dice",
        pos_weight: float = 1.0,
        class_weights: list[float] | None = None,
        encoder_lr_mult: float = 1.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.task = model_cfg["task"]
        self.model = build_head_model(model_cfg)
        self.freeze_encoder = freeze_encoder
        if freeze_encoder:
            for p in self.model.encoder.parameters():
                p.requires_grad_(False)
        if self.task == "change":
            self.val_metrics = MetricCollection(
                {
                    "f1": BinaryF1Score(ignore_index=IGNORE_INDEX),
                    "precision": BinaryPrecision(ignore_index=IGNORE_INDEX),
                    "recall": BinaryRecall(ignore_index=IGNORE_INDEX),
                    "iou": BinaryJaccardIndex(ignore_index=IGNORE_INDEX),
                },
                prefix="val_",
            )
        else:
            k = model_cfg["num_classes"]
            ignore = IGNORE_INDEX if self.task == "segmentation" else None
            self.val_metrics = MetricCollection(
                {
                    "f1": MulticlassF1Score(k, average="macro", ignore_index=ignore),
                    "accuracy": MulticlassAccuracy(k, average="micro", ignore_index=ignore),
                },
                prefix="val_",
            )
            self.val_f1_per_class = MulticlassF1Score(k, average=None, ignore_index=ignore)
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.register_buffer("class_weights", weights, persistent=False)

    def train(self, mode: bool = True) -> HeadTask:
        super().train(mode)
        if self.freeze_encoder:  # batch-norm running statistics must not move either
            self.model.encoder.eval()
        return self

    def on_train_start(self) -> None:
        # A run resumed with another --epochs: the restored cosine schedule continues from the
        # current learning rate and now reaches its minimum at the new last epoch.
        for config in self.trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
                scheduler.T_max = max(1, self.trainer.max_epochs or self.hparams.epochs)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Lightning restores the train/eval flag of every submodule itself around validation,
        # bypassing train(); re-assert eval mode of a frozen encoder before every step.
        if self.freeze_encoder:
            self.model.encoder.eval()

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def _loss(self, logits: Tensor, y: Tensor) -> Tensor:
        hp = self.hparams
        if self.task == "change":
            return masked_bce_dice(logits, y, hp.loss, hp.pos_weight)
        return F.cross_entropy(logits, y, weight=self.class_weights, ignore_index=IGNORE_INDEX)

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        x, y = batch[0], batch[1]
        loss = self._loss(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(x))
        return loss

    def validation_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        x, y = batch[0], batch[1]
        logits = self(x)
        self.log("val_loss", self._loss(logits, y), on_epoch=True, batch_size=len(x))
        if self.task == "change":
            self.val_metrics.update(torch.sigmoid(logits[:, 0]), y)
        else:
            probs = logits.softmax(1)
            self.val_metrics.update(probs, y)
            self.val_f1_per_class.update(probs, y)

    def on_validation_epoch_end(self) -> None:
        # Metrics accumulate true/false positives over every validation pixel and are computed
        # once per epoch (not averaged over batches).
        self.log_dict(self.val_metrics.compute())
        self.val_metrics.reset()
        if self.task != "change":
            names = self.hparams.contract["class_names"]
            per_class = self.val_f1_per_class.compute()
            for i, value in enumerate(per_class):
                self.log(f"val_f1_{names[str(i)]}", value)
            self.val_f1_per_class.reset()

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        encoder_ids = {id(p) for p in self.model.encoder.parameters()}
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in trainable if id(p) not in encoder_ids], "lr": hp.lr},
            {
                "params": [p for p in trainable if id(p) in encoder_ids],
                "lr": hp.lr * hp.get("encoder_lr_mult", 1.0),
            },
        ]
        groups = [g for g in groups if g["params"]]
        opt = torch.optim.AdamW(groups, lr=hp.lr, weight_decay=hp.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, self.hparams.epochs))
        return {"optimizer": opt, "lr_scheduler": sched}


def load_head_checkpoint(path: str | Path) -> HeadTask:
    """A trained :class:`HeadTask` from a ``best.ckpt``/``last.ckpt`` (eval mode, CPU)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        task = HeadTask.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except (KeyError, TypeError) as exc:
        raise ValueError(
            f"{path}: not a swimdiff-geo fine-tuning checkpoint ({exc}); an encoder.pt from "
            "pretraining exports with `swimdiff-geo export ENCODER.pt --bands ...`"
        ) from exc
    return task.eval()


# ---------------------------------------------------------------------------------------------
# Training driver shared by the heads


class EpochPrinter(L.Callback):
    """One line per epoch with the logged metrics (readable in a background run's log)."""

    def __init__(self, print_fn: Callable[[str], None] = print) -> None:
        self.print_fn = print_fn
        self.started = time.monotonic()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Runs after the epoch's validation, so the validation metrics are in.
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        shown = " ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))
        elapsed = time.monotonic() - self.started
        self.print_fn(f"epoch {trainer.current_epoch} ({elapsed:.0f} s): {shown}")


class RelocatableCheckpoint(ModelCheckpoint):
    """A ``ModelCheckpoint`` that keeps its state when the run folder is moved.

    Lightning restores a checkpoint callback's best score only when the folder recorded in the
    checkpoint is the one it now writes to: after ``mv run/ elsewhere/`` and ``--resume`` it
    forgets the best score, and the first epoch after the move overwrites ``best.ckpt`` however
    poor it is. This one maps the recorded paths into the new folder (the files kept their
    names) and restores everything.
    """

    @property
    def state_key(self) -> str:
        # ModelCheckpoint's key: checkpoints written before this class existed resume with it.
        return "ModelCheckpoint" + super().state_key.removeprefix(type(self).__qualname__)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        recorded = state_dict.get("dirpath")
        if recorded is not None and self.dirpath is not None and recorded != self.dirpath:
            dirpath = self.dirpath

            def moved(path: str | None) -> str | None:
                return os.path.join(dirpath, os.path.basename(path)) if path else path

            paths = ("best_model_path", "kth_best_model_path", "last_model_path")
            state_dict = {
                **state_dict,
                **{key: moved(state_dict[key]) for key in paths if key in state_dict},
                "best_k_models": {
                    moved(k): v for k, v in state_dict.get("best_k_models", {}).items()
                },
                "dirpath": dirpath,
            }
        super().load_state_dict(state_dict)


# What a run leaves in its --out folder; other files there (the user's notes, scripts) stay.
RUN_FILES = ("*.ckpt", "logs", "metrics.json", "metrics.json.tmp")


def _run_files(out_dir: Path) -> list[Path]:
    """The files and folders of an earlier run in ``out_dir`` (sorted; empty if none)."""
    return sorted({p for pattern in RUN_FILES for p in out_dir.glob(pattern)})


def check_run_dir(out_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to start a fresh run in a folder holding another run's files.

    Without this, the new run replaces best.ckpt while the summary and history (read from every
    ``logs/version_*``) still mix in the old run. ``resume`` continues that run; ``overwrite``
    clears it (:func:`clear_run_dir`, just before training).
    """
    if resume and overwrite:
        raise ValueError("--resume continues the run in --out and --overwrite clears it: pick one")
    if resume or overwrite:
        return
    found = _run_files(out_dir) if out_dir.is_dir() else []
    if found:
        names = ", ".join(p.name for p in found)
        raise ValueError(
            f"{out_dir}: holds an earlier run ({names}); pass --resume to continue it or "
            "--overwrite to replace it (or choose another --out)"
        )


def clear_run_dir(out_dir: Path, print_fn: Callable[[str], None] = print) -> None:
    """Remove an earlier run's checkpoints, logs and metrics.json from ``out_dir``."""
    found = _run_files(out_dir) if out_dir.is_dir() else []
    for path in found:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    if found:
        print_fn(f"{out_dir}: removed the earlier run ({', '.join(p.name for p in found)})")


def _write_summary(out_dir: Path, summary: dict[str, Any]) -> None:
    """metrics.json under a temporary name first: a killed run never leaves half a file."""
    tmp = out_dir / "metrics.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, out_dir / "metrics.json")


def _fit(
    task: HeadTask,
    train_ds: Dataset,
    val_ds: Dataset,
    out_dir: Path,
    epochs: int,
    batch_size: int,
    num_workers: int,
    resume: bool,
    overwrite: bool,
    seed: int,
    accelerator: str,
    progress_bar: bool,
    print_fn: Callable[[str], None],
) -> L.Trainer:
    from lightning.pytorch.loggers import CSVLogger

    last_path = out_dir / "last.ckpt"
    if overwrite or (resume and not last_path.is_file()):
        # Nothing to continue from: a fresh run, and metrics.json must describe it alone.
        clear_run_dir(out_dir, print_fn)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_dl = DataLoader(
        train_ds,
        batch_size=batch_size,
        # Items and their order depend on (seed, epoch) only, so a run resumed after epoch k
        # trains epoch k + 1 on the windows an uninterrupted run would have used.
        sampler=EpochSampler(len(train_ds), seed),
        num_workers=num_workers,
        drop_last=False,
        persistent_workers=num_workers > 0,
    )
    val_dl = DataLoader(val_ds, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    best = RelocatableCheckpoint(
        dirpath=out_dir, filename="best", monitor="val_f1", mode="max", enable_version_counter=False
    )
    # A separate callback for last.ckpt: Lightning's save_last only writes when the best changed,
    # which would leave --resume an old epoch.
    last = RelocatableCheckpoint(
        dirpath=out_dir, filename="last", monitor=None, save_top_k=1, enable_version_counter=False
    )
    # The folder is this run's: check_run_dir refused another run's files, or they were cleared.
    with lightning_noise_filtered(run_dir_is_ours=True):
        trainer = L.Trainer(
            max_epochs=epochs,
            accelerator=accelerator,
            devices=1,
            default_root_dir=out_dir,
            logger=CSVLogger(out_dir, name="logs"),  # logs/version_N/metrics.csv, one per run
            callbacks=[best, last, EpochPrinter(print_fn)],
            enable_progress_bar=progress_bar,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            log_every_n_steps=10,
        )
        ckpt_path = str(last_path) if resume and last_path.is_file() else None
        if resume and ckpt_path is None:
            print_fn(f"--resume: no {last_path} yet, starting from scratch")
        elif ckpt_path:
            print_fn(f"resuming from {last_path}")
        trainer.fit(task, train_dl, val_dl, ckpt_path=ckpt_path)
    return trainer


def _load_encoder_into(
    task: HeadTask, encoder: str | Path | None, print_fn: Callable[[str], None] = print
) -> dict[str, Any]:
    if encoder is None:
        print_fn("encoder: randomly initialised")
        return {"encoder": None}
    report = load_encoder_weights(task.model.encoder, encoder)
    adapted = f", conv1 adapted {report.conv1_adapted}" if report.conv1_adapted else ""
    print_fn(
        f"encoder: {len(report.loaded)} tensors loaded from {encoder}, "
        f"{len(report.missing)} missing{adapted}"
    )
    return {
        "encoder": str(encoder),
        "loaded_keys": len(report.loaded),
        "missing_keys": len(report.missing),
        "conv1_adapted": report.conv1_adapted,
    }


def note_if_scaling_differs(
    encoder: str | Path | None, scaling: BandScaling, print_fn: Callable[[str], None] = print
) -> bool:
    """Say so when the encoder was pretrained with the other ``--normalize`` (its encoder.json).

    A pretrained first convolution is tuned to its input distribution, so the user should know
    when fine-tuning feeds it something else. It is a note, not an error: on OSCD, standardised
    fine-tuning of unstandardised-pretrained encoders still scored higher (docs/results.md).
    (The input scale itself is not compared: DN x 1e-4 and float reflectance are the same
    quantity in different files.) Returns True when the note was printed.
    """
    meta_path = Path(encoder).with_name("encoder.json") if encoder else None
    if meta_path is None or not meta_path.is_file():
        return False
    meta = json.loads(meta_path.read_text())
    standardized = bool(scaling.mean)
    if "input_standardized" not in meta or bool(meta["input_standardized"]) == standardized:
        return False
    kind, wanted = ("", "standardize") if meta["input_standardized"] else ("un", "scale")
    print_fn(
        f"note: {encoder} was pretrained on {kind}standardised inputs; --normalize {wanted} "
        "would match its pretraining (docs/results.md compares both)"
    )
    return True


def _scaling(images: Sequence[np.ndarray], input_scale: float, normalize: str) -> BandScaling:
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, not {normalize!r}")
    mean, std = band_statistics(images, input_scale)
    if normalize == "scale":
        return BandScaling(input_scale, input_band_means=mean)
    return BandScaling(input_scale, mean, std, input_band_means=mean)


def _resolution_cm(transform: Any, crs: Any) -> float | None:
    """Pixel size in cm (Deepness convention) for a projected CRS in metres, else None."""
    if transform is None or crs is None or not crs.is_projected:
        return None
    factor = crs.linear_units_factor[1] if crs.linear_units_factor else 1.0
    return round(abs(transform.a) * factor * 100.0, 3)


def epoch_history(out_dir: Path) -> list[dict[str, float]]:
    """Per-epoch logged metrics of every run (resumed runs too) in ``out_dir/logs/version_*``.

    Lightning's CSV logger writes one ``metrics.csv`` per run (version); an epoch logged again by
    a later (resumed) run replaces the earlier row.
    """
    import csv

    by_epoch: dict[int, dict[str, float]] = {}
    versions = sorted(
        (out_dir / "logs").glob("version_*/metrics.csv"),
        key=lambda p: int(p.parent.name.split("_")[-1]),
    )
    if (out_dir / "logs" / "metrics.csv").is_file():  # written by an earlier release
        versions.insert(0, out_dir / "logs" / "metrics.csv")
    for log in versions:
        with open(log, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("epoch") in (None, ""):
                    continue
                epoch = int(row["epoch"])
                values = {
                    k: float(v) for k, v in row.items() if v not in ("", None) and k != "step"
                }
                values["epoch"] = epoch
                by_epoch.setdefault(epoch, {}).update(values)
    return [by_epoch[e] for e in sorted(by_epoch)]


def _best_metrics(out_dir: Path) -> dict[str, float]:
    """Validation metrics of the epoch saved as best.ckpt (highest val_f1)."""
    rows = [r for r in epoch_history(out_dir) if "val_f1" in r]
    if not rows:
        return {}
    best = max(rows, key=lambda r: r["val_f1"])
    return {k: v for k, v in best.items() if k.startswith("val")} | {"epoch": int(best["epoch"])}


# ---------------------------------------------------------------------------------------------
# Change detection


def _change_data(
    data: str | Path,
    train_cities: Sequence[str] | None,
    val_cities: Sequence[str] | None,
    bands: Sequence[str] | None,
) -> dict[str, Any]:
    """Describe the change data so that it can be re-read (export parity, evaluation)."""
    data = Path(data)
    if data.is_file() and data.suffix.lower() in (".yaml", ".yml", ".csv"):
        manifest = read_change_manifest(data)
        train = (
            list(train_cities)
            if train_cities
            else manifest.names("train")
            or [n for n in manifest.names() if n not in (val_cities or manifest.names("val"))]
        )
        val = list(val_cities) if val_cities else manifest.names("val")
        cfg = {"kind": "manifest", "path": str(data.resolve()), "train": train, "val": val}
    elif not train_cities or not val_cities:
        raise ChangeDataError(
            f"{data}: OSCD data needs --train-cities and --val-cities (labelled cities)"
        )
    else:
        cfg = {
            "kind": "oscd",
            "path": str(data.resolve()),
            "train": list(train_cities),
            "val": list(val_cities),
            "bands": list(bands) if bands else list(OSCD_BANDS),
        }
    both = [name for name in cfg["train"] if name in cfg["val"]]
    if both:
        # Validating on training scenes measures memorisation, and best.ckpt would be chosen by it.
        raise ChangeDataError(
            f"{', '.join(both)}: given in both --train-cities and --val-cities (training and "
            "validation scenes); a validation city must be held out from training"
        )
    return cfg


def load_change_split(data_cfg: dict[str, Any], split: str) -> list:
    """The :class:`ChangeScene` list of ``split`` ("train" | "val") described by ``data_cfg``."""
    names = data_cfg[split]
    if not names:
        raise ChangeDataError(f"{data_cfg['path']}: no {split} scenes")
    if data_cfg["kind"] == "oscd":
        return load_oscd_scenes(data_cfg["path"], names, data_cfg.get("bands"))
    return load_manifest_scenes(read_change_manifest(data_cfg["path"]), names)


def finetune_change(
    data: str | Path,
    out_dir: str | Path,
    train_cities: Sequence[str] | None = None,
    val_cities: Sequence[str] | None = None,
    encoder: str | Path | None = None,
    arch: str = "resnet18",
    bands: Sequence[str] | None = None,
    freeze_encoder: bool = False,
    epochs: int = 20,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 8,
    crop_size: int = 96,
    val_tile: int = 256,
    samples_per_epoch: int | None = None,
    loss: str = "bce+dice",
    pos_weight: float | str = "auto",
    normalize: str = "scale",
    input_scale: float | None = None,
    threshold: float = 0.5,
    radiometric_jitter: float = 0.0,
    encoder_lr_mult: float = 1.0,
    seed: int = 0,
    num_workers: int = 0,
    resume: bool = False,
    overwrite: bool = False,
    accelerator: str = "auto",
    progress_bar: bool = False,
    print_fn: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train a Siamese change detector on OSCD (a folder) or a manifest of pairs (a file).

    ``pos_weight="auto"`` weights change pixels by the square root of the no-change/change ratio
    of the training labels (capped at 50). ``samples_per_epoch`` defaults to the number of
    crop-sized windows in the training area. Returns the run summary, also written to
    ``out_dir/metrics.json``. A folder holding an earlier run needs ``resume`` (continue it from
    ``last.ckpt``) or ``overwrite`` (clear it first): :func:`check_run_dir`. Training windows
    are a function of (``seed``, epoch), so a resumed run trains on what an uninterrupted one
    would have.
    """
    started = time.monotonic()
    out_dir = Path(out_dir)
    check_run_dir(out_dir, resume, overwrite)
    L.seed_everything(seed, workers=True, verbose=False)
    data_cfg = _change_data(data, train_cities, val_cities, bands)
    train_scenes = load_change_split(data_cfg, "train")
    val_scenes = load_change_split(data_cfg, "val")
    warn_if_tiny(train_scenes, crop_size)
    if data_cfg["kind"] == "oscd":
        band_names = data_cfg["bands"]
        scale = 1e-4 if input_scale is None else input_scale  # Sentinel-2 L1C DN -> reflectance
    else:
        manifest = read_change_manifest(data_cfg["path"])
        first = next(e for e in manifest.entries if e.name == data_cfg["train"][0])
        band_names = manifest_band_names(manifest, first.image_a)
        scale = input_scale or manifest.input_scale or _dtype_scale(first.image_a)
    images = [s.image_a for s in train_scenes] + [s.image_b for s in train_scenes]
    scaling = _scaling(images, scale, normalize)
    frac = positive_fraction(train_scenes)
    if pos_weight == "auto":
        # sqrt of the class ratio: enough to keep the rare change class from being ignored,
        # without the full ratio's upward bias of probabilities at the 0.5 threshold.
        pos_weight = float(min(50.0, math.sqrt((1 - frac) / frac))) if frac > 0 else 1.0
    area = sum(s.shape[0] * s.shape[1] for s in train_scenes)
    length = samples_per_epoch or max(batch_size, math.ceil(area / crop_size**2))
    contract = {
        "model_type": "change_detection",
        "bands": band_names,
        "num_dates": 2,
        "tile_size": val_tile,
        "input_scale": scaling.input_scale,
        "standardization_mean": scaling.mean,
        "standardization_std": scaling.std,
        "input_band_means": scaling.input_band_means,
        "threshold": threshold,
        "resolution": 1000.0
        if data_cfg["kind"] == "oscd"
        else _resolution_cm(train_scenes[0].transform, train_scenes[0].crs),
        "class_names": {"0": "no change", "1": "change"},
        "class_colors": {"0": "#000000", "1": "#ff0000"},
        "name": f"swimdiff-geo change {arch}",
        "description": (
            f"Siamese {arch} + UNet change detector fine-tuned on {data_cfg['kind']} "
            f"({', '.join(data_cfg['train'])}); encoder "
            f"{'from ' + Path(encoder).name if encoder else 'randomly initialised'}"
        ),
    }
    model_cfg = {"task": "change", "arch": arch, "in_channels": len(band_names)}
    task = HeadTask(
        model_cfg,
        contract,
        data_cfg,
        lr=lr,
        weight_decay=weight_decay,
        epochs=epochs,
        freeze_encoder=freeze_encoder,
        loss=loss,
        pos_weight=float(pos_weight),
        encoder_lr_mult=encoder_lr_mult,
    )
    encoder_info = _load_encoder_into(task, encoder, print_fn)
    note_if_scaling_differs(encoder, scaling, print_fn)
    print_fn(
        f"change: {len(train_scenes)} train / {len(val_scenes)} val scenes, {len(band_names)} "
        f"bands, change fraction {frac:.3f}, pos_weight {float(pos_weight):.2f}, "
        f"{length} windows of {crop_size} px per epoch"
    )
    train_ds = RandomChangeWindows(
        train_scenes, scaling, crop_size, length, radiometric_jitter=radiometric_jitter, seed=seed
    )
    val_ds = TiledChangeWindows(val_scenes, scaling, val_tile)
    _fit(
        task,
        train_ds,
        val_ds,
        out_dir,
        epochs,
        batch_size,
        num_workers,
        resume,
        overwrite,
        seed,
        accelerator,
        progress_bar,
        print_fn,
    )
    summary: dict[str, Any] = {
        "task": "change",
        "data": data_cfg,
        "encoder": encoder_info,
        "freeze_encoder": freeze_encoder,
        "encoder_lr_mult": encoder_lr_mult,
        "radiometric_jitter": radiometric_jitter,
        "epochs": epochs,
        "best_checkpoint": str(out_dir / "best.ckpt"),
        "best": _best_metrics(out_dir),
        "history": epoch_history(out_dir),
        "wall_time_s": round(time.monotonic() - started, 1),
    }
    best = load_head_checkpoint(out_dir / "best.ckpt")
    summary["per_scene"] = evaluate_change(
        torch_predictor(best.model, torch.sigmoid),
        val_scenes,
        scaling,
        val_tile,
        threshold,
        batch_size,
    )
    _write_summary(out_dir, summary)
    return summary


def _dtype_scale(path: Path) -> float:
    import rasterio

    with rasterio.open(path) as src:
        return _scale_for_dtype(src.dtypes[0])


def _scale_for_dtype(dtype: str) -> float:
    """1/255 for 8-bit, 1e-4 for 16-bit (Sentinel-2 style reflectance x 10000), else 1."""
    if dtype == "uint8":
        return 1.0 / 255.0
    if dtype in ("uint16", "int16"):
        return 1e-4
    return 1.0


# ---------------------------------------------------------------------------------------------
# Evaluation with any predictor (PyTorch or onnxruntime)

Predictor = Callable[[np.ndarray], np.ndarray]


def torch_predictor(model: nn.Module, activation: Callable[[Tensor], Tensor]) -> Predictor:
    """Wrap a PyTorch model as ``batch (N, C, H, W) float32 -> probabilities`` (numpy)."""
    model = model.eval()

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return activation(model(torch.from_numpy(batch))).numpy()

    return predict


def _binary_scores(tp: int, fp: int, fn: int, tn: int) -> dict[str, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    iou = tp / (tp + fp + fn) if tp + fp + fn else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "iou": iou,
        "tp": int(tp),
        "fp": int(fp),
        "fn": int(fn),
        "tn": int(tn),
    }


def change_probability_maps(
    predict: Predictor,
    scenes: Sequence[ChangeScene],
    scaling: BandScaling,
    tile_size: int,
    batch_size: int = 8,
) -> Iterator[tuple[ChangeScene, np.ndarray]]:
    """Each scene with its change probability ``(H, W)`` float32, predicted tile by tile.

    The tiles are :class:`TiledChangeWindows`' (``tile_size`` px, the last ones flush with the
    scene's edge). Where such a last tile overlaps the tile before it, the earlier tile's
    prediction is kept: those are the pixels the validation during training counts, so scores
    from these maps equal the run's own. (A pixel's prediction depends on where it lies in its
    tile: keeping the later tile instead moved a city's F1 by up to 0.044 on OSCD.)

    ``predict`` maps ``(N, 2C, T, T)`` scaled windows to ``(N, 1, T, T)`` probabilities.
    """
    for scene in scenes:
        tiles = TiledChangeWindows([scene], scaling, tile_size)
        h, w = scene.shape
        prob = np.zeros((h, w), np.float32)
        painted = np.zeros((h, w), bool)
        for first in range(0, len(tiles), batch_size):
            batch = range(first, min(first + batch_size, len(tiles)))
            out = predict(np.stack([tiles[k][0].numpy() for k in batch]))
            for k, tile_prob in zip(batch, out[:, 0], strict=True):
                _, r0, c0 = tiles.items[k]
                window = (slice(r0, r0 + tile_size), slice(c0, c0 + tile_size))
                hh, ww = prob[window].shape
                fresh = ~painted[window]
                prob[window][fresh] = tile_prob[:hh, :ww][fresh]
                painted[window] = True
        yield scene, prob


def evaluate_change(
    predict: Predictor,
    scenes: Sequence[ChangeScene],
    scaling: BandScaling,
    tile_size: int,
    threshold: float = 0.5,
    batch_size: int = 8,
) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and IoU of the change class per scene and over all scenes
    (``"all"``: true/false positives summed over every pixel, not averaged per scene).

    A pixel is changed where its probability (:func:`change_probability_maps`) is
    ``>= threshold``, as in the engine; pixels labelled :data:`IGNORE_INDEX` are not counted.
    """
    out: dict[str, dict[str, float]] = {}
    total = np.zeros(4, np.int64)
    for scene, prob in change_probability_maps(predict, scenes, scaling, tile_size, batch_size):
        valid = scene.labels != IGNORE_INDEX
        changed, truth = (prob >= threshold) & valid, (scene.labels == 1) & valid
        counts = np.array(
            [(changed & truth).sum(), (changed & ~truth).sum(), (~changed & truth).sum(),
             (~changed & ~truth & valid).sum()]
        )  # fmt: skip
        total += counts
        out[scene.name] = _binary_scores(*counts.tolist())
    out["all"] = _binary_scores(*total.tolist())
    return out


def evaluate_classes(
    predict: Predictor, dataset: Dataset, num_classes: int, batch_size: int = 8
) -> dict[str, Any]:
    """Overall accuracy, macro F1 and per-class F1 of a segmentation or classification
    predictor over every labelled pixel (or patch) of ``dataset``."""
    f1 = MulticlassF1Score(num_classes, average=None, ignore_index=IGNORE_INDEX)
    acc = MulticlassAccuracy(num_classes, average="micro", ignore_index=IGNORE_INDEX)
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        probs = torch.from_numpy(predict(x.numpy()))
        f1.update(probs, y)
        acc.update(probs, y)
    per_class = [float(v) for v in f1.compute()]
    return {
        "overall_accuracy": float(acc.compute()),
        "macro_f1": float(np.mean(per_class)),
        "f1_per_class": per_class,
    }


# ---------------------------------------------------------------------------------------------
# Land cover


def _landcover_data(
    data: str | Path,
    labels: str | Path | None,
    class_field: str | None,
    layer: str | None,
    block_size: int,
    val_fraction: float,
    block_buffer: int,
    seed: int,
) -> dict[str, Any]:
    data = Path(data)
    if data.is_dir():
        root = data
        if (data / "train").is_dir() and (data / "val").is_dir():
            return {"kind": "patches", "path": str(data.resolve()), "split": "folders"}
        return {
            "kind": "patches",
            "path": str(root.resolve()),
            "split": "random",
            "val_fraction": val_fraction,
            "seed": seed,
        }
    if labels is None or class_field is None:
        raise LandcoverDataError(
            f"{data}: segmentation from a raster needs --labels (polygons/points) and "
            "--class-field (a folder of class sub-folders trains a patch classifier)"
        )
    return {
        "kind": "raster",
        "path": str(data.resolve()),
        "labels": str(Path(labels).resolve()),
        "class_field": class_field,
        "layer": layer,
        "block_size": block_size,
        "val_fraction": val_fraction,
        "block_buffer": block_buffer,
        "seed": seed,
    }


def load_landcover_split(
    data_cfg: dict[str, Any], scaling: BandScaling, tile_size: int, class_values: Sequence[str]
) -> Dataset:
    """The validation dataset described by ``data_cfg`` (used by the export's checks)."""
    if data_cfg["kind"] == "raster":
        raster = read_training_labels(
            data_cfg["labels"],
            data_cfg["path"],
            data_cfg["class_field"],
            data_cfg["layer"],
            class_values,
        )
        _, val = spatial_block_split(
            raster.labels,
            data_cfg["block_size"],
            data_cfg["val_fraction"],
            data_cfg["seed"],
            data_cfg["block_buffer"],
        )
        return TiledLabelledWindows(raster.image, val, scaling, tile_size)
    files, labels, _ = _patch_split(data_cfg, class_values, "val")
    return PatchDataset(files, labels, scaling, tile_size)


def _patch_split(
    data_cfg: dict[str, Any], class_values: Sequence[str] | None, split: str
) -> tuple[list[Path], list[int], list[str]]:
    root = Path(data_cfg["path"])
    if data_cfg["split"] == "folders":
        folder = list_patch_folder(root / split, class_values)
        return folder.files, folder.labels, folder.class_values
    folder = list_patch_folder(root, class_values)
    train_idx, val_idx = stratified_split(folder.labels, data_cfg["val_fraction"], data_cfg["seed"])
    idx = train_idx if split == "train" else val_idx
    return [folder.files[i] for i in idx], [folder.labels[i] for i in idx], folder.class_values


def _class_colors(class_values: Sequence[str], colors: dict[str, str] | None) -> dict[str, str]:
    colors = colors or {}
    unknown = set(colors) - set(class_values)
    if unknown:
        raise LandcoverDataError(
            f"--class-colors names unknown class(es) {sorted(unknown)}; "
            f"classes: {list(class_values)}"
        )
    return {
        str(i): colors.get(v, DEFAULT_PALETTE[i % len(DEFAULT_PALETTE)])
        for i, v in enumerate(class_values)
    }


def finetune_landcover(
    data: str | Path,
    out_dir: str | Path,
    labels: str | Path | None = None,
    class_field: str | None = None,
    layer: str | None = None,
    encoder: str | Path | None = None,
    arch: str = "resnet18",
    bands: Sequence[str] | None = None,
    linear_probe: bool = False,
    freeze_encoder: bool = False,
    head: str | None = None,
    epochs: int = 20,
    lr: float = 1e-3,
    encoder_lr_mult: float = 1.0,
    weight_decay: float = 1e-4,
    batch_size: int = 8,
    crop_size: int | None = None,
    val_tile: int = 256,
    samples_per_epoch: int | None = None,
    block_size: int = 64,
    val_fraction: float = 0.2,
    block_buffer: int = 2,
    class_weighting: str = "balanced",
    class_colors: dict[str, str] | None = None,
    normalize: str = "scale",
    input_scale: float | None = None,
    seed: int = 0,
    num_workers: int = 0,
    resume: bool = False,
    overwrite: bool = False,
    accelerator: str = "auto",
    progress_bar: bool = False,
    print_fn: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train a land-cover model.

    ``data`` a raster (with ``labels`` polygons/points and ``class_field``): per-pixel
    segmentation validated on held-out spatial blocks. ``data`` a folder of class folders
    (EuroSAT layout; or ``train/`` and ``val/`` each holding class folders): patch
    classification. ``linear_probe`` = classification with a frozen encoder and a linear head.
    ``class_weighting``: ``balanced`` (inverse class frequency) or ``none``. ``resume`` and
    ``overwrite``: as in :func:`finetune_change`.
    """
    started = time.monotonic()
    out_dir = Path(out_dir)
    check_run_dir(out_dir, resume, overwrite)
    L.seed_everything(seed, workers=True, verbose=False)
    data_cfg = _landcover_data(
        data, labels, class_field, layer, block_size, val_fraction, block_buffer, seed
    )
    if linear_probe:
        freeze_encoder = True
        head = head or "linear"
    if data_cfg["kind"] == "raster":
        task_name = "segmentation"
        raster = read_training_labels(labels, data, class_field, layer)  # type: ignore[arg-type]
        class_values = raster.class_values
        train_labels, val_labels = spatial_block_split(
            raster.labels, block_size, val_fraction, seed, block_buffer
        )
        band_names = list(bands) if bands else raster.band_names
        if len(band_names) != raster.image.shape[0]:
            raise LandcoverDataError(
                f"--bands names {len(band_names)} bands; {data} has {raster.image.shape[0]}"
            )
        scale = input_scale if input_scale is not None else _scale_for_dtype(raster.dtype)
        scaling = _scaling([raster.image], scale, normalize)
        crop = crop_size or min(96, max(raster.labels.shape))
        counts = np.bincount(
            train_labels[train_labels != IGNORE_INDEX], minlength=len(class_values)
        )
        n_labelled = int(counts.sum())
        length = samples_per_epoch or max(batch_size, math.ceil(4 * n_labelled / crop**2))
        train_ds: Dataset = RandomLabelledWindows(
            raster.image, train_labels, scaling, crop, length, seed=seed
        )
        val_ds: Dataset = TiledLabelledWindows(raster.image, val_labels, scaling, val_tile)
        tile_size = val_tile
        resolution = _resolution_cm(raster.transform, raster.crs)
        described = (
            f"{len(class_values)} classes from {Path(labels).name} ({class_field}) "  # type: ignore[arg-type]
            f"on {Path(data).name}; validated on held-out {block_size} px blocks"
        )
    else:
        task_name = "classification"
        train_files, train_y, class_values = _patch_split(data_cfg, None, "train")
        val_files, val_y, _ = _patch_split(data_cfg, class_values, "val")
        if not val_files:
            raise LandcoverDataError(f"{data}: no validation patches (too few per class?)")
        first = read_patch(train_files[0])
        band_names = list(bands) if bands else raster_band_names(train_files[0], first.shape[0])
        if len(band_names) != first.shape[0]:
            raise LandcoverDataError(
                f"--bands names {len(band_names)} bands; {train_files[0]} has {first.shape[0]}"
            )
        scale = (
            input_scale
            if input_scale is not None
            else _scale_for_dtype(patch_dtype(train_files[0]))
        )
        size = crop_size or common_patch_size(train_files)
        scaling = _scaling([read_patch(f) for f in train_files[:500]], scale, normalize)
        train_ds = PatchDataset(train_files, train_y, scaling, size, augment=True, seed=seed)
        val_ds = PatchDataset(val_files, val_y, scaling, size)
        counts = np.bincount(np.asarray(train_y), minlength=len(class_values))
        tile_size = size
        resolution = None
        described = f"{len(class_values)} classes from the patch folders of {Path(data).name}"
    if class_weighting == "balanced":
        freq = counts / max(1, counts.sum())
        weights = [float(1.0 / (len(counts) * f)) if f > 0 else 0.0 for f in freq]
    elif class_weighting == "none":
        weights = None
    else:
        raise ValueError(f"class_weighting must be balanced or none, not {class_weighting!r}")
    contract = {
        "model_type": "segmentation" if task_name == "segmentation" else "classification",
        "bands": band_names,
        "num_dates": 1,
        "tile_size": tile_size,
        "input_scale": scaling.input_scale,
        "standardization_mean": scaling.mean,
        "standardization_std": scaling.std,
        "input_band_means": scaling.input_band_means,
        "threshold": 0.5,
        "resolution": resolution,
        "class_names": {str(i): v for i, v in enumerate(class_values)},
        "class_colors": _class_colors(class_values, class_colors),
        "name": f"swimdiff-geo {task_name} {arch}",
        "description": described,
    }
    model_cfg = {
        "task": task_name,
        "arch": arch,
        "in_channels": len(band_names),
        "num_classes": len(class_values),
        "head": head or "linear",
    }
    task = HeadTask(
        model_cfg,
        contract,
        data_cfg,
        lr=lr,
        weight_decay=weight_decay,
        epochs=epochs,
        freeze_encoder=freeze_encoder,
        loss="ce",
        class_weights=weights,
        encoder_lr_mult=encoder_lr_mult,
    )
    encoder_info = _load_encoder_into(task, encoder, print_fn)
    note_if_scaling_differs(encoder, scaling, print_fn)
    print_fn(
        f"{task_name}: classes {class_values}, training counts {counts.tolist()}, "
        f"{len(train_ds)} training items/epoch, {len(val_ds)} validation items"
    )
    _fit(
        task,
        train_ds,
        val_ds,
        out_dir,
        epochs,
        batch_size,
        num_workers,
        resume,
        overwrite,
        seed,
        accelerator,
        progress_bar,
        print_fn,
    )
    best = load_head_checkpoint(out_dir / "best.ckpt")
    evaluation = evaluate_classes(
        torch_predictor(best.model, lambda t: t.softmax(1)), val_ds, len(class_values), batch_size
    )
    summary = {
        "task": task_name,
        "data": data_cfg,
        "classes": class_values,
        "encoder": encoder_info,
        "freeze_encoder": freeze_encoder,
        "encoder_lr_mult": encoder_lr_mult,
        "epochs": epochs,
        "best_checkpoint": str(out_dir / "best.ckpt"),
        "best": _best_metrics(out_dir),
        "history": epoch_history(out_dir),
        "validation": evaluation,
        "wall_time_s": round(time.monotonic() - started, 1),
    }
    _write_summary(out_dir, summary)
    return summary
