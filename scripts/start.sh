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
# This machine only, unless told otherwise (HOST=0.0.0.0): auth is off by default, and a
# server open to the network with auth off lets anyone who reaches it read and write.
export HOST="${HOST:-127.0.0.1}"
exec target/release/concord
