#!/usr/bin/env bash
# Installs the WebAssembly toolchain when missing or at the wrong version (idempotent, offline:
# everything comes from crates.io; nothing is downloaded at build time).
set -euo pipefail
cd "$(dirname "$0")/.."

# The wasm-bindgen CLI must match the wasm-bindgen crate exactly (pinned with '=' in
# engine-wasm/Cargo.toml); read the version from Cargo.lock.
want_bindgen=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
want_pack=0.15.1

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
  echo "installing the wasm32-unknown-unknown target"
  rustup target add wasm32-unknown-unknown
fi

have_bindgen=$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have_bindgen" != "$want_bindgen" ]; then
  echo "installing wasm-bindgen-cli $want_bindgen (found '${have_bindgen:-none}'); this takes a few minutes once"
  # Not --locked: its lockfile pins a crate version the registry no longer serves.
  cargo install wasm-bindgen-cli --version "$want_bindgen" --force
fi

have_pack=$(wasm-pack --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have_pack" != "$want_pack" ]; then
  echo "installing wasm-pack $want_pack (found '${have_pack:-none}'); this takes a few minutes once"
  cargo install wasm-pack --version "$want_pack" --locked --force
fi
