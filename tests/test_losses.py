"""The scene-wide matching contrastive loss in each mode, against examples worked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from swimdiff_geo.losses import diffusion_loss, scene_matching_contrastive_loss

# One query q = (1, 0) of scene 7 with its positive key k+ = (1, 0), and three candidates:
#   c1 = (0, 1)     cos 0    scene 7  -> false negative
#   c2 = (0.6, 0.8) cos 0.6  scene 7  -> false negative
#   c3 = (-1, 0)    cos -1   scene 3  -> true negative
# With tau = 0.5 the logits are [1, 0, 0.6, -1] / 0.5 = [2, 0, 1.2, -2].
Q = torch.tensor([[1.0, 0.0]])
K_POS = torch.tensor([[1.0, 0.0]])
CANDIDATES = torch.tensor([[0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]])
Q_IDS = torch.tensor([7])
C_IDS = torch.tensor([7, 7, 3])
TAU, TAU_PRIME, ALPHA = 0.5, 0.25, 0.5
E = math.exp


def _loss(mode: str, **kw) -> float:
    out = scene_matching_contrastive_loss(
        Q, K_POS, CANDIDATES, Q_IDS, C_IDS, mode=mode, tau=TAU, tau_prime=TAU_PRIME, alpha=ALPHA,
        **kw,
    )  # fmt: skip
    return float(out.loss)


def test_none_is_plain_infonce() -> None:
    expected = -math.log(E(2) / (E(2) + E(0) + E(1.2) + E(-2)))
    assert _loss("none") == pytest.approx(expected, rel=1e-5)


def test_remove_drops_false_negatives_from_the_denominator() -> None:
    expected = -math.log(E(2) / (E(2) + E(-2)))
    assert _loss("remove") == pytest.approx(expected, rel=1e-5)


def test_positive_treats_false_negatives_as_positives() -> None:
    z = E(2) + E(0) + E(1.2) + E(-2)
    # Uniform target 1/3 over k+, c1, c2.
    expected = -(math.log(E(2) / z) + math.log(E(0) / z) + math.log(E(1.2) / z)) / 3
    assert _loss("positive") == pytest.approx(expected, rel=1e-5)


def test_soft_gives_false_negatives_similarity_weighted_targets() -> None:
    z = E(2) + E(0) + E(1.2) + E(-2)
    # b = softmax over F of cos / tau' = softmax([0, 2.4]).
    b1, b2 = 1 / (1 + E(2.4)), E(2.4) / (1 + E(2.4))
    y = [1 / 1.5, ALPHA * b1 / 1.5, ALPHA * b2 / 1.5]  # normalised to sum 1
    expected = -(y[0] * math.log(E(2) / z) + y[1] * math.log(E(0) / z)
                 + y[2] * math.log(E(1.2) / z))  # fmt: skip
    out = scene_matching_contrastive_loss(
        Q, K_POS, CANDIDATES, Q_IDS, C_IDS, mode="soft", tau=TAU, tau_prime=TAU_PRIME, alpha=ALPHA
    )
    assert float(out.loss) == pytest.approx(expected, rel=1e-5)
    torch.testing.assert_close(out.target[0], torch.tensor([y[0], y[1], y[2], 0.0]))
    assert out.false_negatives.tolist() == [[True, True, False]]


def test_without_false_negatives_all_modes_equal_infonce() -> None:
    ids = torch.tensor([1, 2, 3])
    expected = -math.log(E(2) / (E(2) + E(0) + E(1.2) + E(-2)))
    for mode in ("none", "remove", "positive", "soft"):
        out = scene_matching_contrastive_loss(
            Q, K_POS, CANDIDATES, Q_IDS, ids, mode=mode, tau=TAU, tau_prime=TAU_PRIME
        )
        assert float(out.loss) == pytest.approx(expected, rel=1e-5), mode


def test_invalid_candidates_are_excluded() -> None:
    # c1 masked (an empty queue slot): logits [2, 1.2, -2] remain; c2 is the only false negative.
    valid = torch.tensor([False, True, True])
    expected_remove = -math.log(E(2) / (E(2) + E(-2)))
    assert _loss("remove", candidate_valid=valid) == pytest.approx(expected_remove, rel=1e-5)
    z = E(2) + E(1.2) + E(-2)
    expected_soft = -(math.log(E(2) / z) / 1.5 + ALPHA * math.log(E(1.2) / z) / 1.5)
    assert _loss("soft", candidate_valid=valid) == pytest.approx(expected_soft, rel=1e-5)


def test_soft_targets_carry_no_gradient_and_query_gets_one() -> None:
    q = Q.clone().requires_grad_(True)
    out = scene_matching_contrastive_loss(q, K_POS, CANDIDATES, Q_IDS, C_IDS, mode="soft", tau=TAU)
    out.loss.backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert not out.target.requires_grad


def test_bad_mode_and_shapes_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="scene-wide matching mode"):
        scene_matching_contrastive_loss(Q, K_POS, CANDIDATES, Q_IDS, C_IDS, mode="hard")
    with pytest.raises(ValueError, match="noise shapes differ"):
        diffusion_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))


def test_diffusion_loss_is_mse() -> None:
    pred = torch.tensor([[[[1.0, 2.0]]]])
    true = torch.tensor([[[[0.0, 0.0]]]])
    assert float(diffusion_loss(pred, true)) == pytest.approx((1 + 4) / 2)
