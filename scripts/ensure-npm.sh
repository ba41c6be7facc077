#!/usr/bin/env bash
# Installs web/'s npm packages from the lockfile when missing or out of date (idempotent).
set -euo pipefail
cd "$(dirname "$0")/../web"
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "installing web/ npm packages"
  npm ci --no-audit --no-fund
fi
