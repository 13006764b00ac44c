#!/usr/bin/env bash
# bench/tls.sh: TLS connect storms and idle TLS memory, Tern against Mosquitto on the same
# self-signed certificates. Not part of CI; about 2 minutes per round with the defaults.
#
#   bench/tls.sh                          # 3 rounds, 5,000 connections per storm
#   TLS_ROUNDS=5 TLS_N=10000 bench/tls.sh
#   TLS_BROKERS=tern TLS_MODES="idle" bench/tls.sh
#
# Every measurement starts a fresh broker with one TLS listener (broker on CPU 0, tern-bench on
# CPU 1 with one worker thread); the brokers take turns, the first one alternating by round.
# Modes (TLS_MODES):
#   full     TLS_N connections, TLS_CONCURRENCY in flight, no rate limit, server-authenticated
#            TLS 1.3; tern-bench keeps no sessions, so every handshake is a full one
#   resumed  the same with --tls-resume: the connections share one session store, so after the
#            first ones they resume with the tickets the broker handed out
#   mtls     full handshakes with a client certificate (Tern: client_certs = "required";
#            Mosquitto: require_certificate true)
#   idle     TLS_IDLE_N server-authenticated connections held: broker RSS growth per connection
#            (tern-bench conn's rss_per_conn_bytes, read 1 s after the last connect)
# A storm's rate is connections / time until the last CONNACK; its handshake latency is per
# connection from the TCP connect to CONNACK (TCP, TLS, CONNECT), p50 and p99. The storms keep
# their connections open until the last one is in, then close them all (--hold 0).
#
# Certificates (ECDSA P-256: a CA, a server certificate for localhost/127.0.0.1, a client
# certificate) are made with openssl in $BENCH_WORK/tls-certs. Tern runs with the admin API off
# and no database (database.url = "none"), Mosquitto with persistence off; both as shipped
# otherwise (Tern's jemalloc settings included; TLS_TERN_MALLOC_CONF sets _RJEM_MALLOC_CONF,
# e.g. dirty_decay_ms:0,muzzy_decay_ms:0 so that freed handshake memory leaves RSS at once).
#
# Environment: TERN_BIN, TERN_BENCH, MOSQUITTO_BIN (see lib.sh), TLS_PORT (18950), TLS_ROUNDS
# (3), TLS_N (5000), TLS_IDLE_N (5000), TLS_CONCURRENCY (200), TLS_SOURCE_IPS
# (127.0.0.1-127.0.0.20), TLS_BROKERS ("tern mosquitto"), TLS_MODES ("full resumed mtls idle"),
# TLS_BROKER_CPU (0), TLS_LOAD_CPU (1). Results: $BENCH_WORK/tls-results.tsv (one line per run)
# and the summary table (medians over the rounds) on stdout.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PORT="${TLS_PORT:-18950}"
ROUNDS="${TLS_ROUNDS:-3}"
N="${TLS_N:-5000}"
IDLE_N="${TLS_IDLE_N:-5000}"
CONC="${TLS_CONCURRENCY:-200}"
SOURCES="${TLS_SOURCE_IPS:-127.0.0.1-127.0.0.20}"
BROKERS="${TLS_BROKERS:-tern mosquitto}"
MODES="${TLS_MODES:-full resumed mtls idle}"
BROKER_CPU="${TLS_BROKER_CPU:-0}"
LOAD_CPU="${TLS_LOAD_CPU:-1}"
CERTS="$BENCH_WORK/tls-certs"
RESULTS="$BENCH_WORK/tls-results.tsv"

for b in $BROKERS; do
    case "$b" in
        tern) ensure_tern || die "cannot build tern (release)" ;;
        mosquitto) ensure_mosquitto ;;
        *) die "unknown broker $b (tern, mosquitto)" ;;
    esac
done
ensure_tern_bench
command -v openssl > /dev/null || die "openssl is needed for the certificates"
command -v jq > /dev/null || die "jq is needed to read tern-bench's JSON"
need=$((N > IDLE_N ? N : IDLE_N))
ulimit -n $((need + 1024)) 2> /dev/null || die "cannot raise the open-files limit to $((need + 1024))"

PID=""
RUN_DIR=""
cleanup() {
    [[ -n "$PID" ]] && kill "$PID" 2> /dev/null && wait "$PID" 2> /dev/null
    [[ -n "$RUN_DIR" ]] && rm -rf "$RUN_DIR"
    return 0
}
trap cleanup EXIT

# make_certs: CA, server (localhost, 127.0.0.1) and client certificates, ECDSA P-256.
make_certs() {
    mkdir -p "$CERTS"
    [[ -f "$CERTS/client.pem" ]] && return 0
    (
        cd "$CERTS"
        openssl ecparam -name prime256v1 -genkey -noout -out ca.key
        openssl req -x509 -new -key ca.key -sha256 -days 365 -subj "/CN=Tern bench CA" \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.pem
        for who in server client; do
            openssl ecparam -name prime256v1 -genkey -noout -out "$who.key.ec"
            # PKCS#8: what both brokers read.
            openssl pkcs8 -topk8 -nocrypt -in "$who.key.ec" -out "$who.key"
            # Mosquitto started as root reads it as the user it drops to.
            chmod 644 "$who.key"
            openssl req -new -key "$who.key" -subj "/CN=bench-$who" -out "$who.csr"
        done
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' > server.ext
        printf 'extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n' > client.ext
        for who in server client; do
            openssl x509 -req -in "$who.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 365 -sha256 \
                -extfile "$who.ext" -out "$who.pem"
        done
    ) > "$BENCH_WORK/tls-certs.log" 2>&1 || die "openssl failed: $(tail -3 "$BENCH_WORK/tls-certs.log")"
}

# start BROKER MTLS(0|1): a fresh broker with one TLS listener on 127.0.0.1:PORT, on BROKER_CPU.
start() {
    local broker=$1 mtls=$2 cfg logf="$BENCH_WORK/tls-$1.log"
    port_free "$PORT" || die "port $PORT is already in use"
    case "$broker" in
        tern)
            RUN_DIR="$(mktemp -d "$BENCH_WORK/tern-tls.XXXXXX")"
            cfg="$RUN_DIR/tern.toml"
            {
                printf 'allow_anonymous = true\n\n[[listeners]]\nname = "tls"\nkind = "tls"\n'
                printf 'bind = "127.0.0.1:%s"\ncert_file = "%s"\nkey_file = "%s"\n' "$PORT" "$CERTS/server.pem" "$CERTS/server.key"
                ((mtls)) && printf 'ca_file = "%s"\nclient_certs = "required"\n' "$CERTS/ca.pem"
            } > "$cfg"
            local env=(RUST_LOG=warn NO_COLOR=1 TERN_ADMIN__ENABLED=false TERN_DATABASE__URL=none)
            [[ -n "${TLS_TERN_MALLOC_CONF:-}" ]] && env+=(_RJEM_MALLOC_CONF="$TLS_TERN_MALLOC_CONF")
            (cd "$RUN_DIR" && exec env "${env[@]}" taskset -c "$BROKER_CPU" "$TERN_BIN" serve --config "$cfg") > "$logf" 2>&1 &
            ;;
        mosquitto)
            cfg="$BENCH_WORK/mosquitto-tls.conf"
            {
                printf 'listener %s 127.0.0.1\ncertfile %s\nkeyfile %s\n' "$PORT" "$CERTS/server.pem" "$CERTS/server.key"
                ((mtls)) && printf 'cafile %s\nrequire_certificate true\n' "$CERTS/ca.pem"
                printf 'allow_anonymous true\nmax_connections -1\npersistence false\nlog_dest none\n'
            } > "$cfg"
            taskset -c "$BROKER_CPU" "$MOSQUITTO_BIN" -c "$cfg" > "$logf" 2>&1 &
            ;;
    esac
    PID=$!
    wait_port "$PORT" 20 || die "$broker did not listen on $PORT: $(tail -5 "$logf")"
    sleep 0.5 # start-up work (and its allocations) out of the way
    kill -0 "$PID" 2> /dev/null || die "$broker exited after start: $(tail -5 "$logf")"
}

stop() {
    if [[ -n "$PID" ]]; then
        kill "$PID" 2> /dev/null || true
        wait "$PID" 2> /dev/null || true
        PID=""
    fi
    [[ -n "$RUN_DIR" ]] && rm -rf "$RUN_DIR"
    RUN_DIR=""
}

# measure ROUND BROKER MODE: one run, one line appended to RESULTS.
measure() {
    local round=$1 broker=$2 mode=$3 mtls=0 count=$N hold=0 extra=() out
    case "$mode" in
        full) ;;
        resumed) extra+=(--tls-resume) ;;
        mtls) mtls=1 extra+=(--tls-cert "$CERTS/client.pem" --tls-key "$CERTS/client.key") ;;
        idle) count=$IDLE_N hold=3 ;;
        *) die "unknown mode $mode (full, resumed, mtls, idle)" ;;
    esac
    start "$broker" "$mtls"
    out="$BENCH_WORK/tls-$broker-$mode-$round.json"
    taskset -c "$LOAD_CPU" "$TERN_BENCH" conn -p "$PORT" --host 127.0.0.1 --tls --tls-ca "$CERTS/ca.pem" \
        --tls-server-name localhost "${extra[@]}" -c "$count" --connect-concurrency "$CONC" --connect-rate 0 \
        --hold "$hold" --source-ips "$SOURCES" --workers 1 --interval 0 --broker-pid "$PID" \
        --client-id-prefix "tls-$round-$mode" > "$out" 2> "$out.log" || log "warning: $broker $mode round $round: $(grep -E 'error|FAILED' "$out.log" | head -2)"
    stop
    jq -r --arg r "$round" --arg b "$broker" --arg m "$mode" \
        '[$r, $b, $m, (.connect.connected // 0), (.connect.rate_per_s // "?"), (.connect.handshake_ms.p50 // "?"),
          (.connect.handshake_ms.p99 // "?"), (.connect.tls_full_handshakes // "?"),
          (.connect.tls_resumed_handshakes // "?"), (.broker.rss_per_conn_bytes // "?")] | @tsv' "$out" >> "$RESULTS" \
        || printf '%s\t%s\t%s\t0\t?\t?\t?\t?\t?\t?\n' "$round" "$broker" "$mode" >> "$RESULTS"
    log "$(tail -1 "$RESULTS")"
}

make_certs
printf 'round\tbroker\tmode\tconnected\tconn_per_s\tp50_ms\tp99_ms\tfull\tresumed\trss_per_conn_b\n' > "$RESULTS"
log "TLS bench: $ROUNDS rounds, storms of $N ($CONC in flight), $IDLE_N idle; brokers: $BROKERS; modes: $MODES"
read -r -a order <<< "$BROKERS"
for ((r = 1; r <= ROUNDS; r++)); do
    for mode in $MODES; do
        brokers=("${order[@]}")
        if ((r % 2 == 0)); then
            brokers=()
            for ((i = ${#order[@]} - 1; i >= 0; i--)); do brokers+=("${order[i]}"); done
        fi
        for b in "${brokers[@]}"; do
            measure "$r" "$b" "$mode"
        done
    done
done

# Medians over the rounds.
python3 - "$RESULTS" "$N" "$IDLE_N" <<'EOF'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])][1:]
def med(vals):
    v = [float(x) for x in vals if x not in ("?", "")]
    return statistics.median(v) if v else None
def fmt(v, spec):
    return "?" if v is None else format(v, spec)
print(f"\nTLS connect storms ({sys.argv[2]} connections) and idle TLS connections ({sys.argv[3]}): medians of {len({r[0] for r in rows})} rounds")
print(f"{'mode':<9} {'broker':<10} {'handshakes/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'resumed':>9} {'idle B/conn':>11}")
for mode in dict.fromkeys(r[2] for r in rows):
    for broker in dict.fromkeys(r[1] for r in rows):
        sel = [r for r in rows if r[1] == broker and r[2] == mode]
        if not sel:
            continue
        resumed = med(r[8] for r in sel)
        res = [f"{resumed:.0f}/{med(r[3] for r in sel):.0f}"] if resumed is not None else []
        if mode == "idle":
            print(f"{mode:<9} {broker:<10} {'':>12} {'':>8} {'':>8} {'':>9} {fmt(med(r[9] for r in sel), '.0f'):>11}")
        else:
            print(f"{mode:<9} {broker:<10} {fmt(med(r[4] for r in sel), '.0f'):>12} {fmt(med(r[5] for r in sel), '.2f'):>8} "
                  f"{fmt(med(r[6] for r in sel), '.2f'):>8} {res[0] if res else '?':>9}")
EOF
