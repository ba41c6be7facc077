#!/usr/bin/env bash
# `npm start`: build what is needed and run the server on embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
if [ ! -d server ]; then
  echo "The server (issue 5) has not landed yet; 'npm test' runs the engine suites." >&2
  exit 1
fi
