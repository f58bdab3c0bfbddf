#!/usr/bin/env bash
# The benchmark suite (BENCHMARKS.md): release builds against the local Redis and RabbitMQ, with
# fake-plivo standing in for the provider. Each scenario prints one summary line at the end.
# Usage: tools/bench.sh SCENARIO [seconds, default 20]
#   request      POST /api/otp/request alone (no dispatcher), provider instant, slow and down
#   system       the whole system, provider instant: codes/s, latency, CPU per code per process
#   dispatchers  drain against a 250 ms provider: 1, 2 and 3 dispatchers; then SMS_MAX_RPS
#                shared by 3 dispatchers
#   outage       the provider down for 60 s under steady load, then back: every SMS exactly once,
#                and the backlog's drain rate against the cap (a drill, on release builds)
#   limiter      Redis work per send draining 10,000 jobs uncapped, then at SMS_MAX_RPS=500:
#                commands and script calls per send (INFO commandstats) and Redis CPU per send
#   memory       resident memory under `system` load and with a 100,000-job backlog
#   verify       POST /api/otp/verify rejections, and verify timing (no code vs wrong guess)
#   faults       the fault drills, 3 rounds: kill -9 of a dispatcher, RabbitMQ restart, Redis
#                restart (dispatcher/tests/drills/faults.rs on release builds; restarts the
#                local RabbitMQ)
# BENCH_PROFILE=debug uses the debug builds (the test suite's seconds-long smoke run of `system`,
# so this script cannot rot); numbers from it mean nothing.
# BENCH_BIN=DIR runs the otp-api, otp-dispatcher and fake-plivo found in DIR instead of building
# (a copy of the previous head's release build, to alternate with it in the same hour).
# BENCH_RUST_LOG (default warn) and BENCH_ACCESS_LOG (default errors, the production default)
# set the services' RUST_LOG and ACCESS_LOG.
# BENCH_EVENTS=false sets EVENTS_ENABLED=false (no verification events).
# BENCH_FRAUD_GUARD (default off) sets FRAUD_GUARD: enforce adds the guard's work (production's
# default) to every request.
# BENCH_IP_LIMIT=N sets MAX_REQUESTS_PER_IP_PER_MINUTE (default 0, off): wrk's requests all
# come from 127.0.0.1, so a production value would refuse them; a limit above the run's
# requests (1000000000) counts every request without refusing any.
# BENCH_CONCURRENCY=N sets the `system` dispatcher's DISPATCHER_CONCURRENCY, its prefetch
# (default 64).
# BENCH_API_KEY=true declares a caller key and sends it with every request.
# BENCH_QUEUE_TYPE=classic runs it on a classic queue instead of the quorum queue the services
# declare (declared first, with pika; the services then use it as it is, with a warning).
# Everything it starts stops when it ends; it uses its own queue and key prefix and removes
# them. Traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
scenario=${1:?usage: tools/bench.sh request|system|dispatchers|limiter|outage|faults|memory|verify [seconds]}
secs=${2:-20}
bash tools/services.sh
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
profile=${BENCH_PROFILE:-release}
case $profile in
  release) [ -n "${BENCH_BIN:-}" ] || cargo build --release --locked -q -p otp-api -p otp-dispatcher -p fake-plivo ;;
  debug) cargo build --locked -q -p otp-api -p otp-dispatcher -p fake-plivo ;;
  *) echo "BENCH_PROFILE is release or debug" >&2; exit 2 ;;
esac
bin=${BENCH_BIN:-target/$profile}

set -a
. ./.env.example
LOG_FORMAT=json RUST_LOG=${BENCH_RUST_LOG:-warn} APP_ENV=development FRAUD_GUARD=${BENCH_FRAUD_GUARD:-off}
SMS_QUEUE=bench.sms.$$ REDIS_KEY_PREFIX=bench:$$:
MAX_REQUESTS_PER_IP_PER_MINUTE=${BENCH_IP_LIMIT:-0} RESEND_COOLDOWN_SECONDS=0 MAX_SENDS_PER_NUMBER_PER_HOUR=0
MAX_VERIFIES_PER_NUMBER_PER_15_MINUTES=0 MAX_VERIFIES_PER_IP_PER_MINUTE=0 OTP_MAX_ATTEMPTS=100
PORT=3900 ADMIN_PORT=3905 DRAIN_SECONDS=0 DISPATCHER_HTTP_PORT=3901 FAKE_PLIVO_PORT=3902 PLIVO_BASE_URL=http://127.0.0.1:3902
ACCESS_LOG=${BENCH_ACCESS_LOG:-errors} EVENTS_ENABLED=${BENCH_EVENTS:-true} FAKE_PLIVO_PRINT=false FAKE_PLIVO_LATENCY_MS=0 SMS_MAX_RPS=100000 RESEND_ON_UNDELIVERED=false
set +a
# BENCH_API_KEY=true: the API requires a caller key and every request sends one (the cost of
# the key check).
if [ "${BENCH_API_KEY:-false}" = true ]; then
  export BENCH_BEARER=bench-secret-0f3c9a
  API_KEYS="bench:$(printf %s "$BENCH_BEARER" | sha256sum | cut -d' ' -f1)"
  export API_KEYS
fi

pids=()
if [ "${BENCH_QUEUE_TYPE:-quorum}" = classic ]; then
  python3 -c 'import pika' 2>/dev/null || pip install -q pika
  python3 - "$SMS_QUEUE" <<'PY'
import sys, pika
queue = sys.argv[1]
channel = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1")).channel()
channel.exchange_declare(queue + ".dlx", "direct", durable=True)
channel.queue_declare(queue, durable=True, arguments={
    "x-queue-type": "classic", "x-dead-letter-exchange": queue + ".dlx",
    "x-dead-letter-routing-key": queue + ".dead"})
PY
fi
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  for q in "$SMS_QUEUE" "$SMS_QUEUE.dead"; do rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true; done
  rabbitmqctl -q eval "rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, <<\"$SMS_QUEUE.dlx\">>), false, <<\"bench\">>)." >/dev/null 2>&1 || true
  redis-cli --scan --pattern "$REDIS_KEY_PREFIX*" | xargs -r -n 500 redis-cli del >/dev/null
}
trap cleanup EXIT

wait_http() { for _ in $(seq 1 100); do curl -sf "$1" >/dev/null && return 0; sleep 0.1; done; echo "$1 not up" >&2; return 1; }
rss_mib() { awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }
# CPU time a process has used, in microseconds.
cpu_us() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.0f", ($14 + $15) * 1000000 / hz}' "/proc/$1/stat"; }
redis_pid() { redis-cli info server | awk -F: '/^process_id/ {print $2+0}'; }
rabbit_pid() { ss -ltnpH 'sport = :5672' | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -1; }
# Fake-plivo's accepted sends; fails loudly rather than reading as 0.
accepted() {
  local body
  body=$(curl -sf "http://127.0.0.1:$FAKE_PLIVO_PORT/stats") || { echo "fake-plivo /stats failed" >&2; return 1; }
  echo "$body" | sed 's/.*"accepted":\([0-9]*\).*/\1/'
}
# Codes issued by the API so far (exact; RabbitMQ's own queue counts lag behind).
issued() {
  local body
  body=$(curl -sf "http://127.0.0.1:$PORT/metrics") || { echo "otp-api /metrics failed" >&2; return 1; }
  echo "$body" | awk '/^otp_codes_issued_total/ {s += $2} END {print s + 0}'
}
# Issues at least $1 more codes, a little at a time (no dispatcher should be running).
backlog_of() {
  local want=$(($(issued) + $1))
  while [ "$(issued)" -lt "$want" ]; do wrk -t1 -c4 -d1s -s tools/bench/request.lua "http://127.0.0.1:$PORT" >/dev/null; done
}
# Waits until fake-plivo has accepted $1 sends or $2 seconds passed; prints the count.
wait_sends() {
  local want=$1 deadline=$(($(date +%s) + $2)) got
  while :; do
    got=$(accepted)
    if [ "$got" -ge "$want" ] || [ "$(date +%s)" -ge "$deadline" ]; then echo "$got"; return; fi
    sleep 0.5
  done
}
# wrk's requests/s, p50 and p99 (ms), 2xx share, from its --latency output on stdin.
wrk_summary() {
  awk '
    /Requests\/sec/ {rps=$2}
    /^ +50%/ {p50=$2} /^ +99%/ {p99=$2}
    /requests in/ {total=$1}
    /Non-2xx/ {bad=$5}
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    END {printf "%.0f req/s, p50 %.2f ms, p99 %.2f ms, %d requests, %d non-2xx", rps, ms(p50), ms(p99), total, bad+0}'
}
load() { # connections seconds [script]
  wrk -t2 -c"$1" -d"$2s" --latency -s "${3:-tools/bench/request.lua}" "http://127.0.0.1:$PORT"
}
start_api() { $bin/otp-api & api=$!; pids+=("$api"); wait_http "http://127.0.0.1:$PORT/readyz"; }
start_plivo() { FAKE_PLIVO_LATENCY_MS=${1:-0} FAKE_PLIVO_DOWN=${2:-} $bin/fake-plivo & plivo=$!; pids+=("$plivo"); wait_http "http://127.0.0.1:$FAKE_PLIVO_PORT/readyz"; }
stop_pid() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
start_dispatcher() { # port [extra env...]
  env DISPATCHER_HTTP_PORT="$1" "${@:2}" $bin/otp-dispatcher & disp=$!; pids+=("$disp")
  wait_http "http://127.0.0.1:$1/readyz"
}

scenario_request() {
  start_plivo 0
  start_api
  echo "== POST /api/otp/request alone (no dispatcher; jobs pile up), ${secs}s, 32 connections"
  local result line procs=("$api" "$(redis_pid)" "$(rabbit_pid)") before=() i per="" n0 n
  for i in "${!procs[@]}"; do before[i]=$(cpu_us "${procs[i]}"); done
  n0=$(issued)
  result=$(load 32 "$secs" | wrk_summary)
  n=$(($(issued) - n0))
  for i in 0 1 2; do per="$per $((($(cpu_us "${procs[i]}") - before[i]) / (n > 0 ? n : 1)))"; done
  read -r api_us redis_us rabbit_us <<<"$per"
  result="$result; CPU µs per request: otp-api $api_us, redis $redis_us, rabbitmq $rabbit_us"
  echo "$result"
  line="alone: $result"
  stop_pid "$plivo"
  rabbitmqctl -q purge_queue "$SMS_QUEUE" >/dev/null # each run below starts with no backlog
  for provider in instant slow down; do
    case $provider in
      instant) start_plivo 0 ;;
      slow) start_plivo 250 ;;
      down) start_plivo 0 plivo ;;
    esac
    start_dispatcher 3901
    echo "== with a dispatcher, provider $provider: ${secs}s, 32 connections"
    result=$(load 32 "$secs" | wrk_summary)
    echo "$result"
    line="$line; provider $provider: $result"
    stop_pid "$disp"; stop_pid "$plivo"
    rabbitmqctl -q purge_queue "$SMS_QUEUE" >/dev/null
  done
  echo "SUMMARY request: $line"
}

scenario_system() {
  start_plivo 0
  start_api
  start_dispatcher 3901 DISPATCHER_CONCURRENCY="${BENCH_CONCURRENCY:-64}"
  local procs=("$api" "$disp" "$(redis_pid)" "$(rabbit_pid)") names=(otp-api otp-dispatcher redis rabbitmq)
  local before=() after=() i
  for i in "${!procs[@]}"; do before[i]=$(cpu_us "${procs[i]}"); done
  local sent0; sent0=$(accepted)
  echo "== whole system, provider instant: ${secs}s, 32 connections"
  result=$(load 32 "$secs" | wrk_summary)
  echo "$result"
  local issued; issued=$(curl -sf "http://127.0.0.1:$PORT/metrics" | awk '/^otp_codes_issued_total/ {s += $2} END {print s + 0}')
  sent=$(wait_sends "$issued" 60)
  for i in "${!procs[@]}"; do after[i]=$(cpu_us "${procs[i]}"); done
  local delivered=$((sent - sent0)) per="" total=0 us
  local failed; failed=$(echo "$result" | sed 's/.* \([0-9]*\) non-2xx.*/\1/')
  for i in "${!procs[@]}"; do
    us=$(((after[i] - before[i]) / (delivered > 0 ? delivered : 1)))
    total=$((total + us))
    per="$per ${names[i]} ${us}"
  done
  if [ "$delivered" -lt "$issued" ] || [ "$failed" != 0 ]; then
    echo "system: $delivered of $issued codes delivered, $failed non-2xx answers" >&2
    exit 1
  fi
  local commands; commands=$(redis_commands)
  echo "SUMMARY system: $result; $delivered codes delivered ($(awk -v n="$delivered" -v s="$secs" 'BEGIN {printf "%.0f", n/s}')/s over the load); CPU µs per code:${per}; total ${total}; Redis commands per code ${commands}"
}

# Redis commands per delivered code, end to end: the commands clients sent (MONITOR's lines,
# less those a script ran) while 2 s of light load are issued and delivered, after the CPU was
# measured (MONITOR slows Redis down). Commands a process sends together (a claim and its rate
# reservation, an outcome and its message-id mapping) share one round trip.
redis_commands() {
  local log; log=$(mktemp)
  redis-cli monitor >"$log" & local monitor=$!
  sleep 0.5
  local issued0 sent0; issued0=$(issued); sent0=$(accepted)
  wrk -t1 -c4 -d2s -s tools/bench/request.lua "http://127.0.0.1:$PORT" >/dev/null
  local n=$(($(issued) - issued0))
  wait_sends $((sent0 + n)) 30 >/dev/null
  kill "$monitor"; wait "$monitor" 2>/dev/null || true
  awk -v n="$n" '/^[0-9]/ && !/ lua\]/ {c++} END {printf "%.2f", c / (n > 0 ? n : 1)}' "$log"
  rm -f "$log"
}

scenario_dispatchers() {
  start_plivo 250
  start_api
  local n jobs=${BENCH_BACKLOG:-6000} line="" ds
  for n in 1 2 3; do
    local before sent0 start end
    before=$(issued); backlog_of "$jobs"; backlog=$(($(issued) - before))
    sent0=$(accepted); start=$(date +%s.%N)
    ds=()
    for i in $(seq 1 "$n"); do start_dispatcher $((3910 + i)); ds+=("$disp"); done
    sent=$(wait_sends $((sent0 + backlog)) 180); end=$(date +%s.%N)
    rate=$(awk -v n=$((sent - sent0)) -v s="$start" -v e="$end" 'BEGIN {printf "%.0f", n/(e-s)}')
    echo "$n dispatcher(s), concurrency $DISPATCHER_CONCURRENCY, provider 250 ms: $((sent - sent0)) of $backlog sends, $rate sends/s"
    line="$line; $n: $rate/s"
    for d in "${ds[@]}"; do stop_pid "$d"; done
  done
  # The cap: 3 dispatchers share SMS_MAX_RPS=200 over a backlog of 4,000.
  backlog_of 4000
  ds=()
  for i in 1 2 3; do start_dispatcher $((3920 + i)) SMS_MAX_RPS=200; ds+=("$disp"); done
  sleep 3
  local a b; a=$(accepted); sleep 10; b=$(accepted)
  cap=$(awk -v n=$((b - a)) 'BEGIN {printf "%.1f", n/10}')
  err=$(awk -v r="$cap" 'BEGIN {printf "%+.1f", (r-200)/2}')
  echo "SMS_MAX_RPS=200 shared by 3 dispatchers: $cap sends/s over 10 s (${err}% from the cap)"
  echo "SUMMARY dispatchers (250 ms provider)${line}; cap 200/s held at $cap/s (${err}%)"
}

# Redis commands since the last CONFIG RESETSTAT: "all scripts" (EVAL, EVALSHA, FCALL).
redis_calls() {
  redis-cli info commandstats | awk -F'[:=,]' '/^cmdstat_/ {all += $3; if ($1 ~ /cmdstat_(eval|evalsha|fcall)$/) scripts += $3}
    END {printf "%d %d", all, scripts}'
}

scenario_limiter() {
  start_plivo 0
  start_api
  local jobs=${BENCH_BACKLOG:-10000} redis line="" idle0 idle1
  redis=$(redis_pid)
  idle0=$(cpu_us "$redis"); sleep 5; idle1=$(cpu_us "$redis")
  local idle=$(((idle1 - idle0) / 5))
  echo "Redis idle: $idle µs of CPU per second"
  for cap in 100000 500; do
    local before; before=$(issued); backlog_of "$jobs"; local backlog=$(($(issued) - before))
    local sent0 cpu0 start; sent0=$(accepted)
    redis-cli config resetstat >/dev/null
    cpu0=$(cpu_us "$redis"); start=$(date +%s.%N)
    start_dispatcher 3901 SMS_MAX_RPS="$cap"
    local sent; sent=$(wait_sends $((sent0 + backlog)) $((backlog / 250 + 60)))
    local cpu1 end; cpu1=$(cpu_us "$redis"); end=$(date +%s.%N)
    stop_pid "$disp"
    local n=$((sent - sent0)) calls; calls=($(redis_calls))
    local stats; stats=$(awk -v n="$n" -v all="${calls[0]}" -v sc="${calls[1]}" -v cpu=$((cpu1 - cpu0)) -v s="$start" -v e="$end" \
      'BEGIN {printf "%d sends at %.0f/s: %.2f commands and %.2f script calls per send, %.0f µs of Redis CPU per send", n, n/(e-s), all/n, sc/n, cpu/n}')
    [ "$cap" = 100000 ] && label=uncapped || label="SMS_MAX_RPS=$cap"
    echo "$label: $stats"
    line="$line; $label: $stats"
  done
  echo "SUMMARY limiter (Redis idle ${idle} µs/s)${line}"
}

scenario_memory() {
  start_plivo 0
  start_api
  start_dispatcher 3901
  load 32 "$secs" >/dev/null
  local api_load disp_load; api_load=$(rss_mib "$api"); disp_load=$(rss_mib "$disp")
  stop_pid "$disp"
  echo "== a 100,000-job backlog"
  local target=$(($(issued) + 100000))
  while [ "$(issued)" -lt "$target" ]; do load 32 5 >/dev/null; done
  backlog=$(($(issued) - target + 100000))
  start_dispatcher 3901 SMS_MAX_RPS=50
  sleep 10
  local disp_backlog api_after; disp_backlog=$(rss_mib "$disp"); api_after=$(rss_mib "$api")
  echo "SUMMARY memory: under load otp-api ${api_load} MiB, otp-dispatcher ${disp_load} MiB; with a ${backlog}-job backlog otp-api ${api_after} MiB, otp-dispatcher ${disp_backlog} MiB (prefetch ${DISPATCHER_CONCURRENCY})"
}

scenario_verify() {
  start_plivo 0
  start_api
  echo "== POST /api/otp/verify (rejections), ${secs}s, 64 connections"
  result=$(load 64 "$secs" tools/bench/verify.lua | wrk_summary)
  echo "$result"
  echo "== verify timing: no code vs live code with a wrong guess (sequential, one connection)"
  timing=$(python3 tools/bench/verify_timing.py "$PORT")
  echo "$timing"
  echo "SUMMARY verify: $result; $(echo "$timing" | tail -1)"
}

# Runs drills of dispatcher/tests/drills/faults.rs on release builds, one at a time; prints
# their DRILL lines.
drills() { # filter [env...]
  local out
  local release=--release; [ "$profile" = debug ] && release=
  out=$(env "${@:2}" cargo test $release --locked -q -p otp-dispatcher --test drills -- \
    --ignored --nocapture --test-threads 1 "$1" 2>&1) || { echo "$out" | grep -v '^{'; return 1; }
  echo "$out" | grep '^DRILL'
}

scenario_outage() {
  local out; out=$(drills a_provider_outage DRILL_OUTAGE_SECONDS=60 DRILL_LOAD_SECONDS=$((secs / 2)))
  echo "$out"
  echo "SUMMARY outage: ${out#DRILL }"
}

scenario_faults() {
  local out; out=$(drills faults_lose DRILL_ROUNDS=3 DRILL_LOAD_SECONDS=$((secs / 2)))
  echo "$out"
  echo "SUMMARY faults: $(echo "$out" | awk '
    {split($0, a, ": "); split(a[2], f, ", "); name=a[1]; sub(/^DRILL /, "", name); sub(/ round [0-9]+/, "", name)
     acc[name]+=f[1]; del[name]+=f[2]; lost[name]+=f[3]; dup[name]+=f[4]; err[name]+=f[5]
     split(f[6], r, " "); if (r[3] > rec[name]) rec[name]=r[3]}
    END {for (n in acc) printf "%s x3: %d accepted, %d delivered, %d lost, %d duplicated, %d 5xx, recovery <= %s s; ", n, acc[n], del[n], lost[n], dup[n], err[n], rec[n]}')"
}

case "$scenario" in
  request | system | dispatchers | limiter | outage | faults | memory | verify) "scenario_$scenario" ;;
  *) echo "unknown scenario $scenario (request|system|dispatchers|limiter|outage|faults|memory|verify)" >&2; exit 2 ;;
esac
