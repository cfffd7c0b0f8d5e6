"""Batch tensors with the real model: left padding, joining (KV merge), leaving, trimming."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.worker.decode_batch import DecodeBatch, supports_joining
from shared.model_store import prepare_model, resolve_model

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model_and_tokenizer(model_state_dir: Path):
    path = prepare_model(resolve_model("smollm2"), model_state_dir).path
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path)


def prefill(model, tokenizer, prompts: list[str]) -> tuple[DecodeBatch, torch.Tensor]:
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    vocab = model.get_output_embeddings().weight.shape[0]
    with torch.inference_mode():
        return DecodeBatch.prefill(model, ids, tokenizer.pad_token_id, vocab, CPU)


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


def test_prefill_left_pads_and_counts_positions(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    batch, logits = prefill(model, tokenizer, ["Hi", "A much longer prompt than the other one"])
    lengths = [len(tokenizer(p)["input_ids"]) for p in ("Hi", "A much longer prompt than the other one")]
    assert batch.mask.sum(-1).tolist() == lengths
    assert batch.mask[0, : batch.length - lengths[0]].sum() == 0  # padding on the left
    assert batch.positions.tolist() == lengths
    assert logits.shape == (2, batch.seen.shape[1]) and logits.dtype == torch.float32
    assert batch.seen[0].sum() <= lengths[0]


def test_join_and_leave_keep_each_row_identical_to_alone(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    prompts = ["Once upon a time, in a faraway kingdom,", "The capital of France is", "1, 2, 3, 4,"]
    alone = []
    for p in prompts:
        batch, logits = prefill(model, tokenizer, [p])
        tokens: list[list[int]] = [[]]
        greedy_steps(model, batch, logits, 7, tokens)
        alone.append(tokens[0])

    rows: list[list[int]] = [[], [], []]
    # Row 0 runs 3 steps alone, then rows 1 and 2 join its batch.
    running, logits = prefill(model, tokenizer, prompts[:1])
    logits = greedy_steps(model, running, logits, 3, rows)
    newcomers, new_logits = prefill(model, tokenizer, prompts[1:])
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
