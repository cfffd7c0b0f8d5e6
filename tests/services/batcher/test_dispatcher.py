"""The batcher's translation of a request in flight into the worker API's WorkItem."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition

from services.batcher.dispatcher import to_work_item
from services.batcher.request_state import RequestState
from services.worker.proto_convert import work_item_from_proto
from shared.records import GenerationParams, GenerationRequest, Priority


def _state(params: GenerationParams, **progress: object) -> RequestState:
    request = GenerationRequest(id="req-1", model="m", prompt="Tell me", params=params)
    return RequestState(request, Priority.NORMAL, TopicPartition("lgc.requests.normal", 0), 7, **progress)  # type: ignore[arg-type]


def test_every_sampling_parameter_reaches_the_worker_as_it_was_sent() -> None:
    params = GenerationParams(
        max_new_tokens=40, temperature=0.5, top_p=0.9, top_k=12, stop=("END",), seed=11,
        repetition_penalty=1.25, presence_penalty=0.5, frequency_penalty=-1.5, logit_bias={50256: -100.0, 7: 2.5},
    )
    item = work_item_from_proto(to_work_item(_state(params)))
    sent = item.params
    assert (sent.max_new_tokens, sent.top_k, sent.stop, sent.seed) == (40, 12, ("END",), 11)
    # Float32 on the wire: these values are exact in binary, so they come back equal.
    assert (sent.temperature, sent.repetition_penalty, sent.presence_penalty, sent.frequency_penalty) == (
        0.5, 1.25, 0.5, -1.5,
    )
    assert sent.logit_bias == ((7, 2.5), (50256, -100.0))
    assert sent.top_p == pytest.approx(0.9)
    assert item.prompt == "Tell me" and item.continuation == ""


def test_a_retry_carries_the_text_already_delivered() -> None:
    item = work_item_from_proto(to_work_item(_state(GenerationParams(max_new_tokens=10), text="Once", tokens=2)))
    assert (item.continuation, item.continuation_tokens, item.remaining_tokens) == ("Once", 2, 8)
    assert item.params.seed is None and item.params.presence_penalty == 0.0 and item.params.logit_bias == ()
