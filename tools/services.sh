#!/usr/bin/env bash
# Makes sure Redis (127.0.0.1:6379) and RabbitMQ (127.0.0.1:5672) are installed and running:
# installs them with apt when missing, starts them when not listening. Used by tools/test.sh
# and tools/dev.sh; safe to run any number of times.
set -euo pipefail

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # name port seconds
  for _ in $(seq 1 "$3"); do port_open "$2" && return 0; sleep 1; done
  echo "$1 did not come up on 127.0.0.1:$2 within $3 s" >&2
  return 1
}

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v rabbitmq-server >/dev/null 2>&1 || missing+=(rabbitmq-server)
# The rediss:// test makes its own CA and certificate with openssl.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# The signup demo's test drives headless Chromium through chromedriver (WebDriver).
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
# promtool checks and unit-tests the alert rules (deploy/prometheus/).
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} with apt"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! port_open 6379; then
  echo "starting Redis"
  as_root mkdir -p /var/lib/redis /var/log/redis
  as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
    --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_port Redis 6379 30
fi

if ! port_open 5672; then
  echo "starting RabbitMQ"
  as_root rabbitmq-server -detached
  wait_port RabbitMQ 5672 120
  as_root rabbitmqctl await_startup >/dev/null 2>&1 || true
fi
