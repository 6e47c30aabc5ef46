# Sourced by the other scripts: where the Python torch (libtorch) lives and
# how cargo finds it. Override any of these from the environment.
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export REPO_ROOT
export CBIR_VENV="${CBIR_VENV:-$HOME/.cache/cbir/venv}"
export CBIR_DATA_DIR="${CBIR_DATA_DIR:-$REPO_ROOT/data}"
export CBIR_WEIGHTS="${CBIR_WEIGHTS:-$CBIR_DATA_DIR/models/efficientnet-lite0-imagenet.safetensors}"
export CBIR_SHARED_DATA="${CBIR_SHARED_DATA:-$REPO_ROOT/../shared/data}"
# tch 0.24 is built against exactly this libtorch.
export TORCH_VERSION="2.11.0"
# ort 2.0.0-rc.15 (load-dynamic) is written against this ONNX Runtime C API.
export ONNXRUNTIME_VERSION="1.31.1"
export LIBTORCH_USE_PYTORCH=1
export PYTHON_SYS_EXECUTABLE="$CBIR_VENV/bin/python"
export PATH="$CBIR_VENV/bin:$HOME/.cargo/bin:$PATH"
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-1}"
