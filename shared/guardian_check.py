"""Client of the guardian's synchronous check (`POST /v1/guard/check`), for the services that must
have a verdict before an answer leaves them: the gateway (blocking-mode tenants, cache replays
included) and the batcher (blocking-mode requests, whichever way they arrived).

Every failure — timeout, connection refused, a non-200 answer, a body that is not a
GuardianVerdict — is one :class:`GuardianCheckError`, so a caller has one thing to decide on: fail
closed (the default everywhere) or open.
"""

from __future__ import annotations

import logging

import httpx
from pydantic import ValidationError

from shared.records import GuardianVerdict

__all__ = ["GuardianCheckClient", "GuardianCheckError"]

log = logging.getLogger(__name__)


class GuardianCheckError(Exception):
    """No verdict: the guardian was unreachable, too slow, or answered with something else."""


class GuardianCheckClient:
    """Checks texts with the guardian, each call bounded by `timeout_s`."""

    def __init__(self, base_url: str, *, timeout_s: float) -> None:
        self._url = base_url.rstrip("/") + "/v1/guard/check"
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s))

    async def check(self, text: str, *, kind: str, tenant: str, request_id: str) -> GuardianVerdict:
        """The guardian's verdict; GuardianCheckError when there is none in time."""
        body = {"text": text, "kind": kind, "tenant": tenant, "request_id": request_id}
        try:
            response = await self._client.post(self._url, json=body)
        except httpx.HTTPError as exc:
            raise GuardianCheckError(
                f"The guardian could not judge the answer in time ({type(exc).__name__}); retry later."
            ) from exc
        if response.status_code != 200:
            log.warning("the guardian refused a check", extra={"status": response.status_code, "body": response.text[:500]})
            raise GuardianCheckError(f"The guardian answered {response.status_code}; retry later.")
        try:
            return GuardianVerdict.model_validate_json(response.content)
        except ValidationError as exc:
            raise GuardianCheckError("The guardian answered with something that is not a verdict.") from exc

    async def aclose(self) -> None:
        await self._client.aclose()
