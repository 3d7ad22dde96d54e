"""Serving throughput: the Ray Serve endpoint under fixed concurrency vs the raw model's batched forward, per
inference runtime, and the same endpoint with batching off, measured in one run on one machine.

Same model (a random-init DeFakeNet saved as a model directory, with its ONNX graphs), same JPEG images; for each
of --runtime (torch, onnx, onnx-int8):
- raw: images/s of `inference.Predictor.score_images` (preprocess + forward) in this process, batches of --batch-size,
  on --replica-cpus threads;
- served: requests/s (one image each) of POST /v1/predict from --concurrency client threads over loopback HTTP,
  with p50/p99 latency, `@serve.batch` on (max batch --batch-size), and the replica's RSS after the load;
and once, for the first runtime, unbatched: the endpoint redeployed with max_batch_size 1.
Prints served/raw per runtime, each runtime over torch, batched/unbatched, and writes JSON. The int8 graph is
calibrated on the benchmark's own images (speed does not depend on it; benchmarks/runtimes.py measures its
quality on real faces).

    python benchmarks/serve_throughput.py                          # 64 px, torch, concurrency 16, 400 requests
    python benchmarks/serve_throughput.py --image-size 224 --runtime torch,onnx,onnx-int8 --replica-cpus 2
    python benchmarks/serve_throughput.py --ingress high-throughput   # as `defakenet serve --high-throughput`
    python benchmarks/serve_throughput.py --image-size 224 --requests 1000 --gpu

Not a test: numbers depend on the machine. docs/benchmarks.md records what we measured.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import numpy as np  # noqa: E402


INGRESS = ("proxy", "high-throughput", "direct")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--requests", type=int, default=400, help="timed requests per endpoint setting")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--batch-wait-ms", type=float, default=30.0, help="@serve.batch wait timeout (default: serve's)")
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--runtime", default="torch", help="comma-separated runtimes to measure, of torch, onnx, onnx-int8 "
                                                      "(default torch)")
    p.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs reserved per replica (torch threads follow)")
    p.add_argument("--ingress", choices=INGRESS, default="proxy",
                   help="what the load goes through: Ray Serve's Python HTTP proxy (the default); Serve's "
                        "high-throughput mode, HAProxy in front of the replicas' own ports (what `defakenet serve "
                        "--high-throughput` starts); or straight to the one replica's port "
                        "(RAY_SERVE_ENABLE_DIRECT_INGRESS=1, experimental, no balancer)")
    p.add_argument("--direct-ingress", dest="ingress", action="store_const", const="direct",
                   help="the same as --ingress direct")
    p.add_argument("--output", default="benchmarks/results/serve_throughput.json")
    return p.parse_args(argv)


def _images(n: int, size: int) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def raw_images_per_s(model_dir: Path, images: list[bytes], batch: int, gpu: bool, threads: int, runtime: str,
                     seconds: float = 10.0) -> float:
    """Decode once, then preprocess + forward in batches for about `seconds` on `threads` threads (what a replica
    of that many CPUs gets): the ceiling for serving with `runtime`."""
    import torch

    from defakenet.data.image import decode_rgb
    from defakenet.inference import Predictor

    torch.set_num_threads(threads)
    m = Predictor.from_dir(model_dir, runtime=runtime, use_gpu=gpu, threads=threads)
    rgb = [decode_rgb(b, name="bench") for b in images[:batch]]
    m.score_images(rgb)  # warm-up
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        m.score_images(rgb)
        n += len(rgb)
    return n / (time.perf_counter() - start)


def replica_rss_mb() -> float:
    """RSS of the bench app's (one) replica process."""
    import psutil
    import ray
    from ray.util.state import list_actors

    actors = list_actors(address=ray.get_runtime_context().gcs_address, filters=[("state", "=", "ALIVE")], limit=1000)
    pids = [a.pid for a in actors
            if a.class_name and "bench" in a.class_name and "Detector" in a.class_name]
    return sum(psutil.Process(pid).memory_info().rss for pid in pids) / 2**20


def _split(url: str) -> tuple[str, int, str]:
    u = urllib.parse.urlsplit(url)
    return u.hostname, u.port, u.path


def load_test(url: str, images: list[bytes], requests: int, concurrency: int) -> dict:
    """`requests` POSTs from `concurrency` threads; requests/s, p50/p99 latency (ms), errors."""
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    counter = iter(range(requests))

    host, port, path = _split(url)

    def worker():
        conn = http.client.HTTPConnection(host, port, timeout=60)  # keep-alive, as a production client would
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                conn.close()
                return
            t0 = time.perf_counter()
            try:
                conn.request("POST", path, body=images[i % len(images)], headers={"Content-Type": "image/jpeg"})
                r = conn.getresponse()
                r.read()
                ok = r.status == 200
            except OSError:
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=60)
                ok = False
            with lock:
                if ok:
                    lat.append((time.perf_counter() - t0) * 1000)
                else:
                    errors[0] += 1

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"requests_per_s": len(lat) / wall, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "errors": errors[0], "requests": requests}


def _replica_port(first: int) -> int:
    """With direct ingress, the port the (one) replica listens on: the first of [first, first + 50) that answers."""
    for port in range(first, first + 50):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                if r.status == 200:
                    return port
        except OSError:
            continue
    raise RuntimeError(f"direct ingress: no replica answers on ports {first}-{first + 49}")


def serve_and_measure(model_dir: Path, images: list[bytes], args, max_batch: int, port: int,
                      runtime: str = "torch") -> dict:
    from ray import serve

    from defakenet.serve import ServeArgs, make_app

    sargs = ServeArgs(model=str(model_dir), max_batch_size=max_batch, max_ongoing_requests=max(32, 2 * max_batch),
                      batch_wait_timeout_s=args.batch_wait_ms / 1000, runtime=runtime,
                      poll_interval_s=0, use_gpu=args.gpu, num_cpus=args.replica_cpus)
    serve.run(make_app(sargs), name="bench", route_prefix="/")
    if args.ingress == "direct":
        port = _replica_port(port)
    url = f"http://127.0.0.1:{port}/v1/predict"
    load_test(url, images, min(64, args.requests), args.concurrency)  # warm-up
    result = load_test(url, images, args.requests, args.concurrency)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/model", timeout=30) as r:
        sizes = {int(k): v for k, v in json.load(r)["batching"]["batch_sizes"].items()}
    result["mean_batch_size"] = sum(k * v for k, v in sizes.items()) / max(1, sum(sizes.values()))
    try:
        result["replica_rss_mb"] = replica_rss_mb()
    except Exception as e:  # noqa: BLE001 - the state API is a nice-to-have here, not the measurement
        print(f"replica RSS: not measured ({e})", file=sys.stderr)
    serve.delete("bench")
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    import ray
    import torch
    from ray import serve

    if args.gpu and not torch.cuda.is_available():
        print("--gpu: no CUDA device here", file=sys.stderr)  # Serve would wait for a GPU replica forever
        return 2

    from defakenet.artifact import save_model
    from defakenet.config import Config
    from defakenet.model import DeFakeNet

    from defakenet.export import RUNTIMES, export_model, int8_from_splits, onnx_scores

    runtimes = [r.strip() for r in args.runtime.split(",") if r.strip()]
    if not runtimes or any(r not in RUNTIMES for r in runtimes):
        print(f"--runtime {args.runtime}: expected a comma-separated list of {', '.join(RUNTIMES)}", file=sys.stderr)
        return 2
    images = _images(64, args.image_size)
    raw, served = {}, {}
    threads = max(1, int(args.replica_cpus))
    with tempfile.TemporaryDirectory(prefix="defakenet-bench-") as tmp:
        cfg = Config().replace(**{"data.image_size": args.image_size})
        torch.manual_seed(0)
        model_dir = save_model(Path(tmp) / "model", DeFakeNet(), cfg, {"threshold": 0.5})
        if set(runtimes) - {"torch"}:
            export_model(model_dir)
        if "onnx-int8" in runtimes:
            from defakenet.artifact import load_model
            from defakenet.data.image import decode_rgb

            saved = load_model(model_dir)
            x = np.stack([saved.preprocess()(decode_rgb(b, name="bench")) for b in images])
            int8_from_splits(model_dir, onnx_scores, x, x, np.arange(len(x)) % 2, max_drop=1.0)
        for r in runtimes:
            raw[r] = raw_images_per_s(model_dir, images, args.batch_size, args.gpu, threads, r)
            print(f"{r}: raw batched forward (batch {args.batch_size}, {threads} threads): {raw[r]:.1f} img/s",
                  flush=True)

        from defakenet.serve import free_port, high_throughput_env

        proxy_port = port = free_port()
        if args.ingress == "direct":  # replicas take HTTP ports from a range starting here: the load goes there
            port = free_port()
            os.environ.update({"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
                               "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(port),
                               "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(port + 50)})
        elif args.ingress == "high-throughput":  # HAProxy listens on proxy_port, forwards to the replicas' ports
            os.environ.update(high_throughput_env())
        ray.init(include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=free_port(), log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": proxy_port})
        for r in runtimes:
            b = served[r] = serve_and_measure(model_dir, images, args, args.batch_size, port, r)
            print(f"{r}: served, batching on (max {args.batch_size}): {b['requests_per_s']:.1f} req/s  "
                  f"p50 {b['p50_ms']:.0f} ms  p99 {b['p99_ms']:.0f} ms  errors {b['errors']}  "
                  f"mean batch {b['mean_batch_size']:.1f}  replica RSS {b.get('replica_rss_mb', float('nan')):.0f} MB  "
                  f"served/raw {b['requests_per_s'] / raw[r]:.2f}", flush=True)
        single = serve_and_measure(model_dir, images, args, 1, port, runtimes[0])
        print(f"{runtimes[0]}: served, batching off: {single['requests_per_s']:.1f} req/s  "
              f"p50 {single['p50_ms']:.0f} ms  p99 {single['p99_ms']:.0f} ms  errors {single['errors']}", flush=True)
        serve.shutdown()
        ray.shutdown()
        if args.ingress == "high-throughput":
            shutil.rmtree(os.environ["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"], ignore_errors=True)

    first = runtimes[0]
    result = {"image_size": args.image_size, "concurrency": args.concurrency, "batch_size": args.batch_size,
              "batch_wait_ms": args.batch_wait_ms, "ingress": args.ingress, "runtimes": runtimes,
              "replica_cpus": args.replica_cpus, "gpu": args.gpu,
              "raw_images_per_s": raw[first], "served_batched": served[first], "served_unbatched": single,
              "served_over_raw": served[first]["requests_per_s"] / raw[first],
              "batched_over_unbatched": served[first]["requests_per_s"] / single["requests_per_s"],
              "per_runtime": {r: {"raw_images_per_s": raw[r], "served": served[r],
                                  "served_over_raw": served[r]["requests_per_s"] / raw[r]} for r in runtimes},
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                          "ray": ray.__version__}}
    if "torch" in runtimes:
        for r in runtimes:
            result["per_runtime"][r]["raw_over_torch"] = raw[r] / raw["torch"]
            result["per_runtime"][r]["served_over_torch"] = (served[r]["requests_per_s"]
                                                             / served["torch"]["requests_per_s"])
        print("   ".join(f"{r}/torch raw {raw[r] / raw['torch']:.2f} served "
                         f"{result['per_runtime'][r]['served_over_torch']:.2f}" for r in runtimes if r != "torch"))
    print(f"served/raw ({first}) {result['served_over_raw']:.2f}   batching on/off {result['batched_over_unbatched']:.2f}")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
