#!/usr/bin/env bash
# The CPU inference comparison in one run: the served network
# (inference-bench, both engines) beside PyTorch eager
# (scripts/bench_pytorch.py) and ONNX Runtime from Python on the reference
# network exported by torch.onnx.export (scripts/bench_onnxruntime.py), all
# with the same threads, alternating for ROUNDS rounds so that the machine's
# drift hits each alike. Prints one Markdown table (README, BENCHMARKS).
#
#   scripts/bench_cpu.sh [ROUNDS] [SECONDS]      defaults: 3 rounds, 5 s per row
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$REPO_ROOT"

rounds="${1:-3}"
seconds="${2:-5}"
threads="$(nproc)"
bench="${BENCH:-target/release/inference-bench}"
if [[ ! -x "$bench" ]]; then
  cargo build --release --locked -p cbir-inference --bin inference-bench
fi
export LD_LIBRARY_PATH="$("$CBIR_VENV/bin/python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

echo "$(nproc) cores, $threads threads each; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo
echo "| round | what | batch | images/s | p50 ms | p99 ms |"
echo "|---|---|---|---|---|---|"
for r in $(seq 1 "$rounds"); do
  "$bench" --model-only --backends onnx,tch --batch-sizes 1,8 --unfused-batch-sizes 0 \
    --threads "$threads" --seconds "$seconds" | grep '^| network' | sed "s/^/| $r /"
  "$CBIR_VENV/bin/python" scripts/bench_onnxruntime.py --batch-sizes 1,8 --threads "$threads" \
    --seconds "$seconds" 2>/dev/null | grep '^|' | sed "s/^/| $r /"
  "$CBIR_VENV/bin/python" scripts/bench_pytorch.py --batch-sizes 1,8 --threads "$threads" \
    --seconds "$seconds" 2>/dev/null | grep '^|' | sed "s/^/| $r /"
done
