-- wrk script: POST /api/otp/request for random valid US numbers.
math.randomseed(os.time())
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
-- With BENCH_API_KEY=true (tools/bench.sh), every request carries the caller key.
local bearer = os.getenv("BENCH_BEARER")
if bearer then wrk.headers["Authorization"] = "Bearer " .. bearer end
request = function()
  return wrk.format(nil, "/api/otp/request", nil,
    string.format('{"phoneNumber":"+1415555%04d"}', math.random(0, 9999)))
end
