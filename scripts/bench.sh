#!/usr/bin/env bash
# `make bench`: `fusionstream bench` with a Kafka broker for its service stages.
#
#   scripts/bench.sh [bench args...]      e.g. scripts/bench.sh --json
#
# Like scripts/test.sh: KAFKA_BOOTSTRAP=<host:port> uses that broker; otherwise a running
# `make kafka-start` broker is used, or one is started here and stopped on exit.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

if [[ -z "${KAFKA_BOOTSTRAP:-}" ]]; then
  if scripts/kafka.sh status >/dev/null 2>&1; then
    KAFKA_BOOTSTRAP="$(scripts/kafka.sh bootstrap)"
  else
    trap 'scripts/kafka.sh stop' EXIT
    KAFKA_BOOTSTRAP="$(scripts/kafka.sh start)"
  fi
fi
.venv/bin/fusionstream bench --bootstrap "$KAFKA_BOOTSTRAP" "$@"
