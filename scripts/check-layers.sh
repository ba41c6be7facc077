#!/usr/bin/env bash
# Layers without cycles: no module of the engine or the server imports, directly or through
# others, a module that imports it back (a module may use its own children). The `use` graph
# comes from cargo-modules (crates.io, installed here once when missing or at another
# version); scripts/check-layers.py adds the paths written inline and fails on a cycle.
set -euo pipefail
cd "$(dirname "$0")/.."

want=0.27.0 # the last release that builds with rustc 1.95
have=$(cargo modules --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have" != "$want" ]; then
  echo "installing cargo-modules $want (found '${have:-none}'); this takes about 8 minutes once"
  cargo install cargo-modules --version "$want" --locked --force
fi

for crate in engine:concord-engine:concord_engine server:concord-server:concord_server; do
  IFS=: read -r dir package name <<<"$crate"
  cargo modules dependencies -p "$package" --lib --no-externs --no-sysroot --no-fns \
    --no-traits --no-types --no-owns |
    python3 scripts/check-layers.py "$name" "$dir/src"
done
