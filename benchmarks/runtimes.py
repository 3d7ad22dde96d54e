"""Inference runtimes compared in one run: eager PyTorch, ONNX Runtime fp32 and ONNX Runtime static int8, the
raw batched forward of the full ResNet50V2 DeFakeNet at 224 px, against the CPU's FLOP ceiling; and the int8 guard
(test ROC-AUC fp32 vs int8) of a trained model on real images.

    python benchmarks/runtimes.py --data ../shared/datasets/faces-140k-sample \\
        --model benchmarks/results/quality/home/runs/scratch-faces-429041/model

Speed: a random-init ResNet50V2 (weights do not change the FLOPs) at --image-size, preprocessed real images from
--data (the int8 graph is calibrated on its valid split at that size), batches of --batch-size on --threads
threads; img/s per runtime, each runtime's ratio to torch, achieved GFLOP/s (FLOPs counted by
torch.utils.flop_counter on one forward) and the share of --peak-gflops. Quality: `--model`'s int8 graph, made as
`defakenet export --format onnx-int8` makes it (calibrated on valid, guarded on test at the model's own input size).
Memory per replica: benchmarks/serve_throughput.py --runtime measures each runtime's replica RSS.

Not a test: numbers depend on the machine. docs/benchmarks.md records what we measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402

RUNTIMES = ("torch", "onnx", "onnx-int8")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="real images: int8 calibration (valid split) and the guard (test)")
    p.add_argument("--model", help="a trained model directory for the int8 guard (skipped without it)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--seconds", type=float, default=20.0, help="timed seconds per runtime")
    p.add_argument("--peak-gflops", type=float, default=190.0,
                   help="the CPU's fp32 FLOP ceiling (default 190: 2 AVX2 cores of this machine, issue 16)")
    p.add_argument("--calibration-images", type=int, default=128)
    p.add_argument("--output", default="benchmarks/results/runtimes.json")
    return p.parse_args(argv)


def images_per_s(predictor, x: np.ndarray, batch: int, seconds: float) -> float:
    predictor.score_inputs(x[:batch])  # warm-up
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for i in range(0, len(x), batch):
            predictor.score_inputs(x[i:i + batch])
            n += len(x[i:i + batch])
    return n / (time.perf_counter() - start)


def forward_gflop(model, size: int) -> float:
    """GFLOPs of one image's forward (multiply-adds count 2), as torch's FlopCounterMode counts them."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from defakenet.artifact import load_model, save_model
    from defakenet.config import Config
    from defakenet.data.layouts import read_manifest
    from defakenet.export import export_model, inputs_of, int8_from_splits, onnx_scores
    from defakenet.inference import Predictor
    from defakenet.model import DeFakeNet

    torch.set_num_threads(args.threads)
    result: dict = {"image_size": args.image_size, "batch_size": args.batch_size, "threads": args.threads,
                    "peak_gflops": args.peak_gflops,
                    "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__}}
    with tempfile.TemporaryDirectory(prefix="defakenet-runtimes-") as tmp:
        cfg = Config().replace(**{"data.image_size": args.image_size})
        torch.manual_seed(0)
        net = DeFakeNet().eval()
        gflop = forward_gflop(net, args.image_size)
        d = save_model(Path(tmp) / "model", net, cfg, {"threshold": 0.5})
        saved = load_model(d)
        manifest = read_manifest(args.data, ratios=cfg.data.split, seed=cfg.data.split_seed)
        valid = manifest[manifest["split"] == "valid"]
        test = manifest[manifest["split"] == "test"]
        calib = inputs_of(saved, valid["path"].iloc[: args.calibration_images])
        x = inputs_of(saved, test["path"].iloc[: 4 * args.batch_size])
        export_model(d)
        # the speed model's int8 graph: calibrated as export does, kept whatever a random-init model's AUC says
        int8_from_splits(d, onnx_scores, calib, x, np.arange(len(x)) % 2, max_drop=1.0)
        print(f"ResNet50V2 DeFakeNet at {args.image_size} px: {gflop:.2f} GFLOP per image; {args.threads} threads, "
              f"batch {args.batch_size}", flush=True)
        speed = {}
        for runtime in RUNTIMES:
            p = Predictor.from_dir(d, runtime=runtime, threads=args.threads)
            ips = images_per_s(p, x, args.batch_size, args.seconds)
            speed[runtime] = {"images_per_s": ips, "gflops": ips * gflop, "of_peak": ips * gflop / args.peak_gflops}
            print(f"{runtime:>9}: {ips:6.1f} img/s  {ips * gflop:6.1f} GFLOP/s ({ips * gflop / args.peak_gflops:.0%} "
                  f"of {args.peak_gflops:.0f})", flush=True)
            del p
        for runtime in RUNTIMES[1:]:
            speed[runtime]["over_torch"] = speed[runtime]["images_per_s"] / speed["torch"]["images_per_s"]
        print(f"onnx/torch {speed['onnx']['over_torch']:.2f}   int8/torch {speed['onnx-int8']['over_torch']:.2f}   "
              f"int8/onnx {speed['onnx-int8']['images_per_s'] / speed['onnx']['images_per_s']:.2f}")
        result.update(gflop_per_image=gflop, speed=speed)
        sizes = {r: (d / f).stat().st_size / 2**20 for r, f in (("onnx", "model.onnx"), ("onnx-int8", "model.int8.onnx"))}
        result["graph_mb"] = sizes

        if args.model:
            g = Path(tmp) / "guarded"
            shutil.copytree(args.model, g)
            trained = load_model(g).config
            m = read_manifest(args.data, ratios=trained.data.split, seed=trained.data.split_seed)
            facts = export_model(g, int8=True, manifest=m, max_auc_drop=trained.export.int8_max_auc_drop,
                                 calibration_images=trained.export.calibration_images)
            result["guard"] = {"model": str(args.model), "input_size": trained.data.input_size, **facts["int8"]["guard"]}
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
