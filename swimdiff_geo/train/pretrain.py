"""SwiMDiff pretraining with Lightning: config, LightningModule, callbacks and ``pretrain()``.

``pretrain(PretrainConfig(data=..., out=...))`` trains and leaves in ``out``:

- ``last.ckpt``: Lightning checkpoint (step, optimizer, LR schedule, model with EMA key encoder,
  queue keys + scene ids, band statistics); ``--resume`` continues from it.
- ``encoder.pt``: the query encoder's plain state_dict (torchvision keys), rewritten at every
  checkpoint; load with ``torch.load(p, weights_only=True)`` or ``build_encoder(init_weights=p)``.
- ``encoder.json``: what the encoder expects (architecture, bands, input scale, band mean/std).
- ``metrics.csv``: step, epoch, loss, loss_c, loss_d, lr, ... every ``log_every`` steps.
- ``config.yaml``: the resolved configuration (computed band statistics, queue size, lr),
  written when training starts (after a resumed checkpoint has loaded).

An ``out`` that already holds a run is refused unless ``resume`` continues it or ``overwrite``
replaces it. SIGTERM (a scheduler's preemption) stops at the end of the current step, writes
``last.ckpt`` and raises Lightning's ``SIGTERMException`` (the CLI exits with status 143).

Randomness is a function of (seed, rank, global step): the windows of a step come from a batch
sampler indexed by the step, augmentations and diffusion noise from a torch seed derived from
the step. A resumed run therefore repeats an uninterrupted one step for step.

Several GPUs / nodes: Lightning DDP (``--devices``, ``--num-nodes``; torchrun and SLURM are
detected by Lightning). Keys and scene ids are all-gathered inside the model before the loss and
before enqueueing. On CPU the same code runs with the gloo backend.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException
from torch.utils.data import DataLoader, Sampler

from swimdiff_geo.bands import get_band_spec, normalize_band_name
from swimdiff_geo.data.augment import AugmentConfig, PretrainAugmentation
from swimdiff_geo.data.pretrain import (
    PretrainWindowDataset,
    build_sources,
    compute_band_stats,
)
from swimdiff_geo.models.swimdiff import SwiMDiff
from swimdiff_geo.train.quiet import lightning_noise_filtered

logger = logging.getLogger(__name__)

__all__ = [
    "MODEL_OPTIONS",
    "PretrainConfig",
    "StepBatchSampler",
    "SwiMDiffPretrainModule",
    "effective_queue_size",
    "pretrain",
]

# Files of a run in --out: their presence means the folder holds a run.
RUN_FILES = ("last.ckpt", "encoder.pt", "encoder.json", "metrics.csv", "config.yaml")
# Options that shape the model's parameters and buffers: a checkpoint only resumes with the
# values it was trained with.
MODEL_OPTIONS = ("arch", "band_spec", "bands", "proj_hidden", "proj_dim", "lambda_d",
                 "diffusion_steps", "noise_schedule", "cond_mode", "cond_fusion",
                 "unet_channels")  # fmt: skip


@dataclass
class PretrainConfig:
    """Every pretraining option; the CLI flags are these names with dashes.

    Defaults are the method page's (PAPER / OURS); see docs/pretraining.md.
    """

    data: str = ""
    out: str = ""
    format: str = "auto"
    # bands and scaling
    band_spec: str = "sentinel2_l1c"
    bands: list[str] | None = None
    input_scale: float | None = None
    nodata: float | None = None
    band_mean: list[float] | None = None
    band_std: list[float] | None = None
    stats_samples: int = 64
    standardize_input: bool = False
    # sampling and views
    crop_size: int = 64
    window_size: int | None = None
    samples_per_epoch: int | None = None
    temporal: bool = False
    max_nodata_fraction: float = 0.5
    scene_grid: int = 0
    rrc_scale: tuple[float, float] = (0.5, 1.0)
    brightness: float = 0.2
    contrast: float = 0.2
    jitter_p: float = 0.8
    blur_p: float = 0.5
    rot90_p: float = 0.5
    # model
    arch: str = "resnet18"
    init_weights: str | None = None
    proj_hidden: int = 512
    proj_dim: int = 128
    queue_size: int = 16384
    momentum: float = 0.99
    swm_mode: str = "soft"
    tau: float = 0.2
    tau_prime: float = 0.1
    alpha: float = 0.5
    lambda_c: float = 1.0
    lambda_d: float = 1.0
    diffusion_steps: int = 1000
    noise_schedule: str = "linear"
    cond_mode: str = "multiscale"
    cond_fusion: str = "add"
    unet_channels: int = 32
    # optimisation
    batch_size: int = 16
    lr: float | None = None
    base_lr: float = 0.03
    weight_decay: float = 1e-4
    sgd_momentum: float = 0.9
    warmup_steps: int = 0
    max_steps: int = -1
    max_epochs: int | None = None
    # hardware and bookkeeping
    accelerator: str = "auto"
    devices: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    sync_batchnorm: bool = True
    num_workers: int = 2
    threads: int | None = None
    checkpoint_every: int = 100
    log_every: int = 10
    resume: str | None = None
    overwrite: bool = False
    seed: int = 0
    progress_bar: bool = True
    # filled in by pretrain()
    resolved: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> PretrainConfig:
        """Build from a mapping with dashed or underscored keys; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        clean = {k.replace("-", "_"): v for k, v in values.items()}
        unknown = sorted(set(clean) - known)
        if unknown:
            raise ValueError(f"{source}: unknown option(s) {', '.join(unknown)}")
        if isinstance(clean.get("bands"), str):
            clean["bands"] = [b for b in clean["bands"].replace(" ", "").split(",") if b]
        if "rrc_scale" in clean and clean["rrc_scale"] is not None:
            clean["rrc_scale"] = tuple(float(v) for v in clean["rrc_scale"])
        if "devices" in clean:
            clean["devices"] = str(clean["devices"])
        return cls(**clean)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rrc_scale"] = list(self.rrc_scale)
        return d

    def validate(self) -> None:
        """Raise ValueError with the offending option's name."""
        if not self.data:
            raise ValueError("--data is required")
        if not self.out:
            raise ValueError("--out is required")
        if self.crop_size < 8:
            raise ValueError(f"--crop-size must be >= 8 pixels, got {self.crop_size}")
        if self.batch_size < 2:
            raise ValueError(
                f"--batch-size must be >= 2 (contrastive learning), got {self.batch_size}"
            )
        if self.max_steps <= 0 and self.max_epochs is None:
            raise ValueError("give --max-steps or --max-epochs")
        if not 0 < self.rrc_scale[0] <= self.rrc_scale[1] <= 1:
            raise ValueError(f"--rrc-scale must satisfy 0 < min <= max <= 1, got {self.rrc_scale}")
        if (self.band_mean is None) != (self.band_std is None):
            raise ValueError("give both --band-mean and --band-std, or neither")
        try:
            get_band_spec(self.band_spec)
        except KeyError as exc:
            raise ValueError(f"--band-spec: {exc.args[0]}") from None
        try:
            devices = _parse_devices(self.devices)
        except ValueError:
            raise ValueError(
                f"--devices {self.devices}: expected a number, a list 0,1 or auto"
            ) from None
        if isinstance(devices, int) and not (devices > 0 or devices == -1):
            raise ValueError(
                f"--devices {self.devices}: give a positive number of devices, -1 (all), a "
                "list such as 0,1, or auto (to train on the CPU: --accelerator cpu)"
            )
        if isinstance(devices, str) and devices != "auto":
            raise ValueError(f"--devices {self.devices}: expected a number, a list 0,1 or auto")
        if self.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
            raise ValueError(
                f"--accelerator {self.accelerator}: no CUDA GPU is visible to torch here; "
                "use --accelerator cpu (or auto)"
            )

    def model_options(self) -> dict[str, Any]:
        """The options that shape the model, normalised for comparison (see MODEL_OPTIONS)."""
        spec = get_band_spec(self.band_spec)
        opts = {k: getattr(self, k) for k in MODEL_OPTIONS}
        opts["bands"] = [normalize_band_name(b) for b in (self.bands or spec.bands)]
        opts["lambda_d"] = "0 (no denoiser)" if self.lambda_d == 0 else "> 0 (denoiser)"
        return opts


def effective_queue_size(requested: int, samples_per_epoch: int, global_batch: int) -> int:
    """The queue length actually used: at most one epoch of keys (OURS).

    On tiny archives a 16384-key queue would hold many stale copies of the same windows; the
    queue is therefore shrunk to ``samples_per_epoch`` rounded down to whole global batches
    (never below one global batch).
    """
    epoch_keys = max(global_batch, (samples_per_epoch // global_batch) * global_batch)
    return max(1, min(requested, epoch_keys))


class SwiMDiffPretrainModule(L.LightningModule):
    """LightningModule around :class:`SwiMDiff`; ``config`` is a :class:`PretrainConfig` dict."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.save_hyperparameters({"config": config})
        cfg = PretrainConfig.from_dict(config)
        res = cfg.resolved
        self.cfg = cfg
        self.model = SwiMDiff(
            arch=cfg.arch,
            in_channels=len(res["bands"]),
            band_mean=res["band_mean"],
            band_std=res["band_std"],
            standardize_input=cfg.standardize_input,
            proj_hidden=cfg.proj_hidden,
            proj_dim=cfg.proj_dim,
            queue_size=res["queue_size"],
            momentum=cfg.momentum,
            swm_mode=cfg.swm_mode,
            tau=cfg.tau,
            tau_prime=cfg.tau_prime,
            alpha=cfg.alpha,
            lambda_c=cfg.lambda_c,
            lambda_d=cfg.lambda_d,
            diffusion_steps=cfg.diffusion_steps,
            noise_schedule=cfg.noise_schedule,
            cond_mode=cfg.cond_mode,
            cond_fusion=cfg.cond_fusion,
            unet_base_channels=cfg.unet_channels,
            # A resumed run gets its weights from the checkpoint.
            init_weights=None if res.get("resumed_from") else cfg.init_weights,
        )
        self.augment = PretrainAugmentation(
            AugmentConfig(
                crop_size=cfg.crop_size,
                rrc_scale=tuple(cfg.rrc_scale),
                brightness=cfg.brightness,
                contrast=cfg.contrast,
                jitter_p=cfg.jitter_p,
                blur_p=cfg.blur_p,
                rot90_p=cfg.rot90_p,
            )
        )

    def on_train_start(self) -> None:
        # A restored LambdaLR keeps the learning rate of the checkpoint's last step (0 at the
        # end of a finished cosine schedule) until its next step(); its factor function is
        # rebuilt for this run's length, so apply it now: a run resumed with more
        # --max-steps continues on the stretched schedule from its first new step.
        for config in self.trainer.lr_scheduler_configs:
            sched = config.scheduler
            groups = sched.optimizer.param_groups
            for group, base, factor in zip(groups, sched.base_lrs, sched.lr_lambdas, strict=True):
                group["lr"] = base * factor(sched.last_epoch)
            sched._last_lr = [g["lr"] for g in groups]

    def _seed_step(self) -> None:
        """Seed torch from (seed, rank, global step) for this step's augmentations and noise.

        A function of the step, not of the process history, so a resumed run draws what an
        uninterrupted one draws; the rank makes processes draw differently.
        """
        key = [self.cfg.seed, self.global_rank, int(self.trainer.global_step)]
        torch.manual_seed(int(np.random.SeedSequence(key).generate_state(1)[0]))

    def on_train_epoch_start(self) -> None:
        loader = self.trainer.train_dataloader
        dataset = getattr(loader, "dataset", None)
        if isinstance(dataset, PretrainWindowDataset):
            dataset.set_epoch(self.current_epoch)

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        if self.trainer is not None and self.trainer.training:
            self._seed_step()
            batch["view1"] = self.augment(batch["view1"])
            batch["view2"] = self.augment(batch["view2"])
        return batch

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self.model(batch["view1"], batch["view2"], batch["scene_id"])
        n = batch["view1"].shape[0]
        self.log("loss", out.loss.detach(), prog_bar=True, batch_size=n)
        self.log("loss_c", out.loss_c, prog_bar=True, batch_size=n)
        if out.loss_d is not None:
            self.log("loss_d", out.loss_d, prog_bar=True, batch_size=n)
        self.log("false_neg_per_query", out.false_negatives_per_query, batch_size=n)
        self.log("pos_sim", out.positive_similarity, batch_size=n)
        self.log("queue_filled", self.model.queue_valid.float().mean(), batch_size=n)
        self.log("lr", self.optimizers().param_groups[0]["lr"], batch_size=n)
        return out.loss

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        lr = self.cfg.resolved["lr"]
        opt = torch.optim.SGD(
            params, lr=lr, momentum=self.cfg.sgd_momentum, weight_decay=self.cfg.weight_decay
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = self.cfg.warmup_steps

        def factor(step: int) -> float:
            if warmup and step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class EncoderExport(Callback):
    """Writes ``encoder.pt`` (+ ``encoder.json``) whenever a checkpoint is saved and at the end."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def _write(self, trainer: L.Trainer, module: SwiMDiffPretrainModule) -> None:
        if not trainer.is_global_zero:
            return
        enc = module.model.encoder_q
        state = {k: v.detach().cpu().clone() for k, v in enc.state_dict().items()}
        tmp = self.out / "encoder.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.out / "encoder.pt")
        res = module.cfg.resolved
        meta = {
            "arch": module.cfg.arch,
            "in_channels": enc.in_channels,
            "stage_channels": list(enc.stage_channels),
            "bands": list(res["bands"]),
            "input_scale": res["input_scale"],
            "input_standardized": module.cfg.standardize_input,
            "band_mean": res["band_mean"],
            "band_std": res["band_std"],
            "global_step": int(trainer.global_step),
        }
        (self.out / "encoder.json").write_text(json.dumps(meta, indent=2))

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self._write(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._write(trainer, pl_module)


class FinalCheckpoint(Callback):
    """Writes ``last.ckpt`` when training ends (ModelCheckpoint only saves every N steps)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_end(self, trainer, pl_module) -> None:
        trainer.save_checkpoint(self.path)  # every rank calls it; rank 0 writes


class SigtermCheckpoint(Callback):
    """On SIGTERM (preemption, ``kill``), writes ``last.ckpt`` before Lightning stops.

    Lightning notices the signal at the end of the running step and raises its
    ``SIGTERMException`` there, so the checkpoint holds a whole step.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and trainer.global_step > 0:
            trainer.save_checkpoint(self.path)  # every rank calls it; rank 0 writes
            if trainer.is_global_zero:
                logger.warning(
                    "SIGTERM: stopped at step %d, %s written; continue with --resume auto",
                    trainer.global_step,
                    self.path,
                )


class RunStart(Callback):
    """Once training really starts (a resumed checkpoint has loaded): replaces the files of an
    earlier run that ``overwrite`` starts over, and writes ``config.yaml``."""

    def __init__(self, out: Path, config: PretrainConfig) -> None:
        self.out, self.config = out, config

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        if not self.config.resolved.get("resumed_from"):
            for name in RUN_FILES:  # a fresh start: nothing of an earlier run may remain
                (self.out / name).unlink(missing_ok=True)
            for copy in self.out.glob("last-v*.ckpt"):  # left by versions before 2026-11-22
                copy.unlink()
        written = self.config.to_dict()
        written["overwrite"] = False  # reusing this file as --config must not overwrite
        (self.out / "config.yaml").write_text(yaml.safe_dump(written, sort_keys=False))


class MetricsCSV(Callback):
    """Appends the logged metrics to ``metrics.csv`` every ``every`` steps (rank 0 only)."""

    COLUMNS = (
        "step",
        "elapsed_s",
        "epoch",
        "loss",
        "loss_c",
        "loss_d",
        "false_neg_per_query",
        "pos_sim",
        "queue_filled",
        "lr",
    )

    def __init__(self, path: Path, every: int) -> None:
        self.path, self.every = path, max(1, every)
        self._start: float | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()
        if trainer.is_global_zero and self.path.exists():
            # A resumed run restarts at its checkpoint's step: drop rows logged after it by
            # the interrupted run, so every step appears once.
            with self.path.open(newline="") as fh:
                rows = list(csv.DictReader(fh))
            kept = [r for r in rows if int(r["step"]) <= trainer.global_step]
            if len(kept) != len(rows):
                with self.path.open("w", newline="") as fh:
                    writer = csv.DictWriter(fh, fieldnames=self.COLUMNS)
                    writer.writeheader()
                    writer.writerows(kept)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero or (step % self.every and step != trainer.max_steps):
            return
        m = trainer.callback_metrics
        elapsed = time.perf_counter() - (self._start or time.perf_counter())
        row = {"step": step, "elapsed_s": f"{elapsed:.2f}", "epoch": trainer.current_epoch}
        for k in self.COLUMNS[3:]:
            row[k] = f"{float(m[k]):.6g}" if k in m else ""
        new = not self.path.exists()
        with self.path.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.COLUMNS)
            if new:
                writer.writeheader()
            writer.writerow(row)


def _parse_devices(devices: str | int) -> str | int | list[int]:
    text = str(devices).strip()
    if text.isdigit() or (text.startswith("-") and text[1:].isdigit()):
        return int(text)
    if "," in text:
        return [int(d) for d in text.split(",") if d.strip()]
    return text


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches as a function of the global step, so that a resumed run reads what an
    uninterrupted one reads.

    An epoch is ``len(self)`` steps; step ``s`` is batch ``b = s % len(self)`` of epoch
    ``e = s // len(self)``, and on rank ``r`` of ``world_size`` it reads the dataset keys
    ``(e, (b * world_size + r) * batch_size + i)`` (windows are a function of epoch and index,
    see :class:`PretrainWindowDataset`). Iteration starts at ``position()``, the trainer's
    global step, and runs to the end of that epoch. Replaces shuffling (the windows are random
    already) and Lightning's DistributedSampler.
    """

    def __init__(
        self,
        samples_per_epoch: int,
        batch_size: int,
        world_size: int = 1,
        rank: Callable[[], int] = lambda: 0,
        position: Callable[[], int] = lambda: 0,
    ) -> None:
        self.samples_per_epoch, self.batch_size, self.world_size = (
            samples_per_epoch,
            batch_size,
            world_size,
        )
        self.rank, self.position = rank, position

    def __len__(self) -> int:
        return max(1, self.samples_per_epoch // (self.batch_size * self.world_size))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, first = divmod(int(self.position()), len(self))
        rank = int(self.rank())
        for b in range(first, len(self)):
            start = (b * self.world_size + rank) * self.batch_size
            yield [(epoch, start + i) for i in range(self.batch_size)]


def _collate(batch: list[dict]) -> dict:
    return {
        "view1": torch.stack([b["view1"] for b in batch]),
        "view2": torch.stack([b["view2"] for b in batch]),
        "scene_id": torch.stack([b["scene_id"] for b in batch]),
        "date1": [b["date1"] for b in batch],
        "date2": [b["date2"] for b in batch],
        "source": torch.tensor([b["source"] for b in batch]),
        "window": torch.stack([b["window"] for b in batch]),
    }


def _resolve_resume(cfg: PretrainConfig, out: Path) -> str | None:
    if not cfg.resume:
        return None
    if cfg.resume == "auto":
        last = out / "last.ckpt"
        return str(last) if last.is_file() else None
    if not Path(cfg.resume).is_file():
        raise FileNotFoundError(f"--resume {cfg.resume}: checkpoint not found")
    return cfg.resume


def _check_run_folder(cfg: PretrainConfig, out: Path, resume: str | None) -> None:
    """Refuse to start a fresh run over an earlier one unless ``overwrite`` says so."""
    if resume or cfg.overwrite or cfg.resume == "auto":
        return
    found = [name for name in RUN_FILES if (out / name).exists()]
    if found:
        raise FileExistsError(
            f"--out {out} already holds a run ({', '.join(found)}); pass --resume auto to "
            "continue it, --overwrite to start over in it, or choose another --out"
        )


def _check_resume_matches(cfg: PretrainConfig, resume: str, saved_config: dict[str, Any]) -> None:
    """Refuse to resume a checkpoint whose model options differ from ``cfg``'s."""
    try:
        saved = PretrainConfig.from_dict(
            {k: v for k, v in saved_config.items() if k in {f.name for f in fields(cfg)}}
        ).model_options()
    except (KeyError, TypeError, ValueError):
        return  # not one of ours: Lightning reports what does not fit
    now = cfg.model_options()
    diff = [
        f"--{k.replace('_', '-')} {_show(saved[k])} (now {_show(now[k])})"
        for k in MODEL_OPTIONS
        if saved[k] != now[k]
    ]
    if diff:
        raise ValueError(
            f"--resume {resume}: the checkpoint was trained with other model options: "
            + "; ".join(diff)
            + ". Resume with the run's options (its config.yaml works as --config), or start "
            "a new run in another --out"
        )


def _show(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)


def build_dataset(cfg: PretrainConfig) -> tuple[PretrainWindowDataset, dict[str, Any]]:
    """The window dataset of ``cfg`` and the band settings it resolves to."""
    spec = get_band_spec(cfg.band_spec)
    bands = list(cfg.bands) if cfg.bands else list(spec.bands)
    input_scale = spec.input_scale if cfg.input_scale is None else cfg.input_scale
    sources = build_sources(cfg.data, cfg.format, bands, cfg.nodata, default_bands=spec.bands)
    dataset = PretrainWindowDataset(
        sources,
        window_size=cfg.window_size or cfg.crop_size,
        samples_per_epoch=cfg.samples_per_epoch,
        temporal=cfg.temporal,
        input_scale=input_scale,
        max_nodata_fraction=cfg.max_nodata_fraction,
        scene_grid=cfg.scene_grid,
        seed=cfg.seed,
    )
    return dataset, {"bands": list(dataset.bands), "input_scale": input_scale}


def pretrain(cfg: PretrainConfig, callbacks: list[Callback] | None = None) -> Path:
    """Run SwiMDiff pretraining as configured; returns the output folder (see module doc).

    ``callbacks``: extra Lightning callbacks (monitoring, custom logging).
    """
    with lightning_noise_filtered(run_dir_is_ours=False):
        return _pretrain(cfg, list(callbacks or []))


def _pretrain(cfg: PretrainConfig, extra_callbacks: list[Callback]) -> Path:
    cfg.validate()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    resume = _resolve_resume(cfg, out)
    _check_run_folder(cfg, out, resume)
    saved: dict[str, Any] = {}
    if resume:
        # The checkpoint's band statistics and queue size define its buffers: reuse them.
        # Checked before any data is read: a mismatch would only show as a state_dict error.
        ckpt = torch.load(resume, map_location="cpu", weights_only=True)
        saved_config = ckpt.get("hyper_parameters", {}).get("config", {})
        del ckpt
        _check_resume_matches(cfg, resume, saved_config)
        saved = saved_config.get("resolved", {})

    dataset, band_info = build_dataset(cfg)

    accelerator = cfg.accelerator
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    devices = _parse_devices(cfg.devices)
    multi = cfg.num_nodes > 1 or (devices not in ("auto", 1, [0]) and devices != 0)
    sync_bn = cfg.sync_batchnorm and accelerator != "cpu"
    if multi and accelerator == "cpu":
        logger.warning(
            "CPU DDP (gloo): BatchNorm statistics are per process (SyncBatchNorm "
            "needs GPUs); negatives and false-negative masks are still global"
        )

    callbacks: list[Callback] = [
        RunStart(out, cfg),
        ModelCheckpoint(
            dirpath=out,
            filename="step{step:07d}",
            auto_insert_metric_name=False,
            save_top_k=0,
            save_last=True,
            every_n_train_steps=max(1, cfg.checkpoint_every),
            save_on_train_epoch_end=True,
            # last.ckpt is also written by FinalCheckpoint / SigtermCheckpoint and by earlier
            # runs: rewrite it, rather than add a full-size last-v1.ckpt, -v2, ... each time
            enable_version_counter=False,
        ),
        FinalCheckpoint(out / "last.ckpt"),
        SigtermCheckpoint(out / "last.ckpt"),
        EncoderExport(out),
        MetricsCSV(out / "metrics.csv", cfg.log_every),
    ]
    if cfg.progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=1))
    callbacks += extra_callbacks
    try:
        trainer = _trainer(cfg, accelerator, devices, multi, sync_bn, out, callbacks)
    except MisconfigurationException as exc:
        raise ValueError(
            f"--accelerator {cfg.accelerator} --devices {cfg.devices} --precision "
            f"{cfg.precision}: {exc}"
        ) from None

    global_batch = cfg.batch_size * trainer.world_size
    if len(dataset) < global_batch:
        raise ValueError(
            f"{cfg.data}: {len(dataset)} windows per epoch is less than one global batch "
            f"({global_batch}); raise --samples-per-epoch or lower --batch-size"
        )

    if saved:
        band_mean, band_std = saved["band_mean"], saved["band_std"]
        queue_size = saved["queue_size"]
    elif cfg.band_mean is not None:
        band_mean, band_std = list(cfg.band_mean), list(cfg.band_std or [])
        queue_size = effective_queue_size(cfg.queue_size, len(dataset), global_batch)
    else:
        band_mean, band_std = compute_band_stats(dataset, cfg.stats_samples)
        queue_size = effective_queue_size(cfg.queue_size, len(dataset), global_batch)
    if len(band_mean) != len(band_info["bands"]) or len(band_std) != len(band_info["bands"]):
        raise ValueError(
            f"band_mean/band_std have {len(band_mean)}/{len(band_std)} values for "
            f"{len(band_info['bands'])} bands ({','.join(band_info['bands'])})"
        )
    lr = cfg.lr if cfg.lr is not None else cfg.base_lr * global_batch / 256
    cfg.resolved = {
        **band_info,
        "band_mean": [float(v) for v in band_mean],
        "band_std": [float(v) for v in band_std],
        "queue_size": int(queue_size),
        "lr": float(lr),
        "global_batch": int(global_batch),
        "world_size": int(trainer.world_size),
        "samples_per_epoch": len(dataset),
        "num_scenes": len(dataset.scene_names),
        "resumed_from": resume,
    }
    logger.info(
        "pretraining: %d windows/epoch from %d rasters, %d scenes, queue %d, lr %.4g",
        len(dataset),
        len(dataset.sources),
        len(dataset.scene_names),
        queue_size,
        lr,
    )

    # Every batch is full (all_gather needs the same batch size on every process) and a
    # function of the global step (see StepBatchSampler).
    sampler = StepBatchSampler(
        len(dataset),
        cfg.batch_size,
        trainer.world_size,
        rank=lambda: trainer.global_rank,
        position=lambda: trainer.global_step,
    )
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=cfg.num_workers,
        collate_fn=_collate,
        persistent_workers=False,
        pin_memory=accelerator == "gpu",
    )
    module = SwiMDiffPretrainModule(cfg.to_dict())
    with warnings.catch_warnings():
        # Lightning cannot see that the sampler resumes mid-epoch by itself.
        warnings.filterwarnings("ignore", message=".*dataloader is\\s+not resumable")
        trainer.fit(module, train_dataloaders=loader, ckpt_path=resume)
    return out


def _trainer(
    cfg: PretrainConfig,
    accelerator: str,
    devices: str | int | list[int],
    multi: bool,
    sync_bn: bool,
    out: Path,
    callbacks: list[Callback],
) -> L.Trainer:
    return L.Trainer(
        accelerator=accelerator,
        devices=devices,
        num_nodes=cfg.num_nodes,
        strategy="ddp" if multi else "auto",
        precision=cfg.precision,
        sync_batchnorm=sync_bn,
        max_steps=cfg.max_steps,
        max_epochs=cfg.max_epochs
        if cfg.max_epochs is not None
        else (-1 if cfg.max_steps > 0 else None),
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=cfg.progress_bar,
        enable_model_summary=False,
        default_root_dir=str(out),
        log_every_n_steps=max(1, cfg.log_every),
        deterministic=False,
        use_distributed_sampler=False,  # StepBatchSampler splits the windows by rank
    )
