"""minidiff.lora.spectrum: ΔW between two networks and the share of its energy in the top r singular values,
checked against the truncated-SVD error (Eckart–Young) and against the rank of a LoRA update."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from minidiff.lora import (
    best_rank_r,
    effective_weight,
    energy_share,
    inject_lora,
    merge_lora,
    weight_deltas,
)


def net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.SiLU(), nn.Conv2d(3, 5, 3), nn.Linear(12, 4))


def test_energy_share_is_eckart_young(generator):
    delta = torch.randn(12, 7, generator=generator, dtype=torch.float64)
    total = delta.square().sum()
    for r in range(1, 8):
        err = (delta - best_rank_r(delta, r)).square().sum() / total          # ‖ΔW − ΔW_r‖²_F / ‖ΔW‖²_F
        assert energy_share(delta, r) == pytest.approx(1 - float(err), abs=1e-10)
        # no other rank-r matrix does better: a random rank-r one, fitted by least squares in its column space
        q = torch.linalg.qr(torch.randn(12, r, generator=generator, dtype=torch.float64))[0]
        assert (delta - q @ (q.T @ delta)).square().sum() >= (delta - best_rank_r(delta, r)).square().sum() - 1e-9
    assert energy_share(delta, 7) == pytest.approx(1.0)
    s = torch.linalg.svdvals(delta)
    assert energy_share(delta, 2) == pytest.approx(float(s[:2].square().sum() / s.square().sum()))


def test_energy_share_of_an_exactly_low_rank_matrix(generator):
    delta = torch.randn(10, 2, generator=generator) @ torch.randn(2, 9, generator=generator)
    assert energy_share(delta, 2) == pytest.approx(1.0, abs=1e-6)
    assert energy_share(delta, 1) < 1.0
    torch.testing.assert_close(best_rank_r(delta, 2), delta, atol=1e-5, rtol=1e-5)
    assert math.isnan(energy_share(torch.zeros(3, 4), 1))


def test_weight_deltas_of_full_and_lora_updates(generator):
    base = net()
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator))
    deltas = weight_deltas(base, tuned, ["0", "2", "3"])
    assert list(deltas) == ["0", "2", "3"] and deltas["2"].shape == (5, 27)           # conv flattened to (d, k)
    torch.testing.assert_close(deltas["2"], (tuned[2].weight - base[2].weight).flatten(1))
    # a rank-2 LoRA's ΔW = (α/r) B A has rank <= 2: all its energy in the top 2 singular values
    lora = copy.deepcopy(base)
    inject_lora(lora, ["0", "3"], r=2, alpha=3.0, generator=generator)
    with torch.no_grad():
        for layer in (lora[0], lora[3]):
            layer.lora_B["default"].normal_(generator=generator)
    deltas = weight_deltas(base, lora, ["0", "3"])
    a, b = lora[0].lora_A["default"], lora[0].lora_B["default"]
    torch.testing.assert_close(deltas["0"], 1.5 * b.detach() @ a.detach())
    assert energy_share(deltas["3"], 2) == pytest.approx(1.0, abs=1e-6) and energy_share(deltas["3"], 1) < 1
    before = effective_weight(lora[0])
    merge_lora(lora)                                                                  # merged: W₀ holds the update
    torch.testing.assert_close(effective_weight(lora[0]), before)


def test_bad_inputs():
    base = net()
    with pytest.raises(ValueError, match=r"r \(rank\) must be"):
        energy_share(torch.ones(3, 4), 4)
    with pytest.raises(ValueError, match=r"r \(rank\) must be"):
        best_rank_r(torch.ones(3, 4), 0)
    with pytest.raises(TypeError, match="r \\(rank\\)"):
        energy_share(torch.ones(3, 4), 1.5)
    with pytest.raises(ValueError, match="\\(d, k\\) matrix"):
        energy_share(torch.ones(2, 3, 3), 1)
    with pytest.raises(TypeError, match="floating"):
        energy_share(torch.ones(3, 4, dtype=torch.long), 1)
    with pytest.raises(ValueError, match="matches no module"):
        weight_deltas(base, base, "to_q")
    with pytest.raises(ValueError, match="has weight"):
        weight_deltas(base, nn.Sequential(nn.Linear(6, 11)), "0")
    with pytest.raises(ValueError, match="no layer"):
        weight_deltas(base, nn.Sequential(nn.Linear(6, 12)), "3")
    with pytest.raises(TypeError, match="nn.Module"):
        weight_deltas(base, "model", "0")
    with pytest.raises(TypeError, match="LoRA layer"):
        effective_weight(nn.SiLU())
