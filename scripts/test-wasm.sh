#!/usr/bin/env bash
# The WebAssembly suites: engine-wasm's wasm-bindgen tests in Node and in headless Chromium,
# then the Node tests of the built module against Yjs (web/test/interop.test.mjs).
# Called by scripts/test.sh after build-wasm.sh and ensure-npm.sh; runs on its own too (it
# installs and builds what is missing, and is a no-op for what is up to date). Fails fast.
#
# The wasm-pack runs use release builds: that is what ships (no debug assertions, which in yrs
# turn some garbage input into aborts a release build does not have; see
# engine-wasm/tests/suite/bad_input.rs), and debug wasm is about ten times slower.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

bash scripts/ensure-chromium.sh
bash scripts/ensure-wasm-tools.sh

# Debian's driver and browser; the flags of shared/tools/README.md come from webdriver.json.
export CHROMEDRIVER=/usr/bin/chromedriver
export WASM_BINDGEN_TEST_WEBDRIVER_JSON="$PWD/engine-wasm/tests/webdriver.json"
# The runner's default (20 s) is for the whole browser suite, not per test.
export WASM_BINDGEN_TEST_TIMEOUT="${WASM_BINDGEN_TEST_TIMEOUT:-300}"

step "engine-wasm tests in Node (wasm-pack test --node --release)"
wasm-pack --log-level warn test --release --node engine-wasm

step "engine-wasm tests in headless Chromium (wasm-pack test --headless --chrome --release)"
wasm-pack --log-level warn test --release --headless --chrome --chromedriver "$CHROMEDRIVER" engine-wasm

step "the WASM module against Yjs in Node (web/test/interop.test.mjs)"
bash scripts/build-wasm.sh
bash scripts/ensure-npm.sh
node --test web/test/interop.test.mjs
