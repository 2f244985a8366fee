#!/usr/bin/env python
"""minidiff's LoRA against peft's on a diffusers U-Net: the same numbers, the same speed, the file size.

One ``UNet2DConditionModel`` (SD's layout, small widths) gets a rank-r adapter on every attention
projection (``to_q``, ``to_k``, ``to_v``, ``to_out.0``) twice: with :func:`minidiff.lora.inject_lora` and
with peft (``unet.add_adapter(LoraConfig(...))``, what diffusers uses), the *same* random A and B copied
into both. Forward passes are timed interleaved (base, minidiff, peft, minidiff merged, peft merged, …)
after a warm-up, best of ``--repeats``; the table prints ms per forward, the ratio to peft and the largest
output difference to peft. A second table sweeps the rank: trainable parameters, their share of the
U-Net and the size of the LoRA file ``save_lora`` writes.

    python benchmarks/bench_lora.py                       # ~1 min on 2 shared cores
    MINIDIFF_QUICK=1 python benchmarks/bench_lora.py      # smaller U-Net, fewer repeats
    python benchmarks/bench_lora.py --device cuda

Exits with status 1 if minidiff and peft differ by more than 1e-4 anywhere.
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from peft import LoraConfig
from peft.tuners.lora import LoraLayer

from minidiff import md_table, pick
from minidiff.lora import inject_lora, lora_layers, merge_lora, save_lora

ATTN = ["to_q", "to_k", "to_v", "to_out.0"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--r", type=int, default=4, help="LoRA rank (default 4)")
    p.add_argument("--alpha", type=float, default=8.0, help="LoRA alpha (default 8)")
    p.add_argument("--batch", type=int, default=pick(4, 8), help="batch (default 8; 4 quick)")
    p.add_argument("--repeats", type=int, default=pick(5, 20), help="best of (default 20; 5 quick)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if min(args.r, args.batch, args.repeats, args.threads) < 1 or args.alpha <= 0:
        p.error("--r, --batch, --repeats, --threads must be >= 1 and --alpha > 0")
    return args


def build_unet(seed: int) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    width = pick(32, 64)
    return UNet2DConditionModel(
        block_out_channels=(width, 2 * width), layers_per_block=1, sample_size=pick(8, 16), in_channels=4,
        out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=64, attention_head_dim=8,
        norm_num_groups=8).eval()


def adapted_pair(unet: UNet2DConditionModel, r: int, alpha: float, seed: int):
    """(minidiff-adapted copy, peft-adapted copy) with the same random A and B in both."""
    ours, theirs = copy.deepcopy(unet), copy.deepcopy(unet)
    inject_lora(ours, ATTN, r=r, alpha=alpha)
    theirs.add_adapter(LoraConfig(r=r, lora_alpha=alpha, target_modules=ATTN))
    g = torch.Generator().manual_seed(seed)
    peft_layers = {n: m for n, m in theirs.named_modules() if isinstance(m, LoraLayer)}
    with torch.no_grad():
        for path, layer in lora_layers(ours).items():
            a = torch.randn(layer.lora_A["default"].shape, generator=g) * 0.1
            b = torch.randn(layer.lora_B["default"].shape, generator=g) * 0.1
            layer.lora_A["default"].copy_(a)
            layer.lora_B["default"].copy_(b)
            peft_layers[path].lora_A["default"].weight.copy_(a)
            peft_layers[path].lora_B["default"].weight.copy_(b)
    return ours, theirs


def best_of(fns: dict[str, Callable[[], torch.Tensor]], repeats: int, device: str) -> dict[str, float]:
    """Interleaved timing: one call of each in turn, ``repeats`` rounds, best time per name (seconds)."""
    best = dict.fromkeys(fns, float("inf"))
    for fn in fns.values():                                                         # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def speed_table(args: argparse.Namespace) -> float:
    unet = build_unet(args.seed)
    ours, theirs = adapted_pair(unet, args.r, args.alpha, args.seed + 1)
    ours_merged, theirs_merged = copy.deepcopy(ours), copy.deepcopy(theirs)
    merge_lora(ours_merged)
    for m in theirs_merged.modules():
        if isinstance(m, LoraLayer):
            m.merge()
    nets = {"base": unet, "minidiff": ours, "peft": theirs, "minidiff merged": ours_merged,
            "peft merged": theirs_merged}
    for net in nets.values():
        net.to(args.device)
    g = torch.Generator().manual_seed(args.seed + 2)
    size = unet.config.sample_size
    x = torch.randn(args.batch, 4, size, size, generator=g).to(args.device)
    t = torch.randint(0, 1000, (args.batch,), generator=g).to(args.device)
    ctx = torch.randn(args.batch, 7, 64, generator=g).to(args.device)

    def call(net):
        with torch.no_grad():
            return net(x, t, ctx).sample
    outs = {name: call(net) for name, net in nets.items()}
    times = best_of({name: (lambda net=net: call(net)) for name, net in nets.items()}, args.repeats, args.device)
    ref = {"minidiff": "peft", "minidiff merged": "peft merged"}
    rows, worst = [], 0.0
    for name in nets:
        diff = (outs[name] - outs[ref.get(name, "peft")]).abs().max().item()
        if name in ref:
            worst = max(worst, diff)
        ratio = times[name] / times[ref[name]] if name in ref else float("nan")
        rows.append([name, f"{1e3 * times[name]:.2f}", "–" if name not in ref else f"{ratio:.2f}",
                     f"{diff:.2e}"])
    print(f"Forward of a diffusers UNet2DConditionModel ({sum(p.numel() for p in unet.parameters()):,} parameters), "
          f"batch {args.batch}, LoRA r={args.r}, alpha={args.alpha:g} on {len(lora_layers(ours))} attention layers, "
          f"{args.device}, {args.threads} thread(s), best of {args.repeats}\n")
    print(md_table(["variant", "ms", "minidiff / peft", "max |diff| to peft"], rows))
    return worst


def rank_table(args: argparse.Namespace) -> None:
    unet = build_unet(args.seed)
    total = sum(p.numel() for p in unet.parameters())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in (1, 2, 4, 8, 16):
            net = copy.deepcopy(unet)
            report = inject_lora(net, ATTN, r=r, alpha=r)
            path = save_lora(net, Path(tmp) / f"r{r}.safetensors")
            rows.append([str(r), f"{report.added:,}", f"{100 * report.added / total:.2f}%",
                         f"{path.stat().st_size / 1024:.1f} KB"])
    print(f"\nLoRA size by rank (U-Net: {total:,} parameters, {4 * total / 2**20:.2f} MB in float32)\n")
    print(md_table(["r", "trainable parameters", "of the U-Net", "save_lora file"], rows))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    worst = speed_table(args)
    rank_table(args)
    if worst > 1e-4:
        print(f"\nFAIL: minidiff and peft differ by {worst:.2e} > 1e-4", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
