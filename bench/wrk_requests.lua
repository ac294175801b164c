-- wrk script for bench/load.py: replays pre-signed raw requests, each once.
-- Arguments (after --): a Lua file returning the list of raw requests, and their count.
-- When the list is used up, a connection waits (delay) instead of sending, until every
-- counted response is in; then wrk stops. `done` prints one JSON line.

local requests, total, next_index = nil, 0, 1
-- Globals, so that `done` can read them from each thread with thread:get.
counted, statuses = 0, {}
-- Returned only for wrk's discarded first call (see request()); never sent.
local DONE_REQUEST = "GET /__wrk_done HTTP/1.1\r\nHost: bench\r\n\r\n"
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  requests = dofile(args[1])
  total = tonumber(args[2])
end

-- wrk calls request() once per thread right after init and throws that one away
-- (it checks whether the request is static): that call must not use up a request.
local primed = false

function delay()
  if requests ~= nil and next_index > #requests then
    return 600000 -- used up: send nothing more; bench/load.py stops wrk once all are answered
  end
  return 0
end

function request()
  if not primed then
    primed = true
    return DONE_REQUEST
  end
  local raw = requests[next_index]
  if raw == nil then
    return DONE_REQUEST
  end
  next_index = next_index + 1
  return raw
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status ~= 404 then
    counted = counted + 1
    if counted >= total then
      -- wrk itself waits out its whole -d duration; bench/load.py ends it on this line.
      io.write("DONE\n")
      io.flush()
      wrk.thread:stop()
    end
  end
end

function done(summary, latency, requests_)
  local parts, merged, count = {}, {}, 0
  for _, thread in ipairs(threads) do
    count = count + thread:get("counted")
    for status, n in pairs(thread:get("statuses")) do
      merged[status] = (merged[status] or 0) + n
    end
  end
  for status, n in pairs(merged) do
    table.insert(parts, string.format('"%d": %d', status, n))
  end
  local e = summary.errors
  io.write(string.format(
    '{"counted": %d, "requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "max_us": %d, ' ..
    '"statuses": {%s}, "errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}}\n',
    count, summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    table.concat(parts, ", "), e.connect, e.read, e.write, e.timeout))
end
