"""The training loop, EMA, the diffusion loss with condition dropout, checkpoints, the cache."""
import pytest
import torch

from minidiff import EMA, NoiseSchedule, diffusion_loss, fit, load_checkpoint, save_checkpoint, train
from minidiff.cache import cache_path, load_or_train
from minidiff.data import GaussianMixture
from minidiff.nets import MLPDenoiser
from minidiff.train import random_batches


def _model(T=100, seed=0, **kw):
    torch.manual_seed(seed)
    return MLPDenoiser(num_timesteps=T, width=32, depth=2, **kw)


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


def test_ema_update_rule():
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, decay=0.9)
    before = ema.model.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    assert torch.allclose(ema.model.weight, 0.9 * before + 0.1 * model.weight)
    assert not ema.model.weight.requires_grad
    with pytest.raises(ValueError, match="decay"):
        EMA(model, decay=1.0)


def test_warmup_ramps_learning_rate(generator):
    s = NoiseSchedule.linear(100)
    recs = list(train(_model(), diffusion_loss(s), torch.randn(64, 2, generator=generator), steps=10, lr=1e-2, warmup=5))
    assert [round(r["lr"], 6) for r in recs[:6]] == [0.002, 0.004, 0.006, 0.008, 0.01, 0.01]


def test_condition_dropout_rate():
    """diffusion_loss replaces labels by the null token with probability p_uncond."""
    s = NoiseSchedule.linear(100)
    seen = []

    class Spy(torch.nn.Module):
        num_timesteps = 100

        def forward(self, x, t, cond=None):
            seen.append(cond.clone())
            return torch.zeros_like(x)

    loss = diffusion_loss(s, p_uncond=0.2, null_label=10)
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (20_000,), generator=g)
    loss(Spy(), (torch.zeros(20_000, 2), y), g)
    dropped = (seen[0] == 10).float().mean().item()
    assert dropped == pytest.approx(0.2, abs=0.01)
    assert torch.equal(seen[0][seen[0] != 10], y[seen[0] != 10])
    with pytest.raises(ValueError, match="null_label"):
        diffusion_loss(s, p_uncond=0.1)
    with pytest.raises(ValueError, match="p_uncond"):
        diffusion_loss(s, p_uncond=1.5, null_label=0)


def test_conditional_training_runs(generator):
    s = NoiseSchedule.linear(100)
    x, y = GaussianMixture.ring(k=4).sample(256, generator, return_labels=True)
    model = _model(num_classes=4)
    losses = fit(model, diffusion_loss(s, p_uncond=0.1, null_label=4), (x, y), steps=5, batch_size=32)
    assert len(losses) == 5


def test_random_batches_errors_and_shapes(generator):
    batches = random_batches((torch.zeros(10, 2), torch.arange(10)), 4, generator)
    x, y = next(batches)
    assert x.shape == (4, 2) and y.shape == (4,)
    with pytest.raises(ValueError, match="first dimension"):
        next(random_batches((torch.zeros(10, 2), torch.arange(9)), 4, generator))
    with pytest.raises(ValueError, match="batch_size"):
        next(random_batches(torch.zeros(10, 2), 0, generator))
    with pytest.raises(ValueError, match="steps"):
        next(train(_model(), lambda m, b, g: b.sum(), torch.zeros(4, 2), steps=0))


def test_checkpoint_roundtrip(tmp_path):
    model, ema = _model(seed=1), EMA(_model(seed=2))
    path = save_checkpoint(tmp_path / "ck" / "m.pt", model, ema, meta={"T": 100})
    fresh, fresh_ema = _model(seed=3), EMA(_model(seed=4))
    assert load_checkpoint(path, fresh, fresh_ema) == {"T": 100}
    for a, b in zip(fresh.parameters(), model.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(fresh_ema.model.parameters(), ema.model.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt", fresh)


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
