# Shared helpers for the scripts in this folder (sourced, not run).

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# The traces live in ../shared/traces beside the checkout; tests find them through this.
if [ -z "${CONCORD_TRACES:-}" ]; then
  for dir in "$PWD/../shared/traces" "$PWD/shared/traces"; do
    if [ -d "$dir" ]; then export CONCORD_TRACES="$(cd "$dir" && pwd)"; break; fi
  done
fi
