#!/usr/bin/env bash
# The project's test command (README "Testing"): makes sure Redis and RabbitMQ are installed and
# running (tools/services.sh), then builds the workspace and runs every test against them.
# Then the schema fuzzer (tools/fuzz.sh) runs against a live API, and a seconds-long smoke run of
# the benchmark suite's whole-system scenario (tools/bench.sh) on the debug builds.
#
# Usage: tools/test.sh [--cluster] [cargo test arguments, e.g. -p otp-api]
#   --cluster  then also starts the local Redis Cluster and RabbitMQ cluster
#              (tools/redis-cluster.sh, tools/rabbitmq-cluster.sh), runs the API's and the
#              dispatcher's Redis-backed tests again on Redis Cluster, runs the node-loss drills
#              (dispatcher/tests/drills/), and stops both clusters (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
cluster=false
if [ "${1:-}" = "--cluster" ]; then
  cluster=true
  shift
fi
bash tools/services.sh
# The alert rules parse, and each fires on its problem and stays quiet when healthy.
promtool check rules deploy/prometheus/alerts.yml
(cd deploy/prometheus && promtool test rules alerts.test.yml)
# The Kubernetes manifests' core kinds against the Kubernetes schemas (kubernetes-validate,
# pinned); the KEDA objects, the variables and the secrets are checked by
# dispatcher/tests/dispatcher/kubernetes.rs.
[ "$(kubernetes-validate --version 2>/dev/null)" = 1.37.0 ] ||
  pip install -q 'kubernetes-validate==1.37.0'
kubernetes-validate --strict --quiet $(ls deploy/kubernetes/*.yaml |
  grep -v -e /keda.yaml -e /kustomization.yaml)
cargo test --workspace --locked "$@"
# Tests that measure latency run alone, without the rest of the suite beside them.
cargo test --locked -p otp-api --test api -- --ignored --test-threads 1
# The alert rules and the dashboard on a real Prometheus against the real binaries
# (dispatcher/tests/drills/prometheus.rs; it needs no cluster).
cargo test --locked -p otp-dispatcher --test drills prometheus -- --ignored
# The OpenAPI document against the running API: no 5xx, no undeclared status, no schema-valid
# request rejected (schemathesis; fixed seed, so a run is repeatable).
bash tools/fuzz.sh 100 --seed 1
# The benchmark's whole-system scenario for 3 s on the debug builds, so the benchmark tools cannot
# rot (tools/bench/BENCHMARKS.md): it fails unless every code issued is delivered with no error.
BENCH_PROFILE=debug bash tools/bench.sh system 3
if $cluster; then
  trap 'bash tools/redis-cluster.sh stop; bash tools/rabbitmq-cluster.sh stop' EXIT
  bash tools/redis-cluster.sh start
  bash tools/rabbitmq-cluster.sh start
  nodes=$(printf 'redis://127.0.0.1:%s,' 7000 7001 7002 7003 7004 7005)
  OTP_TEST_REDIS_CLUSTER=${nodes%,} cargo test --locked -p otp-api -p otp-dispatcher \
    --test api --test dispatcher
  cargo test --locked -p otp-dispatcher --test drills -- --ignored --test-threads 1 \
    --skip prometheus
fi
