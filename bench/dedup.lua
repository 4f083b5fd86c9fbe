-- wrk script for bench/dedup.sh: usage events that each carry a request id never sent before
-- (IDS=1), or none (IDS=0; the same strings are built and thrown away, so that the load
-- generator costs the same), BATCH to a /v1/usage/batch request, or one per /v1/usage request
-- when BATCH is 1. Env: KEYS (file of key values), TOKEN, BATCH, IDS.
local token = os.getenv("TOKEN")
local batch = tonumber(os.getenv("BATCH"))
local with_ids = os.getenv("IDS") == "1"
local keys = {}
for line in io.lines(os.getenv("KEYS")) do
  if #line > 0 then keys[#keys + 1] = line end
end
local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token}
local next_id = 0

setup = function(thread)
  next_id = next_id + 1
  thread:set("tid", next_id)
end

local prefixes = {}
init = function()
  math.randomseed(os.time() + tid)
  for i = 1, 256 do
    prefixes[i] = string.format(
      '{"virtual_key":"%s","provider":"openai","model":"gpt-4o","tokens_used":%d,"cost":0.0001',
      keys[math.random(#keys)], math.random(1, 4000))
  end
end

local sent = 0
request = function()
  sent = sent + 1
  if batch == 1 then
    local id = tid .. "-" .. sent
    local body = with_ids and (prefixes[sent % 256 + 1] .. ',"request_id":"' .. id .. '"}')
      or (prefixes[sent % 256 + 1] .. "}")
    return wrk.format("POST", "/v1/usage", headers, body)
  end
  local items = {}
  for j = 1, batch do
    local id = tid .. "-" .. sent .. "-" .. j
    if with_ids then
      items[j] = prefixes[j % 256 + 1] .. ',"request_id":"' .. id .. '"}'
    else
      items[j] = prefixes[j % 256 + 1] .. "}"
    end
  end
  return wrk.format("POST", "/v1/usage/batch", headers, '{"updates":[' .. table.concat(items, ",") .. "]}")
end

done = function(summary, latency, requests)
  io.write(string.format("RESULT rps=%.0f p99_ms=%.2f non2xx=%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(99) / 1000, summary.errors.status))
end
