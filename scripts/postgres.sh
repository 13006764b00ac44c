#!/usr/bin/env bash
# scripts/postgres.sh: a THROWAWAY PostgreSQL 15 cluster for Tern's storage tests and benchmarks.
#
# Usage: scripts/postgres.sh [start] [--durable]   start it (or reuse the running one); prints
#                                                   `export TERN_TEST_POSTGRES_URL='postgres://...'`
#                                                   on stdout, so `eval "$(scripts/postgres.sh)"`
#                                                   sets the variable in the calling shell
#        scripts/postgres.sh url                    print the URL of the running cluster (exit 1
#                                                   if it is not running)
#        scripts/postgres.sh status                 say whether it runs (exit 0) or not (exit 3)
#        scripts/postgres.sh stop                   stop it (no error if it is not running)
#        scripts/postgres.sh clean                  stop it and delete its data directory
#
# --durable (or TERN_PG_DURABLE=1): fsync, synchronous_commit and full_page_writes stay on, the
#   PostgreSQL defaults; use it for benchmarks. Without it the cluster runs with fsync=off
#   (tests do not survive power loss anyway, and it makes them faster). `--durable` restarts a
#   running fast cluster in durable mode; a plain start reuses a running durable one.
#
# Env: TERN_PG_DIR   where the cluster lives (default: <repo>/target/pg-test; if the `postgres`
#                    user cannot reach it when run as root, a directory under /tmp is used)
#      TERN_PG_PORT  first TCP port to try on 127.0.0.1 (default 55432; the next free one of the
#                    following 20 is taken if it is busy)
#      TERN_PG_BIN   PostgreSQL binaries (default /usr/lib/postgresql/15/bin; if missing,
#                    `apt-get install -y postgresql-15` is run as a fallback)
#
# The cluster listens on 127.0.0.1 only (no Unix socket), with `trust` authentication for the
# superuser `tern`, and has a database `tern_test`. Tests create their own database per test
# from that URL. As root, initdb/postgres run as the `postgres` system user (they refuse root).
# Safe to call concurrently (a lock serialises callers) and without a terminal (CI=true).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PG_BIN="${TERN_PG_BIN:-/usr/lib/postgresql/15/bin}"
PG_USER=tern
PG_DB=tern_test
FIRST_PORT="${TERN_PG_PORT:-55432}"

log() { printf 'postgres.sh: %s\n' "$*" >&2; }
die() {
  printf 'postgres.sh: error: %s\n' "$*" >&2
  exit 1
}

IS_ROOT=0
[ "$(id -u)" -eq 0 ] && IS_ROOT=1

# Run a PostgreSQL server-side binary as the cluster owner (from /, so a cwd the postgres user
# cannot read does not matter).
# The lock's file descriptor (8) is closed for it: a server started by pg_ctl would otherwise
# inherit it and hold the lock for its whole life.
as_owner() {
  if [ "$IS_ROOT" = 1 ]; then
    (cd / && runuser -u postgres -- "$@" 8>&-)
  else
    (cd / && "$@" 8>&-)
  fi
}

ensure_binaries() {
  if [ -x "$PG_BIN/initdb" ] && [ -x "$PG_BIN/pg_ctl" ] && [ -x "$PG_BIN/psql" ]; then
    return 0
  fi
  [ -z "${TERN_PG_BIN:-}" ] || die "TERN_PG_BIN=$TERN_PG_BIN has no initdb/pg_ctl/psql"
  log "$PG_BIN/initdb not found: installing postgresql-15 with apt-get"
  local sudo=()
  if [ "$IS_ROOT" != 1 ]; then
    command -v sudo >/dev/null 2>&1 || die "need root (or sudo) to install postgresql-15"
    sudo=(sudo -n)
  fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -qq >&2 \
    || die "apt-get update failed"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
    --no-install-recommends postgresql-15 >&2 || die "apt-get install postgresql-15 failed"
  [ -x "$PG_BIN/initdb" ] || die "postgresql-15 installed but $PG_BIN/initdb is still missing"
}

# Pick the cluster directory. As root, the postgres user must be able to reach it; if it cannot
# (e.g. the checkout is under /root), fall back to a directory under /tmp named after the repo.
choose_dir() {
  DIR="${TERN_PG_DIR:-$ROOT/target/pg-test}"
  if [ "$IS_ROOT" = 1 ]; then
    id -u postgres >/dev/null 2>&1 || die "the 'postgres' system user does not exist (is postgresql-15 installed?)"
    mkdir -p "$DIR"
    chown postgres: "$DIR"
    chmod 700 "$DIR"
    if ! runuser -u postgres -- test -w "$DIR" 2>/dev/null; then
      [ -z "${TERN_PG_DIR:-}" ] || die "the postgres user cannot write TERN_PG_DIR=$DIR (a parent directory is not traversable)"
      local fallback
      fallback="${TMPDIR:-/tmp}/tern-pg-test-$(printf '%s' "$ROOT" | cksum | cut -d' ' -f1)"
      log "the postgres user cannot reach $DIR; using $fallback"
      rmdir "$DIR" 2>/dev/null || true
      DIR="$fallback"
      mkdir -p "$DIR"
      chown postgres: "$DIR"
      chmod 700 "$DIR"
    fi
  else
    mkdir -p "$DIR"
  fi
  DATA="$DIR/data"
  LOGFILE="$DIR/postgres.log"
}

# Serialise concurrent callers (e.g. parallel test processes) on a lock file beside the cluster.
take_lock() {
  local lock
  lock="$(dirname "$DIR")/.$(basename "$DIR").lock"
  exec 8>"$lock" || die "cannot open lock file $lock"
  if command -v flock >/dev/null 2>&1; then
    flock -w 300 8 || die "timed out waiting for $lock"
  fi
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

is_running() {
  [ -f "$DATA/PG_VERSION" ] && as_owner "$PG_BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1
}

current_port() { cat "$DIR/port" 2>/dev/null || true; }

url() { printf 'postgres://%s@127.0.0.1:%s/%s' "$PG_USER" "$(current_port)" "$PG_DB"; }

server_options() {
  local port=$1 mode=$2
  local opts="-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories= -c max_connections=300"
  if [ "$mode" = durable ]; then
    opts="$opts -c fsync=on -c synchronous_commit=on -c full_page_writes=on"
  else
    opts="$opts -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
  fi
  printf '%s' "$opts"
}

wait_ready() {
  local port=$1
  for _ in $(seq 1 120); do
    if "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port" -t 1; then
      return 0
    fi
    sleep 0.5
  done
  die "PostgreSQL did not become ready on port $port; see $LOGFILE"
}

ensure_database() {
  local port=$1 exists
  exists="$("$PG_BIN/psql" -X -q -t -A -h 127.0.0.1 -p "$port" -U "$PG_USER" -d postgres \
    -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'" </dev/null)" \
    || die "cannot query the cluster on port $port; see $LOGFILE"
  if [ "$exists" != 1 ]; then
    "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$port" -U "$PG_USER" -d postgres \
      -c "CREATE DATABASE $PG_DB" </dev/null >&2 || die "CREATE DATABASE $PG_DB failed"
  fi
}

cmd_start() {
  local mode=$1 port running_mode
  ensure_binaries
  choose_dir
  take_lock
  if is_running; then
    running_mode="$(cat "$DIR/mode" 2>/dev/null || echo fast)"
    port="$(current_port)"
    # A durable cluster serves tests too; only --durable restarts a fast one.
    if { [ "$running_mode" = "$mode" ] || [ "$running_mode" = durable ]; } && [ -n "$port" ]; then
      log "reusing the running cluster in $DIR (port $port, $running_mode mode)"
      wait_ready "$port"
      ensure_database "$port"
      printf "export TERN_TEST_POSTGRES_URL='%s'\n" "$(url)"
      return 0
    fi
    log "restarting the cluster in $DIR in $mode mode (it runs in $running_mode mode)"
    as_owner "$PG_BIN/pg_ctl" -D "$DATA" -m fast -w -t 60 stop >&2 || die "pg_ctl stop failed"
  fi
  if [ ! -f "$DATA/PG_VERSION" ]; then
    rm -rf "$DATA"
    log "initdb $DATA"
    as_owner "$PG_BIN/initdb" -D "$DATA" -U "$PG_USER" --auth=trust --encoding=UTF8 --locale=C.UTF-8 \
      --no-instructions >"$DIR/initdb.log" 2>&1 || {
      cat "$DIR/initdb.log" >&2
      die "initdb failed"
    }
  fi
  port="$FIRST_PORT"
  while port_in_use "$port"; do
    port=$((port + 1))
    [ "$port" -le $((FIRST_PORT + 20)) ] || die "no free port in $FIRST_PORT..$((FIRST_PORT + 20))"
  done
  printf '%s\n' "$port" >"$DIR/port"
  printf '%s\n' "$mode" >"$DIR/mode"
  log "starting PostgreSQL on 127.0.0.1:$port ($mode mode, data in $DATA)"
  if [ "$IS_ROOT" = 1 ]; then
    touch "$LOGFILE"
    chown postgres: "$LOGFILE"
  fi
  as_owner "$PG_BIN/pg_ctl" -D "$DATA" -l "$LOGFILE" -o "$(server_options "$port" "$mode")" -w -t 60 start \
    >&2 || {
    tail -n 30 "$LOGFILE" >&2 || true
    die "pg_ctl start failed"
  }
  wait_ready "$port"
  ensure_database "$port"
  printf "export TERN_TEST_POSTGRES_URL='%s'\n" "$(url)"
}

cmd_stop() {
  choose_dir
  take_lock
  if is_running; then
    log "stopping the cluster in $DIR"
    as_owner "$PG_BIN/pg_ctl" -D "$DATA" -m fast -w -t 60 stop >&2 || die "pg_ctl stop failed"
  else
    log "no cluster running in $DIR"
  fi
}

main() {
  local cmd=start mode=fast arg
  [ "${TERN_PG_DURABLE:-0}" = 1 ] && mode=durable
  for arg in "$@"; do
    case "$arg" in
      start | stop | status | url | clean) cmd=$arg ;;
      --durable) mode=durable ;;
      -h | --help)
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
        return 0
        ;;
      *) die "unknown argument '$arg' (try --help)" ;;
    esac
  done
  case "$cmd" in
    start) cmd_start "$mode" ;;
    stop)
      if [ -x "$PG_BIN/pg_ctl" ]; then
        cmd_stop
      fi
      ;;
    status)
      [ -x "$PG_BIN/pg_ctl" ] || exit 3
      choose_dir
      if is_running; then
        log "running in $DIR on port $(current_port) ($(cat "$DIR/mode" 2>/dev/null || echo fast) mode)"
      else
        log "not running ($DIR)"
        exit 3
      fi
      ;;
    url)
      [ -x "$PG_BIN/pg_ctl" ] || exit 1
      choose_dir
      is_running || die "not running; start it with scripts/postgres.sh"
      url
      printf '\n'
      ;;
    clean)
      if [ -x "$PG_BIN/pg_ctl" ]; then
        cmd_stop
      else
        choose_dir
      fi
      log "removing $DIR"
      rm -rf "$DIR"
      ;;
  esac
}

main "$@"
