"""Processes for the end-to-end tests: the Heimdall binary and the real LiteLLM proxy, started
with the example config of docs/integrations/litellm.md."""

from __future__ import annotations

import os
import secrets
import signal
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
PACKAGE = HERE.parent
REPO = PACKAGE.parent.parent
ADMIN = "e2e-admin-token"
GATEWAY = "e2e-gateway-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Heimdall:
    """The Heimdall binary on a SQLite file, with tokens and `ack = "durable"`; it can be
    killed with SIGKILL and started again on the same port and file."""

    def __init__(self, binary: Path, workdir: Path):
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.admin = httpx.Client(base_url=self.url, headers={"authorization": f"Bearer {ADMIN}"}, timeout=10)

    def start(self) -> None:
        env = dict(os.environ)
        env.update(
            HEIMDALL__AUTH__ADMIN_TOKENS=ADMIN,
            HEIMDALL__AUTH__GATEWAY_TOKENS=GATEWAY,
            HEIMDALL__ACK="durable",
            HEIMDALL__FLUSH_INTERVAL="200ms",
            HEIMDALL__LOG_LEVEL="warn",
        )
        self.starts += 1
        log = open(self.workdir / f"heimdall-{self.starts}.log", "wb")
        self.proc = subprocess.Popen(
            [str(self.binary), "serve", "--listen", f"127.0.0.1:{self.port}",
             "--database-url", f"sqlite://{self.workdir}/heimdall.db"],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        )

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"heimdall exited with {self.proc.returncode}; see {log.name}")
            try:
                return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, 30, "heimdall /readyz")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    # --- admin helpers -----------------------------------------------------------------

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        r = self.admin.post(path, json=body)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def put(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        r = self.admin.put(path, json=body)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def get(self, path: str) -> dict[str, Any]:
        r = self.admin.get(path)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def hierarchy(self, key_budget: float = 10.0, key_rate_limit: dict[str, Any] | None = None) -> dict[str, str]:
        """A customer, a team of it and a key of the team, each with its own budget (and the key
        with `key_rate_limit`): the ids and the key's value."""
        tag = secrets.token_hex(4)
        customer = self.post("/api/governance/customers", {
            "name": f"customer-{tag}", "budget": {"max_limit": 1000, "reset_duration": "1d"},
            "rate_limit": {"token_max_limit": 10_000_000, "token_reset_duration": "1d"}})["customer"]
        team = self.post("/api/governance/teams", {
            "name": f"team-{tag}", "customer_id": customer["id"],
            "budget": {"max_limit": 500, "reset_duration": "1d"}})["team"]
        body: dict[str, Any] = {"name": f"key-{tag}", "team_id": team["id"],
                                "budget": {"max_limit": key_budget, "reset_duration": "1d"}}
        if key_rate_limit is not None:
            body["rate_limit"] = key_rate_limit
        key = self.post("/api/governance/virtual-keys", body)["virtual_key"]
        return {"customer": customer["id"], "team": team["id"], "key_id": key["id"], "key": key["value"]}

    def key(self, key_id: str) -> dict[str, Any]:
        return dict(self.get(f"/api/governance/virtual-keys/{key_id}")["virtual_key"])

    def metric(self, name: str) -> float:
        total = 0.0
        for line in httpx.get(f"{self.url}/metrics", timeout=5).text.splitlines():
            if line.startswith(name):
                total += float(line.rsplit(" ", 1)[1])
        return total


class Proxy:
    """The LiteLLM proxy with the example config, governed by `heimdall`."""

    def __init__(self, heimdall: Heimdall, workdir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        env.update(
            HEIMDALL_URL=heimdall.url,
            HEIMDALL_GATEWAY_TOKEN=GATEWAY,
            HEIMDALL_TIMEOUT="2",
            LITELLM_MASTER_KEY="sk-" + secrets.token_hex(32),
            LITELLM_LOCAL_MODEL_COST_MAP="True",
            LITELLM_LOG="ERROR",
            NO_DOCS="True",
        )
        litellm = Path(sys.executable).parent / "litellm"
        self.log_path = workdir / "litellm.log"
        self.proc = subprocess.Popen(
            [str(litellm), "--config", str(PACKAGE / "example" / "config.yaml"),
             "--host", "127.0.0.1", "--port", str(self.port), "--num_workers", "1"],
            env=env, stdin=subprocess.DEVNULL, stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT,
        )

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"litellm exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
            try:
                return httpx.get(f"{self.url}/health/liveliness", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, 120, "the LiteLLM proxy", interval=0.25)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="heimdall-litellm-") as d:
        yield Path(d)


@pytest.fixture(scope="session")
def heimdall(workdir: Path) -> Iterator[Heimdall]:
    binary = Path(os.environ.get("HEIMDALL_BIN", REPO / "target" / "debug" / "heimdall"))
    if not binary.exists():
        pytest.fail(f"no Heimdall binary at {binary}: run `cargo build` or set HEIMDALL_BIN")
    h = Heimdall(binary, workdir)
    h.start()
    yield h
    h.stop()


@pytest.fixture(scope="session")
def proxy(heimdall: Heimdall, workdir: Path) -> Iterator[Proxy]:
    p = Proxy(heimdall, workdir)
    yield p
    p.stop()
