#!/usr/bin/env bash
# bench/persistent-pairs.sh: QoS 1/2 pairs between persistent sessions (every delivery durable),
# on the default SQLite store or on PostgreSQL, optionally A/B against another tern binary.
#
#   bench/persistent-pairs.sh                         # target/release/tern, QoS 1 and 2, 3 rounds
#   TERN_BIN_B=/tmp/tern-old bench/persistent-pairs.sh  # alternate with a second binary
#   ROUNDS=2 QOS="2" bench/persistent-pairs.sh
#   BACKEND=postgres bench/persistent-pairs.sh        # (or --backend postgres) on PostgreSQL
#
# BACKEND=sqlite (default): the broker's default store, a fresh SQLite file per run
# (synchronous = FULL). BACKEND=postgres: a PRIVATE durable cluster, as bench/durable.sh runs it
# (scripts/postgres.sh start --durable with TERN_PG_DIR=$BENCH_WORK/pg, first port 56600; fsync,
# synchronous_commit and full_page_writes on), a fresh database per run (TERN_DATABASE__URL),
# dropped afterwards; the cluster is stopped at the end unless KEEP_PG=1. The cluster is not
# pinned: it shares both CPUs with the broker and the load. Each PostgreSQL run also prints
# the cluster's CPU (% of one core), commits/s, messages per commit and WAL bytes per message,
# measured over the whole run (warm-up included).
#
# Each run: a fresh broker on CPU 0 (admin API off), tern-bench on CPU 1: 32 MQTT 5 publishers
# -> 32 subscribers on bench/%i, Session Expiry 3600 s, window 100, 64 B, 2 s warm-up, 10 s
# measured; once at saturation and once at a fixed rate (QoS 1: 20,000 msg/s, QoS 2: 10,000).
# Prints one line per run: round, backend, binary, QoS, scenario, ok, delivered msg/s, p50 and
# p99 end-to-end latency (ms) (and the PostgreSQL figures above); the JSON of each run goes to
# $BENCH_WORK/pairs-<backend>-*.json.
set -uo pipefail
BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$BENCH_DIR/.." && pwd)"
source "$BENCH_DIR/lib.sh"
export BENCH_WORK="${BENCH_WORK:-/tmp/tern-pairs-bench}" BENCH_ADMIN=off
mkdir -p "$BENCH_WORK"
A="$(realpath "${TERN_BIN:-$REPO_DIR/target/release/tern}")"
BENCH="$(realpath "${TERN_BENCH:-$REPO_DIR/target/release/tern-bench}")"
BINS=("$A")
[[ -n "${TERN_BIN_B:-}" ]] && BINS+=("$(realpath "$TERN_BIN_B")")
PORT="${PORT:-18830}"
BACKEND="${BACKEND:-sqlite}"
while (($#)); do
    case "$1" in
        --backend) BACKEND=$2; shift 2 ;;
        --backend=*) BACKEND=${1#--backend=}; shift ;;
        *) die "unknown argument '$1' (--backend sqlite|postgres)" ;;
    esac
done

# --- PostgreSQL: a private durable cluster, as in bench/durable.sh ------------------------------
PG_ENV=(TERN_PG_DIR="$BENCH_WORK/pg" TERN_PG_PORT="${TERN_PG_PORT:-56600}")
PG_URL=""
# shellcheck source=bench/pg-lib.sh
source "$BENCH_DIR/pg-lib.sh"
PG_STATS="SELECT xact_commit, (SELECT wal_bytes FROM pg_stat_wal), extract(epoch FROM clock_timestamp()) \
    FROM pg_stat_database WHERE datname = current_database()"
case "$BACKEND" in
    sqlite) ;;
    postgres)
        out="$(env "${PG_ENV[@]}" "$REPO_DIR/scripts/postgres.sh" start --durable)" \
            || die "cannot start the private PostgreSQL cluster"
        PG_URL="$(sed -n "s/^export TERN_TEST_POSTGRES_URL='\(.*\)'$/\1/p" <<<"$out")"
        [[ -n "$PG_URL" ]] || die "no URL from scripts/postgres.sh: $out"
        trap pg_down EXIT
        ;;
    *) die "unknown backend '$BACKEND' (sqlite or postgres)" ;;
esac

for round in $(seq 1 "${ROUNDS:-3}"); do
    for q in ${QOS:-1 2}; do
        for bin in "${BINS[@]}"; do
            for sc in saturation rate; do
                extra=(-d 10)
                [[ $sc == rate ]] && extra+=(-r "$([[ $q == 1 ]] && echo 20000 || echo 10000)")
                TERN_BIN="$bin"
                dbname="" stats0="" ticks0=""
                if [[ $BACKEND == postgres ]]; then
                    dbname="tern_pairs_$(date +%s)_$$"
                    psql_q "$PG_URL" "CREATE DATABASE $dbname" >/dev/null || die "CREATE DATABASE failed"
                    export TERN_DATABASE__URL="$(with_db "$PG_URL" "$dbname")"
                fi
                start_broker tern "$PORT" 0
                if [[ $BACKEND == postgres ]]; then
                    stats0="$(psql_q "$TERN_DATABASE__URL" "$PG_STATS")"
                    ticks0="$(pg_cpu_ticks)"
                fi
                out="$BENCH_WORK/pairs-$BACKEND-$round-q$q-$sc-$(basename "$bin").json"
                taskset -c 1 "$BENCH" scenario -p "$PORT" -V 5 --session-expiry 3600 --pubs 32 --subs 32 \
                    -q "$q" -w 100 --warmup 2 --topic 'bench/%i' --sub-topic 'bench/%i' "${extra[@]}" \
                    > "$out" 2>/dev/null
                pgline=""
                if [[ $BACKEND == postgres ]]; then
                    stats1="$(psql_q "$TERN_DATABASE__URL" "$PG_STATS")"
                    ticks1="$(pg_cpu_ticks)"
                    pgline="$(python3 -c '
import json, os, sys
d = json.load(open(sys.argv[1]))
c0, w0, t0 = map(float, sys.argv[2].split("|"))
c1, w1, t1 = map(float, sys.argv[3].split("|"))
def ticks(s):
    return dict(map(int, l.split()) for l in s.splitlines() if l.strip())
b, a = ticks(sys.argv[4]), ticks(sys.argv[5])
cpu = sum(v - b.get(p, 0) for p, v in a.items()) / os.sysconf("SC_CLK_TCK") / (t1 - t0) * 100
msgs = (d.get("delivery") or {}).get("delivered") or (d.get("publish") or {}).get("acked") or 0
commits = c1 - c0
print("pg: cpu %.0f%% commits/s %.0f msgs/commit %.1f WAL B/msg %.0f" % (cpu, commits / (t1 - t0),
      msgs / commits if commits else 0, (w1 - w0) / msgs if msgs else 0))' \
                        "$out" "$stats0" "$stats1" "$ticks0" "$ticks1" 2>/dev/null)"
                fi
                stop_broker "$BROKER_PID"
                if [[ -n "$dbname" ]]; then
                    psql_q "$PG_URL" "DROP DATABASE IF EXISTS $dbname WITH (FORCE)" >/dev/null || true
                fi
                printf '%s %s %s q%s %s %s %s\n' "$round" "$BACKEND" "$bin" "$q" "$sc" "$(python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
l = d.get("latency_us") or {}
print(d.get("ok"), round((d.get("delivery") or {}).get("delivered_per_s") or 0),
      round((l.get("p50") or 0) / 1000, 2), round((l.get("p99") or 0) / 1000, 2), "ms")' "$out")" "$pgline"
            done
        done
    done
done
