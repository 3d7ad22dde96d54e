"""`make demo`: the main job end to end on an embedded default, a synthetic dataset, in a few minutes on a CPU."""

from __future__ import annotations

from pathlib import Path

from defakenet.config import Config

# the embedded default: small enough for a laptop CPU, big enough that the numbers mean something
DEMO_IMAGES_PER_CLASS = 160
DEMO_IMAGE_SIZE = 64
DEMO_SETTINGS = {
    "data.image_size": DEMO_IMAGE_SIZE,
    "train.epochs": 4,
    "train.batch_size": 8,  # per worker: 2 workers make an effective batch of 16
    "optim.lr": 1e-3,
    # the synthetic fake traces are pixel-level: resampling crops, JPEG and blur would erase them, so the demo
    # keeps flips only (real data trains with the full Wang et al. augmentation of the defaults)
    "augment.scale_min": 1.0,
    "augment.jitter_p": 0.0,
    "augment.jpeg_p": 0.0,
    "augment.blur_p": 0.0,
    "augment.noise_p": 0.0,
}


def run_demo(home: Path) -> int:
    """synth → inspect → train on Ray (2 workers) → evaluate; prints where every output is."""
    import ray

    from defakenet.data.inspect import inspect_dataset
    from defakenet.data.synth import make_dataset
    from defakenet.evaluate import evaluate_model
    from defakenet.report import format_metrics
    from defakenet.train import fit

    home = Path(home).resolve()
    data = home / "synthetic"
    print(f"[1/4] synthetic dataset: {DEMO_IMAGES_PER_CLASS} real + {DEMO_IMAGES_PER_CLASS} fake faces → {data}")
    make_dataset(data, n=DEMO_IMAGES_PER_CLASS, size=DEMO_IMAGE_SIZE, seed=0, progress=True)

    print("[2/4] inspect")
    print(inspect_dataset(data, progress=False).to_text())

    print("[3/4] train on Ray Train: 2 data-parallel CPU workers, tracked in MLflow, registered as 'defakenet'")
    cfg = Config().replace(**DEMO_SETTINGS, **{
        "data.root": str(data), "tracking.home": str(home), "tracking.register": "defakenet",
        "tracking.experiment": "defakenet-demo", "resources.workers": 2,
    })
    try:
        summary = fit(cfg)
        print("[4/4] evaluate the registered version on the test split (Ray Data batch inference)")
        model = summary.get("registered", summary["model_dir"])
        metrics = evaluate_model(model, str(data), split="test", output=home / "evaluation",
                                 tracking_uri=summary["tracking_uri"])
    finally:
        ray.shutdown()
    print(format_metrics(metrics))
    print()
    print(f"model:       {summary['model_dir']}  ({summary.get('registered', 'not registered')})")
    print(f"report:      {summary.get('report')}")
    print(f"evaluation:  {home / 'evaluation' / 'report.md'}")
    print(f"checkpoints: {summary['storage']}")
    print(f"MLflow UI:   .venv/bin/mlflow ui --backend-store-uri {summary['tracking_uri']}")
    return 0
