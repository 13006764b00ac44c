#!/usr/bin/env bash
# bench/cluster.sh: Tern's cluster mode (issue 22) on one machine, against a single node.
#
#   bench/cluster.sh                                 # everything, 3 rounds
#   ROUNDS=1 PARTS="pairs" bench/cluster.sh          # only the pairs
#   PIN=0 bench/cluster.sh                           # nothing pinned
#
# Starts a private durable PostgreSQL cluster (scripts/postgres.sh start --durable, in
# $BENCH_WORK/pg, first port 56700) once, then for EVERY run a fresh topology and a fresh
# database:
#   cluster: a 3-server nats-server cluster (core NATS, no JetStream: Tern does not use it) and
#            3 tern nodes ([cluster] node_id n1..n3), all on the database; node i connects to
#            NATS server i only (NATS_URLS=own, default: as with one NATS server per host, a
#            message from node 1 to node 2 always crosses a NATS route), or NATS_URLS=all: every
#            node gets the three URLs and the client picks one at random (then a message
#            crosses a route or not, from run to run);
#   single:  one tern without [cluster], same configuration otherwise (the same PostgreSQL
#            store, anonymous clients, admin API off).
# Everything listens on 127.0.0.1. ALL OF IT SHARES THE MACHINE'S CORES: with PIN=1 (default)
# the server side (PostgreSQL, the NATS servers, the tern nodes) is pinned to CPU 0 and the
# load generator (tern-bench, one process) to CPU 1, as in the matrix's pinned pass, so a
# cluster of 3 tern + 3 nats + PostgreSQL gets the one core a single tern gets. PIN=0 pins
# nothing.
#
# Parts (PARTS, default "pairs fanout conn takeover"); placements: `cross` = publishers on node
# 1, subscribers on node 2; `same` = everything on node 1 of the cluster; `single` = the single
# node:
#   pairs:    32 -> 32 pairs (bench/%i), 64 B, MQTT 3.1.1, QoS 0 and 1, at saturation and at a
#             fixed RATE (20,000 msg/s), DURATION s after WARMUP s: delivered msg/s, p50/p99
#             end-to-end latency, CPU per delivered message of the tern processes, the NATS
#             servers, PostgreSQL and the load generator (utime + stime from /proc over the
#             whole tern-bench run, divided by every message it received), NATS messages
#             (the servers' in_msgs: a message crossing one route counts twice) and
#             PostgreSQL writing transactions (transaction ids used) per message.
#   fanout:   1 publisher -> 100 subscribers on bench/fan, QoS 0; cross = subscribers round
#             robin over nodes 1, 2, 3 (34/33/33), publisher on node 1.
#   conn:     CONN_N (5,000) MQTT 3.1.1 connections with new client ids, 64 handshakes in
#             flight, held 1 s; cross = round robin over the 3 nodes; connects/s and handshake
#             p50/p99.
#   takeover: TAKEOVER_N (200) MQTT 5 persistent sessions (expiry 300 s) subscribe on node 1,
#             then each client id connects again, one at a time: on node 2 (cross) or node 1
#             (same, single); CONNECT -> CONNACK p50/p99/max, Session Present, DISCONNECT 0x8E
#             on the old connection, the subscription delivering on the new one.
#
# Env: ROUNDS (3), PARTS, DURATION (10), WARMUP (2), RATE (20000), CONN_N (5000), TAKEOVER_N
#      (200), PIN (1), NATS_URLS (own), PORT_BASE (19400: tern nodes +1..+3, single node +10, NATS clients
#      +21..+23, routes +31..+33, monitoring +41..+43), TERN_PG_PORT (56700), TERN_BIN,
#      TERN_BENCH, NATS_BIN (nats-server on PATH), BENCH_WORK (/tmp/tern-cluster-bench),
#      KEEP_PG=1 (leave PostgreSQL running), BENCH_NICE (nice value of every process it starts,
#      PostgreSQL included, e.g. -10 as root), BENCH_QUIET_PATTERN / BENCH_QUIET_MAX (lib.sh's
#      wait_quiet before each run).
# Refuses to start if any of its ports is taken; stops everything it started on exit
# (including Ctrl-C). One line per run, then a table of medians and the NATS hop's cost.
set -uo pipefail
BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$BENCH_DIR/.." && pwd)"
# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"
export BENCH_WORK="${BENCH_WORK:-/tmp/tern-cluster-bench}"
mkdir -p "$BENCH_WORK"
TERN="$(realpath "${TERN_BIN:-$REPO_DIR/target/release/tern}")"
BENCH="$(realpath "${TERN_BENCH:-$REPO_DIR/target/release/tern-bench}")"
NATS_BIN="${NATS_BIN:-$(command -v nats-server || echo /usr/bin/nats-server)}"
[[ -x "$TERN" ]] || die "no tern binary at $TERN (cargo build --release -p tern-server)"
[[ -x "$BENCH" ]] || die "no tern-bench binary at $BENCH (cargo build --release -p tern-bench)"
[[ -x "$NATS_BIN" ]] || die "no nats-server (apt-get install nats-server, or NATS_BIN=...)"
"$BENCH" takeover --help > /dev/null 2>&1 || die "$BENCH has no takeover mode: rebuild tern-bench"
ROUNDS="${ROUNDS:-3}" PARTS="${PARTS:-pairs fanout conn takeover}"
DURATION="${DURATION:-10}" WARMUP="${WARMUP:-2}" RATE="${RATE:-20000}"
CONN_N="${CONN_N:-5000}" TAKEOVER_N="${TAKEOVER_N:-200}" PIN="${PIN:-1}" NATS_URLS="${NATS_URLS:-own}"
BASE="${PORT_BASE:-19400}"
NODE_PORTS=($((BASE + 1)) $((BASE + 2)) $((BASE + 3)))
SINGLE_PORT=$((BASE + 10))
NATS_PORTS=($((BASE + 21)) $((BASE + 22)) $((BASE + 23)))
ROUTE_PORTS=($((BASE + 31)) $((BASE + 32)) $((BASE + 33)))
MON_PORTS=($((BASE + 41)) $((BASE + 42)) $((BASE + 43)))
SRV_PIN=() LOAD_PIN=()
if [[ -n "${BENCH_NICE:-}" ]]; then
    SRV_PIN=(nice -n "$BENCH_NICE")
    LOAD_PIN=(nice -n "$BENCH_NICE")
fi
if [[ $PIN == 1 ]]; then
    SRV_PIN+=(taskset -c 0)
    LOAD_PIN+=(taskset -c 1)
fi

for p in "${NODE_PORTS[@]}" "$SINGLE_PORT" "${NATS_PORTS[@]}" "${ROUTE_PORTS[@]}" "${MON_PORTS[@]}"; do
    port_free "$p" || die "port $p is taken (PORT_BASE=$BASE): stop what uses it or set PORT_BASE"
done
NOFILE="$(raise_nofile)"

# --- PostgreSQL ---------------------------------------------------------------------------------
PG_ENV=(TERN_PG_DIR="$BENCH_WORK/pg" TERN_PG_PORT="${TERN_PG_PORT:-56700}")
PG_URL=""
# shellcheck source=bench/pg-lib.sh
source "$BENCH_DIR/pg-lib.sh"

TERN_PIDS=() NATS_PIDS=() RUN_DIRS=() DB_NAME=""
TOPO_STARTS=0
stop_pids() { # PID...: SIGTERM, then SIGKILL after 5 s
    local p i
    for p in "$@"; do kill "$p" 2>/dev/null || true; done
    for ((i = 0; i < 50; i++)); do
        local alive=0
        for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.1
    done
    for p in "$@"; do
        kill -0 "$p" 2>/dev/null && kill -9 "$p" 2>/dev/null
        wait "$p" 2>/dev/null || true
    done
    return 0
}
topo_down() {
    ((${#TERN_PIDS[@]})) && stop_pids "${TERN_PIDS[@]}"
    ((${#NATS_PIDS[@]})) && stop_pids "${NATS_PIDS[@]}"
    TERN_PIDS=() NATS_PIDS=()
    if [[ -n "$DB_NAME" && -n "$PG_URL" ]]; then
        psql_q "$PG_URL" "DROP DATABASE IF EXISTS $DB_NAME WITH (FORCE)" > /dev/null 2>&1 || true
    fi
    DB_NAME=""
    local d
    for d in "${RUN_DIRS[@]}"; do rm -rf "$d"; done
    RUN_DIRS=()
}
cleanup() {
    trap - EXIT INT TERM
    topo_down
    pg_down
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

out="$(env "${PG_ENV[@]}" "$REPO_DIR/scripts/postgres.sh" start --durable)" \
    || die "cannot start the private PostgreSQL cluster"
PG_URL="$(sed -n "s/^export TERN_TEST_POSTGRES_URL='\(.*\)'$/\1/p" <<< "$out")"
[[ -n "$PG_URL" ]] || die "no URL from scripts/postgres.sh: $out"
# PostgreSQL with the servers: its backends are forked by the postmaster and inherit this.
pg_pin() {
    local pm p
    pm="$(head -n 1 "$BENCH_WORK/pg/data/postmaster.pid" 2> /dev/null)" || return 0
    for p in $pm $(pgrep -P "$pm"); do
        [[ $PIN == 1 ]] && { taskset -a -cp 0 "$p" > /dev/null 2>&1 || true; }
        [[ -n "${BENCH_NICE:-}" ]] && { renice -n "$BENCH_NICE" -p "$p" > /dev/null 2>&1 || true; }
    done
}
pg_pin

# --- NATS and tern ------------------------------------------------------------------------------
start_nats() {
    local i j dir routes
    for i in 0 1 2; do
        dir="$BENCH_WORK/nats-$((i + 1))"
        mkdir -p "$dir"
        routes=""
        for j in 0 1 2; do
            [[ $j == "$i" ]] || routes+="    nats-route://127.0.0.1:${ROUTE_PORTS[$j]}"$'\n'
        done
        cat > "$dir/nats.conf" << EOF
server_name: bench-nats-$((i + 1))
listen: 127.0.0.1:${NATS_PORTS[$i]}
http: 127.0.0.1:${MON_PORTS[$i]}
cluster {
  name: tern-bench
  listen: 127.0.0.1:${ROUTE_PORTS[$i]}
  routes: [
$routes  ]
}
EOF
        "${SRV_PIN[@]}" "$NATS_BIN" -c "$dir/nats.conf" > "$dir/nats.log" 2>&1 &
        NATS_PIDS+=($!)
    done
    for i in 0 1 2; do
        wait_port "${NATS_PORTS[$i]}" 20 || { tail -5 "$BENCH_WORK/nats-$((i + 1))/nats.log" >&2; return 1; }
    done
    # Every server routed to the two others.
    local k n
    for ((k = 0; k < 100; k++)); do
        n=0
        for i in 0 1 2; do
            [[ "$(curl -s --max-time 2 "http://127.0.0.1:${MON_PORTS[$i]}/routez" | jq -r '.num_routes' 2> /dev/null)" == 2 ]] && n=$((n + 1))
        done
        ((n == 3)) && return 0
        sleep 0.1
    done
    log "the NATS servers did not route to each other within 10 s"
    return 1
}

# start_tern NAME PORT [NODE_ID]: one tern on the current database (DB_URL), cluster mode with
# NODE_ID; other TERN_* variables of this shell are not passed on (tern refuses unknown ones).
start_tern() {
    local name=$1 port=$2 node=${3:-} dir env=() unset=() v
    dir="$(mktemp -d "$BENCH_WORK/$name.XXXXXX")"
    RUN_DIRS+=("$dir")
    for v in $(compgen -e | grep '^TERN_' || true); do unset+=(-u "$v"); done
    env+=(TERN_DATABASE__URL="$DB_URL" TERN_ALLOW_ANONYMOUS=true TERN_ADMIN__ENABLED=false
        TERN_LIMITS__TOPIC_STATS_CAPACITY=0)
    if [[ -n "$node" ]]; then
        local urls
        if [[ $NATS_URLS == all ]]; then
            urls="$(printf 'nats://127.0.0.1:%s,' "${NATS_PORTS[@]}")"
            urls="${urls%,}"
        else
            urls="nats://127.0.0.1:${NATS_PORTS[$((${node#n} - 1))]}"
        fi
        env+=(TERN_CLUSTER__NODE_ID="$node" TERN_CLUSTER__NATS_URL="$urls")
    fi
    (cd "$dir" && exec env "${unset[@]}" "${env[@]}" "${SRV_PIN[@]}" "$TERN" serve \
        --mqtt-addr "127.0.0.1:$port") > "$BENCH_WORK/$name.log" 2>&1 &
    TERN_PIDS+=($!)
    wait_port "$port" 30 || { log "$name did not listen on $port:"; tail -5 "$BENCH_WORK/$name.log" >&2; return 1; }
}

# ready_probe: a few QoS 1 messages from node 1 to subscribers on nodes 2 and 3, and from node
# 3 to node 1, until they arrive (the nodes have found each other).
ready_probe() {
    local k
    for ((k = 0; k < 30; k++)); do
        if "$BENCH" scenario -H 127.0.0.1 --pub-ports "${NODE_PORTS[0]}" --sub-ports "${NODE_PORTS[1]},${NODE_PORTS[2]}" \
            --pubs 1 --subs 2 --topic ready/x -q 1 -n 20 -r 200 --warmup 0 --interval 0 --drain-timeout 3 \
            > /dev/null 2>&1 \
            && "$BENCH" scenario -H 127.0.0.1 --pub-ports "${NODE_PORTS[2]}" --sub-ports "${NODE_PORTS[0]}" \
                --pubs 1 --subs 1 --topic ready/y -q 1 -n 20 -r 200 --warmup 0 --interval 0 --drain-timeout 3 \
                > /dev/null 2>&1; then
            return 0
        fi
        sleep 0.5
    done
    log "the cluster did not pass its readiness probe within ~30 s"
    return 1
}

# topo_up cluster|single: fresh database, and NATS + 3 nodes or one node.
topo_up() {
    TOPO_STARTS=$((TOPO_STARTS + 1))
    DB_NAME="tern_cluster_bench_$$_$TOPO_STARTS"
    psql_q "$PG_URL" "CREATE DATABASE $DB_NAME" > /dev/null || die "CREATE DATABASE failed"
    DB_URL="$(with_db "$PG_URL" "$DB_NAME")"
    case "$1" in
        cluster)
            start_nats || return 1
            start_tern n1 "${NODE_PORTS[0]}" n1 || return 1
            start_tern n2 "${NODE_PORTS[1]}" n2 || return 1
            start_tern n3 "${NODE_PORTS[2]}" n3 || return 1
            ready_probe || return 1
            local i c=""
            for i in 0 1 2; do
                c+=" $(curl -s --max-time 2 "http://127.0.0.1:${MON_PORTS[$i]}/connz" | jq -r '.num_connections' 2> /dev/null)"
            done
            echo "$(date +%T) cluster up; client connections per NATS server:$c" >> "$BENCH_WORK/topology.log"
            ;;
        single)
            start_tern single "$SINGLE_PORT" || return 1
            ;;
    esac
    pg_pin
}

# --- CPU accounting -----------------------------------------------------------------------------
ticks_of() { # PID...: sum of utime + stime
    local p t=0 v
    for p in "$@"; do
        v="$(awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$p/stat" 2> /dev/null)" || v=0
        t=$((t + ${v:-0}))
    done
    echo "$t"
}
pg_ticks() { pg_cpu_ticks | awk '{ t += $2 } END { print t + 0 }'; }
nats_msgs() { # messages the NATS servers received (from clients and routes), summed
    local i t=0 v
    ((${#NATS_PIDS[@]})) || { echo 0; return; }
    for i in 0 1 2; do
        v="$(curl -s --max-time 2 "http://127.0.0.1:${MON_PORTS[$i]}/varz" | jq -r '.in_msgs' 2> /dev/null)"
        [[ $v =~ ^[0-9]+$ ]] && t=$((t + v))
    done
    echo "$t"
}
# pg_xid: PostgreSQL's next transaction id (the call takes one): the difference of two is the
# number of writing transactions in between, + 1. Unlike pg_stat_database, never late.
pg_xid() { psql_q "$PG_URL" "SELECT pg_current_xact_id()" 2> /dev/null || echo 0; }
snapshot() { # "tern nats pg nats-messages pg-xid"
    local n=0
    ((${#NATS_PIDS[@]})) && n="$(ticks_of "${NATS_PIDS[@]}")"
    echo "$(ticks_of "${TERN_PIDS[@]}") $n $(pg_ticks) $(nats_msgs) $(pg_xid)"
}

RESULTS="$BENCH_WORK/results.txt"
: > "$RESULTS"

# bench_run ROUND TOPO PLACEMENT SCENARIO tern-bench-args...: one run on the running topology,
# one line in $RESULTS: round topology placement scenario ok rate p50_ms p99_ms units, then per
# unit (message received, connection, takeover): tern_us nats_us pg_us load_us (CPU), NATS
# messages (received by the servers, routes included) and PostgreSQL writing transactions
# [extra].
bench_run() {
    local round=$1 topo=$2 place=$3 scen=$4
    shift 4
    local tag="$round-$place-$scen" json load before after rc=0
    json="$BENCH_WORK/run-$tag.json"
    load="$BENCH_WORK/run-$tag.time"
    wait_quiet
    before="$(snapshot)"
    "${LOAD_PIN[@]}" /usr/bin/time -f '%U %S' -o "$load" "$BENCH" "$@" --interval 0 \
        --label "placement=$place" --label "scenario=$scen" --label "round=$round" \
        --label "load1_before=$(cut -d' ' -f1 /proc/loadavg)" > "$json" 2> "$json.log" || rc=$?
    ((rc == 130)) && exit 130
    after="$(snapshot)"
    python3 - "$json" "$load" "$before" "$after" "$round" "$topo" "$place" "$scen" >> "$RESULTS" << 'PY'
import json, sys
path, loadf, before, after, rnd, topo, place, scen = sys.argv[1:]
hz = 100.0
b, a = [list(map(int, s.split())) for s in (before, after)]
try:
    d = json.load(open(path))
except Exception as e:
    print(rnd, topo, place, scen, "FAILED", "no-json", e)
    sys.exit()
try:
    u, s = open(loadf).read().split()[-2:]
    load_s = float(u) + float(s)
except Exception:
    load_s = float("nan")
mode = d.get("mode")
extra = ""
if mode == "scenario":
    dl = d.get("delivery") or {}
    lat = d.get("latency_us") or {}
    units = dl.get("received") or 0
    rate, p50, p99 = dl.get("delivered_per_s") or 0, (lat.get("p50") or 0) / 1000, (lat.get("p99") or 0) / 1000
elif mode == "conn":
    c = d.get("connect") or {}
    units = c.get("connected") or 0
    rate, p50, p99 = c.get("rate_per_s") or 0, c["handshake_ms"]["p50"], c["handshake_ms"]["p99"]
elif mode == "takeover":
    t = d.get("takeover") or {}
    units = t.get("connacked") or 0
    l = t.get("connect_to_connack_ms") or {}
    rate, p50, p99 = t.get("rate_per_s") or 0, l.get("p50") or 0, l.get("p99") or 0
    o = t.get("old_connection") or {}
    extra = "max=%s present=%s/%s 0x8e=%s verified=%s" % (l.get("max"), t.get("session_present"), units,
        o.get("disconnect_0x8e"), t.get("verified"))
else:
    units, rate, p50, p99 = 0, 0, 0, 0
per = lambda ticks: ticks / hz / units * 1e6 if units else float("nan")
ok = "ok" if d.get("ok") else "FAILED"
if not d.get("ok"):
    extra += " error=" + json.dumps((d.get("failures") or [d.get("error")])[:1])
print(rnd, topo, place, scen, ok, round(rate), round(p50, 3), round(p99, 3), units,
      "%.2f %.2f %.2f %.2f %.2f %.3f" % (per(a[0] - b[0]), per(a[1] - b[1]), per(a[2] - b[2]),
                                    load_s / units * 1e6 if units else float("nan"),
                                    (a[3] - b[3]) / units if units else float("nan"),
                                    (a[4] - b[4] - 1) / units if units else float("nan")), extra)
PY
    tail -n 1 "$RESULTS"
}

# The runs of one part on one placement, on a topology that is up.
# Ports: cross and same on the cluster, single on the single node.
run_part() {
    local round=$1 part=$2 place=$3 topo=cluster pubp subp allp
    case "$place" in
        cross) pubp="${NODE_PORTS[0]}" subp="${NODE_PORTS[1]}" allp="$(IFS=,; echo "${NODE_PORTS[*]}")" ;;
        same) pubp="${NODE_PORTS[0]}" subp="${NODE_PORTS[0]}" allp="${NODE_PORTS[0]}" ;;
        single) topo=single pubp="$SINGLE_PORT" subp="$SINGLE_PORT" allp="$SINGLE_PORT" ;;
    esac
    local common=(-H 127.0.0.1 -p "$pubp")
    case "$part" in
        pairs)
            local q sc extra
            for q in 0 1; do
                for sc in sat rate; do
                    extra=()
                    [[ $sc == rate ]] && extra=(-r "$RATE")
                    fresh "$topo" || return 1
                    bench_run "$round" "$topo" "$place" "pairs-q$q-$sc" scenario "${common[@]}" \
                        --pub-ports "$pubp" --sub-ports "$subp" --pubs 32 --subs 32 -q "$q" \
                        -d "$DURATION" --warmup "$WARMUP" "${extra[@]}"
                done
            done
            ;;
        fanout)
            local fsub="$subp"
            [[ $place == cross ]] && fsub="$allp"
            fresh "$topo" || return 1
            bench_run "$round" "$topo" "$place" fanout-q0 scenario "${common[@]}" --pub-ports "$pubp" \
                --sub-ports "$fsub" --pubs 1 --subs 100 --topic bench/fan --sub-topic bench/fan -q 0 \
                -d "$DURATION" --warmup "$WARMUP"
            ;;
        conn)
            fresh "$topo" || return 1
            bench_run "$round" "$topo" "$place" conn conn "${common[@]}" --ports "$allp" \
                -c "$CONN_N" --hold 1 --connect-concurrency 64 --connect-timeout 30
            ;;
        takeover)
            fresh "$topo" || return 1
            bench_run "$round" "$topo" "$place" takeover takeover "${common[@]}" -V 5 \
                --from-port "$pubp" --to-port "$subp" -n "$TAKEOVER_N" --session-expiry 300 --settle 1
            ;;
    esac
}

# fresh TOPO: a new topology for the next run (the one before is stopped).
fresh() {
    topo_down
    topo_up "$1" || { log "cannot start the $1 topology; logs in $BENCH_WORK"; topo_down; return 1; }
}

log "tern: $TERN; tern-bench: $BENCH; nats-server: $("$NATS_BIN" --version 2>&1 | head -1)"
log "PostgreSQL: $PG_URL (durable); open files: $NOFILE"
if [[ $PIN == 1 ]]; then
    log "pinned: PostgreSQL, NATS servers and tern nodes on CPU 0, tern-bench on CPU 1 (of $(nproc))"
else
    log "nothing pinned: every process shares the $(nproc) cores"
fi
log "uptime at start: $(uptime)"
{
    echo "date: $(date -u +%FT%TZ)"
    echo "host: $(nproc) cores; pinned: $PIN; NATS URLs per node: $NATS_URLS"
    echo "tern: $TERN ($(stat -c %y "$TERN"))"
    echo "repository HEAD: $(git -C "$REPO_DIR" log -1 --format='%h %s' 2> /dev/null || true)"
    echo "uptime at start: $(uptime)"
} > "$BENCH_WORK/env.txt"

placements=(cross same single)
for round in $(seq 1 "$ROUNDS"); do
    # The order of placements rotates per round.
    k=$(((round - 1) % 3))
    order=("${placements[@]:$k}" "${placements[@]:0:$k}")
    for part in $PARTS; do
        for place in "${order[@]}"; do
            run_part "$round" "$part" "$place" || log "round $round $part $place: topology failed"
        done
    done
done
topo_down
log "uptime at end: $(uptime)"
echo "uptime at end: $(uptime)" >> "$BENCH_WORK/env.txt"

echo
echo "== bench/cluster.sh: medians of $ROUNDS round(s); pinned=$PIN (1: servers on CPU 0, load on CPU 1)"
echo "   all processes (3 tern + 3 nats-server + PostgreSQL for the cluster; 1 tern + PostgreSQL"
echo "   single) share this machine's $(nproc) cores; CPU is utime+stime per delivered message,"
echo "   connection or takeover, over the whole tern-bench run"
python3 - "$RESULTS" << 'PY'
import math, statistics, sys
rows = {}
failed = {}
for line in open(sys.argv[1]):
    f = line.split()
    if len(f) < 15:
        continue
    key = (f[3], f[2])
    if f[4] != "ok":
        failed[key] = failed.get(key, 0) + 1
        continue
    rows.setdefault(key, []).append([float(x) for x in f[5:15]])
def med(v):
    v = [x for x in v if not math.isnan(x)]
    return statistics.median(v) if v else float("nan")
scens = sorted({k[0] for k in list(rows) + list(failed)})
hdr = "| scenario | placement | runs | rate /s | p50 ms | p99 ms | tern us | nats us | pg us | server us | load us | NATS msgs | PG xacts |"
print(hdr)
print("|" + "---|" * 13)
meds = {}
for s in scens:
    for p in ("cross", "same", "single"):
        v = rows.get((s, p))
        if not v and (s, p) not in failed:
            continue
        n = len(v or [])
        m = [med(c) for c in zip(*v)] if v else [float("nan")] * 10
        meds[(s, p)] = m
        server = m[4] + m[5] + m[6]
        bad = f" ({failed[(s, p)]} failed)" if (s, p) in failed else ""
        print(f"| {s} | {p} | {n}{bad} | {m[0]:,.0f} | {m[1]:.3f} | {m[2]:.3f} | {m[4]:.2f} | {m[5]:.2f} | {m[6]:.2f} | {server:.2f} | {m[7]:.2f} | {m[8]:.2f} | {m[9]:.3f} |")
print()
print("NATS hop (cross - same, server CPU per unit) and ratios:")
for s in scens:
    c, sa, si = meds.get((s, "cross")), meds.get((s, "same")), meds.get((s, "single"))
    if not (c and sa and si):
        continue
    sv = lambda m: m[4] + m[5] + m[6]
    print(f"  {s:16} hop {sv(c) - sv(sa):+7.2f} us   rate cross/same {c[0] / sa[0] if sa[0] else float('nan'):.2f}"
          f"  cross/single {c[0] / si[0] if si[0] else float('nan'):.2f}  same/single {sa[0] / si[0] if si[0] else float('nan'):.2f}")
PY
