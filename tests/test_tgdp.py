"""Chapter 8, TGDP: the density-ratio identity, the oracle h* = q_t/p_t against quadrature and the
regression lemma, sign and scale of the guided eps-model against the exact target eps, the three
losses at their optimum, the networks, the training calls, the metrics, and bad inputs."""
import math

import pytest
import torch

from minidiff import MLPDenoiser, NoiseSchedule, l_simple, sample
from minidiff.data import GaussianMixture
from minidiff.exact import MixtureConditionalEps
from minidiff.forward import q_sample
from minidiff.tgdp import (
    DensityRatioGuidance,
    DomainClassifier,
    GuidanceNet,
    MixtureDensityRatio,
    check_domains,
    consistency_loss,
    cycle_loss,
    domain_classifier_loss,
    fit_baseline,
    fit_domain_classifier,
    fit_guidance_net,
    grad_log_h,
    guidance_loss,
    kde_nll,
    log_softplus,
    mean_density,
    ratio_from_logit,
    scott_bandwidth,
    tgdp_loss,
)
from minidiff.tgdp.setups import THETA_A, tilt, transfer_pair

T = 100


@pytest.fixture
def schedule():
    return NoiseSchedule.linear(T, beta_start=1e-3, beta_end=0.1)


@pytest.fixture
def pair():
    """A 2-D source and a target that reweights, moves and narrows its components (3 = classes)."""
    p = GaussianMixture.isotropic([[-1.5, 0.0], [1.5, 0.0], [0.0, 1.5]], 0.4, [0.4, 0.3, 0.3])
    q = GaussianMixture.isotropic([[-1.3, 0.2], [1.6, 0.0], [0.0, 1.3]], [0.3, 0.35, 0.3], [0.1, 0.6, 0.3])
    return p, q


def _points(n, seed, dtype=torch.float64, scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, 2, generator=gen, dtype=dtype), torch.randint(0, T, (n,), generator=gen)


# ------------------------------------------------------------------------------------ density ratio
def test_ratio_identity_balanced_and_pooled_classifiers():
    """(1 − c)/c = q/p for the balanced Bayes classifier c = p/(p+q); m/n · (1 − c)/c for the pooled one."""
    p, q = torch.distributions.Normal(0.0, 1.0), torch.distributions.Normal(1.0, 0.7)
    x = torch.linspace(-3, 3, 61, dtype=torch.float64)
    true = (q.log_prob(x) - p.log_prob(x)).exp()
    balanced = p.log_prob(x) - q.log_prob(x)                          # logit of c = p / (p + q)
    torch.testing.assert_close(ratio_from_logit(balanced)[0], true)
    m, n = 5000, 40
    pooled = (math.log(m) + p.log_prob(x)) - (math.log(n) + q.log_prob(x))   # c = m p / (m p + n q)
    torch.testing.assert_close(ratio_from_logit(pooled, log_prior=math.log(m / n))[0], true)
    assert not torch.allclose(ratio_from_logit(pooled)[0], true)             # forgetting the prior is wrong by n/m


def test_trained_domain_classifier_learns_the_gaussian_log_ratio():
    """N(0, 1) vs N(1, 1): log q/p = x − 1/2; the balanced loss recovers it where both have mass."""
    gen = torch.Generator().manual_seed(0)
    xs, xt = torch.randn(4000, 1, generator=gen), 1 + torch.randn(4000, 1, generator=gen)
    clf = fit_domain_classifier(xs, xt, steps=250, batch_size=128, lr=3e-3, width=32, depth=1, seed=0,
                                progress=False)
    x = torch.linspace(-0.5, 1.5, 21)[:, None]
    with torch.no_grad():
        learned = ratio_from_logit(clf(x))[0].log()
    err = (learned - (x[:, 0] - 0.5)).abs().max().item()
    assert err < 0.2, err


def test_ratio_clipping_is_reported_and_nan_refused():
    logit = torch.tensor([0.0, -2.0, -10.0, float("-inf")])
    ratio, clipped = ratio_from_logit(logit, max_ratio=100.0)
    torch.testing.assert_close(ratio, torch.tensor([1.0, math.exp(2.0), 100.0, 100.0]))
    assert clipped.tolist() == [False, False, True, True]
    with pytest.raises(ValueError, match="NaN logits for 1 of 2"):
        ratio_from_logit(torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="infinite.*max_ratio"):
        ratio_from_logit(torch.tensor([float("-inf")]))
    with pytest.raises(ValueError, match="max_ratio"):
        ratio_from_logit(logit, max_ratio=0.0)
    with pytest.raises(TypeError, match="floating-point"):
        ratio_from_logit(torch.tensor([1, 2]))


def test_domain_classifier_loss_gradient_vanishes_at_the_bayes_classifier(pair):
    """d/db of the balanced loss at logit + b is E_q[c] − E_p[1 − c] = ∫ pq/(p+q) − ∫ pq/(p+q) = 0 at c = p/(p+q)."""
    p, q = pair
    gen = torch.Generator().manual_seed(1)
    batch = {"source": p.sample(50_000, gen).double(), "target": q.sample(50_000, gen).double()}
    oracle = MixtureDensityRatio(p, q, NoiseSchedule.linear(T))
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    loss, terms = domain_classifier_loss()(lambda x: oracle.source_logit(x) + b, batch, gen)
    (grad,) = torch.autograd.grad(loss, b)
    assert abs(grad.item()) < 1e-2, grad          # Monte-Carlo std of the estimate ≈ 2e-3
    assert 0.5 < terms["accuracy"] < 1.0


# ------------------------------------------------------------------------------------ the oracle h*
def test_oracle_is_the_posterior_mean_of_the_ratio_by_quadrature(schedule):
    """h*(x_t, t) = ∫ p(x_0 | x_t) q(x_0)/p(x_0) dx_0, computed on a grid in 1-D, equals q_t/p_t."""
    p = GaussianMixture.isotropic([[-1.0], [1.5]], [0.5, 0.3], [0.7, 0.3])
    q = GaussianMixture.isotropic([[-0.8], [1.2], [0.2]], [0.4, 0.3, 0.5], [0.2, 0.5, 0.3])
    oracle = MixtureDensityRatio(p, q, schedule)
    x0 = torch.linspace(-6, 6, 24001, dtype=torch.float64)[:, None]
    log_r = q.log_prob(x0) - p.log_prob(x0)
    for step, x_t in ((5, 0.3), (40, -1.1), (90, 2.0)):
        ab = schedule.alpha_bar[step].item()
        log_kernel = -(x_t - math.sqrt(ab) * x0[:, 0]) ** 2 / (2 * (1 - ab))      # p(x_t | x_0) up to a constant
        post = torch.softmax(log_kernel + p.log_prob(x0), 0)                      # p(x_0 | x_t) on the grid
        quad = (post * log_r.exp()).sum()
        exact = oracle(torch.tensor([[x_t]], dtype=torch.float64), torch.tensor([step]))[0]
        torch.testing.assert_close(exact, quad, rtol=1e-6, atol=0)


def test_guidance_loss_is_minimised_by_the_oracle(pair, schedule):
    """Lemma: h* = E[r(x_0) | x_t] minimises E‖h − r‖², so L(a h*) − L(h*) = (a − 1)² E[h*²] (the cross term
    E[h*(h* − r)] vanishes) — checked with common random numbers against Monte-Carlo error."""
    p, q = pair
    oracle = MixtureDensityRatio(p, q, schedule)
    gen = torch.Generator().manual_seed(2)
    x0 = p.sample(40_000, gen).double()
    t = torch.randint(0, T, (len(x0),), generator=gen)
    noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    loss = {a: guidance_loss(lambda x, s, a=a: a * oracle(x, s), oracle.source_logit, schedule, x0, t, noise)[0].item()
            for a in (0.8, 1.0, 1.2)}
    h2 = oracle(q_sample(schedule, x0, t, noise), t).pow(2).mean().item()
    for a in (0.8, 1.2):
        assert loss[a] > loss[1.0]
        assert abs((loss[a] - loss[1.0]) - (a - 1) ** 2 * h2) < 0.1 * (a - 1) ** 2 * h2, (a, loss, h2)


def test_oracle_gradient_matches_autograd_and_conditional_joint(pair, schedule):
    p, q = pair
    x, t = _points(64, 3)
    for conditional in (False, True):
        oracle = MixtureDensityRatio(p, q, schedule, conditional=conditional)
        y = torch.randint(0, 3, (64,), generator=torch.Generator().manual_seed(4)) if conditional else None
        torch.testing.assert_close(oracle.grad_log_h(x, t, y), grad_log_h(oracle, x, t, y))
    # log h(x, t, y) = log q_t(x, y) − log p_t(x, y) with p_t(x, y) = w_y N(x; √ᾱ μ_y, C_y)
    oracle = MixtureDensityRatio(p, q, schedule, conditional=True)
    y = torch.full((64,), 1)
    ab = schedule.alpha_bar[t]
    one = [GaussianMixture(g.means[1:2], g.covs[1:2], torch.ones(1)) for g in (p, q)]
    direct = (q.weights[1].log() + one[1].noised_log_prob(x, ab)) - (p.weights[1].log() + one[0].noised_log_prob(x, ab))
    torch.testing.assert_close(oracle.log_h(x, t, y), direct)


# ------------------------------------------------------------------------------------ sign and scale
def test_guided_eps_is_the_exact_target_eps(pair, schedule):
    """ε_p* − σ_t ∇ log h* = ε_q* exactly (every t); the public code's ε + ∇ log h (wrong sign, no σ_t) is not."""
    p, q = pair
    x, t = _points(400, 5)
    eps_p, eps_q = p.optimal_eps_model(schedule), q.optimal_eps_model(schedule)
    oracle = MixtureDensityRatio(p, q, schedule)
    guided = DensityRatioGuidance(eps_p, oracle, schedule)
    torch.testing.assert_close(guided(x, t), eps_q(x, t), rtol=1e-9, atol=1e-9)
    sigma = (1 - schedule.alpha_bar[t]).sqrt()[:, None]
    torch.testing.assert_close(eps_q(x, t) - eps_p(x, t), -sigma * oracle.grad_log_h(x, t), rtol=1e-9, atol=1e-9)
    trap = eps_p(x, t) + oracle.grad_log_h(x, t)
    assert (trap - eps_q(x, t)).abs().max() > 0.5
    torch.testing.assert_close(DensityRatioGuidance(eps_p, oracle, schedule, scale=0.0)(x, t), eps_p(x, t))
    with torch.no_grad():                                              # as inside a sampler
        torch.testing.assert_close(guided(x, t[:1].expand(400)), eps_q(x, t[:1].expand(400)))


def test_conditional_guided_eps_is_the_exact_conditional_target_eps(pair, schedule):
    p, q = pair
    x, t = _points(300, 6)
    y = torch.randint(0, 3, (300,), generator=torch.Generator().manual_seed(7))
    guided = DensityRatioGuidance(MixtureConditionalEps(p, schedule), MixtureDensityRatio(p, q, schedule, True),
                                  schedule)
    assert guided.base_cond == "label"
    torch.testing.assert_close(guided(x, t, y), MixtureConditionalEps(q, schedule)(x, t, y), rtol=1e-9, atol=1e-9)


def test_exact_guidance_samples_the_target(pair, schedule):
    """Inside a whole sampler run, ε_p* guided by h* gives the very samples of ε_q* (same x_T), i.e. the target."""
    p, q = pair
    guided = DensityRatioGuidance(p.optimal_eps_model(schedule), MixtureDensityRatio(p, q, schedule), schedule)
    x_T = torch.randn(2000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    x = sample(guided, schedule, (2000, 2), method="ddim", steps=25, x_T=x_T, progress=False)
    torch.testing.assert_close(x, sample(q.optimal_eps_model(schedule), schedule, (2000, 2), method="ddim", steps=25,
                                         x_T=x_T, progress=False), rtol=1e-7, atol=1e-7)
    assert abs(mean_density(q, x) - mean_density(q, q.sample(2000, torch.Generator().manual_seed(9)))) < 0.03
    assert mean_density(q, x) > mean_density(q, p.sample(2000, torch.Generator().manual_seed(9))) + 0.03


# ------------------------------------------------------------------------------------ the losses at the optimum
def test_cycle_loss_is_zero_at_the_optimum(pair, schedule):
    """h* = q_t/p_t is a function of x_t, so with the exact noisy classifier the cycle loss is exactly 0."""
    p, q = pair
    oracle = MixtureDensityRatio(p, q, schedule)
    x0, t = q.sample(500, torch.Generator().manual_seed(10)).double(), _points(500, 11)[1]
    noise = torch.randn(500, 2, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    loss, clipped = cycle_loss(oracle, oracle.source_logit, schedule, x0, t, noise)
    assert loss.item() < 1e-20 and clipped.item() == 0
    off, _ = cycle_loss(lambda x, s: 1.1 * oracle(x, s), oracle.source_logit, schedule, x0, t, noise)
    assert off.item() > 1e-4


def test_guidance_and_cycle_losses_vanish_when_source_is_target(pair, schedule):
    p, _ = pair
    same = MixtureDensityRatio(p, p, schedule)
    x0, t = p.sample(300, torch.Generator().manual_seed(13)).double(), _points(300, 14)[1]
    noise = torch.randn(300, 2, generator=torch.Generator().manual_seed(15), dtype=torch.float64)
    one = lambda x, s: torch.ones(x.shape[0], dtype=x.dtype)
    assert guidance_loss(one, same.source_logit, schedule, x0, t, noise)[0].item() == 0
    assert cycle_loss(one, same.source_logit, schedule, x0, t, noise)[0].item() == 0


def test_consistency_loss_at_the_optimum_is_the_target_denoising_floor(pair, schedule):
    """With ε_p* and h*, the consistency loss equals L_simple of the exact target ε_q* on the same (x_0, t, ε):
    its excess over the Bayes floor is 0. With h ≡ 1 it is L_simple of ε_p* instead (larger on target data)."""
    p, q = pair
    oracle = MixtureDensityRatio(p, q, schedule)
    x0, t = q.sample(2000, torch.Generator().manual_seed(16)).double(), _points(2000, 17)[1]
    noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(18), dtype=torch.float64)
    eps_p, eps_q = p.optimal_eps_model(schedule), q.optimal_eps_model(schedule)
    ours = consistency_loss(oracle, eps_p, schedule, x0, t, noise)
    floor = l_simple(eps_q, schedule, x0, t, noise)
    torch.testing.assert_close(ours, floor, rtol=1e-9, atol=1e-12)
    flat = consistency_loss(lambda x, s: torch.ones(x.shape[0], dtype=x.dtype) + 0 * x.sum(1), eps_p, schedule,
                            x0, t, noise)
    torch.testing.assert_close(flat, l_simple(eps_p, schedule, x0, t, noise))
    assert flat > ours
    y = torch.randint(0, 3, (2000,), generator=torch.Generator().manual_seed(19))   # the conditional version
    cond = consistency_loss(MixtureDensityRatio(p, q, schedule, True), MixtureConditionalEps(p, schedule), schedule,
                            x0, t, noise, y)
    torch.testing.assert_close(cond, l_simple(MixtureConditionalEps(q, schedule), schedule, x0, t, noise, cond=y))


def test_tgdp_loss_combines_terms_and_reports_clipping(pair, schedule):
    p, q = pair
    oracle = MixtureDensityRatio(p, q, schedule)
    gen = torch.Generator().manual_seed(20)
    batch = {"source": p.sample(64, gen).double(), "target": q.sample(32, gen).double()}
    h = GuidanceNet(dim=2, width=16, depth=1, num_timesteps=T).double()
    eps_p = p.optimal_eps_model(schedule)
    full = tgdp_loss(schedule, oracle.source_logit, noisy_classifier=oracle.source_logit, source_eps=eps_p,
                     eta_cycle=0.5, eta_consistency=2.0)
    loss, terms = full(h, batch, torch.Generator().manual_seed(0))
    assert set(terms) == {"guidance", "cycle", "consistency", "clipped"}
    torch.testing.assert_close(loss, terms["guidance"] + 0.5 * terms["cycle"] + 2.0 * terms["consistency"])
    loss.backward()
    assert all(prm.grad is not None and torch.isfinite(prm.grad).all() for prm in h.parameters() if prm.requires_grad)
    # a classifier certain that everything is target: every ratio is cut at max_ratio, and the loss says so
    certain = tgdp_loss(schedule, lambda x: torch.full((x.shape[0],), -50.0, dtype=x.dtype), max_ratio=10.0)
    _, terms = certain(h, batch, torch.Generator().manual_seed(0))
    assert terms["clipped"] == 1.0 and set(terms) == {"guidance", "clipped"}
    with pytest.raises(ValueError, match="NaN logits"):
        tgdp_loss(schedule, lambda x: torch.full((x.shape[0],), float("nan")))(h, batch, gen)


# ------------------------------------------------------------------------------------ networks
def test_guidance_net_is_positive_starts_at_one_and_log_h_is_finite():
    h = GuidanceNet(dim=2, width=32, depth=2, num_timesteps=T)
    x, t = _points(50, 21, dtype=torch.float32)
    out = h(x, t)
    assert out.shape == (50,) and (out > 0).all()
    torch.testing.assert_close(out, torch.ones(50), atol=0.15, rtol=0)       # softplus(log(e − 1)) = 1 at the start
    torch.testing.assert_close(h.log_h(x, t), out.log())
    u = torch.tensor([-200.0, -30.0, -15.0, 0.0, 30.0], requires_grad=True)
    val = log_softplus(u)
    torch.testing.assert_close(val[1:], torch.nn.functional.softplus(u[1:].double()).log().float(), rtol=1e-5, atol=0)
    assert val[0] == -200.0
    (g,) = torch.autograd.grad(val.sum(), u)
    assert torch.isfinite(g).all()


def test_domain_classifier_clocks_and_labels():
    x = torch.randn(8, 2)
    assert DomainClassifier(dim=2)(x).shape == (8,)
    with pytest.raises(ValueError, match="time-independent"):
        DomainClassifier(dim=2)(x, torch.zeros(8, dtype=torch.long))
    noisy = DomainClassifier(dim=2, num_timesteps=T)
    assert noisy(x, torch.zeros(8, dtype=torch.long)).shape == (8,)
    with pytest.raises(ValueError, match="pass t"):
        noisy(x)
    labelled = DomainClassifier(dim=2, num_classes=3)
    assert labelled(x, None, torch.arange(8) % 3).shape == (8,)
    with pytest.raises(ValueError, match="class-conditional"):
        labelled(x)
    with pytest.raises(ValueError, match=r"shape \(B, 2\)"):
        labelled(torch.randn(8, 3), None, torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match="emb_dim must be even"):
        DomainClassifier(emb_dim=7)
    with pytest.raises(TypeError, match="num_timesteps"):
        GuidanceNet(num_timesteps=None)


# ------------------------------------------------------------------------------------ training calls
def test_fit_tgdp_pipeline_and_baselines_run(pair, schedule):
    """Tiny budgets: every piece trains, guides a sampler, and leaves the source model untouched."""
    p, q = pair
    gen = torch.Generator().manual_seed(22)
    xs, xt = p.sample(400, gen), q.sample(10, gen)
    src = MLPDenoiser(dim=2, width=16, depth=1, num_timesteps=T)
    before = {k: v.clone() for k, v in src.state_dict().items()}
    clf = fit_domain_classifier(xs, xt, steps=5, batch_size=32, progress=False)
    noisy = fit_domain_classifier(xs, xt, schedule=schedule, steps=5, batch_size=32, progress=False)
    history = []
    h = fit_guidance_net(schedule, clf, xs, x_target=xt, source_eps=src, noisy_classifier=noisy, eta_cycle=1.0,
                         eta_consistency=1.0, steps=5, batch_size=32, width=16, depth=1, progress=False,
                         history=history)
    assert len(history) == 5 and {"guidance", "cycle", "consistency", "clipped"} <= set(history[-1])
    x = sample(DensityRatioGuidance(src, h, schedule), schedule, (20, 2), method="ddim", steps=5, progress=False,
               generator=torch.Generator().manual_seed(0))
    assert x.shape == (20, 2) and torch.isfinite(x).all()
    vanilla = fit_baseline("vanilla", src, schedule, xt, steps=3, batch_size=8, progress=False)
    tuned = fit_baseline("fine-tune", src, schedule, xt, steps=1, batch_size=8, lr=1e-6, progress=False)
    assert type(vanilla) is MLPDenoiser and vanilla.width == src.width
    assert not torch.allclose(vanilla.inp.weight, src.inp.weight)
    torch.testing.assert_close(tuned.inp.weight, src.inp.weight, atol=1e-4, rtol=0)    # starts from the source
    for k, v in src.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_conditional_pipeline_runs(pair, schedule):
    p, q = pair
    gen = torch.Generator().manual_seed(23)
    (xs, ys), (xt, yt) = p.sample(300, gen, return_labels=True), q.sample(12, gen, return_labels=True)
    clf = fit_domain_classifier(xs, xt, y_source=ys, y_target=yt, num_classes=3, steps=5, batch_size=16,
                                progress=False)
    h = fit_guidance_net(schedule, clf, xs, y_source=ys, num_classes=3, steps=5, batch_size=16, width=16, depth=1,
                         progress=False)
    src = MLPDenoiser(dim=2, width=16, depth=1, num_timesteps=T, num_classes=3)
    labels = torch.arange(6) % 3
    x = sample(DensityRatioGuidance(src, h, schedule), schedule, (6, 2), method="ddim", steps=4, cond=labels,
               progress=False, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(x).all()
    with pytest.raises(ValueError, match="num_classes"):
        fit_domain_classifier(xs, xt, y_source=ys, y_target=yt, steps=1, progress=False)


# ------------------------------------------------------------------------------------ setups and metrics
def test_tilt_makes_the_log_ratio_linear():
    p, q = transfer_pair("A")
    x = _points(200, 24)[0]
    log_ratio = q.log_prob(x) - p.log_prob(x)
    linear = x @ torch.tensor(THETA_A, dtype=torch.float64)
    torch.testing.assert_close(log_ratio - linear, (log_ratio - linear)[:1].expand(200))   # − log Z, a constant
    p_b, q_b = transfer_pair("B")
    assert p_b.log_prob(torch.tensor([[3.0, 0.0]])).item() < q_b.log_prob(torch.tensor([[3.0, 0.0]])).item() - 8


def test_metrics_against_direct_formulas(pair):
    p, q = pair
    gen = torch.Generator().manual_seed(25)
    x, y = p.sample(300, gen), q.sample(200, gen)
    assert math.isclose(mean_density(q, x), q.log_prob(x).exp().mean().item(), rel_tol=1e-12)
    h = 0.3
    kernel = torch.distributions.MultivariateNormal(x.double(), h * h * torch.eye(2, dtype=torch.float64))
    direct = -(torch.logsumexp(kernel.log_prob(y.double()[:, None, :]), 1) - math.log(300)).mean().item()
    assert math.isclose(kde_nll(x, y, bandwidth=h), direct, rel_tol=1e-9)
    assert math.isclose(scott_bandwidth(x), x.double().std(0).mean().item() * 300 ** (-1 / 6), rel_tol=1e-9)
    collapsed = x[:1].expand(300, 2) + 1e-3 * torch.randn(300, 2, generator=gen)
    assert kde_nll(collapsed, y) > kde_nll(q.sample(300, gen), y) + 5          # mode collapse is punished


# ------------------------------------------------------------------------------------ bad inputs
def test_bad_inputs(pair, schedule):
    p, q = pair
    xs, xt = torch.randn(50, 2), torch.randn(10, 2)
    with pytest.raises(ValueError, match="same dimension"):
        check_domains(xs, torch.randn(10, 3))
    with pytest.raises(ValueError, match="too few target samples.*got 1"):
        fit_domain_classifier(xs, xt[:1], steps=1, progress=False)
    with pytest.raises(ValueError, match="x_target contains NaN"):
        check_domains(xs, torch.full((10, 2), float("nan")))
    with pytest.raises(ValueError, match="labels for both domains"):
        check_domains(xs, xt, y_source=torch.zeros(50, dtype=torch.long))
    with pytest.raises(ValueError, match="integer labels"):
        check_domains(xs, xt, torch.zeros(50), torch.zeros(10))
    with pytest.raises(ValueError, match="eta_cycle must be >= 0"):
        tgdp_loss(schedule, lambda x: x[:, 0], eta_cycle=-1.0)
    with pytest.raises(ValueError, match="eta_cycle must be finite"):
        tgdp_loss(schedule, lambda x: x[:, 0], eta_cycle=float("nan"))
    with pytest.raises(ValueError, match="needs noisy_classifier"):
        tgdp_loss(schedule, lambda x: x[:, 0], eta_cycle=1.0)
    with pytest.raises(ValueError, match="needs source_eps"):
        tgdp_loss(schedule, lambda x: x[:, 0], eta_consistency=1.0)
    with pytest.raises(ValueError, match="pass x_target"):
        fit_guidance_net(schedule, lambda x: x[:, 0], xs, eta_consistency=1.0, source_eps=lambda x, t: x)
    with pytest.raises(ValueError, match="batch\\['target'\\] is missing"):
        tgdp_loss(schedule, lambda x: x[:, 0], eta_consistency=1.0, source_eps=lambda x, t: x)(
            GuidanceNet(num_timesteps=T), {"source": xs}, torch.Generator())
    eps_p = p.optimal_eps_model(schedule)
    with pytest.raises(ValueError, match="built for T=1000"):
        DensityRatioGuidance(eps_p, GuidanceNet(num_timesteps=1000), schedule)
    with pytest.raises(ValueError, match="must be > 0"):
        DensityRatioGuidance(eps_p, lambda x, t: -torch.ones(x.shape[0]) + 0 * x.sum(1), schedule)(xs.double(),
                                                                                                torch.zeros(50).long())
    with pytest.raises(ValueError, match=r"one value per example"):
        DensityRatioGuidance(eps_p, lambda x, t: x, schedule)(xs.double(), torch.zeros(50).long())
    with pytest.raises(TypeError, match="h must be callable"):
        DensityRatioGuidance(eps_p, 3.0, schedule)
    with pytest.raises(ValueError, match="same dimension"):
        MixtureDensityRatio(p, GaussianMixture.isotropic([[0.0]], 1.0), schedule)
    with pytest.raises(ValueError, match="one class per component"):
        MixtureDensityRatio(p, GaussianMixture.isotropic([[0.0, 0.0]], 1.0), schedule, conditional=True)
    with pytest.raises(ValueError, match="labels must be in"):
        MixtureDensityRatio(p, q, schedule, conditional=True)(xs.double(), 3, torch.full((50,), 3))
    with pytest.raises(ValueError, match="is unconditional"):
        MixtureDensityRatio(p, q, schedule)(xs.double(), 3, torch.zeros(50, dtype=torch.long))
    with pytest.raises(ValueError, match="kind must be one of"):
        fit_baseline("scratch", MLPDenoiser(num_timesteps=T), schedule, xt)
    with pytest.raises(ValueError, match="same dimension"):
        kde_nll(xs, torch.randn(5, 3))
    with pytest.raises(ValueError, match="bandwidth must be > 0"):
        kde_nll(xs, xt, bandwidth=0.0)
    with pytest.raises(ValueError, match="NaN or inf"):
        mean_density(q, torch.full((3, 2), float("nan")))
    with pytest.raises(ValueError, match="theta must be 2 finite numbers"):
        tilt(p, [1.0])
    with pytest.raises(ValueError, match="setup must be one of"):
        transfer_pair("C")
    with pytest.raises(ValueError, match=r"\{'source': \.\.\., 'target': \.\.\.\}"):
        domain_classifier_loss()(DomainClassifier(), {"source": xs}, torch.Generator())
    with pytest.raises(TypeError, match="history must be a list"):
        fit_domain_classifier(xs, xt, steps=1, progress=False, history={})
