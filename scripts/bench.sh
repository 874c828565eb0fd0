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

# shellcheck source=scripts/broker_env.sh
source scripts/broker_env.sh
.venv/bin/fusionstream bench --bootstrap "$KAFKA_BOOTSTRAP" "$@"
