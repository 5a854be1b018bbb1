-- wrk script for the load harness: adds the JWT (when BENCH_TOKEN is set) and an
-- X-Forwarded-For chain (when BENCH_XFF is set), and prints
-- one machine-readable line with wrk's own counters and latency percentiles.
-- Only `done` is defined: a `response` callback would make wrk itself much slower.

local token = os.getenv("BENCH_TOKEN")
if token ~= nil and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end

local xff = os.getenv("BENCH_XFF")
if xff ~= nil and xff ~= "" then
  wrk.headers["X-Forwarded-For"] = xff
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%.0f,"duration_us":%.0f,"bytes":%.0f,' ..
    '"err_connect":%.0f,"err_read":%.0f,"err_write":%.0f,"err_status":%.0f,"err_timeout":%.0f,' ..
    '"lat_mean_us":%.1f,"lat_stdev_us":%.1f,"lat_max_us":%.0f,' ..
    '"p50_us":%.0f,"p90_us":%.0f,"p99_us":%.0f,"p999_us":%.0f}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9)))
end
