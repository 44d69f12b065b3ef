#!/usr/bin/env bash
# Starts a local Switchyard fleet from a fresh clone: a control plane on its embedded
# SQLite store, one data-plane node, and (when Dovecot is installed or installable) two
# throwaway Dovecot servers as the destinations `legacy` and `new`. Ctrl-C stops it all.
#
# Ports (override with the environment): IMAP 1143, API 7480, gRPC 7400, node health 7481.
# State (tokens, configs, mappings.db, logs) lives in .fleet/ (override with FLEET_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."

FLEET_DIR=${FLEET_DIR:-.fleet}
IMAP_PORT=${IMAP_PORT:-1143}
API_PORT=${API_PORT:-7480}
GRPC_PORT=${GRPC_PORT:-7400}
HEALTH_PORT=${HEALTH_PORT:-7481}
mkdir -p "$FLEET_DIR"
FLEET_DIR=$(cd "$FLEET_DIR" && pwd)

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  # Closing the demo backends' stdin makes them stop their Dovecot servers.
  exec 3>&- 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

token() { od -An -N24 -tx1 /dev/urandom | tr -d ' \n'; }
[[ -s $FLEET_DIR/admin.token ]] || token >"$FLEET_DIR/admin.token"
[[ -s $FLEET_DIR/node.token ]] || token >"$FLEET_DIR/node.token"

echo "fleet: building (first build takes a few minutes)" >&2
cargo build -q -p controlplane -p dataplane -p switchyard-tests --bins

legacy_port=10143 new_port=20143
if scripts/install-deps.sh >/dev/null 2>&1 && command -v dovecot >/dev/null 2>&1; then
  rm -f "$FLEET_DIR/backends" "$FLEET_DIR/hold"
  # demo-backends runs until its stdin closes: this script holds the FIFO open on fd 3.
  mkfifo "$FLEET_DIR/hold"
  target/debug/demo-backends "$FLEET_DIR/backends" <"$FLEET_DIR/hold" 2>>"$FLEET_DIR/backends.log" &
  exec 3>"$FLEET_DIR/hold"
  for _ in $(seq 100); do [[ -s $FLEET_DIR/backends ]] && break; sleep 0.1; done
  [[ -s $FLEET_DIR/backends ]] || { echo "fleet: demo Dovecot servers did not start; see $FLEET_DIR/backends.log" >&2; exit 1; }
  legacy_port=$(sed -n 's/^legacy=//p' "$FLEET_DIR/backends")
  new_port=$(sed -n 's/^new=//p' "$FLEET_DIR/backends")
else
  echo "fleet: Dovecot not available; destinations point at 127.0.0.1:$legacy_port and :$new_port" >&2
fi

cat >"$FLEET_DIR/controlplane.toml" <<TOML
[server]
log_level = "info"
[grpc]
bind = "127.0.0.1:$GRPC_PORT"
node_token_file = "$FLEET_DIR/node.token"
[api]
bind = "127.0.0.1:$API_PORT"
bearer_token_file = "$FLEET_DIR/admin.token"
[routing]
default_destination = "legacy"
[mapping]
source = "sqlite"
[mapping.sqlite]
path = "$FLEET_DIR/mappings.db"
[destination.legacy]
host = "127.0.0.1"
allow_plaintext_auth = true        # loopback demo only
[destination.legacy.protocol.imap]
port = $legacy_port
tls = "plain"
[destination.new]
host = "127.0.0.1"
allow_plaintext_auth = true
[destination.new.protocol.imap]
port = $new_port
tls = "plain"
TOML

cat >"$FLEET_DIR/dataplane.toml" <<TOML
[node]
id = "dp-1"
[control]
endpoints = ["http://127.0.0.1:$GRPC_PORT"]
node_token_file = "$FLEET_DIR/node.token"
[health]
bind = "127.0.0.1:$HEALTH_PORT"
[listener.imap]
protocol = "imap"
bind = ["127.0.0.1:$IMAP_PORT"]
tls = "plain"
allow_plaintext_auth = true        # loopback demo only
TOML

target/debug/controlplane --config "$FLEET_DIR/controlplane.toml" 2>>"$FLEET_DIR/controlplane.log" &
pids+=($!)
target/debug/dataplane --config "$FLEET_DIR/dataplane.toml" 2>>"$FLEET_DIR/dataplane.log" &
pids+=($!)

ready() { python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=1)" "$1" >/dev/null 2>&1; }
for _ in $(seq 100); do ready "http://127.0.0.1:$HEALTH_PORT/readyz" && break; sleep 0.1; done
ready "http://127.0.0.1:$HEALTH_PORT/readyz" || { echo "fleet: node not ready; see $FLEET_DIR/*.log" >&2; exit 1; }

cat >&2 <<EOF2
fleet: running. Control plane API http://127.0.0.1:$API_PORT, node IMAP 127.0.0.1:$IMAP_PORT
  export TOKEN=\$(cat $FLEET_DIR/admin.token)
  curl -s -H "Authorization: Bearer \$TOKEN" http://127.0.0.1:$API_PORT/stats
Demo accounts alice@example.test / bob@example.test, password "secret". Logs in $FLEET_DIR/*.log.
Ctrl-C stops the fleet.
EOF2
wait -n "${pids[@]}"
echo "fleet: a process exited; stopping (see $FLEET_DIR/*.log)" >&2
