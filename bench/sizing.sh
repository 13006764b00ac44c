#!/usr/bin/env bash
# bench/sizing.sh: what one queued message and one retained message cost in broker memory
# (docs/operations.md, "Sizing a node"). Not part of CI; about 2 minutes.
#
#   bench/sizing.sh                       # SQLite (the default store), payloads of 64 and 1024 B
#   SIZING_DB=none bench/sizing.sh        # memory only (database.url = "none")
#   SIZING_N=50000 SIZING_SIZES="256" bench/sizing.sh
#
# Each measurement starts a fresh release broker (jemalloc told to return freed memory at once,
# _RJEM_MALLOC_CONF=dirty_decay_ms:0,muzzy_decay_ms:0, so RSS follows live memory), waits for
# its RSS to settle, does one thing with tern-bench, waits again, and prints the RSS growth per
# message next to the broker's own accounting (tern_queued_bytes, tern_retained_bytes) and,
# with SQLite, the growth of the database files (tern.db and its WAL) per message:
#   queued    an MQTT 5 persistent session (Session Expiry 3600) subscribes to one topic at
#             QoS 1 and goes offline; SIZING_N QoS 1 messages of the payload size are published
#             to it (tern-bench pub -n); the session queue holds all of them
#             (limits.max_queued_messages / max_queued_bytes raised for the run);
#   retained  SIZING_N retained QoS 1 messages of the payload size on distinct topics
#             sizing/r/0 .. sizing/r/N-1 (tern-bench retain-storm, one subscriber fetching them
#             once so the run checks they are all there; it has left when RSS is read).
# Environment: TERN_BIN, TERN_BENCH (default target/release/, built when missing),
# SIZING_PORT (18930; the admin API on SIZING_PORT+5), SIZING_N (100000),
# SIZING_SIZES ("64 1024"), SIZING_DB (sqlite | none).
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PORT="${SIZING_PORT:-18930}"
ADMIN=$((PORT + 5))
N="${SIZING_N:-100000}"
SIZES="${SIZING_SIZES:-64 1024}"
DB="${SIZING_DB:-sqlite}"
ensure_tern || die "cannot build tern (release)"
ensure_tern_bench
WORK="$(mktemp -d "${TMPDIR:-/tmp}/tern-sizing.XXXXXX")"
PID=""
cleanup() { [[ -n "$PID" ]] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

start() {
    rm -rf "$WORK/run" && mkdir -p "$WORK/run"
    local url="sqlite://$WORK/run/tern.db"
    [[ $DB == none ]] && url=none
    (cd "$WORK/run" && exec env -i PATH="$PATH" RUST_LOG=warn NO_COLOR=1 \
        _RJEM_MALLOC_CONF=dirty_decay_ms:0,muzzy_decay_ms:0 \
        TERN_DATABASE__URL="$url" TERN_ADMIN__ADDR="127.0.0.1:$ADMIN" \
        TERN_LIMITS__MAX_QUEUED_MESSAGES=$((N * 2)) TERN_LIMITS__MAX_QUEUED_BYTES=4294967296 \
        "$TERN_BIN" serve --mqtt-addr "127.0.0.1:$PORT") > "$WORK/tern.log" 2>&1 &
    PID=$!
    wait_port "$PORT" 30 || die "tern did not start: $(tail -5 "$WORK/tern.log")"
    wait_port "$ADMIN" 10 || die "no admin API"
}
stop() { kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""; }
# settled_rss: VmRSS in KiB once three readings 0.5 s apart agree within 256 KiB (max 20 s).
rss() { awk '/^VmRSS/ { print $2 }' "/proc/$PID/status"; }
settled_rss() {
    local prev cur i stable=0
    prev=$(rss)
    for ((i = 0; i < 40; i++)); do
        sleep 0.5
        cur=$(rss)
        if ((cur - prev < 256 && prev - cur < 256)); then
            stable=$((stable + 1))
            ((stable >= 2)) && break
        else
            stable=0
        fi
        prev=$cur
    done
    echo "$cur"
}
metric() { curl -sf "http://127.0.0.1:$ADMIN/metrics" | awk -v n="$1" '$1 == n { print $2 }'; }
# db_bytes: the SQLite files' size (database, WAL), 0 without a database.
db_bytes() { cat "$WORK"/run/tern.db* 2>/dev/null | wc -c; }
report() { # what size before_kib after_kib bytes_metric db_before db_after
    awk -v w="$1" -v s="$2" -v a="$3" -v b="$4" -v n="$N" -v m="$5" -v d0="$6" -v d1="$7" 'BEGIN {
        printf "%-8s payload %5d B: RSS %.1f -> %.1f MiB, %.0f B per message (broker accounting %.0f B)",
            w, s, a / 1024, b / 1024, (b - a) * 1024 / n, m / n
        if (d1 > 0) printf "; on disk %.0f B per message", (d1 - d0) / n
        printf "\n" }'
}

log "tern $TERN_BIN, database $DB, $N messages per measurement"
for size in $SIZES; do
    start
    "$TERN_BENCH" sub -p "$PORT" -V 5 -c 1 -q 1 -t sizing/q --session-expiry 3600 \
        --client-id-prefix sizing-q -d 1 --warmup 0 --interval 0 > /dev/null 2>&1
    before=$(settled_rss)
    disk0=$(db_bytes)
    "$TERN_BENCH" pub -p "$PORT" -V 5 -c 1 -q 1 -t sizing/q -s "$size" -n "$N" -w 100 --warmup 0 \
        --interval 0 > /dev/null 2> "$WORK/pub.log" || die "publish failed: $(tail -3 "$WORK/pub.log")"
    after=$(settled_rss)
    queued=$(metric tern_queued_messages)
    [[ "$queued" == "$N" ]] || log "warning: tern_queued_messages is $queued, expected $N"
    report queued "$size" "$before" "$after" "$(metric tern_queued_bytes)" "$disk0" "$(db_bytes)"
    stop

    start
    before=$(settled_rss)
    disk0=$(db_bytes)
    "$TERN_BENCH" retain-storm -p "$PORT" -V 5 --topics "$N" --subs 1 -t 'sizing/r/%i' --filter 'sizing/r/#' \
        -s "$size" -q 1 --interval 0 > /dev/null 2> "$WORK/storm.log" || die "retain-storm failed: $(tail -3 "$WORK/storm.log")"
    after=$(settled_rss)
    report retained "$size" "$before" "$after" "$(metric tern_retained_bytes)" "$disk0" "$(db_bytes)"
    stop
done
