# Sourced by the benchmark scripts that run the peer, Node-RED with
# node-red-contrib-modbus.

# nodered_ensure DIR: install node-red@4 and node-red-contrib-modbus 5.23.3
# (the last release whose dependencies all come from the npm registry) into
# DIR, once. Needs Node.js and npm.
nodered_ensure() {
  local dir=$1
  if [ ! -f "$dir/node_modules/node-red/red.js" ]; then
    mkdir -p "$dir"
    (cd "$dir" && npm init -y >/dev/null && npm install --no-audit --no-fund -q \
      node-red@4 node-red-contrib-modbus@5.23.3 >/dev/null)
  fi
}

# nodered_start DIR WORK MACHINES BASE_PORT HTTP_PORT [BROKER_PORT]: run Node-RED from DIR
# polling MACHINES simulated machines from BASE_PORT (scripts/lib/nodered-flow.py),
# its user dir and log in WORK, its count of replies at
# http://127.0.0.1:HTTP_PORT/count (with BROKER_PORT it also publishes every
# reply to that broker, see nodered-flow.py). Sets NODERED_PID; returns when the first
# replies are counted and every client had 15 s to connect and warm up.
nodered_start() {
  local dir=$1 work=$2 n=$3 port=$4 http=$5 broker=${6:-}
  mkdir -p "$work/nr"
  python3 "$(dirname "${BASH_SOURCE[0]}")/nodered-flow.py" "$n" "$port" $broker >"$work/nr/flows.json"
  node "$dir/node_modules/node-red/red.js" --userDir "$work/nr" --port "$http" \
    "$work/nr/flows.json" >"$work/red.log" 2>&1 &
  NODERED_PID=$!
  for _ in $(seq 60); do [ "$(nodered_count "$http")" != 0 ] && break; sleep 1; done
  sleep 15
}

# nodered_count HTTP_PORT: the replies Node-RED has counted so far.
nodered_count() { curl -s "http://127.0.0.1:$1/count" || echo 0; }

# nodered_version DIR: what is installed, for the report.
nodered_version() {
  echo "Node-RED $(node -p "require('$1/node_modules/node-red/package.json').version"), node-red-contrib-modbus 5.23.3, node $(node --version)"
}
