#!/usr/bin/env bash
# bench/connect-storm.sh: a reconnect storm, Tern against Mosquitto: N MQTT 3.1.1 clients with
# new client ids, C handshakes in flight, as fast as the broker takes them, on a fresh broker.
#
#   bench/connect-storm.sh                          # anonymous clients, 4 rounds
#   MODE=password bench/connect-storm.sh            # N provisioned password devices
#   MODE=password HASHES="1 2 4" bench/connect-storm.sh
#   TERN_BIN_B=/tmp/tern-old BROKERS="tern tern-b mosquitto" bench/connect-storm.sh
#
# Each run: the broker on CPU 0 (Tern: default SQLite store in a fresh directory, admin API
# off), `tern-bench conn -c N --connect-concurrency C --connect-rate 0 --hold 0` on CPU 1 from
# 20 source addresses (so 10,000+ connections do not run out of ports); a connection counts
# when its CONNACK arrives; handshake latency = TCP connect + CONNECT -> CONNACK.
#
# MODE=anon: anonymous clients (Tern checks each new client id against its device directory).
# MODE=password: N devices with one password each (user name = client id), provisioned before
#   the storm: Tern by SQL into its store with one argon2id hash (m = 19 MiB, t = 2, p = 1;
#   every row the same hash, so the verification cost per CONNECT is a real one), Mosquitto by
#   a password_file (mosquitto_passwd: PBKDF2-SHA512, 101 iterations, its default). Two storms
#   per broker: "cold" (the first) and "warm" (all clients again, like devices coming back
#   after a network outage: Tern's verified-credential cache answers, Mosquitto's hash is cheap
#   anyway). Tern runs once per HASHES value (auth.max_concurrent_hashes; 0 = one per core).
#
# Env: N (10000; devices provisioned), STORM_N (N; clients per storm: a cold storm of argon2id
#      logins runs at tens per second, so MODE=password runs use fewer), C (200), ROUNDS (4), BROKERS ("tern mosquitto"), MODE (anon), HASHES ("0"),
#      PORT (18850), TERN_BIN, TERN_BIN_B (as broker "tern-b"), TERN_BENCH, BENCH_WORK.
# Prints one line per storm: round, broker, mode, storm, connected, connects/s, p50, p99, max
# handshake (ms); then the medians per broker and storm. JSON per run in $BENCH_WORK.
set -uo pipefail
BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$BENCH_DIR/.." && pwd)"
source "$BENCH_DIR/lib.sh"
export BENCH_WORK="${BENCH_WORK:-/tmp/tern-storm-bench}" BENCH_ADMIN=off
mkdir -p "$BENCH_WORK"
TERN_A="$(realpath "${TERN_BIN:-$REPO_DIR/target/release/tern}")"
BENCH="$(realpath "${TERN_BENCH:-$REPO_DIR/target/release/tern-bench}")"
TERN_B="${TERN_BIN_B:+$(realpath "$TERN_BIN_B")}"
N="${N:-10000}" STORM_N="${STORM_N:-${N:-10000}}" C="${C:-200}" MODE="${MODE:-anon}" PORT="${PORT:-18850}"
PASSWORD="storm-password-1"
ensure_mosquitto
raise_nofile
RESULTS="$BENCH_WORK/results.txt"
: > "$RESULTS"

# provision_tern PREFIX: N devices PREFIX-c0.. with user name = client id and $PASSWORD.
provision_tern() {
    local db="$BROKER_RUN_DIR/data/tern.db" hash
    hash="$(cd "$BROKER_RUN_DIR" && "$TERN_BIN" device add --client-id "$1-seed" \
        --password-stdin <<< "$PASSWORD" > /dev/null 2>&1 \
        && sqlite3 "$db" "SELECT password_hash FROM devices WHERE client_id = '$1-seed'")"
    [[ "$hash" == '$argon2id$'* ]] || die "could not provision the seed device"
    sqlite3 "$db" "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < $N - 1)
        INSERT INTO devices (client_id, username, password_hash, enabled, created_at)
        SELECT '$1-c' || i, '$1-c' || i, '$hash', 1, 0 FROM n;
        UPDATE directory_version SET version = version + 1 WHERE id = 1;"
}

# mosquitto_passwords PREFIX FILE: the same devices in a Mosquitto password file.
mosquitto_passwords() {
    local i
    for ((i = 0; i < N; i++)); do echo "$1-c$i:$PASSWORD"; done > "$2"
    mosquitto_passwd -U "$2"
}

# storm BROKER LABEL PREFIX: one storm; appends a line to $RESULTS.
storm() {
    local out="$BENCH_WORK/storm-$1-$2-$3.json" auth=()
    [[ $MODE == password ]] && auth=(-u %c -P "$PASSWORD")
    taskset -c 1 "$BENCH" conn -p "$PORT" -V 3.1.1 -c "$STORM_N" --connect-concurrency "$C" --connect-rate 0 \
        --hold 0 --source-ips 127.0.0.1-127.0.0.20 --client-id-prefix "$3" --connect-timeout 60 \
        "${auth[@]}" > "$out" 2> "$out.log"
    python3 - "$out" "$round" "$1" "$MODE" "$2" >> "$RESULTS" <<'PY'
import json, sys
path, rnd, broker, mode, label = sys.argv[1:]
try:
    c = json.load(open(path))["connect"]
    h = c["handshake_ms"]
    print(rnd, broker, mode, label, c["connected"], round(c["rate_per_s"]), h["p50"], h["p99"], h["max"])
except Exception as e:
    print(rnd, broker, mode, label, "FAILED", e)
PY
    tail -1 "$RESULTS"
}

for round in $(seq 1 "${ROUNDS:-4}"); do
    for b in ${BROKERS:-tern mosquitto}; do
        hashes=(-)
        [[ $MODE == password && $b == tern* ]] && read -ra hashes <<< "${HASHES:-0}"
        for h in "${hashes[@]}"; do
            prefix="s$round$b$RANDOM"
            label="$b"
            case "$b" in
                tern | tern-b)
                    TERN_BIN="$TERN_A"
                    [[ $b == tern-b ]] && TERN_BIN="$TERN_B"
                    export TERN_BIN
                    if [[ $MODE == password ]]; then
                        export TERN_ALLOW_ANONYMOUS=false TERN_AUTH__MAX_CONCURRENT_HASHES="$h"
                        label="$b-h$h"
                    fi
                    start_broker tern "$PORT" 0 || die "tern did not start"
                    [[ $MODE == password ]] && provision_tern "$prefix"
                    ;;
                mosquitto)
                    MOSQUITTO_EXTRA_CONF=""
                    if [[ $MODE == password ]]; then
                        mosquitto_passwords "$prefix" "$BENCH_WORK/passwords"
                        MOSQUITTO_EXTRA_CONF="allow_anonymous false
password_file $BENCH_WORK/passwords"
                    fi
                    export MOSQUITTO_EXTRA_CONF
                    start_broker mosquitto "$PORT" 0 || die "mosquitto did not start"
                    ;;
                *) die "unknown broker $b" ;;
            esac
            storm "$label" cold "$prefix"
            # The devices again, after the first storm's connections closed.
            [[ $MODE == password ]] && sleep 1 && storm "$label" warm "$prefix"
            stop_broker "$BROKER_PID"
            unset TERN_ALLOW_ANONYMOUS TERN_AUTH__MAX_CONCURRENT_HASHES
        done
    done
done

echo "medians (broker, storm: connects/s, p50 ms, p99 ms, runs):"
python3 - "$RESULTS" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    f = line.split()
    if len(f) < 9 or f[4] == "FAILED":
        continue
    runs.setdefault((f[1], f[3]), []).append((float(f[5]), float(f[6]), float(f[7])))
for (broker, label), v in sorted(runs.items()):
    med = [statistics.median(x) for x in zip(*v)]
    print(f"{broker:14} {label:5} {med[0]:>9,.0f}/s  p50 {med[1]:6.2f}  p99 {med[2]:7.2f}  ({len(v)} runs)")
PY
