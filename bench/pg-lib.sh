# shellcheck shell=bash
# bench/pg-lib.sh: helpers for the benchmarks that run a private PostgreSQL cluster
# (bench/durable.sh, bench/persistent-pairs.sh). Expects REPO_DIR, BENCH_WORK (the cluster's
# data is $BENCH_WORK/pg), PG_ENV (scripts/postgres.sh's environment) and PG_URL (empty until
# the cluster runs); KEEP_PG=1 leaves the cluster running at pg_down.

# psql_q URL SQL: one query, unaligned tuples only, stop on error.
psql_q() { psql -X -q -t -A -v ON_ERROR_STOP=1 -d "$1" -c "$2" </dev/null; }
# with_db URL DB: URL with its database name replaced by DB.
with_db() { sed -E "s#^(postgres(ql)?://[^/]+)/[^?]*#\1/$2#" <<<"$1"; }
# pg_down: stops the private cluster if it was started (unless KEEP_PG=1).
pg_down() {
    if [[ -n "$PG_URL" && "${KEEP_PG:-0}" != 1 ]]; then
        env "${PG_ENV[@]}" "$REPO_DIR/scripts/postgres.sh" stop >/dev/null 2>&1 || true
    fi
}
# "pid ticks" (utime + stime) of every process of the private cluster.
pg_cpu_ticks() {
    local pm p
    pm="$(head -n 1 "$BENCH_WORK/pg/data/postmaster.pid" 2>/dev/null)" || return 0
    for p in $pm $(pgrep -P "$pm"); do
        awk -v p="$p" '{ sub(/.*\) /, ""); print p, $12 + $13 }' "/proc/$p/stat" 2>/dev/null || true
    done
}
# pg_cpu_pct BEFORE AFTER SECONDS: CPU % of one core used by all the cluster's processes
# between two pg_cpu_ticks snapshots (the broker's pooled connections take turns, so no single
# process stands out).
pg_cpu_pct() {
    local before=$1 after=$2 secs=$3 hz
    hz="$(getconf CLK_TCK)"
    awk -v secs="$secs" -v hz="$hz" 'NR == FNR { b[$1] = $2; next }
        { t += $2 - b[$1] }
        END { printf "%.0f", t / hz / secs * 100 }' \
        <(printf '%s\n' "$before") <(printf '%s\n' "$after")
}
