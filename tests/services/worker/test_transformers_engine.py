"""The transformers backend with the real SmolLM2 model (float32 on CPU, so that batched and
alone runs are bit-for-bit comparable)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from services.worker.engine import (
    ChatTurn,
    FailureCode,
    FinishReason,
    NullObserver,
    SamplingParams,
    SequenceFailed,
    SequenceFinished,
    TextDelta,
    WorkItem,
)
from services.worker.kv_budget import KVBudgetError
from services.worker.llama_decode import MIN_ROOM
from services.worker.precision import cpu_computes_bfloat16
from services.worker.realtime_scheduling import is_realtime, use_realtime_scheduling
from services.worker.settings import WorkerSettings
from services.worker.transformers_engine import TransformersEngine
from shared.model_store import prepare_model, resolve_model
from tests.services.worker.engine_runs import run_item

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a land far away, there lived",
    "1, 2, 3, 4,",
    "def fibonacci(n):",
]


@pytest.fixture(scope="module")
def engine(model_state_dir: Path) -> Iterator[TransformersEngine]:
    settings = WorkerSettings(
        state_dir=model_state_dir,
        worker_dtype="float32",
        worker_max_batch_size=8,
        worker_max_model_len=256,
    )
    engine = TransformersEngine(settings)
    engine.load()
    engine.start_thread()
    yield engine
    engine.close()


@contextlib.asynccontextmanager
async def _started(engine: TransformersEngine) -> AsyncIterator[TransformersEngine]:
    """`engine` loaded and running for the block, stopped after it whatever happens."""
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


def greedy(prompt: str, max_new_tokens: int = 8, request_id: str = "r", **params: object) -> WorkItem:
    return WorkItem(request_id, prompt=prompt, params=SamplingParams(max_new_tokens=max_new_tokens, **params))  # type: ignore[arg-type]


async def test_info(engine: TransformersEngine) -> None:
    info = engine.info
    assert info.model == "SmolLM2-135M-Instruct"
    assert (info.backend, info.device, info.dtype) == ("transformers", "cpu", "float32")
    assert info.max_model_len == 256 and info.simulated is False


async def test_chat_messages_get_the_chat_template(engine: TransformersEngine) -> None:
    item = WorkItem(
        "chat", messages=(ChatTurn("user", "What is the capital of France?"),), params=SamplingParams(max_new_tokens=8)
    )
    result = await run_item(engine, item)
    assert isinstance(result.end, SequenceFinished)
    assert "Paris" in result.text
    # The template adds a system prompt and turn markers around the 7-word question.
    assert result.end.prompt_tokens > 20
    assert 0 < result.end.ttft_ms <= result.end.total_ms


async def test_max_new_tokens_ends_with_length(engine: TransformersEngine) -> None:
    result = await run_item(engine, greedy("1, 2, 3, 4,", max_new_tokens=5))
    end = result.end
    assert isinstance(end, SequenceFinished)
    prompt_tokens = len(engine.tokenizer("1, 2, 3, 4,")["input_ids"])
    assert (end.reason, end.completion_tokens, end.prompt_tokens) == (FinishReason.LENGTH, 5, prompt_tokens)
    assert result.text.startswith(" 5, 6")
    assert sum(d.tokens for d in result.deltas) == 5
    assert len(result.deltas) >= 3  # streamed, not sent in one piece


async def test_batched_with_joins_equals_alone(engine: TransformersEngine) -> None:
    alone = [(await run_item(engine, greedy(p, request_id=f"a{i}"))).text for i, p in enumerate(PROMPTS)]

    first_delta_at: dict[str, float] = {}
    finished_at: dict[str, float] = {}
    queue: asyncio.Queue = asyncio.Queue()

    def sink(event: object) -> None:
        queue.put_nowait(event)

    texts = {f"b{i}": "" for i in range(len(PROMPTS))}
    for i in (0, 1):
        engine.submit(greedy(PROMPTS[i], request_id=f"b{i}"), sink)
    ended = 0
    late_submitted = False
    while ended < len(PROMPTS):
        event = await asyncio.wait_for(queue.get(), 60)
        rid = event.request_id
        if isinstance(event, TextDelta):
            texts[rid] += event.text
            first_delta_at.setdefault(rid, time.monotonic())
            if not late_submitted:
                # The first two are generating: the other two join their running batch.
                late_submitted = True
                for i in (2, 3):
                    engine.submit(greedy(PROMPTS[i], request_id=f"b{i}"), sink)
        else:
            assert isinstance(event, SequenceFinished), event
            finished_at[rid] = time.monotonic()
            ended += 1
    assert [texts[f"b{i}"] for i in range(len(PROMPTS))] == alone
    # They really ran together: the late ones produced text before the early ones finished.
    assert max(first_delta_at["b2"], first_delta_at["b3"]) < min(finished_at["b0"], finished_at["b1"])


async def test_concurrent_items_all_match_alone(engine: TransformersEngine) -> None:
    prompts = PROMPTS + ["The weather today is", "My favourite food is"]
    alone = [(await run_item(engine, greedy(p, max_new_tokens=6))).text for p in prompts]
    together = await asyncio.gather(
        *(run_item(engine, greedy(p, max_new_tokens=6 if i % 2 else 4, request_id=f"c{i}")) for i, p in enumerate(prompts))
    )
    for i, (reference, result) in enumerate(zip(alone, together, strict=True)):
        if i % 2:
            assert result.text == reference
        else:  # shorter budget: a prefix of the same greedy output
            assert reference.startswith(result.text) and result.end.completion_tokens == 4


async def test_stop_string_cuts_output_and_is_never_sent(engine: TransformersEngine) -> None:
    reference = (await run_item(engine, greedy("1, 2, 3, 4,", max_new_tokens=12))).text
    assert " 7," in reference
    result = await run_item(engine, greedy("1, 2, 3, 4,", max_new_tokens=12, stop=(" 7,",)))
    assert result.text == reference[: reference.index(" 7,")]
    assert " 7" not in "".join(d.text for d in result.deltas)
    assert isinstance(result.end, SequenceFinished) and result.end.reason is FinishReason.STOP


async def test_too_long_fails_with_invalid_request(engine: TransformersEngine) -> None:
    result = await run_item(engine, greedy("hello " * 200, max_new_tokens=100))
    assert isinstance(result.end, SequenceFailed)
    assert result.end.code is FailureCode.INVALID_REQUEST
    assert "max_model_len of 256" in result.end.message


async def test_cancel_stops_within_a_step(engine: TransformersEngine) -> None:
    queue: asyncio.Queue = asyncio.Queue()
    story = WorkItem(
        "story", messages=(ChatTurn("user", "Write a long story about a dragon."),), params=SamplingParams(max_new_tokens=200)
    )
    handle = engine.submit(story, queue.put_nowait)
    event = await asyncio.wait_for(queue.get(), 30)
    assert isinstance(event, TextDelta)
    assert engine.cancel(handle)
    while not isinstance(event, SequenceFinished):
        event = await asyncio.wait_for(queue.get(), 5)
    assert event.reason is FinishReason.CANCELLED
    assert event.completion_tokens < 20
    assert engine.running == 0


async def test_deadline_fails_the_sequence(engine: TransformersEngine) -> None:
    item = WorkItem(
        "late", prompt="Tell me everything about the sea.", params=SamplingParams(max_new_tokens=200),
        deadline_unix=time.time() + 0.5,
    )
    began = time.monotonic()
    result = await run_item(engine, item)
    assert isinstance(result.end, SequenceFailed)
    assert result.end.code is FailureCode.DEADLINE_EXCEEDED
    assert time.monotonic() - began < 2.0


async def test_expired_before_start_never_runs(engine: TransformersEngine) -> None:
    result = await run_item(engine, WorkItem("old", prompt="hi", deadline_unix=time.time() - 1))
    assert isinstance(result.end, SequenceFailed) and result.end.code is FailureCode.DEADLINE_EXCEEDED
    assert result.deltas == []


async def test_seeded_sampling_repeats_itself_even_in_a_batch(engine: TransformersEngine) -> None:
    params = {"temperature": 0.9, "top_p": 0.95, "top_k": 40, "repetition_penalty": 1.1, "seed": 7}
    first = await run_item(engine, greedy("Tell me a story", max_new_tokens=8, **params))
    second, _ = await asyncio.gather(
        run_item(engine, greedy("Tell me a story", max_new_tokens=8, request_id="s2", **params)),
        run_item(engine, greedy("Another prompt entirely", max_new_tokens=8, request_id="o", temperature=1.0)),
    )
    assert first.text and first.text == second.text


async def test_continuation_counts_against_max_new_tokens(engine: TransformersEngine) -> None:
    reference = await run_item(engine, greedy("1, 2, 3, 4,", max_new_tokens=8))
    result = await run_item(
        engine,
        WorkItem(
            "cont", prompt="1, 2, 3, 4,", params=SamplingParams(max_new_tokens=8),
            continuation=" 5, 6,", continuation_tokens=6,
        ),
    )
    assert isinstance(result.end, SequenceFinished)
    assert result.end.completion_tokens == 2
    assert result.end.prompt_tokens == len(engine.tokenizer("1, 2, 3, 4, 5, 6,")["input_ids"])
    assert " 5, 6," + result.text == reference.text
    used_up = await run_item(
        engine,
        WorkItem("done", prompt="1,", params=SamplingParams(max_new_tokens=4), continuation=" 2, 3", continuation_tokens=4),
    )
    assert isinstance(used_up.end, SequenceFinished) and used_up.end.reason is FinishReason.LENGTH
    assert used_up.end.completion_tokens == 0


async def test_frequency_penalty_breaks_a_repetition_and_leaves_its_neighbours_alone(
    engine: TransformersEngine,
) -> None:
    prompt = "1, 2, 3, 4,"
    reference = await run_item(engine, greedy(prompt, max_new_tokens=16))
    penalised, neighbour = await asyncio.gather(
        run_item(engine, greedy(prompt, max_new_tokens=16, request_id="p", frequency_penalty=2.0)),
        run_item(engine, greedy(prompt, max_new_tokens=16, request_id="n")),
    )
    assert neighbour.text == reference.text

    def most_repeated(text: str) -> int:
        ids = engine.tokenizer(text, add_special_tokens=False)["input_ids"]
        return max(ids.count(token) for token in ids)

    # Greedy counting repeats ", " every other token; the penalty makes it costlier each time.
    assert penalised.text != reference.text
    assert most_repeated(penalised.text) < most_repeated(reference.text)


async def test_output_penalties_count_a_continuation_as_output_not_the_prompt(engine: TransformersEngine) -> None:
    # The same prompt tokens either way ("1, 2, 3, 4, 5, 6, 7, 8"), one token to pick: only whether
    # " 5, 6, 7, 8" is the answer so far (a retry's continuation, three commas in it) differs.
    penalties = {"presence_penalty": 2.0, "frequency_penalty": 2.0}
    plain = await run_item(engine, greedy("1, 2, 3, 4, 5, 6, 7, 8", max_new_tokens=1))
    as_prompt = await run_item(engine, greedy("1, 2, 3, 4, 5, 6, 7, 8", max_new_tokens=1, **penalties))
    as_output = await run_item(
        engine,
        WorkItem(
            "cont", prompt="1, 2, 3, 4,", params=SamplingParams(max_new_tokens=5, **penalties),  # type: ignore[arg-type]
            continuation=" 5, 6, 7, 8", continuation_tokens=4,
        ),
    )
    assert plain.text == ","
    assert as_prompt.text == ","  # the prompt's tokens are not the answer's
    assert as_output.text and as_output.text != ","  # the continuation's commas are


async def test_logit_bias_bans_and_forces_tokens_and_refuses_ids_beyond_the_vocabulary(
    engine: TransformersEngine,
) -> None:
    prompt = "The capital of France is"
    reference = await run_item(engine, greedy(prompt, max_new_tokens=3))
    first = engine.tokenizer(reference.text, add_special_tokens=False)["input_ids"][0]
    banned = await run_item(engine, greedy(prompt, max_new_tokens=3, logit_bias=((first, -100.0),)))
    assert not engine.tokenizer(banned.text, add_special_tokens=False)["input_ids"][0] == first
    forced_id = engine.tokenizer(" zebra", add_special_tokens=False)["input_ids"][0]
    forced = await run_item(engine, greedy(prompt, max_new_tokens=2, temperature=1.0, logit_bias=((forced_id, 100.0),)))
    assert forced.text == engine.tokenizer.decode([forced_id, forced_id])
    beyond = await run_item(engine, greedy(prompt, logit_bias=((10**6, 1.0),)))
    assert isinstance(beyond.end, SequenceFailed) and beyond.end.code is FailureCode.INVALID_REQUEST
    assert "logit_bias names token id 1000000" in beyond.end.message


@pytest.fixture(scope="module")
def plain_model(model_state_dir: Path) -> Any:
    """SmolLM2 as transformers loads it (the engine's own copy has its projections fused)."""
    path = prepare_model(resolve_model("smollm2"), model_state_dir).path
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _teacher_forced_logprobs(model: Any, engine: TransformersEngine, prompt: str, generated: list[int]) -> torch.Tensor:
    """The model's own log-softmax at each generated position ([tokens, vocab]), run plainly."""
    prompt_ids = engine.tokenizer(prompt)["input_ids"]
    ids = torch.tensor([prompt_ids + generated[:-1]])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt_ids) - 1 :]
    return logits.float().log_softmax(dim=-1)


async def test_logprobs_are_the_models_own_with_the_top_alternatives_and_only_where_asked(
    engine: TransformersEngine, plain_model: Any
) -> None:
    prompt = "The capital of France is"
    reference = await run_item(engine, greedy(prompt, max_new_tokens=6))
    asked, neighbour = await asyncio.gather(
        run_item(engine, greedy(prompt, max_new_tokens=6, request_id="lp", logprobs=3)),
        run_item(engine, greedy(prompt, max_new_tokens=6, request_id="plain")),
    )
    assert neighbour.text == asked.text == reference.text
    assert all(not d.logprobs for d in neighbour.deltas)
    entries = [e for d in asked.deltas for e in d.logprobs]
    assert isinstance(asked.end, SequenceFinished) and len(entries) == asked.end.completion_tokens == 6
    # Each delta carries exactly the tokens it reports.
    assert all(len(d.logprobs) == d.tokens for d in asked.deltas)
    assert "".join(e.token for e in entries) == asked.text
    expected = _teacher_forced_logprobs(plain_model, engine, prompt, [e.token_id for e in entries])
    for position, entry in enumerate(entries):
        assert len(entry.top) == 3
        assert [t.logprob for t in entry.top] == sorted((t.logprob for t in entry.top), reverse=True)
        # Greedy with nothing changing the logits: the pick is the most likely token.
        assert entry.top[0].token_id == entry.token_id and entry.top[0].logprob == entry.logprob
        assert entry.logprob == pytest.approx(float(expected[position, entry.token_id]), abs=1e-3)
        top_ids = expected[position].topk(3).indices.tolist()
        assert [t.token_id for t in entry.top] == top_ids


async def test_logprobs_come_before_temperature_and_penalties_and_cover_the_end_of_sequence(
    engine: TransformersEngine, plain_model: Any
) -> None:
    prompt = "1, 2, 3, 4,"
    item = greedy(prompt, max_new_tokens=12, temperature=1.5, seed=7, frequency_penalty=1.0, logprobs=0)
    sampled = await run_item(engine, item)
    entries = [e for d in sampled.deltas for e in d.logprobs]
    assert isinstance(sampled.end, SequenceFinished)
    assert len(entries) == sampled.end.completion_tokens and all(e.top == () for e in entries)
    expected = _teacher_forced_logprobs(plain_model, engine, prompt, [e.token_id for e in entries])
    for position, entry in enumerate(entries):
        # The raw distribution: neither the temperature nor the penalty shows in it.
        assert entry.logprob == pytest.approx(float(expected[position, entry.token_id]), abs=1e-3)
    # An answer that ends with the end-of-sequence token (forced here) reports that token too,
    # by its name, on a delta of no text.
    eos = engine.tokenizer.eos_token_id
    forced = greedy(prompt, max_new_tokens=4, logprobs=1, logit_bias=((eos, 100.0),))
    ended = await run_item(engine, forced)
    assert isinstance(ended.end, SequenceFinished) and ended.end.reason is FinishReason.STOP
    assert ended.end.completion_tokens == 1 and ended.text == ""
    [entry] = [e for d in ended.deltas for e in d.logprobs]
    assert entry.token_id == eos and entry.token == engine.tokenizer.eos_token
    assert entry.logprob < entry.top[0].logprob  # raw: the bias that forced it does not show


async def test_prompt_logprobs_come_on_the_first_delta_only_where_asked(
    engine: TransformersEngine, plain_model: Any
) -> None:
    prompt = "The capital of France is"
    asked, neighbour = await asyncio.gather(
        run_item(engine, greedy(prompt, max_new_tokens=4, request_id="pl", prompt_logprobs=1, logprobs=0)),
        run_item(engine, greedy("1, 2, 3, 4,", max_new_tokens=4, request_id="plain")),
    )
    assert all(not d.prompt_logprobs for d in neighbour.deltas)
    first, *rest = asked.deltas
    assert all(not d.prompt_logprobs for d in rest)
    prompt_ids = engine.tokenizer(prompt)["input_ids"]
    entries = first.prompt_logprobs
    assert [e.token_id for e in entries] == prompt_ids
    assert "".join(e.token for e in entries) == prompt
    # The first token has none (nothing comes before it); the others are the model's own.
    assert (entries[0].logprob, entries[0].top) == (0.0, ())
    with torch.no_grad():
        expected = plain_model(torch.tensor([prompt_ids])).logits[0].float().log_softmax(dim=-1)
    for position, entry in enumerate(entries[1:]):
        assert entry.logprob == pytest.approx(float(expected[position, entry.token_id]), abs=1e-3)
        assert [t.token_id for t in entry.top] == [int(expected[position].argmax())]
    # The answer itself is unchanged, its own log probabilities on its deltas as usual.
    reference = await run_item(engine, greedy(prompt, max_new_tokens=4))
    assert asked.text == reference.text
    assert len([e for d in asked.deltas for e in d.logprobs]) == 4


async def test_token_ids_come_where_asked_the_prompts_first_and_the_end_of_sequence_too(
    engine: TransformersEngine,
) -> None:
    prompt = "The capital of France is"
    asked, neighbour = await asyncio.gather(
        run_item(engine, greedy(prompt, max_new_tokens=6, request_id="ids", logprobs=0, return_token_ids=True)),
        run_item(engine, greedy(prompt, max_new_tokens=6, request_id="plain")),
    )
    assert all(not d.token_ids and not d.prompt_token_ids for d in neighbour.deltas)
    admission, *rest = asked.deltas
    assert (admission.text, admission.tokens, admission.token_ids) == ("", 0, ())
    assert list(admission.prompt_token_ids) == engine.tokenizer(prompt)["input_ids"]
    assert all(not d.prompt_token_ids for d in rest)
    # Each delta names exactly the tokens it reports: those its log probabilities name.
    assert all(list(d.token_ids) == [e.token_id for e in d.logprobs] and len(d.token_ids) == d.tokens for d in rest)
    ids = [t for d in rest for t in d.token_ids]
    assert engine.tokenizer.decode(ids) == asked.text == neighbour.text
    # An end-of-sequence token adds no text, yet its id is reported.
    eos = engine.tokenizer.eos_token_id
    ended = await run_item(engine, greedy(prompt, max_new_tokens=4, return_token_ids=True, logit_bias=((eos, 100.0),)))
    assert [t for d in ended.deltas for t in d.token_ids] == [eos] and ended.text == ""
    # A continuation's prompt holds output an earlier attempt reported: its ids are not sent.
    continued = await run_item(
        engine,
        dataclasses.replace(
            greedy(prompt, max_new_tokens=6, return_token_ids=True), continuation=" Paris", continuation_tokens=1
        ),
    )
    assert all(not d.prompt_token_ids for d in continued.deltas)
    assert sum(len(d.token_ids) for d in continued.deltas) == sum(d.tokens for d in continued.deltas)


async def test_ignore_eos_min_tokens_and_stop_token_ids(engine: TransformersEngine) -> None:
    prompt = "1, 2, 3, 4,"
    eos = engine.tokenizer.eos_token_id
    forced_eos = ((eos, 100.0),)  # the model's end of sequence is its first choice at every step
    ignored = await run_item(engine, greedy(prompt, max_new_tokens=4, logit_bias=forced_eos, ignore_eos=True))
    assert isinstance(ignored.end, SequenceFinished)
    assert (ignored.end.reason, ignored.end.completion_tokens) == (FinishReason.LENGTH, 4)
    # min_tokens: the end of sequence cannot be picked for the first 3 tokens, then it is.
    delayed = await run_item(
        engine, greedy(prompt, max_new_tokens=10, logit_bias=forced_eos, min_tokens=3, logprobs=0)
    )
    assert isinstance(delayed.end, SequenceFinished)
    assert (delayed.end.reason, delayed.end.completion_tokens) == (FinishReason.STOP, 4)
    entries = [e.token_id for d in delayed.deltas for e in d.logprobs]
    assert eos not in entries[:3] and entries[3] == eos
    # A stop token id ends the answer like the end of sequence, its text left out: greedy counting
    # goes " 5, 6, ...", so stopping at "," leaves " 5".
    reference = await run_item(engine, greedy(prompt, max_new_tokens=8))
    comma = engine.tokenizer(",", add_special_tokens=False)["input_ids"][0]
    assert reference.text.startswith(" 5,")
    stopped = await run_item(engine, greedy(prompt, max_new_tokens=8, stop_token_ids=(comma, 10**6)))
    assert isinstance(stopped.end, SequenceFinished)
    five = len(engine.tokenizer(" 5", add_special_tokens=False)["input_ids"])
    assert (stopped.text, stopped.end.reason, stopped.end.completion_tokens) == (" 5", FinishReason.STOP, five + 1)
    # Stop strings, as in vLLM, are looked for once min_tokens tokens exist: the first "," comes
    # too early to count, the second ends the answer.
    assert reference.text.startswith(" 5, 6")
    later = await run_item(engine, greedy(prompt, max_new_tokens=12, stop=(",",), min_tokens=five + 1))
    assert isinstance(later.end, SequenceFinished) and later.end.reason is FinishReason.STOP
    assert later.text == " 5, 6"


async def test_more_items_than_the_batch_wait_and_all_finish(engine: TransformersEngine) -> None:
    items = [greedy(f"Count to {i}:", max_new_tokens=3, request_id=f"w{i}") for i in range(12)]
    tasks = [asyncio.create_task(run_item(engine, item)) for item in items]
    await asyncio.sleep(0)  # every task has submitted; none can have finished three steps yet
    assert engine.running + engine.waiting == 12
    assert engine.running <= 8
    results = await asyncio.gather(*tasks)
    assert all(isinstance(r.end, SequenceFinished) and r.end.completion_tokens == 3 for r in results)


def test_default_dtype_on_cpu_follows_the_cpu(model_state_dir: Path) -> None:
    engine = TransformersEngine(WorkerSettings(state_dir=model_state_dir))
    engine.load()
    assert engine.info.dtype == ("bfloat16" if cpu_computes_bfloat16() else "float32")
    assert engine.info.max_model_len == 2048


def _fail_next_forward(model: Any) -> None:
    """Fault injection: the model's next forward pass raises (at its token embedding, which the
    transformers forward and the Llama decoder both call first)."""
    embed = model.get_input_embeddings()
    real = embed.forward

    def failing_once(*args: Any, **kwargs: Any) -> Any:
        embed.forward = real
        raise RuntimeError("simulated device failure")

    embed.forward = failing_once


async def test_a_model_failure_fails_the_batch_and_the_engine_goes_on(engine: TransformersEngine) -> None:
    _fail_next_forward(engine.model)
    failed = await run_item(engine, greedy("1, 2, 3,", request_id="doomed"))
    assert isinstance(failed.end, SequenceFailed)
    assert failed.end.code is FailureCode.INTERNAL
    assert "simulated device failure" in failed.end.message
    after = await run_item(engine, greedy("1, 2, 3,", max_new_tokens=3, request_id="fine"))
    assert isinstance(after.end, SequenceFinished) and after.end.completion_tokens == 3


class CacheRecorder(NullObserver):
    """Keeps every KV cache report (called from the engine thread)."""

    def __init__(self) -> None:
        self.reports: list[tuple[int, int]] = []
        self.reused = 0

    def kv_cache(self, tokens: int, nbytes: int) -> None:
        self.reports.append((tokens, nbytes))

    def prefix_reused(self, tokens: int) -> None:
        self.reused += tokens


async def test_kv_cache_usage_is_reported_and_freed_on_cancel(model_state_dir: Path) -> None:
    recorder = CacheRecorder()
    settings = WorkerSettings(state_dir=model_state_dir, worker_dtype="float32", worker_max_model_len=256)
    async with _started(TransformersEngine(settings, recorder)) as engine:
        config = engine.model.config
        per_token = config.num_hidden_layers * 2 * config.num_key_value_heads * (
            config.hidden_size // config.num_attention_heads
        ) * 4  # keys and values of every layer, float32
        queue: asyncio.Queue = asyncio.Queue()
        long_item = WorkItem("long", prompt=PROMPTS[1], params=SamplingParams(max_new_tokens=200))
        handle = engine.submit(long_item, queue.put_nowait)
        short = await run_item(engine, greedy(PROMPTS[0], max_new_tokens=4, request_id="short"))
        assert isinstance(short.end, SequenceFinished)
        held = [r for r in recorder.reports if r[0] > 0]
        # A slab (llama_decode) also holds free columns: up to MIN_ROOM per row (two rows here)
        # plus half the used width after it grows.
        assert held and all(
            nbytes % per_token == 0 and tokens * per_token <= nbytes <= (tokens * 3 // 2 + 2 * MIN_ROOM) * per_token
            for tokens, nbytes in held
        )
        assert max(tokens for tokens, _ in held) >= 2 * len(PROMPTS[1].split())  # two rows at once
        assert engine.cancel(handle)
        event = await asyncio.wait_for(queue.get(), 30)
        while not isinstance(event, SequenceFinished):
            event = await asyncio.wait_for(queue.get(), 30)
        assert event.reason is FinishReason.CANCELLED
        for _ in range(50):  # the report follows the event within the same engine turn
            if recorder.reports[-1] == (0, 0):
                break
            await asyncio.sleep(0.02)
        assert recorder.reports[-1] == (0, 0)


class _ThreadCountRecorder:
    """The real model, recording torch's thread count and the number of positions of every call."""

    def __init__(self, model: object) -> None:
        self._model = model
        self.calls: list[tuple[int, int]] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self._model, name)

    def __call__(self, *args: object, **kwargs: object) -> object:
        self.calls.append((torch.get_num_threads(), int(kwargs["input_ids"].shape[1])))  # type: ignore[union-attr]
        return self._model(*args, **kwargs)


@pytest.mark.parametrize("llama_decode", [False, True])
async def test_prefill_and_decode_run_with_their_own_thread_counts(model_state_dir: Path, llama_decode: bool) -> None:
    settings = WorkerSettings(
        state_dir=model_state_dir, worker_dtype="float32", worker_max_model_len=256,
        worker_threads=1, worker_prefill_threads=2, worker_llama_decode=llama_decode,
    )
    async with _started(TransformersEngine(settings)) as engine:
        recorder = _ThreadCountRecorder(engine.model)
        engine.model = recorder
        decoder = engine._decoder
        assert (decoder is not None) == llama_decode
        if decoder is not None:  # prompts and steps go through the decoder, not the model's forward
            prefill, step = decoder.prefill_columns, decoder.step

            def recording_prefill(slab: Any, ids: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
                recorder.calls.append((torch.get_num_threads(), int(ids.shape[1])))
                return prefill(slab, ids, *args, **kwargs)

            def recording_step(*args: Any) -> torch.Tensor:
                recorder.calls.append((torch.get_num_threads(), 1))
                return step(*args)

            decoder.prefill_columns = recording_prefill  # type: ignore[method-assign]
            decoder.step = recording_step  # type: ignore[method-assign]
        result = await run_item(engine, greedy(PROMPTS[0], max_new_tokens=4))
        assert isinstance(result.end, SequenceFinished) and result.end.completion_tokens == 4
        prefill, *decode = recorder.calls
        assert prefill == (2, len(engine.tokenizer(PROMPTS[0])["input_ids"]))
        assert decode and all(call == (1, 1) for call in decode)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [({}, True), ({"worker_llama_decode": False}, False), ({"worker_compile": True}, False)],
)
def test_llama_decode_is_chosen_unless_turned_off_or_compiling(
    model_state_dir: Path, overrides: dict[str, bool], expected: bool
) -> None:
    engine = TransformersEngine(WorkerSettings(state_dir=model_state_dir, worker_max_model_len=256, **overrides))
    engine.load()  # torch.compile compiles at the first call, so loading stays quick
    assert (engine._decoder is not None) is expected


@pytest.mark.parametrize("llama_decode", [True, False])
async def test_chat_items_prefilled_together_reuse_the_template_prefix(
    model_state_dir: Path, llama_decode: bool
) -> None:
    """Through the Llama steps or transformers' own forward: the chat template's prefix is run
    once and copied into every row, and the answers are those of prompts run whole."""
    questions = ("What is the capital of France?", "Name three colours.", "Why is the sky blue?")
    items = [
        WorkItem(f"q{i}", messages=(ChatTurn("user", q),), params=SamplingParams(max_new_tokens=8))
        for i, q in enumerate(questions)
    ]
    texts = {}
    for tokens in (0, 2048):
        recorder = CacheRecorder()
        settings = WorkerSettings(
            state_dir=model_state_dir, worker_dtype="float32", worker_max_model_len=256,
            worker_prefix_cache_tokens=tokens, worker_llama_decode=llama_decode,
        )
        async with _started(TransformersEngine(settings, recorder)) as engine:
            assert (engine._decoder is not None) == llama_decode
            queues: list[asyncio.Queue] = [asyncio.Queue() for _ in items]
            # Submitted under the engine's own condition (re-entrant), so that its thread takes
            # all three in one turn and prefills them together.
            with engine._cond:
                for item, queue in zip(items, queues, strict=True):
                    engine.submit(item, queue.put_nowait)
            texts[tokens] = [await _collect_text(queue) for queue in queues]
        template_tokens = 20  # SmolLM2's system turn alone is longer than this
        assert (recorder.reused >= template_tokens * (len(items) - 1)) is (tokens > 0)
    assert texts[2048] == texts[0] and all(texts[0])


async def _collect_text(queue: asyncio.Queue) -> str:
    text = ""
    while True:
        event = await asyncio.wait_for(queue.get(), 60)
        if not isinstance(event, TextDelta):
            assert isinstance(event, SequenceFinished), event
            return text
        text += event.text


async def test_a_scheduler_failure_fails_every_sequence_refuses_new_ones_and_tells_the_service(
    model_state_dir: Path,
) -> None:
    # An error outside a model step (here: taking work) must not kill the engine thread silently,
    # leaving requests to hang until their deadlines: everything fails with INTERNAL at once.
    settings = WorkerSettings(state_dir=model_state_dir, worker_dtype="float32", worker_max_batch_size=4)
    engine = TransformersEngine(settings)
    engine.load()
    told: list[str] = []
    engine.on_failure = told.append
    take_work = engine._take_work
    calls = 0

    def failing_on_the_second_call(events: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:  # the first item is in the batch by now
            raise RuntimeError("simulated scheduler bug")
        return take_work(events)

    engine._take_work = failing_on_the_second_call  # type: ignore[method-assign]
    engine.start_thread()
    try:
        held = await asyncio.wait_for(run_item(engine, greedy("1, 2, 3,", max_new_tokens=50, request_id="held")), 60)
        assert isinstance(held.end, SequenceFailed)
        assert held.end.code is FailureCode.INTERNAL
        assert "simulated scheduler bug" in held.end.message
        assert engine.failure is not None and "simulated scheduler bug" in engine.failure
        assert told == [engine.failure]
        later = await asyncio.wait_for(run_item(engine, greedy("1, 2, 3,", request_id="later")), 10)
        assert isinstance(later.end, SequenceFailed) and later.end.code is FailureCode.INTERNAL
        assert later.end.message == engine.failure
    finally:
        engine.close()


class StepClock(NullObserver):
    """When each decode step ended (called from the engine thread)."""

    def __init__(self) -> None:
        self.steps: list[float] = []

    def decode_step(self, batch_size: int, duration_s: float) -> None:
        self.steps.append(time.monotonic())


def _thread_cpu_s(native_id: int) -> float:
    """CPU seconds (user + system) one thread of this process has used."""
    fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _SlowGroups:
    """Wraps an engine's group prefills: records where each group ran (thread name, torch
    threads, size, when it began and when its first tokens were picked) and holds groups on the
    prefill thread for `hold_s` (or fails them with `fail`), so that what the engine thread does
    meanwhile can be watched."""

    def __init__(
        self, engine: TransformersEngine, hold_s: float = 0.0, fail: bool = False, hold_once: bool = False
    ) -> None:
        self.calls: list[tuple[str, int, int, float, float]] = []
        self._begin, self._finish = engine._begin_prefill, engine._first_tokens
        self._open: dict[int, tuple[str, int, int, float]] = {}
        self._hold_s = hold_s
        self._fail = fail
        self._hold_once = hold_once
        engine._begin_prefill = self._begun  # type: ignore[method-assign]
        engine._first_tokens = self._finished  # type: ignore[method-assign]

    def _begun(self, chosen: list[Any]) -> Any:
        began = (threading.current_thread().name, torch.get_num_threads(), len(chosen), time.monotonic())
        if began[0].startswith("lgc-prefill"):
            time.sleep(self._hold_s)
            if self._hold_once:
                self._hold_s = 0.0
            if self._fail:
                self.calls.append((*began, time.monotonic()))
                raise RuntimeError("simulated prefill failure")
        self._open[id(chosen)] = began
        return self._begin(chosen)

    def _finished(self, chosen: list[Any], run: Any, events: list[Any]) -> Any:
        result = self._finish(chosen, run, events)
        self.calls.append((*self._open.pop(id(chosen)), time.monotonic()))
        return result


def _background_settings(model_state_dir: Path, **overrides: object) -> WorkerSettings:
    """One decode thread unless overridden, so that a core is left for the prefill thread (CI
    has 2), and every newcomer prefilled beside the batch however few rows run (pause ratio 0)."""
    values: dict[str, object] = {"worker_threads": 1, "worker_prefill_pause_ratio": 0.0, **overrides}
    return WorkerSettings(
        state_dir=model_state_dir, worker_dtype="float32", worker_max_model_len=256,
        **values,  # type: ignore[arg-type]
    )


async def test_a_worker_with_every_core_decoding_keeps_prefills_on_the_engine_thread(model_state_dir: Path) -> None:
    settings = _background_settings(model_state_dir, worker_threads=len(os.sched_getaffinity(0)))
    engine = TransformersEngine(settings)
    engine.load()
    engine.start_thread()
    try:
        assert engine._prefill_pool is None
    finally:
        engine.close()


async def _running(engine: TransformersEngine, request_id: str, max_new_tokens: int) -> asyncio.Queue:
    """Submit a sequence and wait for its first text: it is in the running batch then. Returns
    the queue of its later events."""
    queue: asyncio.Queue = asyncio.Queue()
    engine.submit(greedy(PROMPTS[1], max_new_tokens=max_new_tokens, request_id=request_id), queue.put_nowait)
    while not isinstance(await asyncio.wait_for(queue.get(), 30), TextDelta):
        pass
    return queue


@pytest.mark.parametrize("background", [True, False])
async def test_newcomers_are_prefilled_beside_the_running_batch(model_state_dir: Path, background: bool) -> None:
    clock = StepClock()
    async with _started(TransformersEngine(_background_settings(model_state_dir, worker_background_prefill=background), clock)) as engine:
        groups = _SlowGroups(engine, hold_s=0.6)
        await _running(engine, "running", max_new_tokens=60)
        late = await run_item(engine, greedy(PROMPTS[0], max_new_tokens=4, request_id="late"))
        assert isinstance(late.end, SequenceFinished) and late.end.completion_tokens == 4
        first, joined = groups.calls
        assert first[0] == "lgc-engine"  # nothing was running: the engine thread prefilled it
        usable = len(os.sched_getaffinity(0))
        if not background or usable == 1:  # off, or no core beside the decode thread's
            assert joined[0] == "lgc-engine"
            return
        assert joined[0].startswith("lgc-prefill") and joined[1] == usable - 1 and joined[2] == 1
        # The running sequence kept stepping while the newcomer's group was on the prefill thread.
        _, _, _, started, ended = joined
        assert sum(started < at < ended for at in clock.steps) >= 3


@pytest.mark.parametrize("llama_decode", [True, False])
async def test_a_long_prompt_is_prefilled_in_chunks_with_decode_steps_between(
    model_state_dir: Path, llama_decode: bool
) -> None:
    """Chunked prefill on the engine thread (no prefill thread), through the Llama steps or
    transformers' own forward: a prompt of ~60 tokens joins a running row 16 tokens at a time, the
    row stepping between chunks, and gets the tokens it gets alone (prefilled whole: nothing was
    running)."""
    clock = StepClock()
    settings = _background_settings(
        model_state_dir,
        worker_background_prefill=False,
        worker_prefill_chunk_tokens=16,
        worker_prefix_cache_tokens=0,
        worker_llama_decode=llama_decode,
    )
    long_prompt = " ".join(PROMPTS * 3)
    async with _started(TransformersEngine(settings, clock)) as engine:
        assert (engine._decoder is not None) == llama_decode
        alone = await run_item(engine, greedy(long_prompt, max_new_tokens=6, request_id="alone"))
        groups = _SlowGroups(engine)
        running = await _running(engine, "running", max_new_tokens=60)
        late = await run_item(engine, greedy(long_prompt, max_new_tokens=6, request_id="late"))
        assert isinstance(late.end, SequenceFinished) and late.end.completion_tokens == 6
        assert late.text == alone.text
        chunks = -(-late.end.prompt_tokens // 16)
        assert chunks >= 4
        _, joined = groups.calls
        assert joined[0] == "lgc-engine" and joined[2] == 1
        _, _, _, started, ended = joined
        # One decode step of the running row after every chunk but the last.
        assert sum(started < at < ended for at in clock.steps) == chunks - 1
        assert not running.empty()  # its text kept coming meanwhile


async def test_a_cancelled_prompt_stops_between_chunks_of_its_prefill(model_state_dir: Path) -> None:
    """Cancelled while its prefill is in chunks beside a running row: it ends before the chunks
    left are run (one chunk and a step per turn), and the running row goes on."""
    clock = StepClock()
    settings = _background_settings(
        model_state_dir, worker_background_prefill=False, worker_prefill_chunk_tokens=16, worker_prefix_cache_tokens=0
    )
    async with _started(TransformersEngine(settings, clock)) as engine:
        groups = _SlowGroups(engine)
        running = await _running(engine, "running", max_new_tokens=60)
        queue: asyncio.Queue = asyncio.Queue()
        steps_before = len(clock.steps)
        handle = engine.submit(greedy(" ".join(PROMPTS * 6), max_new_tokens=6, request_id="late"), queue.put_nowait)
        while len(clock.steps) < steps_before + 2:  # a chunk or two in
            await asyncio.sleep(0.01)
        assert engine.cancel(handle)
        end = await asyncio.wait_for(queue.get(), 10)
        assert isinstance(end, SequenceFinished) and end.reason is FinishReason.CANCELLED
        assert end.completion_tokens == 0
        chunks = -(-end.prompt_tokens // 16)
        assert len(clock.steps) - steps_before < chunks  # ended before its prefill could have
        assert engine._chunked is None and engine._prefilling == []
        assert len(groups.calls) == 1  # the running row's group; the cancelled one never got first tokens
        while not isinstance(event := await asyncio.wait_for(running.get(), 30), SequenceFinished):
            assert isinstance(event, TextDelta)
        assert event.completion_tokens == 60


@pytest.mark.parametrize("ratio", [1.0, 2.0])
async def test_newcomers_that_outnumber_the_running_rows_pause_the_batch(model_state_dir: Path, ratio: float) -> None:
    """`worker_prefill_pause_ratio`: one newcomer against one running row is at a ratio of 1, so
    the batch pauses for its prefill on the engine thread, on every prefill thread; at 2 it is
    prefilled beside the batch (where a core is left for that)."""
    clock = StepClock()
    settings = _background_settings(model_state_dir, worker_prefill_pause_ratio=ratio)
    async with _started(TransformersEngine(settings, clock)) as engine:
        groups = _SlowGroups(engine)
        await _running(engine, "running", max_new_tokens=60)
        late = await run_item(engine, greedy(PROMPTS[0], max_new_tokens=4, request_id="late"))
        assert isinstance(late.end, SequenceFinished) and late.end.completion_tokens == 4
        _, joined = groups.calls
        usable = len(os.sched_getaffinity(0))
        if ratio == 2.0 and usable > 1:
            assert joined[0].startswith("lgc-prefill")
            return
        assert joined[0] == "lgc-engine" and joined[1] == usable and joined[2] == 1
        _, _, _, started, ended = joined
        assert not any(started < at < ended for at in clock.steps)  # the running row waited


async def test_the_engine_thread_sleeps_while_only_a_background_prefill_is_left(model_state_dir: Path) -> None:
    # Two rows at most: with the held group and one admitted item the batch is full, and one more
    # item waits in the inbox; none of that is work for the engine thread until the group is done.
    async with _started(TransformersEngine(_background_settings(model_state_dir, worker_max_batch_size=2))) as engine:
        _SlowGroups(engine, hold_s=2.0, hold_once=True)
        short = await _running(engine, "short", max_new_tokens=12)
        late = [
            asyncio.create_task(run_item(engine, greedy(PROMPTS[0], max_new_tokens=4, request_id=f"late{i}")))
            for i in range(3)
        ]
        while not isinstance(await asyncio.wait_for(short.get(), 30), SequenceFinished):
            pass
        # "late0" joined while "short" ran, so its group is held on the prefill thread.
        assert engine._prefilling and engine._batch is None
        await asyncio.sleep(0.1)  # the engine thread takes "late1" into the free place
        assert engine.waiting == 2  # late1 admitted, late2 in the inbox: the batch is full
        assert engine._thread is not None and engine._thread.native_id is not None
        before = _thread_cpu_s(engine._thread.native_id)
        await asyncio.sleep(0.6)
        assert _thread_cpu_s(engine._thread.native_id) - before < 0.1  # asleep, not polling
        assert engine._prefilling  # still held: the window was inside the wait
        results = await asyncio.wait_for(asyncio.gather(*late), 60)
        assert all(isinstance(r.end, SequenceFinished) and r.end.completion_tokens == 4 for r in results)


async def test_a_failed_background_prefill_fails_its_group_and_the_batch_goes_on(model_state_dir: Path) -> None:
    async with _started(TransformersEngine(_background_settings(model_state_dir))) as engine:
        groups = _SlowGroups(engine, fail=True)
        queue = await _running(engine, "running", max_new_tokens=40)
        doomed = await run_item(engine, greedy(PROMPTS[0], request_id="doomed"))
        assert isinstance(doomed.end, SequenceFailed) and doomed.end.code is FailureCode.INTERNAL
        assert "simulated prefill failure" in doomed.end.message
        assert groups.calls[-1][0].startswith("lgc-prefill")
        event = await asyncio.wait_for(queue.get(), 30)
        while isinstance(event, TextDelta):
            event = await asyncio.wait_for(queue.get(), 30)
        assert isinstance(event, SequenceFinished) and event.completion_tokens == 40
        assert engine.failure is None


async def test_stopping_during_a_background_prefill_ends_every_sequence(model_state_dir: Path) -> None:
    engine = TransformersEngine(_background_settings(model_state_dir))
    await engine.start()
    groups = _SlowGroups(engine, hold_s=1.0)
    running = await _running(engine, "running", max_new_tokens=200)
    late = asyncio.create_task(run_item(engine, greedy(PROMPTS[0], max_new_tokens=50, request_id="late")))
    while not engine._prefilling:
        await asyncio.sleep(0.01)
    await asyncio.wait_for(engine.stop(), 30)
    result = await asyncio.wait_for(late, 10)
    assert isinstance(result.end, SequenceFailed) and result.end.code is FailureCode.OVERLOADED
    assert groups.calls[-1][0].startswith("lgc-prefill")  # the group was held on the prefill thread
    event = await asyncio.wait_for(running.get(), 10)
    while isinstance(event, TextDelta):
        event = await asyncio.wait_for(running.get(), 10)
    assert isinstance(event, SequenceFailed) and event.code is FailureCode.OVERLOADED


def _realtime_permitted() -> bool:
    """Whether this process may put a thread under SCHED_FIFO (probed on a throwaway thread)."""
    answer: list[str | None] = []
    probe = threading.Thread(target=lambda: answer.append(use_realtime_scheduling()))
    probe.start()
    probe.join()
    return answer == [None]


@pytest.mark.parametrize("realtime", [True, False])
async def test_the_engine_threads_take_real_time_scheduling_only_with_a_core_left(
    model_state_dir: Path, realtime: bool
) -> None:
    usable = len(os.sched_getaffinity(0))
    if usable < 2:
        pytest.skip("needs a core beside the decode thread")
    async with _started(TransformersEngine(_background_settings(model_state_dir, worker_realtime_threads=realtime))) as engine:
        await _running(engine, "running", max_new_tokens=30)
        late = await run_item(engine, greedy(PROMPTS[0], max_new_tokens=4, request_id="late"))
        assert isinstance(late.end, SequenceFinished)
        assert engine._thread is not None and engine._thread.native_id is not None
        prefill = [t for t in threading.enumerate() if t.name.startswith("lgc-prefill")]
        assert len(prefill) == 1 and prefill[0].native_id is not None  # "late" was prefilled there
        expected = realtime and _realtime_permitted()
        assert is_realtime(engine._thread.native_id) is expected
        assert is_realtime(prefill[0].native_id) is expected
        assert not is_realtime()  # the event loop's thread keeps the normal scheduler
        # The largest products of a step take every core only where nothing preempts the extra
        # thread (it inherits the engine thread's scheduling).
        assert engine._decoder is not None
        assert engine._decoder.wide_threads == (usable if expected else 1)


async def test_decode_wide_threads_as_set_apply_under_the_normal_scheduler_too(model_state_dir: Path) -> None:
    settings = _background_settings(model_state_dir, worker_realtime_threads=False, worker_decode_wide_threads=3)
    async with _started(TransformersEngine(settings)) as engine:
        result = await run_item(engine, greedy(PROMPTS[0], max_new_tokens=2))
        assert isinstance(result.end, SequenceFinished)
        assert engine._decoder is not None and engine._decoder.wide_threads == 3


async def test_a_worker_with_every_core_decoding_keeps_the_normal_scheduler(model_state_dir: Path) -> None:
    settings = _background_settings(model_state_dir, worker_threads=len(os.sched_getaffinity(0)))
    async with _started(TransformersEngine(settings)) as engine:
        result = await run_item(engine, greedy(PROMPTS[0], max_new_tokens=2))
        assert isinstance(result.end, SequenceFinished)
        assert engine._thread is not None and engine._thread.native_id is not None
        assert not is_realtime(engine._thread.native_id)
        assert engine._decoder is not None and engine._decoder.wide_threads == settings.worker_threads


class BatchSizes(NullObserver):
    """The batch size of every decode step (called from the engine thread)."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def decode_step(self, batch_size: int, duration_s: float) -> None:
        self.sizes.append(batch_size)


#: SmolLM2-135M's keys and values of one token in float32: 30 layers x (k, v) x 3 heads x 64 x 4 bytes.
SMOLLM2_KV_BYTES_FP32 = 30 * 2 * 3 * 64 * 4


@pytest.mark.parametrize("llama_decode", [True, False])
async def test_newcomers_beyond_the_kv_budget_wait_for_rows_to_leave(
    model_state_dir: Path, llama_decode: bool
) -> None:
    """A budget of two full-length rows (model length 64): four sequences growing to 60 tokens
    never run more than two at a time, two do run together, and every one ends with its tokens."""
    sizes = BatchSizes()
    settings = WorkerSettings(
        state_dir=model_state_dir, worker_dtype="float32", worker_max_model_len=64,
        worker_kv_cache_gb=2 * 64 * SMOLLM2_KV_BYTES_FP32 / 1024**3, worker_llama_decode=llama_decode,
        worker_prefix_cache_tokens=0,
    )
    prompt = "Count from one to one hundred: one, two, three,"
    async with _started(TransformersEngine(settings, sizes)) as engine:
        assert engine._kv_budget.bytes_per_token == SMOLLM2_KV_BYTES_FP32
        prompt_tokens = len(engine._encoder.encode(greedy(prompt)).ids)
        items = [greedy(prompt, max_new_tokens=60 - prompt_tokens, request_id=f"r{i}") for i in range(4)]
        ends = await asyncio.gather(*(run_item(engine, item) for item in items))
    assert all(isinstance(run.end, SequenceFinished) for run in ends)
    assert len({run.text for run in ends}) == 1  # greedy: the same text, however the rows were batched
    assert max(sizes.sizes) == 2


async def test_a_kv_budget_below_one_longest_sequence_is_refused_at_start(model_state_dir: Path) -> None:
    settings = WorkerSettings(
        state_dir=model_state_dir, worker_dtype="float32", worker_max_model_len=64,
        worker_kv_cache_gb=63 * SMOLLM2_KV_BYTES_FP32 / 1024**3,
    )
    with pytest.raises(KVBudgetError, match="cannot hold one sequence of 64 tokens"):
        TransformersEngine(settings).load()
