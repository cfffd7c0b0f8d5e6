"""load-tests/fault_suite.py: how the client side classifies the end of a request, against a real
HTTP server on loopback that answers the way a cluster may (the suite's pass/fail rests on it).

The suite itself (minutes, whole clusters) runs with `make fault-suite`, outside the test run."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "load-tests" / "fault_suite.py"


def _load_suite():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("fault_suite", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("fault_suite", module)
    spec.loader.exec_module(module)
    return module


suite = _load_suite()

def _http(status: str, body: bytes, content_type: str = "application/json", extra: str = "") -> bytes:
    head = f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


def _completion(text: str, tokens: int, finish: str | None = "length") -> bytes:
    return json.dumps({
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
        "usage": {"prompt_tokens": 3, "completion_tokens": tokens, "total_tokens": 3 + tokens},
    }).encode()


def _sse(*events: dict | str, done: bool = True) -> bytes:
    lines = [f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events]
    if done:
        lines.append("data: [DONE]\n\n")
    return "".join(lines).encode()


def _chunk(content: str | None = None, finish: str | None = None) -> dict:
    return {"choices": [{"index": 0, "delta": {"content": content} if content else {}, "finish_reason": finish}]}


def _usage(tokens: int) -> dict:
    return {"choices": [], "usage": {"completion_tokens": tokens}}


@asynccontextmanager
async def _server(raw: bytes | None) -> AsyncIterator[str]:
    """A one-shot HTTP server: reads the request, writes `raw` and closes (None: never answers)."""
    never = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lengths = [int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")]
        await reader.readexactly(lengths[0] if lengths else 0)
        if raw is None:
            await never.wait()
        writer.write(raw)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        never.set()
        server.close()


async def _send(raw: bytes | None, *, stream: bool, backend: str = "simulated"):  # type: ignore[no-untyped-def]
    config = suite.SuiteConfig(backend=backend, max_tokens=2, deadline_s=0.3, margin_s=0.2)
    async with _server(raw) as url:
        client = suite.LoadClient(url, "simulated", config, origin=0.0)
        try:
            return await client.send("load", stream=stream)
        finally:
            await client.close()


async def test_a_full_answer_is_ok_and_its_text_is_checked() -> None:
    record = await _send(_http("200 OK", _completion("tok0 tok1", 2)), stream=False)
    assert (record.outcome, record.text_ok, record.tokens) == ("ok", True, 2)
    wrong = await _send(_http("200 OK", _completion("tok0 tok0", 2)), stream=False)
    assert (wrong.outcome, wrong.text_ok) == ("ok", False)  # a full answer with broken text is flagged


async def test_an_error_object_is_an_explicit_error_with_its_code_and_retry_after() -> None:
    body = json.dumps({"error": {"message": "no worker", "type": "service_unavailable", "code": "no_workers"}}).encode()
    record = await _send(_http("503 Service Unavailable", body, extra="retry-after: 1\r\n"), stream=False)
    assert (record.outcome, record.code, record.http_status, record.retry_after_s) == ("error", "no_workers", 503, 1.0)


@pytest.mark.parametrize(
    "raw",
    [
        _http("500 Internal Server Error", b"oops", content_type="text/plain"),  # no error object
        _http("200 OK", _completion("", 0, finish=None)),  # 200 without a result
        _http("200 OK", b"{not json"),
    ],
)
async def test_anything_else_is_lost(raw: bytes) -> None:
    assert (await _send(raw, stream=False)).outcome == "lost"


async def test_a_stream_needs_its_end_and_done() -> None:
    full = _sse(_chunk("tok0"), _chunk(" tok1"), _chunk(finish="length"), _usage(2))
    record = await _send(_http("200 OK", full, content_type="text/event-stream"), stream=True)
    assert (record.outcome, record.text_ok, record.first_token) == ("ok", True, True)
    cut = _sse(_chunk("tok0"), done=False)  # the connection ends mid-stream
    assert (await _send(_http("200 OK", cut, content_type="text/event-stream"), stream=True)).outcome == "lost"


async def test_an_sse_error_event_is_an_explicit_error() -> None:
    error = {"error": {"message": "the worker failed", "type": "server_error", "code": "worker_failed"}}
    raw = _http("200 OK", _sse(_chunk("tok0"), error), content_type="text/event-stream")
    record = await _send(raw, stream=True)
    assert (record.outcome, record.code) == ("error", "worker_failed")


async def test_no_answer_by_deadline_plus_margin_is_hung() -> None:
    record = await _send(None, stream=True)
    assert record.outcome == "hung"
    assert record.ended_s is not None


def test_every_default_scenario_has_a_fault() -> None:
    assert set(suite.DEFAULT_SCENARIOS) <= set(suite.FAULTS)
    assert all(suite.FAULTS[name].description for name in suite.SCENARIOS)
