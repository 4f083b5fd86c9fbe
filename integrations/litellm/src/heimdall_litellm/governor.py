"""The integration's logic, apart from LiteLLM's hook signatures: who the caller is, whether
a request may go out (with a hold of what it may use), and what it used."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException

from .client import Decision, HeimdallClient, Unavailable
from .estimate import Estimate, Route, prompt_tokens, requested_output, route
from .keys import KeyRegistry, digest
from .reporter import UsageReporter
from .settings import Settings

log = logging.getLogger("heimdall_litellm")

# Decisions about the key itself: the caller is not authenticated.
_KEY_REFUSALS = {"virtual_key_not_found", "virtual_key_blocked", "virtual_key_required"}
# Headers never forwarded to Heimdall's required-headers rule.
_SECRET_HEADERS = {"authorization", "proxy-authorization", "cookie", "x-api-key", "api-key", "x-litellm-api-key"}
_REQUEST_TYPES = {
    "completion": "chat_completion",
    "acompletion": "chat_completion",
    "text_completion": "text_completion",
    "atext_completion": "text_completion",
    "embedding": "embedding",
    "aembedding": "embedding",
    "responses": "responses",
    "aresponses": "responses",
}
_NO_OUTPUT = {"embedding", "aembedding", "moderation", "amoderation"}


@dataclass
class Call:
    """A request admitted by the pre-call hook and not yet settled, by LiteLLM call id."""

    virtual_key: str | None
    user_id: str | None
    provider: str
    model: str
    attempt: int
    held: bool
    started: float


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value != "" else None


def _refusal(decision: Decision) -> HTTPException:
    status = 401 if decision.kind in _KEY_REFUSALS else decision.status
    headers = {"retry-after": decision.retry_after} if decision.retry_after else None
    return HTTPException(status_code=status, detail=decision.message, headers=headers)


def _release(body: Mapping[str, Any]) -> dict[str, Any]:
    """The usage update that releases the hold a check `body` asked for."""
    names = ("virtual_key", "provider", "model", "user_id", "request_id", "attempt")
    return {**{k: body[k] for k in names if k in body}, "success": False}


class Governor:
    def __init__(self, settings: Settings, client: HeimdallClient | None = None):
        from litellm.proxy._types import UserAPIKeyAuth

        self.settings = settings
        self.client = client or HeimdallClient(settings)
        self.reporter = UsageReporter(self.client, settings.batch_max, settings.buffer_max)
        self.keys: KeyRegistry[UserAPIKeyAuth] = KeyRegistry()
        self.calls: dict[str, Call] = {}
        self._auth_type = UserAPIKeyAuth
        self._admitted = 0

    # --- authentication -----------------------------------------------------------------

    async def authenticate(self, headers: Mapping[str, str], api_key: str | None) -> Any:
        """The `custom_auth` function's work: the bearer token must be a Heimdall virtual key
        that exists and is active. Returns LiteLLM's `UserAPIKeyAuth`."""
        key = (api_key or "").strip()
        if key[:7].lower() == "bearer ":
            key = key[7:].strip()
        if not key:
            raise HTTPException(status_code=401, detail="a Heimdall virtual key is required as the bearer token")
        cached = self.keys.cached(key)
        if cached is not None:
            return cached
        forwarded = {
            k.lower(): v for k, v in list(headers.items())[:128] if k.lower() not in _SECRET_HEADERS and len(v) <= 8192
        }
        try:
            decision = await self.client.check({"virtual_key": key, "headers": forwarded})
        except Unavailable as e:
            if self.settings.fail_open:
                log.error("HEIMDALL FAIL-OPEN: authenticating a key without Heimdall (%s); it is not verified", e)
                return self._auth_type(api_key=self.keys.remember(key))
            log.error("heimdall: cannot authenticate (%s); refusing (HEIMDALL_FAIL_OPEN is off)", e)
            raise HTTPException(status_code=503, detail="governance service unavailable") from None
        if decision.kind in _KEY_REFUSALS:
            raise HTTPException(status_code=401, detail=decision.message)
        if decision.kind == "missing_required_headers":
            raise HTTPException(status_code=400, detail=decision.message)
        body = decision.body
        auth = self._auth_type(
            api_key=digest(key),
            key_alias=_text(body.get("virtual_key_name")),
            team_id=_text(body.get("team_id")),
            team_alias=_text(body.get("team_name")),
            metadata={
                "heimdall_virtual_key_id": body.get("virtual_key_id"),
                "heimdall_customer_id": body.get("customer_id"),
                "heimdall_customer_name": body.get("customer_name"),
            },
        )
        self.keys.remember(key, auth, self.settings.auth_cache_ttl)
        return auth

    # --- before the call ----------------------------------------------------------------

    async def before_call(self, auth: Any, data: dict[str, Any], call_type: str) -> dict[str, Any]:
        """Checks the request with Heimdall, with a hold of the most it can use; raises the
        refusal as the proxy's HTTP error; returns `data` (its output limit clamped when
        configured)."""
        call_id = _text(data.get("litellm_call_id")) or str(uuid.uuid4())
        data["litellm_call_id"] = call_id
        key = self.keys.key(_text(getattr(auth, "api_key", None)))
        model = _text(data.get("model")) or ""
        where = route(model) if model else Route(provider="", upstream="")
        user_id = _text(data.get("user"))
        body: dict[str, Any] = {
            "virtual_key": key,
            "provider": where.provider or None,
            "model": model or None,
            "user_id": user_id,
            "request_type": _REQUEST_TYPES.get(call_type, call_type),
            "request_id": call_id,
            "attempt": 0,
        }
        body = {k: v for k, v in body.items() if v is not None}
        field, asked = requested_output(data)
        estimate: Estimate | None = None
        if self.settings.reserve:
            output = 0 if call_type in _NO_OUTPUT else (asked if asked is not None else self.settings.default_max_tokens)
            estimate = Estimate(where, prompt_tokens(where.upstream, data), output)
            body["reserve"] = estimate.reserve()
            if self.settings.hold_ttl:
                body["hold_ttl"] = self.settings.hold_ttl
        decision = await self._check(body, call_id)
        if decision is None:  # failed open
            self._admit(call_id, key, user_id, where, model, held=False)
            return data
        if (
            not decision.allowed
            and estimate is not None
            and self.settings.clamp_max_tokens
            and decision.status in (402, 429)
            and call_type not in _NO_OUTPUT
        ):
            fits = estimate.affordable_output(*decision.affordable())
            if fits is not None and 1 <= fits < estimate.output:
                estimate = estimate.with_output(fits)
                body["reserve"] = estimate.reserve()
                data[field or "max_tokens"] = fits
                log.info("heimdall: request %s clamped to %s=%d to fit its budget", call_id, field or "max_tokens", fits)
                decision = await self._check(body, call_id)
                if decision is None:
                    self._admit(call_id, key, user_id, where, model, held=False)
                    return data
        if not decision.allowed:
            raise _refusal(decision)
        if estimate is None and self.settings.clamp_max_tokens and call_type not in _NO_OUTPUT:
            plain = Estimate(where, prompt_tokens(where.upstream, data), asked or self.settings.default_max_tokens)
            fits = plain.affordable_output(*decision.affordable())
            if fits is not None and 1 <= fits < plain.output:
                data[field or "max_tokens"] = fits
        self._admit(call_id, key, user_id, where, model, held="hold" in decision.body)
        return data

    async def _check(self, body: dict[str, Any], call_id: str) -> Decision | None:
        """A decision, or None when Heimdall is unavailable and the integration fails open."""
        try:
            return await self.client.check(body)
        except Unavailable as e:
            if self.settings.fail_open:
                log.error("HEIMDALL FAIL-OPEN: request %s admitted without governance (%s)", call_id, e)
                return None
            log.error("heimdall: request %s refused: %s (HEIMDALL_FAIL_OPEN is off)", call_id, e)
            if "reserve" in body:
                # Heimdall may have placed the hold and lost only its answer (a timeout, a crash
                # after the commit): release it, through the retrying reporter.
                self.reporter.submit(_release(body))
            raise HTTPException(status_code=503, detail="governance service unavailable") from None

    def _admit(self, call_id: str, key: str | None, user_id: str | None, where: Route, model: str, held: bool) -> None:
        now = time.monotonic()
        self.calls[call_id] = Call(key, user_id, where.provider, model, 0, held, now)
        self._admitted += 1
        if self._admitted % 1024 == 0:
            # Calls whose events never came (a crashed stream, say): their holds expired in
            # Heimdall long ago.
            stale = [c for c, v in self.calls.items() if now - v.started > 6 * 3600]
            for c in stale:
                del self.calls[c]

    # --- after the call -----------------------------------------------------------------

    def succeeded(self, kwargs: Mapping[str, Any]) -> None:
        """A success event (for a stream, the one at its end, with the whole usage): charges
        the actual usage and settles the hold."""
        logged: Mapping[str, Any] = kwargs.get("standard_logging_object") or {}
        call_id = _text(kwargs.get("litellm_call_id")) or _text(logged.get("id"))
        call = self.calls.pop(call_id, None) if call_id else None
        if call is None and self._key_of(logged) is None:
            # No pre-call record and no key this process authenticated: not a governed call.
            return
        prompt = int(logged.get("prompt_tokens") or 0)
        completion = int(logged.get("completion_tokens") or 0)
        total = int(logged.get("total_tokens") or prompt + completion)
        cost = kwargs.get("response_cost")
        if not isinstance(cost, (int, float)):
            cost = logged.get("response_cost")
        cost = float(cost) if isinstance(cost, (int, float)) and cost >= 0 else 0.0
        streaming = bool(kwargs.get("stream"))
        update: dict[str, Any] = {
            "request_id": call_id,
            "attempt": call.attempt if call else 0,
            "virtual_key": call.virtual_key if call else self._key_of(logged),
            "provider": _text(logged.get("custom_llm_provider")) or (call.provider if call else None),
            "model": (call.model if call else None) or _text(logged.get("model_group")) or _text(logged.get("model")),
            "user_id": call.user_id if call else _text(logged.get("end_user")),
            "success": True,
            "tokens_used": total,
            "input_tokens": prompt,
            "output_tokens": completion,
            "cost": cost,
            "is_streaming": streaming,
            "is_final_chunk": streaming or None,
            "has_usage_data": streaming or None,
        }
        self.reporter.submit({k: v for k, v in update.items() if v is not None})

    def failed(self, kwargs: Mapping[str, Any]) -> None:
        """A failure event: releases the hold and charges nothing. A later success of the same
        call (a retry by the router) reports as the next attempt."""
        logged: Mapping[str, Any] = kwargs.get("standard_logging_object") or {}
        call_id = _text(kwargs.get("litellm_call_id")) or _text(logged.get("id"))
        call = self.calls.get(call_id) if call_id else None
        if call is None:  # refused before the call, or never governed: nothing is held
            return
        asked = {
            "virtual_key": call.virtual_key,
            "provider": call.provider or None,
            "model": call.model or None,
            "user_id": call.user_id,
            "request_id": call_id,
            "attempt": call.attempt,
        }
        self.reporter.submit(_release({k: v for k, v in asked.items() if v is not None}))
        call.attempt += 1
        call.held = False

    def _key_of(self, logged: Mapping[str, Any]) -> str | None:
        metadata: Mapping[str, Any] = logged.get("metadata") or {}
        return self.keys.key(_text(metadata.get("user_api_key_hash")))
