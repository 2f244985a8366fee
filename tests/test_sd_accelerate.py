"""minidiff.sd.train_sd under a distributed engine: 2 CPU processes (gloo, DDP through ``accelerate``) on the tiny
pipeline see different data shards, end with identical LoRA weights, and match one process with the doubled batch.

Run as a script, this file is the worker: ``python -m torch.distributed.run --standalone --nproc_per_node 2
tests/test_sd_accelerate.py OUT``. (``accelerate launch`` starts several CPU processes only through MPI; torchrun
sets the same environment, and ``Accelerator(cpu=True)`` then joins a gloo process group.) On GPUs the same
training runs with ``accelerate launch --multi_gpu --num_processes N script.py``.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
accelerate = pytest.importorskip("accelerate")

ROOT = Path(__file__).resolve().parents[1]
PER_PROCESS, STEPS = 2, 3
PROMPTS = ["a red circle", "a blue square", "a photo of a sks dog", "a small green triangle"]


def run_training(folder: Path, batch_size: int, make_accelerator) -> dict:
    """LoRA on the tiny pipeline's U-Net, STEPS steps of ``batch_size`` examples per process; returns the final
    LoRA weights, the step indices t of this process's first batch and the losses. The pipeline is built before
    the process group starts: under torch.distributed, transformers' save_pretrained writes on rank 0 only."""
    from torch.utils.data import DataLoader

    from minidiff.lora import inject_lora, lora_state_dict
    from minidiff.sd import (
        NoisedExamples,
        SDEps,
        encode_prompts,
        sd_schedule,
        tiny_pipeline,
        train_sd,
    )

    pipe = tiny_pipeline(0, folder)
    eps = SDEps.from_pipeline(pipe)
    torch.manual_seed(0)                                   # LoRA's A init: the same on every process
    inject_lora(eps.unet, ["to_q", "to_k", "to_v", "to_out.0"], r=2, alpha=2)
    accelerator = make_accelerator()
    latents = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    examples = NoisedExamples([(latents, {"context": encode_prompts(pipe, PROMPTS)}, 1.0)], sd_schedule(pipe),
                              num_items=STEPS * 2 * PER_PROCESS, seed=1)
    losses = [r["loss"] for r in train_sd(eps, examples, steps=STEPS, batch_size=batch_size, lr=1e-2,
                                          accelerator=accelerator, progress=False)]
    first = next(iter(accelerator.prepare(DataLoader(examples, batch_size=batch_size))))["t"].tolist()
    return {"lora": lora_state_dict(eps.unet), "first_t": first, "losses": losses}


@pytest.mark.slow                                   # ~30 s: two fresh processes import diffusers and build the pipeline
def test_two_gloo_processes_match_one_process_with_the_doubled_batch(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__,
           str(tmp_path)]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert ranks[0]["world"] == ranks[1]["world"] == 2 and ranks[0]["backend"] == "gloo"
    assert ranks[0]["first_t"] != ranks[1]["first_t"]                      # different shards of the stream
    assert ranks[0]["losses"] == ranks[1]["losses"]                        # the loss is averaged over processes
    for name, value in ranks[0]["lora"].items():                           # DDP: identical weights everywhere
        assert torch.equal(value, ranks[1]["lora"][name]), name
    single = run_training(tmp_path / "single", 2 * PER_PROCESS, lambda: accelerate.Accelerator(cpu=True))
    assert single["first_t"] == ranks[0]["first_t"] + ranks[1]["first_t"]   # one batch = the two shards
    assert single["losses"] == pytest.approx(ranks[0]["losses"], rel=1e-5)
    moved = max(v.abs().max().item() for n, v in single["lora"].items() if "lora_B" in n)
    assert moved > 1e-2                                                    # the LoRA did train (3 steps of lr 1e-2)
    # Float tolerance for AdamW: its step lr·m/√v normalises the gradient, so where a gradient is ~0 the reduction
    # order's rounding (DDP all-reduce vs one batch) can move an entry by a visible fraction of lr; 1e-4 = 1 % of lr.
    for name, value in single["lora"].items():
        torch.testing.assert_close(ranks[0]["lora"][name], value, rtol=1e-3, atol=1e-4)


def main(out: str) -> None:
    """The worker: one process of the distributed run."""
    made: dict = {}

    def make_accelerator():
        made["acc"] = accelerate.Accelerator(cpu=True)      # joins the gloo process group torchrun set up
        return made["acc"]

    result = run_training(Path(out) / f"pipe{os.environ['RANK']}", PER_PROCESS, make_accelerator)
    acc = made["acc"]
    result.update(world=acc.num_processes, backend=torch.distributed.get_backend())
    torch.save(result, Path(out) / f"rank{acc.process_index}.pt")
    acc.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1])
