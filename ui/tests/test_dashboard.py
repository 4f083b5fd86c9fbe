"""The dashboard in headless Chromium against the Heimdall binary: sign-in, a key created and
charged, the bars and the chart moving, a budget edited (with the API's validation message at
the field), the tree, alerts from a local webhook receiver, holds in flight, phone width, and no
console errors on any page. Screenshots of each page go to $UI_SCREENSHOTS."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

ADMIN = "ui-e2e-admin-token"
GATEWAY = "ui-e2e-gateway-token"
SHOTS = Path(os.environ.get("UI_SCREENSHOTS", "target/ui-screenshots"))
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Receiver(BaseHTTPRequestHandler):
    """A webhook receiver that accepts everything and remembers the bodies."""

    got: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        Receiver.got.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


class Heimdall:
    def __init__(self, workdir: Path, hook_url: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / "heimdall.toml"
        config.write_text(
            f'listen = "127.0.0.1:{self.port}"\n'
            f'database_url = "sqlite://{workdir}/heimdall.db"\n'
            'flush_interval = "200ms"\n'
            'log_level = "warn"\n'
            "[auth]\n"
            f'admin_tokens = ["{ADMIN}"]\n'
            f'gateway_tokens = ["{GATEWAY}"]\n'
            "[[alerts.webhooks]]\n"
            f'url = "{hook_url}"\n'
            'secret = "ui-e2e-secret"\n'
            "thresholds = [0.5, 0.8, 1.0]\n"
        )
        binary = os.environ.get("HEIMDALL_BIN", str(REPO / "target" / "debug" / "heimdall"))
        self.log = open(workdir / "heimdall.log", "ab")
        self.proc = subprocess.Popen([binary, "serve", "--config", str(config)], stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError("heimdall did not become ready")
            time.sleep(0.05)

    def call(self, method: str, path: str, body: Any = None, token: str = ADMIN) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method, headers={
            "authorization": f"Bearer {token}", "content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)
        self.log.close()


@pytest.fixture(scope="module")
def heimdall() -> Iterator[Heimdall]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as tmp:
        h = Heimdall(Path(tmp), f"http://127.0.0.1:{server.server_address[1]}/hook")
        yield h
        h.stop()
    server.shutdown()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"),
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        yield b
        b.close()


class Console:
    """Console errors and uncaught exceptions of a page."""

    def __init__(self, page: Page):
        self.errors: list[str] = []
        page.on("console", self.on_console)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))

    def on_console(self, msg: ConsoleMessage) -> None:
        if msg.type == "error":
            self.errors.append(msg.text)


def new_page(browser: Browser, width: int = 1280, height: int = 860) -> tuple[Page, Console]:
    context = browser.new_context(viewport={"width": width, "height": height}, device_scale_factor=1)
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = context.new_page()
    return page, Console(page)


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def sign_in(page: Page, heimdall: Heimdall, token: str = ADMIN) -> None:
    page.goto(f"{heimdall.url}/ui/")
    page.fill("#f-token", token)
    page.click("#sign-in button[type=submit]")


def test_a_wrong_token_is_refused_with_a_clear_message(heimdall: Heimdall, browser: Browser) -> None:
    page, console = new_page(browser)
    sign_in(page, heimdall, "not-a-token")
    expect(page.locator("#sign-in .error")).to_contain_text("refused this token (401)")
    shot(page, "01-sign-in-refused")
    page.fill("#f-token", GATEWAY)
    page.click("#sign-in button[type=submit]")
    expect(page.locator("#sign-in .error")).to_contain_text("gateway token")
    assert page.evaluate("sessionStorage.length") == 0
    # The refused calls are the only console errors (the browser logs failed fetches).
    assert all("401" in e or "403" in e for e in console.errors), console.errors


def test_an_admin_creates_charges_and_edits_a_key(heimdall: Heimdall, browser: Browser) -> None:
    status, customer = heimdall.call("POST", "/api/governance/customers", {
        "name": "Acme Corp", "budget": {"max_limit": 500, "reset_duration": "1M"}})
    assert status == 200, customer
    status, team = heimdall.call("POST", "/api/governance/teams", {
        "name": "Research", "customer_id": customer["customer"]["id"],
        "budget": {"max_limit": 40, "reset_duration": "1d"},
        "rate_limit": {"request_max_limit": 1000, "request_reset_duration": "1h"}})
    assert status == 200, team

    page, console = new_page(browser)
    sign_in(page, heimdall)
    expect(page.locator("h1")).to_have_text("Overview")
    # The token is kept in this tab's session storage only.
    assert page.evaluate("sessionStorage.getItem('heimdall.admin-token')") == ADMIN
    assert page.evaluate("localStorage.length") == 0

    # Create a key through the form: first with a bad budget, shown at its field.
    page.click("nav >> text=New key")
    expect(page.locator("h1")).to_have_text("New virtual key")
    page.fill("#f-name", "checkout-service")
    page.select_option("#f-team_id", label="Research")
    page.fill("#f-max_limit", "5")
    page.fill("#f-reset_duration", "1q")
    page.fill("#f-token_max_limit", "20000")
    page.fill("#f-token_reset_duration", "1h")
    page.click("#new-key button[type=submit]")
    error = page.locator('.field[data-field="reset_duration"] .error')
    expect(error).to_contain_text("reset_duration: unknown unit")
    expect(page.locator('.field[data-field="reset_duration"]')).to_have_class("field invalid")
    shot(page, "02-new-key-validation")
    page.fill("#f-reset_duration", "1d")
    page.click("#new-key button[type=submit]")
    value = page.locator("#key-value")
    expect(value).to_contain_text("sk-hd-")
    key_value = value.inner_text()
    page.click("#copy-key")
    expect(page.get_by_role("status")).to_have_text("Copied.")
    assert page.evaluate("navigator.clipboard.readText()") == key_value
    shot(page, "03-key-created")

    # The key's page: nothing used yet.
    page.click("text=Open the key")
    expect(page.locator("h1")).to_contain_text("checkout-service")
    budget = page.locator("#limits .limit-row").filter(has_text="Budget")
    expect(budget.locator(".pct")).to_have_text("0%")
    expect(page.locator("#usage .empty")).to_be_visible()

    # Usage through the gateway API moves the bar and the chart.
    for model, cost, tokens in (("gpt-4o", 2.0, 3000), ("claude-sonnet", 0.5, 1200)):
        status, body = heimdall.call("POST", "/v1/usage", {
            "virtual_key": key_value, "provider": "openai", "model": model,
            "tokens_used": tokens, "cost": cost}, token=GATEWAY)
        assert status == 202, body
    time.sleep(0.8)  # a few flush intervals: the rollups are written
    page.reload()
    expect(budget.locator(".pct")).to_have_text("50%")
    expect(page.locator("#usage svg rect")).to_have_count(2)
    expect(page.locator("#usage .legend")).to_contain_text("gpt-4o")
    tokens = page.locator("#limits .limit-row").filter(has_text="Tokens")
    expect(tokens.locator(".pct")).to_have_text("21%")
    shot(page, "04-key-page")

    # Edit the budget: the API's message at the field, then a valid value.
    page.fill("#edit-limits #f-max_limit", "-3")
    page.click("#edit-limits button[type=submit]")
    expect(page.locator('#edit-limits .field[data-field="max_limit"] .error')).to_contain_text("must not be negative")
    shot(page, "05-edit-limits-validation")
    page.fill("#edit-limits #f-max_limit", "20")
    page.click("#edit-limits button[type=submit]")
    expect(page.locator(".notice.success")).to_contain_text("saved")
    expect(budget.locator(".pct")).to_have_text("12.5%")
    status, body = heimdall.call("GET", "/api/governance/virtual-keys?search=checkout")
    assert body["virtual_keys"][0]["budget"]["max_limit"] == 20.0
    assert body["virtual_keys"][0]["budget"]["current_usage"] == 2.5

    # The tree shows the customer, the team and the key with their bars.
    page.click("nav >> text=Customers & keys")
    tree = page.locator("#tree")
    expect(tree).to_contain_text("Acme Corp")
    expect(tree).to_contain_text("Research")
    expect(tree).to_contain_text("checkout-service")
    expect(tree.locator(".node").filter(has_text="checkout-service").locator(".pct").first).to_have_text("12.5%")
    shot(page, "06-tree")

    # The webhook got the key's 50% crossing (2.5 of 5); the alerts page lists it.
    deadline = time.monotonic() + 10
    while not Receiver.got and time.monotonic() < deadline:
        time.sleep(0.1)
    assert any(a["entity_name"] == "checkout-service" and a["threshold"] == 0.5 for a in Receiver.got), Receiver.got
    time.sleep(0.5)
    page.click("nav >> text=Alerts")
    expect(page.locator("#alerts")).to_contain_text("checkout-service")
    expect(page.locator("#alerts .badge").first).to_have_text("delivered")
    shot(page, "07-alerts")

    # A hold in flight shows on the overview, with the limits closest to exhaustion.
    status, body = heimdall.call("POST", "/v1/check", {
        "virtual_key": key_value, "request_id": "ui-hold-1", "reserve": {"cost": 4.0, "tokens": 500}},
        token=GATEWAY)
    assert status == 200, body
    page.click("nav >> text=Overview")
    expect(page.locator("#closest")).to_contain_text("checkout-service")
    expect(page.locator("#holds")).to_contain_text("checkout-service")
    expect(page.locator("#recent-alerts")).to_contain_text("checkout-service")
    expect(page.locator(".stat").first).to_contain_text("$2.50")
    shot(page, "08-overview")

    # The team's page.
    page.click("nav >> text=Customers & keys")
    page.click("#tree >> text=Research")
    expect(page.locator("h1")).to_have_text("Research")
    expect(page.locator("#usage svg rect")).to_have_count(2)
    shot(page, "09-team-page")

    # The browser logs the two refused submissions (400, shown at their fields); nothing else.
    refused = [e for e in console.errors if "status of 400" in e]
    assert len(refused) == 2 and len(console.errors) == 2, console.errors


def test_pages_fit_a_phone(heimdall: Heimdall, browser: Browser) -> None:
    page, console = new_page(browser, 390, 844)
    sign_in(page, heimdall)
    for route, name in (("#/", "10-phone-overview"), ("#/tree", "11-phone-tree"), ("#/alerts", "12-phone-alerts")):
        page.goto(f"{heimdall.url}/ui/{route}")
        expect(page.locator("h1")).to_be_visible()
        page.wait_for_load_state("networkidle")
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{route} scrolls sideways by {overflow}px"
        shot(page, name)
    assert console.errors == [], console.errors


def test_the_dashboard_is_served_offline_with_a_strict_policy(heimdall: Heimdall) -> None:
    with urllib.request.urlopen(f"{heimdall.url}/ui/") as r:
        html = r.read().decode()
        csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    # Every asset is the binary's own: no other origin is referenced.
    assert "http://" not in html and "https://" not in html
    with urllib.request.urlopen(f"{heimdall.url}/ui/app.js") as r:
        script = r.read().decode()
    assert "https://" not in script.replace("http://www.w3.org/2000/svg", "")
