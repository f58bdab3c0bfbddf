"""Compares verify latency for a number that never had a code and one with a live code and a
wrong guess: both must answer the same INVALID_OTP in about the same time.
Usage: python3 verify_timing.py PORT (against an otp-api with OTP_MAX_ATTEMPTS >= 100 and
MAX_VERIFIES_PER_NUMBER_PER_15_MINUTES=0)."""
import http.client, json, statistics, sys, time

conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))


def post(path, body):
    started = time.perf_counter()
    conn.request("POST", path, json.dumps(body), {"content-type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    return resp.status, data, (time.perf_counter() - started) * 1000


assert post("/api/otp/request", {"phoneNumber": "+16505550111"})[0] == 202
for _ in range(50):  # warm up connections and caches
    post("/api/otp/verify", {"phoneNumber": "+16505550199", "otp": "000000"})
samples = {"never had a code": [], "wrong code": []}
answers = set()
for i in range(90):
    guess = "%06d" % (i * 7919 % 1000000)
    for name, phone in (("never had a code", "+16505550122"), ("wrong code", "+16505550111")):
        status, data, ms = post("/api/otp/verify", {"phoneNumber": phone, "otp": guess})
        samples[name].append(ms)
        answers.add((status, data))
for name, ms in samples.items():
    ms.sort()
    print(f"verify, {name:16s}: median {statistics.median(ms):.3f} ms, p90 {ms[int(len(ms) * 0.9)]:.3f} ms")
print(f"distinct answers: {len(answers)} {sorted(answers)}")
