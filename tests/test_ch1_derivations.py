"""Chapter 1's second-edition derivations, each checked numerically on models whose answers are exact.

Learned variances (Nichol & Dhariwal 2021, eq. 15), the optimal reverse variance of Gaussian data, λ_t as a
difference of SNRs, the dequantisation bound and the discretised decoder (DDPM eq. 13).
"""
import math

import numpy as np
import pytest
import torch

from minidiff import NoiseSchedule, analytic
from minidiff import forward as F


@pytest.fixture(scope="module")
def sched():
    return NoiseSchedule.linear(1000)


def all_steps(s: NoiseSchedule) -> torch.Tensor:
    return torch.arange(s.T)


def zeros(s: NoiseSchedule) -> torch.Tensor:
    return torch.zeros(s.T, 1, dtype=torch.float64)


# ----------------------------------------------------------------------------- learned variances Σ_θ


def test_interpolated_variance_ends_are_the_fixed_variances(sched):
    t, x = all_steps(sched), zeros(sched)
    small = F.model_variance(sched, t, x, "fixed_small")
    torch.testing.assert_close(F.interpolated_variance(sched, t, torch.zeros_like(x)), small, rtol=1e-12, atol=0)
    torch.testing.assert_close(F.interpolated_variance(sched, t, torch.ones_like(x)), sched.betas[:, None],
                               rtol=1e-12, atol=0)


def test_interpolated_variance_is_geometric_and_per_dimension(sched):
    """σ² = β^v β̃^(1−v) elementwise: v = ½ gives the geometric mean; each dimension has its own v."""
    t = torch.tensor([0, 5, 500, 999])
    v = torch.tensor([[0.5, -0.3], [0.5, 1.7], [0.5, 0.0], [0.5, 1.0]], dtype=torch.float64)
    small = F.model_variance(sched, t, v, "fixed_small")
    large = sched.betas[t][:, None]
    expected = large**v * small ** (1 - v)
    torch.testing.assert_close(F.interpolated_variance(sched, t, v), expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(F.interpolated_variance(sched, t, v)[:, 0], (large * small).sqrt()[:, 0])


def test_interpolated_variance_keeps_dtype_and_int_t(sched):
    v = torch.full((3, 1, 2, 2), 0.25)
    out = F.interpolated_variance(sched, 10, v)
    assert out.dtype == torch.float32 and out.shape == v.shape
    assert torch.allclose(out, F.interpolated_variance(sched, torch.full((3,), 10), v))


@pytest.mark.parametrize(
    "v, t, error, match",
    [
        ([0.5], 3, TypeError, "v must be a torch.Tensor"),
        (torch.tensor([1, 0]), 3, TypeError, "v must be a floating"),
        (torch.tensor([float("nan")]), 3, ValueError, "v must be finite"),
        (torch.tensor([0.5, 0.5]), torch.tensor([1, 2, 3]), ValueError, "B == batch|batch"),
        (torch.tensor([0.5]), 1000, ValueError, r"t must be in \[0, T\)"),
    ],
)
def test_interpolated_variance_bad_input(sched, v, t, error, match):
    with pytest.raises(error, match=match):
        F.interpolated_variance(sched, t, v)


def test_optimal_variance_is_the_mean_squared_residual(sched, generator):
    """argmin_σ² E ½[log σ² + (β̃ + (μ̃ − μ*)²)/σ²] = β̃ + E(μ̃ − μ*)² = Var_q(x_{t−1} | x_t) (total variance)."""
    m, s2, n = 1.0, 0.25, 40_000
    eps_star = analytic.gaussian_data_optimal_eps(sched, m, s2)
    _, _, exact = analytic.reverse_step_coefficients(sched, m, s2, "exact")
    for t in (1, 9, 99, 999):
        x0 = m + math.sqrt(s2) * torch.randn(n, 1, generator=generator, dtype=torch.float64)
        x_t = F.q_sample(sched, x0, t, generator=generator)
        mean_q, var_q = F.posterior_mean_var(sched, x0, x_t, torch.full((n,), t))
        r = var_q + (mean_q - F.model_mean(sched, x_t, t, eps_star(x_t, torch.full((n,), t)))) ** 2
        assert abs(r.mean().item() - exact[t].item()) < 5 * r.std().item() / math.sqrt(n)


@pytest.mark.parametrize("s2", [0.01, 0.25, 1.0, 4.0])
def test_exact_variance_between_fixed_ones_only_for_s2_at_most_1(sched, s2):
    _, _, exact = analytic.reverse_step_coefficients(sched, 0.3, s2, "exact")
    small, large = sched.posterior_variance[1:], sched.betas[1:]
    assert (exact[1:] >= small * (1 - 1e-12)).all()              # always: β v_{t−1}/v_t ≥ β̃_t
    if s2 <= 1:
        assert (exact[1:] <= large * (1 + 1e-12)).all()
    else:
        assert (exact[1:] > large).all()                         # v_{t−1} > v_t when s² > 1


def test_optimal_variance_limits_point_mass_and_standard_normal(sched):
    """Data N(m, s²): s² → 0 gives β̃_t (x_0 known), s² = 1 gives β_t (v_t = 1 for all t)."""
    _, _, point = analytic.reverse_step_coefficients(sched, 0.5, 1e-12, "exact")
    _, _, normal = analytic.reverse_step_coefficients(sched, 0.0, 1.0, "exact")
    torch.testing.assert_close(point[1:], sched.posterior_variance[1:], rtol=1e-8, atol=0)
    torch.testing.assert_close(normal, sched.betas, rtol=1e-12, atol=0)


# ----------------------------------------------------------------------------- λ_t and the SNR


@pytest.mark.parametrize("make", [NoiseSchedule.linear, NoiseSchedule.cosine])
def test_lambda_is_a_difference_of_snrs(make):
    """fixed_small: λ_t = ½ (SNR(t−1) − SNR(t)) / SNR(t), i.e. L_{t−1} = ½ (SNR(t−1) − SNR(t)) ‖x_0 − x̂_0‖²."""
    s = make(1000)
    t = torch.arange(1, s.T)
    snr = s.alpha_bar / (1 - s.alpha_bar)
    lam = F.l_t_weight(s, t, torch.zeros(s.T - 1, 1, dtype=torch.float64), "fixed_small")[:, 0]
    torch.testing.assert_close(lam, 0.5 * (snr[:-1] - snr[1:]) / snr[1:], rtol=1e-9, atol=0)


# ----------------------------------------------------------------------------- discrete data


def test_discretized_decoder_matches_numerical_integration(generator):
    """DDPM eq. 13: P(bin) = ∫_bin N(y; μ, σ²) dy, the edge bins reaching to ±∞; the 17 bins sum to 1."""
    w = 2 / 16
    grid = torch.linspace(-1, 1, 17, dtype=torch.float64)
    for mean, var in ((0.1, 0.04), (-0.93, 0.002), (1.4, 0.3)):
        logp = F.discretized_gaussian_log_likelihood(grid, torch.tensor(mean, dtype=torch.float64),
                                                     torch.tensor(var, dtype=torch.float64), bin_width=w)
        lo = torch.where(grid < -1 + w / 2, torch.tensor(mean - 40 * math.sqrt(var) - 2), grid - w / 2)
        hi = torch.where(grid > 1 - w / 2, torch.tensor(mean + 40 * math.sqrt(var) + 2), grid + w / 2)
        u = torch.linspace(0, 1, 20_001, dtype=torch.float64)
        y = lo[:, None] + (hi - lo)[:, None] * u
        density = torch.exp(-((y - mean) ** 2) / (2 * var)) / math.sqrt(2 * math.pi * var)
        integral = torch.trapezoid(density, y, dim=1)
        torch.testing.assert_close(logp.exp(), integral, rtol=1e-6, atol=1e-9)
        assert abs(logp.exp().sum().item() - 1) < 17e-12             # log-probabilities are floored at 1e-12


def test_dequantisation_bound_holds_and_closes_as_bins_shrink():
    """log P(bin) = log E_u[w p(x + u)] ≥ log w + E_u log p(x + u), u ~ U(−w/2, w/2) (Jensen); the gap is
    ½ Var_u log p(x + u) ≈ ½ ((x − μ)/σ²)² w²/12 to leading order."""
    mean, var = torch.tensor(0.2, dtype=torch.float64), torch.tensor(0.16, dtype=torch.float64)
    gaps = []
    for levels in (9, 17, 257):
        w = 2 / (levels - 1)
        grid = torch.linspace(-1 + w, 1 - w, levels - 2, dtype=torch.float64)      # interior bins
        log_bin = F.discretized_gaussian_log_likelihood(grid, mean, var, bin_width=w)
        # E_u (x + u − μ)² = (x − μ)² + w²/12, so E_u log N(x + u) is closed-form
        dequant = math.log(w) - 0.5 * (math.log(2 * math.pi * var) + ((grid - mean) ** 2 + w**2 / 12) / var)
        assert (log_bin >= dequant).all()
        gaps.append((log_bin - dequant).max().item())
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 2e-4
    predicted = 0.5 * ((grid - mean) / var) ** 2 * w**2 / 12                   # the last, finest grid
    torch.testing.assert_close(log_bin - dequant, predicted, rtol=0.05, atol=1e-8)


def test_elbo_of_gaussian_model_is_quadratic_in_x0(sched):
    """What lets chapter 1 average the ELBO over uniform dequantisation noise exactly with 2-point Gauss–Legendre."""
    x = torch.linspace(-1, 1, 5, dtype=torch.float64)[:, None]
    total = analytic.gaussian_elbo_terms(NoiseSchedule.cosine(20), 0.0, 0.16, x)["total"].numpy()
    second_diff = np.diff(total, 2)
    np.testing.assert_allclose(second_diff, second_diff[0], rtol=1e-9)
