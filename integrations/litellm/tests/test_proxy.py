"""The real LiteLLM proxy (mock deployments, example config) governed by the real Heimdall."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from typing import Any

import httpx
import openai
import pytest

from conftest import GATEWAY, Heimdall, Proxy, wait_until

pytestmark = pytest.mark.e2e

# The example config's prices for every deployment, in USD per token.
INPUT_PRICE = 0.0000025
OUTPUT_PRICE = 0.00001
MESSAGES = [{"role": "user", "content": "Say hello."}]


def chat(proxy: Proxy, key: str, model: str = "gpt-4o", **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": MESSAGES, "max_tokens": 100, **extra}
    return httpx.post(f"{proxy.url}/v1/chat/completions", json=body,
                      headers={"authorization": f"Bearer {key}"}, timeout=30)


def settled(heimdall: Heimdall, key_id: str, requests: int) -> dict[str, Any]:
    """The key once `requests` requests are charged and nothing is held any more."""
    def done() -> dict[str, Any] | None:
        k = heimdall.key(key_id)
        rl = k["rate_limit"]
        charged = rl["request_current_usage"] if rl else None
        if k["budget"]["current_held"] == 0 and (rl is None or charged == requests):
            return k
        return None
    return dict(wait_until(done, 15, f"{requests} requests settled on the key"))


def test_usage_and_cost_land_on_key_team_and_customer(heimdall: Heimdall, proxy: Proxy) -> None:
    ids = heimdall.hierarchy(key_rate_limit={"token_max_limit": 1_000_000, "token_reset_duration": "1h",
                                             "request_max_limit": 1000, "request_reset_duration": "1h"})
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=ids["key"], max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES, max_tokens=100)  # type: ignore[arg-type]
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.usage is not None
    cost = float(raw.headers["x-litellm-response-cost"])
    assert cost == pytest.approx(completion.usage.prompt_tokens * INPUT_PRICE
                                 + completion.usage.completion_tokens * OUTPUT_PRICE)

    key = settled(heimdall, ids["key_id"], 1)
    assert key["budget"]["current_usage"] == pytest.approx(cost)
    assert key["rate_limit"]["token_current_usage"] == completion.usage.total_tokens
    team = heimdall.get(f"/api/governance/teams/{ids['team']}")["team"]
    assert team["budget"]["current_usage"] == pytest.approx(cost)
    customer = heimdall.get(f"/api/governance/customers/{ids['customer']}")["customer"]
    assert customer["budget"]["current_usage"] == pytest.approx(cost)
    assert customer["rate_limit"]["token_current_usage"] == completion.usage.total_tokens


def test_unknown_and_blocked_keys_get_401_with_heimdalls_message(heimdall: Heimdall, proxy: Proxy) -> None:
    r = chat(proxy, "sk-hd-no-such-key")
    assert r.status_code == 401
    assert r.json()["error"]["message"] == "Virtual key not found"

    team = heimdall.hierarchy()
    blocked = heimdall.post("/api/governance/virtual-keys", {
        "name": f"blocked-{team['key_id'][:8]}", "team_id": team["team"], "is_active": False})["virtual_key"]
    r = chat(proxy, blocked["value"])
    assert r.status_code == 401
    assert "blocked" in r.json()["error"]["message"].lower()

    r = httpx.post(f"{proxy.url}/v1/chat/completions", json={"model": "gpt-4o", "messages": MESSAGES}, timeout=10)
    assert r.status_code == 401


def test_budget_stops_traffic_with_402(heimdall: Heimdall, proxy: Proxy) -> None:
    # Each request holds its prompt plus max_tokens=100 at the deployment's price (about
    # $0.001) and is charged about $0.0002: the budget admits a few, then refuses.
    ids = heimdall.hierarchy(key_budget=0.002)
    statuses = []
    for _ in range(12):
        r = chat(proxy, ids["key"])
        statuses.append(r.status_code)
        if r.status_code == 402:
            break
    assert statuses[0] == 200
    assert statuses[-1] == 402, statuses
    body = r.json()["error"]
    assert body["message"].startswith("Budget exceeded"), body
    assert int(r.headers["retry-after"]) > 0
    key = heimdall.key(ids["key_id"])
    assert key["budget"]["current_usage"] + key["budget"]["current_held"] <= 0.002 + 1e-12


def test_rate_limit_gives_429_with_retry_after(heimdall: Heimdall, proxy: Proxy) -> None:
    ids = heimdall.hierarchy(key_rate_limit={"request_max_limit": 2, "request_reset_duration": "1m"})
    assert chat(proxy, ids["key"]).status_code == 200
    assert chat(proxy, ids["key"]).status_code == 200
    r = chat(proxy, ids["key"])
    assert r.status_code == 429
    assert "request limit" in r.json()["error"]["message"]
    assert 0 < int(r.headers["retry-after"]) <= 60


def test_streamed_request_is_charged_once(heimdall: Heimdall, proxy: Proxy) -> None:
    ids = heimdall.hierarchy(key_rate_limit={"token_max_limit": 1_000_000, "token_reset_duration": "1h",
                                             "request_max_limit": 1000, "request_reset_duration": "1h"})
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=ids["key"], max_retries=0)
    stream = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=100,  # type: ignore[arg-type]
                                            stream=True, stream_options={"include_usage": True})
    text, usage = "", None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage is not None:
            usage = chunk.usage
    assert text and usage is not None
    key = settled(heimdall, ids["key_id"], 1)
    time.sleep(0.5)  # a second charge, if there were one, would land by now
    key = heimdall.key(ids["key_id"])
    assert key["rate_limit"]["request_current_usage"] == 1
    assert key["rate_limit"]["token_current_usage"] == usage.total_tokens
    assert key["budget"]["current_usage"] == pytest.approx(
        usage.prompt_tokens * INPUT_PRICE + usage.completion_tokens * OUTPUT_PRICE)


def test_failing_provider_charges_nothing_and_releases_its_hold(heimdall: Heimdall, proxy: Proxy) -> None:
    ids = heimdall.hierarchy(key_rate_limit={"request_max_limit": 100, "request_reset_duration": "1h"})
    placed = 'heimdall_hold_events_total{event="placed"}'
    ended = ('heimdall_hold_events_total{event="settled"}', 'heimdall_hold_events_total{event="released"}')
    placed_before = heimdall.metric(placed)
    ended_before = sum(heimdall.metric(m) for m in ended)
    r = chat(proxy, ids["key"], model="broken-gpt")
    assert r.status_code == 429
    call_id = r.headers["x-litellm-call-id"]
    hold = f"{heimdall.url}/v1/holds/{call_id}?attempt=0"
    gateway = {"authorization": f"Bearer {GATEWAY}"}
    wait_until(lambda: httpx.get(hold, headers=gateway).status_code == 404, 10, "the hold to be released")
    # There was a hold (the check reserved), and it ended with the failure's update.
    assert heimdall.metric(placed) == placed_before + 1
    assert sum(heimdall.metric(m) for m in ended) == ended_before + 1
    key = heimdall.key(ids["key_id"])
    assert key["budget"]["current_usage"] == 0
    assert key["budget"]["current_held"] == 0
    assert key["rate_limit"]["request_current_usage"] == 0
    assert key["rate_limit"]["request_current_held"] == 0


def test_32_concurrent_requests_against_a_budget_for_5_admit_exactly_5(heimdall: Heimdall, proxy: Proxy) -> None:
    # A request holds ~ its prompt + max_tokens=1000 at $0.00001 a token: just over $0.01.
    # The budget fits five holds and not six. The deployment answers after 1.5 s, so all 32
    # are in flight together: without holds, all would pass the check.
    ids = heimdall.hierarchy(key_budget=0.055)

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            async def one() -> httpx.Response:
                return await client.post(
                    f"{proxy.url}/v1/chat/completions",
                    json={"model": "slow-gpt", "messages": MESSAGES, "max_tokens": 1000},
                    headers={"authorization": f"Bearer {ids['key']}"})
            return list(await asyncio.gather(*(one() for _ in range(32))))

    responses = asyncio.run(run())
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) == 5, statuses
    assert statuses.count(402) == 27, statuses
    charged = sum(float(r.headers["x-litellm-response-cost"]) for r in responses if r.status_code == 200)

    def settled_cost() -> bool:
        b = heimdall.key(ids["key_id"])["budget"]
        return b["current_held"] == 0 and math.isclose(b["current_usage"], charged, rel_tol=1e-9)
    wait_until(settled_cost, 15, "five charges and no holds")


def test_restart_of_heimdall_mid_traffic_loses_no_usage(heimdall: Heimdall, proxy: Proxy) -> None:
    # Traffic from four clients; Heimdall is killed (SIGKILL, ack = "durable") and started
    # again while it flows. Requests checked while it is down are refused with 503 (fail
    # closed) and never reach the model; every request that got its answer is charged exactly
    # once, because the integration retries usage with the same request_id until Heimdall
    # takes it.
    ids = heimdall.hierarchy(key_budget=100.0, key_rate_limit={"request_max_limit": 100_000,
                                                                "request_reset_duration": "1h"})
    results: list[tuple[int, float]] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                r = http.post(f"{proxy.url}/v1/chat/completions",
                              json={"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 50},
                              headers={"authorization": f"Bearer {ids['key']}"})
                cost = float(r.headers.get("x-litellm-response-cost", 0)) if r.status_code == 200 else 0.0
                results.append((r.status_code, cost))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    wait_until(lambda: sum(1 for s, _ in results if s == 200) >= 20, 30, "traffic before the kill")
    heimdall.kill()
    time.sleep(1.0)
    heimdall.start()
    served = sum(1 for s, _ in results if s == 200)
    wait_until(lambda: sum(1 for s, _ in results if s == 200) >= served + 20, 30, "traffic after the restart")
    stop.set()
    for t in threads:
        t.join(30)

    statuses = {s for s, _ in results}
    assert statuses <= {200, 503}, statuses
    assert 503 in statuses, "no request was checked while Heimdall was down"
    ok = [c for s, c in results if s == 200]
    key = settled(heimdall, ids["key_id"], len(ok))
    assert key["rate_limit"]["request_current_usage"] == len(ok)
    assert key["budget"]["current_usage"] == pytest.approx(sum(ok), rel=1e-9)
