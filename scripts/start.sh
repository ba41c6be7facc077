#!/usr/bin/env bash
# `npm start`: build what is needed and run the server on embedded defaults
# (SQLite in ./data, in-memory fan-out, port 8080). Environment variables override
# (PORT, DATABASE_URL, REDIS_URL, ...: see server/src/config.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
# The demo page needs the WASM engine (installs the wasm toolchain once if missing).
bash scripts/build-wasm.sh
step "building the server (release)"
cargo build --release -p concord-server --bin concord
step "starting concord"
exec target/release/concord
