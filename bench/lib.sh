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
#   BENCH_ADMIN=off     Tern only: no admin API listener and no topic statistics
#                       (TERN_ADMIN__ENABLED=false, TERN_LIMITS__TOPIC_STATS_CAPACITY=0), the
#                       configuration before issue 17, to measure their cost on one binary.
#                       Default: as shipped (admin API on, on a free port next to the MQTT one,
#                       see ADMIN_PORT; topic statistics as configured: off by default since
#                       4d1da39, TERN_LIMITS__TOPIC_STATS_CAPACITY in the environment turns
#                       them on).
#   BENCH_ADMIN_POLL=1  Tern only: create the admin user `bench` in the broker's run folder
#                       before it starts, and run a poller for the broker's life that logs in
#                       once and lists every connected client (GET /api/v1/clients, all pages of
#                       1000) every second; its log (one line per poll, then a summary with the
#                       failures) is ADMIN_POLL_LOG. See admin_poller.
#   BENCH_ADMIN_POLL_CPUS  taskset -c for the poller (default: unpinned; run-matrix.sh's
#                       pinned pass puts it on the load generator's CPU)
#   BENCH_ADMIN_POLL_PATH  what the poller GETs (default /api/v1/clients?limit=1000); a control
#                       run with /healthz costs the poller the same processes and the broker
#                       almost nothing
#   BENCH_ADMIN_USER=1  create the admin user (as BENCH_ADMIN_POLL does) without the poller
#   BENCH_PROMETHEUS=1  Tern only, admin API on: run a real Prometheus (PROMETHEUS_BIN, default
#                       prometheus on PATH, apt-get installed if missing) for the broker's
#                       life, with its own config and storage under $BENCH_WORK, on a free
#                       127.0.0.1 port, scraping GET /metrics on ADMIN_PORT every second
#                       (scrape_timeout 900ms, job `tern`). start_broker returns after its first
#                       successful scrape; stop_broker asks its API for the scrapes done and
#                       their duration, stops it, and appends a summary line "prometheus
#                       summary: scrapes=N ok=M ..." to its log, PROMETHEUS_LOG. See
#                       start_prometheus.
#   BENCH_PROMETHEUS_CPUS  taskset -c for Prometheus (default: unpinned; run-matrix.sh's pinned
#                       pass puts it on the load generator's CPU, like the poller)

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$BENCH_DIR/.." && pwd)"
BENCH_WORK="${BENCH_WORK:-/tmp/tern-bench-work}"
RUMQTTD_ROOT="${RUMQTTD_ROOT:-/opt/rumqttd}"
RUMQTTD_VERSION="0.20.0"
mkdir -p "$BENCH_WORK"
# Benchmark settings that share Tern's TERN_ prefix (a second binary for A/B runs, a private
# PostgreSQL cluster's place): still readable here, but not exported to the processes the
# scripts start, because the broker refuses TERN_* variables that are not configuration keys.
# scripts/postgres.sh gets its own explicitly (PG_ENV).
export -n TERN_BIN_B TERN_PG_DIR TERN_PG_PORT 2> /dev/null || true

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
${MOSQUITTO_EXTRA_CONF:-}
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

# Admin API of the bench brokers (Tern): the user the poller and bench/admin-list.sh log in
# with, created in the broker's run folder (its default SQLite database) before it starts.
ADMIN_USER="bench"
ADMIN_PASSWORD="bench-password-123"

# start_broker NAME PORT CPUS MAXCONN: starts a fresh broker (tern, mosquitto, rumqttd, or
# relay: `tern-bench relay`, the floor) (taskset -c CPUS unless CPUS is empty), waits until it
# listens, and sets BROKER_PID (and BROKER_RUN_DIR for Tern). Logs go
# to $BENCH_WORK/NAME-PORT.log. Tern with its admin API on (unless BENCH_ADMIN=off) also sets
# ADMIN_PORT (the API is on 127.0.0.1:ADMIN_PORT, the first free port from PORT+5, so a port
# 8080 taken by something else cannot stop a run), with BENCH_ADMIN_POLL=1
# ADMIN_POLL_PID and ADMIN_POLL_LOG, and with BENCH_PROMETHEUS=1 PROMETHEUS_PID and
# PROMETHEUS_LOG.
start_broker() {
    local name=$1 port=$2 cpus=$3 maxconn=${4:-100000} pin=() cfg logf env=()
    [[ -n "${BENCH_NICE:-}" ]] && pin+=(nice -n "$BENCH_NICE")
    [[ -n "$cpus" ]] && pin+=(taskset -c "$cpus")
    port_free "$port" || die "port $port is already in use"
    logf="$BENCH_WORK/$name-$port.log"
    ADMIN_PORT="" ADMIN_POLL_PID="" ADMIN_POLL_LOG="" PROMETHEUS_PID="" PROMETHEUS_LOG=""
    case "$name" in
        tern)
            # The default config keeps a SQLite store in data/ under the working directory:
            # run each broker in a fresh scratch folder (removed by stop_broker), so runs
            # start from an empty store and nothing lands in the caller's directory.
            BROKER_RUN_DIR="$(mktemp -d "$BENCH_WORK/tern-$port.XXXXXX")"
            if ! tern_has_admin; then
                # A build from before issue 17 (e.g. TERN_BIN of an older commit): it refuses
                # the unknown TERN_ADMIN__* variables, and has nothing to turn off.
                [[ "${BENCH_ADMIN_POLL:-0}" == 1 ]] && die "$TERN_BIN has no admin API to poll"
                [[ "${BENCH_PROMETHEUS:-0}" == 1 ]] && die "$TERN_BIN has no admin API to scrape"
            elif [[ "${BENCH_ADMIN:-on}" == off ]]; then
                [[ "${BENCH_ADMIN_POLL:-0}" == 1 ]] && die "BENCH_ADMIN=off and BENCH_ADMIN_POLL=1 exclude each other"
                [[ "${BENCH_PROMETHEUS:-0}" == 1 ]] && die "BENCH_ADMIN=off and BENCH_PROMETHEUS=1 exclude each other"
                env+=(TERN_ADMIN__ENABLED=false TERN_LIMITS__TOPIC_STATS_CAPACITY=0)
            else
                ADMIN_PORT=$((port + 5))
                while ! port_free "$ADMIN_PORT"; do
                    ADMIN_PORT=$((ADMIN_PORT + 1))
                    ((ADMIN_PORT < port + 100)) || die "no free port for the admin API near $port"
                done
                env+=(TERN_ADMIN__ADDR="127.0.0.1:$ADMIN_PORT")
                if [[ "${BENCH_ADMIN_POLL:-0}" == 1 || "${BENCH_ADMIN_USER:-0}" == 1 ]]; then
                    (cd "$BROKER_RUN_DIR" && "$TERN_BIN" admin add-user --username "$ADMIN_USER" \
                        --role admin --password-stdin <<< "$ADMIN_PASSWORD") > "$logf.add-user" 2>&1 \
                        || { tail -5 "$logf.add-user" >&2; die "tern admin add-user failed"; }
                fi
            fi
            (cd "$BROKER_RUN_DIR" && exec env "${env[@]}" "${pin[@]}" "$TERN_BIN" serve \
                --mqtt-addr "127.0.0.1:$port") > "$logf" 2>&1 &
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
        relay)
            # The floor (README "The floor: tern-bench relay"): one thread, no MQTT broker.
            ensure_tern_bench
            "${pin[@]}" "$TERN_BENCH" relay --listen "127.0.0.1:$port" > "$logf" 2>&1 &
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
    if [[ -n "$ADMIN_PORT" ]] && ! wait_port "$ADMIN_PORT" 10; then
        log "tern's admin API did not listen on $ADMIN_PORT; last log lines:"
        tail -5 "$logf" >&2 || true
        stop_broker "$BROKER_PID"
        return 1
    fi
    if [[ -n "$ADMIN_PORT" && "${BENCH_ADMIN_POLL:-0}" == 1 ]]; then
        ADMIN_POLL_LOG="$BENCH_WORK/$name-$port-admin-poll.log"
        local ppin=()
        [[ -n "${BENCH_NICE:-}" ]] && ppin+=(nice -n "$BENCH_NICE")
        [[ -n "${BENCH_ADMIN_POLL_CPUS:-}" ]] && ppin+=(taskset -c "$BENCH_ADMIN_POLL_CPUS")
        # shellcheck disable=SC2016 # expanded by the child
        "${ppin[@]}" env BENCH_WORK="$BENCH_WORK" bash -c 'source "$1" && admin_poller "$2"' _ \
            "$BENCH_DIR/lib.sh" "$ADMIN_PORT" > "$ADMIN_POLL_LOG" 2>&1 &
        ADMIN_POLL_PID=$!
        # Return after its login and first poll: the login's password hash (argon2id, ~19 MiB
        # and tens of ms of CPU, once) then lands before the caller's measurement starts.
        local i
        for ((i = 0; i < 200; i++)); do
            grep -q ' pages=' "$ADMIN_POLL_LOG" 2>/dev/null && break
            sleep 0.1
        done
        grep -q ' pages=[0-9]* clients=[0-9]* ms=[0-9]* failed=0' "$ADMIN_POLL_LOG" \
            || log "warning: the admin poller's first poll did not succeed within 20 s"
    fi
    if [[ -n "$ADMIN_PORT" && "${BENCH_PROMETHEUS:-0}" == 1 ]]; then
        start_prometheus "$name-$port" "$ADMIN_PORT" "$port"
    fi
}

# ensure_prometheus: PROMETHEUS_BIN, default prometheus on PATH (Debian's package, installed
# with apt-get if missing). A Prometheus already running is reported, not stopped: it may be
# someone else's (Debian's service, which does not start on a machine without systemd, or a
# test's).
ensure_prometheus() {
    PROMETHEUS_BIN="${PROMETHEUS_BIN:-$(command -v prometheus || true)}"
    if [[ -z "$PROMETHEUS_BIN" ]]; then
        log "installing prometheus (apt-get)"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus) >&2 \
            || die "cannot install prometheus"
        PROMETHEUS_BIN="$(command -v prometheus || echo /usr/bin/prometheus)"
    fi
    [[ -x "$PROMETHEUS_BIN" ]] || die "no prometheus binary"
}

# prom_query PORT EXPR: the first value of an instant query on the Prometheus at
# 127.0.0.1:PORT, or "?" when there is none.
prom_query() {
    local v
    v="$(curl -sS --max-time 10 --data-urlencode "query=$2" "http://127.0.0.1:$1/api/v1/query" 2>/dev/null \
        | jq -r '.data.result[0].value[1] // "?"' 2>/dev/null)"
    printf '%s\n' "${v:-?}"
}

# start_prometheus TAG ADMIN_PORT PORT: starts Prometheus (nice BENCH_NICE, taskset -c
# BENCH_PROMETHEUS_CPUS) with a fresh config and storage folder under $BENCH_WORK, listening on
# the first free port from ADMIN_PORT+1, scraping http://127.0.0.1:ADMIN_PORT/metrics every
# second (scrape_timeout 900ms, job `tern`; --enable-feature=extra-scrape-metrics adds
# scrape_body_size_bytes). Returns after its first successful scrape (up == 1), so that its
# start-up (a Go process, tens of MiB, a few hundred ms of CPU) lands before the caller's
# measurement. Sets PROMETHEUS_PID, PROMETHEUS_PORT, PROMETHEUS_DIR and PROMETHEUS_LOG
# ($BENCH_WORK/TAG-prometheus.log: Prometheus's own log, warnings and errors only, then the
# summary line stop_prometheus appends).
start_prometheus() {
    local tag=$1 admin=$2 port=$3 ppin=() i up="?" other
    ensure_prometheus
    other="$(pgrep -x prometheus | tr '\n' ' ' || true)"
    [[ -n "$other" ]] && log "warning: other Prometheus processes are running (pids $other), not stopped"
    PROMETHEUS_PORT=$((admin + 1))
    while ! port_free "$PROMETHEUS_PORT"; do
        PROMETHEUS_PORT=$((PROMETHEUS_PORT + 1))
        ((PROMETHEUS_PORT < port + 100)) || die "no free port for Prometheus near $port"
    done
    PROMETHEUS_DIR="$(mktemp -d "$BENCH_WORK/prometheus-$port.XXXXXX")"
    PROMETHEUS_LOG="$BENCH_WORK/$tag-prometheus.log"
    printf '%s\n' "global:" "  scrape_interval: 1s" "  scrape_timeout: 900ms" \
        "  evaluation_interval: 1m" "scrape_configs:" "  - job_name: tern" \
        "    metrics_path: /metrics" "    static_configs:" \
        "      - targets: ['127.0.0.1:$admin']" > "$PROMETHEUS_DIR/prometheus.yml"
    [[ -n "${BENCH_NICE:-}" ]] && ppin+=(nice -n "$BENCH_NICE")
    [[ -n "${BENCH_PROMETHEUS_CPUS:-}" ]] && ppin+=(taskset -c "$BENCH_PROMETHEUS_CPUS")
    "${ppin[@]}" "$PROMETHEUS_BIN" --config.file="$PROMETHEUS_DIR/prometheus.yml" \
        --storage.tsdb.path="$PROMETHEUS_DIR/data" --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" \
        --enable-feature=extra-scrape-metrics --log.level=warn > "$PROMETHEUS_LOG" 2>&1 &
    PROMETHEUS_PID=$!
    for ((i = 0; i < 200; i++)); do
        up="$(prom_query "$PROMETHEUS_PORT" 'up{job="tern"}')"
        [[ $up == 1 ]] && break
        kill -0 "$PROMETHEUS_PID" 2>/dev/null || break
        sleep 0.1
    done
    [[ $up == 1 ]] || log "warning: Prometheus did not scrape tern's /metrics successfully within 20 s (up=$up)"
}

# stop_prometheus: asks Prometheus for the scrapes it did (count_over_time(up[1h])), the
# successful ones (sum_over_time), the median and largest scrape_duration_seconds (in ms), the
# samples and bytes of the last scrape, reads its own CPU time from /proc, stops it (SIGTERM,
# then SIGKILL after 5 s), removes its storage folder and appends "prometheus summary: ..." to
# PROMETHEUS_LOG. Called by stop_broker before it stops the broker.
stop_prometheus() {
    [[ -n "${PROMETHEUS_PID:-}" ]] || return 0
    local p=$PROMETHEUS_PORT scrapes ok med max samples bytes cpu="?" i
    scrapes="$(prom_query "$p" 'count_over_time(up{job="tern"}[1h])')"
    ok="$(prom_query "$p" 'sum_over_time(up{job="tern"}[1h])')"
    med="$(prom_query "$p" 'quantile_over_time(0.5, scrape_duration_seconds{job="tern"}[1h]) * 1000')"
    max="$(prom_query "$p" 'max_over_time(scrape_duration_seconds{job="tern"}[1h]) * 1000')"
    samples="$(prom_query "$p" 'scrape_samples_scraped{job="tern"}')"
    bytes="$(prom_query "$p" 'scrape_body_size_bytes{job="tern"}')"
    if [[ -r /proc/$PROMETHEUS_PID/stat ]]; then
        cpu="$(awk -v t="$(getconf CLK_TCK)" '{sub(/^.*\) /, ""); printf "%.2f", ($12 + $13) / t}' \
            "/proc/$PROMETHEUS_PID/stat")"
    fi
    kill "$PROMETHEUS_PID" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$PROMETHEUS_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$PROMETHEUS_PID" 2>/dev/null && kill -9 "$PROMETHEUS_PID" 2>/dev/null
    wait "$PROMETHEUS_PID" 2>/dev/null || true
    [[ $med == "?" ]] || med="$(printf '%.2f' "$med")"
    [[ $max == "?" ]] || max="$(printf '%.2f' "$max")"
    printf 'prometheus summary: scrapes=%s ok=%s median_ms=%s max_ms=%s samples=%s body_bytes=%s prometheus_cpu_s=%s\n' \
        "$scrapes" "$ok" "$med" "$max" "$samples" "$bytes" "$cpu" >> "$PROMETHEUS_LOG"
    rm -rf "$PROMETHEUS_DIR"
    PROMETHEUS_PID="" PROMETHEUS_DIR=""
}

# tern_has_admin: whether TERN_BIN has the admin API (issue 17); cached per binary.
TERN_HAS_ADMIN_BIN="" TERN_HAS_ADMIN=""
tern_has_admin() {
    if [[ "$TERN_HAS_ADMIN_BIN" != "${TERN_BIN:-}" ]]; then
        TERN_HAS_ADMIN_BIN="${TERN_BIN:-}"
        TERN_HAS_ADMIN=0
        (cd "$BENCH_WORK" && "$TERN_BIN" config 2>/dev/null | grep -q '^\[admin\]') && TERN_HAS_ADMIN=1
    fi
    [[ $TERN_HAS_ADMIN == 1 ]]
}

# admin_mode: how start_broker runs Tern's admin API: off, on, polled or scraped
# (polled+scraped with both); absent for a build without it.
admin_mode() {
    if ! tern_has_admin; then echo absent
    elif [[ "${BENCH_ADMIN:-on}" == off ]]; then echo off
    else
        local m=on
        [[ "${BENCH_ADMIN_POLL:-0}" == 1 ]] && m="polled${BENCH_ADMIN_POLL_PATH:+ $BENCH_ADMIN_POLL_PATH}"
        if [[ "${BENCH_PROMETHEUS:-0}" == 1 ]]; then
            if [[ $m == on ]]; then m=scraped; else m+="+scraped"; fi
        fi
        echo "$m"
    fi
}

# admin_login PORT: prints an access token of ADMIN_USER (empty and status 1 on failure).
admin_login() {
    local body
    body="$(curl -sS --max-time 10 -H 'content-type: application/json' \
        -d "{\"username\":\"$ADMIN_USER\",\"password\":\"$ADMIN_PASSWORD\"}" \
        "http://127.0.0.1:$1/api/v1/auth/login")" || return 1
    body="$(grep -o '"access_token":"[^"]*"' <<< "$body")" || return 1
    body="${body#\"access_token\":\"}"
    printf '%s\n' "${body%\"}"
}

# admin_get PORT TOKEN PATH_AND_QUERY OUT: one GET, body to OUT; prints "HTTP_CODE TIME_S"
# (curl's time_total: connect, request and the whole body read, no process start-up).
admin_get() {
    curl -sS --max-time 30 -o "$4" -w '%{http_code} %{time_total}\n' \
        -H "authorization: Bearer $2" "http://127.0.0.1:$1$3" || echo "000 0"
}

# admin_next FILE: the `next` cursor of a page (last field of the object), empty if null.
admin_next() {
    local n
    n="$(tail -c 400 "$1" | grep -o '"next":"[^"]*"' || true)"
    n="${n#\"next\":\"}"
    printf '%s' "${n%\"}"
}

# admin_poller PORT: logs in once (again on a 401), then every second (absolute schedule; a
# poll slower than 1 s starts the next one at once) lists every connected client with
# GET /api/v1/clients?limit=1000 (or BENCH_ADMIN_POLL_PATH), following `next` to the last
# page. One line per poll on stdout: time, pages, clients listed, milliseconds, failed
# requests; on SIGTERM a summary line "admin-poll summary: polls=N failures=M ...". Started by
# start_broker, stopped by stop_broker.
admin_poller() {
    local port=$1 path=${BENCH_ADMIN_POLL_PATH:-/api/v1/clients?limit=1000} token="" polls=0 failures=0 items=0 pages=0 tmp next res code t0 t1 n ms
    local total_ms=0 max_ms=0 next_at
    tmp="$(mktemp "$BENCH_WORK/admin-poll.XXXXXX")"
    summary() {
        printf 'admin-poll summary: polls=%s failures=%s clients_last=%s total_ms=%s max_ms=%s\n' \
            "$polls" "$failures" "$items" "$total_ms" "$max_ms"
        rm -f "$tmp"
        exit 0
    }
    trap summary TERM INT
    next_at=${EPOCHREALTIME/[.,]/}
    while true; do
        if [[ -z "$token" ]]; then
            token="$(admin_login "$port")" || { token=""; failures=$((failures + 1)); }
        fi
        t0=${EPOCHREALTIME/[.,]/}
        pages=0 n=0 next="" res=0
        if [[ -n "$token" ]]; then
            while true; do
                read -r code _ < <(admin_get "$port" "$token" "$path${next:+&after=$next}" "$tmp")
                pages=$((pages + 1))
                if [[ $code != 200 ]]; then
                    res=$((res + 1))
                    [[ $code == 401 ]] && token=""
                    break
                fi
                n=$((n + $(grep -o '"client_id":' "$tmp" | wc -l)))
                next="$(admin_next "$tmp")"
                [[ -n "$next" ]] || break
            done
        fi
        t1=${EPOCHREALTIME/[.,]/}
        ms=$(((t1 - t0) / 1000))
        polls=$((polls + 1)) failures=$((failures + res)) items=$n
        total_ms=$((total_ms + ms))
        ((ms > max_ms)) && max_ms=$ms
        printf '%s pages=%s clients=%s ms=%s failed=%s\n' "$(date +%T)" "$pages" "$n" "$ms" "$res"
        next_at=$((next_at + 1000000))
        t1=${EPOCHREALTIME/[.,]/}
        if ((next_at > t1)); then
            n=$((next_at - t1))
            sleep "$((n / 1000000)).$(printf '%06d' $((n % 1000000)))" &
            wait $! || true
        else
            next_at=$t1
        fi
    done
}

# stop_broker PID: stops the admin poller and Prometheus if start_broker started them, then
# the broker: SIGTERM, then SIGKILL after 5 s; then removes the broker's scratch working
# directory (Tern's data/), if start_broker made one.
stop_broker() {
    local pid=$1 i
    if [[ -n "${ADMIN_POLL_PID:-}" ]]; then
        # The poller first, so that the broker's shutdown is not counted as its failures.
        kill "$ADMIN_POLL_PID" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            kill -0 "$ADMIN_POLL_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$ADMIN_POLL_PID" 2>/dev/null && kill -9 "$ADMIN_POLL_PID" 2>/dev/null
        wait "$ADMIN_POLL_PID" 2>/dev/null || true
        ADMIN_POLL_PID=""
    fi
    stop_prometheus  # before the broker too: its last scrapes would fail
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
