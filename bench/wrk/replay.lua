-- A small set of keys retried over and over: after the first round every request is a
-- replay and the upstream is not called.
local n = 0
-- BENCH_COOKIE, when set, is sent as the Cookie header (the axum-idempotent peer caches
-- only for a request carrying a session).
local cookie = os.getenv("BENCH_COOKIE")
function setup(thread)
  -- A prefix unique to this run and thread, so no two requests share a key by accident.
  thread:set("prefix", os.time() .. "-" .. tostring(thread):gsub("%W", "") .. "-")
end
function request()
  n = n + 1
  local headers = {}
  headers["Idempotency-Key"] = prefix .. (n % 64)
  headers["Content-Type"] = "application/json"
  -- Credentials: idem scopes keys by them (R4) and refuses a keyed request without any.
  headers["Authorization"] = "Bearer bench"
  if cookie then headers["Cookie"] = cookie end
  return wrk.format("POST", "/v1/charges", headers,
    '{"amount":4200,"currency":"eur"}')
end
