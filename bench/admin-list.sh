#!/usr/bin/env bash
# Admin API listing cost with many connected clients (issue 17): starts a release Tern with its
# admin API, connects N idle clients (tern-bench conn), then times
#   GET /healthz                              the HTTP round trip alone (baseline)
#   GET /api/v1/clients?limit=1000            the first page of 1000
#   GET /api/v1/clients?limit=100             the first page of 100
#   all N clients, pages of 1000 / pages of 100 (following `next`)
#   GET /api/v1/clients/{id}                  one client (random ids)
#   all N sessions, GET /api/v1/sessions pages of 1000
# each REPS times, and reads the broker's RSS (VmRSS) before and after and the growth of its
# peak (VmHWM, reset before the first request). Broker on CPU 0; load generator and curl on
# CPU 1 (when there are 2 CPUs or more).
#
#   bench/admin-list.sh [--clients 10000] [--reps 20] [--hold 900] [--out DIR]
#
# Times are curl's time_total per request (connect, request, whole body read; curl's own
# start-up is not in them), summed over the pages of a listing. Prints a markdown table;
# DIR (default bench/results/admin-list-<date-time>) keeps the raw samples, the broker log
# and tern-bench's JSON.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLIENTS=10000
REPS=20
HOLD=900
OUT=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --clients) CLIENTS="$2"; shift 2 ;;
        --reps) REPS="$2"; shift 2 ;;
        --hold) HOLD="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
OUT="${OUT:-$BENCH_DIR/results/admin-list-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
command -v curl > /dev/null || die "curl is needed"

NOFILE="$(raise_nofile)"
((CLIENTS + 200 <= NOFILE)) || die "needs ~$((CLIENTS + 200)) open files, the limit is $NOFILE"
ensure_tern_bench
ensure_tern || die "tern does not build"

BCPUS="" LCPUS=()
if (($(nproc) >= 2)); then
    BCPUS=0
    LCPUS=(taskset -c 1)
    taskset -cp 1 $$ > /dev/null  # this shell and its curls on the load generator's CPU
fi

wait_quiet
PORT=19500
while ! port_free "$PORT"; do PORT=$((PORT + 10)); done
BENCH_ADMIN=on BENCH_ADMIN_POLL=0 BENCH_ADMIN_USER=1 start_broker tern "$PORT" "$BCPUS" $((CLIENTS + 1000)) \
    || die "tern did not start"
BPID=$BROKER_PID
API="$ADMIN_PORT"
LOADPID=""
cleanup() {
    if [[ -n "$LOADPID" ]]; then
        kill -INT "$LOADPID" 2> /dev/null || true
        wait "$LOADPID" 2> /dev/null || true  # 130: interrupted, as asked
    fi
    LOADPID=""
    cp "$BENCH_WORK/tern-$PORT.log" "$OUT/broker.log" 2> /dev/null || true
    stop_broker "$BPID"
}
trap cleanup EXIT
TOKEN="$(admin_login "$API")" || die "admin login failed"
log "tern pid $BPID, MQTT 127.0.0.1:$PORT, admin API 127.0.0.1:$API; results in $OUT"

status_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
connected() { curl -s --max-time 5 "http://127.0.0.1:$API/readyz" | grep -o '"clients_connected":[0-9]*' | cut -d: -f2; }

RSS_IDLE=$(status_kib "$BPID" VmRSS)
"${LCPUS[@]}" "$TERN_BENCH" conn -c "$CLIENTS" --hold "$HOLD" --keep-alive 300 --connect-concurrency 64 \
    --connect-timeout 30 --source-ips 127.0.0.1-127.0.0.20 -p "$PORT" --broker-pid "$BPID" --interval 0 \
    > "$OUT/conn.json" 2> "$OUT/conn.log" &
LOADPID=$!
for ((i = 0; ; i++)); do
    n="$(connected || true)"
    [[ "${n:-0}" -ge "$CLIENTS" ]] && break
    kill -0 "$LOADPID" 2> /dev/null || die "tern-bench ended before $CLIENTS were connected (see $OUT/conn.log)"
    ((i < 240)) || die "only ${n:-0} of $CLIENTS connected after 120 s"
    sleep 0.5
done
sleep 3  # let the connection burst settle (tern-bench reads the RSS 1 s after the last one)
RSS_BEFORE=$(status_kib "$BPID" VmRSS)
echo 5 > "/proc/$BPID/clear_refs" 2> /dev/null || log "cannot reset VmHWM (not the broker's user): peak growth is from start"
HWM_BEFORE=$(status_kib "$BPID" VmHWM)
log "$CLIENTS connected; broker RSS $RSS_BEFORE KiB (idle before: $RSS_IDLE KiB)"

body="$OUT/body.json"
# list_all PATH LIMIT: one listing of every item, following `next`; sets L_MS (sum of the
# pages' time_total), L_PAGES, L_ITEMS, L_BYTES (largest page).
list_all() {
    local path=$1 lim=$2 next="" code t
    L_MS=0 L_PAGES=0 L_ITEMS=0 L_BYTES=0
    while true; do
        read -r code t < <(admin_get "$API" "$TOKEN" "$path?limit=$lim${next:+&after=$next}" "$body")
        [[ $code == 200 ]] || die "GET $path: HTTP $code"
        L_MS=$(awk -v a="$L_MS" -v b="$t" 'BEGIN {printf "%.3f", a + b * 1000}')
        L_PAGES=$((L_PAGES + 1))
        L_ITEMS=$((L_ITEMS + $(grep -o '"client_id":' "$body" | wc -l)))
        (($(stat -c %s "$body") > L_BYTES)) && L_BYTES=$(stat -c %s "$body")
        next="$(admin_next "$body")"
        [[ -n "$next" ]] || break
    done
}

ROWS=()
# measure NAME CMD...: runs CMD (which sets L_MS, L_PAGES, L_ITEMS, L_BYTES) REPS times;
# appends a row: name, pages, items, median ms, p95 ms, max ms, broker CPU ms per call,
# RSS after, largest body.
measure() {
    local name=$1 samples="$OUT/$1.ms" c0 c1 k
    shift
    : > "$samples"
    c0=$(cpu_ticks "$BPID")
    for ((k = 0; k < REPS; k++)); do
        "$@"
        echo "$L_MS" >> "$samples"
    done
    c1=$(cpu_ticks "$BPID")
    local stats
    stats="$(sort -n "$samples" | awk '{v[NR] = $1} END {
        m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        i = int(NR * 0.95); if (i < NR * 0.95) i++
        printf "%.2f %.2f %.2f", m, v[i], v[NR] }')"
    local cpu_ms
    cpu_ms=$(awk -v d=$((c1 - c0)) -v t="$(getconf CLK_TCK)" -v n="$REPS" 'BEGIN {printf "%.1f", d * 1000 / t / n}')
    ROWS+=("$name|$L_PAGES|$L_ITEMS|$stats|$cpu_ms|$(status_kib "$BPID" VmRSS)|$L_BYTES")
    log "$name: pages $L_PAGES, items $L_ITEMS, median/p95/max ms $stats, broker CPU $cpu_ms ms per call"
}

one_page() { # PATH LIMIT
    local code t
    read -r code t < <(admin_get "$API" "$TOKEN" "$1?limit=$2" "$body")
    [[ $code == 200 ]] || die "GET $1: HTTP $code"
    L_MS=$(awk -v b="$t" 'BEGIN {printf "%.3f", b * 1000}')
    L_PAGES=1
    L_ITEMS=$(grep -o '"client_id":' "$body" | wc -l)
    L_BYTES=$(stat -c %s "$body")
}

# Client ids to fetch one by one: a random sample from a full listing.
list_all /api/v1/clients 1000
((L_ITEMS == CLIENTS)) || log "warning: the listing returned $L_ITEMS clients, $CLIENTS are connected"
ids="$OUT/ids.txt"
next=""
: > "$ids"
while true; do
    read -r code _ < <(admin_get "$API" "$TOKEN" "/api/v1/clients?limit=1000${next:+&after=$next}" "$body")
    [[ $code == 200 ]] || die "listing ids: HTTP $code"
    grep -o '"client_id":"[^"]*"' "$body" | cut -d'"' -f4 >> "$ids"
    next="$(admin_next "$body")"
    [[ -n "$next" ]] || break
done
mapfile -t SAMPLE_IDS < <(shuf -n "$REPS" "$ids")
ID_K=0
one_client() {
    local code t
    read -r code t < <(admin_get "$API" "$TOKEN" "/api/v1/clients/${SAMPLE_IDS[$ID_K]}" "$body")
    [[ $code == 200 ]] || die "GET client ${SAMPLE_IDS[$ID_K]}: HTTP $code"
    ID_K=$(((ID_K + 1) % ${#SAMPLE_IDS[@]}))
    L_MS=$(awk -v b="$t" 'BEGIN {printf "%.3f", b * 1000}')
    L_PAGES=1 L_ITEMS=1 L_BYTES=$(stat -c %s "$body")
}

healthz() { # the HTTP round trip alone: no authentication, no broker state
    local code t
    read -r code t < <(admin_get "$API" "$TOKEN" /healthz "$body")
    [[ $code == 200 ]] || die "GET /healthz: HTTP $code"
    L_MS=$(awk -v b="$t" 'BEGIN {printf "%.3f", b * 1000}')
    L_PAGES=1 L_ITEMS=0 L_BYTES=$(stat -c %s "$body")
}

measure healthz healthz
measure clients-first-1000 one_page /api/v1/clients 1000
measure clients-first-100 one_page /api/v1/clients 100
measure clients-all-by-1000 list_all /api/v1/clients 1000
measure clients-all-by-100 list_all /api/v1/clients 100
measure client-by-id one_client
measure sessions-all-by-1000 list_all /api/v1/sessions 1000
RSS_AFTER=$(status_kib "$BPID" VmRSS)
HWM_AFTER=$(status_kib "$BPID" VmHWM)
STILL="$(connected || echo '?')"

cleanup
trap - EXIT

{
    echo "Tern $TERN_BIN (built $(stat -c %y "$TERN_BIN" | cut -d. -f1); repository HEAD $(git -C "$REPO_DIR" log -1 --format=%h 2> /dev/null || echo '?')), $CLIENTS idle clients (tern-bench conn), $REPS repetitions each, $(date -u +%FT%TZ), load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    echo "| request | pages | items | median ms | p95 ms | max ms | broker CPU ms per call | broker RSS after, MiB | largest page, KiB |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for r in "${ROWS[@]}"; do
        IFS='|' read -r name pages items stats cpu rss bytes <<< "$r"
        read -r med p95 mx <<< "$stats"
        printf '| %s | %s | %s | %s | %s | %s | %s | %.1f | %.0f |\n' "$name" "$pages" "$items" "$med" "$p95" "$mx" "$cpu" \
            "$(awk -v k="$rss" 'BEGIN {print k / 1024}')" "$(awk -v b="$bytes" 'BEGIN {print b / 1024}')"
    done
    echo
    awk -v i="$RSS_IDLE" -v b="$RSS_BEFORE" -v a="$RSS_AFTER" -v h0="$HWM_BEFORE" -v h1="$HWM_AFTER" -v n="$CLIENTS" 'BEGIN {
        printf "Broker RSS: %.1f MiB idle, %.1f MiB with %d clients connected (before listing), %.1f MiB after all listings (%+.1f MiB); peak (VmHWM) %.1f -> %.1f MiB (%+.1f MiB)\n",
            i / 1024, b / 1024, n, a / 1024, (a - b) / 1024, h0 / 1024, h1 / 1024, (h1 - h0) / 1024 }'
    echo "Clients still connected at the end: $STILL"
} | tee "$OUT/report.md"
