#!/usr/bin/env bash
# Make sure the real servers the integration tests use are up on loopback.
# Under CI=true a server that is down is started (DESIGN.md §6) and the script fails loudly
# if it still does not answer. Elsewhere it only reports, and those tests skip.
set -uo pipefail

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start() {
  case "$1" in
    postgresql) pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start ;;
    redis) redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
             --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log ;;
    rabbitmq) rabbitmq-server -detached ;;
    nats) start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
            -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log ;;
  esac
}

status=0
for entry in postgresql:5432 redis:6379 rabbitmq:5672 nats:4222; do
  name=${entry%%:*}; port=${entry##*:}
  up "$port" && continue
  if [ "${CI:-}" != "true" ]; then
    echo "services: $name is not answering on 127.0.0.1:$port; its tests will be skipped" >&2
    continue
  fi
  echo "services: $name is down on 127.0.0.1:$port, starting it" >&2
  start "$name" >/dev/null 2>&1 || true
  for _ in $(seq 1 60); do up "$port" && break; sleep 1; done
  if ! up "$port"; then
    echo "services: FAILED to start $name on 127.0.0.1:$port" >&2
    status=1
  fi
done
exit $status
