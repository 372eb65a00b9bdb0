-- wrk script of test_http_clients.sh: sends DEPTH requests for /plaintext at a time
-- (pipelined when DEPTH > 1), each with "Connection: close" when the second argument says
-- "close", and counts the responses whose status is not 200. done() prints one line:
--   RESULT requests=N not200=N connect=N read=N write=N status=N timeout=N
-- Usage: wrk ... -s http_pipeline.lua URL -- DEPTH [close]
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local depth = tonumber(args[1] or "16")
  local headers = {}
  if args[2] == "close" then
    headers["Connection"] = "close"
  end
  local reqs = {}
  for i = 1, depth do
    reqs[i] = wrk.format("GET", "/plaintext", headers)
  end
  batch = table.concat(reqs)
  not200 = 0
end

function request()
  return batch
end

function response(status, headers, body)
  if status ~= 200 then
    not200 = not200 + 1
  end
end

function done(summary, latency, requests)
  local bad = 0
  for _, thread in ipairs(threads) do
    bad = bad + thread:get("not200")
  end
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d not200=%d connect=%d read=%d write=%d status=%d timeout=%d\n",
    summary.requests, bad, e.connect, e.read, e.write, e.status, e.timeout))
end
