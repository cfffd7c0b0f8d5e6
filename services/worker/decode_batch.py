"""The tensors of a running batch for a decoder-only model, and how rows join and leave it.

Rows are left-padded to a common length. Each row keeps its own attention mask (0 over padding)
and its own position ids (counting only its real tokens), so padding changes nothing about what a
row computes: a sequence generated in a batch gets the same greedy tokens as alone.

Continuous batching: newcomers are prefilled on their own (left-padded among themselves), then
their KV cache is merged into the running batch by left-padding the shorter of the two caches to the
longer one along the sequence axis. Rows that finish leave (`keep`: the last rows move into their
places), and columns that have become padding in every row are trimmed off the left. A `KVSlab`
does both in place, copying only the rows that move or join (`llama_decode`).

A group's prefill may run a slice of columns at a time (`PrefillRun`, chunked prefill), so that
the running batch can step between slices.

What runs the model is a `ModelSteps`: `TransformersForward` (the model's own forward over a
transformers cache) or, for the models it supports, a `LlamaDecoder` over a `KVSlab` (see
`llama_decode`); the batch calls its cache's `keep` and `absorb` whichever it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from services.worker.llama_decode import LlamaDecoder
from services.worker.prefix_cache import PrefixCache
from services.worker.prompt_logprobs import PromptPosition, PromptScorer

__all__ = [
    "DecodeBatch", "KVCache", "ModelSteps", "PrefillRun", "TransformersForward", "TransformersKV", "supports_joining",
]


def supports_joining(model: Any) -> bool:
    """Whether this model's KV cache is made of plain full-attention layers, the only kind whose
    caches can be padded and merged (sliding-window and linear-attention layers cannot)."""
    cache = DynamicCache(config=model.config)
    return bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)


class KVCache(Protocol):
    """A batch's keys and values, as `DecodeBatch` uses them (`TransformersKV` or `KVSlab`)."""

    def nbytes(self) -> int: ...

    def compact(self, holes: torch.Tensor, movers: torch.Tensor, rows: int, start: int) -> None:
        """Copy rows `movers` into rows `holes` in place, then keep the first `rows` rows and drop
        the first `start` columns."""

    def absorb(self, other: Any) -> None:
        """Append `other`'s rows (same type) after these, both left-padded to the longer length."""


class ModelSteps(Protocol):
    """What runs the model for a batch (`TransformersForward` or `LlamaDecoder`)."""

    def run_prefix(self, tokens: Sequence[int], device: torch.device) -> Any:
        """One row of `tokens` (a prompt prefix, positions from 0) into a cache holding exactly
        them, for `prefill_cache` to start other prompts from (`prefix_cache`)."""

    def prefill_cache(self, rows: int, length: int, prefix: Any = None) -> Any:
        """The cache a prefill of `rows` prompts padded to `length` columns fills: empty, or
        holding the one-row `prefix` (made by `run_prefix`) in every row."""

    def prefill_columns(
        self, cache: Any, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, held: torch.Tensor,
        *, logits: bool = True,
    ) -> torch.Tensor | None:
        """Run the next columns of left-padded prompts ([rows, new] `ids`, `mask` 0 over their
        padding, `positions`) into `cache`, after the columns it holds (`held`: [rows, held], 0
        over padding); returns each row's last float32 logits, or None without `logits`."""

    def prefill_hidden(
        self, cache: Any, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, held: torch.Tensor
    ) -> torch.Tensor:
        """As `prefill_columns`, but returns every new column's final hidden state ([rows, new,
        hidden]; `head` makes logits of them), for the prompt's log probabilities."""

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """The output head over final hidden states: [..., hidden] -> [..., vocab] logits."""

    def step(self, cache: Any, tokens: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (`mask` already covers it); returns the next float32 logits."""


class TransformersKV:
    """A transformers `DynamicCache` with the `KVCache` operations."""

    def __init__(self, dynamic: DynamicCache) -> None:
        self.dynamic = dynamic

    def nbytes(self) -> int:
        return sum(layer.keys.nbytes + layer.values.nbytes for layer in self.dynamic.layers if layer.keys is not None)

    def compact(self, holes: torch.Tensor, movers: torch.Tensor, rows: int, start: int) -> None:
        for layer in self.dynamic.layers:
            # In place is safe: the cache's tensors are its own (every step makes new ones).
            if holes.numel():
                layer.keys.index_copy_(0, holes, layer.keys.index_select(0, movers))
                layer.values.index_copy_(0, holes, layer.values.index_select(0, movers))
            layer.keys = layer.keys[:rows, :, start:, :]
            layer.values = layer.values[:rows, :, start:, :]

    def absorb(self, other: TransformersKV) -> None:
        mine_layers, their_layers = self.dynamic.layers, other.dynamic.layers
        length = max(mine_layers[0].keys.shape[2], their_layers[0].keys.shape[2])
        for mine, theirs in zip(mine_layers, their_layers, strict=True):
            mine.keys = torch.cat([_left_pad(mine.keys, length), _left_pad(theirs.keys, length)], dim=0)
            mine.values = torch.cat([_left_pad(mine.values, length), _left_pad(theirs.values, length)], dim=0)


class TransformersForward:
    """The model's own forward over a `TransformersKV`: any causal LM transformers loads."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def run_prefix(self, tokens: Sequence[int], device: torch.device) -> TransformersKV:
        ids = torch.tensor([list(tokens)], dtype=torch.long, device=device)
        cache = self.prefill_cache(1, ids.shape[1])
        positions = torch.arange(ids.shape[1], device=device)[None]
        self.prefill_columns(cache, ids, torch.ones_like(ids), positions, ids[:, :0], logits=False)
        return cache

    def prefill_cache(self, rows: int, length: int, prefix: TransformersKV | None = None) -> TransformersKV:
        dynamic = DynamicCache(config=self.model.config)
        if prefix is not None:
            # Copies (`repeat`), never views: the kept prefix must outlive every batch made from it.
            for index, layer in enumerate(prefix.dynamic.layers):
                dynamic.update(layer.keys.repeat(rows, 1, 1, 1), layer.values.repeat(rows, 1, 1, 1), index)
        return TransformersKV(dynamic)

    def prefill_columns(
        self, cache: TransformersKV, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, held: torch.Tensor,
        *, logits: bool = True,
    ) -> torch.Tensor | None:
        """Run the next columns of left-padded prompts into `cache` (transformers grows it by
        concatenation), after the `held` columns it holds: the whole prompts, or a chunk of a
        longer prefill. Returns each row's last logits, or None without `logits` (the head still
        runs on one column: the forward has no switch to skip it)."""
        out = self.model(**_prefill_inputs(cache, ids, mask, positions, held), logits_to_keep=1)
        return out.logits[:, -1, :].float() if logits else None

    def prefill_hidden(
        self, cache: TransformersKV, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, held: torch.Tensor
    ) -> torch.Tensor:
        """The decoder without its head (`get_decoder`): its last hidden state, the final norm's
        output, is what the head takes."""
        out = self.model.get_decoder()(**_prefill_inputs(cache, ids, mask, positions, held))
        return out.last_hidden_state

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.get_output_embeddings()(hidden)

    def step(
        self, cache: TransformersKV, tokens: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        out = self.model(
            input_ids=tokens[:, None],
            attention_mask=mask,
            position_ids=positions[:, None],
            past_key_values=cache.dynamic,
            use_cache=True,
        )
        return out.logits[:, -1, :].float()


def _prefill_inputs(
    cache: TransformersKV, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, held: torch.Tensor
) -> dict[str, Any]:
    """The forward's arguments for a prefill's next columns (the model's and its decoder's alike)."""
    return {
        "input_ids": ids,
        "attention_mask": torch.cat([held, mask], dim=1),
        "position_ids": positions,
        "past_key_values": cache.dynamic,
        "use_cache": True,
    }


class DecodeBatch:
    """KV cache, attention mask, positions and pending tokens of the rows generating together."""

    def __init__(
        self,
        cache: KVCache,
        mask: torch.Tensor,
        positions: torch.Tensor,
        seen: torch.Tensor,
        steps: ModelSteps,
    ) -> None:
        self.cache = cache
        """The keys and values, of the kind `steps` makes."""
        self.steps = steps
        """What runs the model for this batch."""
        self.mask = mask
        """[rows, length] 1 over real tokens, 0 over left padding."""
        self.positions = positions
        """[rows] position id of the next token fed to each row."""
        self.seen = seen
        """[rows, vocab] token ids in each row's prompt and output (repetition penalty)."""
        self.next_tokens: torch.Tensor | None = None
        """[rows] tokens picked but not yet fed to the model."""

    @property
    def size(self) -> int:
        return int(self.mask.shape[0])

    @property
    def length(self) -> int:
        return int(self.mask.shape[1])

    @classmethod
    def prefill(
        cls,
        model: Any,
        prompts: Sequence[Sequence[int]],
        pad_id: int,
        vocab_size: int,
        device: torch.device,
        decoder: LlamaDecoder | None = None,
        prefixes: PrefixCache | None = None,
    ) -> tuple[DecodeBatch, torch.Tensor]:
        """Run the prompts through the model at once; returns the batch and each row's last logits
        ([rows, vocab], float32). With `decoder`, the prompts and every later step run through it
        over a slab (else through the model's own forward); with `prefixes`, a prefix the prompts
        share is run once (or taken from the cache) and only the rest of each prompt is run
        (`prefix_cache`). `PrefillRun` does the same a chunk at a time."""
        run = PrefillRun(model, prompts, pad_id, vocab_size, device, decoder, prefixes)
        while not run.done:
            run.advance()
        return run.result()

    def cache_nbytes(self) -> int:
        """Bytes held by the key and value tensors of every layer (a slab's free columns included)."""
        return self.cache.nbytes()

    def step(self) -> torch.Tensor:
        """Feed `next_tokens` to every row; returns the new logits ([rows, vocab], float32)."""
        assert self.next_tokens is not None, "pick tokens before stepping"
        ones = torch.ones((self.size, 1), dtype=self.mask.dtype, device=self.mask.device)
        self.mask = torch.cat([self.mask, ones], dim=1)
        logits = self.steps.step(self.cache, self.next_tokens, self.mask, self.positions)
        self.positions = self.positions + 1
        self.next_tokens = None
        return logits

    def record_tokens(self, tokens: torch.Tensor) -> None:
        """Remember the picked tokens: fed at the next step, and seen for the penalty."""
        self.next_tokens = tokens
        self.seen[torch.arange(self.size, device=tokens.device), tokens] = True

    def keep(self, rows: Sequence[int]) -> list[int]:
        """Keep only `rows`: the last of them move into the places of the rows that leave, so only
        as many rows of the KV cache are copied as leave (not all of it), then columns that are
        padding in every row are trimmed off the left. Returns, for each row now, the index it had
        before: the kept rows, in an order that need not be the order given."""
        kept = set(rows)
        leaving = {row for row in range(self.size) if row not in kept}
        remaining = self.size - len(leaving)
        holes = [row for row in sorted(leaving) if row < remaining]
        movers = [row for row in range(remaining, self.size) if row not in leaving]
        order = list(range(remaining))
        for hole, mover in zip(holes, movers, strict=True):
            order[hole] = mover
        device = self.mask.device
        index = torch.tensor(order, dtype=torch.long, device=device)
        mask = self.mask.index_select(0, index)
        real_columns = mask.any(dim=0).nonzero()
        start = int(real_columns[0]) if real_columns.numel() else mask.shape[1]
        self.mask = mask[:, start:]
        self.cache.compact(
            torch.tensor(holes, dtype=torch.long, device=device),
            torch.tensor(movers, dtype=torch.long, device=device),
            remaining,
            start,
        )
        self.positions = self.positions.index_select(0, index)
        self.seen = self.seen.index_select(0, index)
        if self.next_tokens is not None:
            self.next_tokens = self.next_tokens.index_select(0, index)
        return order

    def absorb(self, other: DecodeBatch) -> None:
        """Append `other`'s rows after this batch's rows (both must have picked their tokens)."""
        assert self.next_tokens is not None and other.next_tokens is not None
        length = max(self.length, other.length)
        assert type(self.cache) is type(other.cache), "both batches must keep their cache the same way"
        self.cache.absorb(other.cache)
        self.mask = torch.cat(
            [F.pad(self.mask, (length - self.length, 0)), F.pad(other.mask, (length - other.length, 0))], dim=0
        )
        self.positions = torch.cat([self.positions, other.positions])
        self.seen = torch.cat([self.seen, other.seen])
        self.next_tokens = torch.cat([self.next_tokens, other.next_tokens])


def _left_pad(states: torch.Tensor, length: int) -> torch.Tensor:
    """[rows, heads, seq, dim] padded with zeros on the left of `seq` up to `length`."""
    missing = length - states.shape[2]
    return F.pad(states, (0, 0, missing, 0)) if missing else states


class PrefillRun:
    """A group's prefill, run a chunk of columns at a time (`advance`) so that the running batch
    can take decode steps between chunks (chunked prefill): each chunk is at most `chunk_tokens`
    (rows x padded columns, at least one column), whichever `ModelSteps` runs it.

    Chunks give the same logits as one prefill: each attends to the columns of the chunks before
    it (padding masked) and causally within itself, exactly the attention of a whole prefill, only
    cut in pieces along the query axis.
    """

    def __init__(
        self,
        model: Any,
        prompts: Sequence[Sequence[int]],
        pad_id: int,
        vocab_size: int,
        device: torch.device,
        decoder: LlamaDecoder | None = None,
        prefixes: PrefixCache | None = None,
        chunk_tokens: int | None = None,
        prompt_logprobs: Sequence[int | None] = (),
    ) -> None:
        """Lay out the prompts (left-padded, after a shared prefix if `prefixes` has or makes one:
        that prefix is run here, at once) and make the cache; nothing more runs until
        `advance`. `chunk_tokens` None: one chunk. `prompt_logprobs`: per prompt, None or how many
        most likely tokens to list at each position, for prompts whose log probabilities are
        wanted (`prompt_logprobs.py`; with any, no shared prefix is used)."""
        self._vocab_size = vocab_size
        self._steps: ModelSteps = decoder if decoder is not None else TransformersForward(model)
        self._shared = None
        wanted = any(top is not None for top in prompt_logprobs)
        if prefixes is not None and not wanted:
            self._shared = prefixes.prefix_for(prompts, lambda tokens: self._steps.run_prefix(tokens, device))
        skip = len(self._shared.tokens) if self._shared is not None else 0
        rests = [prompt[skip:] for prompt in prompts]
        rows, longest = len(prompts), max(len(rest) for rest in rests)
        ids = torch.full((rows, longest), pad_id, dtype=torch.long)
        mask = torch.zeros((rows, longest), dtype=torch.long)
        for row, rest in enumerate(rests):
            ids[row, longest - len(rest) :] = torch.tensor(rest, dtype=torch.long)
            mask[row, longest - len(rest) :] = 1
        self._ids, self._mask = ids.to(device), mask.to(device)
        # The batch's mask covers the shared prefix's columns too (real in every row).
        self._full_mask = torch.cat([self._mask.new_ones((rows, skip)), self._mask], dim=1)
        self._positions = (self._full_mask.cumsum(-1) - 1).clamp(min=0)[:, skip:]
        self._skip = skip
        self._columns = longest if chunk_tokens is None else max(1, chunk_tokens // rows)
        """Columns per chunk."""
        self._done_columns = 0
        self._logits: torch.Tensor | None = None
        self._cache = self._steps.prefill_cache(rows, longest, self._shared.cache if self._shared is not None else None)
        self._scorer = PromptScorer(prompt_logprobs, self._ids, self._mask) if wanted else None

    @property
    def done(self) -> bool:
        """Whether every chunk has run (`result` may be taken)."""
        return self._logits is not None

    def advance(self) -> None:
        """Run the next chunk."""
        assert not self.done, "the prefill has run"
        first, last = self._done_columns, min(self._done_columns + self._columns, int(self._ids.shape[1]))
        final = last == self._ids.shape[1]
        ids, mask, positions = (t[:, first:last] for t in (self._ids, self._mask, self._positions))
        held = self._full_mask[:, : self._skip + first]
        if self._scorer is None:
            self._logits = self._steps.prefill_columns(self._cache, ids, mask, positions, held, logits=final)
        else:
            hidden = self._steps.prefill_hidden(self._cache, ids, mask, positions, held)
            self._scorer.score(hidden, first, self._steps.head)
            if final:
                self._logits = self._steps.head(hidden[:, -1, :]).float()
        self._done_columns = last

    def result(self) -> tuple[DecodeBatch, torch.Tensor]:
        """The prefilled batch and each row's last logits ([rows, vocab], float32)."""
        assert self._logits is not None, "chunks are left to run"
        ids, mask = self._ids, self._mask
        # Padding columns repeat the row's last real token, so the scatter marks real tokens only
        # (the pad id may also be a real token of the prompt, e.g. an end-of-turn marker).
        real_ids = torch.where(mask.bool(), ids, ids[:, -1:].expand_as(ids)).clamp(max=self._vocab_size - 1)
        seen = torch.zeros((ids.shape[0], self._vocab_size), dtype=torch.bool, device=ids.device)
        seen.scatter_(1, real_ids, True)
        if self._shared is not None:
            prefix_ids = torch.tensor(self._shared.tokens, dtype=torch.long, device=ids.device)
            seen[:, prefix_ids.clamp(max=self._vocab_size - 1)] = True
        full_mask = self._full_mask
        return DecodeBatch(self._cache, full_mask, full_mask.sum(-1), seen, self._steps), self._logits

    def prompt_logprobs(self) -> list[list[PromptPosition] | None]:
        """Per prompt, once every chunk has run: its positions after the first with their log
        probabilities (None for prompts that did not ask)."""
        assert self._logits is not None, "chunks are left to run"
        if self._scorer is None:
            return [None] * int(self._ids.shape[0])
        return self._scorer.result()
