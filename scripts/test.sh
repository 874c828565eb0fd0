#!/usr/bin/env bash
# The test command (`make test`): runs pytest against a real Kafka broker.
#
#   scripts/test.sh [pytest args...]
#
# With KAFKA_BOOTSTRAP=<host:port> the tests use that broker. Otherwise a broker is
# started here (scripts/kafka.sh, on KAFKA_PORT, default 9092) and stopped on exit,
# whatever the outcome; a broker that was already running (`make kafka-start`) is
# used and left running.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

# shellcheck source=scripts/broker_env.sh
source scripts/broker_env.sh

# The viewer test loads its page in Debian's Chromium. A fresh CI machine runs this as
# root with apt available: install it there once; elsewhere the test skips with a reason.
if ! command -v chromium >/dev/null 2>&1 && [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
  echo "test.sh: installing chromium (apt) for the viewer test" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 \
    || echo "test.sh: could not install chromium; the viewer test will be skipped" >&2
fi

status=0
.venv/bin/python -m pytest "$@" || status=$?
if [[ $status -eq 5 ]]; then
  # pytest's "no tests collected": a test command that tested nothing has failed.
  echo "test.sh: pytest collected no tests; treating that as a failure" >&2
fi
exit "$status"
