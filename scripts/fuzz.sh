#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz + libFuzzer, nightly toolchain):
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET ...]
# Targets: image_decode (image bytes -> decode -> preprocess/thumbnail),
# archive (dataset archive -> unpack), rest_json (REST bodies and paths ->
# the gateway's router). Starts from the seed corpus in services/fuzz/corpus;
# new inputs go to target/fuzz-corpus (not committed). A crash leaves its
# input in services/fuzz/artifacts/TARGET and fails the script.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$REPO_ROOT"
secs="${1:-600}"
shift || true
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(image_decode archive rest_json)

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz: installing the nightly toolchain (cargo-fuzz needs it)"
  rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
for t in "${targets[@]}"; do cargo +nightly fuzz build --fuzz-dir services/fuzz "$t"; done
status=0
for t in "${targets[@]}"; do
  corpus="target/fuzz-corpus/$t"
  mkdir -p "$corpus"
  echo "fuzz: $t for $secs s"
  log="target/fuzz-$t.log"
  if cargo +nightly fuzz run --fuzz-dir services/fuzz "$t" "$corpus" "services/fuzz/corpus/$t" -- \
      -max_total_time="$secs" -rss_limit_mb=4096 -timeout=30 -print_final_stats=1 >"$log" 2>&1; then
    echo "fuzz: $t: no crash; $(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}') runs," \
      "$(grep -oE 'cov: [0-9]+' "$log" | tail -1), corpus $(ls "$corpus" | wc -l) inputs"
  else
    status=1
    echo "fuzz: $t FAILED; see $log and services/fuzz/artifacts/$t" >&2
    grep -E 'panicked|ERROR|SUMMARY' "$log" | head -5 >&2 || true
  fi
done
exit $status
