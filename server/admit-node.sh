#!/usr/bin/env bash
# Admit a node: register the public key its operator sent you (from `fedtune node-key`).
# Usage: server/admit-node.sh NODE.pub [NAME]      List admitted nodes: flwr supernode ls fedtune
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
[ $# -ge 1 ] || { echo "usage: $0 NODE.pub [NAME]" >&2; exit 2; }
name="${2:-$(basename "$1" .pub)}"
if out=$(flwr supernode register "$1" fedtune --name "$name" 2>&1); then
  echo "$out"
elif grep -q "already in use" <<<"$out"; then
  echo "$name: this key is already admitted"
else
  echo "$out" >&2; exit 1
fi
