#!/usr/bin/env bash
# scripts/test.sh: THE command that runs Tern's whole test suite (CI runs exactly this via .ci/run).
#
# On a fresh Debian 12 machine with the Rust toolchain it installs what the tests need
# (quickly skipped when already there), then runs, stopping at the first failure:
#   fmt      cargo fmt --all -- --check
#   clippy   cargo clippy --workspace --all-targets -- -D warnings
#   ui       the admin web UI (web-admin/): npm ci, typecheck, unit tests (node:test), production
#            build (web-admin/dist, embedded by the build step), bundle size (gzip)
#   build    cargo build -p tern-server           (target/debug/tern, used by the e2e tests)
#   cargo    cargo nextest run --workspace + doc tests (plain `cargo test` if nextest is absent)
#   pytest   pytest tests/python -q               (interop tests: paho-mqtt, mosquitto clients)
#   observability  pytest tests/observability -q  (tern's /metrics after a known workload, and
#            promtool on it; Grafana dashboard, Prometheus config, alerts and their promtool
#            unit tests, Docker Compose stack; a real Prometheus scrapes tern and a stand-in
#            of /metrics. No Docker engine needed)
#   e2e      browser tests of the UI against target/debug/tern (web-admin/e2e/run.mjs:
#            playwright-core driving Debian's chromium headless, mosquitto clients as devices);
#            screenshots, first-render time and bundle size in web-admin/e2e/out/
#
# The ui and e2e steps need Node.js >= 20 with npm (playwright-core's minimum; the UI build
# itself needs 18: Debian 13's apt nodejs is installed here when missing, Debian 12's is 18:
# use NodeSource's nodejs 20.x or newer) and, for e2e, apt's chromium (installed here).
#
# Usage: scripts/test.sh [STEP...]     e.g. `scripts/test.sh pytest` runs setup + pytest only.
# Env:   TERN_TEST_KEEP_GOING=1        run the remaining steps after a failure (still exits 1)
#        TERN_TEST_SKIP_SETUP=1        don't install anything (apt packages / Python venv)
#        TERN_BIN=/path/to/tern        binary for the Python tests (default: target/debug/tern)
#        PYTHON=python3.11             interpreter used to create .venv (default: python3)
#        PYTEST_ADDOPTS="-k will"      extra pytest options (pytest's own variable)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# This script's own knobs are read once and unset, so the broker processes the tests start
# never see them. tern refuses unknown TERN_* variables at start (naming the closest key), but
# the names this script and the harnesses use are reserved for tooling and accepted: TERN_BIN,
# TERN_BENCH and the prefixes TERN_TEST_, TERN_E2E_, TERN_PYTEST_, TERN_PG_, TERN_BENCH_
# (crates/tern-server/src/config.rs; docs/configuration.md). Keep new knobs under them.
KEEP_GOING="${TERN_TEST_KEEP_GOING:-0}"
SKIP_SETUP="${TERN_TEST_SKIP_SETUP:-0}"
TERN_BIN_OVERRIDE="${TERN_BIN:-}"
unset TERN_TEST_KEEP_GOING TERN_TEST_SKIP_SETUP TERN_BIN

# ui before build: the binary embeds web-admin/dist at compile time.
ALL_STEPS=(fmt clippy ui build cargo pytest observability e2e)
# mosquitto: reference broker for test self-checks; prometheus: promtool and a real Prometheus
# for the observability step; nats-server: the NATS cluster of the clustering tests
# (tests/src/nats.rs) and the config check of docker/nats/.
APT_PACKAGES=(mosquitto-clients mosquitto prometheus nats-server)
VENV="$ROOT/.venv"
PY_REQUIREMENTS="$ROOT/tests/python/requirements.txt"
PYTHON="${PYTHON:-python3}"
NEXTEST_CONFIG="$ROOT/.ci/nextest.toml"
UI_DIR="$ROOT/web-admin"
NODE_MIN=20.0 # playwright-core's minimum (Vite 6 needs 18)
CHROMIUM=/usr/bin/chromium
LOG_DIR="$(mktemp -d "${TMPDIR:-/tmp}/tern-test.XXXXXX")"

STEP_NAMES=()
STEP_RESULTS=()
STEP_SECONDS=()
FAILED_STEPS=()
TESTS_PASSED=0
TESTS_FAILED=0
TESTS_SKIPPED=0
START_TIME=$SECONDS
CURRENT_STEP="start"
BUILD_OK=unknown # 0 once the build step failed (pytest then refuses a stale binary)

# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

if [ -t 1 ]; then
  BOLD=$'\e[1m' RED=$'\e[31m' GREEN=$'\e[32m' YELLOW=$'\e[33m' RESET=$'\e[0m'
  export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-always}"
  PYTEST_COLOR=(--color=yes)
  FMT_COLOR=always
else
  BOLD='' RED='' GREEN='' YELLOW='' RESET=''
  PYTEST_COLOR=()
  FMT_COLOR=never
fi

say() { printf '%s==>%s %s\n' "$BOLD" "$RESET" "$*"; }
warn() { printf '%swarning:%s %s\n' "$YELLOW" "$RESET" "$*" >&2; }
die() {
  printf '\n%serror:%s %s\n' "$RED" "$RESET" "$*" >&2
  exit 1
}

# Run a command as root: directly when we are root, else through non-interactive sudo.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo -n "$@" || die "'sudo -n $*' failed (no passwordless sudo?). Run it by hand, then retry."
  else
    die "need root to run '$*' and sudo is not installed. Run it as root, then retry."
  fi
}

strip_ansi() { sed -e 's/\x1b\[[0-9;]*[A-Za-z]//g'; }

# Sum of the numbers N in "N <word>" for the given words (a regex alternation) in some text.
sum_counts() {
  local total=0 n
  for n in $(grep -oE "[0-9]+ ($2)" <<<"$1" | grep -oE '^[0-9]+' || true); do
    total=$((total + n))
  done
  echo "$total"
}

# Add up test counts from a runner's log (the closing lines of nextest, cargo test, pytest).
count_tests() {
  local kind=$1 log=$2 text=""
  case "$kind" in
    nextest) # "     Summary [   4.013s] 12 tests run: 11 passed, 1 timed out, 1 skipped"
      text="$(strip_ansi <"$log" | grep -E '^ *Summary \[' | tail -n1 || true)" ;;
    cargo) # "test result: ok. 3 passed; 0 failed; 1 ignored; ..." once per test binary
      text="$(strip_ansi <"$log" | grep -E '^test result: ' || true)" ;;
    pytest) # "1 failed, 67 passed, 3 skipped in 16.65s"
      text="$(strip_ansi <"$log" | grep -E '[0-9]+ (passed|failed|errors?|skipped|deselected).* in [0-9.]+s' | tail -n1 || true)" ;;
    node) # node --test's closing lines: "ℹ pass 41", "ℹ fail 0", "ℹ cancelled 0", "ℹ skipped 0", "ℹ todo 0"
      text="$(strip_ansi <"$log" | grep -E '^[^ ]+ (pass|fail|cancelled|skipped|todo) [0-9]+$' \
        | sed -E 's/^[^ ]+ pass ([0-9]+)$/\1 passed/; s/^[^ ]+ (fail|cancelled) ([0-9]+)$/\2 failed/;
                  s/^[^ ]+ (skipped|todo) ([0-9]+)$/\2 skipped/' || true)" ;;
    e2e) # web-admin/e2e/run.mjs: "e2e: 28 passed, 0 failed, 0 skipped"
      text="$(strip_ansi <"$log" | grep -E '^e2e: [0-9]+ passed' | tail -n1 || true)" ;;
  esac
  TESTS_PASSED=$((TESTS_PASSED + $(sum_counts "$text" 'passed')))
  TESTS_FAILED=$((TESTS_FAILED + $(sum_counts "$text" 'failed|timed out|errors?')))
  TESTS_SKIPPED=$((TESTS_SKIPPED + $(sum_counts "$text" 'skipped|ignored')))
}

# run_step NAME FUNCTION: time it, record the result, stop at the first failure.
# NB: bash ignores `set -e` inside a function called as `fn || ...`, so every step function
# checks its own commands (`|| return`, or die).
run_step() {
  local name=$1 fn=$2 t0=$SECONDS rc=0
  CURRENT_STEP=$name
  printf '\n%s==> [%s]%s\n' "$BOLD" "$name" "$RESET"
  "$fn" || rc=$?
  STEP_NAMES+=("$name")
  STEP_SECONDS+=($((SECONDS - t0)))
  if [ "$rc" -eq 0 ]; then
    STEP_RESULTS+=("ok")
  else
    STEP_RESULTS+=("FAILED (exit $rc)")
    FAILED_STEPS+=("$name")
    printf '%s==> [%s] FAILED (exit %s)%s\n' "$RED" "$name" "$rc" "$RESET" >&2
    if [ "$KEEP_GOING" != 1 ]; then
      exit 1
    fi
  fi
}

print_summary() {
  local i
  printf '\n%s==> summary%s (%ss total)\n' "$BOLD" "$RESET" "$((SECONDS - START_TIME))"
  for i in "${!STEP_NAMES[@]}"; do
    printf '    %-13s %-20s %4ss\n' "${STEP_NAMES[$i]}" "${STEP_RESULTS[$i]}" "${STEP_SECONDS[$i]}"
  done
}

cleanup() {
  local rc=$?
  stop_postgres || true
  print_summary
  if [ "$rc" -eq 0 ] && [ ${#FAILED_STEPS[@]} -eq 0 ]; then
    rm -rf "$LOG_DIR"
    printf '%sall steps passed%s\n' "$GREEN" "$RESET"
    if [ $((TESTS_PASSED + TESTS_FAILED)) -gt 0 ]; then
      # The plain closing line: every test counted by cargo/nextest and pytest.
      printf 'tests: %d passed, %d failed, %d skipped\n' "$TESTS_PASSED" "$TESTS_FAILED" "$TESTS_SKIPPED"
    fi
  else
    printf '%sFAILED%s: %s (runner logs kept in %s)\n' "$RED" "$RESET" \
      "${FAILED_STEPS[*]:-$CURRENT_STEP}" "$LOG_DIR" >&2
    [ "$rc" -ne 0 ] || rc=1
  fi
  exit "$rc"
}

# ---------------------------------------------------------------------------------------------
# setup: system packages, Python venv
# ---------------------------------------------------------------------------------------------

ensure_rust() {
  command -v cargo >/dev/null 2>&1 || die "cargo not found: install the Rust toolchain (rustup) first."
  cargo fmt --version >/dev/null 2>&1 || die "rustfmt missing: rustup component add rustfmt"
  cargo clippy --version >/dev/null 2>&1 || die "clippy missing: rustup component add clippy"
}

pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# The steps this run asked for include one of the arguments.
wants_step() {
  local s
  for s in "$@"; do
    case " ${REQUESTED_STEPS[*]} " in *" $s "*) return 0 ;; esac
  done
  return 1
}

# Whether "$1" (a version such as 20.19.2 or 20.19.2+dfsg-1) is at least "$2" (major.minor).
version_at_least() {
  local have=${1%%[!0-9.]*} a b x y
  IFS=. read -r a b _ <<<"$have"
  IFS=. read -r x y _ <<<"$2"
  [ -n "$a" ] || return 1
  [ "${a:-0}" -gt "$x" ] || { [ "${a:-0}" -eq "$x" ] && [ "${b:-0}" -ge "$y" ]; }
}

node_ok() {
  command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 \
    && version_at_least "$(node -p process.versions.node 2>/dev/null)" "$NODE_MIN"
}

node_missing_message() {
  local have="none"
  ! command -v node >/dev/null 2>&1 || have="$(node --version 2>/dev/null)"
  command -v npm >/dev/null 2>&1 || have="$have, no npm"
  printf '%s' "the ui and e2e steps need Node.js >= $NODE_MIN with npm (found: $have). Debian 13: \
apt-get install nodejs npm. Debian 12 ships Node 18 (enough for scripts/run.sh, not for the browser tests): install NodeSource's nodejs 20.x or 22.x \
(https://github.com/nodesource/distributions), or put any Node >= $NODE_MIN on the PATH."
}

ensure_apt_packages() {
  local wanted=("${APT_PACKAGES[@]}") missing=() p need_node=0 candidate
  if wants_step e2e; then
    wanted+=(chromium)
  fi
  if wants_step ui e2e && ! node_ok; then
    need_node=1
  fi
  # A Python that can make venvs (Debian's python3 needs python3-venv for ensurepip).
  if ! command -v "$PYTHON" >/dev/null 2>&1; then
    wanted+=(python3 python3-venv)
  elif ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    wanted+=(python3-venv)
  fi
  if ! command -v dpkg-query >/dev/null 2>&1; then
    for p in mosquitto_pub mosquitto_sub stdbuf promtool prometheus; do
      command -v "$p" >/dev/null 2>&1 || die "not a Debian system and '$p' is missing: install mosquitto-clients and prometheus by hand."
    done
    [ "$need_node" = 0 ] || die "not a Debian system and $(node_missing_message)"
    if wants_step e2e && [ ! -x "$CHROMIUM" ]; then
      die "not a Debian system and $CHROMIUM is missing: install chromium (or run without the e2e step)."
    fi
    return 0
  fi
  for p in "${wanted[@]}"; do
    pkg_installed "$p" || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ] && [ "$need_node" = 0 ]; then
    say "apt packages present: ${wanted[*]}"
    return 0
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -qq \
    || die "apt-get update failed"
  if [ "$need_node" = 1 ]; then
    # Only a nodejs new enough for playwright-core: Debian 13's is; Debian 12's (18.x) is not.
    candidate="$(apt-cache policy nodejs 2>/dev/null | awk '/Candidate:/ { print $2 }')"
    version_at_least "${candidate#*:}" "$NODE_MIN" || die "$(node_missing_message) (apt's nodejs: ${candidate:-none})"
    missing+=(nodejs)
    command -v npm >/dev/null 2>&1 || missing+=(npm)
  fi
  say "installing apt packages: ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
    --no-install-recommends "${missing[@]}" || die "apt-get install ${missing[*]} failed"
}

ensure_python_venv() {
  local stamp="$VENV/.tern-requirements.sha256" want have=""
  command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found"
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$PYTHON is older than 3.11 (schemathesis needs 3.11): set PYTHON=/path/to/python3.11+"
  # Serialise venv changes between concurrent runs in the same checkout.
  if command -v flock >/dev/null 2>&1; then
    exec 9>"${TMPDIR:-/tmp}/tern-venv-$(id -u)-$(printf '%s' "$ROOT" | cksum | cut -d' ' -f1).lock" \
      || die "cannot open the venv lock file"
    flock 9 || die "cannot lock the venv lock file"
  fi
  # A venv whose interpreter no longer runs (moved/removed Python) is rebuilt from scratch.
  if [ -e "$VENV" ] && ! "$VENV/bin/python" -c 'pass' >/dev/null 2>&1; then
    warn "$VENV is broken: recreating it"
    rm -rf "$VENV" || die "cannot remove $VENV"
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating Python venv at .venv ($("$PYTHON" --version 2>&1))"
    "$PYTHON" -m venv "$VENV" || die "could not create $VENV with $PYTHON"
  fi
  want="$( (cat "$PY_REQUIREMENTS" && "$VENV/bin/python" -VV) | sha256sum | cut -d' ' -f1)" \
    || die "cannot read $PY_REQUIREMENTS"
  [ ! -f "$stamp" ] || have="$(cat "$stamp")"
  if [ "$want" = "$have" ] && "$VENV/bin/python" -c 'import paho.mqtt, pytest, pytest_timeout, schemathesis' >/dev/null 2>&1; then
    say "Python venv up to date (.venv)"
  else
    say "installing Python test dependencies into .venv"
    PIP_NO_INPUT=1 "$VENV/bin/python" -m pip install --disable-pip-version-check -q \
      -r "$PY_REQUIREMENTS" || die "pip install -r tests/python/requirements.txt failed"
    printf '%s\n' "$want" >"$stamp" || die "cannot write $stamp"
  fi
  if command -v flock >/dev/null 2>&1; then
    exec 9>&-
  fi
}

check_tools() {
  local t
  for t in mosquitto_pub mosquitto_sub stdbuf promtool prometheus; do
    command -v "$t" >/dev/null 2>&1 || die "'$t' not found after setup"
  done
  if wants_step ui e2e; then
    node_ok || die "$(node_missing_message)"
  fi
  if wants_step e2e; then
    [ -x "$CHROMIUM" ] || die "$CHROMIUM not found after setup (apt-get install chromium)"
  fi
}

# Free space where the build writes, in GiB (rounded down).
free_gib() { df -Pk "$1" 2>/dev/null | awk 'NR == 2 { print int($4 / 1048576) }'; }

# A full build of the test binaries needs ~6 GiB (measured: docs/testing.md); a disk that fills
# mid-build fails with rustc's "No space left on device" deep in a log, so say it up front.
check_disk() {
  local dir free
  dir="$TARGET_DIR"
  [ -d "$dir" ] || dir="$ROOT"
  free="$(free_gib "$dir")"
  [ -n "$free" ] || return 0
  say "free disk at $dir: ${free} GiB"
  if [ "$free" -lt "${TERN_TEST_MIN_FREE_GIB:-4}" ]; then
    die "only ${free} GiB free at $dir; the build needs several GiB (cargo clean an old target dir, or set TERN_TEST_MIN_FREE_GIB)"
  fi
}

setup() {
  ensure_rust
  # CI builds once in a fresh clone: incremental state would only cost disk and time there.
  if [ "${CI:-}" = true ]; then
    export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
  fi
  if [ "$SKIP_SETUP" = 1 ]; then
    say "TERN_TEST_SKIP_SETUP=1: not installing anything"
  else
    ensure_apt_packages
    ensure_python_venv
  fi
  check_tools
  [ -x "$VENV/bin/python" ] || die ".venv is missing: run without TERN_TEST_SKIP_SETUP=1"
  TARGET_DIR="$(cargo metadata --format-version 1 --no-deps 2>/dev/null \
    | "$VENV/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')" \
    || die "cargo metadata failed"
  TERN_BIN_PATH="${TERN_BIN_OVERRIDE:-$TARGET_DIR/debug/tern}"
  check_disk
}

# ---------------------------------------------------------------------------------------------
# services needed by the tests
# ---------------------------------------------------------------------------------------------

# PostgreSQL 15: a throwaway cluster (scripts/postgres.sh) for the storage story tests and the
# durability tests, which FAIL in CI without it (they never skip). Its URL reaches the tests as
# TERN_TEST_POSTGRES_URL; the test harnesses strip TERN_* before starting tern, and tern itself
# accepts (and ignores) TERN_TEST_* as a reserved tooling prefix.
PG_STARTED=0
start_postgres() {
  case " ${REQUESTED_STEPS[*]} " in
    *" cargo "*) ;;
    *) return 0 ;; # only the Rust tests use it
  esac
  say "starting a throwaway PostgreSQL 15 cluster"
  local env
  env="$("$ROOT/scripts/postgres.sh" start)" || die "could not start PostgreSQL (scripts/postgres.sh)"
  eval "$env"
  [ -n "${TERN_TEST_POSTGRES_URL:-}" ] || die "scripts/postgres.sh did not print TERN_TEST_POSTGRES_URL"
  export TERN_TEST_POSTGRES_URL
  PG_STARTED=1
}

stop_postgres() {
  if [ "$PG_STARTED" = 1 ]; then
    "$ROOT/scripts/postgres.sh" stop >/dev/null 2>&1 || true
  fi
}

# ---------------------------------------------------------------------------------------------
# steps
# ---------------------------------------------------------------------------------------------

step_fmt() {
  cargo fmt --all -- --check --color "$FMT_COLOR" || return
}

step_clippy() {
  cargo clippy --workspace --all-targets -- -D warnings || return
}

# web-admin/node_modules from package-lock.json: `npm ci` when it is missing or older than the
# lock file (always in CI, where the checkout is fresh anyway).
ensure_node_modules() {
  if [ "${CI:-}" = true ] || [ ! -d "$UI_DIR/node_modules" ] || [ "$UI_DIR/package-lock.json" -nt "$UI_DIR/node_modules" ]; then
    say "npm ci (web-admin)"
    (cd "$UI_DIR" && npm ci --no-audit --no-fund) || return
    touch "$UI_DIR/node_modules"
  else
    say "web-admin/node_modules up to date"
  fi
}

# The admin web UI: typecheck, unit tests, production build (embedded by the build step), and
# the size of what the browser downloads.
step_ui() {
  local log="$LOG_DIR/ui-test.log" rc=0 f raw gz total_raw=0 total_gz=0
  ensure_node_modules || return
  (cd "$UI_DIR" && npm run typecheck) || return
  (cd "$UI_DIR" && npm test) 2>&1 | tee "$log" || rc=$?
  count_tests node "$log"
  [ "$rc" -eq 0 ] || return "$rc"
  (cd "$UI_DIR" && npm run build) || return
  say "bundle size (web-admin/dist/assets; gzip -9 is the usual measure: tern serves them uncompressed, cached for a year):"
  for f in "$UI_DIR"/dist/assets/*.js "$UI_DIR"/dist/assets/*.css; do
    [ -f "$f" ] || continue
    raw=$(wc -c <"$f")
    gz=$(gzip -9 -c "$f" | wc -c)
    total_raw=$((total_raw + raw))
    total_gz=$((total_gz + gz))
    printf '    %-36s %8d bytes  %7d gzip\n' "${f##*/}" "$raw" "$gz"
  done
  printf '    %-36s %8d bytes  %7d gzip\n' "total" "$total_raw" "$total_gz"
}

step_build() {
  BUILD_OK=0
  cargo build -p tern-server || return
  BUILD_OK=1
  if [ ! -x "$TERN_BIN_PATH" ]; then
    echo "expected the tern binary at $TERN_BIN_PATH after the build" >&2
    return 1
  fi
}

step_cargo() {
  local log="$LOG_DIR/cargo-test.log" doclog="$LOG_DIR/cargo-doctest.log" rc=0
  if cargo nextest --version >/dev/null 2>&1; then
    # .ci/nextest.toml: per-test timeout, so a hung test fails instead of eating CI's budget.
    cargo nextest run --workspace --no-tests=warn \
      --tool-config-file "tern-ci:$NEXTEST_CONFIG" 2>&1 | tee "$log" || rc=$?
    count_tests nextest "$log"
    [ "$rc" -eq 0 ] || return "$rc"
    # nextest does not run doc tests.
    cargo test --workspace --doc 2>&1 | tee "$doclog" || rc=$?
    count_tests cargo "$doclog"
  else
    warn "cargo-nextest not installed: using plain cargo test"
    cargo test --workspace 2>&1 | tee "$log" || rc=$?
    count_tests cargo "$log"
  fi
  return "$rc"
}

step_pytest() {
  local log="$LOG_DIR/pytest.log" rc=0
  if [ "$BUILD_OK" = 0 ]; then
    echo "not running pytest: the build step failed, $TERN_BIN_PATH would be stale" >&2
    return 1
  fi
  say "pytest against TERN_BIN=$TERN_BIN_PATH"
  TERN_BIN="$TERN_BIN_PATH" "$VENV/bin/python" -m pytest tests/python -q "${PYTEST_COLOR[@]}" 2>&1 \
    | tee "$log" || rc=$?
  count_tests pytest "$log"
  if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests (exit 5): tests/python is misconfigured" >&2
  fi
  return "$rc"
}

# tern's /metrics, the dashboard, alerts, Prometheus config and the Compose stack
# (tests/observability), against the binary the build step made.
step_observability() {
  local log="$LOG_DIR/observability.log" rc=0
  if [ "$BUILD_OK" = 0 ]; then
    echo "not running the observability tests: the build step failed, $TERN_BIN_PATH would be stale" >&2
    return 1
  fi
  # No plugin autoload: schemathesis' and hypothesis' plugins (tests/python) cost 5 s to load.
  TERN_BIN="$TERN_BIN_PATH" PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 "$VENV/bin/python" -m pytest \
    -p pytest_timeout tests/observability -q "${PYTEST_COLOR[@]}" 2>&1 | tee "$log" || rc=$?
  count_tests pytest "$log"
  if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests (exit 5): tests/observability is misconfigured" >&2
  fi
  return "$rc"
}

# Browser tests of the UI against the binary the build step made (web-admin/e2e/run.mjs).
step_e2e() {
  local log="$LOG_DIR/e2e.log" rc=0
  if [ "$BUILD_OK" = 0 ]; then
    echo "not running the browser tests: the build step failed, $TERN_BIN_PATH would be stale" >&2
    return 1
  fi
  ensure_node_modules || return
  TERN_BIN="$TERN_BIN_PATH" TERN_E2E_CHROMIUM="$CHROMIUM" node "$UI_DIR/e2e/run.mjs" 2>&1 | tee "$log" || rc=$?
  count_tests e2e "$log"
  return "$rc"
}

# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------

main() {
  local steps=("$@") s
  [ ${#steps[@]} -gt 0 ] || steps=("${ALL_STEPS[@]}")
  for s in "${steps[@]}"; do
    case " ${ALL_STEPS[*]} " in
      *" $s "*) ;;
      *) die "unknown step '$s' (steps: ${ALL_STEPS[*]})" ;;
    esac
  done
  trap cleanup EXIT
  REQUESTED_STEPS=("${steps[@]}")

  run_step setup setup
  start_postgres
  for s in "${steps[@]}"; do
    run_step "$s" "step_$s"
  done
}

main "$@"
