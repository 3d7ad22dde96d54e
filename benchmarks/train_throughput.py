"""Training throughput: Ray Train + Ray Data vs a plain single-process PyTorch loop, measured in one run.

Both sides train the same DeFakeNet (ResNet50V2) on the same images at the same resolution and batch size with
the same augmentation, through the same `engine.train_one_epoch`; only the input pipeline and the process model
differ. Each side runs a warm-up pass, then a timed pass (a new epoch) of --steps optimizer steps, by default one
whole epoch; images/s counts images per second of the timed pass (data waits included, and printed). The two
sides run alternately --repeats times (a fresh Ray instance each time); prints each pair's ratio ray/plain, their
median (the result) and the ratio of all images over all seconds, and writes JSON.

    python benchmarks/train_throughput.py                                   # CPU: synthetic 64 px, 1 worker
    python benchmarks/train_throughput.py --data ../shared/datasets/faces-140k-sample --image-size 128
    python benchmarks/train_throughput.py --gpu --image-size 224 --batch-size 64 --workers 1   # per GPU, AMP

On CPU both sides run with the malloc settings `defakenet train` gives its CPU workers
(`defakenet.runtime.CPU_MALLOC_ENV`: the benchmark restarts itself with them, so the plain loop has them from its
first allocation); `--default-malloc` runs both sides on glibc's defaults instead.

Not a test: numbers depend on the machine. docs/benchmarks.md records what we measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

from defakenet.config import Config  # noqa: E402
from defakenet.data.layouts import read_manifest  # noqa: E402
from defakenet.engine import build_model, build_optimizer, build_scheduler, make_loader, train_one_epoch  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="dataset folder (default: a synthetic one made in a temp folder)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=0,
                   help="timed optimizer steps per side (default 0: one whole epoch of the train split)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (per side)")
    p.add_argument("--repeats", type=int, default=3,
                   help="plain/Ray pairs, run alternately (default 3): the reported ratio is the pairs' median, as "
                        "one pass on a shared machine swings by 10 %%")
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers (the plain loop is always one process)")
    p.add_argument("--gpu", action="store_true", help="CUDA, bf16 autocast and channels_last on both sides")
    p.add_argument("--loader-workers", type=int, default=None,
                   help="DataLoader worker processes of the plain loop (default: 0 on CPU, where decoding inline "
                        "leaves the cores to the model; with --gpu all cores but two)")
    p.add_argument("--default-malloc", action="store_true",
                   help="CPU: both sides on glibc's default malloc, not the settings defakenet gives its CPU workers")
    p.add_argument("--output", default="benchmarks/results/train_throughput.json")
    return p.parse_args(argv)


class Waits:
    """Wraps a batch iterator and counts the seconds the loop waited for batches (the first one separately)."""

    def __init__(self, batches):
        self.it, self.wait, self.first = iter(batches), 0.0, None

    def __iter__(self):
        return self

    def __next__(self):
        t = time.perf_counter()
        batch = next(self.it)
        dt = time.perf_counter() - t
        self.wait += dt
        if self.first is None:
            self.first = dt
        return batch

    def stats(self, stats: dict) -> dict:
        return stats | {"data_wait_s": self.wait, "first_batch_s": self.first or 0.0}


def make_config(args: argparse.Namespace, root: str) -> Config:
    return Config().replace(**{
        "data.root": root, "data.image_size": args.image_size, "train.batch_size": args.batch_size,
        "resources.workers": args.workers, "resources.use_gpu": args.gpu,
        # CPU: the model gets every core; GPU: 2 CPUs per worker, the rest decode (Ray Data tasks)
        "resources.cpus_per_worker": 2 if args.gpu else max(1, (os.cpu_count() or 2) // args.workers),
        "train.amp": "auto", "train.channels_last": True,
    })


def plain_loop(cfg: Config, manifest, args: argparse.Namespace) -> dict:
    """One process: decode + augment in the DataLoader (inline by default on CPU), model on all cores or the GPU."""
    torch.manual_seed(0)
    device = torch.device("cuda" if args.gpu else "cpu")
    channels_last = args.gpu
    model = build_model(cfg).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, args.steps + args.warmup, 1)
    loader = make_loader(manifest, "train", cfg, train=True, workers=args.loader_workers)
    kw = dict(device=device, amp=cfg.train.amp, channels_last=channels_last, grad_clip=cfg.optim.grad_clip)
    train_one_epoch(model, loader, optimizer, scheduler, max_steps=args.warmup, **kw)
    waits = Waits(loader)
    stats = waits.stats(train_one_epoch(model, waits, optimizer, scheduler, max_steps=args.steps, **kw))
    return {k: stats[k] for k in ("images", "seconds", "images_per_s", "data_wait_s", "first_batch_s")}


def _ray_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch

    from defakenet.data.pipeline import iter_batches

    cfg = Config.from_dict(config["config"])
    device = ray.train.torch.get_device()
    channels_last = device.type == "cuda"
    torch.manual_seed(0)
    model = build_model(cfg)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, config["steps"] + config["warmup"], 1)
    shard = ray.train.get_dataset_shard("train")
    kw = dict(device=device, amp=cfg.train.amp, channels_last=channels_last, grad_clip=cfg.optim.grad_clip)
    train_one_epoch(model, iter_batches(shard, cfg.train.batch_size, train=True), optimizer, scheduler,
                    max_steps=config["warmup"], **kw)
    waits = Waits(iter_batches(shard, cfg.train.batch_size, train=True))
    stats = waits.stats(train_one_epoch(model, waits, optimizer, scheduler, max_steps=config["steps"], **kw))
    ctx = ray.train.get_context()
    Path(config["out"], f"rank{ctx.get_world_rank()}.json").write_text(json.dumps(stats))
    ray.train.report({"images_per_s": stats["images_per_s"]})


def ray_train(cfg: Config, manifest, args: argparse.Namespace) -> dict:
    """Ray Train workers fed by the Ray Data pipeline (decode + augment in Ray Data tasks)."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from defakenet.data.pipeline import build_dataset, dataset_config
    from defakenet.runtime import local_ray_system_config, training_worker_env

    need = cfg.resources.workers * cfg.resources.cpus_per_worker + 2
    # started as `defakenet train` starts a local instance, with Ray's background work turned down
    ray.init(num_cpus=max(os.cpu_count() or 1, int(need)), include_dashboard=False, log_to_driver=False,
             _system_config=local_ray_system_config())
    tmp = tempfile.TemporaryDirectory(prefix="defakenet-bench-")  # per-rank stats and Ray Train's run folder
    try:
        out = Path(tmp.name, "stats")
        out.mkdir()
        rows = manifest[manifest["split"] == "train"]
        trainer = TorchTrainer(
            _ray_worker,
            train_loop_config={"config": cfg.to_dict(), "steps": args.steps, "warmup": args.warmup, "out": str(out)},
            scaling_config=ray.train.ScalingConfig(
                num_workers=cfg.resources.workers, use_gpu=args.gpu,
                resources_per_worker={"CPU": cfg.resources.cpus_per_worker, **({"GPU": 1} if args.gpu else {})}),
            run_config=ray.train.RunConfig(name="throughput", storage_path=str(Path(tmp.name, "runs")),
                                           worker_runtime_env={"env_vars": training_worker_env(cfg)}),
            datasets={"train": build_dataset(rows, cfg, train=True)},
            dataset_config=dataset_config(eval_datasets=()),
        )
        trainer.fit()
        per_rank = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]
    finally:
        ray.shutdown()
        tmp.cleanup()
    images = sum(r["images"] for r in per_rank)
    seconds = max(r["seconds"] for r in per_rank)
    return {"images": images, "seconds": seconds, "images_per_s": images / seconds,
            "images_per_s_per_worker": images / seconds / len(per_rank),
            "data_wait_s": max(r["data_wait_s"] for r in per_rank),
            "first_batch_s": max(r["first_batch_s"] for r in per_rank)}


def same_malloc_as_workers(args: argparse.Namespace, *, restart: bool) -> str:
    """Give this process (the plain loop) the malloc settings of defakenet's CPU training workers, or glibc's
    defaults to both sides with --default-malloc; returns which. glibc reads them once, at start: so restart with
    them (`restart`: run as a script), then drop them from the environment, so that Ray's daemons and decode
    workers start as `defakenet train` starts them and only the training worker gets them."""
    from defakenet.runtime import CPU_MALLOC_ENV

    if args.gpu:
        return "GPU run, as is"
    if os.environ.get("DEFAKENET_BENCH_MALLOC") == "1":  # restarted: the plain loop has the workers' settings
        for k in ("DEFAKENET_BENCH_MALLOC", *CPU_MALLOC_ENV):
            os.environ.pop(k, None)
        return "both sides as defakenet's CPU workers"
    mine = {k: v for k, v in os.environ.items() if k in ("GLIBC_TUNABLES", *CPU_MALLOC_ENV)}
    if mine:
        return f"both sides {mine} (set here)"
    if args.default_malloc or not restart or platform.system() != "Linux":
        os.environ["MALLOC_ARENA_MAX"] = ""  # set: the Ray workers get glibc's defaults, as this process has them
        return "both sides glibc defaults"
    sys.stdout.flush()
    env = {**os.environ, **CPU_MALLOC_ENV, "DEFAKENET_BENCH_MALLOC": "1"}
    os.execve(sys.executable, [sys.executable, *sys.argv], env)
    raise AssertionError("unreachable")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.malloc = same_malloc_as_workers(args, restart=argv is None)
    with tempfile.TemporaryDirectory(prefix="defakenet-bench-data-") as tmp:  # the synthetic data, if made
        return run(args, tmp)


def run(args: argparse.Namespace, tmp: str) -> int:
    if args.loader_workers is None:
        args.loader_workers = max(0, (os.cpu_count() or 2) - 2) if args.gpu else 0
    if args.gpu and not torch.cuda.is_available():
        print("--gpu: no CUDA device here", file=sys.stderr)
        return 2
    root = args.data
    if root is None:
        from defakenet.data.synth import make_dataset

        root = str(make_dataset(tmp, n=600, size=args.image_size))
    elif not Path(root).is_dir():
        print(f"--data {root}: no such folder", file=sys.stderr)
        return 2
    cfg = make_config(args, root)
    manifest = read_manifest(root)
    n_train = int((manifest["split"] == "train").sum())
    epoch_steps = n_train // (args.batch_size * args.workers)
    args.steps = args.steps or epoch_steps
    if max(args.steps, args.warmup) > epoch_steps:
        print(f"train split has {n_train} images: {epoch_steps} steps of {args.batch_size} x {args.workers} "
              f"worker(s) per epoch, fewer than the {max(args.steps, args.warmup)} asked for", file=sys.stderr)
        return 2
    print(f"data {root}: {n_train} train images; {args.image_size} px, batch {args.batch_size}, "
          f"{args.warmup} warm-up + {args.steps} timed steps, {'GPU' if args.gpu else f'{os.cpu_count()} CPU cores'}, "
          f"plain loop with {args.loader_workers} loader worker(s), "
          f"malloc: {args.malloc}")
    if args.repeats < 1:
        print(f"--repeats {args.repeats}: expected 1 or more", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    pairs = []
    for r in range(1, args.repeats + 1):
        plain = plain_loop(cfg, manifest, args)
        print(f"[{r}/{args.repeats}] plain PyTorch loop:     {plain['images_per_s']:8.1f} img/s  (waited "
              f"{plain['data_wait_s']:.1f} of {plain['seconds']:.1f} s for data)", flush=True)
        ray_stats = ray_train(cfg, manifest, args)
        print(f"[{r}/{args.repeats}] Ray Train + Ray Data:   {ray_stats['images_per_s']:8.1f} img/s  ({args.workers} "
              f"worker(s), {ray_stats['images_per_s_per_worker']:.1f} img/s per worker; waited "
              f"{ray_stats['data_wait_s']:.1f} of {ray_stats['seconds']:.1f} s for data, "
              f"{ray_stats['first_batch_s']:.1f} s for the first batch)", flush=True)
        pairs.append({"plain": plain, "ray": ray_stats, "ratio": ray_stats["images_per_s"] / plain["images_per_s"]})
    ratios = sorted(p["ratio"] for p in pairs)
    ratio = float(statistics.median(ratios))
    pooled = (sum(p["ray"]["images"] for p in pairs) / sum(p["ray"]["seconds"] for p in pairs)) / (
        sum(p["plain"]["images"] for p in pairs) / sum(p["plain"]["seconds"] for p in pairs))
    print(f"ratio ray/plain:        {ratio:8.3f}  (median of {len(pairs)} pair(s): "
          f"{', '.join(f'{x:.3f}' for x in ratios)}; all images over all seconds {pooled:.3f})")
    result = {
        "benchmark": "train_throughput", "ratio": ratio, "ratio_pooled": pooled, "pairs": pairs,
        "settings": {k: v for k, v in vars(args).items() if k != "output"} | {"data": root},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name() if args.gpu else None},
        "seconds": time.perf_counter() - t0,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
