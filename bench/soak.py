#!/usr/bin/env python3
"""Durability soak: two replicas with ack = "durable" on one private PostgreSQL, mixed traffic
(usage, batches, checks, admin changes) and three faults in turn: PostgreSQL crashed
(`pg_ctl stop -m immediate`) and restarted after PG_DOWN seconds, replica a killed with
SIGKILL and restarted, replica b stopped with SIGTERM and restarted. Every usage update has a
request id of its own and is sent again, to the same replica, until it is answered 202, as a
gateway would. At the end both replicas stop with SIGTERM and the database must hold exactly
what was acknowledged: in the keys' counters, the customer's budget, the hourly rollups and
the idempotency keys. Prints the totals and the difference; exits 1 on any difference.

Run through bench/soak.sh, which builds the release binary first. Environment:
  MINUTES (10)        how long the traffic runs
  FAULT_EVERY (6)     seconds between faults
  PG_DOWN (3)         seconds PostgreSQL stays down
  CLIENTS (6)         traffic threads, half on each replica
  KEYS (20)           virtual keys
  ADMIN_EVERY (0.5)   seconds between admin changes (0: none)
  PG_SETTINGS         extra server settings (default: a disk whose flushes take 2 ms)
  HEIMDALL_BIN        the binary (target/release/heimdall)
"""

import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

MINUTES = float(os.environ.get("MINUTES", "10"))
FAULT_EVERY = float(os.environ.get("FAULT_EVERY", "6"))
PG_DOWN = float(os.environ.get("PG_DOWN", "3"))
CLIENTS = int(os.environ.get("CLIENTS", "6"))
KEYS = int(os.environ.get("KEYS", "20"))
ADMIN_EVERY = float(os.environ.get("ADMIN_EVERY", "0.5"))
# Commits wait 2 ms between writing their commit record and flushing it, as on a disk whose
# flushes take that long: crashes then land inside commits often.
PG_SETTINGS = os.environ.get("PG_SETTINGS", "-c fsync=on -c commit_delay=2000 -c commit_siblings=0")
BIN = os.environ.get("HEIMDALL_BIN", "target/release/heimdall")
TOKEN = "soak-token"
HEADERS = {"content-type": "application/json", "authorization": f"Bearer {TOKEN}"}
# Longer than the test: no window ends while it runs, so the counters hold every update.
WINDOW = "1Y"
# An update that is not acknowledged after this long means the service is stuck.
GIVE_UP = 120.0


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postgres:
    """A private cluster in a temporary directory, run as the postgres user when we are root
    (PostgreSQL refuses to run as root)."""

    def __init__(self, work):
        self.bindir = subprocess.check_output(["pg_config", "--bindir"], text=True).strip()
        self.dir = os.path.join(work, "pg")
        os.mkdir(self.dir)
        if os.geteuid() == 0:
            shutil.chown(work, "postgres", "postgres")
            shutil.chown(self.dir, "postgres", "postgres")
        self.port = free_port()
        self.tool("initdb", "-D", f"{self.dir}/data", "-A", "trust", "-U", "postgres", "--no-sync")
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def tool(self, name, *args):
        cmd = [os.path.join(self.bindir, name), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if done.returncode != 0:
            sys.exit(f"{name} {' '.join(args)} failed (log: {self.dir}/log)")

    def start(self):
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 {PG_SETTINGS}"
        self.tool("pg_ctl", "-D", f"{self.dir}/data", "-o", opts, "-l", f"{self.dir}/log", "-w", "start")

    def crash(self):
        self.tool("pg_ctl", "-D", f"{self.dir}/data", "-m", "immediate", "-w", "stop")

    def stop(self):
        self.tool("pg_ctl", "-D", f"{self.dir}/data", "-m", "fast", "-w", "stop")

    def rows(self, sql):
        out = subprocess.check_output(
            ["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres", "-Atc", sql],
            text=True,
        )
        return [line.split("|") for line in out.splitlines() if line]

    def query(self, sql):
        rows = self.rows(sql)
        return int(rows[0][0]) if rows else 0


class Replica:
    def __init__(self, name, db_url, work):
        self.name = name
        self.port = free_port()
        self.db_url = db_url
        self.log = open(os.path.join(work, f"replica-{name}.log"), "ab")
        self.proc = None

    def start(self):
        env = dict(os.environ)
        env.update({
            "HEIMDALL__ACK": "durable",
            "HEIMDALL__FLUSH_INTERVAL": "200ms",
            "HEIMDALL__AUTH__ADMIN_TOKENS": TOKEN,
            "HEIMDALL__AUTH__GATEWAY_TOKENS": TOKEN,
            "HEIMDALL__LOG_LEVEL": "warn",
        })
        deadline = time.monotonic() + 60
        while True:
            self.proc = subprocess.Popen(
                [BIN, "serve", "--listen", f"127.0.0.1:{self.port}", "--database-url", self.db_url],
                env=env, stdout=subprocess.DEVNULL, stderr=self.log,
            )
            while self.proc.poll() is None and time.monotonic() < deadline:
                if call(self.port, "GET", "/healthz")[0] == 200:
                    return
                time.sleep(0.1)
            if time.monotonic() >= deadline:
                sys.exit(f"replica {self.name} did not start within 60 s")
            # It stopped during start-up (the database was down): start it again.
            time.sleep(0.5)

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def term(self):
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=120)


def call(port, method, path, body=None, conn=None):
    """(status, parsed body); status None when the replica cannot be reached."""
    own = conn is None
    if own:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, None if body is None else json.dumps(body), HEADERS)
        resp = conn.getresponse()
        data = resp.read()
        try:
            return resp.status, json.loads(data) if data else None
        except ValueError:
            return resp.status, data
    except (OSError, http.client.HTTPException):
        conn.close()
        return None, None
    finally:
        if own:
            conn.close()


class Totals:
    def __init__(self):
        self.updates = 0
        self.tokens = 0
        self.nanos = 0
        self.batches = 0
        self.checks = 0
        self.admin = 0
        self.retries = 0
        self.unexpected = []


def send_until_acknowledged(conn, port, path, body, totals, stop_hard):
    """Sends `body` until 202; True when acknowledged."""
    started = time.monotonic()
    while True:
        status, data = call(port, "POST", path, body, conn)
        if status == 202:
            return True
        if status not in (None, 503):
            totals.unexpected.append(f"POST {path}: {status} {data}")
            return False
        if time.monotonic() - started > GIVE_UP or stop_hard.is_set():
            totals.unexpected.append(f"POST {path}: not acknowledged after {GIVE_UP:.0f} s")
            return False
        totals.retries += 1
        time.sleep(0.05 + random.random() * 0.15)


def traffic(client, replica, keys, stop, stop_hard, totals):
    conn = http.client.HTTPConnection("127.0.0.1", replica.port, timeout=30)
    n = 0

    def update(tokens):
        nonlocal n
        n += 1
        return {"virtual_key": random.choice(keys)["value"], "provider": "openai", "model": "gpt-4o",
                "tokens_used": tokens, "cost": tokens / 1e6, "request_id": f"soak-{client}-{n}"}

    while not stop.is_set():
        r = random.random()
        if r < 0.55:
            tokens = random.randint(1, 100)
            if send_until_acknowledged(conn, replica.port, "/v1/usage", update(tokens), totals, stop_hard):
                totals.updates += 1
                totals.tokens += tokens
                totals.nanos += tokens * 1000
        elif r < 0.70:
            items = [update(random.randint(1, 100)) for _ in range(20)]
            if send_until_acknowledged(conn, replica.port, "/v1/usage/batch", {"updates": items}, totals, stop_hard):
                totals.batches += 1
                totals.updates += len(items)
                totals.tokens += sum(u["tokens_used"] for u in items)
                totals.nanos += sum(u["tokens_used"] * 1000 for u in items)
        else:
            status, data = call(replica.port, "POST", "/v1/check",
                                {"virtual_key": random.choice(keys)["value"], "provider": "openai", "model": "gpt-4o"}, conn)
            if status == 200:
                totals.checks += 1
            elif status is not None:
                totals.unexpected.append(f"POST /v1/check: {status} {data}")
        if totals.unexpected:
            return
    conn.close()


def admin(replicas, keys, stop, totals):
    """Changes limits (never their windows) on either replica, every ADMIN_EVERY seconds."""
    while ADMIN_EVERY > 0 and not stop.is_set():
        replica = random.choice(replicas)
        key = random.choice(keys)
        if random.random() < 0.5:
            body = {"rate_limit": {"token_max_limit": random.randint(10**12, 10**13), "token_reset_duration": WINDOW}}
        else:
            body = {"budget": {"max_limit": random.randint(10**6, 10**7), "reset_duration": WINDOW}}
        status, data = call(replica.port, "PUT", f"/api/governance/virtual-keys/{key['id']}", body)
        if status == 200:
            totals.admin += 1
        elif status not in (None, 503):
            totals.unexpected.append(f"PUT virtual key: {status} {data}")
            return
        time.sleep(ADMIN_EVERY)


def setup(replica):
    def create(path, body):
        status, data = call(replica.port, "POST", path, body)
        if status != 200:
            sys.exit(f"POST {path}: {status} {data}")
        return data

    budget = {"max_limit": 10**7, "reset_duration": WINDOW}
    rate = {"token_max_limit": 10**12, "token_reset_duration": WINDOW,
            "request_max_limit": 10**12, "request_reset_duration": WINDOW}
    customer = create("/api/governance/customers", {"name": "soak", "budget": budget})["customer"]["id"]
    teams = [create("/api/governance/teams", {"name": f"team-{t}", "customer_id": customer,
                                               "budget": budget, "rate_limit": rate})["team"]["id"] for t in range(2)]
    keys = []
    for k in range(KEYS):
        vk = create("/api/governance/virtual-keys", {"name": f"key-{k}", "team_id": teams[k % 2],
                                                      "budget": budget, "rate_limit": rate})["virtual_key"]
        keys.append({"id": vk["id"], "value": vk["value"]})
    return keys


def main():
    if not os.path.exists(BIN):
        sys.exit(f"{BIN} is missing: run bench/soak.sh (it builds the release binary)")
    work = tempfile.mkdtemp(prefix="heimdall-soak-")
    pg = Postgres(work)
    pg.start()
    replicas = [Replica("a", pg.url, work), Replica("b", pg.url, work)]
    stop, stop_hard = threading.Event(), threading.Event()
    threads = []
    try:
        for r in replicas:
            r.start()
        keys = setup(replicas[0])
        # Replica b learns of the keys at its next tick.
        while call(replicas[1].port, "POST", "/v1/check", {"virtual_key": keys[-1]["value"]})[0] != 200:
            time.sleep(0.1)
        log(f"two durable replicas on PostgreSQL :{pg.port}, {KEYS} keys, {CLIENTS} clients, "
            f"{MINUTES} min, a fault every {FAULT_EVERY} s (logs in {work})")

        totals = [Totals() for _ in range(CLIENTS + 1)]
        for c in range(CLIENTS):
            threads.append(threading.Thread(target=traffic, args=(c, replicas[c % 2], keys, stop, stop_hard, totals[c])))
        threads.append(threading.Thread(target=admin, args=(replicas, keys, stop, totals[CLIENTS])))
        for t in threads:
            t.start()

        faults = {"postgres crash": 0, "kill -9": 0, "SIGTERM": 0}
        unclean = []
        end = time.monotonic() + MINUTES * 60
        kind = 0
        while time.monotonic() + FAULT_EVERY < end and not any(t.unexpected for t in totals):
            time.sleep(FAULT_EVERY)
            if kind % 3 == 0:
                pg.crash()
                time.sleep(PG_DOWN)
                pg.start()
                faults["postgres crash"] += 1
            elif kind % 3 == 1:
                replicas[0].kill()
                replicas[0].start()
                faults["kill -9"] += 1
            else:
                rc = replicas[1].term()
                if rc != 0:
                    unclean.append(f"replica b exited with {rc} on SIGTERM")
                replicas[1].start()
                faults["SIGTERM"] += 1
            kind += 1
            log(f"faults so far: {faults}")
        time.sleep(max(0.0, end - time.monotonic()))
        stop.set()
        for t in threads:
            t.join(timeout=GIVE_UP + 30)
        stop_hard.set()
        for r in replicas:
            rc = r.term()
            if rc != 0:
                unclean.append(f"replica {r.name} exited with {rc} at the end")

        acked = Totals()
        for t in totals:
            for field in ("updates", "tokens", "nanos", "batches", "checks", "admin", "retries"):
                setattr(acked, field, getattr(acked, field) + getattr(t, field))
            acked.unexpected += t.unexpected
        stored = {
            "updates (rollup requests)": pg.query("select coalesce(sum(requests), 0) from usage_rollups"),
            "updates (idempotency keys)": pg.query("select coalesce(sum(length(keys)), 0) / 16 from dedup_blocks"),
            "tokens (keys' counters)": pg.query(
                "select coalesce(sum(r.token_current_usage), 0) from virtual_keys v "
                "join rate_limits r on r.id = v.rate_limit_id"),
            "tokens (rollups)": pg.query("select coalesce(sum(tokens), 0) from usage_rollups"),
            "cost in nano-dollars (customer budget)": pg.query(
                "select b.current_usage from customers c join budgets b on b.id = c.budget_id"),
            "cost in nano-dollars (rollups)": pg.query("select coalesce(sum(cost), 0) from usage_rollups"),
        }
        expected = {
            "updates (rollup requests)": acked.updates,
            "updates (idempotency keys)": acked.updates,
            "tokens (keys' counters)": acked.tokens,
            "tokens (rollups)": acked.tokens,
            "cost in nano-dollars (customer budget)": acked.nanos,
            "cost in nano-dollars (rollups)": acked.nanos,
        }
        # Each key's counters against its own rollups: which keys a difference is on.
        keys_off = pg.rows(
            "select v.name, r.token_current_usage, b.current_usage, "
            "coalesce(sum(u.tokens), 0), coalesce(sum(u.cost), 0) "
            "from virtual_keys v join rate_limits r on r.id = v.rate_limit_id "
            "join budgets b on b.id = v.budget_id left join usage_rollups u on u.virtual_key_id = v.id "
            "group by v.name, r.token_current_usage, b.current_usage "
            "having r.token_current_usage <> coalesce(sum(u.tokens), 0) "
            "or b.current_usage <> coalesce(sum(u.cost), 0)")
        journal = pg.query("select count(*) from usage_journal")
        print()
        print(f"updates acknowledged: {acked.updates} ({acked.batches} batches of 20 among them), "
              f"{acked.retries} retries")
        print(f"checks answered: {acked.checks}; admin changes: {acked.admin}")
        print(f"faults injected: {sum(faults.values())} ({', '.join(f'{k} {v}' for k, v in faults.items())})")
        failed = False
        for name, value in stored.items():
            difference = value - expected[name]
            print(f"  {name:40} acknowledged {expected[name]:>14}  stored {value:>14}  difference {difference}")
            failed |= difference != 0
        print(f"journal entries left after both replicas stopped: {journal}")
        for name, tokens, nanos, rollup_tokens, rollup_nanos in keys_off:
            print(f"  key {name}: tokens {tokens} (rollups {rollup_tokens}), "
                  f"budget {nanos} (rollups {rollup_nanos})")
        failed |= bool(keys_off)
        for problem in unclean + acked.unexpected[:10]:
            print(f"problem: {problem}")
        failed |= bool(unclean or acked.unexpected)
        print("soak FAILED" if failed else "soak passed: every acknowledged update is stored exactly once")
        return 1 if failed else 0
    finally:
        stop.set()
        stop_hard.set()
        for r in replicas:
            if r.proc is not None and r.proc.poll() is None:
                r.proc.kill()
        try:
            pg.stop()
        except SystemExit:
            pass
        if os.environ.get("KEEP") is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
