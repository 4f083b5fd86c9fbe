-- wrk script: cycles through pre-built requests so that building them costs the load
-- generator the same (nothing) for every endpoint. The events carry no request_id: repeated
-- bodies would otherwise be answered as duplicates and skip the counters. Env: MODE (healthz|usage|check|batch),
-- KEYS (file of key values), TOKEN, BATCH (events per batch request), REQUESTS (distinct
-- requests built, each for a random key; default 512).
local mode = os.getenv("MODE")
local token = os.getenv("TOKEN")
local batch = tonumber(os.getenv("BATCH") or "1000")
local keys = {}
for line in io.lines(os.getenv("KEYS")) do
  if #line > 0 then keys[#keys + 1] = line end
end
math.randomseed(os.time())
local requests = {}

-- Each key has its own user (rollups then hold one row per key and hour, as with real
-- applications behind keys).
local function event(i)
  return string.format(
    '{"virtual_key":"%s","provider":"openai","model":"gpt-4o","success":true,"tokens_used":%d,"cost":0.0123,"user_id":"u-%d"}',
    keys[i], math.random(1, 4000), i)
end

local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token}
for i = 1, tonumber(os.getenv("REQUESTS") or "512") do
  local k = math.random(#keys)
  local key = keys[k]
  if mode == "healthz" then
    requests[i] = wrk.format("GET", "/healthz", headers)
  elseif mode == "usage" then
    requests[i] = wrk.format("POST", "/v1/usage", headers, event(k))
  elseif mode == "check" then
    local body = string.format('{"virtual_key":"%s","provider":"openai","model":"gpt-4o","user_id":"u-%d"}', key, k)
    requests[i] = wrk.format("POST", "/v1/check", headers, body)
  elseif mode == "batch" and i <= 16 then
    local items = {}
    for j = 1, batch do items[j] = event(math.random(#keys)) end
    requests[i] = wrk.format("POST", "/v1/usage/batch", headers, '{"updates":[' .. table.concat(items, ",") .. ']}')
  end
end

local n = 0
request = function()
  n = n % #requests + 1
  return requests[n]
end

done = function(summary, latency, requests)
  io.write(string.format("RESULT %s rps=%.1f p50_ms=%.3f p99_ms=%.3f errors=%d non2xx=%d\n",
    mode, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status))
end
