#!/usr/bin/env bash
# bench/limits-cost.sh: what per-client rate limits cost when they are on but not reached.
#
#   bench/limits-cost.sh            # 3 rounds, QoS 0 and QoS 1 pairs
#   ROUNDS=5 bench/limits-cost.sh
#
# Each run: a fresh release broker on CPU 0 (admin API off, default SQLite store), tern-bench on
# CPU 1: 16 publishers -> 16 subscribers on bench/%i (clean sessions, MQTT 5, 64 B), 10 s after
# 2 s warm-up, at saturation. "off": no limits (the default: no limiter at all). "on": every
# connection gets a limiter with publish, publish-bytes and outbound-bytes buckets far above
# the load (10 M msg/s, 10 GB/s), so every packet and write is metered but nothing waits.
# Prints round, limits, QoS, delivered msg/s and p50/p99 end-to-end latency (ms).
set -uo pipefail
BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$BENCH_DIR/.." && pwd)"
source "$BENCH_DIR/lib.sh"
export BENCH_WORK="${BENCH_WORK:-/tmp/tern-limits-bench}" BENCH_ADMIN=off
mkdir -p "$BENCH_WORK"
TERN_BIN="$(realpath "${TERN_BIN:-$REPO_DIR/target/release/tern}")"
BENCH="$(realpath "${TERN_BENCH:-$REPO_DIR/target/release/tern-bench}")"
PORT="${PORT:-18840}"
for round in $(seq 1 "${ROUNDS:-3}"); do
    for q in 0 1; do
        for mode in off on; do
            if [[ $mode == on ]]; then
                export TERN_RATE_LIMITS__PUBLISH_RATE=10000000 TERN_RATE_LIMITS__PUBLISH_BYTES_RATE=10000000000 \
                    TERN_RATE_LIMITS__OUTBOUND_BYTES_RATE=10000000000
            else
                unset TERN_RATE_LIMITS__PUBLISH_RATE TERN_RATE_LIMITS__PUBLISH_BYTES_RATE \
                    TERN_RATE_LIMITS__OUTBOUND_BYTES_RATE
            fi
            start_broker tern "$PORT" 0
            out="$BENCH_WORK/limits-$round-q$q-$mode.json"
            taskset -c 1 "$BENCH" scenario -p "$PORT" -V 5 --pubs 16 --subs 16 -q "$q" --warmup 2 -d 10 \
                --topic 'bench/%i' --sub-topic 'bench/%i' > "$out" 2>/dev/null
            stop_broker "$BROKER_PID"
            printf '%s %s q%s %s\n' "$round" "$mode" "$q" "$(python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
l = d.get("latency_us") or {}
print(d.get("ok"), round((d.get("delivery") or {}).get("delivered_per_s") or 0),
      round((l.get("p50") or 0) / 1000, 2), round((l.get("p99") or 0) / 1000, 2), "ms")' "$out")"
        done
    done
done
