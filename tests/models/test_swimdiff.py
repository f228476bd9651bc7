"""The SwiMDiff model: gradient paths, EMA, queue bookkeeping, and 2-process (gloo) equivalence."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from swimdiff_geo.data.oscd import OSCDCity
from swimdiff_geo.models.swimdiff import SwiMDiff

OSCD_MINI = Path(__file__).resolve().parents[1] / "data" / "oscd_mini"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def real_windows(n: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n real 13-band windows (DN / 10000) from the two tiny OSCD crops: (view_q, view_k, ids).

    view_k is the other date of the same place (a temporal positive), ids are the cities.
    """
    views_q, views_k, ids = [], [], []
    cities = [OSCDCity(OSCD_MINI, name) for name in ("beihai", "saclay_e")]
    for i in range(n):
        city = cities[i % 2]
        h, w = city.shape
        r, c = (i * 5) % (h - size + 1), (i * 3) % (w - size + 1)
        window = (r, c, size, size)
        views_q.append(torch.from_numpy(city.read(1, window) * 1e-4))
        views_k.append(torch.from_numpy(city.read(2, window) * 1e-4))
        ids.append(i % 2)
    return torch.stack(views_q), torch.stack(views_k), torch.tensor(ids)


def small_model(**kw) -> SwiMDiff:
    defaults = dict(in_channels=13, queue_size=16, unet_base_channels=8, proj_hidden=32,
                    proj_dim=16)  # fmt: skip
    defaults.update(kw)
    return SwiMDiff(**defaults)


def _grad_norm(module: torch.nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


@pytest.mark.parametrize("cond_mode", ["multiscale", "pooled"])
def test_diffusion_alone_trains_the_encoder(cond_mode: str) -> None:
    torch.manual_seed(0)
    vq, vk, ids = real_windows(4)
    model = small_model(lambda_c=0.0, lambda_d=1.0, cond_mode=cond_mode)
    out = model(vq, vk, ids)
    out.loss.backward()
    assert out.loss_d is not None
    assert float(out.loss.detach()) == pytest.approx(float(out.loss_d))
    assert _grad_norm(model.encoder_q) > 0
    assert model.encoder_q.conv1.weight.grad.abs().sum() > 0  # reaches the first layer
    # The contrastive head gets nothing from the diffusion term.
    assert _grad_norm(model.projector_q) == 0


def test_without_diffusion_no_denoiser_runs() -> None:
    torch.manual_seed(0)
    vq, vk, ids = real_windows(4)
    model = small_model(lambda_c=1.0, lambda_d=0.0)
    assert model.denoiser is None
    out = model(vq, vk, ids)
    assert out.loss_d is None
    assert float(out.loss.detach()) == pytest.approx(float(out.loss_c))


def test_joint_loss_weights_the_terms() -> None:
    vq, vk, ids = real_windows(4)
    t, noise = torch.tensor([10, 200, 500, 900]), torch.randn_like(vq)
    torch.manual_seed(0)
    model = small_model(lambda_c=0.3, lambda_d=2.0)
    out = model(vq, vk, ids, t=t, noise=noise, update_queue=False)
    expected = 0.3 * float(out.loss_c) + 2.0 * float(out.loss_d)
    assert float(out.loss.detach()) == pytest.approx(expected, rel=1e-5)


def test_momentum_update_is_an_ema() -> None:
    torch.manual_seed(0)
    model = small_model(momentum=0.9)
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.add_(torch.randn_like(p))
    q_before = [p.clone() for p in model.encoder_q.parameters()]
    k_before = [p.clone() for p in model.encoder_k.parameters()]
    model.momentum_update()
    for pq, pk_old, pk in zip(q_before, k_before, model.encoder_k.parameters(), strict=True):
        torch.testing.assert_close(pk, 0.9 * pk_old + 0.1 * pq)
    assert all(not p.requires_grad for p in model.encoder_k.parameters())


def test_queue_keeps_keys_and_ids_aligned_through_wraparound() -> None:
    model = small_model(queue_size=5, proj_dim=3)
    # Each key encodes its own id in its first component, so alignment is checkable.
    for start, n in [(0, 2), (2, 2), (4, 3), (7, 7)]:
        ids = torch.arange(start, start + n)
        keys = torch.zeros(n, 3)
        keys[:, 0] = ids.float()
        model.enqueue(keys, ids)
    # 14 keys went in; a queue of 5 holds the newest five (ids 9..13) in ring order.
    assert model.queue_valid.all()
    torch.testing.assert_close(model.queue_keys[:, 0], model.queue_ids.float())
    assert sorted(model.queue_ids.tolist()) == [9, 10, 11, 12, 13]
    assert int(model.queue_ptr) == 14 % 5
    assert int(model.queue_ids[(int(model.queue_ptr) - 1) % 5]) == 13  # newest just before ptr


def test_forward_enqueues_its_keys_with_their_scene_ids() -> None:
    torch.manual_seed(0)
    vq, vk, ids = real_windows(4)
    model = small_model(queue_size=6)
    model(vq, vk, ids)
    assert model.queue_valid.tolist() == [True] * 4 + [False] * 2
    assert model.queue_ids[:4].tolist() == ids.tolist()
    keys = model._keys(vk)  # key encoder after the step's EMA update
    torch.testing.assert_close(model.queue_keys[:4], keys)
    # Second step: false negatives now include queue entries of the same city.
    out = model(vq, vk, ids)
    assert out.false_negatives_per_query >= 2 + 1  # 2 queue keys + 1 batch key per city


# ------------------------------------------------------------------ two processes vs one
WORLD = 2
GLOBAL_BATCH = 8


def _freeze_bn(model: SwiMDiff) -> None:
    # SyncBatchNorm needs GPUs; on CPU, BN layers use their running statistics so that the
    # comparison isolates what this test is about: global keys, ids, queue and gradients.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()


def _run_steps(model, batches, rank: int, world: int):
    """Two SGD steps; returns per-step (loss, grads) and the final queue."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    history = []
    for vq, vk, ids, t, noise in batches:
        n = vq.shape[0] // world
        sl = slice(rank * n, (rank + 1) * n)
        opt.zero_grad()
        out = model(vq[sl], vk[sl], ids[sl], t=t[sl], noise=noise[sl])
        out.loss.backward()
        loss = out.loss.detach().clone()
        if world > 1:  # what DDP does: average losses (for reporting) and gradients
            dist.all_reduce(loss)
            loss /= world
            for p in model.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= world
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        opt.step()
        history.append((loss, grads))
    return history, model.queue_keys.clone(), model.queue_ids.clone()


def _make_inputs():
    vq, vk, ids = real_windows(GLOBAL_BATCH)
    gen = torch.Generator().manual_seed(1)
    batches = []
    for step in range(2):
        t = torch.randint(0, 1000, (GLOBAL_BATCH,), generator=gen)
        noise = torch.randn(vq.shape, generator=gen)
        shift = step * 0.01  # a different second batch
        batches.append((vq + shift, vk + shift, ids, t, noise))
    return batches


def _build(seed: int = 0) -> SwiMDiff:
    torch.manual_seed(seed)
    model = small_model(queue_size=12)
    _freeze_bn(model)
    return model


def _worker(rank: int, init_file: str, result_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)  # fmt: skip
    torch.set_num_threads(1)
    try:
        history, qk, qi = _run_steps(_build(), _make_inputs(), rank, WORLD)
        torch.save({"history": history, "queue_keys": qk, "queue_ids": qi}, f"{result_file}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_match_one_process(tmp_path) -> None:
    result = tmp_path / "ddp.pt"
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(result)), nprocs=WORLD, join=True)
    ddp, ddp_rank1 = (torch.load(f"{result}.{r}", weights_only=False) for r in range(WORLD))

    history, queue_keys, queue_ids = _run_steps(_build(), _make_inputs(), rank=0, world=1)
    for step, ((loss1, grads1), (loss2, grads2)) in enumerate(
        zip(history, ddp["history"], strict=True)
    ):
        torch.testing.assert_close(loss2, loss1, rtol=1e-5, atol=1e-6, msg=f"loss, step {step}")
        assert grads1.keys() == grads2.keys()
        for k in grads1:
            # Step 0 differs only by summation order (two half batches all-reduced vs one
            # batch). Step 1 starts from weights that differ by that much, and the contrastive
            # softmax (temperature 0.07) amplifies it: up to 0.4 % of a tensor's largest
            # gradient (numpy 2.4 / rasterio 1.4.4 inputs). A DDP fault (gradients not
            # averaged, or one rank's batch only) is off by 50-100 %.
            atol = 1e-6 if step == 0 else max(1e-6, 1e-2 * float(grads1[k].abs().max()))
            torch.testing.assert_close(grads2[k], grads1[k], rtol=1e-4 if step == 0 else 0,
                                       atol=atol, msg=f"grad {k}, step {step}")  # fmt: skip
    torch.testing.assert_close(ddp["queue_keys"], queue_keys, rtol=1e-5, atol=1e-6)
    assert ddp["queue_ids"].tolist() == queue_ids.tolist()
    # Both processes hold the same global queue.
    torch.testing.assert_close(ddp_rank1["queue_keys"], ddp["queue_keys"])
    assert ddp_rank1["queue_ids"].tolist() == ddp["queue_ids"].tolist()
