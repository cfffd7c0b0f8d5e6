"""Prefills and decode steps for Llama-architecture models over a preallocated KV cache (the
transformers backend, CPU).

The generic transformers forward appends every new key and value to its cache with `torch.cat`, so
each decode step copies the whole cache once per layer (its cost grows with the context), and its
attention kernel spends most of a small step on per-call overhead. Here prompts and steps run
through the model's own modules (norms, rotary embedding, output projection, MLP activation;
packed or quantized as loaded) with these differences:

* the keys and values live in a `KVSlab`: one tensor per layer with room for more columns; a step
  writes its column in place, and the slab grows by half its width when it is full;
* keys and values are stored alike ([rows, kv_heads, columns, head_dim]). Attention is, in float32,
  two batched matrix products with the softmax between them, as in transformers' "eager"
  attention, with the query heads of each key/value head stacked as the rows of one product
  (grouped-query attention without repeating the keys); in bfloat16 (or float16) it is
  `scaled_dot_product_attention` with `enable_gqa` (`LlamaDecoder.fused_attention`). Why two
  kinds: oneDNN's bfloat16 batched product copies an operand that is not contiguous first, and a
  slab's first `width` columns never are, while PyTorch's CPU flash-attention kernel reads the
  slab's strided view in place and keeps the scores in float32 itself; MKL's float32 product
  reads the strided view as it is, and there the two products are at least as fast;
* plain q/k/v projections are fused into one linear, and so are the MLP's gate and up projections;
* on CPU, a decode step of at least `WIDE_MIN_ROWS` rows may run its largest matrix products (each
  layer's MLP projections and the output head; in float32 its attention block's products too,
  `LlamaDecoder.wide_attention`) on more torch threads than the rest of the step
  (`LlamaDecoder.wide_threads`): there the extra threads' wake-up is paid back, while the many
  small operators between them would only wait at more barriers.

Measured on the 2-core CPU of 2026-12-02 (SmolLM2-135M bf16, packed linear weights, one thread,
median of 40 steps): before fusion, 44.8 ms per step against 50.6 ms for the transformers forward
at 32 rows and ~90 columns; 57.6 against 84.2 ms at 32 rows and ~250 columns; 48.3 against 84.0 ms
at 16 rows and ~650 columns. Fusion took a step from 44.8 to 42.1 ms and a prefill of 32 prompts on
2 threads from 499 to 427 ms.

Measured on the same CPU on 2026-12-06 (SmolLM2-135M bf16, the decode thread under `SCHED_FIFO`,
each step with its arg-max pick, medians of 30 steps, two runs each): with those products on 2
threads, a step of 32 rows took 34.3-34.4 ms against 39.6-41.9 ms on one; 16 rows 24.7-25.7
against 26.9-27.7 ms; 64 rows 58.0-58.6 against 63.4-67.2 ms; but 1, 4 and 8 rows took 17.3-17.5
against 15.2-15.4, 18.1-19.9 against 17.1-17.5 and 22.3-24.8 against 20.3-21.9 ms (too little
work per product to pay for waking the second thread), hence `WIDE_MIN_ROWS`. It holds in float32
on the AVX2-only 2-core EPYC too (2026-12-07, engine alone, medians of 40 steps, one thread
against two for every wide product): 1 row 51.0 against 56.9 ms, 4 rows 62.6 against 62.0, 8 rows
82.2 against 80.0 (a step of few rows reads the weights, and a second core reads no faster).

In float32 the products are slower (no bfloat16 instructions on the CPUs where it is chosen), so
the attention block's (the fused q/k/v and output projections, the two attention products) gain
too: on the 2-core AVX2-only AMD EPYC of 2026-12-07 (SmolLM2-135M float32, packed weights, one
thread, the MLP and head on 2, 4 alternations of 64 steps each), a step of 32 rows took 123.2 ms
with them on 2 threads against 141.1 ms without (16 rows: 101.7 against 102.9 ms).

Measured on the 2-core Intel Xeon with AMX of 2026-12-08 (30 layers' attention of a decode step of
32 rows at 135 of 200 columns, keys and values read from memory, medians of 15): in bfloat16 the
two products 36.2 ms on one thread (24.2 on two) against 20.7 (18.0) for
`scaled_dot_product_attention`; in float32 33.9 (19.8) against 34.6 (23.5), and 36.6 (19.7) for the
products over untransposed keys, the layout both kinds now share (keys were stored transposed for
the products before: their new column was then written one element per cache line).

Applies to `LlamaForCausalLM` (SmolLM2 and the Llama family): full attention, rotary embedding over
the whole head, no per-head query/key norms. Other models keep the transformers forward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LEFT_ROOM", "MIN_ROOM", "WIDE_MIN_ROWS", "FusedAway", "KVSlab", "LlamaDecoder"]

#: Free columns a slab is given beyond what it holds when it is made or grows (at least).
MIN_ROOM = 64

#: Columns a prefill's slab keeps allocated left of its view, so that newcomers up to this much
#: longer can still be merged into its spare rows (`KVSlab.absorb`).
LEFT_ROOM = 16

#: Fewest rows a decode step must have to run its largest products on `LlamaDecoder.wide_threads`
#: (module docstring: below it, waking the extra threads cost more than they saved).
WIDE_MIN_ROWS = 16


class KVSlab:
    """Every layer's keys and values for the rows of a batch, with room for more columns.

    Columns `[0, length)` hold the batch's tokens (left padding included, masked by the batch);
    columns from `length` to the capacity are free. Free columns and the padding `absorb` adds are
    zero, and a prefill's padding holds its pad tokens' keys: never uninitialised memory, because
    a NaN there would survive a zero attention weight.

    `keys` and `values` are views into a larger allocation: rows beyond the view (spare rows a
    prefill reserves for the batch's maximum size, and rows whose sequences left) and columns
    left of it (a little room a prefill leaves, and padding columns trimmed off) are allocated but
    not in view, and are zeroed as they come into it. So a sequence leaving copies only the rows
    moved into its place (`compact`), and newcomers are written into spare rows (`absorb`), where
    otherwise every row of every layer would be copied into a new allocation. Measured on the
    2-core CPU of 2026-12-06 (SmolLM2-135M bf16, 32 rows, 30 layers, one thread): dropping one row
    by copying the others took 5.4-17.8 ms at 109-169 columns (it varied with the machine's
    load), moving one row into its place 0.9-1.1 ms; in an engine timeline of a cluster run,
    merging newcomers took 1.1 and 7.1 ms against 28 ms before, while a decode step of 32 rows
    took 46-50 ms. Into spare rows never touched before, a merge costs about what a new
    allocation does (15-19 against 16-23 ms for 18 rows into 14 in isolation): the pages are
    faulted in either way.
    """

    def __init__(
        self,
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
        length: int,
        rows: int | None = None,
        start: int = 0,
    ) -> None:
        """A slab over allocated `keys` and `values`: its view is their first `rows` rows (all
        by default) from column `start` on, of which `length` columns are in use."""
        self._keys_held = keys
        """Per layer [allocated rows, kv_heads, allocated columns, head_dim]."""
        self._values_held = values
        """Per layer [allocated rows, kv_heads, allocated columns, head_dim]."""
        self._rows = int(values[0].shape[0]) if rows is None else rows
        self._start = start
        self.length = length
        self.keys: list[torch.Tensor] = []
        """Per layer [rows, kv_heads, capacity, head_dim]: a view."""
        self.values: list[torch.Tensor] = []
        """Per layer [rows, kv_heads, capacity, head_dim]: a view."""
        self._view()

    @classmethod
    def allocate(
        cls, like: torch.Tensor, layers: int, rows: int, kv_heads: int, head_dim: int, capacity: int,
        *, spare_rows: int = 0, left_room: int = 0,
    ) -> KVSlab:
        """An empty slab (length 0) of `rows` rows and `capacity` columns, all zero, with
        `spare_rows` rows and `left_room` columns allocated beyond its view (uninitialised)."""
        shape_rows, columns = rows + spare_rows, left_room + capacity
        keys = [like.new_empty((shape_rows, kv_heads, columns, head_dim)) for _ in range(layers)]
        values = [like.new_empty((shape_rows, kv_heads, columns, head_dim)) for _ in range(layers)]
        slab = cls(keys, values, 0, rows, left_room)
        for k, v in zip(slab.keys, slab.values, strict=True):
            k.zero_()
            v.zero_()
        return slab

    @property
    def capacity(self) -> int:
        return int(self.values[0].shape[2])

    @property
    def rows(self) -> int:
        return self._rows

    def nbytes(self) -> int:
        """Bytes of the rows in view, free columns included: what the batch's sequences use. The
        rows allocated beyond the view are not counted (spare rows stay untouched until used)."""
        return sum(k.nbytes + v.nbytes for k, v in zip(self.keys, self.values, strict=True))

    def reserve_column(self) -> int:
        """The index of the next free column, growing the slab first when it is full."""
        if self.length == self.capacity:
            self._reallocate(self._rows, self.length + max(MIN_ROOM, self.length // 2), [(self, 0)])
        return self.length

    def compact(self, holes: torch.Tensor, movers: torch.Tensor, rows: int, start: int) -> None:
        """Copy rows `movers` into rows `holes` (pairwise, in place), then keep the first `rows`
        rows and drop the first `start` columns (both by narrowing the view: no copy)."""
        if holes.numel():
            # Whole rows, free columns included: a mover's free columns are zero, so the hole's
            # become zero too.
            for held in (*self.keys, *self.values):
                held.index_copy_(0, holes, held.index_select(0, movers))
        self._rows = rows
        self._start += start
        self.length -= start
        self._view()

    def absorb(self, other: KVSlab) -> None:
        """Append `other`'s rows after this slab's, both left-padded to the longer length: in
        place when enough rows are allocated beyond the view and, if `other` is longer, enough
        columns left of it (only `other`'s rows are written then); otherwise into a new
        allocation of both."""
        spare = int(self._values_held[0].shape[0]) - self._rows
        wider = max(0, other.length - self.length)
        if other.rows > spare or wider > self._start:
            length = max(self.length, other.length)
            rows = self._rows + other.rows
            self._reallocate(rows, length + MIN_ROOM, [(self, length - self.length), (other, length - other.length)])
            self.length = length
            return
        if wider:
            # Left-pad the rows in view by bringing zeroed columns into it.
            for held in (*self._keys_held, *self._values_held):
                held[: self._rows, :, self._start - wider : self._start].zero_()
            self._start -= wider
            self.length += wider
        first, last = self._rows, self._rows + other.rows
        column, pad = self._start, self.length - other.length
        end = column + self.length
        mine, theirs = (*self._keys_held, *self._values_held), (*other.keys, *other.values)
        for held, their in zip(mine, theirs, strict=True):
            # Zeros where `other` writes nothing (its padding, the free columns): rows that left
            # may have held columns there.
            held[first:last, :, column : column + pad].zero_()
            held[first:last, :, end:].zero_()
            held[first:last, :, column + pad : end] = their[:, :, : other.length]
        self._rows = last
        self._view()

    def _reallocate(self, rows: int, capacity: int, parts: list[tuple[KVSlab, int]]) -> None:
        """A new allocation of `rows` rows (plus the rows allocated beyond them before) and
        `capacity` columns, holding `parts` one after the other: each slab's columns in use,
        shifted right by its padding."""
        spare = max(0, int(self._values_held[0].shape[0]) - rows)
        first = self.keys[0]
        heads, dim = int(first.shape[1]), int(first.shape[3])
        new = KVSlab.allocate(first, len(self.keys), rows, heads, dim, capacity, spare_rows=spare)
        row = 0
        for part, pad in parts:
            last = row + part.rows
            for held, their in zip((*new.keys, *new.values), (*part.keys, *part.values), strict=True):
                held[row:last, :, pad : pad + part.length] = their[:, :, : part.length]
            row = last
        self._keys_held, self._values_held = new._keys_held, new._values_held
        self._rows, self._start = rows, 0
        self._view()

    def _view(self) -> None:
        rows, start = self._rows, self._start
        self.keys = [k[:rows, :, start:] for k in self._keys_held]
        self.values = [v[:rows, :, start:] for v in self._values_held]


class LlamaDecoder:
    """Prefills and decode steps of a Llama-architecture model over a `KVSlab` (module docstring).

    Made once per model, before its linears are packed: where the query/key/value projections and
    the MLP's gate/up projections are plain `nn.Linear`, each group is fused into one linear
    (`qkv_proj`, `gate_up_proj`, set on the layer's modules so that packing and `.to()` see them)
    and the originals are replaced by `FusedAway`: the model's own forward no longer runs, and
    its weights are not held twice. Quantized projections stay as they are and are called one by
    one.
    """

    def __init__(self, model: Any, max_rows: int = 1) -> None:
        config = model.config
        self._model = model
        self.max_rows = max_rows
        """The most rows a batch will hold: a prefill's slab allocates that many (`KVSlab`)."""
        self.wide_threads = 1
        """torch threads for a decode step's MLP projections and output head (module docstring);
        used when above the calling thread's own count and the step has `WIDE_MIN_ROWS` rows."""
        self._layers = list(model.model.layers)
        self._heads = int(config.num_attention_heads)
        self._kv_heads = int(config.num_key_value_heads)
        self._head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
        self.fused = all(_fusable(layer) for layer in self._layers)
        if self.fused:
            for layer in self._layers:
                _fuse(layer)
        float32 = model.model.embed_tokens.weight.dtype == torch.float32
        self.fused_attention = not float32
        """Whether attention is `scaled_dot_product_attention` (bfloat16, float16) rather than two
        batched matrix products (float32): the faster of the two in each (module docstring)."""
        self.wide_attention = self.fused and float32
        """Whether a step on `wide_threads` runs its attention block's products on them too (the
        fused q/k/v and the output projections, the two attention products): in float32, where
        those products take most of the rest of the step (module docstring). Plain linears only:
        quantized ones are called on the thread's own count."""

    @staticmethod
    def supports(model: Any) -> bool:
        """Whether this model has the shape the steps below assume."""
        config = getattr(model, "config", None)
        if type(model).__name__ != "LlamaForCausalLM" or config is None:
            return False
        inner = getattr(model, "model", None)
        if inner is None or not all(hasattr(inner, name) for name in ("embed_tokens", "layers", "norm", "rotary_emb")):
            return False
        heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
        if heads % kv_heads:
            return False
        rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
        # Partial rotary embedding (a factor below 1) would rotate only part of each head.
        if float(rope.get("partial_rotary_factor", 1.0) if isinstance(rope, dict) else 1.0) != 1.0:
            return False
        return all(
            all(hasattr(layer.self_attn, name) for name in ("q_proj", "k_proj", "v_proj", "o_proj", "scaling"))
            and all(hasattr(layer.mlp, name) for name in ("gate_proj", "up_proj", "down_proj", "act_fn"))
            and not hasattr(layer.self_attn, "q_norm")
            for layer in inner.layers
        )

    def run_prefix(self, tokens: Sequence[int], device: torch.device) -> KVSlab:
        """One row of `tokens` (a prompt prefix, positions from 0) into a slab of exactly their
        columns, for `prefill_cache` to start other prompts from."""
        ids = torch.tensor([list(tokens)], dtype=torch.long, device=device)
        mask = torch.ones_like(ids)
        positions = torch.arange(ids.shape[1], device=device)[None]
        slab = self._new_slab(1, ids.shape[1], room=0, spare=False)
        self.prefill_columns(slab, ids, mask, positions, mask[:, :0], logits=False)
        return slab

    def prefill_cache(self, rows: int, length: int, prefix: KVSlab | None = None) -> KVSlab:
        """The slab a prefill of `rows` prompts padded to `length` columns fills (`prefill_columns`,
        whole or a chunk at a time): empty, or holding the one-row `prefix` in every row."""
        shared = prefix.length if prefix is not None else 0
        slab = self._new_slab(rows, shared + length)
        if prefix is not None:
            for held, theirs in zip((*slab.keys, *slab.values), (*prefix.keys, *prefix.values), strict=True):
                held[:, :, :shared] = theirs[:, :, :shared]  # broadcast over the rows
            slab.length = shared
        return slab

    def _new_slab(self, rows: int, length: int, *, room: int = MIN_ROOM, spare: bool = True) -> KVSlab:
        """A zero slab for `length` columns plus `room`; with `spare`, rows up to the batch's
        maximum and `LEFT_ROOM` columns allocated beyond its view (`KVSlab`)."""
        return KVSlab.allocate(
            self._model.model.embed_tokens.weight, len(self._layers), rows, self._kv_heads, self._head_dim,
            length + room, spare_rows=max(0, self.max_rows - rows) if spare else 0, left_room=LEFT_ROOM if spare else 0,
        )

    def prefill_columns(
        self, slab: KVSlab, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, held: torch.Tensor,
        *, logits: bool = True,
    ) -> torch.Tensor | None:
        """Run the next columns of left-padded prompts ([rows, new] `ids`, `mask` 0 over their
        padding, `positions`) after the `slab.length` columns the slab holds, of which `held`
        ([rows, slab.length], 0 over padding) says what each row may attend to: a whole prompt
        (nothing held), the rest after a shared prefix (all of it held), or a chunk of a longer
        prefill (the chunks before it). Returns each row's logits after the last of them, or
        None without `logits` (a chunk that is not the last: its output head would be wasted)."""
        return self._prefill(slab, ids, mask, positions, held, logits=logits)

    def _prefill(
        self, slab: KVSlab, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, held: torch.Tensor,
        *, logits: bool = True, every_column: bool = False,
    ) -> torch.Tensor | None:
        """`prefill_columns`, or with `every_column` `prefill_hidden`: the attention bias of a
        prefill's columns, then the forward."""
        rows, length = ids.shape
        columns = torch.arange(length, device=ids.device)
        causal = columns[None, :] <= columns[:, None]  # [query, key] among the new columns
        # A padding query sees itself too: a row of -inf only would make its softmax NaN, and its
        # keys and values (never attended to by real tokens) would carry the NaN into later layers.
        new = (causal[None] & mask.bool()[:, None, :]) | torch.eye(length, dtype=torch.bool, device=ids.device)
        allowed = torch.cat([held.bool()[:, None, :].expand(rows, length, held.shape[1]), new], dim=-1)
        bias = torch.zeros((rows, length, held.shape[1] + length), dtype=torch.float32, device=ids.device)
        bias.masked_fill_(~allowed, float("-inf"))
        return self._forward(slab, ids, positions, bias, logits=logits, every_column=every_column)

    def prefill_hidden(
        self, slab: KVSlab, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, held: torch.Tensor
    ) -> torch.Tensor:
        """As `prefill_columns`, but returns every new column's final hidden state (after the
        final norm: [rows, new, hidden]), which `head` makes logits of."""
        hidden = self._prefill(slab, ids, mask, positions, held, every_column=True)
        assert hidden is not None
        return hidden

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """The output head over final hidden states: [..., hidden] -> [..., vocab] logits."""
        return self._model.lm_head(hidden)

    def step(self, slab: KVSlab, tokens: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Feed one token per row; `mask` ([rows, columns + 1]) already covers the new column.
        Returns the next logits ([rows, vocab], float32)."""
        width = slab.reserve_column() + 1
        bias = torch.zeros((int(tokens.shape[0]), 1, width), dtype=torch.float32, device=tokens.device)
        bias.masked_fill_(mask[:, None, :width] == 0, float("-inf"))
        wide = self.wide_threads if int(tokens.shape[0]) >= WIDE_MIN_ROWS else 1
        return self._forward(slab, tokens[:, None], positions[:, None], bias, wide)

    def _forward(
        self, slab: KVSlab, ids: torch.Tensor, positions: torch.Tensor, bias: torch.Tensor, wide: int = 1,
        *, logits: bool = True, every_column: bool = False,
    ) -> torch.Tensor | None:
        """Write `ids` ([rows, new]) at the slab's next columns and return the logits after the last
        of them (None without `logits`; with `every_column`, every column's final hidden state
        instead: [rows, new, hidden]). `bias` ([rows, new, width]) is 0 where a query may attend
        and -inf elsewhere; `wide`: torch threads for the MLP projections and the output head, and
        with `wide_attention` for the attention block's products (`_widely`). A parameter, not
        state: the prefill thread runs this beside the engine thread's steps."""
        rows, new = ids.shape
        column = slab.length
        width = column + new
        heads, kv_heads, dim = self._heads, self._kv_heads, self._head_dim
        inner = self._model.model
        x = inner.embed_tokens(ids)
        cos, sin = inner.rotary_emb(x, positions)  # [rows, new, dim]
        bias = bias[:, None]  # [rows, 1, new, width]: every head alike
        if self.fused_attention:
            bias = bias.to(x.dtype)  # the kernel takes a float mask in the queries' dtype
        narrow = wide if self.wide_attention else 1  # threads for the attention block's products
        for layer, keys, values in zip(self._layers, slab.keys, slab.values, strict=True):
            attn = layer.self_attn
            q, k, v = self._project_qkv(layer, layer.input_layernorm(x), cos, sin, narrow)
            keys[:, :, column:width] = k.transpose(1, 2)
            values[:, :, column:width] = v.view(rows, new, kv_heads, dim).transpose(1, 2)
            if self.fused_attention:
                out = F.scaled_dot_product_attention(
                    q.transpose(1, 2), keys[:, :, :width], values[:, :, :width],
                    attn_mask=bias, scale=attn.scaling, enable_gqa=True,
                ).transpose(1, 2).reshape(rows, new, heads * dim)
            else:
                out = _attention_products(q, keys[:, :, :width], values[:, :, :width], bias, attn.scaling, narrow)
            x = x + _widely(narrow, attn.o_proj, out)
            x = x + self._mlp(layer, layer.post_attention_layernorm(x), wide)
        slab.length = width
        if every_column:
            return inner.norm(x)
        if not logits:
            return None
        return _widely(wide, self._model.lm_head, inner.norm(x[:, -1:]))[:, -1, :].float()

    def _project_qkv(
        self, layer: Any, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, wide: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries and keys rotated ([rows, new, heads or kv_heads, head_dim]) and values
        ([rows, new, kv_heads * head_dim]). Fused, the queries and keys sit side by side in one
        output and are rotated in one pass (five operators per layer fewer), and the projection
        runs on `wide` threads (`_widely`)."""
        attn = layer.self_attn
        rows, new = h.shape[0], h.shape[1]
        heads, kv_heads, dim = self._heads, self._kv_heads, self._head_dim
        if not self.fused:
            q = _rotate(attn.q_proj(h).view(rows, new, heads, dim), cos[:, :, None], sin[:, :, None])
            k = _rotate(attn.k_proj(h).view(rows, new, kv_heads, dim), cos[:, :, None], sin[:, :, None])
            return q, k, attn.v_proj(h)
        qkv = _widely(wide, attn.qkv_proj, h)
        rotated = (heads + kv_heads) * dim
        qk = _rotate(qkv[..., :rotated].view(rows, new, heads + kv_heads, dim), cos[:, :, None], sin[:, :, None])
        return qk[:, :, :heads], qk[:, :, heads:], qkv[..., rotated:]

    def _mlp(self, layer: Any, h: torch.Tensor, wide: int) -> torch.Tensor:
        mlp = layer.mlp
        if not self.fused:
            # Quantized projections are called by the MLP's own forward, on the thread's own count.
            return mlp(h)
        gate, up = _widely(wide, mlp.gate_up_proj, h).chunk(2, dim=-1)
        return _widely(wide, mlp.down_proj, mlp.act_fn(gate) * up)


class FusedAway(nn.Module):
    """Stands where a projection was before `LlamaDecoder` fused it into a wider one."""

    def __init__(self, into: str) -> None:
        super().__init__()
        self.into = into

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError(f"this projection was fused into {self.into}; run the model through LlamaDecoder")


def _fusable(layer: Any) -> bool:
    attn, mlp = layer.self_attn, layer.mlp
    groups = ((attn.q_proj, attn.k_proj, attn.v_proj), (mlp.gate_proj, mlp.up_proj))
    return all(
        all(type(m) is nn.Linear for m in group) and len({m.bias is None for m in group}) == 1 for group in groups
    )


def _fuse(layer: Any) -> None:
    attn, mlp = layer.self_attn, layer.mlp
    attn.qkv_proj = _concatenated([attn.q_proj, attn.k_proj, attn.v_proj])
    mlp.gate_up_proj = _concatenated([mlp.gate_proj, mlp.up_proj])
    attn.q_proj = attn.k_proj = attn.v_proj = FusedAway("qkv_proj")
    mlp.gate_proj = mlp.up_proj = FusedAway("gate_up_proj")


def _concatenated(linears: list[nn.Linear]) -> nn.Linear:
    """One linear whose output is the outputs of `linears` side by side."""
    first = linears[0]
    has_bias = first.bias is not None
    fused = nn.Linear(
        first.in_features, sum(m.out_features for m in linears), bias=has_bias,
        dtype=first.weight.dtype, device=first.weight.device,
    )
    with torch.no_grad():
        fused.weight.copy_(torch.cat([m.weight for m in linears]))
        if has_bias:
            fused.bias.copy_(torch.cat([m.bias for m in linears]))
    return fused.requires_grad_(False)


def _widely(threads: int, product: Callable[..., torch.Tensor], *operands: torch.Tensor) -> torch.Tensor:
    """`product(*operands)` on `threads` torch threads where that is more than the calling
    thread's own count (which it then gets back)."""
    # `threads <= 1` first: the common case then costs no call into torch.
    if threads <= 1 or threads <= (own := torch.get_num_threads()):
        return product(*operands)
    torch.set_num_threads(threads)
    try:
        return product(*operands)
    finally:
        torch.set_num_threads(own)


def _attention_products(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor, scaling: float,
    threads: int,
) -> torch.Tensor:
    """Attention as two batched matrix products on `threads` threads (`_widely`), the softmax
    in float32 between them: `q` [rows, new, heads, head_dim], `keys` and `values` [rows,
    kv_heads, width, head_dim], `bias` [rows, 1, new, width]; returns [rows, new, heads *
    head_dim]. The query heads of each key/value head, at every new position, are the rows of
    one product with that head's keys: grouped-query attention without repeating the keys. (A
    decode step's single position needs no permutation, only the queries' small copy out of
    the rotated queries and keys.)"""
    rows, new, heads, dim = q.shape
    kv_heads, width = int(keys.shape[1]), int(keys.shape[2])
    groups = heads // kv_heads
    if new == 1:
        stacked = q.reshape(rows * kv_heads, groups, dim)
    else:
        grouped = q.reshape(rows, new, kv_heads, groups, dim)
        stacked = grouped.permute(0, 2, 3, 1, 4).reshape(rows * kv_heads, groups * new, dim)
    keys_t = keys.reshape(rows * kv_heads, width, dim).transpose(1, 2)
    scores = _widely(threads, torch.bmm, stacked, keys_t)
    scores = scores.view(rows, heads, new, width).float().mul_(scaling).add_(bias)
    weights = scores.softmax(dim=-1).to(q.dtype).view(rows * kv_heads, groups * new, width)
    out = _widely(threads, torch.bmm, weights, values.reshape(rows * kv_heads, width, dim))
    if new == 1:
        return out.view(rows, 1, heads * dim)
    return out.view(rows, kv_heads, groups, new, dim).permute(0, 3, 1, 2, 4).reshape(rows, new, heads * dim)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding in transformers' (half-split) layout: x * cos + rotate_half(x) * sin."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin
