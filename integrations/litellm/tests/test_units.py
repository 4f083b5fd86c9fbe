"""The integration's logic against a fake Heimdall (httpx.MockTransport): no processes."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import HTTPException

from heimdall_litellm.client import HeimdallClient
from heimdall_litellm.estimate import Estimate, Route
from heimdall_litellm.governor import Governor
from heimdall_litellm.keys import KeyRegistry, digest
from heimdall_litellm.reporter import UsageReporter
from heimdall_litellm.settings import Settings, SettingsError

ALLOW: dict[str, Any] = {"allowed": True, "decision": "allow", "status_code": 200, "message": "",
                         "virtual_key_id": "vk-1", "virtual_key_name": "k", "team_id": "t-1", "team_name": "ml",
                         "customer_id": None, "customer_name": None, "checks": [],
                         "max_affordable": {"cost": None, "tokens": None}}


def refusal(status: int, kind: str, message: str, **extra: Any) -> dict[str, Any]:
    return {**ALLOW, "allowed": False, "decision": kind, "status_code": status, "message": message, **extra}


class FakeHeimdall:
    """Answers with `answer(path, body)` -> (status, json, headers) and records every post."""

    def __init__(self, answer: Callable[[str, dict[str, Any]], tuple[int, Any, dict[str, str]]]):
        self.answer = answer
        self.posts: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.posts.append((request.url.path, body))
        status, payload, headers = self.answer(request.url.path, body)
        if isinstance(payload, Exception):
            raise payload
        return httpx.Response(status, json=payload, headers=headers)

    def governor(self, **settings: Any) -> Governor:
        s = Settings(**settings)
        return Governor(s, HeimdallClient(s, httpx.MockTransport(self)))

    def checks(self) -> list[dict[str, Any]]:
        return [b for p, b in self.posts if p == "/v1/check"]

    def usage(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for p, b in self.posts:
            if p == "/v1/usage":
                out.append(b)
            elif p == "/v1/usage/batch":
                out.extend(b["updates"])
        return out


def accept_usage(path: str, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]] | None:
    if path == "/v1/usage":
        return 202, {"accepted": True, "duplicate": False}, {}
    if path == "/v1/usage/batch":
        return 202, {"accepted": len(body["updates"]), "duplicates": 0}, {}
    return None


class Auth:
    def __init__(self, api_key: str | None):
        self.api_key = api_key


# --- settings -------------------------------------------------------------------------------

def test_settings_defaults_and_environment() -> None:
    assert Settings.from_env({}) == Settings()
    s = Settings.from_env({"HEIMDALL_URL": "https://h.example/", "HEIMDALL_FAIL_OPEN": "yes",
                           "HEIMDALL_TIMEOUT": "0.5", "HEIMDALL_HOLD_TTL": "5m", "HEIMDALL_GATEWAY_TOKEN": " t "})
    assert (s.url, s.fail_open, s.timeout, s.hold_ttl, s.gateway_token) == ("https://h.example", True, 0.5, "5m", "t")


@pytest.mark.parametrize("name,value", [
    ("HEIMDALL_FAIL_OPEN", "maybe"), ("HEIMDALL_TIMEOUT", "-1"), ("HEIMDALL_TIMEOUT", "nan"),
    ("HEIMDALL_URL", "ftp://x"), ("HEIMDALL_HOLD_TTL", "5 minutes"), ("HEIMDALL_BATCH_MAX", "0"),
    ("HEIMDALL_DEFAULT_MAX_TOKENS", "many"),
])
def test_bad_settings_name_their_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


# --- estimates --------------------------------------------------------------------------------

def test_estimate_prices_prompt_and_output_and_finds_what_fits() -> None:
    e = Estimate(Route("openai", "gpt-4o", input_price=0.000002, output_price=0.00001), prompt=100, output=1000)
    assert e.tokens == 1100
    assert e.reserve() == {"cost": pytest.approx(0.0102), "tokens": 1100}
    # $0.0052 left: the prompt costs $0.0002, so 500 output tokens fit (a hair under: 499).
    assert e.affordable_output(0.0052, None) in (499, 500)
    assert e.with_output(e.affordable_output(0.0052, None) or 0).cost <= 0.0052
    assert e.affordable_output(None, 600) == 500
    assert e.affordable_output(None, None) is None
    assert e.affordable_output(0.0001, None) == -1  # not even the prompt fits


# --- keys -------------------------------------------------------------------------------------

def test_key_registry_finds_keys_by_digest_and_expires_cached_auth() -> None:
    keys: KeyRegistry[str] = KeyRegistry()
    name = keys.remember("sk-hd-secret", "auth", ttl=60)
    assert name == digest("sk-hd-secret") and "secret" not in name
    assert keys.key(name) == "sk-hd-secret"
    assert keys.cached("sk-hd-secret") == "auth"
    keys.remember("sk-hd-other", "auth", ttl=1e-9)
    assert keys.cached("sk-hd-other") is None
    assert keys.key("hd-unknown") is None and keys.key(None) is None


# --- the reporter -----------------------------------------------------------------------------

def test_reporter_retries_until_heimdall_takes_the_updates_and_batches_what_waits() -> None:
    failures = [2]

    def answer(path: str, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        if failures[0] > 0:
            failures[0] -= 1
            return 0, httpx.ConnectError("refused"), {}
        result = accept_usage(path, body)
        assert result is not None
        return result

    fake = FakeHeimdall(answer)

    async def run() -> UsageReporter:
        reporter = UsageReporter(HeimdallClient(Settings(), httpx.MockTransport(fake)), batch_max=2)
        for i in range(5):
            reporter.submit({"request_id": f"r{i}", "tokens_used": i})
        assert await reporter.drain(10)
        return reporter

    reporter = asyncio.run(run())
    delivered = fake.usage()
    # Each failed post is retried whole, with the same request ids; the last three arrive once.
    assert [u["request_id"] for u in delivered][-5:] == ["r0", "r1", "r2", "r3", "r4"]
    assert {p for p, _ in fake.posts} == {"/v1/usage/batch", "/v1/usage"}
    assert reporter.sent == 5 and reporter.retries == 2 and reporter.pending == 0


def test_reporter_drops_only_the_items_heimdall_rejects() -> None:
    def answer(path: str, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        if path == "/v1/usage/batch" and any(u.get("bad") for u in body["updates"]):
            details = [{"index": i, "message": "tokens_used: must be >= 0"}
                       for i, u in enumerate(body["updates"]) if u.get("bad")]
            return 400, {"status_code": 400, "error": {"type": "invalid_request", "message": "bad", "details": details}}, {}
        result = accept_usage(path, body)
        assert result is not None
        return result

    fake = FakeHeimdall(answer)

    async def run() -> UsageReporter:
        reporter = UsageReporter(HeimdallClient(Settings(), httpx.MockTransport(fake)))
        reporter.submit({"request_id": "a"})
        reporter.submit({"request_id": "b", "bad": True})
        reporter.submit({"request_id": "c"})
        assert await reporter.drain(5)
        return reporter

    reporter = asyncio.run(run())
    last = fake.posts[-1][1]
    assert [u["request_id"] for u in last["updates"]] == ["a", "c"]
    assert reporter.dropped == 1 and reporter.sent == 2


def test_reporter_buffer_is_bounded() -> None:
    fake = FakeHeimdall(lambda p, b: (0, httpx.ConnectError("down"), {}))

    async def run() -> UsageReporter:
        reporter = UsageReporter(HeimdallClient(Settings(), httpx.MockTransport(fake)), buffer_max=3)
        for i in range(5):
            reporter.submit({"request_id": str(i)})
        return reporter

    reporter = asyncio.run(run())
    assert reporter.pending == 3 and reporter.dropped == 2


# --- authentication ---------------------------------------------------------------------------

def test_auth_maps_the_key_and_caches_it_briefly() -> None:
    fake = FakeHeimdall(lambda p, b: (200, ALLOW, {}))
    g = fake.governor(auth_cache_ttl=60)

    async def run() -> tuple[Any, Any]:
        first = await g.authenticate({"Authorization": "Bearer sk-hd-1", "X-Team": "a"}, "Bearer sk-hd-1")
        again = await g.authenticate({}, "sk-hd-1")
        return first, again

    first, again = asyncio.run(run())
    assert first is again and len(fake.checks()) == 1
    assert fake.checks()[0] == {"virtual_key": "sk-hd-1", "headers": {"x-team": "a"}}
    assert first.team_id == "t-1" and first.key_alias == "k"
    assert first.api_key == digest("sk-hd-1") and g.keys.key(first.api_key) == "sk-hd-1"


@pytest.mark.parametrize("status,kind,expected", [
    (403, "virtual_key_not_found", 401), (403, "virtual_key_blocked", 401),
    (401, "virtual_key_required", 401), (400, "missing_required_headers", 400),
])
def test_auth_refusals(status: int, kind: str, expected: int) -> None:
    fake = FakeHeimdall(lambda p, b: (status, refusal(status, kind, f"message for {kind}"), {}))
    with pytest.raises(HTTPException) as e:
        asyncio.run(fake.governor().authenticate({}, "sk-hd-x"))
    assert e.value.status_code == expected and e.value.detail == f"message for {kind}"


def test_auth_fails_closed_by_default_and_open_when_asked(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeHeimdall(lambda p, b: (0, httpx.ConnectTimeout("slow"), {}))
    with pytest.raises(HTTPException) as e:
        asyncio.run(fake.governor().authenticate({}, "sk-hd-x"))
    assert e.value.status_code == 503
    with caplog.at_level(logging.ERROR, logger="heimdall_litellm"):
        auth = asyncio.run(fake.governor(fail_open=True).authenticate({}, "sk-hd-x"))
    assert auth.api_key == digest("sk-hd-x")
    assert "FAIL-OPEN" in caplog.text
    # A gateway token Heimdall refuses is not a decision: the same as unreachable.
    wrong = FakeHeimdall(lambda p, b: (401, {"status_code": 401, "error": {"type": "unauthorized", "message": "no"}}, {}))
    with pytest.raises(HTTPException) as e:
        asyncio.run(wrong.governor().authenticate({}, "sk-hd-x"))
    assert e.value.status_code == 503


# --- before the call --------------------------------------------------------------------------

def request(**extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "litellm_call_id": "call-1",
            "user": "u-1", **extra}


def test_pre_call_reserves_the_prompt_and_max_tokens_under_the_call_id() -> None:
    fake = FakeHeimdall(lambda p, b: (200, {**ALLOW, "hold": {"request_id": "call-1"}}, {}))
    g = fake.governor(hold_ttl="2m")
    g.keys.remember("sk-hd-1")
    data = asyncio.run(g.before_call(Auth(digest("sk-hd-1")), request(max_tokens=300), "acompletion"))
    assert data["max_tokens"] == 300
    check = fake.checks()[0]
    assert check["virtual_key"] == "sk-hd-1" and check["request_id"] == "call-1" and check["attempt"] == 0
    assert check["user_id"] == "u-1" and check["model"] == "gpt-4o" and check["request_type"] == "chat_completion"
    assert check["hold_ttl"] == "2m"
    assert check["reserve"]["tokens"] > 300  # the prompt's tokens and the output limit
    assert g.calls["call-1"].held


def test_pre_call_refusal_is_the_proxys_http_error_with_retry_after() -> None:
    fake = FakeHeimdall(lambda p, b: (429, refusal(429, "request_limited", "Rate limit exceeded: …"), {"retry-after": "17"}))
    with pytest.raises(HTTPException) as e:
        asyncio.run(fake.governor().before_call(Auth(None), request(), "acompletion"))
    assert e.value.status_code == 429 and e.value.detail == "Rate limit exceeded: …"
    assert e.value.headers == {"retry-after": "17"}
    assert "call-1" not in fake.governor().calls


def test_pre_call_unreachable_fails_closed_and_releases_a_hold_it_may_have_placed() -> None:
    def answer(path: str, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        if path == "/v1/check":
            return 0, httpx.ReadTimeout("lost"), {}
        result = accept_usage(path, body)
        assert result is not None
        return result

    fake = FakeHeimdall(answer)
    g = fake.governor()

    async def run() -> int:
        with pytest.raises(HTTPException) as e:
            await g.before_call(Auth(None), request(), "acompletion")
        assert await g.reporter.drain(5)
        return e.value.status_code

    assert asyncio.run(run()) == 503
    assert fake.usage() == [{"provider": "openai", "model": "gpt-4o", "user_id": "u-1", "request_id": "call-1",
                             "attempt": 0, "success": False}]


def test_pre_call_clamps_max_tokens_to_what_the_budget_still_affords() -> None:
    def answer(path: str, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        if body["reserve"]["tokens"] > 600:
            return 402, refusal(402, "budget_exceeded", "Budget exceeded", max_affordable={"cost": None, "tokens": 600}), {}
        return 200, ALLOW, {}

    fake = FakeHeimdall(answer)
    data = asyncio.run(fake.governor(clamp_max_tokens=True).before_call(Auth(None), request(max_tokens=1000), "acompletion"))
    first, second = fake.checks()
    assert data["max_tokens"] == second["reserve"]["tokens"] - (first["reserve"]["tokens"] - 1000)
    assert second["reserve"]["tokens"] == 600
    # Without the option the refusal stands.
    fake.posts.clear()
    with pytest.raises(HTTPException) as e:
        asyncio.run(fake.governor().before_call(Auth(None), request(max_tokens=1000), "acompletion"))
    assert e.value.status_code == 402 and len(fake.checks()) == 1


# --- after the call ---------------------------------------------------------------------------

def test_success_charges_the_usage_and_a_retry_after_a_failure_is_the_next_attempt() -> None:
    fake = FakeHeimdall(lambda p, b: accept_usage(p, b) or (200, {**ALLOW, "hold": {}}, {}))
    g = fake.governor()
    g.keys.remember("sk-hd-1")
    logged = {"id": "call-1", "prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30,
              "response_cost": 0.5, "custom_llm_provider": "openai", "model_group": "gpt-4o"}

    async def run() -> None:
        await g.before_call(Auth(digest("sk-hd-1")), request(), "acompletion")
        g.failed({"litellm_call_id": "call-1", "standard_logging_object": logged})
        g.succeeded({"litellm_call_id": "call-1", "standard_logging_object": logged, "response_cost": 0.25,
                     "stream": True})
        g.failed({"litellm_call_id": "unknown-call"})  # refused before the call: nothing to release
        assert await g.reporter.drain(5)

    asyncio.run(run())
    release, charge = fake.usage()
    assert release == {"virtual_key": "sk-hd-1", "provider": "openai", "model": "gpt-4o", "user_id": "u-1",
                       "request_id": "call-1", "attempt": 0, "success": False}
    assert charge == {"request_id": "call-1", "attempt": 1, "virtual_key": "sk-hd-1", "provider": "openai",
                      "model": "gpt-4o", "user_id": "u-1", "success": True, "tokens_used": 30, "input_tokens": 10,
                      "output_tokens": 20, "cost": 0.25, "is_streaming": True, "is_final_chunk": True,
                      "has_usage_data": True}
    assert "call-1" not in g.calls


def test_a_bad_setting_stops_the_proxy_when_it_loads_the_hooks() -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "HEIMDALL_TIMEOUT": "soon"}
    done = subprocess.run([sys.executable, "-c", "import heimdall_litellm.hooks"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "HEIMDALL_TIMEOUT: expected a number, got 'soon'" in done.stderr
