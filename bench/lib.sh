# shellcheck shell=bash
# Shared helpers of the broker benchmark scripts: install and start brokers, wait for them,
# stop them. Source it; it defines functions and a few variables only.
#
# Environment knobs (all optional):
#   TERN_BIN            tern binary (default: <repo>/target/release/tern, built if missing)
#   TERN_BENCH          tern-bench binary (default: <repo>/target/release/tern-bench, built if missing)
#   MOSQUITTO_BIN       mosquitto binary (default: mosquitto on PATH, apt-get installed if missing)
#   RUMQTTD_ROOT        where `cargo install` puts rumqttd (default: /opt/rumqttd)
#   RUMQTTD_CONN_DELAY_MS  rumqttd's next_connection_delay_ms (default: 1, as shipped)
#   BENCH_WORK          scratch folder for configs and broker logs (default: /tmp/tern-bench-work)
#   BENCH_QUIET_PATTERN, BENCH_QUIET_MAX, BENCH_QUIET_IGNORE (PIDs)  see wait_quiet
#   BENCH_NICE          run brokers and the load generator at this nice value (e.g. -10) so
#                       that other work on a shared machine disturbs the figures less (root only
#                       for negative values; default: unchanged)

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$BENCH_DIR/.." && pwd)"
BENCH_WORK="${BENCH_WORK:-/tmp/tern-bench-work}"
RUMQTTD_ROOT="${RUMQTTD_ROOT:-/opt/rumqttd}"
RUMQTTD_VERSION="0.20.0"
mkdir -p "$BENCH_WORK"

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Builds the load generator unless TERN_BENCH points at one.
ensure_tern_bench() {
    TERN_BENCH="${TERN_BENCH:-$REPO_DIR/target/release/tern-bench}"
    if [[ ! -x "$TERN_BENCH" ]]; then
        log "building tern-bench (release)"
        (cd "$REPO_DIR" && cargo build --release -p tern-bench) >&2 || die "cannot build tern-bench"
    fi
}

# Builds the broker unless TERN_BIN points at one. Returns 1 (without exiting) if it fails.
ensure_tern() {
    TERN_BIN="${TERN_BIN:-$REPO_DIR/target/release/tern}"
    if [[ ! -x "$TERN_BIN" ]]; then
        log "building tern (release)"
        (cd "$REPO_DIR" && cargo build --release -p tern-server) >&2 || return 1
    fi
    [[ -x "$TERN_BIN" ]] || return 1
    TERN_BIN="$(realpath "$TERN_BIN")"  # the broker runs in a scratch directory
}

ensure_mosquitto() {
    MOSQUITTO_BIN="${MOSQUITTO_BIN:-$(command -v mosquitto || true)}"
    if [[ -z "$MOSQUITTO_BIN" ]]; then
        log "installing mosquitto (apt-get)"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto) >&2 \
            || die "cannot install mosquitto"
        MOSQUITTO_BIN="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
    fi
    [[ -x "$MOSQUITTO_BIN" ]] || die "no mosquitto binary"
}

# rumqttd 0.20.0 with `--locked` pins metrics 0.22.1, which no longer compiles on current
# Rust (E0521); without --locked cargo takes the fixed 0.22.x patch release.
ensure_rumqttd() {
    RUMQTTD_BIN="$RUMQTTD_ROOT/bin/rumqttd"
    if [[ ! -x "$RUMQTTD_BIN" ]]; then
        log "installing rumqttd $RUMQTTD_VERSION into $RUMQTTD_ROOT (slow on 2 cores)"
        nice -n 19 cargo install rumqttd --version "$RUMQTTD_VERSION" --locked --root "$RUMQTTD_ROOT" >&2 \
            || nice -n 19 cargo install rumqttd --version "$RUMQTTD_VERSION" --root "$RUMQTTD_ROOT" >&2 \
            || die "cannot install rumqttd"
    fi
}

# The rumqttd.toml shipped in the crate source (present after `cargo install`).
rumqttd_default_config() {
    local f
    for f in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/rumqttd-"$RUMQTTD_VERSION"/rumqttd.toml; do
        [[ -f "$f" ]] && { echo "$f"; return 0; }
    done
    # Not unpacked (e.g. installed elsewhere): let cargo fetch the crate source.
    local tmp="$BENCH_WORK/rumqttd-fetch"
    mkdir -p "$tmp/src" && printf '[package]\nname="f"\nversion="0.0.0"\nedition="2021"\n[dependencies]\nrumqttd="=%s"\n' \
        "$RUMQTTD_VERSION" > "$tmp/Cargo.toml" && touch "$tmp/src/lib.rs"
    (cd "$tmp" && cargo fetch -q) >&2 || return 1
    for f in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/rumqttd-"$RUMQTTD_VERSION"/rumqttd.toml; do
        [[ -f "$f" ]] && { echo "$f"; return 0; }
    done
    return 1
}

# rumqttd_config PORT MAXCONN OUT: the shipped config with every listener on 127.0.0.1,
# v4 on PORT, v5 on PORT+1, the others (prometheus, websocket, console) moved next to them,
# and the router's connection limit raised.
rumqttd_config() {
    local port=$1 maxconn=$2 out=$3 src
    src="$(rumqttd_default_config)" || die "cannot find rumqttd.toml of rumqttd $RUMQTTD_VERSION"
    sed -e "s|^max_connections = .*|max_connections = $maxconn|" \
        -e "s|^listen = \"0.0.0.0:1883\"|listen = \"127.0.0.1:$port\"|" \
        -e "s|^listen = \"0.0.0.0:1884\"|listen = \"127.0.0.1:$((port + 1))\"|" \
        -e "s|^listen = \"127.0.0.1:9042\"|listen = \"127.0.0.1:$((port + 2))\"|" \
        -e "s|^listen = \"0.0.0.0:8083\"|listen = \"127.0.0.1:$((port + 3))\"|" \
        -e "s|^listen = \"0.0.0.0:3030\"|listen = \"127.0.0.1:$((port + 4))\"|" \
        -e "s|^next_connection_delay_ms = .*|next_connection_delay_ms = ${RUMQTTD_CONN_DELAY_MS:-1}|" \
        "$src" > "$out"
    grep -q "127.0.0.1:$port\"" "$out" || die "rumqttd config edit failed (unexpected rumqttd.toml layout)"
}

# mosquitto_config PORT OUT: defaults except the listener, anonymous access, no connection
# limit, no persistence and no logging.
mosquitto_config() {
    cat > "$2" <<EOF
listener $1 127.0.0.1
allow_anonymous true
max_connections -1
persistence false
log_dest none
EOF
}

# wait_port PORT [SECONDS]: until something accepts TCP connections on 127.0.0.1:PORT.
wait_port() {
    local port=$1 secs=${2:-20} i
    for ((i = 0; i < secs * 20; i++)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    return 1
}

# port_free PORT: true when nothing listens there.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start_broker NAME PORT CPUS MAXCONN: starts a fresh broker (taskset -c CPUS unless CPUS is
# empty), waits until it listens, and sets BROKER_PID (and BROKER_RUN_DIR for Tern). Logs go
# to $BENCH_WORK/NAME-PORT.log.
start_broker() {
    local name=$1 port=$2 cpus=$3 maxconn=${4:-100000} pin=() cfg logf
    [[ -n "${BENCH_NICE:-}" ]] && pin+=(nice -n "$BENCH_NICE")
    [[ -n "$cpus" ]] && pin+=(taskset -c "$cpus")
    port_free "$port" || die "port $port is already in use"
    logf="$BENCH_WORK/$name-$port.log"
    case "$name" in
        tern)
            # The default config keeps a SQLite store in data/ under the working directory:
            # run each broker in a fresh scratch folder (removed by stop_broker), so runs
            # start from an empty store and nothing lands in the caller's directory.
            BROKER_RUN_DIR="$(mktemp -d "$BENCH_WORK/tern-$port.XXXXXX")"
            (cd "$BROKER_RUN_DIR" && exec "${pin[@]}" "$TERN_BIN" serve --mqtt-addr "127.0.0.1:$port") \
                > "$logf" 2>&1 &
            ;;
        mosquitto)
            cfg="$BENCH_WORK/mosquitto-$port.conf"
            mosquitto_config "$port" "$cfg"
            "${pin[@]}" "$MOSQUITTO_BIN" -c "$cfg" > "$logf" 2>&1 &
            ;;
        rumqttd)
            cfg="$BENCH_WORK/rumqttd-$port.toml"
            rumqttd_config "$port" "$maxconn" "$cfg"
            "${pin[@]}" "$RUMQTTD_BIN" -c "$cfg" > "$logf" 2>&1 &
            ;;
        *) die "unknown broker $name" ;;
    esac
    BROKER_PID=$!
    if ! wait_port "$port" 20; then
        log "broker $name did not start listening on $port; last log lines:"
        tail -5 "$logf" >&2 || true
        stop_broker "$BROKER_PID"
        return 1
    fi
}

# stop_broker PID: SIGTERM, then SIGKILL after 5 s; then removes the broker's scratch
# working directory (Tern's data/), if start_broker made one.
stop_broker() {
    local pid=$1 i
    if kill "$pid" 2>/dev/null; then
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null || true
    fi
    if [[ -n "${BROKER_RUN_DIR:-}" ]]; then
        rm -rf "$BROKER_RUN_DIR"
        BROKER_RUN_DIR=""
    fi
    return 0
}

# wait_quiet: when BENCH_QUIET_PATTERN is set (an extended regex for pgrep -f, e.g.
# 'tern-bench|durable.sh|cargo test|nextest'), waits until no process matches it, polling
# every 20 s for at most BENCH_QUIET_MAX seconds (default 600), so other benchmarks or test
# suites on a shared machine do not skew a run; then goes on regardless. Processes still there
# after a full wait (e.g. a hung, idle test) are not waited for again. Sets QUIET_WAITED
# (seconds waited, or "timeout:<s>").
QUIET_IGNORE=" ${BENCH_QUIET_IGNORE:-} "  # PIDs not to wait for
wait_quiet() {
    local waited=0 max=${BENCH_QUIET_MAX:-600} busy pid
    QUIET_WAITED=0
    [[ -n "${BENCH_QUIET_PATTERN:-}" ]] || return 0
    while true; do
        busy=""
        while read -r pid rest; do
            [[ -z "$pid" || $pid == "$$" || $QUIET_IGNORE == *" $pid "* ]] && continue
            busy+="$pid ${rest:0:120};"
        done < <(pgrep -fa "$BENCH_QUIET_PATTERN" || true)
        [[ -n "$busy" ]] || break
        if ((waited >= max)); then
            log "still busy after ${waited}s, running anyway (and not waiting for these again): $busy"
            QUIET_IGNORE+="$(tr ';' '\n' <<< "$busy" | awk 'NF {printf "%s ", $1}')"
            QUIET_WAITED="timeout:$waited"
            return 0
        fi
        ((waited == 0)) && log "waiting for: $busy"
        sleep 20
        waited=$((waited + 20))
    done
    # shellcheck disable=SC2034 # read by run-matrix.sh
    QUIET_WAITED=$waited
}

# raise_nofile: soft open-files limit to the hard limit; prints the result.
raise_nofile() {
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    ulimit -n
}
