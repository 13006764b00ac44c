#!/usr/bin/env bash
# bench/persistent-pairs.sh: QoS 1/2 pairs between persistent sessions (every delivery durable),
# on the default SQLite store, optionally A/B against another tern binary.
#
#   bench/persistent-pairs.sh                         # target/release/tern, QoS 1 and 2, 3 rounds
#   TERN_BIN_B=/tmp/tern-old bench/persistent-pairs.sh  # alternate with a second binary
#   ROUNDS=2 QOS="2" bench/persistent-pairs.sh
#
# Each run: a fresh broker on CPU 0 (admin API off), tern-bench on CPU 1: 32 MQTT 5 publishers
# -> 32 subscribers on bench/%i, Session Expiry 3600 s, window 100, 64 B, 2 s warm-up, 10 s
# measured; once at saturation and once at a fixed rate (QoS 1: 20,000 msg/s, QoS 2: 10,000).
# Prints one line per run: round, binary, QoS, scenario, ok, delivered msg/s, p50 and p99
# end-to-end latency (ms); the JSON of each run goes to $BENCH_WORK/pairs-*.json.
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
for round in $(seq 1 "${ROUNDS:-3}"); do
    for q in ${QOS:-1 2}; do
        for bin in "${BINS[@]}"; do
            for sc in saturation rate; do
                extra=(-d 10)
                [[ $sc == rate ]] && extra+=(-r "$([[ $q == 1 ]] && echo 20000 || echo 10000)")
                TERN_BIN="$bin"
                start_broker tern "$PORT" 0
                out="$BENCH_WORK/pairs-$round-q$q-$sc-$(basename "$bin").json"
                taskset -c 1 "$BENCH" scenario -p "$PORT" -V 5 --session-expiry 3600 --pubs 32 --subs 32 \
                    -q "$q" -w 100 --warmup 2 --topic 'bench/%i' --sub-topic 'bench/%i' "${extra[@]}" \
                    > "$out" 2>/dev/null
                stop_broker "$BROKER_PID"
                printf '%s %s q%s %s %s\n' "$round" "$bin" "$q" "$sc" "$(python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
l = d.get("latency_us") or {}
print(d.get("ok"), round((d.get("delivery") or {}).get("delivered_per_s") or 0),
      round((l.get("p50") or 0) / 1000, 2), round((l.get("p99") or 0) / 1000, 2), "ms")' "$out")"
            done
        done
    done
done
