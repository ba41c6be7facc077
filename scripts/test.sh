#!/usr/bin/env bash
# `npm test`: every suite that exists, fail-fast, from the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

step "rustfmt"
cargo fmt --all -- --check

step "clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "engine tests (release: the property and trace suites are CPU-heavy)"
cargo test --workspace --release

step "all suites passed"
