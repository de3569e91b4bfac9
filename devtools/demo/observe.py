"""The demo's HTTP views: the sandbox's control API and the processes' /metrics (adapters)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from devtools.demo.report import IngressCounts, metric_totals, parse_ingress_metrics

if TYPE_CHECKING:
    from collections.abc import Mapping

    import aiohttp


class ControlError(RuntimeError):
    """The sandbox's control API refused a request."""


class SandboxControl:
    """`/_sandbox/...`: scenarios, chaos, and what the platform delivered (docs/sandbox.md)."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self._session = session
        self._base = base_url.rstrip("/") + "/_sandbox"

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        async with self._session.request(method, f"{self._base}/{path}", **kwargs) as response:
            body = await response.json()
            if response.status >= 300:
                raise ControlError(f"{method} /_sandbox/{path}: {response.status} {body}")
            return body

    async def set_chaos(
        self, *, query_latency: float, query_error_rate: float, query_error_code: int = 113
    ) -> None:
        await self._call(
            "PUT",
            "chaos",
            json={
                "query_latency": query_latency,
                "query_error_rate": query_error_rate,
                "query_error_code": query_error_code,
            },
        )

    async def queue_faults(self, faults: list[dict[str, Any]]) -> int:
        """One-shot disturbances of the next platform calls; returns how many are queued."""
        answer = await self._call("POST", "faults", json={"faults": faults})
        return int(answer["queued"])

    async def clear_faults(self) -> None:
        await self._call("DELETE", "faults")

    async def forge(self, mch_id: str, mch_order: str, changes: dict[str, str]) -> None:
        """One notification for the order, `changes` applied, signed with a wrong key."""
        await self._call(
            "POST", "forge", json={"mch_id": mch_id, "mch_order": mch_order, "changes": changes}
        )

    async def payments(self, since: int, limit: int = 1000) -> tuple[list[dict[str, Any]], int]:
        """One page of the ledger (every payment taken, in order) after `since`, and where the
        next page starts."""
        page = await self._call("GET", "payments", params={"since": since, "limit": limit})
        return page["payments"], int(page["next"])

    async def set_scenario(self, mch_id: str, mch_order: str, scenario: dict[str, Any]) -> None:
        await self._call(
            "POST", "scenarios", json={"mch_id": mch_id, "mch_order": mch_order, **scenario}
        )

    async def order(self, mch_id: str, mch_order: str) -> dict[str, Any]:
        """One order as the platform holds it, with its notifications and delivery tries."""
        answer: dict[str, Any] = await self._call(
            "GET", "order", params={"mch_id": mch_id, "mch_order": mch_order}
        )
        return answer

    async def stats(self) -> dict[str, Any]:
        answer: dict[str, Any] = await self._call("GET", "stats")
        return answer

    async def deliveries(self, since: int, limit: int = 1000) -> tuple[list[dict[str, Any]], int]:
        """One page of delivery attempts after `since`, and where the next page starts."""
        page = await self._call("GET", "deliveries", params={"since": since, "limit": limit})
        return page["deliveries"], int(page["next"])


async def ingress_counts(session: aiohttp.ClientSession, ingress_url: str) -> IngressCounts:
    async with session.get(f"{ingress_url.rstrip('/')}/metrics") as response:
        response.raise_for_status()
        return parse_ingress_metrics(await response.text())


async def scrape(
    session: aiohttp.ClientSession, urls: Mapping[str, str]
) -> dict[str, dict[str, float]]:
    """Every process's /metrics (`Pipeline.metrics`), reduced by `metric_totals`."""
    found: dict[str, dict[str, float]] = {}
    for name, url in urls.items():
        async with session.get(url) as response:
            response.raise_for_status()
            found[name] = metric_totals(await response.text())
    return found
