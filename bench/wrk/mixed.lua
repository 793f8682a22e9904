-- 90 % new keys, 10 % retries of a recent key.
local n = 0
function setup(thread)
  -- A prefix unique to this run and thread, so no two requests share a key by accident.
  thread:set("prefix", os.time() .. "-" .. tostring(thread):gsub("%W", "") .. "-")
end
function request()
  n = n + 1
  local key
  if n % 10 == 0 and n > 20 then
    key = prefix .. (n - 1 - math.random(0, 9))
  else
    key = prefix .. n
  end
  return wrk.format("POST", "/v1/charges",
    { ["Idempotency-Key"] = key, ["Content-Type"] = "application/json",
      ["Authorization"] = "Bearer bench-client" },
    '{"amount":4200,"currency":"eur"}')
end
