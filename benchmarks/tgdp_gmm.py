#!/usr/bin/env python
"""TGDP on 2-D Gaussian mixtures: the seed's n = 10 / 100 / 1000 table, with an oracle and a mode-collapse metric.

Setups (:mod:`minidiff.tgdp.setups`; both share one source, a 3×3 grid of Gaussians):

* **A** — the target is the source tilted by e^{θ·x}: same components, reweighted and slightly moved.
* **B** — half the target's mass sits on two modes the source never covers (TGDP's assumption breaks).

Methods, all with the same step budget ``--steps`` on the n target samples (and the same networks where
they overlap): **vanilla** (the source architecture trained on the n samples only), **fine-tune** (the source
model trained further on them), and TGDP (:mod:`minidiff.tgdp`) with a domain classifier (``--clf-steps``) and
a guidance network h_ψ: **TGDP** (Alg. 3, no regulariser), **TGDP+cycle**, **TGDP+consistency**, **TGDP+both**
(η = 1; the cycle term uses a noisy classifier trained like the clean one). The source model is trained once
(``--source-steps``) on 10,000 source samples and shared by every row. Beside them: **TGDP, exact h*** (the
learned source model guided by the oracle q_t/p_t: what TGDP could reach with a perfect h_ψ) and the
**oracle** row (fresh true target samples).

Metrics per run (``--samples`` DDIM-50 samples from one fixed x_T, scored against 2,000 held-out target points):

* ``density`` — the seed's "average likelihood": mean true target pdf q(x) over the samples (↑). The oracle
  row is E_q[q] = ∫q². Memorising the n training points also scores ≈ ∫q², so this column alone cannot
  tell a good sampler from a copy machine;
* ``KDE-NLL`` — nats per held-out target point under a Gaussian KDE (Scott bandwidth) fitted on the samples
  (↓): missing or collapsed modes make it large.

Mean ± std over ``--seeds`` seeds (each seed draws its own n target samples and initialises every network).

**The check** (fixed before any full run): on setup A at n = 10 and n = 100, plain TGDP (Alg. 3) must have a
lower mean KDE-NLL than both vanilla and fine-tune; otherwise the script exits with status 1. It is a check
of the method on its home ground, measured by the metric that cannot be gamed by memorisation; ``density``
is printed and compared alongside, not checked. ``--quick`` (a smoke run: tiny budgets, one seed) skips it.

    python benchmarks/tgdp_gmm.py                 # full: setups A and B, n = 10, 100, 1000, 3 seeds
    python benchmarks/tgdp_gmm.py --quick         # smoke run, about a minute
    python benchmarks/tgdp_gmm.py --setups A --ns 10 100 --seeds 5 --json results.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import torch

from minidiff import MLPDenoiser, NoiseSchedule, diffusion_loss, fit, sample
from minidiff.tgdp import (DensityRatioGuidance, MixtureDensityRatio, fit_baseline, fit_domain_classifier,
                           fit_guidance_net, kde_nll, mean_density)
from minidiff.tgdp.setups import SETUPS, transfer_pair

METHODS = ("vanilla", "fine-tune", "TGDP", "TGDP+cycle", "TGDP+consistency", "TGDP+both")
REFERENCES = ("TGDP, exact h*", "oracle (true samples)")
REGULARISERS = {"TGDP": (0.0, 0.0), "TGDP+cycle": (1.0, 0.0), "TGDP+consistency": (0.0, 1.0), "TGDP+both": (1.0, 1.0)}
CHECK_NS = (10, 100)
N_SOURCE, N_TEST = 10_000, 2_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny budgets, 1 seed, n = 10 and 100, no check")
    ap.add_argument("--setups", nargs="+", choices=SETUPS, default=list(SETUPS))
    ap.add_argument("--ns", nargs="+", type=int, default=None, help="target sample sizes (default 10 100 1000)")
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3; 1 with --quick)")
    ap.add_argument("--steps", type=int, default=None, help="training steps of every transfer method (default 1000)")
    ap.add_argument("--clf-steps", type=int, default=None, help="domain-classifier steps (default 500)")
    ap.add_argument("--source-steps", type=int, default=None, help="source-model steps (default 3000)")
    ap.add_argument("--samples", type=int, default=None, help="samples per method and run (default 1000)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--json", default=None, help="also write every run's numbers to this file")
    args = ap.parse_args(argv)
    quick = args.quick
    defaults = {"ns": [10, 100] if quick else [10, 100, 1000], "seeds": 1 if quick else 3,
                "steps": 60 if quick else 1000, "clf_steps": 40 if quick else 500,
                "source_steps": 300 if quick else 3000, "samples": 300 if quick else 1000}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("seeds", "steps", "clf_steps", "source_steps", "samples", "threads"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if min(args.ns) < 2:
        ap.error("--ns: the domain classifier needs at least 2 target samples")
    return args


def train_source(schedule: NoiseSchedule, x_source: torch.Tensor, steps: int) -> MLPDenoiser:
    """The pre-trained source eps-model (the same for both setups: they share the source)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = MLPDenoiser(dim=2, width=128, depth=3, num_timesteps=schedule.T)
    fit(model, diffusion_loss(schedule), x_source, steps=steps, batch_size=256, lr=2e-3, warmup=min(100, steps // 10),
        seed=0, progress=False)
    return model.eval()


def transfer_models(schedule: NoiseSchedule, source: MLPDenoiser, x_source: torch.Tensor, x_target: torch.Tensor,
                    args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """The six eps-models of one (setup, n, seed) run."""
    budget = {"steps": args.steps, "batch_size": 128, "seed": seed, "progress": False}
    models: dict[str, Any] = {kind: fit_baseline(kind, source, schedule, x_target, lr=1e-3, **budget)
                              for kind in ("vanilla", "fine-tune")}
    clf_kw = {"steps": args.clf_steps, "batch_size": 128, "width": 32, "depth": 2, "weight_decay": 1e-3, "seed": seed,
              "progress": False}
    clf = fit_domain_classifier(x_source, x_target, **clf_kw)
    noisy = fit_domain_classifier(x_source, x_target, schedule=schedule, **clf_kw)
    for name, (eta_cycle, eta_consistency) in REGULARISERS.items():
        h = fit_guidance_net(schedule, clf, x_source, x_target=x_target, source_eps=source, noisy_classifier=noisy,
                             eta_cycle=eta_cycle, eta_consistency=eta_consistency, width=64, depth=2, lr=1e-3,
                             **budget)
        models[name] = DensityRatioGuidance(source, h, schedule)
    return models


def score(samples: torch.Tensor, target, test: torch.Tensor) -> dict[str, float]:
    return {"density": mean_density(target, samples), "kde_nll": kde_nll(samples, test)}


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    torch.set_num_threads(args.threads)
    schedule = NoiseSchedule.linear(1000)
    results: list[dict[str, Any]] = []
    source_gmm = transfer_pair("A")[0]
    x_source = source_gmm.sample(N_SOURCE, torch.Generator().manual_seed(0))
    start = time.perf_counter()
    source = train_source(schedule, x_source, args.source_steps)
    print(f"source model: {args.source_steps} steps in {time.perf_counter() - start:.0f} s", flush=True)
    x_T = torch.randn(args.samples, 2, generator=torch.Generator().manual_seed(1234))

    def draw(model: Any) -> torch.Tensor:
        return sample(model, schedule, (args.samples, 2), method="ddim", steps=50, x_T=x_T, progress=False)

    for setup in args.setups:
        p, q = transfer_pair(setup)
        test = q.sample(N_TEST, torch.Generator().manual_seed(99))
        exact = score(draw(DensityRatioGuidance(source, MixtureDensityRatio(p, q, schedule), schedule)), q, test)
        for seed in range(args.seeds):
            oracle = score(q.sample(args.samples, torch.Generator().manual_seed(500 + seed)), q, test)
            for n in args.ns:
                t0 = time.perf_counter()
                x_target = q.sample(n, torch.Generator().manual_seed(1000 * seed + n))
                models = transfer_models(schedule, source, x_source, x_target, args, seed)
                for method, model in models.items():
                    results.append({"setup": setup, "n": n, "seed": seed, "method": method,
                                    **score(draw(model), q, test)})
                for method, value in zip(REFERENCES, (exact, oracle)):
                    results.append({"setup": setup, "n": n, "seed": seed, "method": method, **value})
                print(f"setup {setup}, n = {n}, seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
                if args.json:                                  # partial results survive an interrupted run
                    with open(args.json, "w") as f:
                        json.dump({"args": vars(args), "results": results}, f, indent=1)
    return results


def summary(results: list[dict[str, Any]], setup: str, n: int, method: str, metric: str) -> tuple[float, float]:
    values = [r[metric] for r in results if (r["setup"], r["n"], r["method"]) == (setup, n, method)]
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def table(results: list[dict[str, Any]], setup: str, ns: list[int], metric: str, title: str) -> str:
    header = f"| setup {setup}: {title} | " + " | ".join(f"n = {n}" for n in ns) + " |"
    lines = [header, "|" + "---|" * (len(ns) + 1)]
    for method in METHODS + REFERENCES:
        cells = [f"{m:.3f} ± {s:.3f}" for m, s in (summary(results, setup, n, method, metric) for n in ns)]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def check(results: list[dict[str, Any]], ns: list[int]) -> list[str]:
    """The failures of the check (module docstring): empty if TGDP beats both baselines on KDE-NLL."""
    failures = []
    for n in (n for n in CHECK_NS if n in ns):
        tgdp = summary(results, "A", n, "TGDP", "kde_nll")[0]
        for baseline in ("vanilla", "fine-tune"):
            other = summary(results, "A", n, baseline, "kde_nll")[0]
            if not tgdp < other:
                failures.append(f"setup A, n = {n}: TGDP KDE-NLL {tgdp:.3f} is not below {baseline}'s {other:.3f}")
    return failures


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    results = run(args)
    for setup in args.setups:
        print()
        print(table(results, setup, args.ns, "density", "mean target pdf of samples ↑"))
        print()
        print(table(results, setup, args.ns, "kde_nll", "KDE-NLL of target points, nats ↓"))
    elapsed = time.perf_counter() - start
    print(f"\n{args.seeds} seed(s); total {elapsed:.0f} s ({elapsed / 60:.1f} min) with "
          f"{args.threads} torch thread(s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results, "seconds": elapsed}, f, indent=1)
    if "A" in args.setups:
        for n in (n for n in CHECK_NS if n in args.ns):
            tgdp = summary(results, "A", n, "TGDP", "density")[0]
            best = max(summary(results, "A", n, b, "density")[0] for b in ("vanilla", "fine-tune"))
            print(f"(not checked) setup A, n = {n}: TGDP density {tgdp:.3f} vs best baseline {best:.3f}")
    if args.quick:
        print("quick mode: smoke run only, the check is skipped")
        return 0
    failures = check(results, args.ns) if "A" in args.setups else []
    if failures:
        print("CHECK FAILED — TGDP is not best on its home ground:\n  " + "\n  ".join(failures))
        return 1
    if "A" in args.setups and any(n in args.ns for n in CHECK_NS):
        print("check passed: on setup A, TGDP has a lower KDE-NLL than vanilla and fine-tune at n = "
              + ", ".join(str(n) for n in CHECK_NS if n in args.ns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
