"""End-to-end pretraining on real Sentinel-2 windows: learning, outputs, stop-and-resume, CLI."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from click.testing import CliRunner

from swimdiff_geo.models.encoder import build_encoder
from swimdiff_geo.train.pretrain import PretrainConfig, effective_queue_size, pretrain

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
