# Sourced by the coordinator scripts: where everything lives, and Flower's environment.
# Override any of these before calling a script, e.g. FEDTUNE_COORDINATOR_DIR=/srv/fedtune.
FEDTUNE_COORDINATOR_DIR="${FEDTUNE_COORDINATOR_DIR:-$HOME/fedtune-coordinator}"
FEDTUNE_SUPERLINK_BIND="${FEDTUNE_SUPERLINK_BIND:-0.0.0.0}"   # interface the SuperLink listens on
FEDTUNE_SUPERLINK_PORT="${FEDTUNE_SUPERLINK_PORT:-9093}"      # one HTTPS port: nodes and the flwr CLI
FEDTUNE_REPO="${FEDTUNE_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"  # the Flower app (pyproject.toml)
export FLWR_HOME="$FEDTUNE_COORDINATOR_DIR/flwr-home"         # Flower's CLI config and installed apps
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1         # never `uv sync` the app (would pull CUDA torch)
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
