"""The gateway's client of the guardian's synchronous check: shared.guardian_check's client, with
its one failure turned into the gateway's :class:`GuardianUnavailableError` (503, fail closed)."""

from __future__ import annotations

from shared.guardian_check import GuardianCheckClient, GuardianCheckError
from shared.records import GuardianVerdict

from services.gateway.errors import GuardianUnavailableError

__all__ = ["GuardianClient"]


class GuardianClient(GuardianCheckClient):
    """Checks texts with the guardian; every failure is a GuardianUnavailableError."""

    async def check(self, text: str, *, kind: str, tenant: str, request_id: str) -> GuardianVerdict:
        try:
            return await super().check(text, kind=kind, tenant=tenant, request_id=request_id)
        except GuardianCheckError as exc:
            raise GuardianUnavailableError(str(exc)) from exc
