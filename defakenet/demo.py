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


# the small study: a few short single-worker trials around the demo's learning rate (the whole machine holds one)
DEMO_TUNE = {
    "tune.num_samples": 2,
    "tune.grace_period": 1,
    "train.epochs": 3,
    "resources.workers": 1,
    "train.batch_size": 16,
    "tune.space": {"optim": {"lr": {"loguniform": [3e-4, 3e-3]}}},
}
DEMO_PREDICT_PER_CLASS = 3
# the synthetic traces are pixel-level: the suite shows what re-compression and blur do to them
DEMO_DEGRADATIONS = ("none", "jpeg:75", "blur:1")


def _free_port(preferred: int = 8000) -> int:
    import socket

    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise OSError("no free port on 127.0.0.1")


def _demo_images(data: Path, cfg: Config) -> list[tuple[str, str]]:
    """A few test-split images of each class: (path, true label)."""
    from defakenet.data.layouts import read_manifest

    m = read_manifest(data, ratios=cfg.data.split, seed=cfg.data.split_seed)
    test = m[m["split"] == "test"]
    out = []
    for label, name in ((0, "real"), (1, "fake")):
        out += [(p, name) for p in test[test["label"] == label]["path"].head(DEMO_PREDICT_PER_CLASS)]
    return out


def run_demo(home: Path) -> int:
    """synth → inspect → train on Ray → evaluate → small tune → champion → Ray Serve → predict over HTTP; prints
    where every output is, then shuts everything down."""
    import ray

    from defakenet import registry
    from defakenet.client import format_line, predict_file
    from defakenet.data.inspect import inspect_dataset
    from defakenet.data.synth import make_dataset
    from defakenet.suite import Suite, SuiteSet, format_result, run_suite
    from defakenet.serve import ServeArgs, run_server
    from defakenet.train import fit
    from defakenet.tune import run_study

    home = Path(home).resolve()
    data = home / "synthetic"
    print(f"[1/7] synthetic dataset: {DEMO_IMAGES_PER_CLASS} real + {DEMO_IMAGES_PER_CLASS} fake faces → {data}")
    make_dataset(data, n=DEMO_IMAGES_PER_CLASS, size=DEMO_IMAGE_SIZE, seed=0, progress=True)

    print("[2/7] inspect")
    print(inspect_dataset(data, progress=False).to_text())

    print("[3/7] train on Ray Train: 2 data-parallel CPU workers, tracked in MLflow, registered as 'defakenet'")
    cfg = Config().replace(**DEMO_SETTINGS, **{
        "data.root": str(data), "tracking.home": str(home), "tracking.register": "defakenet",
        "tracking.experiment": "defakenet-demo", "resources.workers": 2,
    })
    url = None
    try:
        summary = fit(cfg)
        print(f"[4/7] evaluation suite: the registered version on the test split, clean and under "
              f"{', '.join(DEMO_DEGRADATIONS[1:])} (Ray Data batch inference, one MLflow run)")
        model = summary.get("registered", summary["model_dir"])
        tracking_uri = summary["tracking_uri"]
        suite = Suite((SuiteSet("synthetic", str(data), "test"),), DEMO_DEGRADATIONS)
        print(format_result(run_suite(model, suite, output=home / "evaluation", tracking_uri=tracking_uri)))
        ray.shutdown()  # the study sizes its own local instance

        print(f"[5/7] tune: {DEMO_TUNE['tune.num_samples']} trials of {DEMO_TUNE['train.epochs']} epochs on Ray Tune "
              "(ASHA), the winner registered and put through the promotion gate")
        study = run_study(cfg.replace(**DEMO_TUNE, **{"tracking.run_name": ""}))

        print("[6/7] serve the registry's champion with Ray Serve on 127.0.0.1")
        print(registry.format_table(registry.list_table("defakenet", tracking_uri=tracking_uri)))
        port = _free_port()
        url = run_server(ServeArgs(model="models:/defakenet@champion", tracking_uri=tracking_uri, poll_interval_s=0),
                         host="127.0.0.1", port=port, blocking=False)

        print(f"[7/7] defakenet predict --url {url} on {DEMO_PREDICT_PER_CLASS} real and {DEMO_PREDICT_PER_CLASS} fake "
              "test images")
        right = 0
        images = _demo_images(data, cfg)
        for path, truth in images:
            result = predict_file(path, url)
            right += result.get("label") == truth
            print(f"  {format_line(path, result)}  (truly {truth})")
        print(f"  {right} of {len(images)} right")
    finally:
        if url is not None:
            from ray import serve

            serve.shutdown()
        ray.shutdown()
    print()
    print(f"model:       {summary['model_dir']}  ({summary.get('registered', 'not registered')})")
    print(f"report:      {summary.get('report')}")
    print(f"evaluation:  {home / 'evaluation' / 'report.md'}")
    print(f"study:       {home / 'runs' / study['study']}  (trials.csv, plots)")
    print(f"checkpoints: {summary['storage']}")
    print(f"registry:    .venv/bin/defakenet registry list --tracking-uri {tracking_uri}")
    print(f"serve again: .venv/bin/defakenet serve --tracking-uri {tracking_uri}   (then .venv/bin/defakenet predict "
          f"IMG… )")
    print(f"MLflow UI:   .venv/bin/mlflow ui --backend-store-uri {tracking_uri}")
    print(f"endpoint:    was {url}/v1/predict (docs {url}/docs); stopped")
    return 0
