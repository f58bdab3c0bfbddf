#!/usr/bin/env bash
# A local 3-node RabbitMQ cluster, for trying clustered operation and for the node-loss drills
# (tools/test.sh --cluster). Everything listens on 127.0.0.1 only:
#
#   node               AMQP   distribution
#   rabbit1@localhost  5673   25673
#   rabbit2@localhost  5674   25674
#   rabbit3@localhost  5675   25675
#
# Usage: tools/rabbitmq-cluster.sh start|stop|status
#        tools/rabbitmq-cluster.sh stop-node N | start-node N   (one node, for drills)
#
# Data and logs live under $RABBIT_CLUSTER_DIR (default /var/lib/rabbitmq/otp-cluster); `stop`
# deletes them, so every `start` makes a fresh cluster. The nodes share the Erlang cookie of the
# machine's own RabbitMQ (they run as its `rabbitmq` user), and leave it alone on 5672.
set -euo pipefail

BASE=${RABBIT_CLUSTER_DIR:-/var/lib/rabbitmq/otp-cluster}
NODES=(1 2 3)

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
name() { echo "rabbit$1@localhost"; }
ctl() { as_root rabbitmqctl -n "$(name "$1")" "${@:2}"; }

node_env() { # N: the environment one node runs with
  local n=$1 dir="$BASE/rabbit$1"
  echo "RABBITMQ_NODENAME=$(name "$n")"
  echo "RABBITMQ_NODE_PORT=$((5672 + n))"
  echo "RABBITMQ_DIST_PORT=$((25672 + n))"
  echo "RABBITMQ_CONFIG_FILE=$dir/rabbitmq"
  echo "RABBITMQ_CONF_ENV_FILE=$dir/rabbitmq-env.conf"
  echo "RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins"
  echo "RABBITMQ_MNESIA_BASE=$dir/mnesia"
  echo "RABBITMQ_LOG_BASE=$dir/log"
  echo "RABBITMQ_PID_FILE=$dir/pid"
  echo "ERL_EPMD_ADDRESS=127.0.0.1"
}

start_node() { # N: starts one node (its files must exist) and waits for it
  local n=$1
  if port_open $((5672 + n)); then return 0; fi
  # shellcheck disable=SC2046
  as_root env $(node_env "$n") rabbitmq-server -detached
  for _ in $(seq 1 120); do
    port_open $((5672 + n)) && break
    sleep 1
  done
  ctl "$n" await_startup >/dev/null
}

stop_node() { # N: stops one node the way an operator (or a crash of the service) would
  ctl "$1" stop >/dev/null 2>&1 || true
}

start() {
  for n in "${NODES[@]}"; do
    local dir="$BASE/rabbit$n"
    as_root mkdir -p "$dir/mnesia" "$dir/log"
    echo "listeners.tcp.local = 127.0.0.1:$((5672 + n))" | as_root tee "$dir/rabbitmq.conf" >/dev/null
    echo "[]." | as_root tee "$dir/enabled_plugins" >/dev/null
    echo 'SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"' |
      as_root tee "$dir/rabbitmq-env.conf" >/dev/null
    as_root chown -R rabbitmq:rabbitmq "$BASE"
  done
  for n in "${NODES[@]}"; do start_node "$n"; done
  for n in 2 3; do
    if ! ctl "$n" cluster_status --formatter json 2>/dev/null | grep -q "$(name 1)"; then
      ctl "$n" stop_app >/dev/null
      ctl "$n" join_cluster "$(name 1)" >/dev/null
      ctl "$n" start_app >/dev/null
    fi
  done
  echo "RabbitMQ cluster up: amqp://guest:guest@127.0.0.1:5673/%2f,amqp://guest:guest@127.0.0.1:5674/%2f,amqp://guest:guest@127.0.0.1:5675/%2f"
}

stop() {
  for n in "${NODES[@]}"; do stop_node "$n"; done
  as_root rm -rf "$BASE"
}

status() {
  for n in "${NODES[@]}"; do
    if port_open $((5672 + n)); then echo "$(name "$n") up"; else echo "$(name "$n") down"; fi
  done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  stop-node) stop_node "${2:?node number}" ;;
  start-node) start_node "${2:?node number}" ;;
  *)
    echo "usage: $0 start|stop|status|stop-node N|start-node N" >&2
    exit 2
    ;;
esac
