#!/usr/bin/env python
"""TGDP on ECG signals (chapter 9): vanilla, fine-tune and TGDP with equal step budgets, n = 10 and 100.

The offline problem of :mod:`minidiff.recipes_ecg`: a source model on deepfake-ecg records (leads I, II,
50 Hz, 10 s), a target of records with a measured heart rate ≥ 80 bpm. Each method gets ``--steps`` steps
on the n target records (TGDP: its domain classifier; h_ψ trains on source pairs for the recipe's
``guidance`` budget, its steps ~10× cheaper than a U-Net step — the time column shows the cost). Rows:

* ``source`` — the source model itself (no transfer): its membership rate is the target's share of p;
* ``vanilla`` / ``fine-tune`` / ``TGDP`` — the three methods;
* ``real only`` — the downstream classifier trained without generated records (utility columns only).

Columns (``--samples`` DDIM samples from one fixed x_T per run, scored on held-out real target records):
``FID`` (Fréchet distance of the metric CNN's features, ↓), ``div`` (diversity, 1 = as varied as the real
target), ``member`` (share of samples with measured HR ≥ 80, ↑), ``HR`` (their median rate),
``AUC`` / ``F2`` / ``G2`` (a fast-rate detector trained on real negatives + n real targets + the samples,
tested on held-out records, ↑), trained ``params`` and ``time`` (s). Mean ± std over ``--seeds``.

``--mitbih`` adds the single-lead real-patient experiment: a lead-II source model, the 30 MIT-BIH record-208
windows as the target (n = 10 train, 20 held out), FID / diversity / median HR only.

    python benchmarks/tgdp_ecg.py                      # full budgets (MINIDIFF_QUICK unset), n = 10, 100, 3 seeds
    python benchmarks/tgdp_ecg.py --quick              # smoke run
    python benchmarks/tgdp_ecg.py --ns 10 100 --seeds 1 --mitbih --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

import torch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="quick-mode budgets (sets MINIDIFF_QUICK=1)")
    ap.add_argument("--ns", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=None, help="transfer steps per method (default: the recipe's)")
    ap.add_argument("--mitbih", action="store_true", help="add the MIT-BIH single-lead experiment")
    ap.add_argument("--json", default=None)
    return ap.parse_args(argv)


def run(data: Any, source: Any, feat: Any, n: int, seed: int, steps: int | None, budgets: dict,
        rate_target: bool = True) -> dict[str, dict[str, float]]:
    """One seed of every method on ``data``. ``rate_target``: the target is a heart-rate band, so membership and
    the downstream fast-rate detector mean something (False for MIT-BIH, whose target is one patient)."""
    from minidiff import sample
    from minidiff.ecg_metrics import (
        diversity,
        downstream_utility,
        ecg_features,
        frechet_distance,
    )
    from minidiff.recipes_ecg import METHODS, ecg_schedule, fit_method, n_params

    schedule = ecg_schedule()
    shape = (budgets["samples"], *data.source.shape[1:])
    real_feats = ecg_features(feat, data.target_test)
    neg = data.others
    n_neg = min(len(neg) // 2, 8 * budgets["samples"])
    test_x = torch.cat([data.target_test, neg[-len(data.target_test):]])
    test_y = torch.cat([torch.ones(len(data.target_test)), torch.zeros(len(data.target_test))]).long()

    def utility(gen: torch.Tensor | None) -> dict[str, float]:
        pos = data.target[:n] if gen is None else torch.cat([data.target[:n], gen])
        x = torch.cat([neg[:n_neg], pos])
        y = torch.cat([torch.zeros(n_neg), torch.ones(len(pos))]).long()
        return downstream_utility(x, y, test_x, test_y, steps=budgets["utility"], seed=seed, progress=False)

    def score(x: torch.Tensor) -> dict[str, float]:
        f = ecg_features(feat, x)
        hr = data.heart_rate(x)
        lo, hi = data.hr_range
        out = {"FID": frechet_distance(real_feats, f), "div": diversity(f, real_feats)}
        if rate_target:
            out["member"] = float(((hr >= lo) & (hr < hi)).float().mean())
        out["HR"] = float(hr.nanmedian())
        if rate_target:
            out.update(utility(x))
        return out

    rows: dict[str, dict[str, float]] = {}
    gen = torch.Generator().manual_seed(1000 + seed)
    x_T = torch.randn(shape, generator=gen)
    x = sample(source, schedule, shape, "ddim", steps=budgets["ddim"], x_T=x_T, generator=gen, progress=False)
    rows["source"] = {**score(x), "params": 0, "time": 0.0}
    for method in METHODS:
        fit = fit_method(method, data, source, n, steps=steps, seed=seed, progress=False)
        t0 = time.perf_counter()
        x = sample(fit["eps"], schedule, shape, "ddim", steps=budgets["ddim"], x_T=x_T, generator=gen, progress=False)
        rows[method] = {**score(x), "params": fit["params"], "time": fit["seconds"],
                        "sample_s": time.perf_counter() - t0}
    if rate_target:
        rows["real only"] = utility(None)
    rows["_source_params"] = {"params": n_params(source)}
    return rows


def summarise(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, str]]:
    table: dict[str, dict[str, str]] = {}
    for row in runs[0]:
        if row.startswith("_"):
            continue
        table[row] = {}
        for col in runs[0][row]:
            vals = [r[row][col] for r in runs]
            mean = statistics.fmean(vals)
            table[row][col] = f"{mean:.3g}" + (f" ± {statistics.stdev(vals):.2g}" if len(vals) > 1 else "")
    return table


def print_table(title: str, table: dict[str, dict[str, str]]) -> None:
    cols = list(dict.fromkeys(c for r in table.values() for c in r))
    print(f"\n## {title}\n")
    print("| method | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, r in table.items():
        print(f"| {name} | " + " | ".join(r.get(c, "") for c in cols) + " |")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.quick:
        os.environ["MINIDIFF_QUICK"] = "1"
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    from minidiff.recipes_ecg import (
        ecg_budgets,
        ecg_feature_net,
        ecg_source_model,
        ecg_transfer_data,
        mitbih_transfer_data,
        n_params,
    )

    budgets, results, t_all = ecg_budgets(), {}, time.perf_counter()
    print(f"budgets: {budgets}, transfer steps: {args.steps or budgets['transfer']}")
    t0 = time.perf_counter()
    data = ecg_transfer_data()
    print(f"data: source {tuple(data.source.shape)}, target {tuple(data.target.shape)} "
          f"({len(data.target) / (len(data.target) + len(data.others)):.1%} of the pool), "
          f"others {tuple(data.others.shape)} [{time.perf_counter() - t0:.0f} s]")
    t0 = time.perf_counter()
    source = ecg_source_model(data)
    feat = ecg_feature_net(data)
    print(f"source U-Net {n_params(source) / 1e6:.2f}M params, feature CNN ready [{time.perf_counter() - t0:.0f} s]")
    for n in sorted({min(n, data.n_max) for n in args.ns}):              # quick mode holds out more: n_max = 30
        runs = [run(data, source, feat, n, s, args.steps, budgets) for s in range(args.seeds)]
        results[f"n={n}"] = table = summarise(runs)
        print_table(f"heart-rate target, n = {n}, {args.seeds} seed(s)", table)
    if args.mitbih:
        mb = mitbih_transfer_data()
        mb_source = ecg_source_model(mb)
        mb_feat = ecg_feature_net(mb)
        runs = [run(mb, mb_source, mb_feat, mb.n_max, s, args.steps, budgets, rate_target=False)
                for s in range(args.seeds)]
        results["mitbih"] = table = summarise(runs)
        print_table(f"MIT-BIH record 208 (lead II), n = {mb.n_max}, {args.seeds} seed(s)", table)
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
