"""Picks the next token of every row of a batch, each row with its own sampling parameters.

Order as in Hugging Face generate: repetition penalty, then temperature, top-k, top-p. Rows with
temperature 0 take the arg-max (after the penalty); the others draw from their own
``torch.Generator`` so that a seeded sequence repeats itself whatever else shares its batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from services.worker.engine import SamplingParams

__all__ = ["RowSampling", "SamplingTable", "make_generator", "pick_next_tokens"]


@dataclass(slots=True)
class RowSampling:
    """One row's parameters plus its random generator (None for greedy rows)."""

    params: SamplingParams
    generator: torch.Generator | None


def make_generator(params: SamplingParams, device: torch.device) -> torch.Generator | None:
    """A generator seeded from `params.seed` (or randomly); None when the row is greedy."""
    if params.greedy:
        return None
    generator = torch.Generator(device=device)
    if params.seed is not None:
        generator.manual_seed(params.seed)
    else:
        generator.seed()
    return generator


class SamplingTable:
    """The per-row parameter tensors of a batch, rebuilt whenever its rows change."""

    def __init__(self, rows: Sequence[RowSampling], vocab_size: int, device: torch.device) -> None:
        self.rows = list(rows)
        params = [r.params for r in self.rows]
        self.any_penalty = any(p.repetition_penalty != 1.0 for p in params)
        self.penalty = torch.tensor([p.repetition_penalty for p in params], dtype=torch.float32, device=device)
        sampled = [i for i, p in enumerate(params) if not p.greedy]
        self.sampled_rows = sampled
        self.sampled_index = torch.tensor(sampled, dtype=torch.long, device=device)
        chosen = [params[i] for i in sampled]
        self.temperature = torch.tensor([p.temperature for p in chosen], dtype=torch.float32, device=device)
        self.top_k = torch.tensor(
            [p.top_k if 0 < p.top_k < vocab_size else vocab_size for p in chosen], dtype=torch.long, device=device
        )
        self.top_p = torch.tensor([p.top_p for p in chosen], dtype=torch.float32, device=device)
        self.needs_filter = any(p.top_k > 0 or p.top_p < 1.0 for p in chosen)


def pick_next_tokens(logits: torch.Tensor, table: SamplingTable, seen: torch.Tensor | None) -> torch.Tensor:
    """Next token per row. `logits` is [rows, vocab] (float32); `seen` marks, per row, the token
    ids already in its prompt and output (for the repetition penalty)."""
    if table.any_penalty and seen is not None:
        penalty = table.penalty[:, None]
        penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
        logits = torch.where(seen, penalised, logits)
    chosen = logits.argmax(dim=-1)
    if not table.sampled_rows:
        return chosen
    scores = logits.index_select(0, table.sampled_index) / table.temperature[:, None]
    order: torch.Tensor | None = None
    if table.needs_filter:
        scores, order = scores.sort(dim=-1, descending=True)
        ranks = torch.arange(scores.shape[-1], device=scores.device)[None, :]
        scores = scores.masked_fill(ranks >= table.top_k[:, None], float("-inf"))
        probs = scores.softmax(dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p (the first never goes).
        beyond = (probs.cumsum(dim=-1) - probs) > table.top_p[:, None]
        scores = scores.masked_fill(beyond, float("-inf"))
    probs = scores.softmax(dim=-1)
    for j, row in enumerate(table.sampled_rows):
        pick = torch.multinomial(probs[j], 1, generator=table.rows[row].generator)
        token = order[j, pick] if order is not None else pick
        chosen[row] = token[0]
    return chosen
