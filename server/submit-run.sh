#!/usr/bin/env bash
# Submit a federated run to the running SuperLink and stream its log.
# Usage: server/submit-run.sh [RUN_CONFIG_TOML]   (default: server/run-config.toml)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
config="${1:-$(dirname "${BASH_SOURCE[0]}")/run-config.toml}"
exec flwr run "$FEDTUNE_REPO" fedtune --stream --run-config "$config"
