"""A small asynchronous client for Heimdall's gateway API (`/v1/check`, `/v1/usage`,
`/v1/usage/batch`)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from .settings import Settings

JSON = dict[str, Any]


class Unavailable(Exception):
    """Heimdall did not give a decision: unreachable, timed out, a 5xx, or it refused the
    gateway token. The caller decides whether to fail closed or open."""


@dataclass(frozen=True)
class Decision:
    """A decision of `POST /v1/check`, as Heimdall sent it."""

    status: int
    body: JSON
    retry_after: str | None

    @property
    def allowed(self) -> bool:
        return bool(self.body.get("allowed"))

    @property
    def kind(self) -> str:
        return str(self.body.get("decision", ""))

    @property
    def message(self) -> str:
        return str(self.body.get("message", ""))

    def affordable(self) -> tuple[float | None, int | None]:
        """`max_affordable` as (cost, tokens); None where unlimited."""
        raw = self.body.get("max_affordable") or {}
        cost = raw.get("cost")
        tokens = raw.get("tokens")
        return (
            float(cost) if isinstance(cost, (int, float)) else None,
            int(tokens) if isinstance(tokens, int) else None,
        )


@dataclass(frozen=True)
class Sent:
    """What a usage post did: `rejected` lists the indexes Heimdall refused as invalid
    (they will never be accepted, so they are dropped), with its message for each."""

    accepted: int
    duplicates: int
    rejected: list[tuple[int, str]]


class HeimdallClient:
    """One HTTP client per event loop: httpx clients must not cross loops."""

    def __init__(self, settings: Settings, transport: httpx.AsyncBaseTransport | None = None):
        self.settings = settings
        self._transport = transport
        self._clients: dict[int, httpx.AsyncClient] = {}

    def _http(self) -> httpx.AsyncClient:
        loop = id(asyncio.get_running_loop())
        client = self._clients.get(loop)
        if client is None or client.is_closed:
            headers = {"content-type": "application/json"}
            if self.settings.gateway_token:
                headers["authorization"] = f"Bearer {self.settings.gateway_token}"
            client = httpx.AsyncClient(
                base_url=self.settings.url,
                headers=headers,
                timeout=self.settings.timeout,
                transport=self._transport,
            )
            self._clients = {loop: client}
        return client

    async def _post(self, path: str, body: JSON) -> httpx.Response:
        try:
            return await self._http().post(path, json=body)
        except httpx.HTTPError as e:
            raise Unavailable(f"Heimdall at {self.settings.url} unreachable: {type(e).__name__}: {e}") from e

    async def check(self, body: JSON) -> Decision:
        """Asks `POST /v1/check`; a decision of any status, or `Unavailable`."""
        response = await self._post("/v1/check", body)
        payload = _json(response)
        if payload is None or "decision" not in payload:
            raise Unavailable(_failure(response, payload))
        return Decision(response.status_code, payload, response.headers.get("retry-after"))

    async def send_usage(self, updates: Sequence[JSON]) -> Sent:
        """Posts one update to `/v1/usage`, several to `/v1/usage/batch`. Raises
        `Unavailable` when the whole post should be retried later (the updates carry their
        `request_id`, so a retry of what did land counts nothing twice)."""
        if len(updates) == 1:
            response = await self._post("/v1/usage", dict(updates[0]))
        else:
            response = await self._post("/v1/usage/batch", {"updates": list(updates)})
        payload = _json(response)
        if response.status_code == 202 and payload is not None:
            if len(updates) == 1:
                duplicate = bool(payload.get("duplicate"))
                return Sent(0 if duplicate else 1, 1 if duplicate else 0, [])
            return Sent(int(payload.get("accepted", 0)), int(payload.get("duplicates", 0)), [])
        if response.status_code == 400 and payload is not None:
            error = payload.get("error") or {}
            details = error.get("details") or []
            if len(updates) == 1:
                return Sent(0, 0, [(0, str(error.get("message", "invalid update")))])
            rejected = [
                (int(d["index"]), str(d.get("message", "")))
                for d in details
                if isinstance(d, dict) and isinstance(d.get("index"), int)
            ]
            if rejected:
                return Sent(0, 0, rejected)
        raise Unavailable(_failure(response, payload))

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients = {}


def _json(response: httpx.Response) -> JSON | None:
    try:
        value = response.json()
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _failure(response: httpx.Response, payload: JSON | None) -> str:
    message = ""
    if payload is not None:
        error = payload.get("error")
        if isinstance(error, dict):
            message = str(error.get("message", ""))
    if response.status_code in (401, 403):
        return f"Heimdall refused the gateway token (HEIMDALL_GATEWAY_TOKEN): {response.status_code} {message}"
    return f"Heimdall answered {response.status_code} {message}".rstrip()
