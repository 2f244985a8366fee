#!/usr/bin/env python
"""The 2-D denoiser: training speed against a plain diffusers loop, and sample quality on the ring.

Speed. Three training loops run interleaved in one process (a chunk of steps of each in turn, after
a warm-up), all on the same data (the 8-Gaussian ring), batch 256, AdamW at lr 2e-3, T = 1000:

    (a) minidiff  ``train`` (= ``fit``) with ``diffusion_loss`` and an ``MLPDenoiser``
    (b) plain     a hand-written torch loop: ``DDPMScheduler.add_noise`` + a 3×128 SiLU MLP that reads
                  [x, 32 sinusoidal features of t] (≈ 37.8k parameters)
    (c) plain     the same loop with the ``MLPDenoiser``

The ``MLPDenoiser`` gets the width (depth 3, emb_dim 32) that brings its parameter count closest to
the plain MLP's, so (a)/(b) compares equal-size networks and (c)/(b) isolates the network's cost.
``fit`` keeps its defaults (gradient clipping at 1.0, the per-step learning-rate schedule); the plain
loops do neither. Steps/s per loop is the median over chunks (the machine may be shared; medians
and interleaving keep other load from favouring one side).

Quality. The two networks are trained with the same loop (``fit``, EMA 0.995) for the same number of
steps; 2000 samples each with DDIM-100 and DDPM-1000 (``minidiff.sample``, same noise) are scored by
the mean exact log-likelihood under the ring (``GaussianMixture.log_prob``, higher is better) and by
MMD² to fresh data (``minidiff.metrics.mmd``, lower is better). The first row scores data itself.
The mean log-likelihood is dominated by a few stray samples (one sample 3 σ-radii off the ring costs
~200 nats), so the median is printed beside it.

    python benchmarks/bench_denoiser.py                  # full: ~10 min on 2 shared cores
    MINIDIFF_QUICK=1 python benchmarks/bench_denoiser.py # quick: < 2 min
    python benchmarks/bench_denoiser.py --skip-quality   # speed only
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusers import DDPMScheduler
from minidiff import EMA, MLPDenoiser, NoiseSchedule, diffusion_loss, fit, pick, sample
from minidiff.data import GaussianMixture
from minidiff.metrics import mmd
from minidiff.nets import timestep_embedding
from minidiff.train import train

T, BATCH, LR = 1000, 256, 2e-3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chunk", type=int, default=pick(10, 25), help="steps per timed chunk (default 25; 10 quick)")
    p.add_argument("--rounds", type=int, default=pick(6, 20), help="chunks per loop (default 20; 6 quick)")
    p.add_argument("--train-steps", type=int, default=pick(600, 4000),
                   help="training steps of each net for the quality table (default 4000; 600 quick)")
    p.add_argument("--samples", type=int, default=pick(1000, 2000),
                   help="samples per sampler for the quality table (default 2000; 1000 quick)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads (default 1: these nets are too small to gain from threads, and on a "
                        "shared machine idle-spinning OpenMP threads make multi-threaded timings 10x slower and noisy)")
    p.add_argument("--skip-quality", action="store_true", help="only the speed table")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if min(args.chunk, args.rounds, args.train_steps, args.samples) < 1:
        p.error("--chunk, --rounds, --train-steps and --samples must be >= 1")
    return args


class PlainMLP(nn.Module):
    """The reference network: [x, sinusoidal(t)] -> 3 hidden SiLU layers of ``width`` -> ε̂."""

    def __init__(self, dim: int = 2, width: int = 128, hidden: int = 3, freq_dim: int = 32, num_timesteps: int = T) -> None:
        super().__init__()
        self.freq_dim, self.num_timesteps = freq_dim, num_timesteps
        layers, d = [], dim + freq_dim
        for _ in range(hidden):
            layers += [nn.Linear(d, width), nn.SiLU()]
            d = width
        self.net = nn.Sequential(*layers, nn.Linear(d, dim))

    def forward(self, x: Tensor, t: Tensor, cond=None) -> Tensor:
        return self.net(torch.cat([x, timestep_embedding(t, self.freq_dim)], dim=1))


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def matched_mlp_denoiser(target: int, depth: int = 3, emb_dim: int = 32) -> MLPDenoiser:
    """The MLPDenoiser(depth, emb_dim) whose width gives the parameter count closest to ``target``."""
    width = min(range(8, 257), key=lambda w: abs(n_params(MLPDenoiser(width=w, depth=depth, emb_dim=emb_dim)) - target))
    return MLPDenoiser(width=width, depth=depth, emb_dim=emb_dim)


def minidiff_steps(model: nn.Module, schedule: NoiseSchedule, data: Tensor, seed: int) -> Iterator[None]:
    for _ in train(model, diffusion_loss(schedule), data, steps=10**9, batch_size=BATCH, lr=LR, seed=seed, progress=False):
        yield


def plain_steps(model: nn.Module, scheduler: DDPMScheduler, data: Tensor, seed: int) -> Iterator[None]:
    """The loop of diffusers' training examples, minus accelerate: add_noise, MSE, AdamW."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    model.train()
    while True:
        x0 = data[torch.randint(0, data.shape[0], (BATCH,), generator=g)]
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, T, (BATCH,), generator=g)
        loss = F.mse_loss(model(scheduler.add_noise(x0, noise, t), t), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        yield


def interleaved_rates(loops: dict[str, Iterator[None]], chunk: int, rounds: int) -> dict[str, float]:
    """Median steps/s of each loop over ``rounds`` chunks of ``chunk`` steps, the loops taking turns."""
    def run(it: Iterator[None]) -> float:
        start = time.perf_counter()
        for _ in range(chunk):
            next(it)
        return chunk / (time.perf_counter() - start)

    for it in loops.values():  # warm-up
        run(it)
    rates: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(rounds):
        for name, it in loops.items():
            rates[name].append(run(it))
    return {name: statistics.median(r) for name, r in rates.items()}


def speed_table(args: argparse.Namespace, data: Tensor, schedule: NoiseSchedule, scheduler: DDPMScheduler) -> None:
    torch.manual_seed(args.seed)
    plain = PlainMLP()
    ours_a, ours_c = matched_mlp_denoiser(n_params(plain)), matched_mlp_denoiser(n_params(plain))
    print(f"networks: plain 3x128 SiLU MLP {n_params(plain):,} params; MLPDenoiser(width={ours_a.width}, depth=3, "
          f"emb_dim=32) {n_params(ours_a):,} params; batch {BATCH}, {torch.get_num_threads()} threads")
    rates = interleaved_rates({
        "(a) minidiff fit + MLPDenoiser": minidiff_steps(ours_a, schedule, data, args.seed),
        "(b) plain loop + plain MLP": plain_steps(plain, scheduler, data, args.seed),
        "(c) plain loop + MLPDenoiser": plain_steps(ours_c, scheduler, data, args.seed),
    }, args.chunk, args.rounds)
    ref = rates["(b) plain loop + plain MLP"]
    print(f"\n{'training loop':<34} {'steps/s':>8} {'vs (b)':>7}")
    for name, r in rates.items():
        print(f"{name:<34} {r:>8.1f} {r / ref:>7.2f}")
    a, c = rates["(a) minidiff fit + MLPDenoiser"], rates["(c) plain loop + MLPDenoiser"]
    print(f"network cost (c)/(b) = {c / ref:.2f}; loop cost (a)/(c) = {a / c:.2f}  (ratios of steps/s: > 1 is faster)")


def quality_table(args: argparse.Namespace, data: Tensor, gmm: GaussianMixture, schedule: NoiseSchedule) -> None:
    torch.manual_seed(args.seed)
    plain = PlainMLP()
    nets = {"plain 3x128 SiLU MLP": plain, "MLPDenoiser (equal params)": matched_mlp_denoiser(n_params(plain)),
            "MLPDenoiser(128, 3), ch. 2": MLPDenoiser(width=128, depth=3)}
    reference = gmm.sample(args.samples, torch.Generator().manual_seed(args.seed + 7))
    fresh = gmm.sample(args.samples, torch.Generator().manual_seed(args.seed + 8))
    print(f"\nquality on the ring: {args.train_steps} steps of fit each (EMA 0.995), {args.samples} samples")
    print(f"{'model':<28} {'params':>7} {'train s':>7} {'sampler':>9} {'sample s':>8} {'mean log p':>10} "
          f"{'median':>7} {'MMD^2':>9}")
    lp = gmm.log_prob(reference)
    print(f"{'data itself':<28} {'':>7} {'':>7} {'':>9} {'':>8} {lp.mean():>10.3f} {lp.median():>7.3f} "
          f"{mmd(fresh, reference):>9.5f}")
    for name, net in nets.items():
        ema = EMA(net, decay=0.995)
        start = time.perf_counter()
        fit(net, diffusion_loss(schedule), data, steps=args.train_steps, batch_size=BATCH, lr=LR, warmup=100,
            ema=ema, seed=args.seed, progress=False)
        train_s = time.perf_counter() - start
        for method, steps in (("ddim", 100), ("ddpm", None)):
            g = torch.Generator().manual_seed(args.seed + 1)
            start = time.perf_counter()
            x = sample(ema.model, schedule, (args.samples, 2), method=method, steps=steps, generator=g, progress=False)
            sample_s = time.perf_counter() - start
            label = f"{method.upper()}-{steps or T}"
            lp = gmm.log_prob(x)
            print(f"{name:<28} {n_params(net):>7,} {train_s:>7.1f} {label:>9} {sample_s:>8.1f} "
                  f"{lp.mean():>10.3f} {lp.median():>7.3f} {mmd(x, reference):>9.5f}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    gmm = GaussianMixture.ring()
    data = gmm.sample(20_000, torch.Generator().manual_seed(args.seed))
    scheduler = DDPMScheduler(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                              clip_sample=False, prediction_type="epsilon")
    schedule = NoiseSchedule.from_diffusers(scheduler)
    print(f"torch {torch.__version__}, T={T}")
    speed_table(args, data, schedule, scheduler)
    if not args.skip_quality:
        quality_table(args, data, gmm, schedule)
    return 0


if __name__ == "__main__":
    sys.exit(main())
