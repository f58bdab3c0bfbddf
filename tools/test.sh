#!/usr/bin/env bash
# The project's test command (README "Testing"): makes sure Redis and RabbitMQ are installed and
# running (tools/services.sh), then builds the workspace and runs every test against them.
# Extra arguments go to `cargo test`, e.g. `tools/test.sh -p otp-api`. Then the schema fuzzer
# (tools/fuzz.sh) runs against a live API.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/services.sh
cargo test --workspace --locked "$@"
# The OpenAPI document against the running API: no 5xx, no undeclared status, no schema-valid
# request rejected (schemathesis; fixed seed, so a run is repeatable).
bash tools/fuzz.sh 100 --seed 1
