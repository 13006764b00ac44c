#!/usr/bin/env bash
# bench/durable.sh: durable QoS 1 throughput and publish -> PUBACK latency of Tern, on SQLite and
# on PostgreSQL (fsync on), to offline persistent sessions (issue #4).
#
# Every QoS 1 PUBLISH matches N offline persistent sessions (MQTT 3.1.1, clean session 0, QoS 1
# subscription to bench/#, made with `mosquitto_sub -c -E`), so the broker acknowledges it only
# after the message body and N deliveries are committed (group commit). P tern-bench publishers
# (MQTT 5, window W each) publish as fast as their acknowledgements allow, or at --rate, for
# --duration s after --warmup s. Reported: acknowledged msgs/s in the measured window, send ->
# PUBACK latency (tern-bench `ack_latency_us`), broker CPU, for PostgreSQL its CPU, commits/s,
# messages per commit and mean WAL sync time (track_wal_io_timing), and the disk's writes and
# cache flushes per second with their mean time (/proc/diskstats: the whole device, so other
# work on the machine shows there too). Afterwards the stored deliveries are counted (must be
# acked x N).
#
# Usage: bench/durable.sh [--backends "sqlite postgres"] [--subs 1] [--pubs 16] [--window 100]
#                         [--size 64] [--rate 0] [--duration 10] [--warmup 2] [--perf]
#                         [--out DIR] [--keep-pg]
#   --perf     also record 5 s of `perf record -a -g` during the measured window and write the
#              top of `perf report` (by command, then by symbol) to DIR/<backend>-perf.txt
#   --keep-pg  leave the private PostgreSQL cluster running at the end
#
# PostgreSQL: a PRIVATE durable cluster (scripts/postgres.sh start --durable with TERN_PG_DIR=
# $BENCH_WORK/pg, first port 56500): fsync, synchronous_commit and full_page_writes on, the
# server defaults otherwise. The shared test cluster is left alone. A fresh database per run.
# SQLite: a fresh file under $BENCH_WORK (synchronous = FULL, the broker's default), on the same
# file system as the cluster.
#
# Env: TERN_BIN, TERN_BENCH (default: target/release/{tern,tern-bench}, built if missing),
#      BENCH_WORK (default /tmp/tern-durable-bench), BENCH_NICE (nice value for the broker,
#      the cluster's new processes and the load), and any TERN_* broker setting, passed through,
#      e.g. TERN_PERSISTENCE__BATCH_MAX_DELAY_MS, TERN_PERSISTENCE__BATCH_MAX_OPS,
#      TERN_DATABASE__SQLITE_SYNCHRONOUS, TERN_DATABASE__MAX_CONNECTIONS.
# Output: DIR (default $BENCH_WORK/results-<time>) holds <backend>.json (tern-bench), .log
# (tern-bench stderr), broker-<backend>.log, and summary.md, which is also printed.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$BENCH_DIR/.." && pwd)"
BENCH_WORK="${BENCH_WORK:-/tmp/tern-durable-bench}"

BACKENDS="sqlite postgres"
SUBS=1
PUBS=16
WINDOW=100
SIZE=64
RATE=0
DURATION=10
WARMUP=2
PERF=0
KEEP_PG=0
OUT=""

log() { printf '%s durable.sh: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

while (($#)); do
    case "$1" in
        --backends) BACKENDS=$2; shift 2 ;;
        --subs) SUBS=$2; shift 2 ;;
        --pubs) PUBS=$2; shift 2 ;;
        --window) WINDOW=$2; shift 2 ;;
        --size) SIZE=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --warmup) WARMUP=$2; shift 2 ;;
        --perf) PERF=1; shift ;;
        --keep-pg) KEEP_PG=1; shift ;;
        --out) OUT=$2; shift 2 ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
            exit 0
            ;;
        *) die "unknown argument '$1' (try --help)" ;;
    esac
done

mkdir -p "$BENCH_WORK"
OUT="${OUT:-$BENCH_WORK/results-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
NICE=()
[[ -n "${BENCH_NICE:-}" ]] && NICE=(nice -n "$BENCH_NICE")

TERN_BIN="${TERN_BIN:-$REPO_DIR/target/release/tern}"
TERN_BENCH="${TERN_BENCH:-$REPO_DIR/target/release/tern-bench}"
if [[ ! -x "$TERN_BIN" || ! -x "$TERN_BENCH" ]]; then
    log "building tern and tern-bench (release)"
    (cd "$REPO_DIR" && cargo build --release -p tern-server -p tern-bench) >&2 || die "build failed"
fi
command -v mosquitto_sub >/dev/null || die "mosquitto_sub not found (apt-get install mosquitto-clients)"
command -v jq >/dev/null || die "jq not found (apt-get install jq)"

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
    local p=$1
    while ! port_free "$p"; do p=$((p + 1)); done
    echo "$p"
}

# --- PostgreSQL: a private durable cluster --------------------------------------------------
PG_ENV=(TERN_PG_DIR="$BENCH_WORK/pg" TERN_PG_PORT=56500)
PG_URL=""
pg_up() {
    [[ -n "$PG_URL" ]] && return 0
    local out
    out="$(env "${PG_ENV[@]}" "${NICE[@]}" "$REPO_DIR/scripts/postgres.sh" start --durable)" \
        || die "cannot start the private PostgreSQL cluster"
    PG_URL="$(sed -n "s/^export TERN_TEST_POSTGRES_URL='\(.*\)'$/\1/p" <<<"$out")"
    [[ -n "$PG_URL" ]] || die "no URL from scripts/postgres.sh: $out"
    # Time the WAL writes and syncs (pg_stat_wal.wal_sync_time); private cluster only.
    psql_q "$PG_URL" "ALTER SYSTEM SET track_wal_io_timing = on" >/dev/null
    psql_q "$PG_URL" "SELECT pg_reload_conf()" >/dev/null
}
# shellcheck source=bench/pg-lib.sh
source "$BENCH_DIR/pg-lib.sh"
# The block device under BENCH_WORK, and "writes write_ms flushes flush_ms" from
# /proc/diskstats (the whole device: other work on the machine counts too).
DISK="$(basename "$(df --output=source "$BENCH_WORK" | tail -n 1)")"
disk_stats() { awk -v d="$DISK" '$3 == d { print $8, $11, $19, $20 }' /proc/diskstats; }

BROKER_PID=""
cleanup() {
    if [[ -n "$BROKER_PID" ]]; then
        kill "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
    fi
    pg_down
}
trap cleanup EXIT

# --- One run ---------------------------------------------------------------------------------
SUMMARY="$OUT/summary.md"
{
    echo "# Durable QoS 1 benchmark, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo
    echo "tern $(git -C "$REPO_DIR" rev-parse --short HEAD)$(git -C "$REPO_DIR" diff --quiet HEAD -- crates || echo ' (crates/ modified)'), $(nproc) CPUs, load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "$SUBS offline persistent session(s), $PUBS publishers (MQTT 5, QoS 1, window $WINDOW, $SIZE B), rate $([[ "$RATE" == 0 ]] && echo unlimited || echo "$RATE/s"), ${WARMUP} s warm-up + ${DURATION} s"
    echo
    echo "| backend | batch (delay ms / max ops) | acked msg/s | ack p50 ms | ack p99 ms | ack p99.9 ms | ack max ms | broker CPU % | PostgreSQL CPU % | DB commits/s | msgs/commit | WAL sync ms | disk writes, flushes (mean ms) | stored deliveries | check |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
} >"$SUMMARY"

run_backend() {
    local backend=$1 url dbname="" work port cfg delay ops pid json stats0="" stats1="" deliveries
    work="$BENCH_WORK/run-$backend"
    rm -rf "$work"
    mkdir -p "$work"
    case "$backend" in
        sqlite) url="sqlite://$work/tern.db" ;;
        postgres)
            pg_up
            dbname="tern_bench_$(date +%s)_$$"
            psql_q "$PG_URL" "CREATE DATABASE $dbname" >/dev/null
            url="$(with_db "$PG_URL" "$dbname")"
            ;;
        *) die "unknown backend $backend" ;;
    esac
    # Queues must hold the whole run: nothing is consumed, nothing may be dropped.
    local env=(TERN_DATABASE__URL="$url" TERN_LIMITS__MAX_QUEUED_MESSAGES=100000000
        TERN_LIMITS__MAX_QUEUED_BYTES=17179869184)
    cfg="$(cd "$work" && env "${env[@]}" "$TERN_BIN" config)"
    delay="$(sed -n '/^\[persistence\]/,/^\[/s/^batch_max_delay_ms = //p' <<<"$cfg")"
    ops="$(sed -n '/^\[persistence\]/,/^\[/s/^batch_max_ops = //p' <<<"$cfg")"
    log "$backend: $url, batch_max_delay_ms=$delay batch_max_ops=$ops"
    sed -n '/^\[persistence\]/,/^$/p;/^\[database\]/,/^$/p' <<<"$cfg" | sed 's/^url = .*/url = (see above)/' \
        >"$OUT/config-$backend.toml"

    port="$(free_port 18830)"
    (cd "$work" && exec env "${env[@]}" "${NICE[@]}" "$TERN_BIN" serve --mqtt-addr "127.0.0.1:$port") \
        >"$OUT/broker-$backend.log" 2>&1 &
    BROKER_PID=$!
    pid=$BROKER_PID
    for _ in $(seq 1 300); do
        grep -q "MQTT listener ready" "$OUT/broker-$backend.log" && break
        kill -0 "$pid" 2>/dev/null || die "broker exited; see $OUT/broker-$backend.log"
        sleep 0.1
    done
    grep -q "MQTT listener ready" "$OUT/broker-$backend.log" || die "broker not ready after 30 s"

    for ((i = 0; i < SUBS; i++)); do
        mosquitto_sub -h 127.0.0.1 -p "$port" -V mqttv311 -c -i "durbench-s$i" -q 1 -t 'bench/#' -E \
            || die "mosquitto_sub -c -E failed"
    done

    if [[ "$backend" == postgres ]]; then
        stats0="$(psql_q "$url" "SELECT xact_commit, (SELECT wal_bytes FROM pg_stat_wal), (SELECT wal_sync FROM pg_stat_wal), extract(epoch FROM clock_timestamp()), (SELECT wal_sync_time FROM pg_stat_wal) FROM pg_stat_database WHERE datname = current_database()")"
    fi
    local perf_pid="" ticks0="" ticks1="" t0 t1 disk0 disk1
    ticks0="$(pg_cpu_ticks)"
    disk0="$(disk_stats)"
    t0="$(date +%s.%N)"
    if [[ "$PERF" == 1 ]]; then
        (sleep "$(awk -v w="$WARMUP" 'BEGIN { print w + 2 }')" &&
            perf record -a -g -F 499 -o "$OUT/$backend-perf.data" -- sleep 5 >/dev/null 2>&1) &
        perf_pid=$!
    fi
    log "$backend: $PUBS publishers for ${WARMUP}+${DURATION} s"
    json="$OUT/$backend.json"
    "${NICE[@]}" "$TERN_BENCH" pub -H 127.0.0.1 -p "$port" -V 5 -c "$PUBS" -q 1 -t 'bench/%i' \
        -w "$WINDOW" -s "$SIZE" -r "$RATE" -d "$DURATION" --warmup "$WARMUP" --broker-pid "$pid" \
        --interval 2 --label "backend=$backend" --label "subs=$SUBS" --label "batch_max_delay_ms=$delay" \
        --label "batch_max_ops=$ops" --label "load1_before=$(cut -d' ' -f1 /proc/loadavg)" \
        >"$json" 2>"$OUT/$backend.log" || log "$backend: tern-bench exited with $? (see $OUT/$backend.log)"
    t1="$(date +%s.%N)"
    disk1="$(disk_stats)"
    [[ "$backend" == postgres ]] && ticks1="$(pg_cpu_ticks)"
    if [[ -n "$perf_pid" ]]; then wait "$perf_pid" || true; fi
    if [[ "$backend" == postgres ]]; then
        stats1="$(psql_q "$url" "SELECT xact_commit, (SELECT wal_bytes FROM pg_stat_wal), (SELECT wal_sync FROM pg_stat_wal), extract(epoch FROM clock_timestamp()), (SELECT wal_sync_time FROM pg_stat_wal) FROM pg_stat_database WHERE datname = current_database()")"
        deliveries="$(psql_q "$url" "SELECT count(*) FROM deliveries")"
    else
        deliveries="$(sqlite3 "$work/tern.db" "SELECT count(*) FROM deliveries")"
    fi
    tail -n 12 "$OUT/$backend.log" >&2

    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    BROKER_PID=""

    # Figures.
    local acked sent rate p50 p99 p999 max cpu commits="-" per_commit="-" check pgcpu="-" sync_ms="-" disk
    disk="$(awk -v a="$disk0" -v t0="$t0" -v t1="$t1" '{ split(a, s, " "); w = $1 - s[1]; f = $3 - s[3];
        printf "%.0f/s %.2f ms, %.0f/s %.2f ms", w / (t1 - t0), (w > 0 ? ($2 - s[2]) / w : 0),
            f / (t1 - t0), (f > 0 ? ($4 - s[4]) / f : 0) }' <<<"$disk1")"
    acked="$(jq -r '.publish.acked // 0' "$json")"
    sent="$(jq -r '.publish.sent // 0' "$json")"
    rate="$(jq -r '.publish.sent_per_s // 0' "$json")"
    p50="$(jq -r '.ack_latency_us.p50 // 0 | . / 1000 | . * 100 | round / 100' "$json")"
    p99="$(jq -r '.ack_latency_us.p99 // 0 | . / 1000 | . * 100 | round / 100' "$json")"
    p999="$(jq -r '.ack_latency_us.p999 // 0 | . / 1000 | . * 100 | round / 100' "$json")"
    max="$(jq -r '.ack_latency_us.max // 0 | . / 1000 | . * 100 | round / 100' "$json")"
    cpu="$(jq -r '.broker.cpu_pct // "-" | if type == "number" then round else . end' "$json")"
    if [[ -n "$stats1" ]]; then
        read -r commits per_commit wal_mb syncs sync_ms <<<"$(awk -F'|' -v a="$stats0" -v sent="$sent" '{
            split(a, s, "|"); dt = $4 - s[4]; c = ($1 - s[1]) / dt; n = $3 - s[3];
            printf "%.0f %.0f %.1f %.0f %.2f", c, sent / ($1 - s[1]), ($2 - s[2]) / dt / 1048576, n / dt,
                (n > 0 ? ($5 - s[5]) / n : 0) }' <<<"$stats1")"
        pgcpu="$(pg_cpu_pct "$ticks0" "$ticks1" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')")"
        log "$backend: $commits commits/s, $wal_mb MB WAL/s, $syncs WAL syncs/s of $sync_ms ms on average, PostgreSQL CPU $pgcpu% of one core, over the whole run (warm-up and drain included)"
    fi
    if [[ "$(jq -r '.ok' "$json")" == true && "$deliveries" -eq $((acked * SUBS)) && "$acked" -eq "$sent" ]]; then
        check="ok"
    else
        check="CHECK: ok=$(jq -r '.ok' "$json"), acked $acked of $sent, deliveries $deliveries (expected $((acked * SUBS)))"
    fi
    echo "| $backend | $delay / $ops | $rate | $p50 | $p99 | $p999 | $max | $cpu | $pgcpu | $commits | $per_commit | $sync_ms | $disk | $deliveries | $check |" >>"$SUMMARY"

    if [[ "$PERF" == 1 && -f "$OUT/$backend-perf.data" ]]; then
        {
            echo "## $backend: perf record -a -g -F 499, 5 s in the measured window"
            echo
            echo "### by command"
            perf report -i "$OUT/$backend-perf.data" --no-children --sort comm --stdio -g none 2>/dev/null |
                grep -v '^#' | grep -v '^$' | grep '%' | head -15
            echo
            echo "### by command and symbol (flat)"
            perf report -i "$OUT/$backend-perf.data" --no-children --sort comm,dso,sym --stdio -g none \
                2>/dev/null | grep -v '^#' | grep -v '^$' | head -45
        } >"$OUT/$backend-perf.txt"
        rm -f "$OUT/$backend-perf.data"
    fi
    if [[ -n "$dbname" ]]; then
        psql_q "$PG_URL" "DROP DATABASE IF EXISTS $dbname WITH (FORCE)" >/dev/null || true
    fi
    rm -rf "$work"
}

for b in $BACKENDS; do
    run_backend "$b"
done
echo >>"$SUMMARY"
echo "Results: $OUT" >>"$SUMMARY"
cat "$SUMMARY"
