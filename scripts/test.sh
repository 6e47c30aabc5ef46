#!/usr/bin/env bash
# Command 2 of the README: install what the tests need, then run formatting,
# lints and the whole test suite (real network, real images).
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$REPO_ROOT"
"$REPO_ROOT/scripts/setup.sh" --no-build

echo "test: cargo fmt --check"
cargo fmt --all -- --check
echo "test: cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast "$@"
else
  echo "test: cargo-nextest not found, using cargo test"
  cargo test --workspace --locked --no-fail-fast "$@"
fi
