"""ONNX export: embedding models from encoder.pt, int8 quantisation, parity enforcement."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import rasterio
import torch
from click.testing import CliRunner
from swimdiff_geo.cli.main import cli

from swimdiff_geo.bands import SENTINEL2_L1C
from swimdiff_geo.export import (
    ExportError,
    add_water_mask,
    check_parity,
    export_model,
    export_onnx,
    load_export_source,
    real_windows,
)
from swimdiff_geo.inference.contract import load_model
from swimdiff_geo.inference.defaults import resolve_model_path
from swimdiff_geo.inference.errors import ModelError
from swimdiff_geo.models.encoder import build_encoder
from swimdiff_geo.train.finetune import finetune_change
from tests.conftest import water_on_each_date
from tests.datasets.test_landcover_data import RASTER
from tests.datasets.test_oscd import build_oscd_labelled
from tests.model_builders import (
    change_contract,
    pointwise_change_model,
    pointwise_segmentation_model,
    segmentation_contract,
)


@pytest.fixture(scope="module")
def change_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = build_oscd_labelled(tmp_path_factory.mktemp("oscd") / "oscd")
    out = tmp_path_factory.mktemp("run")
    finetune_change(
        root, out, ["beihai"], ["saclay_e"], epochs=1, batch_size=4, crop_size=32,
        samples_per_epoch=4, val_tile=32, print_fn=lambda s: None,
    )  # fmt: skip
    return out / "best.ckpt"


@pytest.fixture(scope="module")
def encoder_pt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("enc") / "encoder.pt"
    torch.save(build_encoder("resnet18", in_channels=13).state_dict(), path)
    return path


def test_encoder_exports_as_embedding_model(encoder_pt: Path, tmp_path: Path) -> None:
    out = tmp_path / "encoder.onnx"
    result = CliRunner().invoke(
        cli, ["export", str(encoder_pt), "-o", str(out), "--data", str(RASTER),
              "--input-scale", "1", "--tile-size", "64", "--exporter", "torchscript"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    loaded = load_model(out, expected_type="embedding")
    c = loaded.contract
    assert c.bands[9] == "B09" and c.num_dates == 1 and c.tile_size == 64
    assert c.extra["embedding_dim"] == 512 and c.extra["feature_stride"] == 32
    assert c.extra["outputs"] == ["embedding", "feature_map"]
    assert [o.name for o in loaded.session.get_outputs()] == ["embedding", "feature_map"]
    with rasterio.open(RASTER) as src:
        x = src.read(window=((0, 70), (0, 99)))[None].astype(np.float32)
    pooled, fmap = loaded.session.run(None, {loaded.input_name: np.concatenate([x, x[..., ::-1]])})
    assert pooled.shape == (2, 512) and fmap.shape == (2, 512, 3, 4)
    np.testing.assert_allclose(pooled, fmap.mean(axis=(2, 3)), atol=1e-5)
    encoder = build_encoder("resnet18", in_channels=13, init_weights=encoder_pt).eval()
    with torch.no_grad():
        ref = encoder(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(pooled[:1], ref, atol=1e-4)


def test_encoder_with_unknown_bands_needs_names(tmp_path: Path) -> None:
    path = tmp_path / "enc4.pt"
    torch.save(build_encoder("resnet18", in_channels=4).state_dict(), path)
    with pytest.raises(ExportError, match="takes 4 bands; name them with --bands"):
        load_export_source(path)
    source = load_export_source(path, bands=["RED", "GREEN", "BLUE", "NIR"], input_scale=1 / 255)
    assert source.contract.bands == ["RED", "GREEN", "BLUE", "NIR"]
    not_a_ckpt = tmp_path / "notes.pt"
    not_a_ckpt.write_text("hello")
    with pytest.raises(ExportError, match="not a torch checkpoint .*: not a ZIP archive"):
        load_export_source(not_a_ckpt)
    with pytest.raises(ExportError, match="is an ONNX model already"):
        load_export_source(resolve_model_path("s2_change_swimdiff"))


def test_parity_check_catches_a_different_graph(change_ckpt: Path, tmp_path: Path) -> None:
    source = load_export_source(change_ckpt)
    out = export_onnx(source, tmp_path / "change.onnx", exporter="torchscript")
    windows = real_windows(source, "val", 2)
    assert windows.shape == (2, 26, 32, 32)  # 2 of the 4 tiles of the 48 x 48 validation city
    report = check_parity(source, out, windows, print_fn=lambda s: None)
    assert report["max_abs_diff"] <= 1e-4
    with torch.no_grad():  # now PyTorch differs from the exported file
        source.module.model.decoder.head.bias += 0.5
    with pytest.raises(ExportError, match="parity check failed"):
        check_parity(source, out, windows, print_fn=lambda s: None)


def test_int8_export_reports_quality_and_speed(change_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "change.onnx"
    report = export_model(
        change_ckpt, out, int8=True, exporter="torchscript", print_fn=lambda s: None
    )
    int8 = report["int8"]
    assert Path(int8["onnx"]) == tmp_path / "change.int8.onnx"
    for key in ("f1_fp32", "f1_int8", "f1_change", "seconds_per_window_fp32",
                "seconds_per_window_int8", "speedup"):  # fmt: skip
        assert key in int8
    assert int8["size_mb_int8"] < 0.5 * int8["size_mb_fp32"]
    quantised = load_model(int8["onnx"], expected_type="change_detection")
    fp32 = load_model(out)
    assert quantised.contract.bands == fp32.contract.bands
    assert "quantization" in quantised.contract.extra
    ops = {n.op_type for n in onnx.load(int8["onnx"]).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    saved = json.loads((tmp_path / "change.export.json").read_text())
    assert saved["int8"]["f1_int8"] == pytest.approx(int8["f1_int8"])


def test_compressed_export_keeps_outputs_and_shrinks_the_file(
    change_ckpt: Path, tmp_path: Path
) -> None:
    out = tmp_path / "change.onnx"
    report = export_model(
        change_ckpt, out, compress=True, exporter="torchscript", print_fn=lambda s: None
    )["compressed"]
    small = Path(report["onnx"])
    assert small == tmp_path / "change.compressed.onnx"
    # ResNet-18 + decoder: layer4 and the first decoder block in int8, the rest fp16.
    assert report["size_mb_compressed"] < 0.4 * report["size_mb_fp32"]
    assert report["max_abs_diff"] < 5e-3  # probabilities
    assert abs(report["f1_change"]) < 0.02
    loaded = load_model(small, expected_type="change_detection")
    assert loaded.contract.bands == load_model(out).contract.bands
    assert "int8" in loaded.contract.extra["quantization"]
    assert "float16" in loaded.contract.extra["quantization"]


def test_compress_weights_rounds_large_convolutions_to_per_channel_int8(
    change_ckpt: Path, tmp_path: Path
) -> None:
    from swimdiff_geo.export import compress_weights

    source = load_export_source(change_ckpt)
    fp32 = export_onnx(source, tmp_path / "change.onnx", exporter="torchscript")
    small = compress_weights(fp32, tmp_path / "small.onnx", int8_min_elements=100_000)
    graph = onnx.load(str(small)).graph
    int8 = [i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert int8 and all(i.name.endswith(("__int8", "__zero")) for i in int8)
    assert sum(n.op_type == "DequantizeLinear" for n in graph.node) == len(int8) // 2
    windows = real_windows(source, "val", 2)
    a = load_model(fp32).session.run(None, {"input": windows})[0]
    b = load_model(small).session.run(None, {"input": windows})[0]
    assert np.abs(a - b).max() < 2e-2
    with pytest.raises(ExportError, match="already quantised"):
        compress_weights(small, tmp_path / "again.onnx")


def test_water_mask_zeroes_change_only_where_every_date_is_water(
    s2_water_pair, tmp_path: Path
) -> None:
    """Rio's shore: 744 px water on both dates (probability 0 after the mask), 760 px water on
    one date only and 800 px land (both kept as they were); the mask undoes the model's
    standardisation and input scale to read B03, B08 and B11 as digital numbers."""
    contract = change_contract(
        list(SENTINEL2_L1C.bands), input_scale=1e-4,
        standardization_mean=[0.1 + 0.02 * b for b in range(13)],  # differs per band
        standardization_std=[0.03 + 0.01 * b for b in range(13)],
    )  # fmt: skip
    plain = pointwise_change_model(str(tmp_path / "plain.onnx"), contract, 0.5, -1.0)
    masked = tmp_path / "masked.onnx"
    add_water_mask(plain, masked)
    loaded = load_model(masked, expected_type="change_detection")
    assert "B11 < 0.05" in loaded.contract.extra["water_mask"]["water"]
    raw = [rasterio.open(path).read().astype(np.float32) for path in s2_water_pair]
    x = np.concatenate([loaded.contract.scale(r) for r in raw])[None]
    run = {p: ort.InferenceSession(str(p)).run(None, {"x": x})[0][0, 0] for p in (plain, masked)}
    water, tie = water_on_each_date(s2_water_pair)
    both, rest = water.all(axis=0) & ~tie, ~water.all(axis=0) & ~tie
    assert both.sum() > 500 and (water.any(axis=0) & rest).sum() > 500 and rest.sum() > 1000
    assert np.all(run[masked][both] == 0) and np.all(run[plain][both] > 0.2)
    np.testing.assert_array_equal(run[masked][rest], run[plain][rest])


def test_water_mask_refuses_other_models(s2_pair, tmp_path: Path) -> None:
    rgb = pointwise_change_model(str(tmp_path / "rgb.onnx"), change_contract(["R", "G", "B"]), 1, 0)
    with pytest.raises(
        ExportError, match="rgb.onnx: a water mask needs Sentinel-2 bands B03, B08, B11"
    ):
        add_water_mask(rgb, tmp_path / "out.onnx")
    contract = segmentation_contract(["B03", "B08", "B11"], ["water", "land", "cloud"])
    seg = pointwise_segmentation_model(str(tmp_path / "seg.onnx"), contract, np.eye(3))
    with pytest.raises(ExportError, match="for change models, not segmentation"):
        add_water_mask(seg, tmp_path / "out.onnx")
    s2 = pointwise_change_model(
        str(tmp_path / "s2.onnx"), change_contract(["B11", "B08", "B03"]), 1, 0
    )
    add_water_mask(s2, tmp_path / "once.onnx")
    with pytest.raises(ExportError, match="once.onnx: already has a water mask"):
        add_water_mask(tmp_path / "once.onnx", tmp_path / "twice.onnx")
    assert not (tmp_path / "out.onnx").exists() and not (tmp_path / "twice.onnx").exists()


def test_export_cli_water_mask_masks_every_file_it_writes(change_ckpt: Path, tmp_path: Path):
    out = tmp_path / "change.onnx"
    result = CliRunner().invoke(
        cli, ["export", str(change_ckpt), "-o", str(out), "--compress", "--water-mask",
              "--exporter", "torchscript"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "water mask added" in result.output
    for path in (out, tmp_path / "change.compressed.onnx"):
        assert load_model(path).contract.extra["water_mask"]["dates"] == "all", path
    assert json.loads((tmp_path / "change.export.json").read_text())["water_mask"] is True


def _temp_folders(folder: Path) -> list[Path]:
    return list(folder.glob(".swimdiff-tmp-*"))


def test_export_without_the_data_it_checks_on_writes_nothing(
    encoder_pt: Path, tmp_path: Path
) -> None:
    """An encoder.pt has no recorded data: the export says so before exporting anything."""
    out = tmp_path / "models" / "encoder.onnx"
    result = CliRunner().invoke(
        cli, ["export", str(encoder_pt), "-o", str(out), "--exporter", "torchscript"]
    )
    assert result.exit_code == 1, result.output
    assert "pass --data" in result.output and "Traceback" not in result.output
    assert "exported" not in result.output  # no success line before the failure
    assert not out.exists() and not out.parent.exists()


def test_failed_export_never_replaces_a_good_model(change_ckpt: Path, tmp_path: Path) -> None:
    """Outputs are written under temporary names and renamed only after every check passed:
    an existing model needs --overwrite and is replaced only by a model that passed."""
    out = tmp_path / "change.onnx"
    base = ["export", str(change_ckpt), "-o", str(out), "--exporter", "torchscript"]
    assert CliRunner().invoke(cli, base).exit_code == 0
    good = out.read_bytes()
    good_report = (tmp_path / "change.export.json").read_text()

    result = CliRunner().invoke(cli, base)
    assert result.exit_code == 1 and "already exists" in result.output, result.output
    assert "--overwrite" in result.output

    # Parity at tolerance 0 fails (onnxruntime's float arithmetic is not PyTorch's).
    result = CliRunner().invoke(cli, [*base, "--overwrite", "--tolerance", "0", "--int8"])
    assert result.exit_code == 1, result.output
    assert f"{out}: parity check failed" in result.output
    assert "the existing file is kept" in result.output
    assert out.read_bytes() == good
    assert (tmp_path / "change.export.json").read_text() == good_report
    assert not (tmp_path / "change.int8.onnx").exists()
    assert not _temp_folders(tmp_path)

    result = CliRunner().invoke(cli, [*base, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output
    load_model(out, expected_type="change_detection")
    assert not _temp_folders(tmp_path)


def _pretrained_encoder(folder: Path, bands: list[str]) -> tuple[Path, dict]:
    """An encoder.pt and the encoder.json pretraining writes beside it (its keys, as
    swimdiff_geo.train.pretrain.EncoderExport writes them): standardised inputs, DN x 1e-4."""
    folder.mkdir()
    torch.manual_seed(2)
    encoder = build_encoder("resnet18", in_channels=len(bands))
    torch.save(encoder.state_dict(), folder / "encoder.pt")
    meta = {
        "arch": "resnet18", "in_channels": len(bands), "stage_channels": [64, 128, 256, 512],
        "bands": bands, "input_scale": 1e-4, "input_standardized": True,
        "band_mean": [0.08, 0.07, 0.06, 0.25], "band_std": [0.02, 0.03, 0.04, 0.09],
        "global_step": 10,
    }  # fmt: skip
    (folder / "encoder.json").write_text(json.dumps(meta))
    return folder / "encoder.pt", meta


def test_encoder_export_takes_bands_and_scaling_from_encoder_json(tmp_path: Path) -> None:
    """The engine must feed the model what pretraining fed the encoder: (DN x 1e-4 - mean) / std
    with encoder.json's band statistics, in its band order; no --bands needed."""
    bands = ["B02", "B03", "B04", "B08"]
    encoder_pt, meta = _pretrained_encoder(tmp_path / "pretrain", bands)
    with rasterio.open(RASTER) as src:  # real reflectance, written as Sentinel-2 DN
        dn = np.round(src.read([2, 3, 4, 8]) * 10000).astype(np.uint16)
        profile = src.profile | {"count": 4, "dtype": "uint16"}
    scene = tmp_path / "scene.tif"
    with rasterio.open(scene, "w", **profile) as dst:
        dst.write(dn)
    out = tmp_path / "encoder.onnx"
    result = CliRunner().invoke(
        cli, ["export", str(encoder_pt), "-o", str(out), "--data", str(scene),
              "--tile-size", "64", "--exporter", "torchscript"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output
    loaded = load_model(out, expected_type="embedding")
    c = loaded.contract
    assert c.bands == bands and c.input_scale == 1e-4
    assert c.standardization_mean == meta["band_mean"]
    assert c.standardization_std == meta["band_std"]
    assert c.input_band_means == meta["band_mean"]
    # The engine's scaling of raw DN gives the encoder exactly its pretraining input.
    x = dn[None, :, :64, :64].astype(np.float32)
    pooled, _ = loaded.session.run(None, {loaded.input_name: c.scale(x.copy())})  # in place
    mean = np.array(meta["band_mean"], np.float32)[:, None, None]
    std = np.array(meta["band_std"], np.float32)[:, None, None]
    encoder = build_encoder("resnet18", in_channels=4, init_weights=encoder_pt).eval()
    with torch.no_grad():
        ref = encoder(torch.from_numpy((x * np.float32(1e-4) - mean) / std)).numpy()
    np.testing.assert_allclose(pooled, ref, rtol=1e-4, atol=1e-4)


def test_encoder_json_disagreeing_options_warn_and_win(tmp_path: Path) -> None:
    bands = ["B02", "B03", "B04", "B08"]
    encoder_pt, meta = _pretrained_encoder(tmp_path / "pretrain", bands)
    said: list[str] = []
    source = load_export_source(
        encoder_pt, bands=["B", "G", "R", "N"], input_scale=1.0, print_fn=said.append
    )
    assert source.contract.bands == ["B", "G", "R", "N"] and source.contract.input_scale == 1.0
    assert len(said) == 2 and all("encoder.json" in line for line in said)
    assert "--bands" in said[0] and "--input-scale" in said[1]
    said.clear()
    load_export_source(encoder_pt, bands=bands, input_scale=1e-4, print_fn=said.append)
    assert not said  # the same values: nothing to warn about
    (tmp_path / "pretrain" / "encoder.json").write_text(json.dumps(meta | {"in_channels": 13}))
    with pytest.raises(ExportError, match="encoder.json: describes an encoder of 13 bands"):
        load_export_source(encoder_pt)


def test_a_checkpoint_given_as_model_says_to_export_it(change_ckpt: Path, s2_pair, tmp_path):
    with pytest.raises(ModelError, match="not an ONNX model but a PyTorch training checkpoint"):
        load_model(change_ckpt)
    a, b = s2_pair
    result = CliRunner().invoke(
        cli, ["detect-change", str(a), str(b), "-m", str(change_ckpt), "-o", str(tmp_path / "o")]
    )
    assert result.exit_code != 0
    assert f"swimdiff-geo export {change_ckpt} -o model.onnx" in result.output
    assert "Traceback" not in result.output
