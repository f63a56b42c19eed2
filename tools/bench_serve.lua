-- wrk script of tools/bench_serve.py: POSTs JSON bodies read from $BENCH_REQUESTS (one request a
-- line: "PATH<TAB>BODY"), each connection's thread taking them in turn; counts answers by status;
-- done() prints one JSON line.
local lines = {}
local next_line = 1
ok, too_many, other = 0, 0, 0

local threads = {}
function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  for line in io.lines(os.getenv("BENCH_REQUESTS")) do
    local tab = line:find("\t", 1, true)
    table.insert(lines, { line:sub(1, tab - 1), line:sub(tab + 1) })
  end
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  local item = lines[next_line]
  next_line = next_line % #lines + 1
  return wrk.format(nil, item[1], nil, item[2])
end

function response(status, headers, body)
  if status == 200 then
    ok = ok + 1
  elseif status == 429 then
    too_many = too_many + 1
  else
    other = other + 1
  end
end

function done(summary, latency, requests)
  local counts = { ok = 0, too_many = 0, other = 0 }
  for _, t in ipairs(threads) do
    counts.ok = counts.ok + t:get("ok")
    counts.too_many = counts.too_many + t:get("too_many")
    counts.other = counts.other + t:get("other")
  end
  local e = summary.errors
  io.write(string.format(
    '{"seconds": %.3f, "requests": %d, "ok": %d, "status_429": %d, "status_other": %d, '
      .. '"socket_errors": %d, "timeouts": %d, "p50_ms": %.1f, "p90_ms": %.1f, "p99_ms": %.1f, '
      .. '"max_ms": %.1f, "mean_ms": %.1f}\n',
    summary.duration / 1e6, summary.requests, counts.ok, counts.too_many, counts.other,
    e.connect + e.read + e.write, e.timeout, latency:percentile(50) / 1e3,
    latency:percentile(90) / 1e3, latency:percentile(99) / 1e3, latency.max / 1e3, latency.mean / 1e3))
end
