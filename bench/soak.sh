#!/usr/bin/env bash
# bench/soak.sh: a long mixed-load run of the release broker (issue 20), not part of CI.
#
#   bench/soak.sh                                   # 30 minutes on SQLite
#   SOAK_DURATION=600 bench/soak.sh                 # 10 minutes
#   SOAK_DB=postgres bench/soak.sh                  # on a PostgreSQL cluster of its own
#
# What runs against one `tern serve` (release build, admin API on, everything else default),
# each load as a loop of tern-bench processes restarted whenever one ends (so a broker restart
# costs each of them one run, not the soak):
#   - QoS 0, 1 and 2 traffic: `scenario` 4 -> 4 pairs at 1,000 msg/s QoS 0, 4 -> 4 at
#     1,000 msg/s QoS 1, 2 -> 2 at 200 msg/s QoS 2 (clean sessions);
#   - persistent sessions: 4 publishers at 400 msg/s QoS 1 towards 4 subscribers with
#     persistent sessions (Session Expiry 600 s) that stay 20 s, leave for 10 s (about 1,000
#     messages queue per session meanwhile) and resume;
#   - retained updates: 100 publishers each updating its retained topic once a second (QoS 1);
#   - reconnect churn: `conn` rounds of 200 connections at 200/s held 2 s, alternately with
#     the same client ids every round (a session taken over/recreated) and with new ones,
#     plus 100 MQTT 5 persistent sessions (Session Expiry 60 s) resumed every round;
#   - a latency probe (`tern-bench probe`): one QoS 1 publisher and a persistent-session
#     subscriber at 50 msg/s, reconnecting through failures, p50/p99/max per 5 s;
#   - one fault at SOAK_RESTART_AT: with PostgreSQL the cluster is stopped for SOAK_DB_DOWN
#     seconds and started again (tern stays up); with SQLite, which has no server to restart,
#     tern itself is killed with SIGKILL and started again on the same database file (crash
#     recovery of the WAL and of the persistent sessions).
# Every SOAK_INTERVAL seconds a sampler reads tern's /metrics (process_resident_memory_bytes,
# process_open_fds, process_threads, tern_connections, tern_sessions, tern_subscriptions,
# tern_queued_messages, tern_retained_messages, tern_store_up and the message counters, as
# msg/s), counts the broker's sockets in /proc/PID/fd, and takes the probe's latest p99. Tokio
# does not expose its task count in a release build, so threads and fds stand in for tasks.
# After SOAK_DURATION the load stops and sampling goes on for SOAK_SETTLE seconds.
#
# Output (SOAK_OUT, default bench/results/soak-<date>-<db>): soak.csv (the samples),
# probe.csv (the probe's own lines), soak.png (RSS, fds, msg/s and probe p99 over time, drawn
# with gnuplot, installed with apt-get when missing), summary.txt (the checks below), the
# broker's log and each load loop's log. Exit status 0 when every check passes, 3 otherwise.
#
# Checks (bench/soak_analyze.py, standard library only):
#   plateau  mean RSS of the last third of the load within SOAK_RSS_PLATEAU_PCT (default 10)
#            percent of the middle third's (after the restart: SOAK_RESTART_AT defaults to a
#            fifth of the run so that both thirds are of the restarted process);
#   fds      after the settle time no client socket left on the MQTT port (ss), tern_connections
#            back to 0, and the broker's open fds within 2 x database.max_connections + 2 of its
#            idle baseline (the database pool may stay grown until database.idle_timeout: 2 files
#            per SQLite connection, 1 socket per PostgreSQL one);
#   threads  at the end within 8 of the baseline (tokio's blocking pool threads come and go);
#   p99      the probe's median p99 over the last tenth of the load at most SOAK_P99_RATIO
#            (default 3) times that of the first tenth, or at most 5 ms above it;
#   loss     the probe lost no acknowledged message (persistent subscriber, restart included).
#
# Environment:
#   SOAK_DURATION (1800)    seconds of load          SOAK_INTERVAL (5)  seconds between samples
#   SOAK_DB (sqlite)        sqlite | postgres        SOAK_SETTLE (75)   seconds sampled after the load
#   SOAK_RESTART_AT (DURATION/5) seconds into the load of the fault; 0 = none
#   SOAK_DB_DOWN (10)       seconds PostgreSQL stays down
#   SOAK_PORT (18830)       MQTT port; the admin API (metrics) is on SOAK_PORT+5
#   SOAK_SCALE (1)          multiplies every rate (e.g. 0.2 for a quiet run on a busy machine)
#   TERN_BIN, TERN_BENCH    binaries (default: target/release/, built when missing)
#   SOAK_PG_PORT (56432)    port of the soak's own PostgreSQL cluster (under SOAK_OUT/pg)
#   SOAK_MALLOC_CONF        passed to tern as _RJEM_MALLOC_CONF, e.g. dirty_decay_ms:0,muzzy_decay_ms:0
#                           so that RSS follows live memory (jemalloc keeps freed pages ~10 s)
#   SOAK_TERN_ENV           more KEY=VALUE words for tern's environment, e.g.
#                           "TERN_DATABASE__MAX_CONNECTIONS=2"
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION="${SOAK_DURATION:-1800}"
INTERVAL="${SOAK_INTERVAL:-5}"
DB="${SOAK_DB:-sqlite}"
SETTLE="${SOAK_SETTLE:-75}"
RESTART_AT="${SOAK_RESTART_AT:-$((DURATION / 5))}"
DB_DOWN="${SOAK_DB_DOWN:-10}"
PORT="${SOAK_PORT:-18830}"
ADMIN="$((PORT + 5))"
SCALE="${SOAK_SCALE:-1}"
OUT="${SOAK_OUT:-$REPO_DIR/bench/results/soak-$(date +%Y%m%d-%H%M%S)-$DB}"
[[ $DB == sqlite || $DB == postgres ]] || die "SOAK_DB must be sqlite or postgres, not $DB"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

ensure_tern || die "cannot build tern (release)"
ensure_tern_bench
command -v gnuplot >/dev/null || {
    log "installing gnuplot-nox (apt-get) for the plot"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gnuplot-nox) >&2 \
        || log "warning: no gnuplot: the plot will be missing"
}
port_free "$PORT" || die "port $PORT is in use (SOAK_PORT)"
port_free "$ADMIN" || die "port $ADMIN is in use (SOAK_PORT+5)"

rate() { awk -v r="$1" -v s="$SCALE" 'BEGIN { v = r * s; if (v < 1) v = 1; printf "%g", v }'; }

# --- The database -----------------------------------------------------------------------------
PG_ENV=(TERN_PG_DIR="$OUT/pg" TERN_PG_PORT="${SOAK_PG_PORT:-56432}")
if [[ $DB == postgres ]]; then
    pg_out="$(env "${PG_ENV[@]}" TERN_PG_DURABLE=1 bash "$REPO_DIR/scripts/postgres.sh" start --durable)" \
        || die "cannot start the soak's PostgreSQL cluster"
    admin_url="$(sed -n "s/^export TERN_TEST_POSTGRES_URL='\(.*\)'$/\1/p" <<< "$pg_out")"
    [[ -n "$admin_url" ]] || die "no URL from scripts/postgres.sh: $pg_out"
    DB_URL="${admin_url%/*}/tern_soak"
    psql -X -q -d "$admin_url" -c 'DROP DATABASE IF EXISTS tern_soak WITH (FORCE)' -c 'CREATE DATABASE tern_soak' \
        || die "cannot create database tern_soak"
else
    mkdir -p "$OUT/data"
    DB_URL="sqlite://$OUT/data/tern.db"
fi
log "soak: $DURATION s on $DB ($DB_URL), fault at ${RESTART_AT}s, samples every ${INTERVAL}s, output $OUT"
uptime | tee "$OUT/loadavg-start.txt" >&2

# --- The broker -------------------------------------------------------------------------------
BROKER_PID=""
start_tern() {
    (
        cd "$OUT"
        # tern refuses TERN_* variables it does not know: start it from a clean environment.
        extra=()
        [[ -n "${SOAK_MALLOC_CONF:-}" ]] && extra+=(_RJEM_MALLOC_CONF="$SOAK_MALLOC_CONF")
        # shellcheck disable=SC2206 # KEY=VALUE words on purpose
        [[ -n "${SOAK_TERN_ENV:-}" ]] && extra+=($SOAK_TERN_ENV)
        exec env -i PATH="$PATH" HOME="$HOME" RUST_LOG=info NO_COLOR=1 "${extra[@]}" \
            TERN_DATABASE__URL="$DB_URL" TERN_ADMIN__ADDR="127.0.0.1:$ADMIN" \
            "$TERN_BIN" serve --mqtt-addr "127.0.0.1:$PORT"
    ) >> "$OUT/tern.log" 2>&1 &
    BROKER_PID=$!
    echo "$BROKER_PID" > "$OUT/tern.pid"
    wait_port "$PORT" 30 || die "tern did not listen on $PORT (see $OUT/tern.log)"
    wait_port "$ADMIN" 10 || die "tern's admin API did not listen on $ADMIN"
}
stop_all() {
    local p
    # The load loops (subshells of this script) and the tern-bench process each is running.
    for p in $(jobs -p); do
        pkill -P "$p" 2>/dev/null || true
        kill "$p" 2>/dev/null || true
    done
    [[ -n "$BROKER_PID" ]] && kill "$BROKER_PID" 2>/dev/null || true
    if [[ $DB == postgres ]]; then env "${PG_ENV[@]}" bash "$REPO_DIR/scripts/postgres.sh" stop >/dev/null 2>&1 || true; fi
}
trap stop_all EXIT
trap 'exit 130' INT TERM
start_tern
sleep 3
fd_sockets() { find "/proc/$1/fd" -lname 'socket:*' 2>/dev/null | wc -l; }
# client_sockets: established TCP connections on the MQTT port (the broker's side), i.e. the
# clients still connected, without the database pool's sockets (PostgreSQL) or the listeners.
client_sockets() { ss -Htn state established "( sport = :$PORT )" 2>/dev/null | wc -l; }

# --- The sampler ------------------------------------------------------------------------------
T0="$(date +%s.%N)"
echo "$T0" > "$OUT/t0"
PHASE_FILE="$OUT/phase"
echo baseline > "$PHASE_FILE"
sampler() {
    local prev_t="" prev_in="" prev_out="" line now t m pid
    echo "t_s,unix,phase,pid,rss_mib,fds,sockets,threads,connections,sessions,subscriptions,queued,retained,store_up,in_per_s,out_per_s,probe_p99_ms,probe_lost,client_sockets" > "$OUT/soak.csv"
    while :; do
        now="$(date +%s.%N)"
        t="$(awk -v a="$now" -v b="$T0" 'BEGIN { printf "%.1f", a - b }')"
        pid="$(cat "$OUT/tern.pid")"
        if m="$(curl -sf --max-time 3 "http://127.0.0.1:$ADMIN/metrics")"; then
            # shellcheck disable=SC2086
            read -r rss fds threads conns sessions subs queued retained up rin rout < <(awk '
                /^#/ { next }
                { name = $1; sub(/\{.*/, "", name); v[name] += $NF }
                END { printf "%.2f %d %d %d %d %d %d %d %d %d %d\n",
                      v["process_resident_memory_bytes"] / 1048576, v["process_open_fds"], v["process_threads"],
                      v["tern_connections"], v["tern_sessions"], v["tern_subscriptions"], v["tern_queued_messages"],
                      v["tern_retained_messages"], ("tern_store_up" in v) ? v["tern_store_up"] : -1,
                      v["tern_messages_received_total"], v["tern_messages_sent_total"] }' <<< "$m")
            local in_s="" out_s=""
            if [[ -n "$prev_t" ]] && ((rin >= prev_in)); then
                in_s="$(awk -v a="$rin" -v b="$prev_in" -v t="$now" -v p="$prev_t" 'BEGIN { printf "%.0f", (a - b) / (t - p) }')"
                out_s="$(awk -v a="$rout" -v b="$prev_out" -v t="$now" -v p="$prev_t" 'BEGIN { printf "%.0f", (a - b) / (t - p) }')"
            fi
            prev_t="$now" prev_in="$rin" prev_out="$rout"
            local p99="" lost=""
            if [[ -s "$OUT/probe.csv" ]]; then
                line="$(tail -n 1 "$OUT/probe.csv")"
                # Only a line of the last two intervals (not a stale one once the probe ended).
                if [[ $line != unix_time* ]] && awk -v u="${line%%,*}" -v n="$now" -v i="$INTERVAL" 'BEGIN { exit !(n - u <= 2 * i) }'; then
                    p99="$(cut -d, -f11 <<< "$line" | awk '{ printf "%.3f", $1 / 1000 }')"
                    lost="$(awk -F, 'NR > 1 { s += $8 } END { print s + 0 }' "$OUT/probe.csv")"
                fi
            fi
            echo "$t,$now,$(cat "$PHASE_FILE"),$pid,$rss,$fds,$(fd_sockets "$pid"),$threads,$conns,$sessions,$subs,$queued,$retained,$up,$in_s,$out_s,$p99,$lost,$(client_sockets)" >> "$OUT/soak.csv"
        else
            prev_t=""
            echo "$t,$now,$(cat "$PHASE_FILE"),$pid,,,,,,,,,,,,,,,$(client_sockets)" >> "$OUT/soak.csv"
        fi
        sleep "$INTERVAL"
    done
}
sampler &
SAMPLER_PID=$!
sleep "$((INTERVAL * 2))"
BASE_FDS="$(ls "/proc/$BROKER_PID/fd" | wc -l)"
BASE_SOCKETS="$(fd_sockets "$BROKER_PID")"
BASE_THREADS="$(awk '/^Threads:/ { print $2 }' "/proc/$BROKER_PID/status")"
echo "fds=$BASE_FDS sockets=$BASE_SOCKETS threads=$BASE_THREADS" > "$OUT/baseline.txt"
log "idle baseline: $BASE_FDS fds ($BASE_SOCKETS sockets), $BASE_THREADS threads"

# --- The load ---------------------------------------------------------------------------------
LOAD_START="$(date +%s)"
LOAD_END=$((LOAD_START + DURATION))
echo load > "$PHASE_FILE"
B=("$TERN_BENCH")
COMMON=(-p "$PORT" --interval 0 --connect-timeout 15)

# forever NAME CMD...: runs CMD (tern-bench arguments; "@REMAINING@" is replaced by the seconds
# left) again and again until the end of the load, 1 s apart; logs to NAME.log.
forever() {
    local name=$1 left args a rc
    shift
    while :; do
        left=$((LOAD_END - $(date +%s)))
        ((left >= 5)) || break
        args=()
        for a in "$@"; do args+=("${a//@REMAINING@/$left}"); done
        rc=0
        "${B[@]}" "${args[@]}" >> "$OUT/$name.json" 2>> "$OUT/$name.log" || rc=$?
        ((rc == 0)) || echo "$(date +%T) $name: tern-bench exit code $rc" >> "$OUT/loops.log"
        sleep 1
    done
}
# persistent_subs: 4 subscribers with persistent sessions, 20 s online, 10 s away.
persistent_subs() {
    while (($(date +%s) + 20 < LOAD_END)); do
        "${B[@]}" sub "${COMMON[@]}" -c 4 -q 1 -t 'soak/persist/%i' --session-expiry 600 \
            --client-id-prefix soak-persist -d 20 --warmup 0 --drain-timeout 1 \
            >> "$OUT/persist-sub.json" 2>> "$OUT/persist-sub.log" || echo "$(date +%T) persist-sub: exit $?" >> "$OUT/loops.log"
        sleep 10
    done
}
# churn: rounds of connect-hold-disconnect, reused ids, new ids and persistent sessions.
churn() {
    local round=0 rate_c
    rate_c="$(rate 200)"
    while (($(date +%s) + 10 < LOAD_END)); do
        round=$((round + 1))
        if ((round % 2)); then ids=(--client-id-prefix soak-churn-same); else ids=(); fi
        "${B[@]}" conn "${COMMON[@]}" -c 200 --connect-rate "$rate_c" --hold 2 --max-conn-errors 200 "${ids[@]}" \
            >> "$OUT/churn.json" 2>> "$OUT/churn.log" || echo "$(date +%T) churn: exit $?" >> "$OUT/loops.log"
        "${B[@]}" conn "${COMMON[@]}" -V 5 -c 100 --connect-rate "$rate_c" --hold 1 --max-conn-errors 100 \
            --session-expiry 60 --client-id-prefix soak-churn-persist \
            >> "$OUT/churn.json" 2>> "$OUT/churn.log" || echo "$(date +%T) churn-persist: exit $?" >> "$OUT/loops.log"
    done
}

"${B[@]}" probe -p "$PORT" --connect-timeout 15 --interval "$INTERVAL" -q 1 -r 50 --sub-session-expiry 600 \
    --client-id-prefix soak-probe -d "$DURATION" --csv "$OUT/probe.csv" > "$OUT/probe.json" 2> "$OUT/probe.log" &
PROBE_PID=$!
LOAD_PIDS=()
forever qos0 scenario "${COMMON[@]}" --pubs 4 --subs 4 -q 0 -r "$(rate 1000)" -t 'soak/q0/%i' -d @REMAINING@ --warmup 0 &
LOAD_PIDS+=($!)
forever qos1 scenario "${COMMON[@]}" --pubs 4 --subs 4 -q 1 -r "$(rate 1000)" -t 'soak/q1/%i' -d @REMAINING@ --warmup 0 &
LOAD_PIDS+=($!)
forever qos2 scenario "${COMMON[@]}" --pubs 2 --subs 2 -q 2 -r "$(rate 200)" -w 20 -t 'soak/q2/%i' -d @REMAINING@ --warmup 0 &
LOAD_PIDS+=($!)
forever persist-pub pub "${COMMON[@]}" -c 4 -q 1 -r "$(rate 400)" -t 'soak/persist/%i' -d @REMAINING@ --warmup 0 &
LOAD_PIDS+=($!)
persistent_subs &
LOAD_PIDS+=($!)
forever retained pub "${COMMON[@]}" -c 100 -q 1 --retain -r "$(rate 100)" -t 'soak/retained/%i' -d @REMAINING@ --warmup 0 &
LOAD_PIDS+=($!)
churn &
LOAD_PIDS+=($!)

# --- The fault --------------------------------------------------------------------------------
if ((RESTART_AT > 0 && RESTART_AT < DURATION)); then
    sleep "$RESTART_AT"
    if [[ $DB == postgres ]]; then
        log "fault: stopping PostgreSQL for ${DB_DOWN}s"
        echo db-down > "$PHASE_FILE"
        env "${PG_ENV[@]}" bash "$REPO_DIR/scripts/postgres.sh" stop >&2
        sleep "$DB_DOWN"
        env "${PG_ENV[@]}" TERN_PG_DURABLE=1 bash "$REPO_DIR/scripts/postgres.sh" start --durable > /dev/null
        log "fault: PostgreSQL started again"
    else
        log "fault: kill -9 of tern (pid $BROKER_PID), then a restart on the same database"
        echo restart > "$PHASE_FILE"
        kill -9 "$BROKER_PID"
        wait "$BROKER_PID" 2>/dev/null || true
        sleep 2
        start_tern
        log "fault: tern restarted (pid $BROKER_PID)"
    fi
    echo "$(date +%s) $RESTART_AT" > "$OUT/fault.txt"
    echo load > "$PHASE_FILE"
fi

# --- The end ----------------------------------------------------------------------------------
while (($(date +%s) < LOAD_END)); do sleep 5; done
log "load over; waiting for the load loops, then sampling ${SETTLE}s more"
wait "$PROBE_PID" || log "probe exit code $?"
for p in "${LOAD_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
echo settle > "$PHASE_FILE"
sleep "$SETTLE"
kill "$SAMPLER_PID" 2>/dev/null || true
wait "$SAMPLER_PID" 2>/dev/null || true
END_FDS="$(ls "/proc/$BROKER_PID/fd" | wc -l)"
END_SOCKETS="$(fd_sockets "$BROKER_PID")"
END_THREADS="$(awk '/^Threads:/ { print $2 }' "/proc/$BROKER_PID/status")"
echo "fds=$END_FDS sockets=$END_SOCKETS threads=$END_THREADS client_sockets=$(client_sockets)" > "$OUT/end.txt"
uptime | tee "$OUT/loadavg-end.txt" >&2
kill "$BROKER_PID"
wait "$BROKER_PID" 2>/dev/null || true
BROKER_PID=""

rc=0
python3 "$BENCH_DIR/soak_analyze.py" "$OUT" | tee "$OUT/summary.txt" || rc=$?
if command -v gnuplot >/dev/null; then
    restart_t="$(awk -v t0="$T0" '{ printf "%.1f", $1 - t0 }' "$OUT/fault.txt" 2>/dev/null || echo "")"
    gnuplot -e "csv='$OUT/soak.csv'; png='$OUT/soak.png'; restart='${restart_t}'; title='tern soak, $DB, ${DURATION}s'" \
        "$BENCH_DIR/soak.gp" || log "warning: gnuplot failed"
    log "plot: $OUT/soak.png"
fi
log "summary: $OUT/summary.txt"
exit "$rc"
