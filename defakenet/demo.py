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
    "train.batch_size": 16,
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
    """synth → inspect → train → evaluate; prints where every output is."""
    from defakenet.data.inspect import inspect_dataset
    from defakenet.data.synth import make_dataset
    from defakenet.evaluate import evaluate_model
    from defakenet.report import format_metrics
    from defakenet.train import fit_local

    home = Path(home)
    data = home / "synthetic"
    print(f"[1/4] synthetic dataset: {DEMO_IMAGES_PER_CLASS} real + {DEMO_IMAGES_PER_CLASS} fake faces → {data}")
    make_dataset(data, n=DEMO_IMAGES_PER_CLASS, size=DEMO_IMAGE_SIZE, seed=0, progress=True)

    print("[2/4] inspect")
    report = inspect_dataset(data, progress=False)
    print(report.to_text())

    print("[3/4] train (in-process, CPU)")
    cfg = Config().replace(**DEMO_SETTINGS, **{"data.root": str(data), "tracking.home": str(home)})
    summary = fit_local(cfg, home / "run")

    print("[4/4] evaluate the saved model on the test split")
    metrics = evaluate_model(summary["model_dir"], str(data), split="test", output=home / "evaluation")
    print(format_metrics(metrics))
    print()
    print(f"model:      {summary['model_dir']}")
    print(f"report:     {home / 'run' / 'report'}")
    print(f"evaluation: {home / 'evaluation'}")
    return 0
