#!/usr/bin/env bash
# Runs the broker benchmark matrix: every scenario against every broker, a fresh broker per
# run, brokers alternating (the order rotates per scenario), a pinned pass (broker on CPU 0,
# load generator on CPU 1) and an unpinned pass; then prints one markdown table (report.sh).
# `relay` is `tern-bench relay`, the floor (bench/README.md): it runs the message scenarios
# only (qos*, lat-*), since connection, idle and retained figures of a relay mean nothing.
#
#   bench/run-matrix.sh [--brokers "tern mosquitto rumqttd relay"] [--passes "pinned unpinned"]
#                       [--scenarios "qos0-fanin qos1-pairs ..."] [--duration S] [--warmup S]
#                       [--out DIR] [--quick]
#
# Results: DIR/<pass>/<scenario>/<broker>.json (tern-bench's JSON) and .log (its stderr),
# with BENCH_ADMIN_POLL=1 / BENCH_PROMETHEUS=1 also .admin-poll.log / .prometheus.log (see
# lib.sh), DIR/report.md. Default DIR: bench/results/<date-time>.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BROKERS="tern mosquitto rumqttd relay"
PASSES="pinned unpinned"
DURATION=10
WARMUP=2
OUT=""
ONLY=""
QUICK=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --brokers) BROKERS="$2"; shift 2 ;;
        --passes) PASSES="$2"; shift 2 ;;
        --scenarios) ONLY="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --warmup) WARMUP="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --quick) QUICK=1; shift ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
if [[ $QUICK == 1 ]]; then
    DURATION=3
    WARMUP=1
fi
OUT="${OUT:-$BENCH_DIR/results/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
ENV_FILE="$OUT/env.txt"
[[ -f "$ENV_FILE" ]] && ENV_FILE="$OUT/env-$(date +%H%M%S).txt"  # a re-run into the same folder

# name|tern-bench arguments. Scenario runs also get -d/--warmup. QoS 2 uses a window of 20:
# on MQTT 3.1.1 nothing tells a client the broker's in-flight limit, and Mosquitto silently
# drops QoS 2 PUBLISHes beyond its max_inflight_messages (default 20).
SCENARIOS=(
    "qos0-fanin|scenario --pubs 16 --subs 1 --topic bench/%i --sub-topic bench/+ -q 0"
    "qos0-pairs|scenario --pubs 32 --subs 32 -q 0"
    "qos1-pairs|scenario --pubs 32 --subs 32 -q 1"
    "qos2-pairs|scenario --pubs 32 --subs 32 -q 2 -w 20"
    "qos0-fanout|scenario --pubs 1 --subs 100 --topic bench/fan --sub-topic bench/fan -q 0"
    "lat-10k|scenario --pubs 16 --subs 16 -q 1 -r 10000"
    "lat-20k|scenario --pubs 16 --subs 16 -q 1 -r 20000"
    "conn-rate|conn -c 5000 --hold 1 --connect-concurrency 64"
    "conn-storm|conn -c 10000 --hold 0 --connect-rate 0 --connect-concurrency 200 --connect-timeout 30 --source-ips 127.0.0.1-127.0.0.20"
    "idle-10k|conn -c 10000 --hold 5 --keep-alive 300 --connect-concurrency 64 --connect-timeout 30 --source-ips 127.0.0.1-127.0.0.20"
    "idle-50k|conn -c 50000 --hold 5 --keep-alive 300 --connect-concurrency 64 --connect-timeout 30 --source-ips 127.0.0.1-127.0.0.50"
    "retained-storm|retain-storm --topics 10000 --subs 100"
)

NOFILE="$(raise_nofile)"
ensure_tern_bench
want=()
for b in $BROKERS; do
    case "$b" in
        tern) if ensure_tern; then want+=(tern); else log "tern does not build: left out"; fi ;;
        mosquitto) ensure_mosquitto; want+=(mosquitto) ;;
        rumqttd) ensure_rumqttd; want+=(rumqttd) ;;
        relay) want+=(relay) ;;
        *) die "unknown broker $b" ;;
    esac
done
[[ ${#want[@]} -gt 0 ]] || die "no broker to run"
log "brokers: ${want[*]}; passes: $PASSES; open-files limit $NOFILE; results in $OUT"
{
    echo "date: $(date -u +%FT%TZ)"
    echo "host: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
    echo "tern-bench: $TERN_BENCH"
    echo "mosquitto: $([[ -n "${MOSQUITTO_BIN:-}" ]] && "$MOSQUITTO_BIN" -h 2>/dev/null | head -1 || true)"
    echo "rumqttd: $RUMQTTD_VERSION"
    echo "tern binary: ${TERN_BIN:-not run} ($(stat -c '%y' "${TERN_BIN:-/nonexistent}" 2>/dev/null || echo '?'))"
    echo "repository HEAD: $(git -C "$REPO_DIR" log -1 --format='%h %s' 2>/dev/null || true)"
    echo "duration: ${DURATION}s + warm-up ${WARMUP}s"
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "nice: ${BENCH_NICE:-unchanged}"
    echo "quiet pattern: ${BENCH_QUIET_PATTERN:-none}"
    echo "tern admin API: $([[ -n "${TERN_BIN:-}" ]] && admin_mode || echo n/a)"
} > "$ENV_FILE"

port=19000
poll_cpus_default="${BENCH_ADMIN_POLL_CPUS:-}"
prom_cpus_default="${BENCH_PROMETHEUS_CPUS:-}"
run_one() { # pass scenario broker args...
    local pass=$1 scen=$2 broker=$3 bcpus="" lcpus=() dir rc=0 need=0 conns=0
    shift 3
    local args=("$@")
    if [[ $broker == relay && ${args[0]} != scenario ]]; then
        log "skip $pass/$scen/relay: the relay is a floor for message scenarios only (no sessions, no retained messages; its connection figures would say nothing about a broker)"
        return 0
    fi
    dir="$OUT/$pass/$scen"
    mkdir -p "$dir"
    [[ -n "${BENCH_NICE:-}" ]] && lcpus+=(nice -n "$BENCH_NICE")
    BENCH_ADMIN_POLL_CPUS="$poll_cpus_default"
    BENCH_PROMETHEUS_CPUS="$prom_cpus_default"
    if [[ $pass == pinned ]]; then
        bcpus=0
        lcpus+=(taskset -c 1)
        # the admin poller and Prometheus go with the load
        BENCH_ADMIN_POLL_CPUS="${poll_cpus_default:-1}"
        BENCH_PROMETHEUS_CPUS="${prom_cpus_default:-1}"
    fi
    if [[ ${args[0]} == conn ]]; then
        conns="${args[2]}"
        need=$((conns + 200))
        if ((need > NOFILE)); then
            log "skip $pass/$scen/$broker: needs ~$need open files, the limit is $NOFILE"
            printf '{"ok":false,"skipped":true,"error":"needs about %s open files per process; the open-files limit here is %s and cannot be raised","labels":{"broker":"%s","scenario":"%s","pass":"%s"}}\n' \
                "$need" "$NOFILE" "$broker" "$scen" "$pass" > "$dir/$broker.json"
            return 0
        fi
    elif [[ ${args[0]} == scenario ]]; then
        args+=(-d "$DURATION" --warmup "$WARMUP")
    fi
    wait_quiet
    port=$((port + 10))
    if ! start_broker "$broker" "$port" "$bcpus" $((conns + 1000)); then
        printf '{"ok":false,"error":"broker did not start","labels":{"broker":"%s","scenario":"%s","pass":"%s"}}\n' \
            "$broker" "$scen" "$pass" > "$dir/$broker.json"
        return 0
    fi
    log "run $pass/$scen/$broker (pid $BROKER_PID, port $port): ${args[*]}"
    "${lcpus[@]}" "$TERN_BENCH" "${args[@]}" -p "$port" --broker-pid "$BROKER_PID" --interval 0 \
        --label "broker=$broker" --label "scenario=$scen" --label "pass=$pass" \
        --label "load1_before=$(cut -d' ' -f1 /proc/loadavg)" --label "waited_s=$QUIET_WAITED" \
        --label "admin=$([[ $broker == tern ]] && admin_mode || echo n/a)" \
        > "$dir/$broker.json" 2> "$dir/$broker.log" || rc=$?
    if ! kill -0 "$BROKER_PID" 2>/dev/null; then
        log "  broker $broker exited during the run"
    fi
    stop_broker "$BROKER_PID"
    if [[ -n "$ADMIN_POLL_LOG" ]]; then
        mv "$ADMIN_POLL_LOG" "$dir/$broker.admin-poll.log"
        tail -1 "$dir/$broker.admin-poll.log" | sed 's/^/    /' >&2
    fi
    if [[ -n "$PROMETHEUS_LOG" ]]; then
        mv "$PROMETHEUS_LOG" "$dir/$broker.prometheus.log"
        tail -1 "$dir/$broker.prometheus.log" | sed 's/^/    /' >&2
    fi
    grep -E '^(publish|deliver|check|latency|connect|storm|broker|load gen|WARNING|FAILED)|error' "$dir/$broker.log" \
        | sed 's/^/    /' >&2 || true
    [[ $rc == 0 ]] || log "  tern-bench exit code $rc"
    sleep 1
}

i=0
for pass in $PASSES; do
    for entry in "${SCENARIOS[@]}"; do
        scen="${entry%%|*}"
        read -r -a args <<< "${entry#*|}"
        if [[ -n "$ONLY" && " $ONLY " != *" $scen "* ]]; then continue; fi
        # Alternate: rotate the broker order every scenario.
        n=${#want[@]}
        for ((k = 0; k < n; k++)); do
            run_one "$pass" "$scen" "${want[$(((i + k) % n))]}" "${args[@]}"
        done
        i=$((i + 1))
    done
done

"$BENCH_DIR/report.sh" "$OUT" | tee "$OUT/report.md"
