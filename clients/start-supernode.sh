#!/usr/bin/env bash
# Start this organisation's node (a Flower SuperNode) next to its private data, running only the
# app its operator approved.
# Needs, in $FEDTUNE_NODE_DIR (default ~/fedtune-node): ca.crt (from the coordinator),
# node-key (from `fedtune node-key`), node-config.toml (copy clients/node-config.toml) with
# approved-apps = "<hash>" (from `fedtune app hash` of the app you reviewed).
# Usage: FEDTUNE_SUPERLINK=coordinator.example.org:9093 clients/start-supernode.sh
set -euo pipefail
FEDTUNE_NODE_DIR="${FEDTUNE_NODE_DIR:-$HOME/fedtune-node}"
: "${FEDTUNE_SUPERLINK:?set FEDTUNE_SUPERLINK to host:port of the coordinator}"
FEDTUNE_NODE_PORT="${FEDTUNE_NODE_PORT:-9094}"   # local only: the node's runtime API for its ClientApp
# One ClientApp process per approved app serves task after task, so the model is loaded once, not per
# message; it exits after this many idle seconds (frees its memory). 0: a fresh process per message.
FEDTUNE_WARM_IDLE_EXIT="${FEDTUNE_WARM_IDLE_EXIT:-900}"
# Seconds before the SuperNode asks the coordinator again after finding no message; backs off to
# Flower's fixed 3 s while idle, back to this when a message arrives (3: Flower's own pace).
FEDTUNE_NODE_POLL="${FEDTUNE_NODE_POLL:-0.2}"
NODE_CODE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/fedtune/node"
GUARD="$NODE_CODE/app_guard.py"
for f in ca.crt node-key node-config.toml; do
  [ -f "$FEDTUNE_NODE_DIR/$f" ] || { echo "missing $FEDTUNE_NODE_DIR/$f (see docs/guides/node-operator.md)" >&2; exit 2; }
done
grep -q '^approved-apps *=' "$FEDTUNE_NODE_DIR/node-config.toml" || {
  echo "node-config.toml has no approved-apps: this node runs no app until you approve one" \
       "(fedtune app hash <the app you reviewed>; see docs/guides/node-operator.md)" >&2; exit 2; }
export FLWR_HOME="$FEDTUNE_NODE_DIR/flwr-home" FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
SECRET="$FEDTUNE_NODE_DIR/superexec.secret"   # only the app guard may claim the node's ClientApp tasks
[ -s "$SECRET" ] || (umask 077 && head -c 32 /dev/urandom > "$SECRET")
cd "$FEDTUNE_NODE_DIR"
# --isolation process: the SuperNode starts no ClientApp itself; app_guard.py checks each task's
# app hash against approved-apps before Flower's own runner installs or imports any of it.
# supernode_pace.py runs Flower's flower-supernode, only with a shorter wait between asks for work.
python -I "$NODE_CODE/supernode_pace.py" --poll "$FEDTUNE_NODE_POLL" -- \
  --superlink "$FEDTUNE_SUPERLINK" --root-certificates "$FEDTUNE_NODE_DIR/ca.crt" \
  --auth-supernode-private-key "$FEDTUNE_NODE_DIR/node-key" \
  --node-config "$FEDTUNE_NODE_DIR/node-config.toml" \
  --host 127.0.0.1 --port "$FEDTUNE_NODE_PORT" --isolation process --superexec-auth-secret-file "$SECRET" &
SUPERNODE=$!
python -I "$GUARD" serve --runtime-api-address "127.0.0.1:$FEDTUNE_NODE_PORT" \
  --node-config "$FEDTUNE_NODE_DIR/node-config.toml" --superexec-auth-secret-file "$SECRET" \
  --work-dir "$FEDTUNE_NODE_DIR/app-tasks" --warm-idle-exit "$FEDTUNE_WARM_IDLE_EXIT" &
GUARD_PID=$!
trap 'kill "$SUPERNODE" "$GUARD_PID" 2>/dev/null || true' EXIT
set +e
wait -n "$SUPERNODE" "$GUARD_PID"   # stop when either stops (e.g. the SuperLink refused this node's key)
exit $?
