#!/usr/bin/env python3
"""Creates the load benchmark's governance state over the admin API: customers, teams under
them, and virtual keys under the teams, each level with a budget and a rate limit; plus
provider and model governance. Writes the key values, one per line, to the given file."""

import http.client
import json
import sys

host, port, token, keys_total, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
conn = http.client.HTTPConnection(host, port)
headers = {"content-type": "application/json", "authorization": f"Bearer {token}"}
BUDGET = {"max_limit": 1e9, "reset_duration": "1M"}
RATE = {"token_max_limit": 10**15, "token_reset_duration": "1h", "request_max_limit": 10**12, "request_reset_duration": "1m"}


def call(method, path, body):
    conn.request(method, path, json.dumps(body), headers)
    resp = conn.getresponse()
    data = json.loads(resp.read())
    if resp.status != 200:
        sys.exit(f"{method} {path}: {resp.status} {data}")
    return data


call("PUT", "/api/governance/providers/openai", {"budget": BUDGET, "rate_limit": RATE})
call("POST", "/api/governance/model-configs", {"model_name": "gpt-4o", "budget": BUDGET, "rate_limit": RATE})
customers, teams_per_customer = 20, 5
keys_per_team = max(1, keys_total // (customers * teams_per_customer))
values = []
for c in range(customers):
    cid = call("POST", "/api/governance/customers", {"name": f"customer-{c}", "budget": BUDGET, "rate_limit": RATE})["customer"]["id"]
    for t in range(teams_per_customer):
        tid = call("POST", "/api/governance/teams", {"name": f"team-{c}-{t}", "customer_id": cid, "budget": BUDGET, "rate_limit": RATE})["team"]["id"]
        for k in range(keys_per_team):
            vk = call("POST", "/api/governance/virtual-keys", {
                "name": f"key-{c}-{t}-{k}", "team_id": tid, "budget": BUDGET, "rate_limit": RATE,
                "provider_configs": [{"provider": "openai", "budget": BUDGET, "rate_limit": RATE}],
            })["virtual_key"]
            values.append(vk["value"])
with open(out, "w") as f:
    f.write("\n".join(values) + "\n")
print(f"created {len(values)} keys under {customers * teams_per_customer} teams and {customers} customers")
