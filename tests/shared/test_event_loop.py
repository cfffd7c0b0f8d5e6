"""shared/event_loop.py: the configured loop is the one a service's main coroutine runs on."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from shared import event_loop
from shared.settings import ClusterSettings


async def _loop_type() -> type:
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop())


def test_uvloop_is_the_default() -> None:
    assert ClusterSettings().event_loop == "uvloop"
    assert event_loop.run(_loop_type(), loop="uvloop") is uvloop.Loop


def test_the_standard_loop_can_be_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LGC_EVENT_LOOP", "asyncio")
    settings = ClusterSettings()
    loop_type = event_loop.run(_loop_type(), loop=settings.event_loop)
    assert issubclass(loop_type, asyncio.BaseEventLoop)
    assert loop_type is not uvloop.Loop


def test_an_unknown_loop_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LGC_EVENT_LOOP", "trio")
    with pytest.raises(ValueError, match="event_loop"):
        ClusterSettings()


def test_the_result_and_errors_of_main_come_back() -> None:
    async def fails() -> None:
        raise LookupError("from main")

    assert event_loop.run(asyncio.sleep(0, result=7), loop="uvloop") == 7
    with pytest.raises(LookupError, match="from main"):
        event_loop.run(fails(), loop="uvloop")
