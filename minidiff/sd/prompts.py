r"""Prompts to cross-attention context (chapter 10; chapter 5's tiny CLIP ↔ SD's CLIP text encoder).

Stable Diffusion conditions on the *last hidden states* of a frozen CLIP text transformer (Rombach et al. 2022,
LDM Sec. 3.3, τ_θ(y) of eq. 3): the prompt is tokenised to a fixed length L (77 for SD, padded with the end
token), encoded to (B, L, D) (D = 768 for SD 1.x), and every cross-attention layer of the U-Net reads it. The
null condition ∅ of classifier-free guidance is the context of the empty prompt "" — exactly what diffusers'
pipeline uses as the negative prompt by default. Chapter 5's :class:`~minidiff.text.TinyCLIP` plays the same
role with ``token_features`` and ``null_context``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["check_prompts", "encode_prompts", "null_context", "prompt_condition"]


def check_prompts(prompts: Any, name: str = "prompts") -> list[str]:
    """A prompt or a list of prompts as a non-empty list of str."""
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, Sequence) and prompts and all(isinstance(p, str) for p in prompts):
        return list(prompts)
    raise TypeError(f"{name} must be a str or a non-empty list of str, got {prompts!r}")


@torch.no_grad()
def encode_prompts(pipe: Any, prompts: str | Sequence[str]) -> Tensor:
    """Context (B, L, D) of the prompts: ``pipe.tokenizer`` padded to its ``model_max_length`` L, then the last
    hidden states of ``pipe.text_encoder`` — the same call as diffusers' ``encode_prompt`` (no clip-skip, no
    LoRA scale), on the text encoder's device and in its dtype."""
    prompts = check_prompts(prompts)
    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids.to(encoder.device)
    mask = None
    if getattr(encoder.config, "use_attention_mask", False):   # SD 1.x/2.x: no mask (padding tokens are attended)
        mask = (ids != tokenizer.pad_token_id).long()
    return encoder(ids, attention_mask=mask)[0].to(encoder.dtype)


def null_context(pipe: Any) -> Tensor:
    """The empty prompt's context (1, L, D): ∅ for classifier-free guidance."""
    return encode_prompts(pipe, "")


def prompt_condition(pipe: Any, prompts: str | Sequence[str], negative: str | Sequence[str] | None = None,
                     num_per_prompt: int = 1) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(cond, null) for sampling: ``cond = {"context": (B, L, D)}`` with each prompt repeated ``num_per_prompt``
    times (B = len(prompts) · num_per_prompt, rows of one prompt adjacent, as diffusers orders them), and the null
    condition ``{"context": ...}`` of ``negative`` (default the empty prompt; one negative, or one per prompt)."""
    from ..checks import check_int
    prompts = check_prompts(prompts)
    k = check_int(num_per_prompt, "num_per_prompt", 1)
    context = encode_prompts(pipe, prompts).repeat_interleave(k, dim=0)
    if negative is None:
        return {"context": context}, {"context": null_context(pipe)}
    negative = check_prompts(negative, "negative")
    if len(negative) not in (1, len(prompts)):
        raise ValueError(f"negative must be one prompt or one per prompt ({len(prompts)}), got {len(negative)}")
    neg = encode_prompts(pipe, negative)
    return {"context": context}, {"context": neg if len(negative) == 1 else neg.repeat_interleave(k, dim=0)}
