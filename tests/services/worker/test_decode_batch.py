"""Batch tensors with the real model: left padding, joining (KV merge), leaving, trimming; each
with transformers' forward and with the Llama decoder over a KV slab."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.worker.decode_batch import DecodeBatch, supports_joining
from services.worker.llama_decode import KVSlab, LlamaDecoder
from shared.model_store import prepare_model, resolve_model

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model_and_tokenizer(model_state_dir: Path):
    path = prepare_model(resolve_model("smollm2"), model_state_dir).path
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path)


@pytest.fixture(params=["transformers", "llama_decode"])
def decoder(request, model_and_tokenizer) -> LlamaDecoder | None:
    """The two ways a decode step runs: transformers' forward, or the Llama decoder."""
    return None if request.param == "transformers" else LlamaDecoder(model_and_tokenizer[0])


def prefill(
    model, tokenizer, prompts: list[str], decoder: LlamaDecoder | None = None
) -> tuple[DecodeBatch, torch.Tensor]:
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    vocab = model.get_output_embeddings().weight.shape[0]
    with torch.inference_mode():
        return DecodeBatch.prefill(model, ids, tokenizer.pad_token_id, vocab, CPU, decoder)


def greedy_steps(model, batch: DecodeBatch, logits: torch.Tensor, steps: int, rows: list[list[int]]) -> torch.Tensor:
    """Pick, record and feed `steps` greedy tokens per row; returns the logits after the last."""
    with torch.inference_mode():
        for _ in range(steps):
            tokens = logits.argmax(-1)
            batch.record_tokens(tokens)
            for row, token in enumerate(tokens.tolist()):
                rows[row].append(token)
            logits = batch.step(model)
    return logits


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
        greedy_steps(model, batch, logits, 7, tokens)
        alone.append(tokens[0])

    rows: list[list[int]] = [[], [], []]
    # Row 0 runs 3 steps alone, then rows 1 and 2 join its batch.
    running, logits = prefill(model, tokenizer, prompts[:1], decoder)
    logits = greedy_steps(model, running, logits, 3, rows)
    newcomers, new_logits = prefill(model, tokenizer, prompts[1:], decoder)
    with torch.inference_mode():
        pending = logits.argmax(-1)
        running.record_tokens(pending)
        rows[0].append(int(pending[0]))
        first = new_logits.argmax(-1)
        newcomers.record_tokens(first)
        rows[1].append(int(first[0]))
        rows[2].append(int(first[1]))
        running.absorb(newcomers)
        assert running.size == 3
        logits = running.step(model)
    logits = greedy_steps(model, running, logits, 2, rows)
    # Row 0 leaves; the columns only it used are trimmed away.
    width = running.length
    with torch.inference_mode():
        pending = logits.argmax(-1)
        running.record_tokens(pending)
        for r, t in enumerate(pending.tolist()):
            rows[r].append(t)
        running.keep([1, 2])
        assert running.length < width and running.size == 2
        logits = running.step(model)
    greedy_steps(model, running, logits, 3, rows[1:])
    assert rows[0] == alone[0][:7]
    assert rows[1] == alone[1][:7]
    assert rows[2] == alone[2][:7]


def test_llama_decoder_gives_the_logits_of_the_transformers_forward(model_and_tokenizer) -> None:
    """Same prompts, same tokens fed: the decoder's logits match transformers' (float32), over
    left-padded rows and past the slab's first growth."""
    model, tokenizer = model_and_tokenizer
    prompts = ["Hi", "A much longer prompt than the other one, with a few more words"]
    plain, plain_logits = prefill(model, tokenizer, prompts)
    slabbed, slab_logits = prefill(model, tokenizer, prompts, LlamaDecoder(model))
    assert isinstance(slabbed.cache, KVSlab)
    first_capacity = slabbed.cache.capacity
    steps = first_capacity - slabbed.length + 3  # the slab must grow once
    with torch.inference_mode():
        for _ in range(steps):
            tokens = plain_logits.argmax(-1)
            plain.record_tokens(tokens)
            slabbed.record_tokens(tokens)
            plain_logits, slab_logits = plain.step(model), slabbed.step(model)
            assert torch.allclose(slab_logits, plain_logits, atol=2e-3, rtol=1e-4)
    assert slabbed.cache.capacity > first_capacity
    assert slabbed.cache.length == slabbed.length == plain.length


def test_slab_keeps_free_and_padding_columns_zero(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    decoder = LlamaDecoder(model)
    short, _ = prefill(model, tokenizer, ["Hi"], decoder)
    long, _ = prefill(model, tokenizer, ["A much longer prompt than the other one"], decoder)
    short_slab, long_slab = short.cache, long.cache
    assert isinstance(short_slab, KVSlab) and isinstance(long_slab, KVSlab)
    pad = long_slab.length - short_slab.length
    original = [k[..., : short_slab.length].clone() for k in short_slab.keys_t]
    short_slab.absorb(long_slab)
    assert short_slab.rows == 2 and short_slab.length == long_slab.length
    for keys_t, values in zip(short_slab.keys_t, short_slab.values, strict=True):
        assert keys_t[0, ..., :pad].abs().sum() == 0 and values[0, :, :pad].abs().sum() == 0
        assert keys_t[..., short_slab.length :].abs().sum() == 0
        assert values[:, :, short_slab.length :].abs().sum() == 0
        assert keys_t[1, ..., :pad].abs().sum() > 0  # the long row's own tokens are there
    # The long row leaves; the short row's padding columns go with it, and its keys are as before.
    short_slab.keep(torch.tensor([0]), pad)
    assert short_slab.rows == 1 and short_slab.length == long_slab.length - pad
    for keys_t, before in zip(short_slab.keys_t, original, strict=True):
        assert torch.equal(keys_t[..., : short_slab.length], before)


def test_decoder_refuses_other_architectures() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    tiny = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=16, n_positions=8))
    assert not LlamaDecoder.supports(tiny)
