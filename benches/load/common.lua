-- Shared by every workload: counts bad answers per thread and prints one
-- machine-readable RESULT line for run.sh when wrk is done.

local threads = {}

bad = 0

function setup(thread)
   table.insert(threads, thread)
end

function done(summary, latency, requests)
   local bad_total, authorizes, tokens = 0, 0, 0
   for _, t in ipairs(threads) do
      bad_total = bad_total + (t:get("bad") or 0)
      authorizes = authorizes + (t:get("authorizes") or 0)
      tokens = tokens + (t:get("tokens") or 0)
   end
   local e = summary.errors
   io.write(string.format(
      "RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d bad=%d status_errors=%d socket_errors=%d"
         .. " authorizes=%d tokens=%d\n",
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
      bad_total, e.status, e.connect + e.read + e.write + e.timeout,
      authorizes, tokens))
end
