# Sourced by scripts/test.sh and scripts/bench.sh: makes KAFKA_BOOTSTRAP point at a broker.
#
# With KAFKA_BOOTSTRAP=<host:port> set, that broker is used. Otherwise a broker that is already
# running (`make kafka-start`) is used and left running, or one is started (scripts/kafka.sh)
# and stopped when the sourcing script exits, whatever the outcome.
if [[ -z "${KAFKA_BOOTSTRAP:-}" ]]; then
  if scripts/kafka.sh status >/dev/null 2>&1; then
    KAFKA_BOOTSTRAP="$(scripts/kafka.sh bootstrap)"
    echo "$(basename "$0"): using the running broker at $KAFKA_BOOTSTRAP" >&2
  else
    # Set the trap before starting, so a start that fails halfway is cleaned up too.
    trap 'scripts/kafka.sh stop' EXIT
    KAFKA_BOOTSTRAP="$(scripts/kafka.sh start)"
  fi
  export KAFKA_BOOTSTRAP
fi
