#!/usr/bin/env bash
# Fuzzes the API from its own OpenAPI document with schemathesis (`--checks all`): no 5xx, no
# undeclared status, no schema-valid request rejected. Runs a debug otp-api on 127.0.0.1:3950
# against the local Redis and RabbitMQ with its own queue and key prefix, all limits off, and
# removes what it made. Usage: tools/fuzz.sh [max examples per operation, default 100]
set -euo pipefail
cd "$(dirname "$0")/.."
examples=${1:-100}; shift || true
bash tools/services.sh
command -v st >/dev/null || pip install -q schemathesis
cargo build -q --locked -p otp-api

set -a
. ./.env.example
APP_ENV=development LOG_FORMAT=json RUST_LOG=warn PORT=3950 ADMIN_PORT=3951 DRAIN_SECONDS=0
SMS_QUEUE=fuzz.sms.$$ REDIS_KEY_PREFIX=fuzz:$$:
MAX_REQUESTS_PER_IP_PER_MINUTE=0 RESEND_COOLDOWN_SECONDS=0 MAX_SENDS_PER_NUMBER_PER_HOUR=0
MAX_VERIFIES_PER_NUMBER_PER_15_MINUTES=0 MAX_VERIFIES_PER_IP_PER_MINUTE=0
set +a
target/debug/otp-api & api=$!
cleanup() {
  kill "$api" 2>/dev/null || true
  wait 2>/dev/null || true
  for q in "$SMS_QUEUE" "$SMS_QUEUE.dead"; do rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true; done
  rabbitmqctl -q eval "rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, <<\"$SMS_QUEUE.dlx\">>), false, <<\"fuzz\">>)." >/dev/null 2>&1 || true
  redis-cli --scan --pattern "$REDIS_KEY_PREFIX*" | xargs -r -n 500 redis-cli del >/dev/null
}
trap cleanup EXIT
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.1; done

SCHEMATHESIS_HOOKS=tools.fuzz.hooks st --config-file tools/fuzz/schemathesis.toml run \
  "http://127.0.0.1:$PORT/openapi.json" --checks all --max-examples "$examples" "$@"
