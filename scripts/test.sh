#!/usr/bin/env bash
# `npm test`: every suite, fail-fast, from the repository root. Installs what the suites need
# (wasm toolchain, Chromium, npm packages) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

step "self-contained: nothing reaches outside the checkout"
# A user's clone has nothing beside it: the suites read their data from testdata/, never from a
# sibling folder, and an inherited CONCORD_TRACES must not hide a missing file.
unset CONCORD_TRACES
sibling=shared # spelled apart so that this line does not match itself
if git ls-files -z | xargs -0 grep -nE "\.\./$sibling|$sibling/traces" -- | grep -vE '\.md:'; then
  echo "the files above reach outside the checkout; keep what they need in testdata/" >&2
  exit 1
fi

step "docker-compose.yml: valid, with auth required"
# Only where the docker compose CLI exists; the file must refuse to start without a secret.
if docker compose version >/dev/null 2>&1; then
  if POSTGRES_PASSWORD=x REDIS_PASSWORD=x CONCORD_AUTH_SECRET= docker compose config -q 2>/dev/null; then
    echo "docker compose config accepted an empty CONCORD_AUTH_SECRET" >&2
    exit 1
  fi
  POSTGRES_PASSWORD=x REDIS_PASSWORD=x CONCORD_AUTH_SECRET="$(printf '%064d' 0)" docker compose config -q
  echo "(docker compose config: ok)"
else
  echo "(no docker compose CLI here: skipped)"
fi

step "rustfmt"
cargo fmt --all -- --check

step "clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "layers: no import cycle between modules (cargo-modules)"
bash scripts/check-layers.sh

step "cargo tests (release: the property, trace and load-bearing suites are CPU-heavy)"
# Engine property/trace/bad-input suites, and the server suite against SQLite and the local
# Postgres and Redis (with CI=true a missing service fails instead of skipping).
cargo test --workspace --release

bash scripts/build-wasm.sh
bash scripts/ensure-npm.sh

for suite in scripts/test-wasm.sh scripts/test-web.sh; do
  if [ -f "$suite" ]; then
    bash "$suite"
  fi
done

step "all suites passed"
