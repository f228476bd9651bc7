"""End-to-end pretraining on real Sentinel-2 windows: learning, outputs, stop-and-resume, CLI."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from swimdiff_geo.models.encoder import build_encoder
from swimdiff_geo.train.pretrain import (
    PretrainConfig,
    build_dataset,
    effective_queue_size,
    pretrain,
)

REPO = Path(__file__).resolve().parents[2]
OSCD_MINI = REPO / "tests" / "data" / "oscd_mini"
S2_PAIR = REPO / "sample_data" / "s2_pair"

# Small but real: 13-band OSCD windows, ResNet-18, a narrow denoiser, CPU.
FAST = dict(data=str(OSCD_MINI), crop_size=32, batch_size=4, samples_per_epoch=16,
            unet_channels=16, num_workers=0, accelerator="cpu", devices="1",
            progress_bar=False, stats_samples=8, log_every=1)  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _metrics(out: Path) -> list[dict[str, str]]:
    with (out / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_thirty_steps_lower_the_loss(tmp_path) -> None:
    # The real Sentinel-2 pair of sample_data/ as one scene at two dates (temporal positives).
    manifest = tmp_path / "s2_pair.csv"
    manifest.write_text(
        "path,scene_id,date\n"
        f"{S2_PAIR / 's2_date_a.tif'},lasvegas,20150820\n"
        f"{S2_PAIR / 's2_date_b.tif'},lasvegas,20180205\n"
    )
    out = tmp_path / "run"
    options = dict(FAST, data=str(manifest), temporal=True)
    cfg = PretrainConfig(**options, out=str(out), max_steps=30, lr=0.05, queue_size=8,
                         checkpoint_every=30)  # fmt: skip
    pretrain(cfg)
    rows = _metrics(out)
    assert [int(r["step"]) for r in rows] == list(range(1, 31))
    loss = [float(r["loss"]) for r in rows]
    loss_d = [float(r["loss_d"]) for r in rows]
    assert all(r["loss_c"] and r["loss_d"] for r in rows)
    # The queue (8 = two batches) is full from step 3 on: compare like with like.
    first, last = sum(loss[2:8]) / 6, sum(loss[-6:]) / 6
    assert last < first, (first, last)
    assert sum(loss_d[-6:]) / 6 < sum(loss_d[:6]) / 6

    # Outputs: a plain torchvision-keyed encoder, its description, the resolved config.
    state = torch.load(out / "encoder.pt", weights_only=True)
    assert next(iter(state)) == "conv1.weight" and "layer4.1.bn2.running_var" in state
    assert state["conv1.weight"].shape == (64, 13, 7, 7)
    enc = build_encoder("resnet18", 13, init_weights=out / "encoder.pt")
    ckpt = torch.load(out / "last.ckpt", weights_only=False)
    torch.testing.assert_close(enc.conv1.weight, ckpt["state_dict"]["model.encoder_q.conv1.weight"])
    resolved = yaml.safe_load((out / "config.yaml").read_text())["resolved"]
    assert resolved["queue_size"] == 8 and len(resolved["band_mean"]) == 13
    assert resolved["bands"][8] == "B8A"


class _RecordStart(L.Callback):
    """Captures the state training starts from (after a checkpoint is restored)."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.step = trainer.global_step
        self.queue_keys = pl_module.model.queue_keys.clone()
        self.queue_ids = pl_module.model.queue_ids.clone()
        self.queue_ptr = int(pl_module.model.queue_ptr)
        self.key_conv1 = pl_module.model.encoder_k.conv1.weight.detach().clone()
        opt = trainer.optimizers[0]
        self.momentum_buffers = [
            opt.state[p]["momentum_buffer"].clone() if "momentum_buffer" in opt.state[p] else None
            for p in opt.param_groups[0]["params"]
        ]


def test_stop_and_resume_continues_where_it_stopped(tmp_path) -> None:
    out = tmp_path / "run"
    base = dict(FAST, out=str(out), queue_size=12, checkpoint_every=2)
    pretrain(PretrainConfig(**base, max_steps=4))
    saved = torch.load(out / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 4

    # As if the first run had been killed after logging step 5 but before checkpointing it.
    with (out / "metrics.csv").open("a") as fh:
        fh.write("5,99.0,1,9,9,9,0,0,1,0\n")
    probe = _RecordStart()
    pretrain(PretrainConfig(**base, max_steps=7, resume="auto"), callbacks=[probe])
    # Training resumed at step 4 with the queue, its ids, the EMA encoder and the optimiser.
    sd = saved["state_dict"]
    assert probe.step == 4
    torch.testing.assert_close(probe.queue_keys, sd["model.queue_keys"])
    assert probe.queue_ids.tolist() == sd["model.queue_ids"].tolist()
    assert probe.queue_ptr == int(sd["model.queue_ptr"]) == (4 * 4) % 12
    torch.testing.assert_close(probe.key_conv1, sd["model.encoder_k.conv1.weight"])
    saved_buffers = [s["momentum_buffer"] for s in saved["optimizer_states"][0]["state"].values()]
    assert all(b is not None for b in probe.momentum_buffers)
    torch.testing.assert_close(probe.momentum_buffers[0], saved_buffers[0])

    assert [int(r["step"]) for r in _metrics(out)] == list(range(1, 8))  # no restart from 0
    assert torch.load(out / "last.ckpt", weights_only=False)["global_step"] == 7


def test_effective_queue_size_is_at_most_one_epoch() -> None:
    assert effective_queue_size(16384, 4278, 16) == 4272
    assert effective_queue_size(256, 4278, 16) == 256
    assert effective_queue_size(16384, 10, 16) == 16


def test_cli_with_config_file_and_overrides(tmp_path, capfd, caplog) -> None:
    from swimdiff_geo.cli.pretrain import pretrain as pretrain_command

    config = tmp_path / "pretrain.yaml"
    options = {k.replace("_", "-"): v for k, v in FAST.items()}
    config.write_text(yaml.safe_dump({**options, "max-steps": 50, "lambda-d": 0.0}))
    out = tmp_path / "cli_run"
    result = CliRunner().invoke(
        pretrain_command,
        ["--config", str(config), "--out", str(out), "--max-steps", "2", "--swm-mode", "remove"],
    )
    assert result.exit_code == 0, result.output
    said = result.output + capfd.readouterr().err + caplog.text
    assert "litlogger" not in said and "LeafSpec" not in said  # Lightning's noise is filtered
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["max_steps"] == 2 and written["swm_mode"] == "remove"  # CLI wins
    assert written["lambda_d"] == 0.0 and written["crop_size"] == 32  # from the file
    rows = _metrics(out)
    assert len(rows) == 2 and all(r["loss_d"] == "" for r in rows)  # no denoiser was run

    bad = CliRunner().invoke(pretrain_command, ["--config", str(config), "--out", str(out),
                                                "--batch-size", "1"])  # fmt: skip
    assert bad.exit_code == 2 and "--batch-size" in bad.output
    config.write_text("crop-size: 32\nno-such-option: 1\n")
    bad = CliRunner().invoke(pretrain_command, ["--config", str(config)])
    assert bad.exit_code == 2 and "no_such_option" in bad.output


def test_cli_without_torch_says_what_to_install(tmp_path) -> None:
    # A base install has no torch: simulate it by making `import torch` fail.
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from click.testing import CliRunner\n"
        "from swimdiff_geo.cli.pretrain import pretrain\n"
        f"r = CliRunner().invoke(pretrain, ['--data', {str(OSCD_MINI)!r}, '--out', 'x'])\n"
        "print(r.exit_code); print(r.output)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    exit_code, _, message = proc.stdout.partition("\n")
    assert exit_code == "1"
    assert "swimdiff-geo[train]" in message


@pytest.mark.parametrize("bad", [{"crop_size": 4}, {"max_steps": -1}, {"rrc_scale": (0.9, 0.5)}])
def test_config_validation_names_the_option(bad) -> None:
    cfg = PretrainConfig(data="x", out="y", max_steps=1)
    for k, v in bad.items():
        setattr(cfg, k, v)
    with pytest.raises(ValueError, match=r"--(crop-size|max-steps|rrc-scale)"):
        cfg.validate()


def test_every_config_option_has_a_cli_flag() -> None:
    from dataclasses import fields

    from swimdiff_geo.cli.pretrain import pretrain as pretrain_command

    flags = {opt.lstrip("-") for p in pretrain_command.params for opt in p.opts}
    missing = [
        f.name
        for f in fields(PretrainConfig)
        if f.name != "resolved" and f.name.replace("_", "-") not in flags
    ]
    assert missing == []


def test_init_weights_from_a_three_band_checkpoint(tmp_path) -> None:
    from swimdiff_geo.models.encoder import ResNetEncoder

    torch.manual_seed(0)
    rgb = ResNetEncoder("resnet18", in_channels=3, num_classes=1000)  # torchvision layout
    weights = tmp_path / "rgb.pth"
    torch.save(rgb.state_dict(), weights)
    out = tmp_path / "run"
    # resume=auto on an empty folder is a fresh start: the init weights must be used.
    cfg = PretrainConfig(**FAST, out=str(out), max_steps=1, lr=1e-12, init_weights=str(weights),
                         resume="auto")  # fmt: skip
    pretrain(cfg)
    state = torch.load(out / "encoder.pt", weights_only=True)
    torch.testing.assert_close(state["layer4.1.conv2.weight"], rgb.layer4[1].conv2.weight.detach())
    torch.testing.assert_close(
        state["conv1.weight"][:, 3], rgb.conv1.weight.detach()[:, 0] * 3 / 13
    )


def _cli(*args: str):
    from swimdiff_geo.cli.pretrain import pretrain as pretrain_command

    return CliRunner().invoke(pretrain_command, [str(a) for a in args])


CLI_FAST = ["--data", OSCD_MINI, "--crop-size", "32", "--batch-size", "4", "--samples-per-epoch",
            "16", "--unet-channels", "16", "--num-workers", "0", "--accelerator", "cpu",
            "--devices", "1", "--no-progress-bar", "--stats-samples", "8", "--log-every", "1",
            "--threads", "1"]  # fmt: skip


def test_an_earlier_run_is_kept_unless_resumed_or_overwritten(tmp_path) -> None:
    out = tmp_path / "run"
    first = _cli(*CLI_FAST, "--out", out, "--max-steps", "2")
    assert first.exit_code == 0, first.output
    before = {n: (out / n).read_bytes() for n in ("last.ckpt", "config.yaml", "metrics.csv")}

    again = _cli(*CLI_FAST, "--out", out, "--max-steps", "2", "--lr", "0.5")
    assert again.exit_code == 1
    assert f"--out {out} already holds a run" in again.output
    assert "--resume auto" in again.output and "--overwrite" in again.output
    assert {n: (out / n).read_bytes() for n in before} == before  # nothing touched

    over = _cli(*CLI_FAST, "--out", out, "--max-steps", "1", "--lr", "0.5", "--overwrite")
    assert over.exit_code == 0, over.output
    assert [int(r["step"]) for r in _metrics(out)] == [1]  # a new run, not appended to the old
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["lr"] == 0.5 and written["overwrite"] is False


def test_resume_with_other_model_options_is_refused_before_anything_changes(tmp_path) -> None:
    out = tmp_path / "run"
    assert _cli(*CLI_FAST, "--out", out, "--max-steps", "1").exit_code == 0
    config = (out / "config.yaml").read_bytes()
    other = _cli(*CLI_FAST, "--out", out, "--max-steps", "2", "--resume", "auto", "--arch",
                 "resnet50", "--bands", "B02,B03,B04,B08")  # fmt: skip
    assert other.exit_code == 1, other.output
    assert "other model options" in other.output
    assert "--arch resnet18 (now resnet50)" in other.output
    assert "--bands B01,B02,B03,B04,B05,B06,B07,B08,B8A,B09,B10,B11,B12 (now B02,B03,B04,B08)" in (
        other.output
    )
    assert "size mismatch" not in other.output and "Traceback" not in other.output
    assert (out / "config.yaml").read_bytes() == config  # written only when a run starts


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("max_nodata_fraction: 7", "max_nodata_fraction"),
        ("lr: fast", "lr"),
        ("tau: [1, 2]", "tau"),
        ("tau: -1", "tau"),
        ("momentum: 5", "momentum"),
        ("temporal: maybe", "temporal"),
        ("queue-size: many", "queue-size"),
        ("rrc_scale: [0.5, x]", "rrc_scale"),
    ],
)
def test_config_file_values_are_checked_like_flags(tmp_path, text, key) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text + "\n")
    (tmp_path / "empty").mkdir()  # reading this --data would fail with exit 1, not 2
    result = _cli("--config", config, "--data", tmp_path / "empty", "--out", tmp_path / "o",
                  "--max-steps", "1")  # fmt: skip
    assert result.exit_code == 2, result.output
    assert f"bad.yaml: {key}:" in result.output
    assert not (tmp_path / "o").exists()


def test_config_file_strings_convert_like_flags(tmp_path) -> None:
    config = tmp_path / "ok.yaml"
    config.write_text("temporal: 'no'\nqueue_size: '12'\nrrc-scale: [0.6, 0.9]\nlr: null\n")
    out = tmp_path / "run"
    result = _cli("--config", config, *CLI_FAST, "--out", out, "--max-steps", "1")
    assert result.exit_code == 0, result.output
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["temporal"] is False and written["queue_size"] == 12
    assert written["rrc_scale"] == [0.6, 0.9] and written["lr"] is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--band-spec", "nope"], "--band-spec: unknown band spec 'nope'"),
        (["--devices", "0"], "--devices 0: give a positive number"),
        (["--devices", "a,b"], "--devices a,b: expected a number"),
    ]
    + (
        []
        if torch.cuda.is_available()
        else [(["--accelerator", "gpu"], "--accelerator gpu: no CUDA GPU is visible")]
    ),
)
def test_bad_hardware_and_band_options_are_usage_errors(tmp_path, args, message) -> None:
    result = _cli("--data", OSCD_MINI, "--out", tmp_path / "o", "--max-steps", "1", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert isinstance(result.exception, SystemExit)  # a message, not a traceback


def test_undescribed_files_follow_the_band_spec(tmp_path) -> None:
    import rasterio

    src = REPO / "sample_data" / "landsat_pucallpa" / "landsat_2020.tif"
    with rasterio.open(src) as f:
        profile, data = f.profile, f.read()
    folder = tmp_path / "landsat"
    folder.mkdir()
    with rasterio.open(folder / "undescribed.tif", "w", **profile) as dst:
        dst.write(data)  # no band descriptions
    spec = "landsat_swir1_nir_red_green_u8"
    dataset, info = build_dataset(PretrainConfig(data=str(folder), band_spec=spec, crop_size=32))
    assert info["bands"] == ["SWIR1", "NIR", "RED", "GREEN"]
    dataset, info = build_dataset(
        PretrainConfig(data=str(folder), band_spec=spec, bands=["RED", "NIR"], crop_size=32)
    )
    sample = dataset[0]
    r, c = sample["window"].tolist()
    expected = data[[2, 1], r : r + 32, c : c + 32] / 255.0
    np.testing.assert_allclose(sample["view1"].numpy(), expected, rtol=1e-6)


def test_sigterm_exits_143_with_a_checkpoint_to_resume_from(tmp_path) -> None:
    out = tmp_path / "run"
    command = [sys.executable, "-m", "swimdiff_geo.cli.main", "pretrain", *map(str, CLI_FAST),
               "--out", str(out), "--checkpoint-every", "1000"]  # fmt: skip
    proc = subprocess.Popen([*command, "--max-steps", "500"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        # Wait (not a timing assertion: a guard against a hung run) for two logged steps.
        deadline = time.monotonic() + 300
        while not ((out / "metrics.csv").exists() and len(_metrics(out)) >= 2):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGTERM)
        log, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, log
    assert "stopped by SIGTERM" in log and "Traceback" not in log
    stopped = int(_metrics(out)[-1]["step"])
    assert 2 <= stopped < 500
    # --checkpoint-every 1000: last.ckpt can only come from the SIGTERM handler.
    assert torch.load(out / "last.ckpt", weights_only=False)["global_step"] == stopped

    resumed = subprocess.run([*command, "--max-steps", str(stopped + 2), "--resume", "auto"],
                             cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert [int(r["step"]) for r in _metrics(out)] == list(range(1, stopped + 3))


class _StopAt(L.Callback):
    """Stops training after step ``step``, as an interruption would (checkpoint at the end)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            trainer.should_stop = True


def test_a_resumed_run_repeats_an_uninterrupted_one(tmp_path) -> None:
    # 4 steps per epoch: the interruption at step 3 is mid-epoch, the run crosses an epoch end.
    base = dict(FAST, queue_size=8, checkpoint_every=100, lr=0.05)
    whole = tmp_path / "whole"
    pretrain(PretrainConfig(**base, out=str(whole), max_steps=6))
    split = tmp_path / "split"
    pretrain(PretrainConfig(**base, out=str(split), max_steps=6), callbacks=[_StopAt(3)])
    assert [int(r["step"]) for r in _metrics(split)] == [1, 2, 3]
    pretrain(PretrainConfig(**base, out=str(split), max_steps=6, resume="auto"))
    expected, got = _metrics(whole), _metrics(split)
    assert [int(r["step"]) for r in got] == list(range(1, 7))
    for key in ("loss", "loss_c", "loss_d", "pos_sim", "lr"):
        values = [float(r[key]) for r in got]
        np.testing.assert_allclose(
            values, [float(r[key]) for r in expected], rtol=1e-5, err_msg=key
        )


def test_more_steps_after_a_finished_run_follow_the_longer_schedule(tmp_path) -> None:
    out = tmp_path / "run"
    base = dict(FAST, out=str(out), queue_size=8, checkpoint_every=100, lr=0.04)
    pretrain(PretrainConfig(**base, max_steps=3))  # the cosine schedule ends at lr 0
    pretrain(PretrainConfig(**base, max_steps=6, resume="auto"))
    # one last.ckpt, rewritten: no last-v1.ckpt copy of a whole checkpoint per run
    assert sorted(p.name for p in out.glob("*.ckpt")) == ["last.ckpt"]
    lr = {int(r["step"]): float(r["lr"]) for r in _metrics(out)}
    # Step 4 (schedule position 3 of 6) runs at 0.04 * (1 + cos(pi / 2)) / 2 = 0.02, not 0.
    assert lr[4] == pytest.approx(0.02, rel=1e-5)
    assert lr[6] == pytest.approx(0.04 * (1 + np.cos(np.pi * 5 / 6)) / 2, rel=1e-5)
