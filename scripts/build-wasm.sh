#!/usr/bin/env bash
# Builds engine-wasm into web/pkg (ES module for browsers; Node loads it with initSync) when it
# is missing or older than its sources. `--force` rebuilds regardless.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

out=web/pkg/concord_wasm_bg.wasm
if [ "${1:-}" != "--force" ] && [ -f "$out" ] && \
   [ -z "$(find engine/src engine/Cargo.toml engine-wasm/src engine-wasm/Cargo.toml Cargo.lock -newer "$out" -print -quit)" ]; then
  echo "web/pkg is up to date"
  exit 0
fi

bash scripts/ensure-wasm-tools.sh
step "building the WASM engine into web/pkg"
# Size matters in the browser: optimise for size with LTO, without touching the native
# release profile (these overrides apply to this build only).
CARGO_PROFILE_RELEASE_OPT_LEVEL=z \
CARGO_PROFILE_RELEASE_LTO=fat \
CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
CARGO_PROFILE_RELEASE_DEBUG=0 \
CARGO_PROFILE_RELEASE_STRIP=debuginfo \
  wasm-pack --log-level warn build engine-wasm --release --target web --out-dir ../web/pkg --no-pack
rm -f web/pkg/.gitignore

# wasm-opt shrinks the module further when a binaryen that understands it is installed.
if command -v wasm-opt >/dev/null 2>&1; then
  if wasm-opt -Oz --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int \
       --enable-mutable-globals --enable-reference-types --enable-multivalue \
       "$out" -o "$out.opt" 2>/dev/null; then
    mv "$out.opt" "$out"
  else
    rm -f "$out.opt"
    echo "note: wasm-opt $(wasm-opt --version 2>/dev/null | awk '{print $3}') could not optimise the module; shipping it as built"
  fi
fi
raw=$(wc -c < "$out")
gz=$(gzip -9 -c "$out" | wc -c)
echo "web/pkg: concord_wasm_bg.wasm $raw bytes raw, $gz bytes gzipped"
