#!/usr/bin/env bash
# A local Redis Cluster: 3 masters and 3 replicas on 127.0.0.1 ports 7000 to 7005, for trying
# clustered operation and for the node-loss drills (tools/test.sh --cluster).
#
# Usage: tools/redis-cluster.sh start|stop|status
#        tools/redis-cluster.sh kill-node PORT | start-node PORT   (one node, for drills)
#        tools/redis-cluster.sh masters                           (ports of the masters now)
#
# Nodes keep nothing on disk but their cluster config, under $REDIS_CLUSTER_DIR (default
# /tmp/otp-redis-cluster); `stop` deletes it, so every `start` makes a fresh cluster. A failed
# master's replica is promoted after cluster-node-timeout (2 s here).
set -euo pipefail

BASE=${REDIS_CLUSTER_DIR:-/tmp/otp-redis-cluster}
PORTS=(7000 7001 7002 7003 7004 7005)

cli() { redis-cli -h 127.0.0.1 -p "$1" "${@:2}"; }
up() { cli "$1" ping >/dev/null 2>&1; }

start_node() { # PORT: starts one node (again) with its own directory and cluster config
  local port=$1 dir="$BASE/$1"
  if up "$port"; then return 0; fi
  mkdir -p "$dir"
  redis-server --port "$port" --bind 127.0.0.1 --daemonize yes --dir "$dir" \
    --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
    --save "" --appendonly no --logfile "$dir/redis.log" --pidfile "$dir/redis.pid"
  for _ in $(seq 1 50); do
    up "$port" && return 0
    sleep 0.1
  done
  echo "redis node $port did not start" >&2
  return 1
}

cluster_ok() { cli 7000 cluster info 2>/dev/null | grep -q '^cluster_state:ok'; }

start() {
  for port in "${PORTS[@]}"; do start_node "$port"; done
  if ! cluster_ok; then
    local nodes=()
    for port in "${PORTS[@]}"; do nodes+=("127.0.0.1:$port"); done
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >/dev/null
  fi
  for _ in $(seq 1 100); do
    if cluster_ok && [ "$(masters | wc -l)" -eq 3 ]; then
      echo "Redis Cluster up: REDIS_CLUSTER=true REDIS_URL=redis://127.0.0.1:7000,redis://127.0.0.1:7001,redis://127.0.0.1:7002"
      return 0
    fi
    sleep 0.2
  done
  echo "Redis Cluster did not become ready" >&2
  return 1
}

stop() {
  for port in "${PORTS[@]}"; do
    if [ -f "$BASE/$port/redis.pid" ]; then kill "$(cat "$BASE/$port/redis.pid")" 2>/dev/null || true; fi
  done
  for port in "${PORTS[@]}"; do
    for _ in $(seq 1 50); do up "$port" || break; sleep 0.1; done
  done
  rm -rf "$BASE"
}

kill_node() { # PORT: kill -9, as a crash would
  local pid_file="$BASE/$1/redis.pid"
  [ -f "$pid_file" ] && kill -9 "$(cat "$pid_file")" 2>/dev/null || true
  rm -f "$pid_file"
}

masters() { # the ports of the masters that are up, as the cluster sees them now
  for port in "${PORTS[@]}"; do
    if up "$port"; then
      cli "$port" cluster nodes | awk '$3 ~ /master/ && $3 !~ /fail/ {split($2, a, "[:@]"); print a[2]}' | sort -u
      return 0
    fi
  done
}

status() {
  for port in "${PORTS[@]}"; do
    if up "$port"; then
      echo "$port $(cli "$port" role | head -1)"
    else
      echo "$port down"
    fi
  done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  masters) masters ;;
  kill-node) kill_node "${2:?port}" ;;
  start-node) start_node "${2:?port}" ;;
  *)
    echo "usage: $0 start|stop|status|masters|kill-node PORT|start-node PORT" >&2
    exit 2
    ;;
esac
