#!/usr/bin/env bash
# Installs moto, an S3-compatible server, from PyPI into .cache/moto (idempotent), and prints
# the path of its `moto_server`. The object-storage tests start it themselves on a free port.
# Why moto: it is on a package registry (PyPI) and speaks the S3 API that MinIO and AWS speak;
# MinIO's server is a binary download, which this project's machines cannot fetch.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.cache/moto"
version="5.2.5"
server="$venv/bin/moto_server"
# Suites that need it start at once (one per store): the first installs, the others wait.
mkdir -p "$root/.cache"
exec 9>"$root/.cache/moto.lock"
flock 9
if [ ! -x "$server" ] || [ "$(cat "$venv/.version" 2>/dev/null)" != "$version" ]; then
  echo "installing moto $version into .cache/moto" >&2
  rm -rf "$venv"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$version" >&2
  echo "$version" > "$venv/.version"
fi
echo "$server"
