#!/usr/bin/env bash
# Builds engine-wasm into web/pkg (ES module for browsers; Node loads it with initSync) when it
# is missing or older than its sources. `--force` rebuilds regardless.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

out=web/pkg/concord_wasm_bg.wasm
if [ "${1:-}" != "--force" ] && [ -f "$out" ] && \
   [ -z "$(find engine/src engine/Cargo.toml engine-wasm/src engine-wasm/Cargo.toml Cargo.toml Cargo.lock vendor -newer "$out" -print -quit)" ]; then
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

# wasm-opt shrinks the module further when a binaryen that understands it is installed. The
# result must still load: Debian's binaryen 108 rewrites the module's two tables so that the
# `__wbindgen_externrefs` export points at the funcref table, and the glue then throws
# "WebAssembly.Table.set(): Argument 1 is invalid" in initSync/init (Node and Chromium alike).
# So the optimised module is instantiated with the generated glue before it replaces the original.
smoke_test() {
  node --input-type=module -e '
    import fs from "node:fs";
    import { pathToFileURL } from "node:url";
    const [glue, wasm] = process.argv.slice(1);
    const m = await import(pathToFileURL(glue).href);
    m.initSync({ module: fs.readFileSync(wasm) });
    const d = new m.Document(1);
    d.insert(0, "ok");
    if (d.text() !== "ok") throw new Error("smoke test: wrong text");
  ' "$PWD/web/pkg/concord_wasm.js" "$1" >/dev/null 2>&1
}
if command -v wasm-opt >/dev/null 2>&1; then
  opt_version=$(wasm-opt --version 2>/dev/null | awk '{print $3}')
  if wasm-opt -Oz --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int \
       --enable-mutable-globals --enable-reference-types --enable-multivalue \
       "$out" -o "$out.opt" 2>/dev/null && smoke_test "$out.opt"; then
    mv "$out.opt" "$out"
  else
    rm -f "$out.opt"
    echo "note: wasm-opt $opt_version could not optimise the module into one that loads; shipping it as built"
  fi
fi
raw=$(wc -c < "$out")
gz=$(gzip -9 -c "$out" | wc -c)
echo "web/pkg: concord_wasm_bg.wasm $raw bytes raw, $gz bytes gzipped"
