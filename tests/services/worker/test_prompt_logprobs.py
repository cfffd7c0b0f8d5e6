"""The prompt tokens' log probabilities taken during a prefill (prompt_logprobs.py), with the real
model, against a plain forward of each prompt alone; through transformers' forward and through the
Llama decoder, in one chunk and in many."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.worker.decode_batch import PrefillRun
from services.worker.llama_decode import LlamaDecoder
from services.worker.prefix_cache import PrefixCache
from services.worker.prompt_logprobs import HEAD_COLUMNS, PromptScorer
from shared.model_store import prepare_model, resolve_model

CPU = torch.device("cpu")
PROMPTS = [
    "The capital of France is Paris, and the capital of Italy is",
    "The capital of France is",
    "Hi",
]


def load_model(model_state_dir: Path):
    path = prepare_model(resolve_model("smollm2"), model_state_dir).path
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def model_and_tokenizer(model_state_dir: Path):
    return load_model(model_state_dir)


@pytest.fixture(scope="module")
def llama_decoder(model_state_dir: Path) -> LlamaDecoder:
    return LlamaDecoder(load_model(model_state_dir)[0], max_rows=8)


@pytest.fixture(params=["transformers", "llama_decode"])
def decoder(request, llama_decoder: LlamaDecoder) -> LlamaDecoder | None:
    return None if request.param == "transformers" else llama_decoder


def alone(model, ids: list[int]) -> torch.Tensor:
    """The log-softmax at each position of one prompt run plainly ([tokens, vocab])."""
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0].float().log_softmax(dim=-1)


@pytest.mark.parametrize("chunk_columns", [None, 3])
def test_each_prompt_position_gets_the_log_probability_of_the_next_token(
    model_and_tokenizer, decoder, chunk_columns: int | None
) -> None:
    model, tokenizer = model_and_tokenizer
    ids = [tokenizer(p)["input_ids"] for p in PROMPTS]
    vocab = model.get_output_embeddings().weight.shape[0]
    wanted = [2, None, 0]  # the middle prompt does not ask
    # A prefix cache is offered: a group that asks is prefilled without one (its positions would
    # never reach the head), so the first two prompts' shared start is run here too.
    prefixes = PrefixCache(max_tokens=256, min_tokens=2)
    chunk_tokens = None if chunk_columns is None else chunk_columns * len(ids)
    with torch.inference_mode():
        run = PrefillRun(model, ids, tokenizer.pad_token_id, vocab, CPU, decoder, prefixes, chunk_tokens, wanted)
        while not run.done:
            run.advance()
        _batch, logits = run.result()
        scored = run.prompt_logprobs()
    assert prefixes.reused_tokens == 0
    assert scored[1] is None
    for row in (0, 2):
        positions = scored[row]
        assert positions is not None and len(positions) == len(ids[row]) - 1
        expected = alone(model, ids[row])
        assert [p.token_id for p in positions] == ids[row][1:]
        for index, position in enumerate(positions):
            value = float(expected[index, ids[row][index + 1]])
            assert position.logprob == pytest.approx(value, abs=1e-3)
            # Its rank in the vocabulary: 1 + the tokens more likely (within the same tolerance).
            more, more_or_near = (int((expected[index] > value + d).sum()) for d in (1e-3, -1e-3))
            assert more + 1 <= position.rank <= more_or_near + 1
            assert len(position.top) == wanted[row]
            if position.top:
                assert [t for t, _ in position.top] == expected[index].topk(wanted[row]).indices.tolist()
        # The last position's logits are still the first pick's, as without prompt log probabilities.
        torch.testing.assert_close(logits[row].log_softmax(-1), expected[-1], atol=1e-3, rtol=1e-3)


def test_the_head_runs_over_bounded_slices_of_a_long_prompt(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    ids = tokenizer(" ".join(["one two three four five"] * 40))["input_ids"]
    assert len(ids) > 2 * HEAD_COLUMNS
    seen: list[int] = []

    def head(hidden: torch.Tensor) -> torch.Tensor:
        seen.append(int(hidden.shape[1]))
        return model.get_output_embeddings()(hidden)

    with torch.inference_mode():
        hidden = model.get_decoder()(input_ids=torch.tensor([ids])).last_hidden_state
        tensor = torch.tensor([ids])
        scorer = PromptScorer([1], tensor, torch.ones_like(tensor))
        scorer.score(hidden, 0, head)
    [positions] = scorer.result()
    assert positions is not None and len(positions) == len(ids) - 1
    assert max(seen) == HEAD_COLUMNS and sum(seen) == len(ids) - 1
    expected = alone(model, ids)
    assert positions[-1].logprob == pytest.approx(float(expected[len(ids) - 2, ids[-1]]), abs=1e-3)
