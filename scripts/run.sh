#!/usr/bin/env bash
# scripts/run.sh: build Tern (release) and run the broker.
#   scripts/run.sh                             -> broker on 127.0.0.1:1883
#   scripts/run.sh --mqtt-addr 127.0.0.1:18830 -> arguments go to `tern serve`
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release -p tern-server
exec "${CARGO_TARGET_DIR:-target}/release/tern" serve "$@"
