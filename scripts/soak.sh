#!/usr/bin/env bash
# Soak: 10 minutes (after a warm-up) of steady searches plus concurrent
# indexing against the four services started as separate processes on
# loopback; prints errors, p50/p99 latency per window and each service's
# memory, and fails on any error or on memory growth over 10%.
#   scripts/soak.sh [cbir-soak options, e.g. --seconds 600 --json soak.json]
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$REPO_ROOT"
"$REPO_ROOT/scripts/setup.sh" --no-build >/dev/null
cargo build --release -p cbir-inference -p cbir-index -p cbir-training -p cbir-gateway --bins
target="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release"
# libtorch for the inference and training binaries.
export LD_LIBRARY_PATH="$("$CBIR_VENV/bin/python" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))'):${LD_LIBRARY_PATH:-}"
exec "$target/cbir-soak" --bin-dir "$target" --images "$CBIR_SHARED_DATA/caltech101" "$@"
