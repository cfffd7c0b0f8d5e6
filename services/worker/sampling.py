"""Picks the next token of every row of a batch, each row with its own sampling parameters.

Order as in Hugging Face generate: repetition penalty, then temperature, top-k, top-p; the
logit bias comes first, and the presence and frequency penalties right after the repetition
penalty, as in vLLM. Rows with
temperature 0 take the arg-max (after the penalties); the others draw from their own
``torch.Generator`` so that a seeded sequence repeats itself whatever else shares its batch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from services.worker.engine import SamplingParams
from shared.records import MIN_LOGPROB

__all__ = [
    "CANDIDATES",
    "DRAW_BLOCK",
    "RawLogprobs",
    "RowLogprobs",
    "RowSampling",
    "SamplingTable",
    "ban_tokens",
    "draw_from_weights",
    "filter_top_k_top_p",
    "make_generator",
    "pick_next_tokens",
    "raw_logprobs",
]

#: Tokens ranked by `topk` before top-k/top-p filtering; the whole vocabulary is sorted only when
#: a row's kept tokens may lie beyond them.
CANDIDATES = 1024

#: Tokens per block of a draw's first level (`draw_from_weights`).
DRAW_BLOCK = 256



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
        biased = [(i, token, bias) for i, p in enumerate(params) for token, bias in p.logit_bias]
        self.bias: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        """(rows, token ids, biases) of every row's `logit_bias`, None where no row has one."""
        if biased:
            rows, tokens, biases = zip(*biased, strict=True)
            self.bias = (
                torch.tensor(rows, dtype=torch.long, device=device),
                torch.tensor(tokens, dtype=torch.long, device=device),
                torch.tensor(biases, dtype=torch.float32, device=device),
            )
        self.output_penalties = [
            (i, p.presence_penalty, p.frequency_penalty) for i, p in enumerate(params) if p.penalises_output
        ]
        """(row, presence, frequency) of the rows with a presence or frequency penalty:
        `pick_next_tokens` needs their outputs."""
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
        self.logprob_rows = [i for i, p in enumerate(params) if p.logprobs is not None]
        """Rows whose request asked for log probabilities (`raw_logprobs`)."""
        self.logprob_index = torch.tensor(self.logprob_rows, dtype=torch.long, device=device)
        self.most_top_logprobs = max((p.logprobs or 0 for p in params), default=0)
        """The most alternatives any row asked for (one `topk` serves every row)."""


@dataclass(frozen=True, slots=True)
class RowLogprobs:
    """One row's picked token's log probability and its most likely alternatives."""

    logprob: float
    top: tuple[tuple[int, float], ...]
    """(token id, log probability), most likely first; as many as the row asked for."""


@dataclass(slots=True)
class RawLogprobs:
    """The log-softmax of the rows that asked for log probabilities, taken from the logits before
    `pick_next_tokens` changes them (bias, penalties, temperature and filters work in place):
    the model's own distribution, as vLLM's default `raw_logprobs` mode reports."""

    table: SamplingTable
    values: torch.Tensor
    """[rows that asked, vocab], float32."""

    def for_tokens(self, tokens: torch.Tensor) -> list[RowLogprobs | None]:
        """Per row of the batch: the picked token's log probability and the row's top ones (None
        for rows that did not ask). `tokens` is the batch's picked tokens, [rows]."""
        table = self.table
        picked = tokens.index_select(0, table.logprob_index)
        chosen = self.values.gather(1, picked[:, None])[:, 0].clamp_(min=MIN_LOGPROB).tolist()
        top_values: list[list[float]] = [[] for _ in table.logprob_rows]
        top_ids: list[list[int]] = [[] for _ in table.logprob_rows]
        if table.most_top_logprobs:
            values, ids = self.values.topk(table.most_top_logprobs, dim=-1)
            top_values, top_ids = values.clamp_(min=MIN_LOGPROB).tolist(), ids.tolist()
        out: list[RowLogprobs | None] = [None] * len(table.rows)
        for j, row in enumerate(table.logprob_rows):
            wanted = table.rows[row].params.logprobs or 0
            top = tuple(zip(top_ids[j][:wanted], top_values[j][:wanted], strict=True))
            out[row] = RowLogprobs(chosen[j], top)
        return out


def ban_tokens(logits: torch.Tensor, bans: Sequence[tuple[int, Sequence[int]]]) -> None:
    """Make these tokens impossible picks, in place: (row, token ids) pairs get a -inf logit, which
    every later step (penalties, temperature, filters, the draw) keeps at zero probability. For
    `min_tokens`: a sequence's ends (end of sequence, `stop_token_ids`) before it may end."""
    rows = [row for row, tokens in bans for _ in tokens]
    if not rows:
        return
    tokens = [token for _, ids in bans for token in ids]
    index = (torch.tensor(rows, device=logits.device), torch.tensor(tokens, device=logits.device))
    logits.index_put_(index, torch.tensor(float("-inf"), device=logits.device))


def raw_logprobs(logits: torch.Tensor, table: SamplingTable) -> RawLogprobs | None:
    """The log-softmax of the rows of `logits` ([rows, vocab]) whose request asked for log
    probabilities, or None when none did (nothing is computed then). Call it before
    `pick_next_tokens`, which may overwrite `logits`."""
    if not table.logprob_rows:
        return None
    rows = logits.index_select(0, table.logprob_index)  # a copy: picking may work in place
    return RawLogprobs(table, rows.float().log_softmax(dim=-1))


def pick_next_tokens(
    logits: torch.Tensor,
    table: SamplingTable,
    seen: torch.Tensor | None,
    outputs: Sequence[Sequence[int] | None] | None = None,
    *,
    in_place: bool = False,
) -> torch.Tensor:
    """Next token per row. `logits` is [rows, vocab] (float32); `seen` marks, per row, the token
    ids already in its prompt and output (for the repetition penalty); `outputs` holds, per row,
    the tokens it has generated so far, read only for `table.output_penalties` (the presence and
    frequency penalties; None or an empty list there: nothing generated yet). With `in_place`,
    `logits` is used as scratch space and overwritten (the engine's decode step: its logits are
    its own).

    Why in place: every [rows, vocab] temporary is a fresh allocation of several MB (6.3 MB at 32
    rows of a 49k vocabulary), which glibc maps and the kernel faults in page by page on every
    step; on 2 cores the sampling part of a step took 6-10 ms that way against about 3 without
    the temporaries (engine alone, 32 rows, temperature 0.7).
    """
    if table.bias is not None:
        if not in_place:
            logits, in_place = logits.clone(), True
        rows, tokens, biases = table.bias
        logits.index_put_((rows, tokens), biases, accumulate=True)
    if table.any_penalty and seen is not None:
        penalty = table.penalty[:, None]
        penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
        logits = torch.where(seen, penalised, logits)
        in_place = True  # a fresh tensor now
    if table.output_penalties and outputs is not None:
        penalties = _output_penalties(table, outputs, logits.shape[-1], logits.device)
        if penalties is not None:
            if not in_place:
                logits, in_place = logits.clone(), True
            rows, tokens, amounts = penalties
            logits.index_put_((rows, tokens), amounts.neg_(), accumulate=True)
    if not table.sampled_rows:
        return logits.argmax(dim=-1)
    # The arg-max over the whole vocabulary only where a row is greedy (it costs as much as a
    # softmax); index_select gives a fresh tensor, so the temperature is divided in place.
    if len(table.sampled_rows) == len(table.rows):
        chosen = logits.new_zeros(logits.shape[0], dtype=torch.long)
        scores = logits if in_place else logits.clone()
    else:
        chosen = logits.argmax(dim=-1)
        scores = logits.index_select(0, table.sampled_index)
    scores.div_(table.temperature[:, None])
    order: torch.Tensor | None = None
    if table.needs_filter:
        scores, order = filter_top_k_top_p(scores, table.top_k, table.top_p)
        weights = scores.softmax(dim=-1)
    else:
        # Unnormalised (the draw scales by each row's total), and in place: exp(score - max).
        weights = scores.sub_(scores.amax(dim=-1, keepdim=True)).exp_()
    picks = draw_from_weights(weights, [table.rows[row].generator for row in table.sampled_rows])
    if order is not None:
        picks = order.gather(1, picks[:, None])[:, 0]
    chosen[table.sampled_index] = picks
    return chosen


def _output_penalties(
    table: SamplingTable, outputs: Sequence[Sequence[int] | None], vocab: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(rows, tokens, amounts): what the presence and frequency penalties subtract, one entry per
    distinct token of each penalised row's output (presence + frequency x its count); None when
    none of those rows has generated anything yet.

    Counted afresh at every step from each sequence's token list rather than kept beside the
    batch: rows join, leave and are reordered, and a list per sequence follows it for free, while
    counts kept per row would have to move with every row (as `seen` does). Sparse, not a
    [rows, vocab] count tensor: at 32 rows of a 49k vocabulary with 64 tokens each, the dense
    version (zero-fill, scatter, multiply, add) added about 20 ms to a step's sampling on one
    thread (a sixth of a float32 decode step on 2 cores), this one 0.8 ms (2026-12-07, AVX2 EPYC)."""
    rows: list[int] = []
    tokens: list[int] = []
    amounts: list[float] = []
    for row, presence, frequency in table.output_penalties:
        for token, times in Counter(outputs[row] or ()).items():
            # A tokenizer may know ids the output head has no logit for (added tokens): never
            # picked, so nothing to penalise.
            if token < vocab:
                rows.append(row)
                tokens.append(token)
                amounts.append(presence + frequency * times)
    if not rows:
        return None
    return (
        torch.tensor(rows, dtype=torch.long, device=device),
        torch.tensor(tokens, dtype=torch.long, device=device),
        torch.tensor(amounts, dtype=torch.float32, device=device),
    )


def filter_top_k_top_p(
    scores: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's scores ([rows, vocab]) ranked best first, with the tokens that top-k or top-p
    drop set to -inf; returns (ranked scores, their token ids). The best token is never dropped.

    Why not a plain sort: sorting a 49k vocabulary for 32 rows took about 90 ms on this CPU, most
    of a decode step. The top `CANDIDATES` tokens come from one `topk` instead; they hold every
    token the filters keep when a row's top_k is at most that many, or when the row has no top_k
    and its candidates already carry more than top_p of the probability. Only when some row
    fits neither (a flat distribution, a very high temperature) is the whole vocabulary sorted.
    The tokens kept are the same either way.
    """
    vocab = scores.shape[-1]
    k = min(vocab, CANDIDATES)
    ranked, order = scores.topk(k, dim=-1)
    ranked = _mask_ranks(ranked, top_k)
    # top_p is a share of the whole (top-k filtered) distribution, so the candidates' probabilities
    # are normalised by the whole vocabulary's sum unless top_k already cut it to the candidates.
    within = top_k[:, None] <= k
    log_total = torch.where(within, ranked.logsumexp(-1, keepdim=True), scores.logsumexp(-1, keepdim=True))
    probs = (ranked - log_total).exp()
    fits = within[:, 0] | ((top_k >= vocab) & (probs.sum(dim=-1) > top_p))
    if not bool(fits.all()):
        ranked, order = scores.sort(dim=-1, descending=True)
        ranked = _mask_ranks(ranked, top_k)
        probs = ranked.softmax(dim=-1)
    # Drop a token when the tokens ranked above it already reach top_p (the first never goes).
    beyond = (probs.cumsum(dim=-1) - probs) > top_p[:, None]
    return ranked.masked_fill(beyond, float("-inf")), order


def _mask_ranks(ranked: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    ranks = torch.arange(ranked.shape[-1], device=ranked.device)[None, :]
    return ranked.masked_fill(ranks >= top_k[:, None], float("-inf"))


def draw_from_weights(weights: torch.Tensor, generators: Sequence[torch.Generator | None]) -> torch.Tensor:
    """One token per row of `weights` ([rows, vocab], non-negative, not necessarily normalised;
    may be overwritten) by inverting the row's cumulative distribution at a uniform number drawn
    from the row's own generator.

    Why not ``torch.multinomial`` per row: over a 49k vocabulary it cost about 1.3 ms a row on
    this CPU (42 ms of a 144 ms decode step at 32 rows); this is batched, with one scalar draw
    per row. The draw still comes from the row's generator alone, so a seeded sequence repeats
    itself whatever else shares the batch.

    Why in two levels (blocks of `DRAW_BLOCK` tokens, then the tokens of the chosen block): a
    cumulative sum over the whole vocabulary is a sequential pass over every row; the blocks'
    sums are one vectorised reduction, and only the chosen block needs a cumulative sum. 32 rows
    of 49,152 tokens: 1.3 ms for the cumulative sum against 0.25 ms (one thread, 2026-12-06).
    """
    rows, vocab = weights.shape
    uniform = torch.stack([torch.rand((), generator=g, device=weights.device) for g in generators])
    whole = vocab - vocab % DRAW_BLOCK
    sums = weights[:, :whole].view(rows, whole // DRAW_BLOCK, DRAW_BLOCK).sum(dim=-1)
    if whole < vocab:
        sums = torch.cat([sums, weights[:, whole:].sum(dim=-1, keepdim=True)], dim=1)
    block_cdf = sums.cumsum_(dim=-1)
    # Scaled by each row's total so that float rounding can never push the target past the last
    # block; `right=True` skips blocks, and then tokens, of zero probability (the cdf does not rise).
    target = uniform * block_cdf[:, -1]
    block = torch.searchsorted(block_cdf, target[:, None], right=True)[:, 0].clamp_(max=block_cdf.shape[1] - 1)
    before = torch.where(block > 0, block_cdf.gather(1, (block - 1).clamp(min=0)[:, None])[:, 0], 0.0)
    first = block * DRAW_BLOCK
    columns = first[:, None] + torch.arange(DRAW_BLOCK, device=weights.device)
    inside = columns < vocab  # the last block may be shorter
    local = weights.gather(1, columns.clamp(max=vocab - 1)).masked_fill_(~inside, 0.0)
    local_cdf = local.cumsum_(dim=-1)
    # The block's own total: where the sums' rounding differs from the cumulative sum's, the
    # target stays inside the block, below its last rise.
    local_target = (target - before).clamp(min=0.0).minimum(local_cdf[:, -1] * (1.0 - 1e-6))
    picks = torch.searchsorted(local_cdf, local_target[:, None], right=True)[:, 0].clamp_(max=DRAW_BLOCK - 1)
    return (first + picks).clamp_(max=vocab - 1)
