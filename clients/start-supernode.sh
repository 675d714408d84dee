#!/usr/bin/env bash
# Start this organisation's node (a Flower SuperNode) next to its private data.
# Needs, in $FEDTUNE_NODE_DIR (default ~/fedtune-node): ca.crt (from the coordinator),
# node-key (from `fedtune node-key --out DIR`), node-config.toml (copy clients/node-config.toml).
# Usage: FEDTUNE_SUPERLINK=coordinator.example.org:9093 clients/start-supernode.sh
set -euo pipefail
FEDTUNE_NODE_DIR="${FEDTUNE_NODE_DIR:-$HOME/fedtune-node}"
: "${FEDTUNE_SUPERLINK:?set FEDTUNE_SUPERLINK to host:port of the coordinator}"
FEDTUNE_NODE_PORT="${FEDTUNE_NODE_PORT:-9094}"   # local only: the node's runtime API for its ClientApp
for f in ca.crt node-key node-config.toml; do
  [ -f "$FEDTUNE_NODE_DIR/$f" ] || { echo "missing $FEDTUNE_NODE_DIR/$f (see clients/README.md)" >&2; exit 2; }
done
export FLWR_HOME="$FEDTUNE_NODE_DIR/flwr-home" FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
cd "$FEDTUNE_NODE_DIR"
exec flower-supernode \
  --superlink "$FEDTUNE_SUPERLINK" --root-certificates "$FEDTUNE_NODE_DIR/ca.crt" \
  --auth-supernode-private-key "$FEDTUNE_NODE_DIR/node-key" \
  --node-config "$FEDTUNE_NODE_DIR/node-config.toml" \
  --host 127.0.0.1 --port "$FEDTUNE_NODE_PORT" --isolation subprocess
