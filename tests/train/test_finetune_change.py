"""End to end on tiny real data: fine-tune the change model on OSCD-layout crops (imagery from
OSCD, labels of our own), export it to ONNX and run it through the engine."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner
from swimdiff_geo.cli.main import cli

from swimdiff_geo.data.change import IGNORE_INDEX, BandScaling, TiledChangeWindows
from swimdiff_geo.data.oscd import OSCDCity
from swimdiff_geo.inference.contract import load_model
from swimdiff_geo.train.finetune import (
    epoch_history,
    evaluate_change,
    finetune_change,
    load_head_checkpoint,
)
from tests.datasets.test_change_data import _scene, write_city_pair
from tests.datasets.test_oscd import OSCD_MINI, build_oscd_labelled

TINY = ["--epochs", "1", "--batch-size", "4", "--crop-size", "32", "--samples-per-epoch", "4",
        "--val-tile", "48"]  # fmt: skip


@pytest.fixture(scope="module")
def oscd_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_oscd_labelled(tmp_path_factory.mktemp("oscd") / "oscd")


@pytest.fixture(scope="module")
def trained(oscd_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch through the CLI: train on beihai, validate on saclay_e (a coarser date 2)."""
    out = tmp_path_factory.mktemp("run")
    result = CliRunner().invoke(
        cli,
        ["finetune", "change", "--data", str(oscd_root), "--train-cities", "beihai",
         "--val-cities", "saclay_e", "--normalize", "standardize", "--radiometric-jitter", "0.1",
         "--encoder-lr-mult", "0.5", "--out", str(out), *TINY],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "best epoch 0" in result.output
    return out


def test_run_writes_checkpoints_logs_and_metrics(trained: Path) -> None:
    assert (trained / "best.ckpt").is_file() and (trained / "last.ckpt").is_file()
    rows = epoch_history(trained)
    logged = {k for r in rows for k in r}
    assert {"val_f1", "val_precision", "val_recall", "val_iou", "train_loss"} <= logged
    summary = json.loads((trained / "metrics.json").read_text())
    assert summary["data"]["train"] == ["beihai"] and summary["data"]["val"] == ["saclay_e"]
    assert summary["radiometric_jitter"] == 0.1 and summary["encoder_lr_mult"] == 0.5
    scores = summary["per_scene"]["saclay_e"]
    # Every pixel of the validation city counted exactly once.
    h, w = OSCDCity(OSCD_MINI, "saclay_e").shape
    assert scores["tp"] + scores["fp"] + scores["tn"] + scores["fn"] == h * w
    assert summary["per_scene"]["all"]["f1"] == pytest.approx(scores["f1"])
    # The per-epoch torchmetrics F1 over all validation pixels is the same number.
    assert summary["best"]["val_f1"] == pytest.approx(scores["f1"], abs=1e-6)


def test_change_scores_count_what_the_validation_counts() -> None:
    """evaluate_change (metrics.json, the benchmarks' tables) counts each pixel with the
    prediction of the tile the validation during training counts it in, also where the last
    tiles overlap their neighbours: with a prediction that depends on where a pixel lies in its
    window, as a network's does, the counts equal those over TiledChangeWindows' labels."""
    scene, tile, scaling = _scene(45, 46), 20, BandScaling(1e-4)
    ramp = np.linspace(0.0, 1.0, tile * tile, dtype=np.float32).reshape(tile, tile)

    def predict(batch: np.ndarray) -> np.ndarray:  # (N, 26, T, T) -> (N, 1, T, T)
        brighter = (batch[:, :1] > batch[:, 13:14]).astype(np.float32)
        return 0.6 * ramp + 0.4 * brighter

    expected = np.zeros(4, np.int64)  # tp, fp, fn, tn
    tiles = TiledChangeWindows([scene], scaling, tile)
    for i in range(len(tiles)):
        x, y, _ = tiles[i]
        changed, labels = predict(x[None].numpy())[0, 0] >= 0.5, y.numpy()
        valid, truth = labels != IGNORE_INDEX, labels == 1
        cells = (changed & truth, changed & ~truth, ~changed & truth, ~changed & ~truth)
        expected += [(cell & valid).sum() for cell in cells]
    scores = evaluate_change(predict, [scene], scaling, tile)
    assert [scores["s"][k] for k in ("tp", "fp", "fn", "tn")] == expected.tolist()
    assert expected.sum() == 45 * 46 and expected[0] > 0 and expected[1] > 0
    assert scores["all"] == scores["s"]


def test_checkpoint_carries_the_model_contract(trained: Path) -> None:
    task = load_head_checkpoint(trained / "best.ckpt")
    contract = task.hparams.contract
    assert contract["bands"] == list(OSCDCity.bands) and contract["num_dates"] == 2
    assert contract["input_scale"] == 1e-4 and len(contract["standardization_mean"]) == 13
    assert contract["tile_size"] == 48 and contract["threshold"] == 0.5
    assert contract["resolution"] == 1000.0


def _full_scene_probabilities(ckpt: Path, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    task = load_head_checkpoint(ckpt)
    c = task.hparams.contract
    scaling = BandScaling.from_contract(c)
    x = torch.from_numpy(scaling.apply(np.concatenate([a, b]))[None])
    with torch.no_grad():
        return torch.sigmoid(task.model(x))[0, 0].numpy()


def test_export_and_engine_reproduce_pytorch(trained: Path, tmp_path: Path) -> None:
    from swimdiff_geo.inference.change import ChangeOptions, ChangeOutputs, detect_change

    onnx_path = tmp_path / "change.onnx"
    result = CliRunner().invoke(cli, ["export", str(trained / "best.ckpt"), "-o", str(onnx_path)])
    assert result.exit_code == 0, result.output
    assert "max |torch - onnxruntime|" in result.output
    loaded = load_model(onnx_path, expected_type="change_detection")
    assert loaded.contract.bands == list(OSCDCity.bands) and loaded.contract.tile_size == 48
    report = json.loads((tmp_path / "change.export.json").read_text())
    assert report["parity"]["max_abs_diff"] <= 1e-4

    # The engine on GeoTIFFs of the validation city: one 48 px window covers the 48 x 48 city.
    a, b, _ = write_city_pair("saclay_e", tmp_path / "pair")
    outputs = ChangeOutputs.in_dir(str(tmp_path / "engine"), polygons=True)
    summary = detect_change(str(a), str(b), outputs, ChangeOptions(model=str(onnx_path)))
    with rasterio.open(outputs.probability) as src:
        engine_prob = src.read(1)
    with rasterio.open(a) as sa, rasterio.open(b) as sb:
        reference = _full_scene_probabilities(
            trained / "best.ckpt", sa.read().astype(np.float32), sb.read().astype(np.float32)
        )
    assert engine_prob.shape == reference.shape == (48, 48)
    # Window padding may differ from PyTorch's whole-scene run near the edges only.
    inner = np.s_[8:-8, 8:-8]
    assert np.abs(engine_prob[inner] - reference[inner]).max() < 0.05
    with rasterio.open(outputs.mask) as src:
        mask = src.read(1)
    assert set(np.unique(mask)) <= {0, 1}
    np.testing.assert_array_equal(mask == 1, engine_prob >= 0.5)
    assert summary is not None


def test_frozen_encoder_weights_and_statistics_do_not_move(oscd_root: Path, tmp_path: Path) -> None:
    from swimdiff_geo.models.encoder import build_encoder

    torch.manual_seed(3)
    encoder_path = tmp_path / "encoder.pt"
    torch.save(build_encoder("resnet18", in_channels=13).state_dict(), encoder_path)
    before = torch.load(encoder_path, weights_only=True)
    finetune_change(
        oscd_root, tmp_path / "frozen", ["beihai"], ["saclay_e"], encoder=encoder_path,
        freeze_encoder=True, epochs=1, batch_size=4, crop_size=32, samples_per_epoch=4,
        val_tile=48, lr=1e-2, print_fn=lambda s: None,
    )  # fmt: skip
    task = load_head_checkpoint(tmp_path / "frozen" / "last.ckpt")
    after = task.model.encoder.state_dict()
    for key, value in before.items():  # weights and batch-norm running statistics
        torch.testing.assert_close(after[key], value, rtol=0, atol=0, msg=key)
    # ... while the decoder did train (it starts from the seeded initialisation below).
    from swimdiff_geo.train.finetune import build_head_model

    torch.manual_seed(0)  # finetune_change seeds with seed=0 before building the model
    untrained = build_head_model(task.hparams.model_cfg)
    changed = any(
        not torch.equal(p, q)
        for p, q in zip(
            untrained.decoder.parameters(), task.model.decoder.parameters(), strict=True
        )
    )
    assert changed


def test_encoder_learns_at_its_own_rate(trained: Path) -> None:
    task = load_head_checkpoint(trained / "last.ckpt")
    optimizer = task.configure_optimizers()["optimizer"]
    encoder_ids = {id(p) for p in task.model.encoder.parameters()}
    rates = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert len(rates) == len(list(task.model.parameters()))  # every parameter in one group
    for p in task.model.parameters():
        assert rates[id(p)] == pytest.approx(1e-3 * (0.5 if id(p) in encoder_ids else 1.0))


def test_bad_inputs_give_clear_errors(oscd_root: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        cli, ["finetune", "change", "--data", str(oscd_root), "--train-cities", "beihai",
              "--out", str(tmp_path / "x")],
    )  # fmt: skip
    assert result.exit_code == 1 and "--val-cities" in result.output
    result = runner.invoke(
        cli, ["finetune", "change", "--data", str(oscd_root), "--train-cities", "atlantis",
              "--val-cities", "saclay_e", "--out", str(tmp_path / "x")],
    )  # fmt: skip
    assert result.exit_code == 1 and "atlantis" in result.output
    # A validation city that is also trained on would measure memorisation: refused, named.
    result = runner.invoke(
        cli, ["finetune", "change", "--data", str(oscd_root), "--train-cities", "beihai,saclay_e",
              "--val-cities", "saclay_e", "--out", str(tmp_path / "x")],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "saclay_e: given in both --train-cities and --val-cities" in result.output
    assert not (tmp_path / "x").exists()


def test_manifest_pairs_train_and_resume(tmp_path: Path, capfd, caplog) -> None:
    """The user's own GeoTIFF pairs: band names from the descriptions, 16-bit -> DN / 10000;
    after the run folder is moved, a second call with more epochs and --resume continues from
    last.ckpt and still knows the best score (best.ckpt is not overwritten by a worse epoch).
    Lightning's noise stays out of the log; its warning about overwriting checkpoints stays in."""
    a1, b1, m1 = write_city_pair("beihai", tmp_path / "beihai")
    a2, b2, m2 = write_city_pair("saclay_e", tmp_path / "saclay")
    manifest = tmp_path / "pairs.csv"
    manifest.write_text(
        f"name,image_a,image_b,mask,split\nbeihai,{a1},{b1},{m1},train\nsaclay,{a2},{b2},{m2},val\n"
    )
    common = dict(
        batch_size=4, crop_size=32, samples_per_epoch=4, val_tile=48, print_fn=lambda s: None
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = finetune_change(manifest, tmp_path / "run", epochs=1, **common)
    said = capfd.readouterr().err + caplog.text + "".join(str(w.message) for w in caught)
    for noise in ("litlogger", "LeafSpec", "exists and is not empty"):
        assert noise not in said
    assert first["data"]["kind"] == "manifest"
    assert first["data"]["train"] == ["beihai"] and first["data"]["val"] == ["saclay"]
    contract = load_head_checkpoint(tmp_path / "run" / "best.ckpt").hparams.contract
    assert contract["bands"] == list(OSCDCity.bands) and contract["input_scale"] == 1e-4
    assert contract["resolution"] is None  # EPSG:4326 pixels have no size in metres
    run = (tmp_path / "run").rename(tmp_path / "moved")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        finetune_change(manifest, run, epochs=2, resume=True, **common)
    assert not [w for w in caught if "dirpath has changed" in str(w.message)]
    history = epoch_history(run)
    assert [r["epoch"] for r in history] == [0, 1]
    assert all("val_f1" in r for r in history)
    assert len(list((run / "logs").glob("version_*"))) == 2
    last = torch.load(run / "last.ckpt", weights_only=False)
    # last.ckpt is written after every epoch: epoch index 1, one optimiser step per epoch.
    assert last["epoch"] == 1 and last["global_step"] == 2
    # The best-checkpoint callback kept its state across the move: best of both epochs, in the
    # new folder, under the key a plain ModelCheckpoint uses (old runs resume with it).
    (key,) = [k for k in last["callbacks"] if "'monitor': 'val_f1'" in k]
    best = last["callbacks"][key]
    assert key.startswith("ModelCheckpoint{")
    assert float(best["best_model_score"]) == pytest.approx(max(r["val_f1"] for r in history))
    assert best["best_model_path"] == str(run / "best.ckpt")


def test_notes_when_normalisation_differs_from_pretraining(tmp_path: Path) -> None:
    """encoder.json (written by pretraining) says what the encoder saw; fine-tuning checks it."""
    import json

    from swimdiff_geo.data.change import BandScaling
    from swimdiff_geo.train.finetune import note_if_scaling_differs

    encoder_path = tmp_path / "encoder.pt"
    encoder_path.write_bytes(b"")  # only its encoder.json is read
    (tmp_path / "encoder.json").write_text(
        json.dumps({"input_scale": 1e-4, "input_standardized": False})
    )
    said: list[str] = []
    standardised = BandScaling(1e-4, [0.1] * 13, [0.05] * 13)
    assert note_if_scaling_differs(encoder_path, standardised, said.append)
    assert "--normalize scale" in said[0] and str(encoder_path) in said[0]
    assert not note_if_scaling_differs(encoder_path, BandScaling(1.0), said.append)
    assert not note_if_scaling_differs(None, standardised, said.append)
    assert not note_if_scaling_differs(tmp_path / "other" / "encoder.pt", standardised)
    assert len(said) == 1


SMALL = dict(batch_size=4, crop_size=32, samples_per_epoch=4, val_tile=48, radiometric_jitter=0.1)


@pytest.fixture(scope="module")
def two_epochs(oscd_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 2-epoch run (one batch per epoch: an epoch's train_loss is the loss of
    its windows under the weights the previous epoch left, whatever the learning rate)."""
    out = tmp_path_factory.mktemp("two") / "run"
    finetune_change(
        oscd_root, out, ["beihai"], ["saclay_e"], epochs=2, print_fn=lambda s: None, **SMALL
    )
    return out


def test_resumed_run_trains_on_the_windows_of_an_uninterrupted_run(
    oscd_root: Path, two_epochs: Path, tmp_path: Path
) -> None:
    """Stopped after epoch 0 and resumed, epoch 1 draws the windows (and augmentation and
    jitter) an uninterrupted run draws, not epoch 0's again: the losses agree."""
    run = tmp_path / "resumed"
    for epochs, resume in ((1, False), (2, True)):
        finetune_change(
            oscd_root, run, ["beihai"], ["saclay_e"], epochs=epochs, resume=resume,
            print_fn=lambda s: None, **SMALL,
        )  # fmt: skip
    uninterrupted, resumed = epoch_history(two_epochs), epoch_history(run)
    assert [r["epoch"] for r in resumed] == [0, 1]
    for epoch in (0, 1):
        assert resumed[epoch]["train_loss"] == pytest.approx(
            uninterrupted[epoch]["train_loss"], rel=1e-6, abs=1e-7
        ), epoch
    # ... and epoch 1 is not epoch 0 again (the windows depend on the epoch).
    assert uninterrupted[1]["train_loss"] != pytest.approx(uninterrupted[0]["train_loss"])


def test_window_sampling_is_a_function_of_seed_and_epoch() -> None:
    from swimdiff_geo.data.change import EpochSampler, RandomChangeWindows

    scene, scaling = _scene(80, 90), BandScaling(1e-4)
    ds = RandomChangeWindows([scene], scaling, 32, 6, radiometric_jitter=0.1, seed=5)
    sampler = EpochSampler(len(ds), seed=5)

    def epoch_windows(epoch: int) -> list[bytes]:
        torch.manual_seed(epoch + 100)  # torch's global generator plays no part
        sampler.set_epoch(epoch)
        return [ds[key][0].numpy().tobytes() for key in sampler]

    first, second = epoch_windows(0), epoch_windows(1)
    assert first == epoch_windows(0) and second == epoch_windows(1)
    assert not set(first) & set(second)
    other_seed = RandomChangeWindows([scene], scaling, 32, 6, radiometric_jitter=0.1, seed=6)
    assert other_seed[(0, 0)][0].numpy().tobytes() != ds[(0, 0)][0].numpy().tobytes()


def test_fresh_run_into_an_earlier_run_needs_resume_or_overwrite(
    oscd_root: Path, two_epochs: Path, tmp_path: Path
) -> None:
    """Without --resume or --overwrite a folder holding a run is refused (the new best.ckpt would
    sit beside the old run's history); --overwrite clears the old run so that metrics.json,
    the history and the summary describe the new run alone."""
    run = tmp_path / "run"
    shutil.copytree(two_epochs, run)
    (run / "notes.txt").write_text("mine")
    before = (run / "best.ckpt").read_bytes()
    args = ["finetune", "change", "--data", str(oscd_root), "--train-cities", "beihai",
            "--val-cities", "saclay_e", "--out", str(run), *TINY]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert f"{run}: holds an earlier run" in result.output and "--overwrite" in result.output
    assert (run / "best.ckpt").read_bytes() == before
    result = CliRunner().invoke(cli, [*args, "--resume", "--overwrite"])
    assert result.exit_code == 1 and "pick one" in result.output

    result = CliRunner().invoke(cli, [*args, "--overwrite", "--epochs", "1"])
    assert result.exit_code == 0, result.output
    assert "best epoch 0" in result.output
    summary = json.loads((run / "metrics.json").read_text())
    assert [r["epoch"] for r in summary["history"]] == [0]
    assert summary["best"]["epoch"] == 0 and summary["epochs"] == 1
    assert [p.name for p in (run / "logs").iterdir()] == ["version_0"]
    assert torch.load(run / "last.ckpt", weights_only=False)["epoch"] == 0
    assert (run / "notes.txt").read_text() == "mine"  # not a run's file: kept


def test_sigterm_stops_training_with_status_143_and_keeps_last_checkpoint(
    oscd_root: Path, tmp_path: Path
) -> None:
    """A scheduler's SIGTERM: Lightning stops after the current batch; the CLI exits with 143
    (128 + SIGTERM, not 0: the run did not finish) and last.ckpt of a finished epoch stays."""
    run = tmp_path / "run"
    command = [sys.executable, "-m", "swimdiff_geo.cli.main", "finetune", "change",
               "--data", str(oscd_root), "--train-cities", "beihai", "--val-cities", "saclay_e",
               "--out", str(run), *TINY, "--epochs", "500", "--threads", "1",
               "--accelerator", "cpu"]  # fmt: skip
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=os.environ | {"PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 600  # a bound against hanging, not a timing assertion
        while not (run / "last.ckpt").is_file() and proc.poll() is None:
            assert time.monotonic() < deadline, "no epoch finished"
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err
    assert "Stopped by SIGTERM" in err and "--resume" in err
    last = load_head_checkpoint(run / "last.ckpt")  # complete and loadable
    assert last.hparams.model_cfg["task"] == "change"
    assert torch.load(run / "last.ckpt", weights_only=False)["epoch"] < 499
