#!/usr/bin/env bash
# The browser side: concord-client (web/src) in Node and demo.html + the CodeMirror binding in
# headless Chromium, each suite against its own real `concord` server (free 127.0.0.1 port,
# temporary SQLite database). Called by scripts/test.sh; runs on its own too.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

bash scripts/ensure-chromium.sh
bash scripts/build-wasm.sh
bash scripts/ensure-npm.sh

# CONCORD_BIN: use an already built server binary instead of building one.
if [ -n "${CONCORD_BIN:-}" ] && [ -x "$CONCORD_BIN" ]; then
  echo "using the server binary $CONCORD_BIN"
else
  step "building the server (release) for the web suites"
  cargo build --release --quiet -p concord-server --bin concord
  export CONCORD_BIN="$PWD/target/release/concord"
fi
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

cd web
run_suite() {
  local title=$1 file=$2
  step "$title"
  local start=$SECONDS
  node --test --test-reporter=spec "$file"
  echo "($file: $((SECONDS - start)) s)"
}

step "web: the TypeScript declarations type-check against a consumer (tsc)"
npx --no-install tsc -p test/types
echo "(test/types: ok)"

run_suite "web: text diff / position mapping / CodeMirror change sets (unit)" test/text.test.mjs
run_suite "web: ConcordProvider in Node against a real server" test/provider.test.mjs
run_suite "web: a plain Yjs client (base wire contract) and concord-client converge" test/yjs.test.mjs
run_suite "web: the stock y-websocket provider against /yjs (types, offline, restart, kill -9, awareness, tokens)" test/ywebsocket.test.mjs
run_suite "web: the stock Hocuspocus provider v3 and v4 against /hocuspocus (multiplexing, durable SyncStatus, kill -9, awareness, stateless, tokens, two instances)" test/hocuspocus.test.mjs
run_suite "web: npm pack, install the tarball into a fresh project, use it from Node" test/pack.test.mjs
run_suite "web: demo.html and CodeMirror 6 in headless Chromium (Playwright)" test/e2e.test.mjs
run_suite "web: the demo's History panel: versions, timeline scrubbing, diff, restore in every tab, blame (Playwright)" test/history.test.mjs
run_suite "web: Tiptap via HocuspocusProvider and CodeMirror 6 via y-codemirror.next + WebsocketProvider in headless Chromium (esbuild bundles)" test/yjs-editors.test.mjs

step "web: all suites passed (screenshots in artifacts/)"
