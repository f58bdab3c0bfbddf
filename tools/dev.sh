#!/usr/bin/env bash
# One command for a local stack: makes sure Redis and RabbitMQ run, builds, and starts
# fake-plivo, otp-dispatcher and otp-api with the development settings of .env.example
# (a .env, if present, overrides them). Codes "sent" are printed by fake-plivo. Ctrl-C stops all.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/services.sh
cargo build --release -p otp-api -p otp-dispatcher -p fake-plivo
set -a
# The example keys are development values: production mode refuses them.
APP_ENV=development
# shellcheck disable=SC1091
. ./.env.example
# shellcheck disable=SC1091
[ -f .env ] && . ./.env
LOG_FORMAT=${DEV_LOG_FORMAT:-pretty}
set +a
trap 'kill 0' EXIT INT TERM
target/release/fake-plivo &
target/release/otp-dispatcher &
target/release/otp-api &
echo "otp-api on http://127.0.0.1:${PORT} (docs: /docs), dispatcher health on :${DISPATCHER_HTTP_PORT}, fake-plivo on :${FAKE_PLIVO_PORT}"
wait
