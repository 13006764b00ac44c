#!/usr/bin/env bash
# scripts/run.sh: build the admin web UI (when needed) and Tern (release), and run the broker.
#   scripts/run.sh                             -> broker on 127.0.0.1:1883, admin API and UI on
#                                                 http://127.0.0.1:8080/
#   scripts/run.sh --mqtt-addr 127.0.0.1:18830 -> arguments go to `tern serve`
#
# The UI (web-admin/) is embedded in the binary at compile time from web-admin/dist. It is
# rebuilt (`npm ci` when node_modules is missing or older than package-lock.json, then
# `npm run build`) when dist is missing or older than any of its sources. That needs Node.js
# >= 18 with npm (Debian 12's own `nodejs npm`, installed here with apt when missing).
# TERN_NO_UI=1 builds the binary without rebuilding the UI instead (it embeds web-admin/dist as
# it is, or, with no dist, serves a page at / saying how to build the UI; the admin API works
# either way).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# This script's own knob: read once and unset, since tern refuses unknown TERN_* variables.
NO_UI="${TERN_NO_UI:-0}"
unset TERN_NO_UI

UI=web-admin
NODE_MIN=18.0 # Vite 6's minimum

# Whether dist is missing or older than anything it is built from.
ui_stale() {
  local stamp="$UI/dist/index.html"
  [ -f "$stamp" ] || return 0
  [ -n "$(find "$UI/src" "$UI/index.html" "$UI"/package*.json "$UI/vite.config.ts" \
    "$UI"/tsconfig*.json -newer "$stamp" -print -quit 2>/dev/null)" ]
}

no_node() {
  cat >&2 <<EOF
error: the admin web UI (web-admin/) needs to be built, and $1.
  Install Node.js >= $NODE_MIN with npm (Debian 12 and later: sudo apt-get install nodejs npm),
  or put any Node >= $NODE_MIN on the PATH, then run this again.
  Or build without it: TERN_NO_UI=1 scripts/run.sh (the binary then embeds web-admin/dist as
  it is, or serves a page at / saying how to build the UI; the admin API works either way).
EOF
  exit 1
}

build_ui() {
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
      echo "==> installing nodejs and npm (apt) to build the admin web UI" >&2
      local sudo=()
      [ "$(id -u)" = 0 ] || sudo=(sudo)
      DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q nodejs npm >&2 \
        || no_node "installing nodejs and npm with apt failed"
    else
      no_node "node or npm is not installed"
    fi
  fi
  local v
  v="$(node -p 'process.versions.node')"
  if ! node -e "const [a,b]=process.versions.node.split('.').map(Number),[x,y]='$NODE_MIN'.split('.').map(Number);process.exit(a>x||(a===x&&b>=y)?0:1)"; then
    no_node "node is $v"
  fi
  if [ ! -d "$UI/node_modules" ] || [ "$UI/package-lock.json" -nt "$UI/node_modules" ]; then
    echo "==> npm ci (web-admin)" >&2
    (cd "$UI" && npm ci --no-audit --no-fund) || exit 1
    touch "$UI/node_modules"
  fi
  echo "==> npm run build (web-admin)" >&2
  (cd "$UI" && npm run build) || exit 1
}

if ui_stale; then
  if [ "$NO_UI" = 1 ]; then
    echo "warning: TERN_NO_UI=1: not building the admin web UI (web-admin/dist is missing or stale)" >&2
  else
    build_ui
  fi
fi

cargo build --release -p tern-server
exec "${CARGO_TARGET_DIR:-target}/release/tern" serve "$@"
