-- A small set of keys retried over and over: after the first round every request is a
-- replay and the upstream is not called.
local n = 0
function setup(thread)
  -- A prefix unique to this run and thread, so no two requests share a key by accident.
  thread:set("prefix", os.time() .. "-" .. tostring(thread):gsub("%W", "") .. "-")
end
function request()
  n = n + 1
  return wrk.format("POST", "/v1/charges",
    { ["Idempotency-Key"] = prefix .. (n % 64), ["Content-Type"] = "application/json",
      ["Authorization"] = "Bearer bench-client" },
    '{"amount":4200,"currency":"eur"}')
end
