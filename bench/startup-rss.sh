#!/usr/bin/env bash
# bench/startup-rss.sh: memory right after start, Tern (default SQLite store in a fresh
# directory, admin API on and off) against Mosquitto, split into what the process allocated
# (anonymous memory: heap, stacks) and mapped files (its code and libraries, shared with the
# page cache).
#
#   bench/startup-rss.sh                 # 5 rounds
#   ROUNDS=3 TERN_BIN=/tmp/tern-old bench/startup-rss.sh
#
# Each run starts the broker idle on a fresh port, waits WAIT seconds (2), reads
# /proc/PID/smaps_rollup (Rss, Anonymous) and /proc/PID/status (VmHWM, the peak), stops it.
# Prints one line per run and the medians (MiB).
set -uo pipefail
BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$BENCH_DIR/.." && pwd)"
source "$BENCH_DIR/lib.sh"
export BENCH_WORK="${BENCH_WORK:-/tmp/tern-startup-bench}"
mkdir -p "$BENCH_WORK"
TERN_BIN="$(realpath "${TERN_BIN:-$REPO_DIR/target/release/tern}")"
export TERN_BIN
ensure_mosquitto
PORT="${PORT:-18870}" WAIT="${WAIT:-2}"
RESULTS="$BENCH_WORK/results.txt"
: > "$RESULTS"

# sample LABEL PID: one line of kB figures.
sample() {
    local rss anon hwm
    rss=$(awk '/^Rss:/ {print $2}' "/proc/$2/smaps_rollup")
    anon=$(awk '/^Anonymous:/ {print $2}' "/proc/$2/smaps_rollup")
    hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$2/status")
    echo "$1 $rss $anon $hwm" | tee -a "$RESULTS"
}

for round in $(seq 1 "${ROUNDS:-5}"); do
    for who in tern-admin tern mosquitto; do
        case "$who" in
            tern-admin) BENCH_ADMIN=on start_broker tern "$PORT" "" || die "tern did not start" ;;
            tern) BENCH_ADMIN=off start_broker tern "$PORT" "" || die "tern did not start" ;;
            mosquitto) start_broker mosquitto "$PORT" "" || die "mosquitto did not start" ;;
        esac
        sleep "$WAIT"
        sample "$who" "$BROKER_PID"
        stop_broker "$BROKER_PID"
    done
done

echo "medians, MiB (broker: resident, of which anonymous, peak):"
python3 - "$RESULTS" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    f = line.split()
    runs.setdefault(f[0], []).append([int(x) / 1024 for x in f[1:]])
for who, v in runs.items():
    rss, anon, hwm = (statistics.median(x) for x in zip(*v))
    print(f"{who:11} {rss:5.1f}  {anon:4.1f}  {hwm:5.1f}  ({len(v)} runs)")
PY
