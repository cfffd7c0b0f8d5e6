"""The official openai client against the running embedded cluster with the real model."""

from __future__ import annotations

import httpx
import pytest
from openai import AsyncOpenAI, BadRequestError, NotFoundError
from transformers import AutoTokenizer

from shared.model_store import prepare_model, resolve_model
from tests.conftest import model_cache_dir
from tests.integration.conftest import MODEL


@pytest.fixture
def client(cluster) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{cluster.endpoints.http_url}/v1", api_key="unused", max_retries=0, timeout=120)


async def test_models_lists_the_served_model(client) -> None:
    models = await client.models.list()
    assert MODEL in [m.id for m in models.data]


# Answers must come from the model, not the gateway's caches (other tests ask similar things).
NO_CACHE = {"Cache-Control": "no-cache"}


async def test_chat_completion_answers_from_the_real_model(client) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=16,
        temperature=0,
        extra_headers=NO_CACHE,
    )
    reply = raw.parse()
    assert raw.headers["x-request-id"] == reply.id
    assert raw.headers["x-lgc-cache"] == "bypass"
    assert reply.object == "chat.completion"
    assert "Paris" in reply.choices[0].message.content  # SmolLM2 knows this one (greedy)
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens > 0 and reply.usage.prompt_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


async def test_completion_respects_max_tokens(client) -> None:
    reply = await client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=5, temperature=0)
    assert reply.object == "text_completion"
    assert reply.usage.completion_tokens <= 5
    assert reply.choices[0].finish_reason == "length"
    assert reply.choices[0].text.strip()


async def test_chat_streaming_with_usage(client) -> None:
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count from one to five."}],
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage, chunks = "", None, None, 0
    async for chunk in stream:
        chunks += 1
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert chunks >= 3  # streamed, not one blob
    assert text.strip()
    assert finish in ("stop", "length")
    assert usage is not None and 0 < usage.completion_tokens <= 24


async def test_greedy_stream_equals_greedy_plain(client) -> None:
    messages = [{"role": "user", "content": "Name a color."}]
    plain = await client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=12, temperature=0, extra_headers=NO_CACHE
    )
    stream = await client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=12, temperature=0, stream=True, extra_headers=NO_CACHE
    )
    streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert streamed == plain.choices[0].message.content


async def test_frequency_and_presence_penalties_reach_the_model(client) -> None:
    # Counting greedily repeats ", " after every number; penalties on the answer's own tokens,
    # passed gateway -> Kafka -> batcher -> worker, make that costlier and change the answer.
    async def count(**penalties: float) -> str:
        reply = await client.completions.create(
            model=MODEL, prompt="1, 2, 3, 4,", max_tokens=16, temperature=0, extra_headers=NO_CACHE, **penalties
        )
        return reply.choices[0].text

    plain = await count()
    assert plain.count(",") >= 5
    penalised = await count(frequency_penalty=2.0, presence_penalty=1.0)
    assert penalised != plain and penalised.count(",") < plain.count(",")
    assert await count(frequency_penalty=0.0) == plain  # neutral values change nothing


async def test_logit_bias_reaches_the_model_and_unknown_token_ids_are_400(client) -> None:
    async def first_words(**extra: object) -> str:
        reply = await client.completions.create(
            model=MODEL, prompt="The capital of France is", max_tokens=3, temperature=0, extra_headers=NO_CACHE,
            **extra,
        )
        return reply.choices[0].text

    assert "Paris" in await first_words()
    # The served model's own token id, from its tokenizer (the cluster's converted folder).
    tokenizer = AutoTokenizer.from_pretrained(prepare_model(resolve_model("smollm2"), model_cache_dir()).path)
    paris = tokenizer(" Paris", add_special_tokens=False)["input_ids"][0]
    banned = await first_words(logit_bias={str(paris): -100})
    assert "Paris" not in banned
    with pytest.raises(BadRequestError) as err:
        await first_words(logit_bias={"1000000": 5})
    assert "logit_bias" in str(err.value.body)


async def test_chat_logprobs_come_from_the_model_streamed_or_not(client) -> None:
    # gateway -> Kafka -> batcher -> worker and back: per-token log probabilities of the real model,
    # on the non-streaming answer (carried on deltas of no text before the final record) and on the
    # stream's chunks, the same either way (greedy).
    request = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 8,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 3,
    }
    raw = await client.chat.completions.with_raw_response.create(**request)  # type: ignore[call-overload]
    reply = raw.parse()
    assert raw.headers["x-lgc-cache"] == "bypass"  # cached answers have no log probabilities
    choice = reply.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    entries = choice.logprobs.content
    assert len(entries) == reply.usage.completion_tokens
    if choice.finish_reason == "length":
        assert "".join(e.token for e in entries) == choice.message.content
    for entry in entries:
        assert entry.logprob <= 0 and entry.bytes == list(entry.token.encode())
        assert len(entry.top_logprobs) == 3 and entry.top_logprobs[0].token == entry.token  # greedy
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob >= entry.top_logprobs[2].logprob
    stream = await client.chat.completions.create(**request, stream=True)  # type: ignore[call-overload]
    streamed = [e async for chunk in stream for c in chunk.choices if c.logprobs for e in c.logprobs.content or ()]
    assert [e.token for e in streamed] == [e.token for e in entries]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in entries], abs=1e-4)
    # Not asked: null, as OpenAI answers.
    plain = await client.chat.completions.create(**{**request, "logprobs": False, "top_logprobs": None})  # type: ignore[call-overload]
    assert plain.choices[0].logprobs is None


async def test_completion_logprobs_in_the_legacy_shape(client) -> None:
    reply = await client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=4, temperature=0, logprobs=2,
    )
    logprobs = reply.choices[0].logprobs
    assert logprobs is not None and len(logprobs.tokens) == reply.usage.completion_tokens == 4
    assert "".join(logprobs.tokens) == reply.choices[0].text
    assert all(lp <= 0 for lp in logprobs.token_logprobs)
    assert all(len(top) == 2 and token in top for token, top in zip(logprobs.tokens, logprobs.top_logprobs))
    offsets = [0]
    for token in logprobs.tokens[:-1]:
        offsets.append(offsets[-1] + len(token))
    assert logprobs.text_offset == offsets
    with pytest.raises(BadRequestError):
        await client.completions.create(model=MODEL, prompt="x", max_tokens=1, logprobs=21)


async def test_echo_with_logprobs_scores_prompts_as_lm_eval_asks(client) -> None:
    # lm-evaluation-harness's `local-completions` loglikelihood request: a list of prompts, echo,
    # logprobs 1, one token. The prompt tokens' log probabilities come from the real model.
    tokenizer = AutoTokenizer.from_pretrained(prepare_model(resolve_model("smollm2"), model_cache_dir()).path)
    prompts = ["The capital of France is Paris", "The capital of France is London"]
    reply = await client.completions.create(
        model=MODEL, prompt=prompts, echo=True, logprobs=1, max_tokens=1, temperature=0
    )
    scores = []
    for choice, prompt in zip(reply.choices, prompts, strict=True):
        assert choice.text.startswith(prompt)
        logprobs = choice.logprobs
        assert logprobs is not None and logprobs.token_logprobs is not None and logprobs.top_logprobs is not None
        prompt_ids = tokenizer(prompt)["input_ids"]
        assert "".join(logprobs.tokens[: len(prompt_ids)]) == prompt
        assert len(logprobs.tokens) == len(prompt_ids) + 1  # and the one generated token
        assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
        assert all(lp is not None and lp <= 0 for lp in logprobs.token_logprobs[1:])
        scores.append(logprobs.token_logprobs[len(prompt_ids) - 1])  # the last word's token
    assert scores[0] > scores[1]  # SmolLM2 knows the capital of France
    assert reply.usage.prompt_tokens == sum(len(tokenizer(p)["input_ids"]) for p in prompts)
    # max_tokens 0: the prompt alone, scored the same (vLLM's echo without generation).
    alone = await client.completions.create(model=MODEL, prompt=prompts[0], echo=True, logprobs=1, max_tokens=0)
    assert alone.choices[0].text == prompts[0] and alone.choices[0].logprobs is not None
    assert alone.choices[0].logprobs.tokens == reply.choices[0].logprobs.tokens[:-1]
    expected = reply.choices[0].logprobs.token_logprobs[:-1]
    assert alone.choices[0].logprobs.token_logprobs == pytest.approx(expected, abs=1e-3)


async def test_token_id_prompts_as_lm_eval_sends_them_by_default(client) -> None:
    # lm-evaluation-harness's `local-completions` with `tokenized_requests=True` (its default):
    # the prompts as token ids of the model's tokenizer. Scored and continued as the same text is.
    tokenizer = AutoTokenizer.from_pretrained(prepare_model(resolve_model("smollm2"), model_cache_dir()).path)
    prompts = ["The capital of France is Paris", "The capital of France is London"]
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    as_text = await client.completions.create(
        model=MODEL, prompt=prompts, echo=True, logprobs=1, max_tokens=1, temperature=0
    )
    as_ids = await client.completions.create(
        model=MODEL, prompt=ids, echo=True, logprobs=1, max_tokens=1, temperature=0
    )
    for by_text, by_ids, prompt in zip(as_text.choices, as_ids.choices, prompts, strict=True):
        assert by_ids.text == by_text.text and by_ids.text.startswith(prompt)  # echo: the worker's decoding
        assert by_ids.logprobs is not None and by_text.logprobs is not None
        assert by_ids.logprobs.tokens == by_text.logprobs.tokens
        assert by_ids.logprobs.token_logprobs[0] is None
        assert by_ids.logprobs.token_logprobs[1:] == pytest.approx(by_text.logprobs.token_logprobs[1:], abs=1e-3)
    assert as_ids.usage.prompt_tokens == sum(len(i) for i in ids)
    # Generation: greedy from the ids is greedy from the text; streamed, the echo comes first.
    question = tokenizer("The capital of France is")["input_ids"]
    by_text = await client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=6, temperature=0, extra_headers=NO_CACHE
    )
    by_ids = await client.completions.create(model=MODEL, prompt=question, max_tokens=6, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text and "Paris" in by_ids.choices[0].text
    stream = await client.completions.create(
        model=MODEL, prompt=question, max_tokens=6, temperature=0, echo=True, stream=True
    )
    chunks = [chunk.choices[0].text async for chunk in stream if chunk.choices]
    assert chunks[0] == "The capital of France is"
    assert "".join(chunks) == "The capital of France is" + by_text.choices[0].text
    # An id beyond the vocabulary: the worker refuses it, with the reason.
    with pytest.raises(BadRequestError) as err:
        await client.completions.create(model=MODEL, prompt=[1, len(tokenizer) + 5], max_tokens=1)
    assert "vocabulary" in str(err.value.body)


async def test_prompt_logprobs_with_ranks_from_the_real_model(client) -> None:
    # vLLM's `prompt_logprobs` (extra_body), on completions and on chat; the same values as echo's.
    prompt = "The capital of France is Paris"
    scored = await client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=1, temperature=0, extra_body={"prompt_logprobs": 2}
    )
    echoed = await client.completions.create(model=MODEL, prompt=prompt, echo=True, logprobs=1, max_tokens=0)
    positions = scored.choices[0].model_extra["prompt_logprobs"]  # type: ignore[index]
    assert echoed.choices[0].logprobs is not None
    listed = echoed.choices[0].logprobs
    assert positions[0] is None and len(positions) == len(listed.tokens) == scored.usage.prompt_tokens
    for position, token, value in zip(positions[1:], listed.tokens[1:], listed.token_logprobs[1:], strict=True):
        # The prompt token (as echo scores it, in another batch: within 1e-3), and the two most
        # likely tokens there, ranked 1 and 2; a prompt token among them has their rank.
        own = [e for e in position.values() if e["decoded_token"] == token and abs(e["logprob"] - value) < 1e-3]
        assert len(own) == 1 and own[0]["rank"] >= 1
        assert sorted(e["rank"] for e in position.values())[:2] == [1, 2]
        assert len(position) == (2 if own[0]["rank"] <= 2 else 3)
    assert any(e["rank"] > 2 for position in positions[1:] for e in position.values())  # not all the likeliest
    chat = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=1, extra_body={"prompt_logprobs": 0}
    )
    chat_positions = chat.model_extra["prompt_logprobs"]  # type: ignore[index]
    assert chat_positions[0] is None and len(chat_positions) == chat.usage.prompt_tokens  # after the template
    assert all(len(p) == 1 and next(iter(p.values()))["rank"] >= 1 for p in chat_positions[1:])


async def test_token_ids_from_the_real_model_whole_and_streamed(client) -> None:
    # vLLM's `return_token_ids` (extra_body): the prompt's ids as the model's tokenizer makes them
    # (after the chat template for chat), the answer's ids decoding to its text.
    tokenizer = AutoTokenizer.from_pretrained(prepare_model(resolve_model("smollm2"), model_cache_dir()).path)
    prompt = "The capital of France is"
    whole = await client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=6, temperature=0, extra_body={"return_token_ids": True}
    )
    choice = whole.choices[0]
    assert choice.model_extra["prompt_token_ids"] == tokenizer(prompt)["input_ids"]  # type: ignore[index]
    ids = choice.model_extra["token_ids"]  # type: ignore[index]
    assert len(ids) == whole.usage.completion_tokens and tokenizer.decode(ids) == choice.text
    stream = await client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=6, temperature=0, stream=True, extra_body={"return_token_ids": True}
    )
    chunks = [chunk.choices[0] async for chunk in stream if chunk.choices]
    assert chunks[0].model_extra["prompt_token_ids"] == tokenizer(prompt)["input_ids"]  # type: ignore[index]
    assert [t for c in chunks for t in c.model_extra["token_ids"]] == ids  # type: ignore[index]
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    chat = await client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=8, temperature=0, extra_body={"return_token_ids": True}
    )
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    expected_prompt = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert chat.model_extra["prompt_token_ids"] == expected_prompt  # type: ignore[index]
    assert len(expected_prompt) == chat.usage.prompt_tokens
    chat_ids = chat.choices[0].model_extra["token_ids"]  # type: ignore[index]
    assert tokenizer.decode(chat_ids, skip_special_tokens=True) == chat.choices[0].message.content


async def test_vllm_ways_to_stop_reach_the_model(client) -> None:
    # vLLM's extensions as its own clients send them (extra_body): the end of sequence forced by a
    # logit bias is ignored, or held off for min_tokens; a stop token id ends the answer.
    tokenizer = AutoTokenizer.from_pretrained(prepare_model(resolve_model("smollm2"), model_cache_dir()).path)
    eos = {str(tokenizer.eos_token_id): 100}

    async def complete(max_tokens: int, **extra: object):
        return await client.completions.create(
            model=MODEL, prompt="1, 2, 3, 4,", max_tokens=max_tokens, temperature=0, extra_headers=NO_CACHE,
            logit_bias=eos if extra.pop("force_eos", False) else None, extra_body=extra,
        )

    ended = await complete(6, force_eos=True)
    assert (ended.usage.completion_tokens, ended.choices[0].finish_reason) == (1, "stop")
    ignored = await complete(6, force_eos=True, ignore_eos=True)
    assert (ignored.usage.completion_tokens, ignored.choices[0].finish_reason) == (6, "length")
    delayed = await complete(6, force_eos=True, min_tokens=3)
    assert (delayed.usage.completion_tokens, delayed.choices[0].finish_reason) == (4, "stop")
    comma = tokenizer(",", add_special_tokens=False)["input_ids"][0]
    stopped = await complete(8, stop_token_ids=[comma])
    assert (stopped.choices[0].text, stopped.choices[0].finish_reason) == (" 5", "stop")
    with pytest.raises(BadRequestError) as err:
        await complete(4, min_tokens=5)
    assert "min_tokens" in str(err.value.body)


async def test_sse_ends_with_done(cluster) -> None:
    body = {"model": MODEL, "stream": True, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}
    async with httpx.AsyncClient(timeout=120) as http:
        async with http.stream("POST", f"{cluster.endpoints.http_url}/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    assert len(lines) >= 2


async def test_unknown_model_is_404(client) -> None:
    with pytest.raises(NotFoundError) as err:
        await client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert err.value.body["code"] == "model_not_found"


async def test_several_choices_from_the_real_model(client) -> None:
    messages = [{"role": "user", "content": "Write a word."}]
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=messages, n=3, temperature=0.9, seed=5, max_tokens=8
    )
    reply = raw.parse()
    assert raw.headers["x-lgc-cache"] == "bypass"  # a cached answer is one choice
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert all(c.finish_reason in ("stop", "length") for c in reply.choices)
    # Each choice's own token count is not in the answer: summed, they lie between 3 (one token
    # each at least) and 3 * max_tokens.
    assert 3 <= reply.usage.completion_tokens <= 24
    assert reply.usage.prompt_tokens > 0  # the prompt once

    stream = await client.chat.completions.create(
        model=MODEL, messages=messages, n=2, temperature=0.9, max_tokens=8, stream=True
    )
    indices, finished = set(), set()
    async for chunk in stream:
        for choice in chunk.choices:
            indices.add(choice.index)
            if choice.finish_reason is not None:
                finished.add(choice.index)
    assert indices == {0, 1} and finished == {0, 1}


async def test_several_prompts_with_echo_from_the_real_model(client) -> None:
    prompts = ["The capital of France is", "One, two, three,"]
    singles = [
        await client.completions.create(model=MODEL, prompt=p, max_tokens=6, temperature=0, extra_headers=NO_CACHE)
        for p in prompts
    ]
    reply = await client.completions.create(
        model=MODEL, prompt=prompts, n=2, max_tokens=6, temperature=0, echo=True, extra_headers=NO_CACHE
    )
    # Choice i * n + j continues prompt i, after the prompt itself (echo).
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    for choice in reply.choices:
        prompt = prompts[choice.index // 2]
        assert choice.text.startswith(prompt) and len(choice.text) > len(prompt)
    assert "Paris" in reply.choices[0].text[len(prompts[0]) :]  # greedy, as alone
    # Each prompt counted once, as the same prompt alone counts it.
    assert reply.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in singles)
    assert 4 <= reply.usage.completion_tokens <= 4 * 6


async def test_more_choices_than_the_gateway_allows_is_400(client) -> None:
    with pytest.raises(BadRequestError) as err:
        # The gateway's default limit (LGC_GATEWAY_MAX_CHOICES) is 16.
        await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], n=17)
    assert err.value.body["param"] == "n"  # type: ignore[index]
