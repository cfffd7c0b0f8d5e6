"""Property-based tests of record parsing: whatever bytes arrive on a topic, `Record.from_bytes`
either returns a valid record or raises `pydantic.ValidationError` (which consumers dead-letter),
never anything else; and whatever it accepts survives a round trip unchanged."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from shared.records import RECORD_TYPES, Record

#: JSON values of any shape: what a misbehaving producer could write.
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=25,
)

#: One valid example of every record type, as JSON objects; fuzzing starts from them so that
#: generated records get past the outer shape and reach the field validators.
VALID: dict[str, dict[str, object]] = {
    "GenerationRequest": {"id": "req-1", "model": "m", "messages": [{"role": "user", "content": "hi"}]},
    "ReplyEvent": {"request_id": "req-1", "seq": 0, "kind": "delta", "text": "Hi"},
    "GenerationResult": {
        "request_id": "req-1",
        "tenant": "t",
        "model": "m",
        "priority": "normal",
        "prompt": "user: hi",
        "text": "Hi",
        "finish_reason": "stop",
        "usage": {"prompt_tokens": 1, "completion_tokens": 1},
    },
    "Cancel": {"request_id": "req-1"},
    "MetricsSnapshot": {"service": "worker", "instance": "worker-0"},
    "GuardianVerdict": {"request_id": "req-1", "tenant": "t", "action": "allow"},
    "ScalingDecision": {"current": 1, "desired": 2, "action": "scale_up", "reason": "lag"},
}

PROFILE = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _parse_or_refuse(record_type: type[Record], data: bytes) -> Record | None:
    """The only two outcomes a consumer may see."""
    try:
        record = record_type.from_bytes(data)
    except ValidationError:
        return None
    assert record_type.from_bytes(record.to_bytes()) == record  # what is accepted round-trips
    return record


def test_every_record_type_has_a_valid_example() -> None:
    assert set(VALID) == set(RECORD_TYPES)
    for name, example in VALID.items():
        assert _parse_or_refuse(RECORD_TYPES[name], json.dumps(example).encode()) is not None, name


@pytest.mark.parametrize("name", sorted(RECORD_TYPES))
@PROFILE
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_are_parsed_or_refused(name: str, data: bytes) -> None:
    _parse_or_refuse(RECORD_TYPES[name], data)


@pytest.mark.parametrize("name", sorted(RECORD_TYPES))
@PROFILE
@given(value=JSON_VALUES)
def test_arbitrary_json_is_parsed_or_refused(name: str, value: object) -> None:
    _parse_or_refuse(RECORD_TYPES[name], json.dumps(value).encode())


@pytest.mark.parametrize("name", sorted(RECORD_TYPES))
@PROFILE
@given(data=st.data())
def test_valid_records_with_one_field_changed_are_parsed_or_refused(name: str, data: st.DataObject) -> None:
    example = dict(VALID[name])
    field = data.draw(st.sampled_from(sorted(RECORD_TYPES[name].model_fields)), label="field")
    example[field] = data.draw(JSON_VALUES, label="value")
    record = _parse_or_refuse(RECORD_TYPES[name], json.dumps(example).encode())
    if record is not None and field != "v":
        # Nothing accepted is silently replaced: the field either holds what was sent (after
        # pydantic's documented coercions) or the record was refused.
        assert getattr(record, field) is not None or example[field] is None


@PROFILE
@given(version=st.integers(min_value=2, max_value=10**6))
def test_a_newer_record_version_is_refused(version: int) -> None:
    # Consumers refuse (dead-letter) versions they do not know rather than misread them.
    with pytest.raises(ValidationError):
        RECORD_TYPES["GenerationRequest"].from_bytes(json.dumps({**VALID["GenerationRequest"], "v": version}).encode())
