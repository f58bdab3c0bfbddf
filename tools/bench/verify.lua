-- wrk script: POST /api/otp/verify with random numbers and codes (the rejection path, which
-- does the same work whether or not a number has a code).
math.randomseed(os.time() + 1)
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  return wrk.format(nil, "/api/otp/verify", nil,
    string.format('{"phoneNumber":"+1415555%04d","otp":"%06d"}',
      math.random(0, 9999), math.random(0, 999999)))
end
