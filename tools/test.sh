#!/usr/bin/env bash
# The project's test command (README "Testing"): makes sure Redis and RabbitMQ are installed and
# running (tools/services.sh), then builds the workspace and runs every test against them.
# Then the schema fuzzer (tools/fuzz.sh) runs against a live API.
#
# Usage: tools/test.sh [--cluster] [cargo test arguments, e.g. -p otp-api]
#   --cluster  also starts the local RabbitMQ cluster (tools/rabbitmq-cluster.sh), runs the
#              node-loss drills against it, and stops it again (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
cluster=false
if [ "${1:-}" = "--cluster" ]; then
  cluster=true
  shift
fi
bash tools/services.sh
cargo test --workspace --locked "$@"
# The OpenAPI document against the running API: no 5xx, no undeclared status, no schema-valid
# request rejected (schemathesis; fixed seed, so a run is repeatable).
bash tools/fuzz.sh 100 --seed 1
if $cluster; then
  trap 'bash tools/rabbitmq-cluster.sh stop' EXIT
  bash tools/rabbitmq-cluster.sh start
  cargo test --locked -p otp-dispatcher --test cluster -- --ignored --test-threads 1
fi
