# Shared helpers for the scripts in this folder (sourced, not run).

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
