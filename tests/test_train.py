"""The training loop (adapters, parameter groups, streams, loss terms), EMA, condition dropout, the cache."""
import math

import pytest
import torch
from torch import nn

from minidiff import EMA, NoiseSchedule, diffusion_loss, fit, train
from minidiff.cache import cache_path, load_or_train, load_or_train_logged
from minidiff.data import GaussianMixture
from minidiff.nets import MLPDenoiser
from minidiff.samplers import sample
from minidiff.train import move_batch, random_batches, set_train_modes, zip_batches


def _model(T=100, seed=0, **kw):
    torch.manual_seed(seed)
    return MLPDenoiser(num_timesteps=T, width=32, depth=2, **kw)


def _mse(model, batch, generator):
    x, y = batch
    return (model(x) - y).pow(2).mean()


class Adapted(nn.Module):
    """A frozen base with BatchNorm and Dropout plus a small trainable head: y = base(x) + head(x)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.base = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 1))
        self.head = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 1))
        self.base.requires_grad_(False)

    def forward(self, x):
        return self.base(x) + self.head(x)


def _regression(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    return x, x.sum(1, keepdim=True)


# --------------------------------------------------------------------------- the loop
def test_training_reduces_the_loss_and_yields_records(generator):
    s = NoiseSchedule.linear(100)
    data = GaussianMixture.ring().sample(2000, generator)
    model = _model()
    records = list(train(model, diffusion_loss(s), data, steps=300, batch_size=128, lr=3e-3))
    assert [r["step"] for r in records] == list(range(1, 301))
    first, last = sum(r["loss"] for r in records[:30]) / 30, sum(r["loss"] for r in records[-30:]) / 30
    assert last < 0.8 * first
    assert not model.training  # left in eval mode for sampling


def test_training_is_deterministic(generator):
    s = NoiseSchedule.linear(100)
    data = torch.randn(500, 2, generator=generator)
    losses = [fit(_model(), diffusion_loss(s), data, steps=20, seed=4) for _ in range(2)]
    assert losses[0] == losses[1]
    assert fit(_model(), diffusion_loss(s), data, steps=20, seed=5) != losses[0]


def test_warmup_ramps_learning_rate(generator):
    s = NoiseSchedule.linear(100)
    recs = list(train(_model(), diffusion_loss(s), torch.randn(64, 2, generator=generator), steps=10, lr=1e-2, warmup=5))
    assert [round(r["lr"], 6) for r in recs[:6]] == [0.002, 0.004, 0.006, 0.008, 0.01, 0.01]


def test_adapter_training_leaves_the_frozen_base_bit_identical():
    model, data = Adapted(), _regression()
    base_before = {k: v.clone() for k, v in model.base.state_dict().items()}
    head_before = [p.clone() for p in model.head.parameters()]
    modes = []

    def loss_fn(m, batch, g):
        modes.append((m.base.training, m.base[1].training, m.base[2].training, m.head.training, m.head[1].training))
        return _mse(m, batch, g)

    losses = fit(model, loss_fn, data, steps=20, batch_size=16, lr=1e-2, weight_decay=0.1)
    assert all(m == (False, False, False, True, True) for m in modes)  # frozen BN/Dropout in eval, head in train
    for k, v in model.base.state_dict().items():      # weights and BatchNorm running statistics
        assert torch.equal(v, base_before[k]), k
    assert all(not torch.equal(a, b) for a, b in zip(model.head.parameters(), head_before))
    assert len(losses) == 20 and not model.training


def test_set_train_modes_follows_parameters():
    model = set_train_modes(Adapted())
    assert not model.base.training and not model.base[2].training        # dropout under a frozen parent
    assert model.training and model.head.training and model.head[1].training


def test_param_groups_get_their_own_learning_rates():
    """After one AdamW step (no decay, no clipping) every weight moves by ≈ its group's lr (Adam's first step
    is lr · g / (|g| + ε))."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 4), nn.Tanh(), nn.Linear(4, 1))
    before = {n: p.clone() for n, p in model.named_parameters()}
    groups = {"first": {"params": lambda name: name.startswith("0."), "lr": 1e-3},
              "last": {"params": model[4].parameters(), "lr": 3e-2}}
    rec = next(train(model, _mse, _regression(), steps=1, batch_size=64, lr=1e-2, grad_clip=None, param_groups=groups))
    assert rec["lr"] == 1e-2 and rec["lr/first"] == 1e-3 and rec["lr/last"] == 3e-2
    for name, p in model.named_parameters():
        want = {"0": 1e-3, "2": 1e-2, "4": 3e-2}[name[0]]
        assert torch.allclose((p - before[name]).abs(), torch.full_like(p, want), rtol=1e-3), name


def test_param_group_errors():
    model, data = Adapted(), _regression()
    other = nn.Linear(2, 2)
    cases = [
        ({"a": {"params": model.head.parameters(), "momentum": 0.9}}, ValueError, "unknown options"),
        ({"a": {"params": lambda n: "nothing" in n}}, ValueError, "matches no trainable"),
        ({"a": {"params": model.base.parameters()}}, ValueError, "frozen parameter 'base.0.weight'"),
        ({"a": {"params": other.parameters()}}, ValueError, "not in the model"),
        ({"a": {"params": lambda n: True}, "b": {"params": lambda n: "head.0" in n}}, ValueError, "two groups"),
        ({"a": {"params": lambda n: True, "lr": -1.0}}, ValueError, r"\['lr'\]"),
        ({"a": {"lr": 1.0}}, TypeError, "'params'"),
        ({"a": {"params": "head"}}, TypeError, "predicate"),
        ([model.head.parameters()], TypeError, "param_groups must map"),
    ]
    for groups, err, match in cases:
        with pytest.raises(err, match=match):
            train(model, _mse, data, steps=1, param_groups=groups)
    with pytest.raises(ValueError, match="no trainable parameters"):
        train(model.base, _mse, data, steps=1)


def test_loss_terms_join_the_records():
    def loss_fn(m, batch, g):
        mse = _mse(m, batch, g)
        return mse, {"mse": mse, "half": 0.5}

    recs = list(train(Adapted(), loss_fn, _regression(), steps=3, batch_size=8))
    assert all(set(r) == {"step", "loss", "lr", "mse", "half"} for r in recs)
    assert all(r["mse"] == r["loss"] and r["half"] == 0.5 for r in recs)


def test_bad_losses_name_the_step():
    data = _regression()
    calls = []

    def nan_at_3(m, batch, g):
        calls.append(1)
        loss = _mse(m, batch, g)
        return loss * float("nan") if len(calls) == 3 else loss

    model = Adapted()
    with pytest.raises(ValueError, match="nan at step 3"):
        fit(model, nan_at_3, data, steps=5)
    assert not model.training
    bad = [(lambda m, b, g: (m(b[0]) - b[1]).pow(2), ValueError, r"shape \(128, 1\) at step 1"),
           (lambda m, b, g: 1.0, TypeError, "scalar tensor"),
           (lambda m, b, g: torch.tensor(1.0), ValueError, "does not depend on any trainable"),
           (lambda m, b, g: (_mse(m, b, g), {"loss": 1.0}), ValueError, "term names"),
           (lambda m, b, g: (_mse(m, b, g), {"v": torch.ones(3)}), ValueError, "term 'v'")]
    for fn, err, match in bad:
        with pytest.raises(err, match=match):
            fit(Adapted(), fn, data, steps=1)


@pytest.mark.parametrize("kwargs, err, match", [
    ({"steps": 0}, ValueError, "steps"), ({"steps": 2.5}, TypeError, "steps"), ({"steps": True}, TypeError, "steps"),
    ({"batch_size": 0}, ValueError, "batch_size"), ({"batch_size": 8.0}, TypeError, "batch_size"),
    ({"lr": 0.0}, ValueError, "lr"), ({"lr": -1e-3}, ValueError, "lr"), ({"lr": math.nan}, ValueError, "lr"),
    ({"lr": math.inf}, ValueError, "lr"), ({"lr": "1e-3"}, TypeError, "lr"),
    ({"weight_decay": -0.1}, ValueError, "weight_decay"), ({"weight_decay": math.nan}, ValueError, "weight_decay"),
    ({"grad_clip": -1.0}, ValueError, "grad_clip"), ({"grad_clip": 0}, ValueError, "grad_clip"),
    ({"grad_clip": math.inf}, ValueError, "grad_clip"), ({"grad_clip": True}, TypeError, "grad_clip"),
    ({"warmup": -5}, ValueError, "warmup"), ({"warmup": 1.5}, TypeError, "warmup"),
    ({"seed": -1}, ValueError, "seed"), ({"seed": False}, TypeError, "seed"),
    ({"ema": "yes"}, TypeError, "ema"),
])
def test_bad_arguments_are_rejected_before_training(kwargs, err, match):
    model = Adapted()
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(err, match=match):
        train(model, _mse, _regression(), **{"steps": 1, **kwargs})
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))


# --------------------------------------------------------------------------- data
def test_random_batches_errors_and_shapes(generator):
    batches = random_batches((torch.zeros(10, 2), torch.arange(10)), 4, generator)
    x, y = next(batches)
    assert x.shape == (4, 2) and y.shape == (4,)
    with pytest.raises(ValueError, match="first dimension"):
        next(random_batches((torch.zeros(10, 2), torch.arange(9)), 4, generator))
    with pytest.raises(ValueError, match="batch_size"):
        next(random_batches(torch.zeros(10, 2), 0, generator))
    with pytest.raises(ValueError, match="empty"):
        random_batches(torch.zeros(0, 2), 4, generator)
    with pytest.raises(TypeError, match="tensors"):
        random_batches((torch.zeros(3, 2), [1, 2, 3]), 4, generator)
    with pytest.raises(ValueError, match="steps"):
        next(train(_model(), lambda m, b, g: b.sum(), torch.zeros(4, 2), steps=0))


def test_random_batches_keep_mapping_conditions_aligned(generator):
    y = torch.arange(50)
    data = (y.float()[:, None], {"label": y, "context": y.float()[:, None, None].expand(50, 3, 2)})
    x, c = next(random_batches(data, 16, generator))
    assert torch.equal(c["label"].float(), x[:, 0]) and torch.equal(c["context"][:, 2, 1], x[:, 0])
    moved = move_batch((x, c), "cpu")
    assert isinstance(moved, tuple) and set(moved[1]) == {"label", "context"}


def test_streams_of_batches(generator):
    """Two datasets of different sizes, mixed per step; lists cycle; iterators must last."""
    src, tgt = torch.randn(1000, 3, generator=generator), torch.randn(20, 3, generator=generator)
    seen = []

    def loss_fn(m, batch, g):
        seen.append((batch["source"].shape, batch["target"].shape))
        return m(batch["source"]).pow(2).mean() + m(batch["target"]).pow(2).mean()

    stream = zip_batches(source=random_batches(src, 32, generator), target=random_batches(tgt, 8, generator))
    assert len(fit(Adapted(), loss_fn, stream, steps=4)) == 4
    assert seen == [((32, 3), (8, 3))] * 4
    epoch = [_regression(8, seed) for seed in range(3)]
    assert len(fit(Adapted(), _mse, epoch, steps=7)) == 7           # a list is re-read every epoch
    with pytest.raises(ValueError, match="ran out after 3 batches but steps=7"):
        fit(Adapted(), _mse, iter(epoch), steps=7)
    with pytest.raises(ValueError, match="empty"):
        fit(Adapted(), _mse, [], steps=1)
    with pytest.raises(TypeError, match="data must be"):
        train(Adapted(), _mse, 3.0, steps=1)
    with pytest.raises(ValueError, match="at least one"):
        zip_batches()


# --------------------------------------------------------------------------- EMA
def test_ema_update_rule_without_warmup():
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, decay=0.9, warmup=False)
    before = ema.model.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    assert torch.allclose(ema.model.weight, 0.9 * before + 0.1 * model.weight)
    assert not ema.model.weight.requires_grad and not ema.model.training


def test_ema_warmup_formula():
    ema = EMA(torch.nn.Linear(2, 2), decay=0.5)
    decays = []
    for _ in range(12):
        decays.append(ema.current_decay())
        ema.update(torch.nn.Linear(2, 2))
    # 0 at the first update, then min(decay, (1 + n) / (10 + n)) with n updates so far
    assert decays[:3] == [0.0, 2 / 11, 3 / 12] and decays[8] == 9 / 18 and decays[9] == 0.5 and decays[11] == 0.5
    assert ema.num_updates == 12 and EMA(torch.nn.Linear(2, 2), 0.5, warmup=False).current_decay() == 0.5


def test_ema_matches_diffusers_ema_model():
    diffusers_training = pytest.importorskip("diffusers.training_utils")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    ours = EMA(model, decay=0.95)
    ref = diffusers_training.EMAModel(model.parameters(), decay=0.95)
    for _ in range(30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ours.update(model)
        ref.step(model.parameters())
    for mine, theirs, p in zip(ours.model.parameters(), ref.shadow_params, model.parameters()):
        assert torch.allclose(mine, theirs, atol=1e-6)
    assert ours.model[0].weight is model[0].weight    # frozen parameters are shared, not copied
    assert ours.model[1].weight is not model[1].weight


def test_ema_matches_by_name_and_refuses_changed_models():
    model = Adapted()
    ema = EMA(model, decay=0.9)
    assert ema.names == ("head.0.weight", "head.0.bias", "head.2.weight", "head.2.bias")
    assert ema.model.base[0].weight is model.base[0].weight
    model.lora = nn.Linear(3, 1)                                   # injected after the EMA was made
    with pytest.raises(ValueError, match=r"new \['lora.bias', 'lora.weight'\]"):
        ema.update(model)
    with pytest.raises(ValueError, match="changed since the EMA"):
        train(model, _mse, _regression(), steps=1, ema=ema)
    del model.lora
    model.head[0].requires_grad_(False)
    with pytest.raises(ValueError, match=r"no longer trainable \['head.0.bias', 'head.0.weight'\]"):
        ema.update(model)
    model.head[0].requires_grad_(True)
    fit(model, _mse, _regression(), steps=3, ema=ema)
    fresh = Adapted()
    ema.copy_to(fresh)
    assert all(torch.equal(a, b) for a, b in zip(fresh.head.parameters(), ema.model.head.parameters()))
    with pytest.raises(ValueError, match="missing"):
        ema.load_state_dict({"head.0.weight": torch.zeros(4, 3)})
    with pytest.raises(ValueError, match="has shape"):
        ema.load_state_dict({**ema.state_dict(), "head.2.bias": torch.zeros(3)})


@pytest.mark.parametrize("decay, err", [(1.0, ValueError), (-0.1, ValueError), (math.nan, ValueError),
                                        (math.inf, ValueError), (True, TypeError), ("0.9", TypeError)])
def test_ema_bad_decay(decay, err):
    with pytest.raises(err, match="decay"):
        EMA(torch.nn.Linear(2, 2), decay=decay)


def test_ema_bad_arguments():
    with pytest.raises(TypeError, match="warmup"):
        EMA(torch.nn.Linear(2, 2), warmup=1)
    with pytest.raises(ValueError, match="no trainable"):
        EMA(torch.nn.Linear(2, 2).requires_grad_(False))


# --------------------------------------------------------------------------- condition dropout
class Spy(torch.nn.Module):
    num_timesteps = 100
    null_cond = {"label": 10, "context": torch.full((1, 3), -1.0)}

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, t, cond=None):
        self.seen.append(cond)
        return torch.zeros_like(x)


class NoNull(Spy):
    null_cond = None


def test_condition_dropout_rate():
    """diffusion_loss replaces labels by the null token with probability p_uncond."""
    s, spy = NoiseSchedule.linear(100), Spy()
    loss = diffusion_loss(s, p_uncond=0.2, null_label=10)
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (20_000,), generator=g)
    loss(spy, (torch.zeros(20_000, 2), y), g)
    seen = spy.seen[0]
    dropped = (seen == 10).float().mean().item()
    assert dropped == pytest.approx(0.2, abs=0.01)
    assert torch.equal(seen[seen != 10], y[seen != 10])


def test_condition_dropout_of_mappings_uses_the_model_null():
    """Label and context are dropped together with the model's null_cond; c_add passes untouched."""
    s, spy, n = NoiseSchedule.linear(100), Spy(), 20_000
    g = torch.Generator().manual_seed(1)
    cond = {"label": torch.randint(0, 10, (n,), generator=g), "context": torch.rand(n, 3, generator=g),
            "c_add": torch.rand(n, 2, generator=g)}
    diffusion_loss(s, p_uncond=0.3)(spy, (torch.zeros(n, 2), cond), g)
    out = spy.seen[0]
    dropped = out["label"] == 10
    assert dropped.float().mean().item() == pytest.approx(0.3, abs=0.012)
    assert torch.all(out["context"][dropped] == -1) and torch.equal(out["context"][~dropped], cond["context"][~dropped])
    assert torch.equal(out["c_add"], cond["c_add"])
    diffusion_loss(s, p_uncond=1.0, keys=("label",))(spy, (torch.zeros(n, 2), cond), g)
    assert torch.all(spy.seen[1]["label"] == 10) and torch.equal(spy.seen[1]["context"], cond["context"])


def test_diffusion_loss_errors():
    s = NoiseSchedule.linear(100)
    with pytest.raises(ValueError, match="null_cond"):
        diffusion_loss(s, p_uncond=0.1)(NoNull(), (torch.zeros(4, 2), torch.zeros(4).long()), None)
    for p, err in [(1.5, ValueError), (-0.1, ValueError), (math.nan, ValueError), (True, TypeError)]:
        with pytest.raises(err, match="p_uncond"):
            diffusion_loss(s, p_uncond=p, null_label=0)
    with pytest.raises(ValueError, match="once"):
        diffusion_loss(s, 0.1, null_label=0, null=0)
    with pytest.raises(TypeError, match="schedule"):
        diffusion_loss(100)
    with pytest.raises(TypeError, match="keys"):
        diffusion_loss(s, keys="label")
    with pytest.raises(ValueError, match=r"x0 or \(x0, cond\)"):
        diffusion_loss(s)(_model(), (torch.zeros(4, 2), None, None), None)


def test_conditional_training_learns_class_dependent_eps():
    """Two classes at -2 and +2 in 1-D: conditional samples land on their class; ε̂ matches the closed form."""
    s = NoiseSchedule.linear(100)
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (2000,), generator=g)
    mu, sd = torch.tensor([-2.0, 2.0]), 0.1
    x = (mu[y] + sd * torch.randn(2000, generator=g))[:, None]
    model = _model(dim=1, num_classes=2)
    fit(model, diffusion_loss(s, p_uncond=0.2, null_label=model.class_embed.null_label), (x, y),
        steps=400, batch_size=256, lr=3e-3, warmup=20)
    labels = torch.tensor([0] * 200 + [1] * 200)
    with torch.no_grad():
        out = sample(model, s, (400, 1), method="ddim", steps=20, cond=labels, generator=torch.Generator().manual_seed(1))
        # ε* at x_t = 0, t = 50 for a N(μ_c, sd²) class: √(1−ᾱ)(x_t − √ᾱ μ_c) / (ᾱ sd² + 1 − ᾱ)
        ab = s.alpha_bar[50].float()
        exact = (1 - ab).sqrt() * (0 - ab.sqrt() * mu) / (ab * sd ** 2 + 1 - ab)
        eps = model(torch.zeros(2, 1), torch.full((2,), 50), torch.tensor([0, 1]))[:, 0]
    assert out[:200].mean().item() == pytest.approx(-2.0, abs=0.3) and out[200:].mean().item() == pytest.approx(2.0, abs=0.3)
    assert torch.allclose(eps, exact, rtol=0.2), (eps, exact)          # a short run: within 20 %


# --------------------------------------------------------------------------- the cache
def test_load_or_train_logged_keeps_the_training_log(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIDIFF_CACHE", str(tmp_path))
    calls = []

    def train_fn(m):
        calls.append(1)
        return {"losses": [1.0, 0.5], "seconds": 2.5}

    _, log = load_or_train_logged("logged", {"a": 1}, _model(), train_fn)
    again, log_again = load_or_train_logged("logged", {"a": 1}, _model(), train_fn)
    assert len(calls) == 1 and log == log_again == {"losses": [1.0, 0.5], "seconds": 2.5}
    assert not again.training
    _, empty = load_or_train_logged("silent", {"a": 1}, _model(), lambda m: None)
    assert empty == {}
    _, uncached = load_or_train_logged("logged", {"a": 1}, _model(), train_fn, use_cache=False)
    assert len(calls) == 2 and uncached["seconds"] == 2.5
    with pytest.raises(TypeError, match="mapping"):
        load_or_train_logged("bad", {"a": 1}, _model(), lambda m: [1.0])


def test_load_or_train_caches_by_config(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIDIFF_CACHE", str(tmp_path))
    calls = []

    def train_fn(m):
        calls.append(1)
        with torch.no_grad():
            m.out[-1].bias.fill_(0.5)

    cfg = {"a": 1}
    load_or_train("toy", cfg, _model(), train_fn)
    again = load_or_train("toy", cfg, _model(), train_fn)
    assert len(calls) == 1 and torch.all(again.out[-1].bias == 0.5)
    load_or_train("toy", {"a": 2}, _model(), train_fn)
    assert len(calls) == 2 and cache_path("toy", cfg) != cache_path("toy", {"a": 2})
    load_or_train("toy", cfg, MLPDenoiser(num_timesteps=100, width=16, depth=2), train_fn)   # another architecture
    assert len(calls) == 3
    (cache_path("toy", cfg, _model()) / "model.safetensors").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable cache entry"):
        load_or_train("toy", cfg, _model(), train_fn)
    assert len(calls) == 4
    with pytest.raises(TypeError, match="JSON"):
        cache_path("toy", {"a": object()})
    with pytest.raises(ValueError, match="name"):
        cache_path("../x", cfg)
