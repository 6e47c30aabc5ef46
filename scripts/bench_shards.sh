#!/usr/bin/env bash
# A sharded index against one node on the same data (docs/BENCHMARKS.md,
# "Sharded index"): N synthetic vectors written to a SQLite file by
# index-bench --service (which also prints the one-node load, memory and
# search rows), then one index service and SHARDS shard services on that
# file in compact storage, compared through the gateway's search path.
#   scripts/bench_shards.sh [N] [SHARDS]     (default 1000000 3)
# CBIR_BENCH_STORAGE=full runs them in full storage and first times a
# refresh of every augmented vector; CBIR_BENCH_PEERS=1 gives the shards
# each other as peers (augmented vectors summed across shards).
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$REPO_ROOT"
n="${1:-1000000}"
shards="${2:-3}"
dir="${CBIR_BENCH_DIR:-/tmp}"
cargo build --release --locked -p cbir-index --bin cbir-index --bin index-bench \
  -p cbir-gateway --bin shard-bench
bin=target/release
"$bin/index-bench" --service "$n" --db-keep --db-dir "$dir" --queries 100
db="sqlite://$dir/cbir-bench-service-$n-1000.db"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
storage="${CBIR_BENCH_STORAGE:-compact}"
peers=""
if [[ "${CBIR_BENCH_PEERS:-0}" == 1 ]]; then
  peers="[$(for ((i = 0; i < shards; i++)); do printf '%s["http://127.0.0.1:%d"]' "${sep:-}" $((7701 + i)); sep=,; done)]"
fi
start() { # port shard-id shard-count
  local env=(INDEX_DATABASE_URL="$db" INDEX_LISTEN="127.0.0.1:$1" INDEX_STORAGE="$storage"
    INDEX_SHARD__ID="$2" INDEX_SHARD__COUNT="$3" INDEX_FOLLOW_MS=0 RUST_LOG=warn)
  [[ "$3" -gt 1 && -n "$peers" ]] && env+=(INDEX_PEERS="$peers")
  env "${env[@]}" "$bin/cbir-index" &
  pids+=($!)
}
start 7700 0 1
urls=()
for ((i = 0; i < shards; i++)); do
  start $((7701 + i)) "$i" "$shards"
  urls+=("http://127.0.0.1:$((7701 + i))")
done
refresh=()
[[ "$storage" == full ]] && refresh=(--refresh)
"$bin/shard-bench" --one http://127.0.0.1:7700 --shards "$(IFS=,; echo "${urls[*]}")" --exact-queries 3 "${refresh[@]}"
