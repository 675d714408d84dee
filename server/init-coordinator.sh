#!/usr/bin/env bash
# One-time setup of the coordinator: a private CA + the SuperLink's TLS certificate, and the
# connection `fedtune` that the flwr CLI uses.  Usage: server/init-coordinator.sh HOST [HOST ...]
# HOSTs: every name or IP address the nodes will use to reach this machine (they go into the
# certificate), e.g.  server/init-coordinator.sh coordinator.example.org 203.0.113.7
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
[ $# -ge 1 ] || { echo "usage: $0 HOST [HOST ...]  (names/IPs nodes use to reach the SuperLink)" >&2; exit 2; }
hosts=(); for h in "$@"; do hosts+=(--host "$h"); done
mkdir -p "$FEDTUNE_COORDINATOR_DIR"/{state,logs,results} "$FLWR_HOME"
fedtune certs --out "$FEDTUNE_COORDINATOR_DIR/certs" "${hosts[@]}"
cat > "$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "fedtune"

[superlink.fedtune]
address = "127.0.0.1:$FEDTUNE_SUPERLINK_PORT"
root-certificates = "$FEDTUNE_COORDINATOR_DIR/certs/ca.crt"
TOML
echo "coordinator ready in $FEDTUNE_COORDINATOR_DIR"
echo "send $FEDTUNE_COORDINATOR_DIR/certs/ca.crt to every node operator; keep certs/ca.key private"
