#!/usr/bin/env bash
# Start the SuperLink: TLS on, and only SuperNodes whose keys were admitted (admit-node.sh) may
# connect.  Runs in the foreground (use systemd/tmux to keep it running); Ctrl-C stops it.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
certs="$FEDTUNE_COORDINATOR_DIR/certs"
[ -f "$certs/server.pem" ] || { echo "no certificates in $certs: run server/init-coordinator.sh HOST first" >&2; exit 2; }
cd "$FEDTUNE_COORDINATOR_DIR"   # the ServerApp runs here: a relative output.dir lands in this folder
# Admitted nodes and runs survive a restart in this SQLite file. :flwr-in-memory: keeps them in memory
# instead: ≈ 5 s less per deployed round here (docs/reference/measured.md), but a restarted SuperLink has
# forgotten every admitted node (admit them again) and its runs.
FEDTUNE_SUPERLINK_DATABASE="${FEDTUNE_SUPERLINK_DATABASE:-$FEDTUNE_COORDINATOR_DIR/state/superlink.db}"
exec flower-superlink \
  --ssl-ca-certfile "$certs/ca.crt" --ssl-certfile "$certs/server.pem" --ssl-keyfile "$certs/server.key" \
  --enable-supernode-auth --isolation subprocess --disable-runtime-dependency-installation \
  --database "$FEDTUNE_SUPERLINK_DATABASE" \
  --host "$FEDTUNE_SUPERLINK_BIND" --port "$FEDTUNE_SUPERLINK_PORT" \
  --log-file "$FEDTUNE_COORDINATOR_DIR/logs/superlink.log"
