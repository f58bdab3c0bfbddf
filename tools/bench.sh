#!/usr/bin/env bash
# Benchmarks on release builds against the local Redis and RabbitMQ, with fake-plivo standing in
# for Plivo: API request and verify throughput/latency (wrk), dispatcher drain rate, the
# PLIVO_MAX_RPS cap, and resident memory. Uses its own queue and key prefix, removed at the end.
# Usage: tools/bench.sh [seconds per wrk run, default 20]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
bash tools/services.sh
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --release -q -p otp-api -p otp-dispatcher -p fake-plivo

set -a
. ./.env.example
LOG_FORMAT=json RUST_LOG=warn APP_ENV=development
SMS_QUEUE=bench.sms.$$ REDIS_KEY_PREFIX=bench:$$:
MAX_REQUESTS_PER_IP_PER_MINUTE=0 RESEND_COOLDOWN_SECONDS=0 MAX_SENDS_PER_NUMBER_PER_HOUR=0
MAX_VERIFIES_PER_NUMBER_PER_15_MINUTES=0 OTP_MAX_ATTEMPTS=100
PORT=3900 DISPATCHER_HTTP_PORT=3901 FAKE_PLIVO_PORT=3902 PLIVO_BASE_URL=http://127.0.0.1:3902
FAKE_PLIVO_PRINT=false FAKE_PLIVO_LATENCY_MS=50
set +a

pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  for q in "$SMS_QUEUE" "$SMS_QUEUE.dead"; do rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true; done
  rabbitmqctl -q eval "rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, <<\"$SMS_QUEUE.dlx\">>), false, <<\"bench\">>)." >/dev/null 2>&1 || true
  redis-cli --scan --pattern "$REDIS_KEY_PREFIX*" | xargs -r -n 500 redis-cli del >/dev/null
}
trap cleanup EXIT
wait_http() { for _ in $(seq 1 100); do curl -sf "$1" >/dev/null && return 0; sleep 0.1; done; return 1; }
rss_mib() { awk '/VmRSS/ {printf "%.1f MiB", $2/1024}' "/proc/$1/status"; }
accepted() { curl -sf "http://127.0.0.1:$FAKE_PLIVO_PORT/stats" | sed 's/.*"accepted":\([0-9]*\).*/\1/' | grep -E '^[0-9]+$' || echo 0; }
# Jobs the dispatcher on port $1 has finished, whatever their end (sent, expired, failed...).
jobs_done() { curl -sf "http://127.0.0.1:$1/metrics" | awk '/^otp_jobs_total/ {s+=$2} END {print s+0}' || echo 0; }

target/release/fake-plivo & pids+=($!)
target/release/otp-api & api=$!; pids+=($api)
wait_http "http://127.0.0.1:$PORT/readyz"

echo "== POST /api/otp/request, ${secs}s, 64 connections (dispatcher stopped, jobs pile up)"
wrk -t2 -c64 -d"${secs}s" --latency -s tools/bench/request.lua "http://127.0.0.1:$PORT" | grep -E "Latency|50%|99%|Requests/sec|Non-2xx|requests in"
echo "otp-api RSS after load: $(rss_mib $api)"
queued=$(rabbitmqctl -q list_queues name messages | awk -v q="$SMS_QUEUE" '$1 == q {print $2}')
echo "jobs queued: $queued"

echo "== POST /api/otp/verify (rejections), ${secs}s, 64 connections"
wrk -t2 -c64 -d"${secs}s" --latency -s tools/bench/verify.lua "http://127.0.0.1:$PORT" | grep -E "Latency|50%|99%|Requests/sec|Non-2xx|requests in"

echo "== verify timing: no code vs live code with a wrong guess (sequential, one connection)"
python3 tools/bench/verify_timing.py "$PORT"

echo "== dispatcher drain: $queued jobs, Plivo latency ${FAKE_PLIVO_LATENCY_MS}ms, concurrency $DISPATCHER_CONCURRENCY, no rate cap"
PLIVO_MAX_RPS=100000 target/release/otp-dispatcher & disp=$!; pids+=($disp)
start=$(date +%s.%N)
# Until every job has ended (sent, or expired if the backlog outlived its codes), or 10 minutes.
deadline=$(( $(date +%s) + 600 ))
while [ "$(jobs_done "$DISPATCHER_HTTP_PORT")" -lt "$queued" ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.5; done
end=$(date +%s.%N)
sent=$(accepted)
awk -v n="$sent" -v q="$queued" -v s="$start" -v e="$end" 'BEGIN {printf "drained: %d sends in %.1f s (%d jobs were queued by the request run): %.0f sends/s\n", n, e-s, q, n/(e-s)}'
echo "otp-dispatcher RSS after drain: $(rss_mib $disp)"
kill "$disp"; wait "$disp" 2>/dev/null || true

echo "== PLIVO_MAX_RPS=50 shared by two dispatchers, 10 s of backlog"
wrk -t1 -c16 -d5s -s tools/bench/request.lua "http://127.0.0.1:$PORT" >/dev/null
PLIVO_MAX_RPS=50 DISPATCHER_HTTP_PORT=3903 target/release/otp-dispatcher & pids+=($!)
PLIVO_MAX_RPS=50 DISPATCHER_HTTP_PORT=3904 target/release/otp-dispatcher & pids+=($!)
sleep 2
before=$(accepted); sleep 10; after=$(accepted)
echo "sends in 10 s: $((after - before)) (cap: 500 + burst)"
