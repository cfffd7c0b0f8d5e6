"""Every service of the running cluster exposes its metrics; the guardian's check API answers."""

from __future__ import annotations

import httpx


async def test_every_service_exports_lgc_metrics(cluster) -> None:
    urls = cluster.endpoints.metrics_urls
    assert {"gateway", "batcher", "worker-0", "guardian", "scaler"} <= set(urls)
    async with httpx.AsyncClient(timeout=10) as http:
        for name, url in urls.items():
            response = await http.get(url)
            assert response.status_code == 200, name
            service = name.split("-")[0]
            assert f"lgc_{service}_" in response.text, f"{name} exports no lgc_{service}_* metric"


async def test_every_service_is_ready(cluster) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        for name, url in cluster.endpoints.metrics_urls.items():
            response = await http.get(url.replace("/metrics", "/ready"))
            assert response.status_code == 200, name


async def test_guardian_check_api_finds_pii(cluster) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(
            cluster.endpoints.guard_check_url,
            json={"text": "Mail me at jane.doe@example.com", "kind": "response", "tenant": "t1"},
        )
        assert response.status_code == 200, response.text
        verdict = response.json()
        assert verdict["action"] in ("redact", "flag", "block")
        assert any(c["category"].startswith("pii") for c in verdict["categories"])
        bad = await http.post(cluster.endpoints.guard_check_url, json={"kind": "response"})
        assert 400 <= bad.status_code < 500
