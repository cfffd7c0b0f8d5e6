"""The prompt tokens' log probabilities (vLLM's `prompt_logprobs`), taken during a group's prefill.

A prefill runs the model over every prompt position but usually the output head over the last
column only (its logits pick the first token). For the rows that ask, `PromptScorer` takes every
column's final hidden state, chunk by chunk as `PrefillRun` runs them, and runs the head over them
`HEAD_COLUMNS` columns at a time: the logits at a prompt position give the log probability of the
prompt's next token and the most likely ones there. Rows that do not ask cost nothing more; the
head's [rows, columns, vocabulary] logits stay bounded (64 columns of a 49k vocabulary: 12.6 MB a
row) however long the prompt.

As the generated tokens' (`sampling.RawLogprobs`), these are the model's own distribution (a
log-softmax of its logits), clamped at `MIN_LOGPROB`. A prompt's first token has none: nothing
comes before it. A group with such a row is prefilled whole, without a shared prefix
(`prefix_cache`): the positions of a reused prefix never reach the head.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from shared.records import MIN_LOGPROB

__all__ = ["HEAD_COLUMNS", "PromptPosition", "PromptScorer"]

HEAD_COLUMNS = 64
"""Columns the output head runs over at once (bounds its logits' memory)."""


@dataclass(frozen=True, slots=True)
class PromptPosition:
    """A prompt token (after the first) with its log probability given the tokens before it."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]
    """(token id, log probability) of the most likely tokens there, most likely first."""
    rank: int = 1
    """The token's 1-based rank in the vocabulary there: 1 + how many tokens are more likely."""


class PromptScorer:
    """Scores the prompt positions of the rows of a left-padded prefill that ask for it."""

    def __init__(self, wanted: Sequence[int | None], ids: torch.Tensor, mask: torch.Tensor) -> None:
        """`wanted`: per row, None or how many most likely tokens to list at each position; `ids`
        and `mask`: the prefill's [rows, columns] left-padded prompts and their mask."""
        self._count = len(wanted)
        self._rows = [row for row, top in enumerate(wanted) if top is not None]
        self._tops = [wanted[row] or 0 for row in self._rows]
        index = torch.tensor(self._rows, dtype=torch.long, device=ids.device)
        self._index = index
        self._ids = ids.index_select(0, index)
        self._mask = mask.index_select(0, index)
        self._positions: list[list[PromptPosition]] = [[] for _ in self._rows]

    @property
    def rows(self) -> list[int]:
        """The rows that asked."""
        return self._rows

    def score(self, hidden: torch.Tensor, first: int, head: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Score the columns `first` .. `first + hidden.shape[1]` from their final hidden states
        (`hidden`: [every row of the prefill, columns, hidden size]); `head` turns hidden states
        into logits. Chunks must come in order."""
        hidden = hidden.index_select(0, self._index)
        last_column = int(self._ids.shape[1]) - 1  # it predicts the first generated token, not the prompt's
        most = max(self._tops, default=0)
        for start in range(0, int(hidden.shape[1]), HEAD_COLUMNS):
            begin = first + start
            end = min(begin + HEAD_COLUMNS, first + int(hidden.shape[1]), last_column)
            if begin >= end:
                return
            logprobs = head(hidden[:, start : start + end - begin]).float().log_softmax(dim=-1)
            targets = self._ids[:, begin + 1 : end + 1]
            picked = logprobs.gather(-1, targets[..., None])
            # vLLM's rank: 1 + the tokens strictly more likely (ties share the better rank). Row by
            # row, counted in int32: the comparisons stay in cache (8 rows x 64 columns of a 49k
            # vocabulary on 2 threads: 18 ms, against 108 ms for one int64 count of them all).
            ranks = [
                (logprobs[j] > picked[j]).sum(dim=-1, dtype=torch.int32).add_(1).tolist() for j in range(len(self._rows))
            ]
            chosen = picked[..., 0].clamp_(min=MIN_LOGPROB).tolist()
            top_ids: list[list[list[int]]] = []
            top_values: list[list[list[float]]] = []
            if most:
                values, ids = logprobs.topk(most, dim=-1)
                top_values, top_ids = values.clamp_(min=MIN_LOGPROB).tolist(), ids.tolist()
            # A padding column predicts nothing; real columns are contiguous up to the last.
            real = self._mask[:, begin:end].bool().tolist()
            target_ids = targets.tolist()
            for j, wanted in enumerate(self._tops):
                for column in range(end - begin):
                    if not real[j][column]:
                        continue
                    top = ()
                    if wanted:
                        top = tuple(zip(top_ids[j][column][:wanted], top_values[j][column][:wanted], strict=True))
                    self._positions[j].append(
                        PromptPosition(target_ids[j][column], chosen[j][column], top, ranks[j][column])
                    )

    def result(self) -> list[list[PromptPosition] | None]:
        """Per row of the prefill: its prompt positions after the first, in order (None for rows
        that did not ask)."""
        out: list[list[PromptPosition] | None] = [None] * self._count
        for j, row in enumerate(self._rows):
            out[row] = self._positions[j]
        return out
