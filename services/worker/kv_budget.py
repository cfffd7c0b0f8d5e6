"""How much memory the running batch's keys and values may take (transformers backend), and
whether sequences fit in it: vLLM's KV-cache budget, for a cache that is one rectangle.

The batch's cache holds every row left-padded to the widest one, so its size is rows × width ×
the bytes a token's keys and values take in every layer. A sequence's row grows to its prompt
plus its token budget (`max_new_tokens`, capped by the model length); the batch can therefore
grow to rows × the longest such final length (the left columns that become padding in every row
are trimmed as rows leave, so the width never exceeds the longest row still running). Newcomers
are admitted while that bound stays within the budget (`KVBudget.fits`), and wait for rows to
leave otherwise. vLLM counts blocks of 16 tokens that each sequence holds; here the count is the
rectangle, which a batch of mixed lengths fills less well.

What the bound leaves out: the transient copy while a group merges or transformers' own forward
concatenates a step (both old and new tensors live for a moment), the kept prefixes
(`LGC_WORKER_PREFIX_CACHE_TOKENS`), and the model's activations.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from services.worker.engine_factory import BackendUnavailableError

__all__ = ["GIB", "KVBudget", "KVBudgetError", "default_limit_bytes", "kv_bytes_per_token"]

GIB = 1024**3
#: Share of the machine's memory the cache may take on CPU when no budget is set: the weights, the
#: other services of an embedded cluster and the operating system need the rest.
CPU_SHARE = 0.25
#: Share of the GPU memory free after loading the model that the cache may take on CUDA when no
#: budget is set (vLLM's `gpu_memory_utilization` default is 0.9 of the whole card).
CUDA_FREE_SHARE = 0.9


class KVBudgetError(BackendUnavailableError):
    """The budget cannot hold even one sequence of the longest allowed length (refused at start)."""


def kv_bytes_per_token(model: Any) -> int:
    """Bytes one token's keys and values take over every layer of `model`, in the dtype its
    embeddings compute in (a quantized model's cache is in its compute dtype)."""
    config = model.config.get_text_config()
    layers = int(config.num_hidden_layers)
    heads = int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
    element = model.get_input_embeddings().weight.element_size()
    return layers * 2 * heads * head_dim * element


def default_limit_bytes(device: torch.device) -> int:
    """The budget when none is set: `CPU_SHARE` of physical memory on CPU, `CUDA_FREE_SHARE` of the
    device's free memory on CUDA (call after the model is loaded)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * CUDA_FREE_SHARE)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * CPU_SHARE)


@dataclass(frozen=True, slots=True)
class KVBudget:
    """The most bytes the batch's keys and values may take, and what a token's take."""

    limit_bytes: int
    bytes_per_token: int

    @classmethod
    def for_model(cls, model: Any, device: torch.device, limit_gb: float | None, max_model_len: int) -> KVBudget:
        """`model`'s budget on `device`: `limit_gb` GiB (`LGC_WORKER_KV_CACHE_GB`), else
        `default_limit_bytes` (call after loading); KVBudgetError unless it holds one sequence of
        `max_model_len` tokens."""
        limit = int(limit_gb * GIB) if limit_gb else default_limit_bytes(device)
        budget = cls(limit, kv_bytes_per_token(model))
        budget.check_holds(max_model_len, "LGC_WORKER_KV_CACHE_GB" if limit_gb else "its default")
        return budget

    def bytes_for(self, final_lengths: Sequence[int]) -> int:
        """What a batch of rows growing to these lengths (prompt + token budget) may take at most."""
        return len(final_lengths) * max(final_lengths, default=0) * self.bytes_per_token

    def fits(self, final_lengths: Sequence[int]) -> bool:
        return self.bytes_for(final_lengths) <= self.limit_bytes

    def check_holds(self, max_model_len: int, setting: str) -> None:
        """KVBudgetError unless one sequence of `max_model_len` tokens fits (else it could never
        run); `setting` names what sets the budget, for the message."""
        needed = self.bytes_for([max_model_len])
        if needed > self.limit_bytes:
            raise KVBudgetError(
                f"the KV cache budget ({self.limit_bytes / GIB:.3g} GiB, {setting}) cannot hold one sequence "
                f"of {max_model_len} tokens ({needed / GIB:.3g} GiB at {self.bytes_per_token} bytes a token): "
                "raise LGC_WORKER_KV_CACHE_GB or lower LGC_WORKER_MAX_MODEL_LEN"
            )
