"""load-tests: the documented scenarios parse and plan what they say (priority mix, cache-hit mix,
arrival phases), bad scenarios are refused clearly, and a report with its chart can be written."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LOAD_TESTS = REPO / "load-tests"


def _load_generator():
    spec = importlib.util.spec_from_file_location("load_generator", LOAD_TESTS / "load_generator.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("load_generator", module)
    spec.loader.exec_module(module)
    return module


lg = _load_generator()


def _scenarios() -> dict:
    return {p.stem: lg.load_scenario(p) for p in sorted((LOAD_TESTS / "scenarios").glob("*.json"))}


def test_the_four_documented_scenarios_exist_and_parse() -> None:
    scenarios = _scenarios()
    assert {"steady", "burst", "priority_overload", "cache_heavy"} <= set(scenarios)
    readme = (LOAD_TESTS / "README.md").read_text()
    for name, scenario in scenarios.items():
        assert scenario.name == name
        assert scenario.description
        assert f"scenarios/{name}.json" in readme, f"{name} is not documented in load-tests/README.md"


def test_plans_follow_the_scenario() -> None:
    s = _scenarios()
    cache = lg.plan_requests(s["cache_heavy"])
    share = sum(p.repeated for p in cache) / len(cache)
    assert abs(share - s["cache_heavy"].cache_hit_ratio) < 0.1
    assert len({p.prompt for p in cache if p.repeated}) <= s["cache_heavy"].prompt_pool_size
    assert all(p.temperature == 0 for p in cache if p.repeated)
    assert len({p.prompt for p in cache if not p.repeated}) == sum(not p.repeated for p in cache)

    overload = lg.plan_requests(s["priority_overload"])
    low = sum(p.priority == "low" for p in overload) / len(overload)
    assert abs(low - 0.7) < 0.05
    gaps = {round(b.at_s - a.at_s, 6) for a, b in zip(overload, overload[1:])}
    assert gaps == {round(1 / s["priority_overload"].phases[0].rate_per_s, 6)}  # fixed rate

    burst = s["burst"]
    plans = lg.plan_requests(burst)
    quiet, peak = burst.phases[0], burst.phases[1]
    in_peak = sum(quiet.duration_s <= p.at_s < quiet.duration_s + peak.duration_s for p in plans)
    assert in_peak > 2 * sum(p.at_s < quiet.duration_s for p in plans)
    assert plans == lg.plan_requests(burst)  # same seed, same schedule


def test_time_scale_shortens_every_phase() -> None:
    steady = _scenarios()["steady"]
    short = steady.scaled(0.1)
    assert [p.duration_s for p in short.phases] == pytest.approx([p.duration_s * 0.1 for p in steady.phases])
    assert short.phases[0].rate_per_s == steady.phases[0].rate_per_s


@pytest.mark.parametrize(
    "change", [{"arrival": "bursty"}, {"priority_mix": {"urgent": 1}}, {"cache_hit_ratio": 1.5}, {"phases": ()}]
)
def test_bad_scenarios_are_refused(change: dict) -> None:
    with pytest.raises(ValueError):
        lg.Scenario(name="bad", **change)


def test_report_and_chart(tmp_path: Path) -> None:
    scenario = lg.Scenario(name="unit", priority_mix={"high": 1, "low": 1})
    outcomes = [
        lg.RequestOutcome(0, "high", 0.0, 0.0, ok=True, cache="miss", ttft_s=0.1, e2e_s=0.5, output_tokens=5,
                          inter_token_s=[0.1, 0.1, 0.1, 0.1]),
        lg.RequestOutcome(1, "low", 0.2, 0.05, ok=True, cache="hit-exact", ttft_s=0.01, e2e_s=0.02, output_tokens=1),
        lg.RequestOutcome(2, "low", 0.4, 0.0, error="http_429", cache="unknown"),
    ]
    report = lg.build_report(scenario, outcomes, 2.0)
    assert report["overall"]["ok"] == 2 and report["overall"]["errors"] == {"http_429": 1}
    assert report["overall"]["tpot_ms"]["p50"] == pytest.approx(100.0)
    assert report["by_priority"]["low"]["requests"] == 2
    assert set(report["by_cache"]) == {"miss", "hit-exact", "unknown"}
    path = lg.write_outputs(report, outcomes, tmp_path)
    assert json.loads(path.read_text())["scenario"] == "unit"
    png = (tmp_path / "unit.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
