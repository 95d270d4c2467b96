#!/usr/bin/env bash
# Make sure a Redis answers at $1 (default redis://127.0.0.1:6379): start a throwaway redis-server when none does,
# installing it with apt when it is missing. Used by CI and the test command; never touches a server that answers.
set -euo pipefail
url="${1:-redis://127.0.0.1:6379}"
hostport="${url#redis://}"; hostport="${hostport%%/*}"
host="${hostport%%:*}"; port="${hostport##*:}"
[ "$port" = "$host" ] && port=6379
if command -v redis-cli >/dev/null && redis-cli -h "$host" -p "$port" ping 2>/dev/null | grep -q PONG; then
  exit 0
fi
if ! command -v redis-server >/dev/null; then
  echo "[redis] redis-server not found: installing it with apt"
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
  else sudo apt-get update -qq && sudo apt-get install -y -qq redis-server >/dev/null; fi
fi
echo "[redis] no Redis at $host:$port; starting one (no persistence)"
mkdir -p /tmp/recsvc-redis
redis-server --daemonize yes --bind "$host" --port "$port" --save "" --appendonly no \
  --dir /tmp/recsvc-redis --logfile /tmp/recsvc-redis/redis.log
for _ in $(seq 1 50); do
  redis-cli -h "$host" -p "$port" ping 2>/dev/null | grep -q PONG && exit 0
  sleep 0.1
done
echo "[redis] redis-server did not come up; see /tmp/recsvc-redis/redis.log" >&2
exit 1
