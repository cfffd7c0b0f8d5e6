"""LocalActuator against the real Redis: the control channel the launcher's reconciler reads."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from services.scaler.actuators import DryRunActuator, LocalActuator
from shared.launcher.worker_reconciler import current_workers_key, desired_workers_channel, desired_workers_key


async def test_apply_writes_the_desired_count_and_announces_it(redis_url: str, unique_prefix: str) -> None:
    client = aioredis.from_url(redis_url)
    listener = aioredis.from_url(redis_url)
    pubsub = listener.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(desired_workers_channel(unique_prefix))
    actuator = LocalActuator(client, prefix=unique_prefix)
    try:
        assert await actuator.current() is None  # no launcher has said what runs
        await actuator.apply(3)
        assert await client.get(desired_workers_key(unique_prefix)) == b"3"
        message = await asyncio.wait_for(_next_message(pubsub), 5)
        assert message["data"] == b"3"

        await client.set(current_workers_key(unique_prefix), 2)
        assert await actuator.current() == 2
        await client.set(current_workers_key(unique_prefix), "garbage")
        assert await actuator.current() is None
    finally:
        await pubsub.aclose()
        await listener.aclose()
        await actuator.close()


async def _next_message(pubsub) -> dict:
    while True:
        message = await pubsub.get_message(timeout=1.0)
        if message is not None:
            return message


async def test_dry_run_knows_and_changes_nothing() -> None:
    actuator = DryRunActuator()
    assert actuator.name == "dry-run" and await actuator.current() is None
    await actuator.apply(5)
    await actuator.close()
