#!/usr/bin/env bash
# A single-node Apache Kafka broker (KRaft: broker and controller in one JVM) for
# development and the integration tests. No Docker: the jars come from Maven Central
# through docker/kafka/pom.xml and are cached in docker/kafka/target/libs.
#
#   scripts/kafka.sh start      start (or find) the broker; prints the bootstrap address on stdout
#   scripts/kafka.sh stop       stop it and delete its state (every run starts from an empty broker;
#                               with KAFKA_KEEP_STATE=1 the state stays, and `start` brings the same
#                               broker back with its topics and offsets, as the broker-restart test needs)
#   scripts/kafka.sh status     say whether it runs; exit 0 if it does, 1 if not
#   scripts/kafka.sh bootstrap  print the bootstrap address of the running broker
#
# Settings (environment):
#   KAFKA_STATE_DIR          config, data, logs and pid file      (default: <repo>/.kafka)
#   KAFKA_PORT               client listener on 127.0.0.1         (default: 9092)
#   KAFKA_CONTROLLER_PORT    KRaft controller listener            (default: 9093)
#   KAFKA_START_TIMEOUT      seconds to wait for the broker       (default: 60)
#   KAFKA_LIBS               the broker's jars                    (default: docker/kafka/target/libs,
#                                                                  fetched with mvn when missing or
#                                                                  older than the pom)
#   KAFKA_HEAP_OPTS          JVM heap flags                       (default: -Xms256m -Xmx1g)
#   KAFKA_KEEP_STATE         1: `stop` keeps the state dir        (default: 0, delete it)
#   JAVA                     the java binary (17+)                (default: java)
#
# Only the bootstrap address goes to stdout, so `addr=$(scripts/kafka.sh start)` works;
# progress and errors go to stderr.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
POM="$REPO_ROOT/docker/kafka/pom.xml"
LIBS="${KAFKA_LIBS:-$REPO_ROOT/docker/kafka/target/libs}"

STATE_DIR="${KAFKA_STATE_DIR:-$REPO_ROOT/.kafka}"
PORT="${KAFKA_PORT:-9092}"
CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
START_TIMEOUT="${KAFKA_START_TIMEOUT:-60}"
HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx1g}"
JAVA="${JAVA:-java}"

PID_FILE="$STATE_DIR/kafka.pid"
CONFIG="$STATE_DIR/server.properties"
LOG4J_CONFIG="$STATE_DIR/log4j2.xml"
DATA_DIR="$STATE_DIR/data"
LOG_DIR="$STATE_DIR/logs"
SERVER_LOG="$LOG_DIR/server.log"
CONSOLE_LOG="$LOG_DIR/console.log"
BOOTSTRAP_FILE="$STATE_DIR/bootstrap"
# Written first into every state dir this script creates; `stop` deletes a directory
# only if it carries this mark, so a mistyped KAFKA_STATE_DIR cannot wipe anything else.
MARKER="$STATE_DIR/.fusionstream-kafka"

log() { echo "kafka.sh: $*" >&2; }
die() { log "$*"; exit 1; }

# The pid of the running broker, or nothing. A pid file can outlive its process (a
# crash, a reboot) and the pid can be reused, so check that it is still our JVM.
running_pid() {
  [[ -f "$PID_FILE" ]] || return 0
  local pid
  pid="$(<"$PID_FILE")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  if ps -ww -o args= -p "$pid" 2>/dev/null | grep -qF "kafka.Kafka $CONFIG"; then
    echo "$pid"
  fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

classpath() {
  # The broker JVM gets exactly the jars of the pom: `libs/*` is expanded by java, not the shell.
  echo "$LIBS/*"
}

has_jars() { compgen -G "$1/*.jar" >/dev/null; }

# The jars are fetched once and reused; again only when docker/kafka/pom.xml is newer
# than the last fetch (a version bump must not leave the old jars on the classpath).
fetch_jars() {
  local default_libs="$REPO_ROOT/docker/kafka/target/libs" stamp="$LIBS/.fetched"
  if [[ "$LIBS" != "$default_libs" ]]; then
    has_jars "$LIBS" || die "KAFKA_LIBS=$LIBS holds no jars"
    return 0
  fi
  if has_jars "$LIBS" && [[ -f "$stamp" && ! "$POM" -nt "$stamp" ]]; then
    return 0
  fi
  if ! command -v mvn >/dev/null; then
    has_jars "$LIBS" || die "no Kafka jars in $LIBS and no mvn to fetch them (install Maven, or set KAFKA_BOOTSTRAP)"
    log "no mvn to check the jars against docker/kafka/pom.xml; using those in $LIBS"
    return 0
  fi
  log "fetching the Kafka jars from Maven Central (cached in $LIBS until the pom changes)"
  # Fetch into an empty directory so no jar of an older pom survives; keep the old set
  # until the new one is complete, and fall back to it when offline.
  rm -rf "$LIBS.old"
  [[ -d "$LIBS" ]] && mv "$LIBS" "$LIBS.old"
  if mvn -q -B -f "$POM" dependency:copy-dependencies >&2 && has_jars "$LIBS"; then
    touch "$stamp"
    rm -rf "$LIBS.old"
  elif [[ -d "$LIBS.old" ]] && has_jars "$LIBS.old"; then
    rm -rf "$LIBS"
    mv "$LIBS.old" "$LIBS"
    log "fetching failed; using the jars fetched before"
  else
    die "fetching the Kafka jars with mvn failed (see above)"
  fi
}

write_config() {
  cat >"$CONFIG" <<EOF
# Written by scripts/kafka.sh; rewritten on every start.
# One JVM is both the KRaft controller and the broker.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$CONTROLLER_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT

# Loopback only: this broker has no authentication and must not be reachable from outside.
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT

log.dirs=$DATA_DIR

# Topics are created on purpose (fusionstream.consumers.kafka.admin.ensure_topics), with the
# partition counts that co-partitioning needs; a typo must fail, not create a topic.
auto.create.topics.enable=false
num.partitions=4
default.replication.factor=1

# A single node cannot hold more than one replica of the internal topics.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Fewer partitions for the internal topics: they are created on first use, and 50
# (the default) makes the first consumer group and transaction in a test wait.
offsets.topic.num.partitions=4
transaction.state.log.num.partitions=4

# Tests start consumers and expect the group to form at once, not after 3 s.
group.initial.rebalance.delay.ms=0

# A record's timestamp is its media's capture time (the wire format's rule), and synthetic or
# replayed media are often older than the default 7-day retention: the broker's retention check
# (every 5 minutes) would delete a topic's records while a test or benchmark still reads them.
# Here data lives until its topic is deleted.
log.retention.ms=-1
EOF
}

write_log4j_config() {
  # XML needs nothing beyond log4j-core (YAML would need jackson-dataformat-yaml, JSON
  # jackson-databind). The broker logs to a file so the caller's terminal stays quiet;
  # the ready check reads this file.
  cat >"$LOG4J_CONFIG" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <File name="server" fileName="$SERVER_LOG">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </File>
  </Appenders>
  <Loggers>
    <!-- Per-request logs are noise for a test broker. -->
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="kafka.network.RequestChannel\$" level="WARN"/>
    <Root level="INFO">
      <AppenderRef ref="server"/>
    </Root>
  </Loggers>
</Configuration>
EOF
}

# KRaft storage must be formatted once with a cluster id before the first start.
format_storage() {
  if [[ -f "$DATA_DIR/meta.properties" ]]; then
    return 0
  fi
  # A Kafka cluster id is 16 random bytes in URL-safe base64 without padding; Kafka's
  # own generator avoids ids that start with '-' (they read as CLI flags), so do we.
  # Making it here saves starting a JVM just for `StorageTool random-uuid`.
  local cluster_id
  cluster_id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')"
  while [[ "$cluster_id" == -* ]]; do
    cluster_id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')"
  done
  log "formatting storage in $DATA_DIR (cluster id $cluster_id)"
  # --standalone: this node is the whole controller quorum (a dynamic quorum of one).
  if ! "$JAVA" -cp "$(classpath)" kafka.tools.StorageTool \
    format --standalone -t "$cluster_id" -c "$CONFIG" >"$LOG_DIR/format.log" 2>&1; then
    cat "$LOG_DIR/format.log" >&2
    die "formatting the storage failed"
  fi
}

start() {
  local pid
  pid="$(running_pid)"
  if [[ -n "$pid" ]]; then
    log "already running (pid $pid)"
    cat "$BOOTSTRAP_FILE"
    return 0
  fi

  # A state dir formatted for other ports cannot be reused: the controller's address is
  # recorded in the formatted metadata.
  if [[ -f "$BOOTSTRAP_FILE" && "$(<"$BOOTSTRAP_FILE")" != "127.0.0.1:$PORT" ]]; then
    die "$STATE_DIR belongs to a broker on $(<"$BOOTSTRAP_FILE"); run 'scripts/kafka.sh stop' to wipe it"
  fi
  if [[ -d "$STATE_DIR" && ! -f "$MARKER" && -n "$(ls -A "$STATE_DIR")" ]]; then
    die "$STATE_DIR exists, is not empty and was not made by this script; choose another KAFKA_STATE_DIR"
  fi
  for p in "$PORT" "$CONTROLLER_PORT"; do
    if port_open "$p"; then
      die "port $p on 127.0.0.1 is already in use (set KAFKA_PORT / KAFKA_CONTROLLER_PORT)"
    fi
  done
  command -v "$JAVA" >/dev/null || die "no java found (Kafka needs Java 17+; set JAVA=/path/to/java)"

  fetch_jars
  mkdir -p "$STATE_DIR" "$LOG_DIR" "$DATA_DIR"
  touch "$MARKER"
  write_config
  write_log4j_config
  format_storage
  echo "127.0.0.1:$PORT" >"$BOOTSTRAP_FILE"

  local started_at=$SECONDS
  log "starting the broker on 127.0.0.1:$PORT (logs: $SERVER_LOG)"
  # setsid + nohup: the broker leaves the caller's process group and ignores SIGHUP, so
  # it outlives `make kafka-start` and a Ctrl-C meant for pytest does not kill it
  # mid-test (scripts/test.sh stops it on exit). Not being a group leader here, setsid
  # execs java in place, so $! is the JVM's pid.
  # shellcheck disable=SC2086  # HEAP_OPTS holds several flags
  setsid nohup "$JAVA" $HEAP_OPTS -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$LOG4J_CONFIG" -cp "$(classpath)" \
    kafka.Kafka "$CONFIG" >"$CONSOLE_LOG" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$PID_FILE"

  # Ready = the client port accepts connections AND the server says it started; the
  # port alone opens before the broker has caught up with the metadata log.
  local deadline=$((SECONDS + START_TIMEOUT))
  until port_open "$PORT" && grep -q "Kafka Server started" "$SERVER_LOG" 2>/dev/null; do
    # Without an SLF4J binding the broker runs but logs nothing, and would never look ready.
    if grep -q "NOP" "$CONSOLE_LOG" 2>/dev/null; then
      cat "$CONSOLE_LOG" >&2
      stop_pid "$pid"
      die "the broker has no SLF4J logging binding: the slf4j-api and log4j-slf4j*-impl jars in $LIBS do not match (docker/kafka/pom.xml)"
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      log "the broker exited during startup; last lines of its logs:"
      tail -n 40 "$CONSOLE_LOG" "$SERVER_LOG" >&2 2>/dev/null || true
      rm -f "$PID_FILE"
      exit 1
    fi
    if ((SECONDS >= deadline)); then
      log "the broker was not ready after ${START_TIMEOUT}s; last lines of its logs:"
      tail -n 40 "$CONSOLE_LOG" "$SERVER_LOG" >&2 2>/dev/null || true
      stop_pid "$pid"
      exit 1
    fi
    sleep 0.2
  done
  log "ready in $((SECONDS - started_at))s (pid $pid)"
  cat "$BOOTSTRAP_FILE"
}

# TERM lets the broker shut down cleanly (it flushes and closes its logs); KILL if it
# has not finished in 30 s.
stop_pid() {
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 150); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.2
  done
  log "pid $pid ignored SIGTERM for 30s; killing it"
  kill -KILL "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
}

stop() {
  local pid
  pid="$(running_pid)"
  if [[ -n "$pid" ]]; then
    log "stopping the broker (pid $pid)"
    stop_pid "$pid"
  else
    log "not running"
  fi
  # Every run starts from an empty broker: no topics, offsets or groups left over.
  if [[ "${KAFKA_KEEP_STATE:-0}" == 1 ]]; then
    log "keeping $STATE_DIR (KAFKA_KEEP_STATE=1)"
  elif [[ -f "$MARKER" ]]; then
    log "deleting $STATE_DIR: topics, offsets and groups (KAFKA_KEEP_STATE=1 keeps them for a restart)"
    rm -rf "$STATE_DIR"
  elif [[ -e "$STATE_DIR" ]]; then
    log "leaving $STATE_DIR in place: it was not made by this script"
  fi
}

status() {
  local pid
  pid="$(running_pid)"
  if [[ -n "$pid" ]]; then
    echo "running on $(<"$BOOTSTRAP_FILE") (pid $pid)"
  else
    echo "not running"
    return 1
  fi
}

bootstrap() {
  [[ -n "$(running_pid)" ]] || die "not running (start it with: scripts/kafka.sh start)"
  cat "$BOOTSTRAP_FILE"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  bootstrap) bootstrap ;;
  *)
    echo "usage: $0 start|stop|status|bootstrap   (stop deletes the broker's data unless KAFKA_KEEP_STATE=1)" >&2
    exit 2
    ;;
esac
