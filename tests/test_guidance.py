"""Chapter 4 guidance: the CFG combination, condition dropout, classifier guidance on analytic
cases, the eps-model contract under every sampler, and bad inputs."""
import math

import numpy as np
import pytest
import torch

import minidiff

from minidiff import MLPDenoiser, NoiseSchedule, UNet, ddim_loop, ddpm_loop, diffusion_loss, fit, sample
from minidiff.data import GaussianMixture
from minidiff.eps import eps_to_x0
from minidiff.guidance import (ClassifierFreeGuidance, ClassifierGuidance, GradientGuidance, MixtureConditionalEps,
                               MixturePosterior, cfg_combine, check_guidance_scale, classifier_loss)
from minidiff.nets import NoisyClassifier2D

T = 50


@pytest.fixture
def schedule():
    return NoiseSchedule.linear(T, beta_start=1e-3, beta_end=0.2)


@pytest.fixture
def gmm():
    return GaussianMixture.isotropic([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]], [0.5, 0.3, 0.7], [0.5, 0.3, 0.2])


class Recorder(torch.nn.Module):
    """A conditional eps-model with a null token that records every call (batch size, cond)."""

    num_timesteps = T

    def __init__(self, num_classes=3):
        super().__init__()
        self.class_embed = torch.nn.Module()
        self.class_embed.null_label = num_classes
        self.num_classes = num_classes
        self.calls = []

    def forward(self, x, t, cond=None):
        self.calls.append((x.shape[0], None if cond is None else cond.clone()))
        # depends on x, t and the label, so the two halves differ
        return torch.sin(x * (1 + cond.float()[:, None])) + 0.01 * t.float()[:, None]


# ------------------------------------------------------------------------------ CFG combination


def test_cfg_combination_and_diffusers_convention(generator):
    ec, eu = torch.randn(2, 4, 3, generator=generator, dtype=torch.float64)
    for w in (0.0, 0.5, 1.0, 4.0):
        out = cfg_combine(ec, eu, w)
        torch.testing.assert_close(out, (1 + w) * ec - w * eu)          # Ho & Salimans eq. 6
        g = 1 + w                                                        # diffusers' guidance_scale
        torch.testing.assert_close(out, eu + g * (ec - eu))              # StableDiffusionPipeline's formula
    torch.testing.assert_close(cfg_combine(ec, eu, 0.0), ec)             # w = 0: the conditional model
    with pytest.raises(ValueError, match="same shape"):
        cfg_combine(ec, eu[:, :2], 1.0)


def test_cfg_is_one_batched_pass(generator):
    model = Recorder()
    x, t = torch.randn(5, 2, generator=generator), torch.full((5,), 7)
    y = torch.tensor([0, 1, 2, 1, 0])
    cfg = ClassifierFreeGuidance(model, w=2.0)
    out = cfg(x, t, y)
    assert len(model.calls) == 1 and model.calls[0][0] == 10
    assert torch.equal(model.calls[0][1], torch.tensor([0, 1, 2, 1, 0, 3, 3, 3, 3, 3]))
    ec, eu = model(x, t, y), model(x, t, torch.full((5,), 3))
    torch.testing.assert_close(out, 3 * ec - 2 * eu)
    # the diffusers constructor gives the same wrapper
    torch.testing.assert_close(ClassifierFreeGuidance.from_guidance_scale(model, 3.0)(x, t, y), out)
    assert cfg.guidance_scale == 3.0
    # w = 0 calls the conditional branch only; an int label broadcasts
    model.calls.clear()
    torch.testing.assert_close(ClassifierFreeGuidance(model, 0.0)(x, t, 2), model(x, t, torch.full((5,), 2)))
    assert model.calls[0][0] == 5


def test_cfg_with_a_tensor_null_condition(generator):
    """Embedding-valued conditions (chapter 10's text embeddings): the null condition is a tensor."""
    calls = []

    def model(x, t, cond):
        calls.append(cond.shape)
        return x * cond.mean(dim=(1, 2))[:, None]

    x, t = torch.randn(3, 2, generator=generator), torch.zeros(3, dtype=torch.long)
    cond, null = torch.randn(3, 4, 5, generator=generator), torch.zeros(1, 4, 5)
    out = ClassifierFreeGuidance(model, 1.5, null_label=null)(x, t, cond)
    torch.testing.assert_close(out, 2.5 * model(x, t, cond) - 1.5 * model(x, t, null.expand(3, 4, 5)))
    assert calls[0] == (6, 4, 5)

class MapRecorder:
    """An eps-model on mapping conditions {"label": (B,), "c_add": (B, 2), "context": (B, L, D)} that
    records every cond it sees; its own null condition is {"label": 3} (model.null_cond)."""

    num_timesteps = T
    null_cond = {"label": 3}

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, cond=None):
        self.calls.append(cond)
        if cond is None:
            return torch.cos(x)
        out = torch.sin(x * (1 + cond["label"].to(x)[:, None])) + 0.01 * t.to(x)[:, None]
        out = out + cond["c_add"] if "c_add" in cond else out
        return out + cond["context"].mean(1) if "context" in cond else out


def test_cfg_on_a_mapping_condition_nulls_the_label_and_keeps_c_add(generator):
    model = MapRecorder()
    x, t = torch.randn(4, 2, generator=generator), torch.full((4,), 7)
    c_add = torch.randn(4, 2, generator=generator)
    cond = {"label": torch.tensor([0, 1, 2, 1]), "c_add": c_add}
    out = ClassifierFreeGuidance(model, 1.5)(x, t, cond)
    assert len(model.calls) == 1
    seen = model.calls[0]
    assert torch.equal(seen["label"], torch.tensor([0, 1, 2, 1, 3, 3, 3, 3]))      # the model's null_cond
    assert torch.equal(seen["c_add"], torch.cat([c_add, c_add]))                    # untouched in the null half
    uncond = model(x, t, {"label": torch.full((4,), 3), "c_add": c_add})
    torch.testing.assert_close(out, 2.5 * model(x, t, cond) - 1.5 * uncond)
    # w = 0: the conditional model, one call on the plain batch
    model.calls.clear()
    torch.testing.assert_close(ClassifierFreeGuidance(model, 0.0)(x, t, cond), model(x, t, cond))
    assert model.calls[0]["label"].shape == (4,)


def test_cfg_nulls_only_the_keys_it_is_told(generator):
    model = MapRecorder()
    x, t = torch.randn(3, 2, generator=generator), torch.full((3,), 4)
    ctx, empty = torch.randn(3, 5, 2, generator=generator), torch.randn(1, 5, 2, generator=generator)
    cond = {"label": torch.tensor([0, 1, 2]), "context": ctx}
    null = {"label": 3, "context": empty}
    out = ClassifierFreeGuidance(model, 2.0, null)(x, t, cond)                     # default keys: label and context
    seen = model.calls[-1]
    assert torch.equal(seen["context"][3:], empty.expand(3, 5, 2)) and torch.equal(seen["context"][:3], ctx)
    torch.testing.assert_close(out, 3 * model(x, t, cond) - 2 * model(x, t, {"label": torch.full((3,), 3),
                                                                             "context": empty.expand(3, 5, 2)}))
    ClassifierFreeGuidance(model, 2.0, null, keys=("label",))(x, t, cond)            # the context passes through
    seen = model.calls[-1]
    assert torch.equal(seen["context"], torch.cat([ctx, ctx])) and torch.equal(seen["label"][3:], torch.full((3,), 3))
    ClassifierFreeGuidance(model, 2.0, null, keys=["context"])(x, t, cond)           # a list of names works too
    assert torch.equal(model.calls[-1]["label"], torch.tensor([0, 1, 2, 0, 1, 2]))


def test_wrappers_forward_the_null_condition_and_compose(generator):
    """model.null_cond wins over class_embed.null_label; wrappers forward it and num_timesteps, so
    CFG of a CFG-guided model finds its null: CFG(CFG(ε, w1), w2) = (1+w2) CFG(ε, w1) − w2 ε(∅)."""
    model = Recorder()
    model.null_cond = 1                                 # announced null beats the class_embed fallback (3)
    x, t, y = torch.randn(4, 2, generator=generator), torch.full((4,), 5), torch.tensor([0, 2, 2, 0])
    inner = ClassifierFreeGuidance(model, 1.0)
    assert inner.null_cond == 1 and inner.null_label == 1 and inner.num_timesteps == T
    inner(x, t, y)
    assert torch.equal(model.calls[-1][1][4:], torch.ones(4, dtype=torch.long))
    outer = ClassifierFreeGuidance(inner, 0.5)
    eu = model(x, t, torch.ones(4, dtype=torch.long))
    torch.testing.assert_close(outer(x, t, y), 1.5 * inner(x, t, y) - 0.5 * eu)
    cg = ClassifierGuidance(model, NoisyClassifier2D(num_classes=3, num_timesteps=T), 1.0, NoiseSchedule.linear(T))
    assert cg.null_cond == 1 and cg.num_timesteps == T and cg.base_cond == "label"
    assert ClassifierFreeGuidance(MapRecorder(), 1.0).null_cond == {"label": 3}
    assert ClassifierFreeGuidance(MapRecorder(), 1.0).null_label == 3


def test_cfg_old_null_label_keyword(generator):
    model = Recorder()
    x, t, y = torch.randn(4, 2, generator=generator), torch.full((4,), 5), torch.tensor([0, 2, 2, 0])
    new = ClassifierFreeGuidance(model, 1.0, null=2)(x, t, y)
    torch.testing.assert_close(ClassifierFreeGuidance(model, 1.0, null_label=2)(x, t, y), new)
    torch.testing.assert_close(ClassifierFreeGuidance.from_guidance_scale(model, 2.0, null_label=2)(x, t, y), new)
    torch.testing.assert_close(ClassifierFreeGuidance(model, 1.0, 2)(x, t, y), new)  # third positional: the null
    with pytest.raises(TypeError, match="give the null condition once"):
        ClassifierFreeGuidance(model, 1.0, null=2, null_label=2)


def test_null_token_dropout_rate_through_fit():
    """Condition dropout (CFG Alg. 1, line 3) at p_uncond, seen by a model with a null token."""
    seen = []

    class Spy(Recorder):
        def forward(self, x, t, cond=None):
            seen.append(cond.clone())
            return self.lin(x)

    spy = Spy(num_classes=10)
    spy.lin = torch.nn.Linear(2, 2)
    y = torch.arange(4000) % 10
    fit(spy, diffusion_loss(NoiseSchedule.linear(T), p_uncond=0.25, null_label=spy.class_embed.null_label),
        (torch.zeros(4000, 2), y), steps=20, batch_size=500, seed=3)
    labels = torch.cat(seen)
    rate = (labels == 10).float().mean().item()
    assert rate == pytest.approx(0.25, abs=3 * math.sqrt(0.25 * 0.75 / len(labels)))
    assert labels.min() >= 0 and labels.max() <= 10


# ------------------------------------------------------------------- classifier guidance, analytic


def test_classifier_guidance_gradient_sign_and_scale(schedule, generator):
    """Two classes N(±μ, I): the noised classes stay unit-variance, N(±√ᾱ μ, I), so
    log p(y=1|x_t) = log σ(2√ᾱ μ·x_t) and ∇ log p(y=1|x_t) = 2√ᾱ μ (1 − σ(2√ᾱ μ·x_t))."""
    mu = torch.tensor([1.5, -0.5], dtype=torch.float64)

    def classifier(x, t):
        a = schedule.alpha_bar[t].sqrt().to(x)[:, None] * (x @ mu)[:, None]
        return torch.cat([-a, a], dim=1)                     # logits; softmax gives σ(±2√ᾱ μ·x)

    zero = lambda x, t, cond=None: torch.zeros_like(x)       # isolate the guidance term
    x = torch.randn(64, 2, generator=generator, dtype=torch.float64)
    t = torch.randint(0, T, (64,), generator=generator)
    y = torch.ones(64, dtype=torch.long)
    ab = schedule.alpha_bar[t][:, None]
    grad = 2 * ab.sqrt() * mu * (1 - torch.sigmoid(2 * ab.sqrt() * (x @ mu)[:, None]))
    for s in (0.0, 0.5, 1.0, 3.0):
        eps = ClassifierGuidance(zero, classifier, s, schedule)(x, t, y)
        torch.testing.assert_close(eps, -s * (1 - ab).sqrt() * grad, rtol=1e-10, atol=1e-12)   # ADM eq. 14
    # sign: guiding towards class 1 moves the predicted x0 along +μ, towards class 0 along −μ
    g = ClassifierGuidance(zero, classifier, 2.0, schedule)
    x0_to_1 = eps_to_x0(x, g(x, t, y), ab) - eps_to_x0(x, zero(x, t), ab)
    x0_to_0 = eps_to_x0(x, g(x, t, 1 - y), ab) - eps_to_x0(x, zero(x, t), ab)
    assert ((x0_to_1 @ mu) > 0).all() and ((x0_to_0 @ mu) < 0).all()


def test_exact_mixture_identities(schedule, gmm, generator):
    """∇log p_t(x|y) = ∇log p_t(x) + ∇log p_t(y|x): classifier guidance with the exact posterior and
    s = 1 gives each component's own optimal eps; CFG with w equals classifier guidance with 1 + w."""
    x = 2 * torch.randn(40, 2, generator=generator, dtype=torch.float64)
    t = torch.randint(0, T, (40,), generator=generator)
    y = torch.randint(0, 3, (40,), generator=generator)
    uncond, post = gmm.optimal_eps_model(schedule), MixturePosterior(gmm, schedule)
    cond = MixtureConditionalEps(gmm, schedule)
    # each component as a one-component mixture: an independent construction of eps*(x | y)
    single = torch.stack([GaussianMixture(gmm.means[k:k + 1], gmm.covs[k:k + 1], torch.ones(1))
                          .optimal_eps_model(schedule)(x, t) for k in range(3)], 1)[torch.arange(40), y]
    torch.testing.assert_close(cond(x, t, y), single, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ClassifierGuidance(uncond, post, 1.0, schedule)(x, t, y), single, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(cond(x, t, torch.full((40,), 3)), uncond(x, t), rtol=1e-12, atol=1e-12)
    # the posterior is normalised and agrees with GaussianMixture.posterior at each noise level
    for step in (0, 20, T - 1):
        m, c = gmm.noised(schedule.alpha_bar[step:step + 1])
        ref = GaussianMixture(m[0], c[0], gmm.weights).posterior(x)
        torch.testing.assert_close(post(x, torch.full((40,), step)).exp(), ref, rtol=1e-9, atol=1e-12)
    for w in (0.0, 0.5, 2.0):
        cfg = ClassifierFreeGuidance(cond, w)
        torch.testing.assert_close(cfg(x, t, y), ClassifierGuidance(uncond, post, 1 + w, schedule)(x, t, y),
                                   rtol=1e-9, atol=1e-9)
        # classifier guidance on the *conditional* model with scale s is CFG with w = s
        torch.testing.assert_close(ClassifierGuidance(cond, post, w, schedule, base_cond="label")(x, t, y),
                                   cfg(x, t, y), rtol=1e-9, atol=1e-9)


def test_guided_sampling_hits_the_class(schedule, gmm):
    """DDPM with the exact eps* and exact posterior at s = 1 samples component y (its mean and std)."""
    n = 3000
    y = torch.full((n,), 1)
    guided = ClassifierGuidance(gmm.optimal_eps_model(schedule), MixturePosterior(gmm, schedule), 1.0, schedule)
    x = sample(guided, schedule, (n, 2), method="ddpm", cond=y, generator=torch.Generator().manual_seed(1), progress=False)
    assert torch.allclose(x.mean(0), gmm.means[1].float(), atol=0.05)
    assert torch.allclose(x.std(0), torch.tensor([0.3, 0.3]), atol=0.05)


def test_classifier_guidance_leaves_no_gradients_and_runs_under_no_grad(schedule, generator):
    torch.manual_seed(0)
    clf = NoisyClassifier2D(num_classes=3, num_timesteps=T)
    base = MLPDenoiser(num_timesteps=T)
    g = ClassifierGuidance(base, clf, 2.0, schedule)
    x = torch.randn(8, 2, generator=generator)
    with torch.no_grad():
        out = g(x, torch.full((8,), 10), torch.zeros(8, dtype=torch.long))
    assert out.shape == x.shape and not out.requires_grad
    assert all(p.grad is None for p in clf.parameters()) and all(p.grad is None for p in base.parameters())

class Quadratic(GradientGuidance):
    """log g(x) = −‖x − a‖²/2 per example, so ∇ log g = a − x exactly."""

    def __init__(self, eps_model, scale, schedule, a, **kwargs):
        super().__init__(eps_model, scale, schedule, **kwargs)
        self.a = a

    def log_g(self, x_t, t, cond):
        return -0.5 * (x_t - self.a).pow(2).flatten(1).sum(1)


def test_gradient_guidance_with_an_analytic_g(schedule, generator):
    """ε̃ = ε − s σ_t (a − x_t), with σ_t = √(1−ᾱ_t) at integer and fractional steps; a subclass
    supplies only log_g."""
    base = lambda x, t, cond=None: torch.sin(x)
    x = torch.randn(6, 1, 3, 3, generator=generator, dtype=torch.float64)       # images: σ_t broadcasts
    a = torch.randn(1, 3, 3, generator=generator, dtype=torch.float64)
    t = torch.tensor([0, 5, 10, 20, 30, T - 1])
    sigma = (1 - schedule.alpha_bar[t]).sqrt()[:, None, None, None]
    for s in (0.0, 0.5, 2.0):
        with torch.no_grad():                                                   # as inside a sampler
            out = Quadratic(base, s, schedule, a)(x, t)
        torch.testing.assert_close(out, torch.sin(x) - s * sigma * (a - x), rtol=1e-12, atol=1e-12)
        assert not out.requires_grad
    g = Quadratic(base, 1.5, schedule, a)
    torch.testing.assert_close(g.grad_log_g(x, t, None), a - x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g.sigma(t, x), sigma)
    tf = torch.full((6,), 10.5, dtype=torch.float64)
    sigma_f = (1 - (schedule.alpha_bar[10] * schedule.alpha_bar[11]).sqrt()).sqrt()
    torch.testing.assert_close(g(x, tf), torch.sin(x) - 1.5 * sigma_f * (a - x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g(x, 7), g(x, torch.full((6,), 7)))                # an int t broadcasts
    assert repr(g) == "Quadratic(scale=1.5, base_cond='none')"
    with pytest.raises(TypeError, match="abstract"):
        GradientGuidance(base, 1.0, schedule)


def test_gradient_guidance_is_per_example(schedule, generator):
    """Row b's guidance depends on x_b only: the batched call equals row-by-row calls, and moving the
    other rows leaves row 0 unchanged (a trained classifier, not only the analytic g)."""
    torch.manual_seed(0)
    clf = NoisyClassifier2D(num_classes=3, num_timesteps=T).eval()
    g = ClassifierGuidance(MLPDenoiser(num_timesteps=T).eval(), clf, 3.0, schedule)
    x = torch.randn(8, 2, generator=generator)
    t, y = torch.randint(0, T, (8,), generator=generator), torch.randint(0, 3, (8,), generator=generator)
    full = g(x, t, y)
    rows = torch.cat([g(x[b:b + 1], t[b:b + 1], y[b:b + 1]) for b in range(8)])
    torch.testing.assert_close(full, rows, rtol=1e-5, atol=1e-6)
    moved = x.clone()
    moved[1:] += 3.0
    torch.testing.assert_close(g(moved, t, y)[0], full[0], rtol=1e-6, atol=1e-7)
    grad = g.grad_log_prob(x, t, y)
    assert (grad[1:] - g.grad_log_prob(moved, t, y)[1:]).abs().max() > 1e-3      # the other rows did move


def test_gradient_guidance_base_cond_on_a_mapping(schedule, generator):
    """"label" passes the condition, "null" replaces its label by the model's null and keeps c_add,
    "none" calls the model unconditionally; log g always sees the full condition."""
    model, a = MapRecorder(), torch.tensor([0.5, -1.0])
    x, t = torch.randn(4, 2, generator=generator), torch.tensor([3, 9, 20, 33])
    cond = {"label": torch.tensor([0, 1, 2, 0]), "c_add": torch.randn(4, 2, generator=generator)}
    sigma = (1 - schedule.alpha_bar[t]).sqrt().float()[:, None]
    shift = 2.0 * sigma * (a - x)
    expected = {"label": cond, "null": {"label": torch.full((4,), 3), "c_add": cond["c_add"]}, "none": None}
    assert Quadratic(model, 2.0, schedule, a).base_cond == "label"                 # auto: the model has a null
    for base_cond, base_in in expected.items():
        out = Quadratic(model, 2.0, schedule, a, base_cond=base_cond)(x, t, cond)
        seen = model.calls[-1]
        assert seen is None if base_in is None else all(torch.equal(seen[k], v) for k, v in base_in.items())
        torch.testing.assert_close(out, model(x, t, base_in) - shift)
    # classifier guidance on a mapping: the classifier reads cond["label"], the base its null half
    clf = NoisyClassifier2D(num_classes=3, num_timesteps=T).eval()
    cg = ClassifierGuidance(model, clf, 2.0, schedule, base_cond="null")
    grad = cg.grad_log_prob(x, t, cond["label"])
    torch.testing.assert_close(cg(x, t, cond), model(x, t, expected["null"]) - 2.0 * sigma * grad)


# ------------------------------------------------------------------------- contract with samplers


def _wrappers(schedule):
    torch.manual_seed(0)
    cond_model = MLPDenoiser(num_timesteps=T, num_classes=3).eval()
    uncond_model = MLPDenoiser(num_timesteps=T).eval()
    clf = NoisyClassifier2D(num_classes=3, num_timesteps=T).eval()
    return {
        "cfg": ClassifierFreeGuidance(cond_model, 2.0),
        "cg-unconditional": ClassifierGuidance(uncond_model, clf, 2.0, schedule),
        "cg-conditional": ClassifierGuidance(cond_model, clf, 1.0, schedule),
        "cg-null": ClassifierGuidance(cond_model, clf, 1.0, schedule, base_cond="null"),
        # composition is function composition: classifier guidance on top of a CFG-guided model
        "cg-of-cfg": ClassifierGuidance(ClassifierFreeGuidance(cond_model, 1.0), clf, 1.0, schedule, base_cond="label"),
    }


@pytest.mark.parametrize("method, kwargs", [("ddpm", {}), ("ddim", {"steps": 10}), ("ddim", {"steps": 10, "eta": 1.0})],
                         ids=["ddpm", "ddim", "ddim-eta1"])
@pytest.mark.parametrize("name", ["cfg", "cg-unconditional", "cg-conditional", "cg-null", "cg-of-cfg"])
def test_wrappers_keep_the_contract_with_every_sampler(schedule, method, kwargs, name):
    model = _wrappers(schedule)[name]
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    runs = [sample(model, schedule, (6, 2), method=method, cond=y, generator=torch.Generator().manual_seed(5),
                   progress=False, **kwargs) for _ in range(2)]
    assert runs[0].shape == (6, 2) and torch.isfinite(runs[0]).all()
    assert torch.equal(runs[0], runs[1])
    loop = ddpm_loop(model, schedule, torch.randn(6, 2), cond=y, progress=False) if method == "ddpm" else \
        ddim_loop(model, schedule, torch.randn(6, 2), steps=5, cond=y, progress=False)
    assert all(state["x"].shape == (6, 2) for state in loop)


def test_zero_guidance_is_the_base_model(schedule):
    torch.manual_seed(0)
    cond_model = MLPDenoiser(num_timesteps=T, num_classes=3).eval()
    clf = NoisyClassifier2D(num_classes=3, num_timesteps=T).eval()
    y, x_T = torch.tensor([0, 1, 2, 2]), torch.randn(4, 2, generator=torch.Generator().manual_seed(2))
    base = sample(cond_model, schedule, (4, 2), method="ddim", steps=10, cond=y, x_T=x_T, progress=False)
    for wrapped in (ClassifierFreeGuidance(cond_model, 0.0), ClassifierGuidance(cond_model, clf, 0.0, schedule)):
        torch.testing.assert_close(sample(wrapped, schedule, (4, 2), method="ddim", steps=10, cond=y, x_T=x_T,
                                          progress=False), base)


def test_classifier_loss_trains_a_noisy_classifier(schedule, gmm):
    x, y = gmm.sample(2000, torch.Generator().manual_seed(0), return_labels=True)
    torch.manual_seed(0)
    clf = NoisyClassifier2D(num_classes=3, num_timesteps=T, width=64, depth=2)
    losses = fit(clf, classifier_loss(schedule), (x, y), steps=150, batch_size=256, lr=3e-3, seed=0, progress=False)
    post = MixturePosterior(gmm, schedule)
    gen = torch.Generator().manual_seed(1)
    t = torch.randint(0, T, (2000,), generator=gen)
    x_t = minidiff.q_sample(schedule, x, t, generator=gen)
    with torch.no_grad():
        ce_trained = torch.nn.functional.cross_entropy(clf(x_t, t), y).item()
        ce_bayes = torch.nn.functional.nll_loss(post(x_t, t), y).item()   # the exact posterior: the floor
        agree = (clf(x, torch.full((2000,), 2)).argmax(1) == post(x, torch.full((2000,), 2)).argmax(1)).float().mean()
    assert sum(losses[-20:]) / 20 < sum(losses[:5]) / 5
    assert ce_bayes < ce_trained < ce_bayes + 0.05, (ce_trained, ce_bayes)
    assert agree > 0.95
    with pytest.raises(ValueError, match="labelled data"):
        classifier_loss(schedule)(clf, x, torch.Generator())


# ------------------------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize("bad", [float("nan"), -0.5, float("inf"), "2", None, True, torch.tensor([1.0, 2.0]),
                                 torch.tensor(True), torch.tensor(float("-inf"))])
def test_bad_guidance_weights_name_the_argument(schedule, bad):
    model, clf = Recorder(), NoisyClassifier2D(num_classes=3, num_timesteps=T)
    with pytest.raises(ValueError, match=r"^w must"):
        ClassifierFreeGuidance(model, bad)
    with pytest.raises(ValueError, match=r"^scale must"):
        ClassifierGuidance(model, clf, bad, schedule)
    with pytest.raises(ValueError, match=r"^guidance_scale must"):
        ClassifierFreeGuidance.from_guidance_scale(model, bad)
    with pytest.raises(ValueError, match="w must"):
        cfg_combine(torch.zeros(2), torch.zeros(2), bad)


def test_guidance_scale_below_one_and_valid_scales():
    with pytest.raises(ValueError, match="guidance_scale g = 1 \\+ w must be >= 1"):
        ClassifierFreeGuidance.from_guidance_scale(Recorder(), 0.5)
    assert check_guidance_scale(0, "w") == 0.0 and check_guidance_scale(torch.tensor(2.5), "w") == 2.5
    assert check_guidance_scale(np.float32(1.5), "w") == 1.5 and check_guidance_scale(np.int64(3), "w") == 3.0
    with pytest.raises(ValueError, match="w must be a finite number >= 0"):
        check_guidance_scale(torch.tensor(float("nan")), "w")


def test_cfg_needs_a_null_token_and_a_condition(schedule, generator):
    with pytest.raises(ValueError, match="null condition"):
        ClassifierFreeGuidance(MLPDenoiser(num_timesteps=T), 1.0)          # unconditional: no null token
    with pytest.raises(ValueError, match="null condition"):
        ClassifierFreeGuidance(lambda x, t, cond=None: x, 1.0)
    cfg = ClassifierFreeGuidance(MLPDenoiser(num_timesteps=T, num_classes=3), 1.0)
    x, t = torch.randn(4, 2, generator=generator), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="needs a condition"):
        cfg(x, t)
    with pytest.raises(ValueError, match="needs a condition"):
        sample(cfg, schedule, (4, 2), method="ddim", steps=5, progress=False)
    with pytest.raises(ValueError, match="integer class labels"):
        cfg(x, t, torch.zeros(4))
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        cfg(x, t, torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("label", [-1, 4])
def test_labels_out_of_range(schedule, generator, label):
    torch.manual_seed(0)
    model = MLPDenoiser(num_timesteps=T, num_classes=3)
    clf = NoisyClassifier2D(num_classes=3, num_timesteps=T)
    x, t = torch.randn(4, 2, generator=generator), torch.zeros(4, dtype=torch.long)
    y = torch.tensor([0, 1, 2, label])
    with pytest.raises(ValueError, match="class labels must be in"):
        ClassifierFreeGuidance(model, 1.0)(x, t, y)                        # ClassEmbedding's check
    with pytest.raises(ValueError, match=r"class labels must be in \[0, 3\)"):
        ClassifierGuidance(MLPDenoiser(num_timesteps=T), clf, 1.0, schedule)(x, t, y)
    with pytest.raises(ValueError, match="class labels must be in"):
        sample(model, schedule, (4, 2), method="ddim", steps=5, cond=y, progress=False)
    # the null label itself is not a class the classifier knows
    with pytest.raises(ValueError, match=r"class labels must be in \[0, 3\)"):
        ClassifierGuidance(MLPDenoiser(num_timesteps=T), clf, 1.0, schedule)(x, t, torch.full((4,), 3))


def test_conditional_model_without_condition(schedule, generator):
    model = MLPDenoiser(num_timesteps=T, num_classes=3)
    with pytest.raises(ValueError, match="class-conditional: pass cond=labels"):
        sample(model, schedule, (4, 2), method="ddim", steps=5, progress=False)
    with pytest.raises(ValueError, match="class-conditional: pass cond=labels"):
        sample(UNet(image_size=8, base_channels=8, num_timesteps=T, num_classes=10), schedule, (2, 1, 8, 8),
               method="ddim", steps=2, progress=False)
    clf = NoisyClassifier2D(num_classes=3, num_timesteps=T)
    with pytest.raises(ValueError, match="classifier guidance needs the target class"):
        ClassifierGuidance(model, clf, 1.0, schedule)(torch.randn(4, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="class-conditional"):
        MixtureConditionalEps(GaussianMixture.ring(k=3), schedule)(torch.randn(4, 2), torch.zeros(4, dtype=torch.long))

@pytest.mark.parametrize("keys", ["label", (), ("label", 2), None, 3, {"label": 1}])
def test_bad_keys(schedule, keys):
    with pytest.raises(TypeError, match="keys must be a non-empty tuple of entry names"):
        ClassifierFreeGuidance(Recorder(), 1.0, keys=keys)
    with pytest.raises(TypeError, match="keys must be a non-empty tuple of entry names"):
        Quadratic(Recorder(), 1.0, schedule, torch.zeros(2), keys=keys)


@pytest.mark.parametrize("null, error, match", [
    ("zero", TypeError, "null must be an int"), (True, TypeError, "null must be an int"),
    (float("nan"), ValueError, "null must be finite"), (float("inf"), ValueError, "null must be finite"),
    (torch.tensor([0.0, float("nan")]), ValueError, "null must be finite"), ({}, ValueError, "empty mapping"),
    ({1: 3}, TypeError, "names"), ({"label": "x"}, TypeError, r"null\['label'\] must be an int"),
    ({"label": 3, "context": float("nan")}, ValueError, r"null\['context'\] must be finite")])
def test_bad_null_specs(schedule, null, error, match):
    with pytest.raises(error, match=match):
        ClassifierFreeGuidance(Recorder(), 1.0, null)
    with pytest.raises(error, match=match):
        Quadratic(Recorder(), 1.0, schedule, torch.zeros(2), base_cond="null", null=null)


def test_cfg_bad_conditions(generator):
    x, t = torch.randn(4, 2, generator=generator), torch.zeros(4, dtype=torch.long)
    model = MapRecorder()
    cfg = ClassifierFreeGuidance(model, 1.0)
    with pytest.raises(ValueError, match="batch size 3, expected 4"):
        cfg(x, t, {"label": torch.zeros(4, dtype=torch.long), "c_add": torch.zeros(3, 2)})
    with pytest.raises(ValueError, match=r"cond\['label'\] must be integer class labels"):
        cfg(x, t, {"label": torch.zeros(4)})
    with pytest.raises(ValueError, match=r"cond\['label'\] must have shape \(B,\)=\(4,\)"):
        cfg(x, t, {"label": torch.zeros(4, 1, dtype=torch.long)})
    with pytest.raises(ValueError, match="none of keys=\\('label', 'context'\\)"):
        cfg(x, t, {"c_add": torch.zeros(4, 2)})
    with pytest.raises(ValueError, match=r"no null value for cond entries \['context'\]"):
        cfg(x, t, {"label": torch.zeros(4, dtype=torch.long), "context": torch.zeros(4, 5, 2)})
    with pytest.raises(TypeError, match="map names \\(str\\) to tensors"):
        cfg(x, t, {"label": [0, 1, 2, 3]})
    # embedding-valued conditions with a tensor null
    emb = ClassifierFreeGuidance(lambda x, t, cond: x * cond.mean(dim=(1, 2))[:, None], 1.0, null=torch.zeros(1, 4, 5))
    with pytest.raises(ValueError, match=r"null value for cond must have shape \(4, 5\) or \(1, 4, 5\)"):
        ClassifierFreeGuidance(emb.eps_model, 1.0, null=torch.zeros(1, 5))(x, t, torch.zeros(4, 4, 5))
    with pytest.raises(ValueError, match="batch size 3, expected 4"):
        emb(x, t, torch.zeros(3, 4, 5))
    with pytest.raises(TypeError, match="cond must be None, a tensor"):
        emb(x, t, "a cat")
    with pytest.raises(TypeError, match="cond is a plain tensor"):
        ClassifierFreeGuidance(emb.eps_model, 1.0, null={"context": torch.zeros(1, 4, 5)})(x, t, torch.zeros(4, 4, 5))
    with pytest.raises(TypeError, match="cond must be integer class labels \\(B,\\) or an int, got str"):
        ClassifierFreeGuidance(Recorder(), 1.0)(x, t, "three")
    with pytest.raises(TypeError, match="eps_model must be callable"):
        ClassifierFreeGuidance("model", 1.0, null=3)


def test_gradient_guidance_bad_inputs(schedule, generator):
    x, t = torch.randn(4, 2, generator=generator), torch.zeros(4, dtype=torch.long)
    a, base = torch.zeros(2), lambda x, t, cond=None: torch.zeros_like(x)
    for bad in ("maybe", None, 1, "cond"):
        with pytest.raises(ValueError, match="base_cond must be one of"):
            Quadratic(base, 1.0, schedule, a, base_cond=bad)
    with pytest.raises(ValueError, match="null token"):
        Quadratic(base, 1.0, schedule, a, base_cond="null")
    with pytest.raises(ValueError, match="nulls the condition, but cond is None"):
        Quadratic(base, 1.0, schedule, a, base_cond="null", null=3)(x, t)
    with pytest.raises(ValueError, match="batch size 3, expected 4"):
        Quadratic(base, 1.0, schedule, a)(x, t, torch.zeros(3))
    with pytest.raises(TypeError, match="eps_model must be callable"):
        Quadratic(None, 1.0, schedule, a)
    with pytest.raises(ValueError, match=r"^scale must be one number >= 0, got a tensor of shape \(2,\)"):
        Quadratic(base, torch.tensor([1.0, 2.0]), schedule, a)

    class Wrong(GradientGuidance):
        def __init__(self, log_g, **kw):
            super().__init__(base, 1.0, schedule, **kw)
            self.fn = log_g

        def log_g(self, x_t, t, cond):
            return self.fn(x_t)

    with pytest.raises(ValueError, match=r"log_g must return one value per example, shape \(B,\)=\(4,\)"):
        Wrong(lambda x: -x.pow(2))(x, t)                                     # (B, 2): not summed per example
    with pytest.raises(ValueError, match="log_g must be differentiable in x_t"):
        Wrong(lambda x: -x.detach().pow(2).sum(1))(x, t)
    with pytest.raises(ValueError, match="log_g must be differentiable in x_t"):
        Wrong(lambda x: torch.zeros(4, requires_grad=True) * 1.0)(x, t)       # has a graph, but not through x_t
    # classifier guidance: the label entry, the classifier's output
    clf = NoisyClassifier2D(num_classes=3, num_timesteps=T)
    with pytest.raises(ValueError, match=r"cond\['label'\] \(B,\) is missing"):
        ClassifierGuidance(base, clf, 1.0, schedule)(x, t, {"c_add": torch.zeros(4, 2)})
    with pytest.raises(ValueError, match=r"cond\['label'\] must be integer class labels"):
        ClassifierGuidance(base, clf, 1.0, schedule)(x, t, {"label": torch.zeros(4)})
    with pytest.raises(ValueError, match=r"classifier\(x_t, t\) must return logits of shape \(B, K\)=\(4, K\)"):
        ClassifierGuidance(base, lambda x, t: x.sum(1), 1.0, schedule)(x, t, torch.zeros(4, dtype=torch.long))


def test_classifier_guidance_construction_errors(schedule):
    model, clf = MLPDenoiser(num_timesteps=T), NoisyClassifier2D(num_classes=3, num_timesteps=T)
    with pytest.raises(TypeError, match="NoiseSchedule"):
        ClassifierGuidance(model, clf, 1.0, schedule=None)
    with pytest.raises(ValueError, match="base_cond must be one of"):
        ClassifierGuidance(model, clf, 1.0, schedule, base_cond="maybe")
    with pytest.raises(ValueError, match="null token"):
        ClassifierGuidance(model, clf, 1.0, schedule, base_cond="null")
    with pytest.raises(ValueError, match="built for T=1000"):
        ClassifierGuidance(MLPDenoiser(num_timesteps=1000), clf, 1.0, schedule)
    with pytest.raises(TypeError, match="callables"):
        ClassifierGuidance(model, "classifier", 1.0, schedule)


def test_exact_mixture_references_bad_inputs(schedule, gmm):
    post, cond = MixturePosterior(gmm, schedule), MixtureConditionalEps(gmm, schedule)
    t = torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"x_t must have shape \(B, 2\)"):
        post(torch.zeros(4, 3), t)
    with pytest.raises(ValueError, match=r"t must be in \[0, T\)"):
        post(torch.zeros(4, 2), torch.full((4,), T))
    with pytest.raises(ValueError, match=r"class labels must be in \[0, 3\) \(or 3 = null\)"):
        cond(torch.zeros(4, 2), t, torch.tensor([0, 1, 2, 4]))
    assert ClassifierFreeGuidance(cond, 1.0).null_label == 3


def test_classifier_guidance_at_fractional_steps(schedule, gmm, generator):
    """Continuous-time samplers (chapter 3) feed fractional step indices: ᾱ interpolates log-linearly."""
    g = ClassifierGuidance(gmm.optimal_eps_model(schedule), MixturePosterior(gmm, schedule), 2.0, schedule)
    x = torch.randn(6, 2, generator=generator, dtype=torch.float64)
    t = torch.tensor([0, 3, 10, 20, 30, T - 1])
    torch.testing.assert_close(g.alpha_bar(t.double(), x), g.alpha_bar(t, x), rtol=1e-12, atol=0)
    mid = g.alpha_bar(torch.full((6,), 10.5, dtype=torch.float64), x)
    torch.testing.assert_close(mid, (schedule.alpha_bar[10] * schedule.alpha_bar[11]).sqrt().expand(6, 1))
    with pytest.raises(ValueError, match=r"t must be a step index in \[0, T-1\]"):
        g.alpha_bar(torch.full((6,), T - 0.5, dtype=torch.float64), x)


def test_mixture_references_equal_the_old_formulas_on_both_clocks(schedule, gmm, generator):
    """The references now share GaussianMixture's math (minidiff.exact); they still give the formulas they
    replaced: ε*(x, t, y) = −√(1−ᾱ) C_y⁻¹(√ᾱ μ_y − x) and log p_t(y|x) = log_softmax(log w_k + log N_k) —
    and on the continuous clock the same quantities of p_t = N(m μ_y, m² Σ_y + s² I)."""
    from minidiff.sde import VESDE, VPSDE, MixtureEps, noised_mixture

    x = 2 * torch.randn(40, 2, generator=generator, dtype=torch.float64)
    t = torch.randint(0, T, (40,), generator=generator)
    y = torch.randint(0, 3, (40,), generator=generator)
    ab = schedule.alpha_bar[t]
    m_y = ab.sqrt()[:, None] * gmm.means[y]
    C_y = ab[:, None, None] * gmm.covs[y] + (1 - ab)[:, None, None] * torch.eye(2, dtype=torch.float64)
    old_eps = -(1 - ab).sqrt()[:, None] * (torch.linalg.inv(C_y) @ (m_y - x)[..., None])[..., 0]
    torch.testing.assert_close(MixtureConditionalEps(gmm, schedule)(x, t, y), old_eps, rtol=1e-10, atol=1e-10)
    means, covs = gmm.noised(ab)
    joint = torch.distributions.MultivariateNormal(means, covs).log_prob(x[:, None]) + gmm.weights.log()
    torch.testing.assert_close(MixturePosterior(gmm, schedule)(x, t), joint.log_softmax(1), rtol=1e-10, atol=1e-10)
    for sde in (VPSDE(), VESDE(0.01, 5.0)):
        for tt in (0.05, 0.6):
            tb = torch.full((40,), tt, dtype=torch.float64)
            m, s = (float(v) for v in sde.marginal_coeffs(tt))
            p_t = noised_mixture(gmm, sde, tt)
            xg = x.clone().requires_grad_(True)
            comp = torch.distributions.MultivariateNormal(p_t.means[y], p_t.covs[y]).log_prob(xg)
            grad, = torch.autograd.grad(comp.sum(), xg)
            cond_sde = MixtureConditionalEps(gmm, sde)
            torch.testing.assert_close(cond_sde(x, tb, y), -s * grad, rtol=1e-9, atol=1e-9)
            torch.testing.assert_close(cond_sde(x, tb, torch.full((40,), 3)), MixtureEps(gmm, sde)(x, tb), rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(MixturePosterior(gmm, sde)(x, tb).exp(), p_t.posterior(x), rtol=1e-9, atol=1e-12)
    # an int label is broadcast to the batch
    torch.testing.assert_close(MixtureConditionalEps(gmm, schedule)(x, t, 1),
                               MixtureConditionalEps(gmm, schedule)(x, t, torch.ones(40, dtype=torch.long)))


def test_mixture_reference_construction_errors(schedule, gmm):
    from minidiff.sde import MixtureEps, VPSDE, noised_mixture

    with pytest.raises(ValueError, match="must be a NoiseSchedule .* or an SDE"):
        MixtureEps(gmm, "linear")
    with pytest.raises(ValueError, match="gmm must be a minidiff.data.GaussianMixture"):
        MixturePosterior(torch.zeros(3, 2), schedule)
    with pytest.raises(ValueError, match="conditional must be True or False"):
        MixtureEps(gmm, schedule, conditional=1)
    cond, t = MixtureConditionalEps(gmm, schedule), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="cond must be integer class labels"):
        cond(torch.zeros(4, 2), t, torch.zeros(4))
    with pytest.raises(ValueError, match=r"cond must have shape \(B,\)=\(4,\)"):
        cond(torch.zeros(4, 2), t, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="unconditional; got cond"):
        gmm.optimal_eps_model(schedule)(torch.zeros(4, 2), t, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"t must be in \[0, 1\]"):
        MixturePosterior(gmm, VPSDE())(torch.zeros(4, 2), torch.full((4,), 2.0))
    with pytest.raises(ValueError, match="one time t"):
        noised_mixture(gmm, VPSDE(), torch.tensor([0.1, 0.2]))


def test_gradient_guidance_refuses_a_continuous_clock_model(schedule, gmm):
    """t ∈ [0, 1] read as step indices would give the wrong σ_t silently: guide first, then bridge."""
    from minidiff.sde import ContinuousTime
    bridged = ContinuousTime.from_ddpm(gmm.optimal_eps_model(schedule))
    with pytest.raises(ValueError, match="continuous clock"):
        ClassifierGuidance(bridged, MixturePosterior(gmm, schedule), 1.0, schedule)
    guided = ContinuousTime.from_ddpm(ClassifierGuidance(gmm.optimal_eps_model(schedule),
                                                         MixturePosterior(gmm, schedule), 1.0, schedule))
    x, t = torch.randn(4, 2), torch.full((4,), 0.5, dtype=torch.float64)
    direct = ClassifierGuidance(gmm.optimal_eps_model(schedule), MixturePosterior(gmm, schedule), 1.0, schedule)
    index = (t * schedule.T - 1).float()                      # the bridge's map, t -> index t·T − 1
    torch.testing.assert_close(guided(x, t, torch.tensor([0, 1, 2, 0])), direct(x, index, torch.tensor([0, 1, 2, 0])))


def test_cfg_around_classifier_guidance(schedule, gmm, generator):
    """CFG may wrap classifier guidance: the unconditional half (null label) is left unguided, so with exact
    models CFG_w(CG_s(conditional)) = CG_{(1+w)(1+s)}(unconditional). It used to fail on the null label."""
    x = 2 * torch.randn(30, 2, generator=generator, dtype=torch.float64)
    t = torch.randint(0, T, (30,), generator=generator)
    y = torch.randint(0, 3, (30,), generator=generator)
    uncond, post = gmm.optimal_eps_model(schedule), MixturePosterior(gmm, schedule)
    cond = MixtureConditionalEps(gmm, schedule)
    for s, w in ((1.0, 0.5), (0.5, 2.0)):
        inner = ClassifierGuidance(cond, post, s, schedule, base_cond="label")
        torch.testing.assert_close(inner(x, t, torch.full((30,), 3)), uncond(x, t), rtol=1e-9, atol=1e-9)
        composite = ClassifierFreeGuidance(inner, w)
        torch.testing.assert_close(composite(x, t, y), ClassifierGuidance(uncond, post, (1 + w) * (1 + s), schedule)(x, t, y),
                                   rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match=r"must be in \[0, 3\) \(or 3 = null\), got min 4"):
        ClassifierGuidance(cond, post, 1.0, schedule, base_cond="label")(x, t, torch.full((30,), 4))
