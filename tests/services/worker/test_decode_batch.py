"""Batch tensors with the real model: left padding, joining (KV merge), leaving, trimming; each
with transformers' forward and with the Llama decoder over a KV slab."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.worker.decode_batch import DecodeBatch, PrefillRun, supports_joining
from services.worker.llama_decode import LEFT_ROOM, WIDE_MIN_ROWS, FusedAway, KVSlab, LlamaDecoder
from services.worker.prefix_cache import PrefixCache
from shared.model_store import prepare_model, resolve_model

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model_and_tokenizer(model_state_dir: Path):
    path = prepare_model(resolve_model("smollm2"), model_state_dir).path
    return load_model(model_state_dir), AutoTokenizer.from_pretrained(path)


def load_model(model_state_dir: Path):
    path = prepare_model(resolve_model("smollm2"), model_state_dir).path
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def llama_decoder(model_state_dir: Path) -> LlamaDecoder:
    """The Llama decoder over a model of its own (it fuses that model's projections); its
    prefills allocate rows for batches of up to 8 (`KVSlab`'s spare rows)."""
    return LlamaDecoder(load_model(model_state_dir), max_rows=8)


@pytest.fixture(params=["transformers", "llama_decode"])
def decoder(request, llama_decoder: LlamaDecoder) -> LlamaDecoder | None:
    """The two ways prompts and steps run: transformers' forward, or the Llama decoder."""
    return None if request.param == "transformers" else llama_decoder


def prefill(
    model, tokenizer, prompts: list[str], decoder: LlamaDecoder | None = None
) -> tuple[DecodeBatch, torch.Tensor]:
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    vocab = model.get_output_embeddings().weight.shape[0]
    with torch.inference_mode():
        return DecodeBatch.prefill(model, ids, tokenizer.pad_token_id, vocab, CPU, decoder)


def greedy_steps(batch: DecodeBatch, logits: torch.Tensor, steps: int, rows: list[list[int]]) -> torch.Tensor:
    """Pick, record and feed `steps` greedy tokens per row; returns the logits after the last."""
    with torch.inference_mode():
        for _ in range(steps):
            tokens = logits.argmax(-1)
            batch.record_tokens(tokens)
            for row, token in enumerate(tokens.tolist()):
                rows[row].append(token)
            logits = batch.step()
    return logits


def greedy_rows(batch: DecodeBatch, logits: torch.Tensor, steps: int) -> list[list[int]]:
    """Each row's first `steps` greedy tokens from here (`greedy_steps`)."""
    rows: list[list[int]] = [[] for _ in range(batch.size)]
    greedy_steps(batch, logits, steps, rows)
    return rows


def pick_greedily(batch: DecodeBatch, logits: torch.Tensor, rows: list[list[int]]) -> None:
    """Pick and record every row's greedy token without stepping (rows may leave before the step)."""
    with torch.inference_mode():
        pending = logits.argmax(-1)
        batch.record_tokens(pending)
        for row, token in enumerate(pending.tolist()):
            rows[row].append(token)


def join_greedily(
    running: DecodeBatch, logits: torch.Tensor, newcomers: DecodeBatch, new_logits: torch.Tensor, rows: list[list[int]]
) -> torch.Tensor:
    """Pick every row's greedy token (the running rows' next, the newcomers' first), let the
    newcomers join after the running rows and step once; returns the logits after that step."""
    with torch.inference_mode():
        picked = [logits.argmax(-1), new_logits.argmax(-1)]
        running.record_tokens(picked[0])
        newcomers.record_tokens(picked[1])
        for row, token in enumerate(torch.cat(picked).tolist()):
            rows[row].append(token)
        running.absorb(newcomers)
        return running.step()


def test_llama_caches_can_be_merged(model_and_tokenizer) -> None:
    assert supports_joining(model_and_tokenizer[0])
    assert LlamaDecoder.supports(model_and_tokenizer[0])


def test_prefill_left_pads_and_counts_positions(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    batch, logits = prefill(model, tokenizer, ["Hi", "A much longer prompt than the other one"])
    lengths = [len(tokenizer(p)["input_ids"]) for p in ("Hi", "A much longer prompt than the other one")]
    assert batch.mask.sum(-1).tolist() == lengths
    assert batch.mask[0, : batch.length - lengths[0]].sum() == 0  # padding on the left
    assert batch.positions.tolist() == lengths
    assert logits.shape == (2, batch.seen.shape[1]) and logits.dtype == torch.float32
    assert batch.seen[0].sum() <= lengths[0]


def test_join_and_leave_keep_each_row_identical_to_alone(model_and_tokenizer, decoder) -> None:
    model, tokenizer = model_and_tokenizer
    prompts = ["Once upon a time, in a faraway kingdom,", "The capital of France is", "1, 2, 3, 4,"]
    alone = []
    for p in prompts:
        batch, logits = prefill(model, tokenizer, [p], decoder)
        tokens: list[list[int]] = [[]]
        greedy_steps(batch, logits, 7, tokens)
        alone.append(tokens[0])

    rows: list[list[int]] = [[], [], []]
    # Row 0 runs 3 steps alone, then rows 1 and 2 join its batch.
    running, logits = prefill(model, tokenizer, prompts[:1], decoder)
    logits = greedy_steps(running, logits, 3, rows)
    newcomers, new_logits = prefill(model, tokenizer, prompts[1:], decoder)
    logits = join_greedily(running, logits, newcomers, new_logits, rows)
    assert running.size == 3
    logits = greedy_steps(running, logits, 2, rows)
    # Row 0 leaves; the columns only it used are trimmed away.
    width = running.length
    pick_greedily(running, logits, rows)
    with torch.inference_mode():
        order = running.keep([1, 2])
        assert sorted(order) == [1, 2] and running.length < width and running.size == 2
        logits = running.step()
    greedy_steps(running, logits, 3, [rows[i] for i in order])
    assert rows[0] == alone[0][:7]
    assert rows[1] == alone[1][:7]
    assert rows[2] == alone[2][:7]


@pytest.mark.parametrize("fused_attention", [False, True], ids=["two products", "fused kernel"])
def test_llama_decoder_gives_the_logits_of_the_transformers_forward(
    model_and_tokenizer, llama_decoder, fused_attention: bool
) -> None:
    """Same prompts, same tokens fed: the decoder's logits match transformers' (float32), from the
    prefill of left-padded rows on and past the slab's first growth, with either kind of
    attention (float32 runs the products by default; the fused kernel is bfloat16's)."""
    model, tokenizer = model_and_tokenizer
    assert not llama_decoder.fused_attention
    llama_decoder.fused_attention = fused_attention
    try:
        _check_logits_against_the_transformers_forward(model, tokenizer, llama_decoder)
    finally:
        llama_decoder.fused_attention = False


def _check_logits_against_the_transformers_forward(model, tokenizer, llama_decoder: LlamaDecoder) -> None:
    prompts = ["Hi", "A much longer prompt than the other one, with a few more words"]
    plain, plain_logits = prefill(model, tokenizer, prompts)
    slabbed, slab_logits = prefill(model, tokenizer, prompts, llama_decoder)
    assert isinstance(slabbed.cache, KVSlab)
    assert torch.allclose(slab_logits, plain_logits, atol=2e-3, rtol=1e-4)
    real = slabbed.mask.bool()  # padding columns hold whatever each forward made of the pad token
    for layer, theirs in zip(slabbed.cache.keys, plain.cache.dynamic.layers, strict=True):
        mine = layer[:, :, : slabbed.length]
        for row in range(len(prompts)):
            assert torch.allclose(mine[row][:, real[row]], theirs.keys[row][:, real[row]], atol=1e-4)
    first_capacity = slabbed.cache.capacity
    steps = first_capacity - slabbed.length + 3  # the slab must grow once
    with torch.inference_mode():
        for _ in range(steps):
            tokens = plain_logits.argmax(-1)
            plain.record_tokens(tokens)
            slabbed.record_tokens(tokens)
            plain_logits, slab_logits = plain.step(), slabbed.step()
            assert torch.allclose(slab_logits, plain_logits, atol=2e-3, rtol=1e-4)
    assert slabbed.cache.capacity > first_capacity
    assert slabbed.cache.length == slabbed.length == plain.length


def test_slab_keeps_free_and_padding_columns_zero(model_and_tokenizer, llama_decoder) -> None:
    model, tokenizer = model_and_tokenizer
    short, _ = prefill(model, tokenizer, ["Hi"], llama_decoder)
    long, _ = prefill(model, tokenizer, ["A much longer prompt than the other one"], llama_decoder)
    short_slab, long_slab = short.cache, long.cache
    assert isinstance(short_slab, KVSlab) and isinstance(long_slab, KVSlab)
    pad = long_slab.length - short_slab.length
    original = [k[:, :, : short_slab.length].clone() for k in short_slab.keys]
    with torch.inference_mode():  # as in the engine: the slab's tensors are inference tensors
        short_slab.absorb(long_slab)
    assert short_slab.rows == 2 and short_slab.length == long_slab.length
    for keys, values in zip(short_slab.keys, short_slab.values, strict=True):
        assert keys[0, :, :pad].abs().sum() == 0 and values[0, :, :pad].abs().sum() == 0
        assert keys[:, :, short_slab.length :].abs().sum() == 0
        assert values[:, :, short_slab.length :].abs().sum() == 0
        assert keys[1, :, :pad].abs().sum() > 0  # the long row's own tokens are there
    # The long row leaves; the short row's padding columns go with it, and its keys are as before.
    with torch.inference_mode():
        short_slab.compact(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long), 1, pad)
    assert short_slab.rows == 1 and short_slab.length == long_slab.length - pad
    for keys, before in zip(short_slab.keys, original, strict=True):
        assert torch.equal(keys[:, :, : short_slab.length], before)


def test_decoder_fuses_plain_projections_and_the_model_forward_says_so(llama_decoder) -> None:
    model = llama_decoder._model
    assert llama_decoder.fused
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    assert attn.qkv_proj.out_features == attn.o_proj.in_features + 2 * model.config.num_key_value_heads * (
        model.config.hidden_size // model.config.num_attention_heads
    )
    assert isinstance(attn.q_proj, FusedAway) and isinstance(mlp.up_proj, FusedAway)
    with pytest.raises(RuntimeError, match="fused into qkv_proj"):
        model(input_ids=torch.tensor([[1, 2]]))


class _ThreadCountProbe(torch.nn.Module):
    """Calls the projection it stands for and notes torch's thread count at that moment."""

    def __init__(self, inner: torch.nn.Module, seen: list[int]) -> None:
        super().__init__()
        self.inner, self.seen = inner, seen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(torch.get_num_threads())
        return self.inner(x)


@pytest.mark.parametrize("wide_attention", [True, False])
def test_wide_threads_carry_the_mlp_and_head_of_steps_with_enough_rows(
    model_and_tokenizer, model_state_dir, wide_attention: bool
) -> None:
    """And the attention block's projections with `wide_attention` (the float32 default)."""
    model, tokenizer = model_and_tokenizer
    decoder = LlamaDecoder(load_model(model_state_dir), max_rows=WIDE_MIN_ROWS)
    assert decoder.wide_attention  # float32, fused
    decoder.wide_attention = wide_attention
    layer, inner = decoder._layers[0], decoder._model
    seen: dict[str, list[int]] = {"qkv": [], "o": [], "gate_up": [], "down": [], "head": []}
    layer.self_attn.qkv_proj = _ThreadCountProbe(layer.self_attn.qkv_proj, seen["qkv"])
    layer.self_attn.o_proj = _ThreadCountProbe(layer.self_attn.o_proj, seen["o"])
    layer.mlp.gate_up_proj = _ThreadCountProbe(layer.mlp.gate_up_proj, seen["gate_up"])
    layer.mlp.down_proj = _ThreadCountProbe(layer.mlp.down_proj, seen["down"])
    inner.lm_head = _ThreadCountProbe(inner.lm_head, seen["head"])
    prompts = [f"Question number {i}: what is {i} plus {i}?" for i in range(WIDE_MIN_ROWS)]
    own = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        decoder.wide_threads = 2
        wide, wide_logits = prefill(model, tokenizer, prompts, decoder)
        assert all(n == 1 for counts in seen.values() for n in counts)  # a prefill keeps its own count
        narrow, narrow_logits = prefill(model, tokenizer, prompts, decoder)
        few, few_logits = prefill(model, tokenizer, prompts[: WIDE_MIN_ROWS - 1], decoder)
        for counts in seen.values():
            counts.clear()
        with torch.inference_mode():
            tokens = wide_logits.argmax(-1)
            wide.record_tokens(tokens)
            narrow.record_tokens(tokens)
            wide_step = wide.step()
            attention = 2 if wide_attention else 1
            assert seen == {"qkv": [attention], "o": [attention], "gate_up": [2], "down": [2], "head": [2]}
            assert torch.get_num_threads() == 1  # given back after each product
            for counts in seen.values():
                counts.clear()
            decoder.wide_threads = 1
            narrow_step = narrow.step()
            decoder.wide_threads = 2
            few.record_tokens(few_logits.argmax(-1))
            few.step()
        assert seen == {"qkv": [1, 1], "o": [1, 1], "gate_up": [1, 1], "down": [1, 1], "head": [1, 1]}
        # Same numbers either way (the products split their outputs between the threads).
        assert torch.allclose(wide_step, narrow_step, atol=1e-4, rtol=1e-5)
    finally:
        torch.set_num_threads(own)


def test_attention_products_stay_on_the_threads_own_count_in_bfloat16(model_state_dir) -> None:
    """Measured as a gain in float32 only (`llama_decode`): bfloat16 keeps the MLP and head wide."""
    assert not LlamaDecoder(load_model(model_state_dir).to(torch.bfloat16)).wide_attention


def test_bfloat16_attention_is_the_fused_kernel_and_stays_near_float32(model_and_tokenizer, model_state_dir) -> None:
    """In bfloat16 attention is `scaled_dot_product_attention` (`LlamaDecoder.fused_attention`,
    measured faster there; its exactness is checked in float32 above). Its logits stay as near
    the float32 forward's as bfloat16 weights allow (measured: at most 0.36 of the logits' spread
    over these steps, against several times the spread for a wrong mask or head mapping)."""
    model, tokenizer = model_and_tokenizer
    fused = LlamaDecoder(load_model(model_state_dir).to(torch.bfloat16), max_rows=2)
    assert fused.fused_attention
    prompts = ["Hi", "A much longer prompt than the other one, with a few more words"]
    reference, their_logits = prefill(model, tokenizer, prompts)
    mine, mine_logits = prefill(fused._model, tokenizer, prompts, fused)
    with torch.inference_mode():
        for _ in range(6):
            assert float((mine_logits - their_logits).abs().max()) < 0.5 * float(their_logits.std())
            tokens = their_logits.argmax(-1)
            mine.record_tokens(tokens)
            reference.record_tokens(tokens)
            mine_logits, their_logits = mine.step(), reference.step()


def test_decoder_refuses_other_architectures() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    tiny = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=16, n_positions=8))
    assert not LlamaDecoder.supports(tiny)


SHARED = "Once upon a time, in a faraway kingdom by the sea, there lived"
PREFIXED = [f"{SHARED} a king", f"{SHARED} an old fisherman who", f"{SHARED} three"]


def test_a_shared_prefix_is_run_once_and_every_row_gets_the_same_tokens(model_and_tokenizer, decoder) -> None:
    model, tokenizer = model_and_tokenizer
    ids = [tokenizer(p)["input_ids"] for p in PREFIXED]
    vocab = model.get_output_embeddings().weight.shape[0]
    common = len(os.path.commonprefix(ids))
    prefixes = PrefixCache(max_tokens=256, min_tokens=4)
    with torch.inference_mode():
        whole, whole_logits = DecodeBatch.prefill(model, ids, tokenizer.pad_token_id, vocab, CPU, decoder)
        shared, shared_logits = DecodeBatch.prefill(
            model, ids, tokenizer.pad_token_id, vocab, CPU, decoder, prefixes
        )
    assert prefixes.tokens == common >= 10 and prefixes.reused_tokens == common * (len(ids) - 1)
    # The prefix's columns come first, then each row's padded rest: padding sits between.
    assert shared.mask[:, :common].all() and shared.mask.sum(-1).tolist() == [len(i) for i in ids]
    assert shared.positions.tolist() == whole.positions.tolist()
    assert torch.equal(shared.seen, whole.seen)  # the penalty sees the prefix's tokens too
    torch.testing.assert_close(shared_logits, whole_logits, atol=1e-3, rtol=1e-3)
    assert greedy_rows(shared, shared_logits, 6) == greedy_rows(whole, whole_logits, 6)


@pytest.mark.parametrize(("shared_prefix", "columns"), [(False, 4), (True, 1)])
def test_a_prefill_in_chunks_gives_the_logits_and_tokens_of_one_prefill(
    model_and_tokenizer, decoder, shared_prefix: bool, columns: int
) -> None:
    """Chunked prefill: rows of different lengths (left padding in the first chunks), after a
    shared prefix or not, `columns` columns a chunk, through the Llama steps or transformers' own
    forward (its cache grown chunk by chunk); the same logits, mask, positions, penalty and greedy
    tokens as one prefill."""
    model, tokenizer = model_and_tokenizer
    prompts = [*PREFIXED, "Hi"] if not shared_prefix else PREFIXED
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    vocab = model.get_output_embeddings().weight.shape[0]

    def run(chunk_tokens: int | None) -> tuple[PrefillRun, int]:
        prefixes = PrefixCache(max_tokens=256, min_tokens=4) if shared_prefix else None
        with torch.inference_mode():
            run = PrefillRun(model, ids, tokenizer.pad_token_id, vocab, CPU, decoder, prefixes, chunk_tokens)
            chunks = 0
            while not run.done:
                run.advance()
                chunks += 1
        return run, chunks

    whole, one = run(None)
    chunked, chunks = run(columns * len(prompts))
    whole_batch, whole_logits = whole.result()
    batch, logits = chunked.result()
    padded = whole_batch.length - (len(os.path.commonprefix(ids)) if shared_prefix else 0)
    assert one == 1 and chunks == -(-padded // columns) >= 3
    assert torch.equal(batch.mask, whole_batch.mask) and torch.equal(batch.positions, whole_batch.positions)
    assert torch.equal(batch.seen, whole_batch.seen)
    torch.testing.assert_close(logits, whole_logits, atol=1e-4, rtol=1e-4)
    assert greedy_rows(batch, logits, 6) == greedy_rows(whole_batch, whole_logits, 6)


def test_a_cached_prefix_serves_a_lone_newcomer_that_then_joins_a_plain_batch(
    model_and_tokenizer, decoder
) -> None:
    model, tokenizer = model_and_tokenizer
    vocab = model.get_output_embeddings().weight.shape[0]
    prefixes = PrefixCache(max_tokens=256, min_tokens=4)
    ids = [tokenizer(p)["input_ids"] for p in PREFIXED]
    alone = []
    for prompt in ("The capital of France is", PREFIXED[1]):
        batch, logits = prefill(model, tokenizer, [prompt], decoder)
        tokens: list[list[int]] = [[]]
        greedy_steps(batch, logits, 6, tokens)
        alone.append(tokens[0])
    with torch.inference_mode():
        DecodeBatch.prefill(model, [ids[0], ids[2]], tokenizer.pad_token_id, vocab, CPU, decoder, prefixes)
        reused = prefixes.reused_tokens
        # One prompt alone has no common prefix of its own: it starts from the cached one.
        newcomer, new_logits = DecodeBatch.prefill(
            model, [ids[1]], tokenizer.pad_token_id, vocab, CPU, decoder, prefixes
        )
    assert prefixes.reused_tokens > reused
    running, logits = prefill(model, tokenizer, ["The capital of France is"], decoder)
    rows: list[list[int]] = [[], []]
    logits = greedy_steps(running, logits, 2, rows[:1])
    logits = join_greedily(running, logits, newcomer, new_logits, rows)
    greedy_steps(running, logits, 3, rows)
    assert rows[0] == alone[0][:6]
    assert rows[1] == alone[1][:4]


def alone_tokens(model, tokenizer, prompts: list[str], decoder: LlamaDecoder | None, steps: int) -> list[list[int]]:
    """Each prompt's first `steps` greedy tokens, generated alone."""
    out = []
    for prompt in prompts:
        batch, logits = prefill(model, tokenizer, [prompt], decoder)
        tokens: list[list[int]] = [[]]
        greedy_steps(batch, logits, steps, tokens)
        out.append(tokens[0])
    return out


def storage(batch: DecodeBatch) -> int:
    """Where the first layer's keys live (the same address: nothing was reallocated)."""
    cache = batch.cache
    tensor = cache.keys[0] if isinstance(cache, KVSlab) else cache.dynamic.layers[0].keys
    return tensor.untyped_storage().data_ptr()


def test_rows_that_leave_are_filled_by_the_last_rows_and_the_rest_go_on_unchanged(
    model_and_tokenizer, decoder
) -> None:
    model, tokenizer = model_and_tokenizer
    prompts = ["The capital of France is", "1, 2, 3, 4,", "Once upon a time, in a faraway kingdom,", "Dogs are"]
    alone = alone_tokens(model, tokenizer, prompts, decoder, 6)
    batch, logits = prefill(model, tokenizer, prompts, decoder)
    rows: list[list[int]] = [[] for _ in prompts]
    logits = greedy_steps(batch, logits, 2, rows)
    pick_greedily(batch, logits, rows)
    before, width = storage(batch), batch.length
    with torch.inference_mode():
        order = batch.keep([2, 3])  # the longest prompt leaves: its padding columns go too
        assert order == [2, 3] and batch.size == 2 and batch.length < width
        assert storage(batch) == before  # rows moved in place, not a new allocation
        logits = batch.step()
    left = [rows[i] for i in order]
    greedy_steps(batch, logits, 3, left)
    assert left == [alone[2], alone[3]]


def test_a_row_leaving_from_the_middle_takes_the_last_row_in_its_place(model_and_tokenizer, decoder) -> None:
    model, tokenizer = model_and_tokenizer
    prompts = ["The capital of France is", "Dogs are", "1, 2, 3, 4,"]
    alone = alone_tokens(model, tokenizer, prompts, decoder, 5)
    batch, logits = prefill(model, tokenizer, prompts, decoder)
    rows: list[list[int]] = [[] for _ in prompts]
    logits = greedy_steps(batch, logits, 1, rows)
    pick_greedily(batch, logits, rows)
    with torch.inference_mode():
        order = batch.keep([0, 2])
        assert order == [0, 2]
        logits = batch.step()
    left = [rows[i] for i in order]
    greedy_steps(batch, logits, 3, left)
    assert left == [alone[0], alone[2]]


def test_newcomers_are_written_into_rows_allocated_beyond_the_batch(model_and_tokenizer, llama_decoder) -> None:
    """A shorter newcomer, and one longer by less than LEFT_ROOM columns, join in place (the
    allocation stays); one longer still makes a new allocation. Every row matches its alone run,
    and the padding each join adds is zero."""
    model, tokenizer = model_and_tokenizer
    running_prompt = "Once upon a time, in a faraway kingdom,"
    shorter, longer = "Dogs are", "Once upon a time, in a faraway kingdom by the sea, there lived a"
    much_longer = " ".join(["Once upon a time, in a faraway kingdom by the sea, there lived a king."] * 3)
    alone = alone_tokens(model, tokenizer, [running_prompt, shorter, longer, much_longer], llama_decoder, 14)
    running, logits = prefill(model, tokenizer, [running_prompt], llama_decoder)
    rows: list[list[int]] = [[]]
    logits = greedy_steps(running, logits, 1, rows)
    before = storage(running)
    for prompt, in_place in ((shorter, True), (longer, True), (much_longer, False)):
        newcomer, new_logits = prefill(model, tokenizer, [prompt], llama_decoder)
        extra = newcomer.length - running.length
        assert (extra <= 0) if prompt == shorter else (0 < extra <= LEFT_ROOM if in_place else extra > LEFT_ROOM)
        rows.append([])
        logits = join_greedily(running, logits, newcomer, new_logits, rows)
        assert (storage(running) == before) is in_place
        slab = running.cache
        assert isinstance(slab, KVSlab)
        for keys, values in zip(slab.keys, slab.values, strict=True):
            # Every padding column of every row (mask 0; all of it added by joins, as every
            # prefill here is of one prompt) holds zeros, and so does every free column.
            padding = running.mask[:, : slab.length] == 0
            assert padding.any()
            assert keys[:, :, : slab.length].transpose(1, 2)[padding].abs().sum() == 0
            assert values[:, :, : slab.length].transpose(1, 2)[padding].abs().sum() == 0
            assert keys[:, :, slab.length :].abs().sum() == 0 and values[:, :, slab.length :].abs().sum() == 0
        logits = greedy_steps(running, logits, 1, rows)
    greedy_steps(running, logits, 8 - len(rows[-1]), rows)
    assert rows[0] == alone[0][: len(rows[0])]
    for mine, theirs in zip(rows[1:], alone[1:], strict=True):
        assert mine == theirs[: len(mine)] and len(mine) >= 3
