"""Kafka-direct load producer: upstream-style traffic that never touches the gateway.

It writes GenerationRequests (shared/records.py) straight to `<prefix>.requests.<priority>`, with
`reply_to` set to a reply topic of its own (created at start), and reads the batchers' ReplyEvents
from it: token deltas, then one final event or an error. The same scenarios, arrival schedule,
report and chart as the HTTP load generator (load_generator.py); TTFT and inter-token latency are
measured from produce to the arrival of the deltas, end-to-end to the final event. Cache status is
`n/a`: the caches live in the gateway.

Usage:

    LGC_KAFKA_BOOTSTRAP=127.0.0.1:19092 .venv/bin/python load-tests/kafka_load.py \\
        --scenario load-tests/scenarios/steady.json --model smollm2 --out load-tests/out
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path

from aiokafka.errors import KafkaError

from shared.kafka_clients import make_consumer, make_producer
from shared.records import (
    ChatMessage,
    GenerationParams,
    GenerationRequest,
    Priority,
    ReplyEvent,
    ReplyKind,
)
from shared.settings import ClusterSettings
from shared.topics import Topics, TopicSpec, ensure_topics

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load_generator import (  # noqa: E402 (a sibling script, not a package)
    RequestOutcome,
    RequestPlan,
    Scenario,
    build_report,
    load_scenario,
    plan_requests,
    run_schedule,
    write_outputs,
)

__all__ = ["KafkaLoad", "run_kafka"]


class KafkaLoad:
    """Producer, reply consumer, and one queue of ReplyEvents per request in flight."""

    def __init__(self, settings: ClusterSettings, model: str, scenario: Scenario) -> None:
        self.settings = settings
        self.model = model
        self.scenario = scenario
        self.topics = Topics.from_settings(settings)
        self.reply_topic = self.topics.replies(f"loadgen-{uuid.uuid4().hex[:10]}")
        self._producer = make_producer(settings, client_id="lgc-kafka-load")
        self._consumer = make_consumer(settings, self.reply_topic, client_id="lgc-kafka-load", group_id=None)
        self._waiting: dict[str, asyncio.Queue[ReplyEvent]] = {}
        self._reader: asyncio.Task[None] | None = None
        self.unparseable = 0

    async def start(self) -> None:
        await ensure_topics(self.settings, [TopicSpec(self.reply_topic, 1, self.settings.topic_replication_factor)])
        await self._producer.start()
        await self._consumer.start()
        self._reader = asyncio.create_task(self._read(), name="reply-reader")

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await self._consumer.stop()
        await self._producer.stop()

    async def _read(self) -> None:
        async for record in self._consumer:
            try:
                event = ReplyEvent.from_bytes(record.value)
            except (ValueError, TypeError):
                # Safe: not ours to judge; counted in the report, the load run goes on.
                self.unparseable += 1
                continue
            queue = self._waiting.get(event.request_id)
            if queue is not None:
                queue.put_nowait(event)

    async def send(self, plan: RequestPlan, outcome: RequestOutcome) -> None:
        scenario = self.scenario
        request = GenerationRequest(
            id=f"kload-{uuid.uuid4().hex}",
            priority=Priority(plan.priority),
            tenant="kafka-load",
            model=self.model,
            messages=(ChatMessage(role="user", content=plan.prompt),),
            params=GenerationParams(max_new_tokens=scenario.max_tokens, temperature=plan.temperature),
            stream=True,
            reply_to=self.reply_topic,
            deadline=time.time() + scenario.timeout_s,
        )
        queue: asyncio.Queue[ReplyEvent] = asyncio.Queue()
        self._waiting[request.id] = queue
        outcome.cache = "n/a"
        start = time.perf_counter()
        last: float | None = None
        seen: set[int] = set()
        try:
            await self._producer.send_and_wait(self.topics.requests(request.priority), request.to_bytes(), key=request.id)
            while True:
                remaining = scenario.timeout_s - (time.perf_counter() - start)
                event = await asyncio.wait_for(queue.get(), max(0.001, remaining))
                if event.seq in seen:
                    continue  # a duplicate after a batcher retry
                seen.add(event.seq)
                now = time.perf_counter()
                if event.kind is ReplyKind.DELTA and event.text:
                    if outcome.ttft_s is None:
                        outcome.ttft_s = now - start
                    elif last is not None:
                        outcome.inter_token_s.append(now - last)
                    last = now
                elif event.kind is ReplyKind.FINAL:
                    outcome.ok = True
                    outcome.e2e_s = now - start
                    outcome.output_tokens = event.usage.completion_tokens if event.usage else 0
                    return
                elif event.kind is ReplyKind.ERROR:
                    outcome.error = f"error_{event.error.code.value if event.error else 'unknown'}"
                    return
        except TimeoutError:
            # Counted, not raised: the report shows requests that got no terminal event in time.
            outcome.error = "timeout"
        except KafkaError as exc:
            # Counted, not raised: a failed produce is an error of this request only.
            outcome.error = type(exc).__name__
        finally:
            self._waiting.pop(request.id, None)


async def run_kafka(
    scenario: Scenario, settings: ClusterSettings, model: str, *, progress: bool = True
) -> tuple[list[RequestOutcome], float, str]:
    """Run a scenario over Kafka; returns the outcomes, the elapsed time and the reply topic."""
    load = KafkaLoad(settings, model, scenario)
    await load.start()
    try:
        outcomes, elapsed = await run_schedule(
            plan_requests(scenario), scenario.concurrency, load.send, progress=progress, label=f"{scenario.name} (kafka)"
        )
    finally:
        await load.stop()
    return outcomes, elapsed, load.reply_topic


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", required=True, help="a scenario JSON file (load-tests/scenarios/*.json)")
    parser.add_argument("--model", default="smollm2", help="model name the workers serve")
    parser.add_argument("--time-scale", type=float, default=1.0, help="multiply every phase's duration")
    parser.add_argument("--out", default="load-tests/out")
    parser.add_argument("--no-charts", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    try:
        scenario = load_scenario(Path(args.scenario))
    except (ValueError, TypeError, OSError, json.JSONDecodeError) as exc:
        parser.error(str(exc))
    scenario = Scenario(**{**scenario.__dict__, "name": f"{scenario.name}-kafka"}).scaled(args.time_scale)
    settings = ClusterSettings()  # LGC_KAFKA_BOOTSTRAP, LGC_TOPIC_PREFIX, ...
    outcomes, elapsed, reply_topic = asyncio.run(run_kafka(scenario, settings, args.model, progress=not args.no_progress))
    report = build_report(
        scenario, outcomes, elapsed, target=settings.kafka_bootstrap, transport="kafka", reply_topic=reply_topic
    )
    path = write_outputs(report, outcomes, Path(args.out), charts=not args.no_charts)
    print(json.dumps({"report": str(path), **report["overall"]}, indent=2))
    return 0 if report["overall"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
