"""SwiMDiff losses: the scene-wide matching contrastive loss L_C and the diffusion loss L_D.

L_C (``docs/pretraining.md`` and the method page, section OURS): for each query q with positive
key k+ and candidate keys c_j (the queue plus the other keys of the global batch), with scene
ids s_j,

- logits ``l = [q.k+, q.c_1, ..., q.c_K] / tau``
- false negatives ``F = {j : s_j == s(q)}``
- ``b_j = softmax_{j in F}(cos(q, c_j) / tau')`` (no gradient)
- target ``y``: 1 for k+, ``alpha * b_j`` for j in F, 0 elsewhere, normalised to sum 1
- ``L_C = cross_entropy(y, softmax(l))`` averaged over queries.

Modes: ``none`` (plain MoCo/InfoNCE: F stay negatives), ``remove`` (F are dropped from the
softmax denominator), ``positive`` (F are hard positives with the same weight as k+, SupCon
style: uniform target over {k+} U F), ``soft`` (default, above).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

SWM_MODES = ("none", "remove", "positive", "soft")

__all__ = ["SWM_MODES", "ContrastiveOutput", "diffusion_loss", "scene_matching_contrastive_loss"]


@dataclass
class ContrastiveOutput:
    """The contrastive loss and what it saw (for logging).

    ``loss``: scalar L_C. ``logits``: (N, 1 + K) the tempered logits (masked entries -inf).
    ``target``: (N, 1 + K) the target distribution y. ``false_negatives``: (N, K) bool mask F.
    """

    loss: Tensor
    logits: Tensor
    target: Tensor
    false_negatives: Tensor

    @property
    def mean_false_negatives(self) -> Tensor:
        """Average number of same-scene candidates per query (a 0-d tensor: no device sync)."""
        return self.false_negatives.sum(dim=1).float().mean()


def scene_matching_contrastive_loss(
    query: Tensor,
    positive_key: Tensor,
    candidate_keys: Tensor,
    query_scene_ids: Tensor,
    candidate_scene_ids: Tensor,
    mode: str = "soft",
    tau: float = 0.2,
    tau_prime: float = 0.1,
    alpha: float = 0.5,
    candidate_valid: Tensor | None = None,
) -> ContrastiveOutput:
    """Scene-wide matching contrastive loss L_C (see the module docstring).

    Args:
        query: (N, D) L2-normalised query embeddings (carry the gradient).
        positive_key: (N, D) L2-normalised keys of the other view of the same window.
        candidate_keys: (K, D) L2-normalised candidate keys (queue, other batch keys); no
            gradient is needed or used through them.
        query_scene_ids: (N,) integer scene id of each query.
        candidate_scene_ids: (K,) integer scene id of each candidate.
        mode: one of :data:`SWM_MODES`.
        tau: temperature of the contrastive logits.
        tau_prime: temperature of the false-negative similarity distribution b (``soft``).
        alpha: total target mass given to the false negatives relative to k+ (``soft``).
        candidate_valid: (N, K) or (K,) bool; False entries are excluded everywhere (empty
            queue slots, a query's own key among the batch keys).

    Returns:
        :class:`ContrastiveOutput` with the scalar loss (mean over the N queries).
    """
    if mode not in SWM_MODES:
        raise ValueError(f"unknown scene-wide matching mode {mode!r}; choose from {SWM_MODES}")
    if tau <= 0 or tau_prime <= 0:
        raise ValueError(f"temperatures must be > 0, got tau={tau}, tau_prime={tau_prime}")
    # Similarities, softmax and targets in float32 even under bf16/fp16 autocast.
    query, positive_key = query.float(), positive_key.float()
    candidate_keys = candidate_keys.float()
    n, k = query.shape[0], candidate_keys.shape[0]
    valid = torch.ones(n, k, dtype=torch.bool, device=query.device)
    if candidate_valid is not None:
        valid = valid & (candidate_valid if candidate_valid.ndim == 2 else candidate_valid[None])

    sim_pos = (query * positive_key).sum(dim=1, keepdim=True)  # (N, 1) cosine similarities
    sim_cand = query @ candidate_keys.T  # (N, K)
    false_neg = (query_scene_ids[:, None] == candidate_scene_ids[None, :]) & valid

    logits = torch.cat([sim_pos, sim_cand], dim=1) / tau
    excluded = ~valid
    if mode == "remove":
        excluded = excluded | false_neg
    mask = torch.cat([torch.zeros(n, 1, dtype=torch.bool, device=query.device), excluded], dim=1)
    logits = logits.masked_fill(mask, float("-inf"))

    target = torch.zeros_like(logits)
    target[:, 0] = 1.0
    if mode == "positive":
        target[:, 1:] = false_neg.to(target.dtype)
    elif mode == "soft":
        with torch.no_grad():
            fn_logits = (sim_cand.detach() / tau_prime).masked_fill(~false_neg, float("-inf"))
            has_fn = false_neg.any(dim=1, keepdim=True)
            # Rows without false negatives would give NaN from softmax over all -inf.
            b = torch.softmax(fn_logits.masked_fill(~has_fn, 0.0), dim=1) * has_fn
            target[:, 1:] = alpha * b
    target = target / target.sum(dim=1, keepdim=True)

    log_prob = torch.log_softmax(logits, dim=1)
    # 0 * -inf would be NaN: masked entries always have zero target.
    per_query = -(target * log_prob.masked_fill(mask, 0.0)).sum(dim=1)
    return ContrastiveOutput(per_query.mean(), logits, target, false_neg)


def diffusion_loss(predicted_noise: Tensor, true_noise: Tensor) -> Tensor:
    """L_D: mean squared error between the true and predicted noise, both (N, C, H, W)."""
    if predicted_noise.shape != true_noise.shape:
        raise ValueError(
            f"noise shapes differ: predicted {tuple(predicted_noise.shape)}, "
            f"true {tuple(true_noise.shape)}"
        )
    return F.mse_loss(predicted_noise.float(), true_noise.float())
