#!/usr/bin/env bash
# The project's test command (README "Testing"): makes sure Redis and RabbitMQ are installed and
# running (tools/services.sh), then builds the workspace and runs every test against them.
# Extra arguments go to `cargo test`, e.g. `tools/test.sh -p otp-api`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/services.sh
cargo test --workspace --locked "$@"
