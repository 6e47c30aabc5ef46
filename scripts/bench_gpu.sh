#!/usr/bin/env bash
# The GPU benchmark: the network alone on CUDA, batch 1 to 256, in f32,
# bf16 and f16 on tch, and on ONNX Runtime's TensorRT / CUDA providers when
# the machine has an onnxruntime-gpu library. Prints one Markdown table
# (docs/BENCHMARKS.md, "GPU"), then the service's gRPC rows in bf16 and
# f32. With TRAIN_DIR set (a folder-per-class image set), it then
# fine-tunes on it on CUDA with train-folder and prints its log.
#
# Two steps, because the GPU machine is lent for minutes and has no cargo:
#   scripts/bench_gpu.sh build          here: CUDA build of inference-bench
#                                       into dist/gpu/ (carry that folder)
#   scripts/bench_gpu.sh run [SECONDS]  there: uses the machine's own torch
#                                       (its torch/lib on LD_LIBRARY_PATH)
#   scripts/bench_gpu.sh check          syntax and arguments only (CI)
#
# The bench feeds the network real JPEGs: CBIR_SHARED_DATA names a folder
# holding imagenet-sample-300/ (labels.csv and the images it lists; a few
# dozen are enough), since ../shared/data does not travel to that machine.
# Copy them, and the TRAIN_DIR images, into a git-ignored folder that the
# run carries (.git/info/exclude); never commit them.
set -euo pipefail
cd "$(dirname "$0")/.."

BATCHES="1,8,32,64,128,256"
OUT_DIR="${BENCH_GPU_DIR:-dist/gpu}"

# rows BENCH WEIGHTS DEVICE ENGINE DTYPE BATCHES SECONDS: one engine's rows.
rows() {
  "$1" --weights "$2" --device "$3" --backends "$4" --dtype "$5" --batch-sizes "$6" \
    --unfused-batch-sizes 0 --seconds "$7" --model-only | grep '^| network'
}

case "${1:-}" in
  build)
    source scripts/env.sh
    cargo build --release --locked --features cuda -p cbir-inference --bin inference-bench
    cargo build --release --locked -p cbir-training --bin train-folder
    mkdir -p "$OUT_DIR"
    cp target/release/inference-bench target/release/train-folder "$OUT_DIR/"
    # Without debug symbols: what travels to the GPU machine is size-limited.
    strip "$OUT_DIR/inference-bench" "$OUT_DIR/train-folder"
    cp data/models/efficientnet-lite0-imagenet.safetensors "$OUT_DIR/"
    echo "bench_gpu: built $OUT_DIR (carry it with the run)"
    ;;
  run)
    seconds="${2:-3}"
    python="${PYTHON:-python3}"
    torch_lib="$("$python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
    export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    # Built against the CPU wheel, the binaries do not link libtorch_cuda;
    # loading it first registers libtorch's CUDA backend.
    if [[ -e "$torch_lib/libtorch_cuda.so" ]]; then
      export LD_PRELOAD="$torch_lib/libtorch_cuda.so${LD_PRELOAD:+:$LD_PRELOAD}"
    fi
    # onnxruntime-gpu, when installed, brings the CUDA and TensorRT providers.
    ort_lib="$("$python" - <<'PY' 2>/dev/null || true
import glob, os
import onnxruntime
print(sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so*")))[-1])
PY
)"
    bench="$OUT_DIR/inference-bench"
    weights="$OUT_DIR/efficientnet-lite0-imagenet.safetensors"
    [[ -x "$bench" ]] || { echo "bench_gpu: $bench missing: run 'scripts/bench_gpu.sh build' first" >&2; exit 1; }
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    echo "| what | batch | images/s | p50 ms | p99 ms |"
    echo "|---|---|---|---|---|"
    for dtype in f32 bf16 f16; do
      rows "$bench" "$weights" cuda tch "$dtype" "$BATCHES" "$seconds" \
        || echo "| tch $dtype | failed | | | |"
    done
    if [[ -n "$ort_lib" ]]; then
      for dtype in f32 f16; do
        ORT_DYLIB_PATH="$ort_lib" rows "$bench" "$weights" cuda onnx "$dtype" "$BATCHES" "$seconds" \
          || echo "| onnxruntime $dtype | failed | | | |"
      done
    else
      echo "bench_gpu: no onnxruntime package here; ONNX Runtime rows skipped" >&2
    fi
    # The service through gRPC (JPEG decode included), batching on and off,
    # 1/4/16 clients: what the batcher's CUDA warm-up is for.
    for dtype in bf16 f32; do
      "$bench" --weights "$weights" --device cuda --backends tch --dtype "$dtype" \
        --batch-sizes 32 --unfused-batch-sizes 0 --seconds "$seconds" | grep '^| gRPC' \
        | sed "s/^| gRPC EmbedImage (auto)/| gRPC EmbedImage ($dtype)/" \
        || echo "| gRPC $dtype | failed | | | |"
    done
    if [[ -n "${TRAIN_DIR:-}" ]]; then
      echo "bench_gpu: fine-tuning on $TRAIN_DIR (CUDA, f32)"
      "$OUT_DIR/train-folder" "$TRAIN_DIR" --weights "$weights" --epochs "${TRAIN_EPOCHS:-3}" \
        || echo "bench_gpu: train-folder failed"
    fi
    ;;
  check)
    # The script parses, and the bench accepts the arguments it passes
    # (on the CPU, both engines, a moment each).
    bash -n "$0"
    source scripts/env.sh
    bench="${BENCH:-target/release/inference-bench}"
    [[ -x "$bench" ]] || bench=target/debug/inference-bench
    export LD_LIBRARY_PATH="$("$CBIR_VENV/bin/python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    weights="${CBIR_WEIGHTS:-data/models/efficientnet-lite0-imagenet.safetensors}"
    rows "$bench" "$weights" cpu tch f32 1,2 0.2
    rows "$bench" "$weights" cpu onnx f32 1,2 0.2
    echo "bench_gpu: syntax and arguments ok"
    ;;
  *)
    echo "usage: scripts/bench_gpu.sh build | run [SECONDS] | check" >&2
    exit 2
    ;;
esac
