#!/usr/bin/env bash
# Command 1 of the README: set everything up, then run the whole system on
# embedded defaults (data in ./data) until Ctrl-C.
set -euo pipefail
source "$(dirname "$0")/env.sh"
"$REPO_ROOT/scripts/setup.sh"
cd "$REPO_ROOT"
exec "$REPO_ROOT/target/release/cbir" up --data-dir "$CBIR_DATA_DIR" "$@"
